"""`StreamwatchStartWatchOperator`: starts a watch and returns its id (the
XCom value a `StreamwatchWatchSensor` downstream takes as `watch_id`).
Retries of the task reuse the watch the first try started."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

from airflow.sdk import BaseOperator

from streamwatch import Policy
from streamwatch.airflow.hooks import StreamwatchHook
from streamwatch.v1 import watch_pb2


def task_client_token(context: Any) -> str:
    """One token per task instance and run: a retried task gets the same watch."""
    ti = context["ti"]
    return f"airflow:{ti.dag_id}:{ti.task_id}:{ti.run_id}:{getattr(ti, 'map_index', -1)}"


class StreamwatchStartWatchOperator(BaseOperator):
    """Starts watching `bucket`/`prefix` under `policy` (a `streamwatch.Policy`)."""

    template_fields: Sequence[str] = ("bucket", "prefix", "labels")

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        policy: Union[Policy, watch_pb2.Policy, None] = None,
        labels: Optional[Dict[str, str]] = None,
        streamwatch_conn_id: str = StreamwatchHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.bucket, self.prefix, self.policy = bucket, prefix, policy
        self.labels = labels or {}
        self.streamwatch_conn_id = streamwatch_conn_id

    def execute(self, context: Any) -> str:
        with StreamwatchHook(self.streamwatch_conn_id).get_client() as client:
            started = client.start_watch(
                self.bucket,
                self.prefix,
                self.policy,
                labels=self.labels,
                client_token=task_client_token(context),
            )
        self.log.info(
            "watch %s on %s/%s (%s)",
            started.watch.watch_id,
            self.bucket,
            self.prefix,
            "started" if started.created else "already started by an earlier try",
        )
        return started.watch.watch_id
