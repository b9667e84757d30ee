"""A DAG whose sensor starts its own watch, which times out: the task fails
with the server's reason."""

from airflow.sdk import DAG

from streamwatch import Policy
from streamwatch.airflow.sensors import StreamwatchWatchSensor

with DAG(dag_id="streamwatch_timeout", schedule=None, params={"prefix": "never/"}) as dag:
    StreamwatchWatchSensor(
        task_id="wait",
        bucket="acme-lake",
        prefix="{{ params.prefix }}",
        policy=Policy.quiet_period(3600).timeout(1),
        poke_interval=0.5,
        timeout=60,
    )
