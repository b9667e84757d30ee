"""The blocking client: one channel to the server and a method per RPC, plus
what is built on them: listing every page, following a watch's events across
disconnects and restarts (`events`), and waiting for a watch to end
(`wait_for_completion`). Answers are the protobuf messages of
`streamwatch.v1`; failures are the exceptions of `streamwatch.errors`.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Iterator, Mapping, Optional, Sequence, Union

import grpc

from streamwatch import _transport
from streamwatch._transport import DEFAULT_REQUEST_TIMEOUT, TLS, Backoff, Retry, is_terminal
from streamwatch.errors import (
    Cancelled,
    DeadlineExceeded,
    Failed,
    SequenceGap,
    StreamwatchError,
    TimedOut,
    WaitTimeout,
    from_rpc_error,
    is_retryable,
)
from streamwatch.policy import Policy
from streamwatch.v1 import ingest_pb2, ingest_pb2_grpc, watch_pb2, watch_pb2_grpc


def start_request(
    bucket: str,
    prefix: str,
    policy: Union[Policy, watch_pb2.Policy, None],
    labels: Optional[Mapping[str, str]],
    client_token: Optional[str],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    members: Sequence[str] = (),
) -> watch_pb2.StartWatchRequest:
    if isinstance(members, str):
        raise TypeError("members must be a sequence of watch ids, not one string")
    if isinstance(policy, Policy):
        policy = None if policy == Policy() else policy.to_proto()
    for name, patterns in (("include", include), ("exclude", exclude)):
        if isinstance(patterns, str):
            raise TypeError(f"{name} must be a sequence of glob patterns, not one string")
    return watch_pb2.StartWatchRequest(
        bucket=bucket,
        prefix=prefix,
        policy=policy,
        labels=dict(labels or {}),
        client_token=client_token or "",
        include=list(include),
        exclude=list(exclude),
        members=list(members),
    )


def replay_request(
    watch_id: Optional[str],
    objects: Optional[Sequence[tuple[datetime, Optional[datetime]]]],
    policies: Sequence[Policy],
) -> watch_pb2.ReplayWatchRequest:
    request = watch_pb2.ReplayWatchRequest(watch_id=watch_id or "")
    for created, arrived in objects or ():
        obj = request.objects.add()
        obj.created.FromDatetime(created)
        if arrived is not None:
            obj.arrived.FromDatetime(arrived)
    for policy in policies:
        request.policies.add().CopyFrom(policy.to_proto())
    return request


def objects_request(watch_id: str, generation: int, page_size: Optional[int], token: str) -> watch_pb2.ListWatchObjectsRequest:
    return watch_pb2.ListWatchObjectsRequest(
        watch_id=watch_id, generation=generation, page_size=page_size or 0, page_token=token
    )


def outcome(watch: watch_pb2.Watch, event: Optional[watch_pb2.WatchEvent] = None) -> watch_pb2.Watch:
    """`watch` when it completed; raises TimedOut, Cancelled or Failed with
    the reason otherwise. `event`, the terminal event seen, decides over the
    watch's current state (late data may have reopened it since)."""
    kind = event.WhichOneof("kind") if event is not None else None
    ended = {
        "timed_out": TimedOut,
        "cancelled": Cancelled,
    }.get(kind or "")
    if ended is None and kind is None:
        ended = {
            watch_pb2.WATCH_STATE_TIMED_OUT: TimedOut,
            watch_pb2.WATCH_STATE_CANCELLED: Cancelled,
            watch_pb2.WATCH_STATE_FAILED: Failed,
        }.get(watch.state)
    if ended is None:
        return watch
    error = ended(watch)
    if event is not None:
        error.reason = getattr(event, kind).reason or watch.reason
        error.args = (f"watch {watch.watch_id} {ended.state_name}: {error.reason}",)
    raise error


class Client:
    """A connection to a streamwatch server.

    ``Client("127.0.0.1:50051", token=...)``, or with TLS
    ``Client("https://streamwatch.internal:50051", token=..., tls=TLS(ca_certificate="ca.pem"))``.
    `timeout` bounds each unary call (seconds, None: unbounded); `backoff`
    paces reconnection of event streams. Use it as a context manager, or
    call `close()`.
    """

    def __init__(
        self,
        endpoint: str,
        token: Optional[str] = None,
        tls: Union[None, bool, TLS] = None,
        *,
        timeout: Optional[float] = DEFAULT_REQUEST_TIMEOUT,
        backoff: Backoff = Backoff(),
    ) -> None:
        t = _transport.target(endpoint, token, tls)
        if t.credentials is None:
            self._channel = grpc.insecure_channel(t.address, options=list(t.options))
        else:
            self._channel = grpc.secure_channel(t.address, t.credentials, options=list(t.options))
        self.endpoint = endpoint
        self._metadata = t.metadata
        self._timeout = timeout
        self.backoff = backoff
        self.watches = watch_pb2_grpc.WatchServiceStub(self._channel)
        self.ingest = ingest_pb2_grpc.IngestServiceStub(self._channel)

    # --- lifecycle -------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method, request, timeout: Optional[float] = None):
        try:
            return method(
                request,
                metadata=self._metadata,
                timeout=self._timeout if timeout is None else timeout,
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    # --- the RPCs -------------------------------------------------------------

    def start_watch(
        self,
        bucket: str,
        prefix: str = "",
        policy: Union[Policy, watch_pb2.Policy, None] = None,
        *,
        labels: Optional[Mapping[str, str]] = None,
        client_token: Optional[str] = None,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
    ) -> watch_pb2.StartWatchResponse:
        """Starts watching `bucket`/`prefix`. With `client_token`, a retry
        returns the watch the first call started (`created` is then False).
        `include`/`exclude` are globs on the key below the prefix
        (`**/*.parquet`; `**` crosses `/`, `*` does not): a key counts when it
        matches any include (none: every key) and no exclude."""
        request = start_request(bucket, prefix, policy, labels, client_token, include, exclude)
        return self._call(self.watches.StartWatch, request)

    def start_group(
        self,
        members: Sequence[str],
        policy: Union[Policy, watch_pb2.Policy, None] = None,
        *,
        labels: Optional[Mapping[str, str]] = None,
        client_token: Optional[str] = None,
    ) -> watch_pb2.StartWatchResponse:
        """Starts a watch group: it completes once every one of `members`
        (ids of this tenant's watches) has completed, and ends TIMED_OUT
        naming a member that did not. The policy may set timeout, late window
        and notify targets, no rule."""
        request = start_request("", "", policy, labels, client_token, members=members)
        return self._call(self.watches.StartWatch, request)

    def list_watch_objects(
        self, watch_id: str, *, generation: int = 0, page_size: Optional[int] = None
    ) -> Iterator[watch_pb2.WatchObject]:
        """The watch's manifest: every object it counted (first counted in
        `generation`; 0: all), in key order, fetching pages as it goes."""
        token = ""
        while True:
            page = self._call(self.watches.ListWatchObjects, objects_request(watch_id, generation, page_size, token))
            yield from page.objects
            if not page.next_page_token:
                return
            token = page.next_page_token

    def replay_watch(
        self,
        watch_id: Optional[str] = None,
        *,
        objects: Optional[Sequence[tuple[datetime, Optional[datetime]]]] = None,
        policies: Sequence[Policy] = (),
    ) -> watch_pb2.ReplayWatchResponse:
        """What completion policies would have decided on the watch's own
        objects, or on `objects` (`(created, arrived)` pairs of aware
        datetimes; `arrived` None: at creation): one `ReplayOutcome` per
        policy, the standard candidates and `policies` included."""
        return self._call(self.watches.ReplayWatch, replay_request(watch_id, objects, policies))

    def get_watch(self, watch_id: str) -> watch_pb2.Watch:
        return self._call(self.watches.GetWatch, watch_pb2.GetWatchRequest(watch_id=watch_id)).watch

    def list_watches(
        self,
        *,
        state: Optional[int] = None,
        labels: Optional[Mapping[str, str]] = None,
        page_size: Optional[int] = None,
    ) -> Iterator[watch_pb2.Watch]:
        """Every watch matching the filter, newest first, fetching pages as it goes."""
        token = ""
        while True:
            request = _transport.list_request(state, dict(labels or {}), page_size, token)
            page = self._call(self.watches.ListWatches, request)
            yield from page.watches
            if not page.next_page_token:
                return
            token = page.next_page_token

    def cancel_watch(self, watch_id: str, reason: str = "") -> watch_pb2.Watch:
        """Ends an ACTIVE watch with a CANCELLED event carrying `reason`."""
        request = watch_pb2.CancelWatchRequest(watch_id=watch_id, reason=reason)
        return self._call(self.watches.CancelWatch, request).watch

    def ingest_s3_events(self, documents: Sequence[str]) -> ingest_pb2.IngestS3EventsResponse:
        """Records notification documents (S3 `Records`, SNS-wrapped or
        EventBridge; one document per string) into the watches that want them."""
        request = ingest_pb2.IngestS3EventsRequest(documents=_transport.documents_list(documents))
        return self._call(self.ingest.IngestS3Events, request)

    def events(self, watch_id: str, after_seq: int = 0) -> "EventStream":
        """The watch's events with `seq > after_seq`, then live ones, until the
        server ends the stream; resumes from the last `seq` whenever the
        connection drops or the server restarts: each event once, in order."""
        return EventStream(self, watch_id, after_seq)

    # --- waiting ---------------------------------------------------------------

    def wait_for_completion(self, watch_id: str, timeout: Optional[float] = None) -> watch_pb2.Watch:
        """Waits until the watch's current generation ends and returns the
        watch if it completed; raises TimedOut, Cancelled or Failed (with the
        reason) if it did not, and WaitTimeout after `timeout` seconds."""
        deadline = _transport.deadline_after(timeout)
        try:
            watch = self._get_watch_retrying(watch_id, deadline)
            if watch.state != watch_pb2.WATCH_STATE_ACTIVE:
                return outcome(watch)
            stream = EventStream(self, watch_id, watch.last_seq, deadline)
            try:
                for event in stream:
                    if is_terminal(event):
                        return outcome(self._get_watch_retrying(watch_id, deadline), event)
            finally:
                stream.close()
            return outcome(self._get_watch_retrying(watch_id, deadline))
        except DeadlineExceeded:
            if deadline is None:
                raise
            raise WaitTimeout(watch_id, timeout or 0.0) from None

    def _get_watch_retrying(self, watch_id: str, deadline: Optional[float]) -> watch_pb2.Watch:
        retry = Retry(self.backoff, deadline)
        while True:
            try:
                request = watch_pb2.GetWatchRequest(watch_id=watch_id)
                timeout = _bounded(self._timeout, retry.remaining())
                return self._call(self.watches.GetWatch, request, timeout).watch
            except StreamwatchError as e:
                if not is_retryable(e):
                    raise
                time.sleep(retry.delay(watch_id, e))


class EventStream:
    """A watch's events, resumed across dropped connections (see
    `Client.events`). Iterating ends when the server ends the stream (after
    the terminal event, once no late window is open); a failure reconnecting
    cannot fix is raised. `last_seq` is the `seq` of the last event delivered;
    `reconnects` counts the failed attempts (a broken stream, a server not
    answering) that were retried."""

    def __init__(self, client: Client, watch_id: str, after_seq: int, deadline: Optional[float] = None):
        if after_seq < 0:
            raise ValueError(f"after_seq must be at least 0, not {after_seq}")
        self.watch_id = watch_id
        self.last_seq = after_seq
        self.reconnects = 0
        self._client = client
        self._retry = Retry(client.backoff, deadline)
        self._call: Optional[grpc.Call] = None
        self._finished = False

    def __iter__(self) -> "EventStream":
        return self

    def __next__(self) -> watch_pb2.WatchEvent:
        if self._finished:
            raise StopIteration
        try:
            event = self._next_event()
        except BaseException:
            self._finished = True
            self.close()
            raise
        if event is None:
            self._finished = True
            raise StopIteration
        return event

    def close(self) -> None:
        """Cancels the open call, if any."""
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_event(self) -> Optional[watch_pb2.WatchEvent]:
        while True:
            if self._call is None:
                request = watch_pb2.StreamWatchEventsRequest(watch_id=self.watch_id, after_seq=self.last_seq)
                self._call = self._client.watches.StreamWatchEvents(
                    request, metadata=self._client._metadata, timeout=self._retry.remaining()
                )
            try:
                event = next(self._call)
            except StopIteration:
                self._call = None
                return None
            except grpc.RpcError as e:
                self._call = None
                error = from_rpc_error(e)
                if not is_retryable(error):
                    raise error from None
                self.reconnects += 1
                time.sleep(self._retry.delay(self.watch_id, error))
                continue
            if event.seq <= self.last_seq:
                continue
            if event.seq != self.last_seq + 1:
                raise SequenceGap(self.watch_id, self.last_seq, event.seq)
            self._retry.reset()
            self.last_seq = event.seq
            return event


def _bounded(timeout: Optional[float], remaining: Optional[float]) -> Optional[float]:
    """The shorter of a call's timeout and what is left until a deadline."""
    if remaining is None:
        return timeout
    return remaining if timeout is None else min(timeout, remaining)
