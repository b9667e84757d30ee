"""How a client reaches the server: the endpoint, the bearer token, TLS (a CA
certificate, the server's name, a client certificate), the channel options
that make reconnecting quick, and the backoff between reconnection attempts.
Shared by `Client` and `AsyncClient`; nothing here makes a call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import grpc

from streamwatch.errors import DeadlineExceeded, ReconnectGaveUp, StreamwatchError
from streamwatch.v1 import watch_pb2

#: How long a unary call may take when no timeout is given, seconds.
DEFAULT_REQUEST_TIMEOUT = 30.0

Pem = Union[bytes, str, Path]
Metadata = Tuple[Tuple[str, str], ...]


@dataclass(frozen=True)
class TLS:
    """TLS to the server. `ca_certificate`: the PEM the server's certificate
    chains to (bytes, or a path), else the system's roots; `server_name`: the
    name the certificate must carry, when not the endpoint's host;
    `client_certificate` and `client_key`: presented to a server that
    authenticates clients by certificate."""

    ca_certificate: Optional[Pem] = None
    server_name: Optional[str] = None
    client_certificate: Optional[Pem] = None
    client_key: Optional[Pem] = None


@dataclass(frozen=True)
class Backoff:
    """Waits between reconnection attempts: `initial` seconds, doubling up to
    `max`; gives up once the server has been unreachable for `give_up_after`
    seconds (None: never)."""

    initial: float = 0.1
    max: float = 5.0
    give_up_after: Optional[float] = 300.0


def _pem(value: Pem, what: str) -> bytes:
    if isinstance(value, bytes):
        data = value
    else:
        path = Path(value)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ValueError(f"cannot read the {what} {path}: {e.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"the {what} is not PEM")
    return data


@dataclass(frozen=True)
class Target:
    """A parsed endpoint: where to connect and how."""

    address: str
    credentials: Optional[grpc.ChannelCredentials]
    options: Tuple[Tuple[str, Union[str, int]], ...]
    metadata: Metadata


# Reconnect quickly after a restart (gRPC's default first backoff is 1s and
# grows to 2 minutes); keep long event streams alive through idle proxies.
_CHANNEL_OPTIONS: Tuple[Tuple[str, Union[str, int]], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5000),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
)


def target(endpoint: str, token: Optional[str], tls: Union[None, bool, TLS]) -> Target:
    """`endpoint` is `host:port`, `http://host:port` or `https://host:port`;
    `tls` None follows the scheme, True is TLS with the system's roots."""
    if not isinstance(endpoint, str) or not endpoint:
        raise ValueError(f"invalid endpoint {endpoint!r}: expected host:port or a URL")
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        scheme, rest = "", endpoint
    if scheme not in ("", "http", "https"):
        raise ValueError(f"invalid endpoint {endpoint!r}: the scheme must be http or https")
    address = rest.rstrip("/")
    if not address or "/" in address:
        raise ValueError(f"invalid endpoint {endpoint!r}: expected host:port")
    if tls is None:
        tls = scheme == "https"
    if scheme == "http" and tls:
        raise ValueError(f"TLS options need an https:// endpoint, not {endpoint}")
    if scheme == "https" and tls is False:
        raise ValueError(f"an https:// endpoint needs TLS: {endpoint}")

    options = _CHANNEL_OPTIONS
    credentials = None
    if tls:
        settings = tls if isinstance(tls, TLS) else TLS()
        if (settings.client_certificate is None) != (settings.client_key is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=None
            if settings.ca_certificate is None
            else _pem(settings.ca_certificate, "CA certificate"),
            private_key=None if settings.client_key is None else _pem(settings.client_key, "client key"),
            certificate_chain=None
            if settings.client_certificate is None
            else _pem(settings.client_certificate, "client certificate"),
        )
        if settings.server_name:
            options = options + (("grpc.ssl_target_name_override", settings.server_name),)

    metadata: Metadata = ()
    if token is not None:
        if not token or not token.isascii() or not token.isprintable() or token.strip() != token:
            raise ValueError("the token must be non-empty printable ASCII without surrounding spaces")
        metadata = (("authorization", f"Bearer {token}"),)
    return Target(address, credentials, options, metadata)


class Retry:
    """One run of failed attempts under a `Backoff`, bounded by `deadline`
    (a `time.monotonic()` instant, or None)."""

    def __init__(self, backoff: Backoff, deadline: Optional[float] = None) -> None:
        self.backoff = backoff
        self.deadline = deadline
        self.reset()

    def reset(self) -> None:
        """The server answered: the next failure starts a new run."""
        self.next_delay = self.backoff.initial
        self.since: Optional[float] = None

    def delay(self, watch_id: str, error: StreamwatchError) -> float:
        """How long to wait before the next attempt after `error`, or raise."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
        elapsed = now - self.since
        if self.backoff.give_up_after is not None and elapsed >= self.backoff.give_up_after:
            raise ReconnectGaveUp(watch_id, elapsed, error) from None
        delay = self.next_delay
        if self.deadline is not None and now + delay >= self.deadline:
            raise DeadlineExceeded(f"the deadline passed while the server was unreachable: {error}")
        self.next_delay = min(self.next_delay * 2, self.backoff.max)
        return delay

    def remaining(self) -> Optional[float]:
        """Seconds left until the deadline (None: no deadline)."""
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("the deadline passed")
        return left


def deadline_after(timeout: Optional[float]) -> Optional[float]:
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError(f"timeout must be at least 0, not {timeout!r}")
    return time.monotonic() + timeout


TERMINAL_KINDS = ("completed", "timed_out", "cancelled")


def is_terminal(event: watch_pb2.WatchEvent) -> bool:
    """Whether `event` ends its generation: COMPLETED, TIMED_OUT or CANCELLED."""
    return event.WhichOneof("kind") in TERMINAL_KINDS


def list_request(
    state: Optional[int], labels: Optional[dict], page_size: Optional[int], page_token: str
) -> watch_pb2.ListWatchesRequest:
    return watch_pb2.ListWatchesRequest(
        state=state or watch_pb2.WATCH_STATE_UNSPECIFIED,
        labels=labels or {},
        page_size=page_size or 0,
        page_token=page_token,
    )


def documents_list(documents: Sequence[str]) -> list:
    if isinstance(documents, str):
        raise TypeError("documents must be a list of notification documents, not one string")
    return list(documents)
