"""The AWS emulator for the test run: moto's server, with DynamoDB requests
serialized.

moto applies the items of a TransactWriteItems one at a time and undoes a
cancelled transaction by restoring a copy of the whole table taken when it
began, so two concurrent transactions on one table can erase each other's
committed writes. DynamoDB serializes conflicting transactions; one lock
around the emulator's DynamoDB requests gives the tests the same guarantee.
Everything else (SQS long polls, S3) stays concurrent.

moto also undoes a cancelled transaction by keeping a copy of the whole
table, taken once per item of the transaction: with a few thousand items in
the table every transaction costs hundreds of milliseconds. The launcher
keeps copies of just the items the transaction writes instead (DynamoDB
requests are serialized, so nothing else changes them meanwhile) and puts
them back when moto cancels it: the same outcome, at the cost of the
transaction's own items.

    python server/tests/moto_server.py HOST PORT
"""

import copy
import sys
import threading

import moto.dynamodb.models as dynamodb_models
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple


def undo_only_what_a_transaction_writes():
    """Runs under the DynamoDB lock, so swapping the module's `copy` is safe."""
    transact = dynamodb_models.DynamoDBBackend.transact_write_items
    table_type = dynamodb_models.Table

    class LiveTable:
        # moto "restores" a table by assigning what deepcopy returned: the live
        # table itself makes that a no-op; items are restored below instead.
        @staticmethod
        def deepcopy(value, memo=None):
            return value if isinstance(value, table_type) else copy.deepcopy(value, memo)

    def transact_write_items(self, transact_items):
        before = []
        for entry in transact_items:
            op_type, op = next(iter(entry.items()))
            table = self.tables.get(op.get("TableName"))
            if op_type == "ConditionCheck" or table is None:
                continue
            attrs = op["Item"] if op_type == "Put" else op["Key"]
            hash_value = DynamoType(attrs[table.hash_key_attr])
            range_value = DynamoType(attrs[table.range_key_attr]) if table.range_key_attr else None
            try:
                previous = table.get_item(hash_value, range_value)
            except Exception:
                previous = None
            before.append((table, hash_value, range_value, copy.deepcopy(previous)))
        dynamodb_models.copy = LiveTable
        try:
            return transact(self, transact_items)
        except Exception:
            for table, hash_value, range_value, previous in reversed(before):
                if range_value is None:
                    if previous is None:
                        table.items.pop(hash_value, None)
                    else:
                        table.items[hash_value] = previous
                elif previous is None:
                    table.items.get(hash_value, {}).pop(range_value, None)
                else:
                    table.items[hash_value][range_value] = previous
            raise
        finally:
            dynamodb_models.copy = copy

    dynamodb_models.DynamoDBBackend.transact_write_items = transact_write_items


def serialize_dynamodb(app):
    lock = threading.Lock()

    def wrapped(environ, start_response):
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if not target.startswith("DynamoDB_"):
            return app(environ, start_response)
        with lock:
            # Produce the whole response under the lock: the work happens while it is built.
            body = b"".join(app(environ, start_response))
        return [body]

    return wrapped


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    undo_only_what_a_transaction_writes()
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(host, port, serialize_dynamodb(app), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
