"""`StreamwatchTrigger`: follows a watch's StreamWatchEvents in the triggerer
and fires once, when the watch's generation ends. It resumes from `after_seq`
(the last `seq` it saw; the sensor defers with the watch's `last_seq`), so a
trigger rebuilt from `serialize()` after a triggerer restart reads every
later event once, and a server restart or dropped connection is resumed by
the client's event stream.

The event's payload: `status` (`completed`, `timed_out`, `cancelled`,
`failed` or `error`), `reason`, `seq` (the terminal event's), and `watch`
(`streamwatch.watch_summary`; absent for `error`, which has `message`).
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Dict, List, Optional, Tuple

from airflow.triggers.base import BaseTrigger, TriggerEvent

from streamwatch import Backoff, StreamwatchError, is_terminal, watch_summary
from streamwatch.airflow.hooks import StreamwatchHook
from streamwatch.summary import state_name
from streamwatch.v1 import watch_pb2


class StreamwatchTrigger(BaseTrigger):
    def __init__(
        self,
        watch_id: str,
        after_seq: int = 0,
        streamwatch_conn_id: str = StreamwatchHook.default_conn_name,
    ) -> None:
        super().__init__()
        self.watch_id = watch_id
        self.after_seq = after_seq
        self.streamwatch_conn_id = streamwatch_conn_id
        #: The seqs this instance read, in order (not serialized).
        self.seen: List[int] = []

    def serialize(self) -> Tuple[str, Dict[str, Any]]:
        return (
            "streamwatch.airflow.triggers.StreamwatchTrigger",
            {
                "watch_id": self.watch_id,
                "after_seq": self.after_seq,
                "streamwatch_conn_id": self.streamwatch_conn_id,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            # Reconnect for as long as the server is away: the deferral's
            # timeout (the sensor's `timeout`) bounds the wait, not the client.
            client = await StreamwatchHook(self.streamwatch_conn_id).get_async_client(
                Backoff(give_up_after=None)
            )
        except (ValueError, StreamwatchError) as e:
            yield TriggerEvent({"status": "error", "watch_id": self.watch_id, "message": str(e)})
            return
        try:
            terminal: Optional[watch_pb2.WatchEvent] = None
            async for event in client.events(self.watch_id, self.after_seq):
                self.after_seq = event.seq
                self.seen.append(event.seq)
                if is_terminal(event):
                    terminal = event
                    break
            watch = await client.get_watch(self.watch_id)
        except StreamwatchError as e:
            yield TriggerEvent({"status": "error", "watch_id": self.watch_id, "message": str(e)})
            return
        finally:
            await client.close()
        if terminal is not None:
            kind = terminal.WhichOneof("kind")
            reason = getattr(terminal, kind).reason or watch.reason
            seq = terminal.seq
        else:
            # The stream ended without a terminal event after `after_seq`: the
            # watch had already ended; its state says how.
            kind, reason, seq = state_name(watch.state).lower(), watch.reason, watch.last_seq
        yield TriggerEvent(
            {"status": kind, "reason": reason, "seq": seq, "watch_id": self.watch_id, "watch": watch_summary(watch)}
        )
