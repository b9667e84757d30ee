"""`StreamwatchWatchSensor`: waits until a watch completes and pushes its
summary (`streamwatch.watch_summary`) to XCom. It takes a `watch_id` (for
example `{{ ti.xcom_pull(task_ids='start') }}`) or starts a watch on
`bucket`/`prefix` itself, with the key filter `include`/`exclude` (one per
task instance and run: a retry waits on the same watch). In poke mode it reads GetWatch every `poke_interval`;
deferrable, it hands the wait to `StreamwatchTrigger` in the triggerer.
TIMED_OUT, CANCELLED and FAILED fail the task, without retries, with the
server's reason.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Dict, Optional, Sequence, Union

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException

from streamwatch import Policy, watch_summary
from streamwatch.airflow.hooks import StreamwatchHook
from streamwatch.airflow.operators import key_filter, task_client_token
from streamwatch.airflow.triggers import StreamwatchTrigger
from streamwatch.summary import state_name
from streamwatch.v1 import watch_pb2


class StreamwatchWatchSensor(BaseSensorOperator):
    template_fields: Sequence[str] = ("watch_id", "bucket", "prefix", "labels", "include", "exclude")

    def __init__(
        self,
        *,
        watch_id: Optional[str] = None,
        bucket: Optional[str] = None,
        prefix: str = "",
        policy: Union[Policy, watch_pb2.Policy, None] = None,
        labels: Optional[Dict[str, str]] = None,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        streamwatch_conn_id: str = StreamwatchHook.default_conn_name,
        deferrable: bool = False,
        **kwargs: Any,
    ) -> None:
        if (watch_id is None) == (bucket is None):
            raise ValueError("StreamwatchWatchSensor needs exactly one of watch_id or bucket")
        if watch_id is not None and (include or exclude):
            raise ValueError("include/exclude filter a watch the sensor starts: give them with bucket, not watch_id")
        super().__init__(**kwargs)
        self.watch_id, self.bucket, self.prefix = watch_id, bucket, prefix
        self.policy = policy
        self.labels = labels or {}
        self.include, self.exclude = key_filter(include, exclude)
        self.streamwatch_conn_id = streamwatch_conn_id
        self.deferrable = deferrable

    def _hook(self) -> StreamwatchHook:
        return StreamwatchHook(self.streamwatch_conn_id)

    def _watch_id(self, context: Any) -> str:
        """The watch waited on: the one given, or the one this task started."""
        if self.watch_id:
            return self.watch_id
        if self.bucket is None:
            raise AirflowFailException("watch_id rendered empty: no watch to wait for")
        with self._hook().get_client() as client:
            started = client.start_watch(
                self.bucket,
                self.prefix,
                self.policy,
                labels=self.labels,
                client_token=task_client_token(context),
                include=self.include,
                exclude=self.exclude,
            )
        self.watch_id = started.watch.watch_id
        self.log.info("waiting for watch %s on %s/%s", self.watch_id, self.bucket, self.prefix)
        return self.watch_id

    def execute(self, context: Any) -> Any:
        watch_id = self._watch_id(context)
        if not self.deferrable:
            return super().execute(context)
        with self._hook().get_client() as client:
            watch = client.get_watch(watch_id)
        if watch.state != watch_pb2.WATCH_STATE_ACTIVE:
            return self._finish(watch_summary(watch), state_name(watch.state).lower(), watch.reason)
        self.defer(
            trigger=StreamwatchTrigger(watch_id, after_seq=watch.last_seq, streamwatch_conn_id=self.streamwatch_conn_id),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout) if self.timeout is not None else None,
        )

    def poke(self, context: Any) -> Union[bool, PokeReturnValue]:
        watch_id = self._watch_id(context)
        with self._hook().get_client() as client:
            watch = client.get_watch(watch_id)
        if watch.state == watch_pb2.WATCH_STATE_ACTIVE:
            self.log.info("watch %s: %d objects so far", watch_id, watch.object_count)
            return False
        return PokeReturnValue(True, self._finish(watch_summary(watch), state_name(watch.state).lower(), watch.reason))

    def execute_complete(self, context: Any, event: Dict[str, Any]) -> Dict[str, Any]:
        if event.get("status") == "error":
            raise AirflowFailException(f"streamwatch: {event.get('message')}")
        return self._finish(event["watch"], event["status"], event.get("reason", ""))

    def _finish(self, summary: Dict[str, Any], status: str, reason: str) -> Dict[str, Any]:
        if status != "completed":
            raise AirflowFailException(f"watch {summary['watch_id']} {status.replace('_', ' ')}: {reason}")
        self.log.info("watch %s completed with %d objects: %s", summary["watch_id"], summary["object_count"], reason)
        return summary
