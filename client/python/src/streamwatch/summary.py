"""A watch as plain JSON-ready data (str, int, None): what the Airflow sensor
pushes to XCom, the Airflow trigger carries in its event, and the Dagster
sensor puts into run config and tags."""

from __future__ import annotations

from typing import Any, Dict, Optional

from google.protobuf import timestamp_pb2

from streamwatch.v1 import watch_pb2


def _time(message: Any, name: str) -> Optional[str]:
    if not message.HasField(name):
        return None
    ts: timestamp_pb2.Timestamp = getattr(message, name)
    return ts.ToJsonString()


def state_name(state: int) -> str:
    """`COMPLETED` for WATCH_STATE_COMPLETED, and so on."""
    return watch_pb2.WatchState.Name(state).removeprefix("WATCH_STATE_")


def watch_summary(watch: watch_pb2.Watch) -> Dict[str, Any]:
    """The watch's identity, key filter, state, counts and times (RFC 3339), as a dict."""
    return {
        "watch_id": watch.watch_id,
        "bucket": watch.bucket,
        "prefix": watch.prefix,
        "state": state_name(watch.state),
        "generation": watch.generation,
        "object_count": watch.object_count,
        "object_bytes": watch.object_bytes,
        "event_count": watch.event_count,
        "removed_count": watch.removed_count,
        "last_seq": watch.last_seq,
        "reason": watch.reason,
        "labels": dict(watch.labels),
        "include": list(watch.include),
        "exclude": list(watch.exclude),
        "created_at": _time(watch, "created_at"),
        "last_activity_at": _time(watch, "last_activity_at"),
        "completed_at": _time(watch, "completed_at"),
    }
