"""The Dagster sensor with dagster itself (`build_sensor_context`, a job run
in process) against the real server: a completion becomes one RunRequest
keyed `watch_id:generation`, the cursor keeps a repeat from asking again, a
reopened and recompleted data set asks again under the next generation,
and the asset form records a materialization per completion."""

from __future__ import annotations

import json

import dagster as dg
import pytest
from conftest import TOKENS, s3_document, unique_prefix

from streamwatch import Client, Policy
from streamwatch.dagster import StreamwatchResource, streamwatch_sensor

BUCKET = "acme-lake"


@dg.op(config_schema={"watch_id": str, "generation": int, "object_count": int})
def report(context) -> dict:
    return dict(context.op_config)


@dg.job
def daily_report():
    report()


def run_config(done: dict) -> dict:
    return {"ops": {"report": {"config": {k: done[k] for k in ("watch_id", "generation", "object_count")}}}}


def wait_generation(client: Client, watch_id: str, generation: int) -> None:
    """Follows the watch's events until generation `generation` completes."""
    for event in client.events(watch_id):
        if event.WhichOneof("kind") == "completed" and event.generation == generation:
            return
    pytest.fail(f"watch {watch_id} never completed generation {generation}")


def test_completions_become_run_requests_keyed_by_generation(server):
    series = {"series": unique_prefix("daily")}
    prefix = unique_prefix("dagster")
    resource = StreamwatchResource(endpoint=server.endpoint, token=TOKENS["acme"])
    sensor = streamwatch_sensor(name="landed", job=daily_report, labels=series, run_config=run_config)

    def tick(cursor):
        context = dg.build_sensor_context(cursor=cursor, resources={"streamwatch": resource})
        return sensor(context)

    with Client(server.endpoint, token=TOKENS["acme"]) as client:
        w = client.start_watch(BUCKET, prefix, Policy.quiet_period(1).min_objects(1).late_window(120),
                               labels=series).watch

        active = tick(None)
        assert active.run_requests == []
        assert json.loads(active.cursor) == {w.watch_id: client.get_watch(w.watch_id).last_seq}

        client.ingest_s3_events([s3_document(BUCKET, prefix + "part-1.json")])
        wait_generation(client, w.watch_id, 1)
        first = tick(active.cursor)
        (request,) = first.run_requests
        assert request.run_key == f"{w.watch_id}:1"
        assert request.tags["streamwatch/generation"] == "1"
        assert json.loads(first.cursor) == {w.watch_id: client.get_watch(w.watch_id).last_seq}

        result = daily_report.execute_in_process(run_config=request.run_config, tags=request.tags)
        assert result.success
        assert result.output_for_node("report") == {"watch_id": w.watch_id, "generation": 1, "object_count": 1}

        # A tick with the cursor asks for nothing more; one without it asks
        # again under the same key, which Dagster runs at most once.
        assert tick(first.cursor).run_requests == []
        assert [r.run_key for r in tick(None).run_requests] == [f"{w.watch_id}:1"]

        # Late data reopens the data set: generation 2 completes and runs.
        client.ingest_s3_events([s3_document(BUCKET, prefix + "part-2-late.json")])
        wait_generation(client, w.watch_id, 2)
        second = tick(first.cursor)
        (request,) = second.run_requests
        assert request.run_key == f"{w.watch_id}:2"
        assert request.run_config["ops"]["report"]["config"]["object_count"] == 2


def test_the_asset_form_records_a_materialization_per_completion(server):
    prefix = unique_prefix("asset")
    resource = StreamwatchResource(endpoint=server.endpoint, token=TOKENS["acme"])
    with Client(server.endpoint, token=TOKENS["acme"]) as client:
        w = client.start_watch(BUCKET, prefix, Policy.expected_count(2)).watch
        client.ingest_s3_events([s3_document(BUCKET, prefix + "a.json", prefix + "b.json")])
        client.wait_for_completion(w.watch_id, timeout=20)
    sensor = streamwatch_sensor(name="lake_landed", job=daily_report, watch_ids=[w.watch_id],
                                run_config=run_config, asset_key=["lake", "day"])
    result = sensor(dg.build_sensor_context(resources={"streamwatch": resource}))
    assert [r.run_key for r in result.run_requests] == [f"{w.watch_id}:1"]
    (materialization,) = result.asset_events
    assert materialization.asset_key == dg.AssetKey(["lake", "day"])
    assert materialization.metadata["object_count"].value == 2


def test_a_sensor_needs_one_way_to_find_its_watches():
    with pytest.raises(ValueError, match="exactly one of labels or watch_ids"):
        streamwatch_sensor(name="nothing", job=daily_report)
    with pytest.raises(ValueError, match="at least one label"):
        streamwatch_sensor(name="everything", job=daily_report, labels={})


def test_the_resource_starts_a_filtered_watch_and_completions_carry_the_filter(server):
    series = {"series": unique_prefix("filtered")}
    prefix = unique_prefix("dagster-f")
    resource = StreamwatchResource(endpoint=server.endpoint, token=TOKENS["acme"])
    w = resource.start_watch(BUCKET, prefix, Policy.expected_count(1), labels=series,
                             client_token=prefix, include=["**/*.csv"], exclude=["tmp/**"])
    assert (list(w.include), list(w.exclude)) == (["**/*.csv"], ["tmp/**"])
    again = resource.start_watch(BUCKET, prefix, Policy.expected_count(1), labels=series,
                                 client_token=prefix, include=["**/*.csv"], exclude=["tmp/**"])
    assert again.watch_id == w.watch_id, "a retried step gets the same watch"
    sensor = streamwatch_sensor(name="filtered", job=daily_report, labels=series, run_config=run_config,
                                asset_key="landed")
    with Client(server.endpoint, token=TOKENS["acme"]) as client:
        client.ingest_s3_events([s3_document(BUCKET, prefix + "tmp/x.csv", prefix + "a.txt", prefix + "a.csv")])
        wait_generation(client, w.watch_id, 1)
    result = sensor(dg.build_sensor_context(cursor=None, resources={"streamwatch": resource}))
    (request,) = result.run_requests
    assert request.run_config["ops"]["report"]["config"]["object_count"] == 1
    (materialization,) = result.asset_events
    assert materialization.metadata["include"].value == "**/*.csv"
    assert materialization.metadata["exclude"].value == "tmp/**"
