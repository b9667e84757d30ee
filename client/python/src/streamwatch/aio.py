"""The asyncio client (grpc.aio): the same calls as `streamwatch.Client`, as
coroutines, with `events` an async iterator that resumes across disconnects
and restarts. Create it inside the event loop that uses it.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import AsyncIterator, Mapping, Optional, Sequence, Union

import grpc
import grpc.aio

from streamwatch import _transport
from streamwatch._transport import DEFAULT_REQUEST_TIMEOUT, TLS, Backoff, Retry, is_terminal
from streamwatch.client import _bounded, objects_request, outcome, replay_request, start_request
from streamwatch.errors import (
    DeadlineExceeded,
    SequenceGap,
    StreamwatchError,
    WaitTimeout,
    from_rpc_error,
    is_retryable,
)
from streamwatch.policy import Policy
from streamwatch.v1 import ingest_pb2, ingest_pb2_grpc, watch_pb2, watch_pb2_grpc


class AsyncClient:
    """A grpc.aio connection to a streamwatch server; the arguments are
    those of `streamwatch.Client`. ``async with AsyncClient(...) as client``,
    or `await client.close()`."""

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
            self._channel = grpc.aio.insecure_channel(t.address, options=list(t.options))
        else:
            self._channel = grpc.aio.secure_channel(t.address, t.credentials, options=list(t.options))
        self.endpoint = endpoint
        self._metadata = t.metadata
        self._timeout = timeout
        self.backoff = backoff
        self.watches = watch_pb2_grpc.WatchServiceStub(self._channel)
        self.ingest = ingest_pb2_grpc.IngestServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method, request, timeout: Optional[float] = None):
        try:
            return await method(
                request,
                metadata=self._metadata,
                timeout=self._timeout if timeout is None else timeout,
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    async def start_watch(
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
        request = start_request(bucket, prefix, policy, labels, client_token, include, exclude)
        return await self._call(self.watches.StartWatch, request)

    async def start_group(
        self,
        members: Sequence[str],
        policy: Union[Policy, watch_pb2.Policy, None] = None,
        *,
        labels: Optional[Mapping[str, str]] = None,
        client_token: Optional[str] = None,
    ) -> watch_pb2.StartWatchResponse:
        """As `Client.start_group`."""
        request = start_request("", "", policy, labels, client_token, members=members)
        return await self._call(self.watches.StartWatch, request)

    async def list_watch_objects(
        self, watch_id: str, *, generation: int = 0, page_size: Optional[int] = None
    ) -> AsyncIterator[watch_pb2.WatchObject]:
        """As `Client.list_watch_objects`, an async iterator."""
        token = ""
        while True:
            page = await self._call(
                self.watches.ListWatchObjects, objects_request(watch_id, generation, page_size, token)
            )
            for obj in page.objects:
                yield obj
            if not page.next_page_token:
                return
            token = page.next_page_token

    async def replay_watch(
        self,
        watch_id: Optional[str] = None,
        *,
        objects: Optional[Sequence[tuple[datetime, Optional[datetime]]]] = None,
        policies: Sequence[Policy] = (),
    ) -> watch_pb2.ReplayWatchResponse:
        """As `Client.replay_watch`."""
        return await self._call(self.watches.ReplayWatch, replay_request(watch_id, objects, policies))

    async def get_watch(self, watch_id: str) -> watch_pb2.Watch:
        request = watch_pb2.GetWatchRequest(watch_id=watch_id)
        return (await self._call(self.watches.GetWatch, request)).watch

    async def list_watches(
        self,
        *,
        state: Optional[int] = None,
        labels: Optional[Mapping[str, str]] = None,
        page_size: Optional[int] = None,
    ) -> AsyncIterator[watch_pb2.Watch]:
        """Every watch matching the filter, newest first, fetching pages as it goes."""
        token = ""
        while True:
            request = _transport.list_request(state, dict(labels or {}), page_size, token)
            page = await self._call(self.watches.ListWatches, request)
            for watch in page.watches:
                yield watch
            if not page.next_page_token:
                return
            token = page.next_page_token

    async def cancel_watch(self, watch_id: str, reason: str = "") -> watch_pb2.Watch:
        request = watch_pb2.CancelWatchRequest(watch_id=watch_id, reason=reason)
        return (await self._call(self.watches.CancelWatch, request)).watch

    async def ingest_s3_events(self, documents: Sequence[str]) -> ingest_pb2.IngestS3EventsResponse:
        request = ingest_pb2.IngestS3EventsRequest(documents=_transport.documents_list(documents))
        return await self._call(self.ingest.IngestS3Events, request)

    def events(self, watch_id: str, after_seq: int = 0) -> "AsyncEventStream":
        """As `Client.events`, an async iterator."""
        return AsyncEventStream(self, watch_id, after_seq)

    async def wait_for_completion(self, watch_id: str, timeout: Optional[float] = None) -> watch_pb2.Watch:
        """As `Client.wait_for_completion`."""
        deadline = _transport.deadline_after(timeout)
        try:
            watch = await self._get_watch_retrying(watch_id, deadline)
            if watch.state != watch_pb2.WATCH_STATE_ACTIVE:
                return outcome(watch)
            stream = AsyncEventStream(self, watch_id, watch.last_seq, deadline)
            try:
                async for event in stream:
                    if is_terminal(event):
                        return outcome(await self._get_watch_retrying(watch_id, deadline), event)
            finally:
                stream.close()
            return outcome(await self._get_watch_retrying(watch_id, deadline))
        except DeadlineExceeded:
            if deadline is None:
                raise
            raise WaitTimeout(watch_id, timeout or 0.0) from None

    async def _get_watch_retrying(self, watch_id: str, deadline: Optional[float]) -> watch_pb2.Watch:
        retry = Retry(self.backoff, deadline)
        while True:
            try:
                request = watch_pb2.GetWatchRequest(watch_id=watch_id)
                timeout = _bounded(self._timeout, retry.remaining())
                return (await self._call(self.watches.GetWatch, request, timeout)).watch
            except StreamwatchError as e:
                if not is_retryable(e):
                    raise
                await asyncio.sleep(retry.delay(watch_id, e))


class AsyncEventStream:
    """As `streamwatch.client.EventStream`, an async iterator."""

    def __init__(
        self, client: AsyncClient, watch_id: str, after_seq: int, deadline: Optional[float] = None
    ) -> None:
        if after_seq < 0:
            raise ValueError(f"after_seq must be at least 0, not {after_seq}")
        self.watch_id = watch_id
        self.last_seq = after_seq
        self.reconnects = 0
        self._client = client
        self._retry = Retry(client.backoff, deadline)
        self._call: Optional[grpc.aio.UnaryStreamCall] = None
        self._finished = False

    def __aiter__(self) -> "AsyncEventStream":
        return self

    async def __anext__(self) -> watch_pb2.WatchEvent:
        if self._finished:
            raise StopAsyncIteration
        try:
            event = await self._next_event()
        except BaseException:
            self._finished = True
            self.close()
            raise
        if event is None:
            self._finished = True
            raise StopAsyncIteration
        return event

    def close(self) -> None:
        """Cancels the open call, if any."""
        if self._call is not None:
            self._call.cancel()
            self._call = None

    async def _next_event(self) -> Optional[watch_pb2.WatchEvent]:
        while True:
            if self._call is None:
                request = watch_pb2.StreamWatchEventsRequest(watch_id=self.watch_id, after_seq=self.last_seq)
                self._call = self._client.watches.StreamWatchEvents(
                    request, metadata=self._client._metadata, timeout=self._retry.remaining()
                )
            try:
                event = await self._call.read()
            except grpc.RpcError as e:
                self._call = None
                error = from_rpc_error(e)
                if not is_retryable(error):
                    raise error from None
                self.reconnects += 1
                await asyncio.sleep(self._retry.delay(self.watch_id, error))
                continue
            if event is grpc.aio.EOF:
                self._call = None
                return None
            if event.seq <= self.last_seq:
                continue
            if event.seq != self.last_seq + 1:
                raise SequenceGap(self.watch_id, self.last_seq, event.seq)
            self._retry.reset()
            self.last_seq = event.seq
            return event
