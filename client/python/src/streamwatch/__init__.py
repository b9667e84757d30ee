"""streamwatch: a client for the streamwatch server, which tells when a data
set has landed in a bucket. `Client` blocks, `AsyncClient` is asyncio;
`Policy` builds completion policies; `streamwatch.errors` holds what calls
raise. The Airflow provider is `streamwatch.airflow`, the Dagster sensors
`streamwatch.dagster`; the protobuf messages are in `streamwatch.v1`.
"""

from streamwatch._transport import DEFAULT_REQUEST_TIMEOUT, TLS, Backoff, is_terminal
from streamwatch.aio import AsyncClient, AsyncEventStream
from streamwatch.client import Client, EventStream
from streamwatch.errors import (
    Cancelled,
    Failed,
    InvalidArgument,
    NotFound,
    StreamwatchError,
    TimedOut,
    WaitTimeout,
    WatchEnded,
)
from streamwatch.policy import (
    Adaptive,
    DelaySchedule,
    ExpectedCount,
    Marker,
    Polling,
    Policy,
    QuietPeriod,
    Sns,
    Sqs,
    Webhook,
)
from streamwatch.summary import watch_summary

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT",
    "Adaptive",
    "AsyncClient",
    "AsyncEventStream",
    "Backoff",
    "Cancelled",
    "Client",
    "DelaySchedule",
    "EventStream",
    "ExpectedCount",
    "Failed",
    "InvalidArgument",
    "Marker",
    "NotFound",
    "Policy",
    "Polling",
    "QuietPeriod",
    "Sns",
    "Sqs",
    "StreamwatchError",
    "TLS",
    "TimedOut",
    "WaitTimeout",
    "WatchEnded",
    "Webhook",
    "is_terminal",
    "watch_summary",
]
