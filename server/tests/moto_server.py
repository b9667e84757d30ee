"""The AWS emulator for the test run: moto's server, with DynamoDB requests
serialized.

moto applies the items of a TransactWriteItems one at a time and undoes a
cancelled transaction by restoring a copy of the whole table taken when it
began, so two concurrent transactions on one table can erase each other's
committed writes. DynamoDB serializes conflicting transactions; one lock
around the emulator's DynamoDB requests gives the tests the same guarantee.
Everything else (SQS long polls, S3) stays concurrent.

    python server/tests/moto_server.py HOST PORT
"""

import sys
import threading

from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple


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
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(host, port, serialize_dynamodb(app), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
