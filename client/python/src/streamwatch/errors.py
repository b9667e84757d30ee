"""The exceptions of the client: a server's answer as `StreamwatchError` (a
subclass per gRPC code, carrying the code, the message and, for
INVALID_ARGUMENT, the field named), the watch outcomes that are not a
completion (`TimedOut`, `Cancelled`, `Failed`, with the reason), and the
client's own failures (a broken event sequence, a wait that ran out).
"""

from __future__ import annotations

import re
from typing import Optional

import grpc

from streamwatch.v1 import watch_pb2

# The server words every INVALID_ARGUMENT as "invalid <field>: <what>".
_FIELD = re.compile(r"^invalid ([A-Za-z0-9_.\[\]]+): ")


class StreamwatchError(Exception):
    """A call the server (or the transport) answered with a non-OK status."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None) -> None:
        if code is not None:
            self.code = code
        self.message = message
        super().__init__(f"{self.code.name}: {message}")


class InvalidArgument(StreamwatchError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    @property
    def field(self) -> Optional[str]:
        """The request field the server named (`bucket`, `policy.timeout`, ...)."""
        m = _FIELD.match(self.message)
        return m.group(1) if m else None


class NotFound(StreamwatchError, LookupError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(StreamwatchError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(StreamwatchError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(StreamwatchError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(StreamwatchError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(StreamwatchError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(StreamwatchError, ConnectionError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(StreamwatchError, TimeoutError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


_BY_CODE = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Unauthenticated,
        PermissionDenied,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
    )
}


def from_rpc_error(error: grpc.RpcError) -> StreamwatchError:
    """The exception for a failed call."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or ""
    cls = _BY_CODE.get(code)
    if cls is None:
        return StreamwatchError(details, code)
    return cls(details)


def is_retryable(error: StreamwatchError) -> bool:
    """Whether the call may succeed if made again: the server was unreachable
    or went away (a restart, a reset connection). Answers the server chose
    to give (NOT_FOUND, INVALID_ARGUMENT, ...) are final."""
    return error.code == grpc.StatusCode.UNAVAILABLE


class SequenceGap(StreamwatchError):
    """The event stream skipped a `seq`: delivered events would be missing."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, watch_id: str, last: int, got: int) -> None:
        self.watch_id, self.last, self.got = watch_id, last, got
        super().__init__(f"the events of watch {watch_id} jumped from seq {last} to {got}")


class ReconnectGaveUp(StreamwatchError):
    """The server stayed unreachable for longer than the backoff allows."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, watch_id: str, elapsed: float, last: StreamwatchError) -> None:
        self.watch_id, self.elapsed, self.last = watch_id, elapsed, last
        super().__init__(
            f"gave up reconnecting to the events of watch {watch_id} after {elapsed:.1f}s: {last}"
        )


class WaitTimeout(TimeoutError):
    """`wait_for_completion` ran out of time; the watch is still ACTIVE."""

    def __init__(self, watch_id: str, timeout: float) -> None:
        self.watch_id, self.timeout = watch_id, timeout
        super().__init__(f"watch {watch_id} did not end within {timeout:g}s")


class WatchEnded(Exception):
    """A watch ended without completing; `watch` is the watch as it ended."""

    state_name = ""

    def __init__(self, watch: watch_pb2.Watch) -> None:
        self.watch = watch
        self.watch_id = watch.watch_id
        self.reason = watch.reason
        super().__init__(f"watch {watch.watch_id} {self.state_name}: {watch.reason}")


class TimedOut(WatchEnded):
    state_name = "timed out"


class Cancelled(WatchEnded):
    state_name = "was cancelled"


class Failed(WatchEnded):
    state_name = "failed"
