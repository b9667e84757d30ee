"""`StreamwatchStartWatchOperator`: starts a watch and returns its id (the
XCom value a `StreamwatchWatchSensor` downstream takes as `watch_id`).
Retries of the task reuse the watch the first try started."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from airflow.sdk import BaseOperator

from streamwatch import Policy
from streamwatch.airflow.hooks import StreamwatchHook
from streamwatch.v1 import watch_pb2


def task_client_token(context: Any) -> str:
    """One token per task instance and run: a retried task gets the same watch."""
    ti = context["ti"]
    return f"airflow:{ti.dag_id}:{ti.task_id}:{ti.run_id}:{getattr(ti, 'map_index', -1)}"


def key_filter(include: Sequence[str], exclude: Sequence[str]) -> Tuple[List[str], List[str]]:
    """`include`/`exclude` as lists (templated fields), refusing a bare string."""
    for name, patterns in (("include", include), ("exclude", exclude)):
        if isinstance(patterns, str):
            raise TypeError(f"{name} must be a list of glob patterns, not one string")
    return list(include), list(exclude)


class StreamwatchStartWatchOperator(BaseOperator):
    """Starts watching `bucket`/`prefix` under `policy` (a `streamwatch.Policy`).
    `include`/`exclude` are the key filter: globs on the key below the prefix
    (`**/*.parquet`, `_temporary/**`); a key counts when it matches any
    include (none: every key) and no exclude."""

    template_fields: Sequence[str] = ("bucket", "prefix", "labels", "include", "exclude")

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        policy: Union[Policy, watch_pb2.Policy, None] = None,
        labels: Optional[Dict[str, str]] = None,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        streamwatch_conn_id: str = StreamwatchHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.bucket, self.prefix, self.policy = bucket, prefix, policy
        self.labels = labels or {}
        self.include, self.exclude = key_filter(include, exclude)
        self.streamwatch_conn_id = streamwatch_conn_id

    def execute(self, context: Any) -> str:
        with StreamwatchHook(self.streamwatch_conn_id).get_client() as client:
            started = client.start_watch(
                self.bucket,
                self.prefix,
                self.policy,
                labels=self.labels,
                client_token=task_client_token(context),
                include=self.include,
                exclude=self.exclude,
            )
        self.log.info(
            "watch %s on %s/%s (%s)",
            started.watch.watch_id,
            self.bucket,
            self.prefix,
            "started" if started.created else "already started by an earlier try",
        )
        return started.watch.watch_id
