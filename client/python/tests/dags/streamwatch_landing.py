"""A DAG that starts a watch, lets the producers' objects land, waits for the
data set in the triggerer (the watch completes 3s after the last object),
and hands the watch summary on through XCom.
The `land` task stands in for the producers (it reports their S3
notifications to the server); `params.out` is where `report` writes what it
pulled from XCom."""

import json

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

from streamwatch import Policy
from streamwatch.airflow.hooks import StreamwatchHook
from streamwatch.airflow.operators import StreamwatchStartWatchOperator
from streamwatch.airflow.sensors import StreamwatchWatchSensor


def land(params):
    keys = [params["prefix"] + name for name in ("part-1.json", "part-2.json")]
    records = [
        {"eventName": "ObjectCreated:Put", "eventTime": "2024-05-01T12:00:00.000Z",
         "s3": {"bucket": {"name": params["bucket"]}, "object": {"key": key, "size": 1, "sequencer": f"0A{i}"}}}
        for i, key in enumerate(keys)
    ]
    with StreamwatchHook().get_client() as client:
        client.ingest_s3_events([json.dumps({"Records": records})])


def report(ti, params):
    with open(params["out"], "w") as f:
        json.dump(ti.xcom_pull(task_ids="wait"), f)


with DAG(
    dag_id="streamwatch_landing",
    schedule=None,
    params={"bucket": "acme-lake", "prefix": "day=1/", "out": "/dev/null"},
) as dag:
    start = StreamwatchStartWatchOperator(
        task_id="start",
        bucket="{{ params.bucket }}",
        prefix="{{ params.prefix }}",
        policy=Policy.quiet_period(3).min_objects(2).timeout(120),
    )
    producers = PythonOperator(task_id="land", python_callable=land)
    wait = StreamwatchWatchSensor(
        task_id="wait",
        watch_id="{{ ti.xcom_pull(task_ids='start') }}",
        deferrable=True,
        timeout=120,
    )
    start >> producers >> wait >> PythonOperator(task_id="report", python_callable=report)
