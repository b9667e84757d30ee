"""Dagster sensors for streamwatch: `streamwatch_sensor` turns each completion
of the watches it follows into a `RunRequest` with
`run_key = "<watch_id>:<generation>"`, so a data set reopened by late data
runs again and a repeated completion never does; optionally it also records
an `AssetMaterialization` of an external asset per completion. The cursor
is the last `seq` read of each watch (JSON `{watch_id: seq}`): each tick
reads only the events after it, up to the watch's `last_seq`, and never
waits for live ones. `StreamwatchResource` holds the endpoint, token and TLS,
and starts watches (with a key filter) from ops and assets.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import dagster as dg

from streamwatch import TLS, Backoff, Client, Policy, watch_summary
from streamwatch.v1 import watch_pb2

#: A tick gives up on a server that stays unreachable this long (seconds).
TICK_GIVE_UP_AFTER = 30.0


class StreamwatchResource(dg.ConfigurableResource):
    """Where the streamwatch server is: `endpoint` (`https://host:port` or
    `host:port`), the tenant's `token` (for example `dg.EnvVar("STREAMWATCH_TOKEN")`),
    and for TLS a `ca_certificate` path and the `server_name` its
    certificate carries."""

    endpoint: str
    token: Optional[str] = None
    tls: Optional[bool] = None
    ca_certificate: Optional[str] = None
    server_name: Optional[str] = None
    timeout: float = 30.0

    def get_client(self, backoff: Backoff = Backoff()) -> Client:
        tls: Union[None, bool, TLS] = self.tls
        if self.ca_certificate or self.server_name:
            tls = TLS(ca_certificate=self.ca_certificate, server_name=self.server_name)
        return Client(self.endpoint, token=self.token, tls=tls, timeout=self.timeout, backoff=backoff)

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
    ) -> watch_pb2.Watch:
        """Starts a watch from an op or asset (for example the one a
        `streamwatch_sensor` follows by its labels) and returns it; as
        `Client.start_watch`, with the key filter `include`/`exclude`. Give
        a `client_token` derived from the run (`context.run_id`) so a retried
        step gets the same watch."""
        with self.get_client() as client:
            started = client.start_watch(
                bucket,
                prefix,
                policy,
                labels=labels,
                client_token=client_token,
                include=include,
                exclude=exclude,
            )
        return started.watch


def completion(watch: watch_pb2.Watch, event: watch_pb2.WatchEvent) -> Dict[str, Any]:
    """The watch summary for the generation `event` completed."""
    return {
        **watch_summary(watch),
        "state": "COMPLETED",
        "generation": event.generation,
        "object_count": event.completed.object_count,
        "reason": event.completed.reason,
        "completed_at": event.time.ToJsonString(),
        "seq": event.seq,
    }


def _completions_after(client: Client, watch: watch_pb2.Watch, after_seq: int) -> List[Dict[str, Any]]:
    """The completions logged after `after_seq`, up to the watch's `last_seq`."""
    found = []
    with client.events(watch.watch_id, after_seq) as stream:
        for event in stream:
            if event.WhichOneof("kind") == "completed":
                found.append(completion(watch, event))
            if event.seq >= watch.last_seq:
                break
    return found


def streamwatch_sensor(
    *,
    name: str,
    job: Optional[Any] = None,
    job_name: Optional[str] = None,
    labels: Optional[Mapping[str, str]] = None,
    watch_ids: Optional[Sequence[str]] = None,
    run_config: Optional[Callable[[Dict[str, Any]], Mapping[str, Any]]] = None,
    asset_key: Optional[Union[str, Sequence[str], dg.AssetKey]] = None,
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> dg.SensorDefinition:
    """A sensor following the watches carrying every one of `labels` (a
    recurring data set's), or the watches `watch_ids`. `run_config` maps a
    completion (`completion()`'s dict) to the run's config; each run is also
    tagged `streamwatch/watch_id` and `streamwatch/generation`. With
    `asset_key`, each completion is also recorded as a materialization of
    that (external) asset. The sensor needs the resource `streamwatch`
    (a `StreamwatchResource`)."""
    if (labels is None) == (watch_ids is None):
        raise ValueError("streamwatch_sensor needs exactly one of labels or watch_ids")
    if labels is not None and not labels:
        raise ValueError("labels must name at least one label (an empty filter follows every watch)")
    key = None if asset_key is None else dg.AssetKey.from_coercible(asset_key)

    @dg.sensor(
        name=name,
        job=job,
        job_name=job_name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
    )
    def _sensor(context: dg.SensorEvaluationContext, streamwatch: StreamwatchResource) -> dg.SensorResult:
        try:
            cursor: Dict[str, int] = json.loads(context.cursor) if context.cursor else {}
        except ValueError:
            raise ValueError(f"sensor {name}: the cursor is not JSON: {context.cursor!r}") from None
        run_requests, asset_events, next_cursor = [], [], {}
        with streamwatch.get_client(Backoff(give_up_after=TICK_GIVE_UP_AFTER)) as client:
            if labels is not None:
                watches = list(client.list_watches(labels=dict(labels)))
            else:
                watches = [client.get_watch(watch_id) for watch_id in watch_ids or ()]
            for watch in watches:
                seen = int(cursor.get(watch.watch_id, 0))
                if watch.last_seq > seen:
                    for done in _completions_after(client, watch, seen):
                        run_requests.append(
                            dg.RunRequest(
                                run_key=f"{done['watch_id']}:{done['generation']}",
                                run_config=dict(run_config(done)) if run_config else {},
                                tags={
                                    "streamwatch/watch_id": done["watch_id"],
                                    "streamwatch/generation": str(done["generation"]),
                                },
                            )
                        )
                        if key is not None:
                            asset_events.append(
                                dg.AssetMaterialization(
                                    asset_key=key,
                                    description=f"{done['bucket']}/{done['prefix']} landed: {done['reason']}",
                                    metadata={
                                        "watch_id": done["watch_id"],
                                        "generation": done["generation"],
                                        "object_count": done["object_count"],
                                        "include": ", ".join(done["include"]),
                                        "exclude": ", ".join(done["exclude"]),
                                    },
                                )
                            )
                    seen = watch.last_seq
                next_cursor[watch.watch_id] = seen
        context.log.info("%d completions among %d watches", len(run_requests), len(watches))
        return dg.SensorResult(
            run_requests=run_requests,
            asset_events=asset_events,
            cursor=json.dumps(next_cursor, sort_keys=True),
        )

    return _sensor
