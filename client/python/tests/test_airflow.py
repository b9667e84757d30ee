"""The Airflow provider with Airflow itself against the real server: the
trigger's async generator run as Airflow's provider tests run it (first
event of `run()`), rebuilt from `serialize()` as a restarted triggerer
rebuilds it, the sensor in poke mode, and whole DAGs with `dag.test()`:
start -> data lands -> deferrable sensor -> a task reading the summary from
XCom; and a watch that times out failing its sensor with the reason."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from importlib import import_module
from types import SimpleNamespace

import pytest
from conftest import TOKENS, s3_document, unique_prefix

from streamwatch import Client, Policy, TimedOut
from streamwatch.v1 import watch_pb2

BUCKET = "acme-lake"


@pytest.fixture(scope="module")
def airflow_env(server):
    """The `streamwatch_default` connection (from the environment) and an
    initialized metadata database (dag.test() records its runs there)."""
    os.environ["AIRFLOW_CONN_STREAMWATCH_DEFAULT"] = json.dumps(
        {"conn_type": "streamwatch", "host": server.address, "password": TOKENS["acme"]}
    )
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
    yield
    del os.environ["AIRFLOW_CONN_STREAMWATCH_DEFAULT"]


@pytest.fixture
def acme(server):
    with Client(server.endpoint, token=TOKENS["acme"]) as client:
        yield client


def first_event(trigger):
    """The first TriggerEvent of the trigger's run(), as the triggerer takes it."""

    async def run():
        generator = trigger.run()
        try:
            return await generator.asend(None)
        finally:
            await generator.aclose()

    return asyncio.run(asyncio.wait_for(run(), timeout=30))


def test_the_provider_registers_the_connection_type(airflow_env):
    from airflow.providers_manager import ProvidersManager

    hooks = ProvidersManager().hooks
    assert "streamwatch" in hooks, sorted(hooks)
    assert hooks["streamwatch"].hook_class_name == "streamwatch.airflow.hooks.StreamwatchHook"


def test_connection_settings_from_host_token_and_tls_extras():
    from airflow.sdk import Connection

    from streamwatch.airflow.hooks import client_settings

    conn = Connection(conn_id="sw", conn_type="streamwatch", host="streamwatch.internal", port=50051,
                      password="t0k", extra=json.dumps({"ca_certificate": "/etc/ca.pem", "server_name": "sw"}))
    settings = client_settings(conn)
    assert settings["endpoint"] == "https://streamwatch.internal:50051"
    assert settings["token"] == "t0k"
    assert (settings["tls"].ca_certificate, settings["tls"].server_name) == ("/etc/ca.pem", "sw")
    bad = Connection(conn_id="sw", conn_type="streamwatch", host="h:1", extra=json.dumps({"tsl": True}))
    with pytest.raises(ValueError, match=r"unknown extras \['tsl'\]"):
        client_settings(bad)


def test_the_trigger_fires_on_completion_with_the_summary(airflow_env, acme):
    from airflow.triggers.base import TriggerEvent

    from streamwatch.airflow.triggers import StreamwatchTrigger

    prefix = unique_prefix("trigger")
    w = acme.start_watch(BUCKET, prefix, Policy.expected_count(2)).watch
    acme.ingest_s3_events([s3_document(BUCKET, prefix + "a.json", prefix + "b.json")])
    trigger = StreamwatchTrigger(w.watch_id)
    event = first_event(trigger)
    assert isinstance(event, TriggerEvent)
    assert event.payload["status"] == "completed"
    assert event.payload["watch"]["watch_id"] == w.watch_id
    assert event.payload["watch"]["object_count"] == 2
    assert trigger.seen == list(range(1, event.payload["seq"] + 1))


def test_a_trigger_rebuilt_from_serialize_resumes_after_its_seq(airflow_env, acme):
    from streamwatch.airflow.triggers import StreamwatchTrigger

    prefix = unique_prefix("resume")
    w = acme.start_watch(BUCKET, prefix, Policy.expected_count(3)).watch
    acme.ingest_s3_events([s3_document(BUCKET, prefix + "1.json")])
    after = acme.get_watch(w.watch_id).last_seq
    assert after >= 2  # STARTED, PROGRESS
    classpath, kwargs = StreamwatchTrigger(w.watch_id, after_seq=after).serialize()

    # The triggerer restarts: it imports the class and builds it from the kwargs.
    module, name = classpath.rsplit(".", 1)
    rebuilt = getattr(import_module(module), name)(**kwargs)
    acme.ingest_s3_events([s3_document(BUCKET, prefix + "2.json", prefix + "3.json")])
    event = first_event(rebuilt)
    assert event.payload["status"] == "completed"
    assert rebuilt.seen == list(range(after + 1, event.payload["seq"] + 1)), "no gap, no repeat"
    assert rebuilt.serialize()[1]["after_seq"] == event.payload["seq"]


def test_the_trigger_reports_cancellation_and_the_sensor_fails_with_the_reason(airflow_env, acme):
    from airflow.sdk.exceptions import AirflowFailException

    from streamwatch.airflow.sensors import StreamwatchWatchSensor
    from streamwatch.airflow.triggers import StreamwatchTrigger

    w = acme.start_watch(BUCKET, unique_prefix("cancelled"), Policy.quiet_period(3600)).watch
    acme.cancel_watch(w.watch_id, "upstream job was aborted")
    event = first_event(StreamwatchTrigger(w.watch_id))
    assert (event.payload["status"], event.payload["reason"]) == ("cancelled", "upstream job was aborted")
    sensor = StreamwatchWatchSensor(task_id="wait", watch_id=w.watch_id, deferrable=True)
    with pytest.raises(AirflowFailException, match="cancelled: upstream job was aborted"):
        sensor.execute_complete(context={}, event=event.payload)


def test_the_trigger_reports_an_unknown_watch_as_an_error(airflow_env):
    from streamwatch.airflow.triggers import StreamwatchTrigger

    event = first_event(StreamwatchTrigger("01a2386b-08bd-7480-8f8a-e74fc46e21ce"))
    assert event.payload["status"] == "error"
    assert "NOT_FOUND" in event.payload["message"]


def test_poke_mode_reads_get_watch(airflow_env, acme):
    from airflow.sdk.exceptions import AirflowFailException

    from streamwatch.airflow.sensors import StreamwatchWatchSensor

    prefix = unique_prefix("poke")
    w = acme.start_watch(BUCKET, prefix, Policy.expected_count(1)).watch
    sensor = StreamwatchWatchSensor(task_id="wait", watch_id=w.watch_id)
    assert sensor.poke({}) is False
    acme.ingest_s3_events([s3_document(BUCKET, prefix + "x.json")])
    acme.wait_for_completion(w.watch_id, timeout=20)
    done = sensor.poke({})
    assert done.is_done and done.xcom_value["state"] == "COMPLETED"
    assert done.xcom_value["object_count"] == 1

    timed = acme.start_watch(BUCKET, unique_prefix("poke-t"), Policy.quiet_period(3600).timeout(1)).watch
    with pytest.raises(TimedOut):
        acme.wait_for_completion(timed.watch_id, timeout=20)
    with pytest.raises(AirflowFailException, match="timed out"):
        StreamwatchWatchSensor(task_id="wait", watch_id=timed.watch_id).poke({})


def load_dag(name: str):
    """The DAG of tests/dags/<name>.py (the folder is Airflow's dags folder)."""
    return import_module(f"dags.{name}").dag


def test_a_dag_waits_in_the_triggerer_and_hands_the_summary_on(airflow_env, tmp_path, capfd, caplog):
    prefix = unique_prefix("dag")
    out = tmp_path / "summary.json"
    run = load_dag("streamwatch_landing").test(run_conf={"prefix": prefix, "out": str(out)})
    assert run.state == "success", run.state
    # The sensor deferred: the watch was still ACTIVE when it ran.
    # (Airflow logs it through logging or to stdout, depending on what configured logging first.)
    assert "running trigger in line" in capfd.readouterr().out + caplog.text
    summary = json.loads(out.read_text())
    assert (summary["state"], summary["object_count"], summary["prefix"]) == ("COMPLETED", 2, prefix)


def test_a_dag_whose_watch_times_out_fails_with_the_reason(airflow_env, acme, capfd, caplog):
    prefix = unique_prefix("dag-timeout")
    run = load_dag("streamwatch_timeout").test(run_conf={"prefix": prefix})
    assert run.state == "failed", run.state
    (watch,) = [w for w in acme.list_watches() if w.prefix == prefix]
    assert watch.state == watch_pb2.WATCH_STATE_TIMED_OUT
    assert watch.reason and f"timed out: {watch.reason}" in capfd.readouterr().out + caplog.text


def test_the_operator_and_a_starting_sensor_pass_the_key_filter(airflow_env, acme):
    from streamwatch.airflow.operators import StreamwatchStartWatchOperator
    from streamwatch.airflow.sensors import StreamwatchWatchSensor
    from streamwatch.airflow.triggers import StreamwatchTrigger

    prefix = unique_prefix("filtered")
    ti = SimpleNamespace(dag_id="d", task_id="start", run_id=prefix, map_index=-1)
    operator = StreamwatchStartWatchOperator(
        task_id="start", bucket=BUCKET, prefix=prefix, policy=Policy.expected_count(2),
        include=["**/*.parquet"], exclude=["_temporary/**"],
    )
    assert {"include", "exclude"} <= set(operator.template_fields)
    watch_id = operator.execute({"ti": ti})
    watch = acme.get_watch(watch_id)
    assert (list(watch.include), list(watch.exclude)) == (["**/*.parquet"], ["_temporary/**"])
    assert operator.execute({"ti": ti}) == watch_id, "a retried task gets the same watch"
    names = ("_temporary/0/x.parquet", "a.parquet", "notes.txt", "day=1/b.parquet")
    acme.ingest_s3_events([s3_document(BUCKET, *(prefix + n for n in names))])
    event = first_event(StreamwatchTrigger(watch_id))
    assert event.payload["status"] == "completed"
    summary = event.payload["watch"]
    assert summary["object_count"] == 2, "only the included keys counted"
    assert (summary["include"], summary["exclude"]) == (["**/*.parquet"], ["_temporary/**"])

    sensor = StreamwatchWatchSensor(
        task_id="wait", bucket=BUCKET, prefix=prefix + "s/", policy=Policy.expected_count(1), exclude=["**/_SUCCESS"]
    )
    assert sensor.poke({"ti": SimpleNamespace(dag_id="d", task_id="wait", run_id=prefix, map_index=-1)}) is False
    started = acme.get_watch(sensor.watch_id)
    assert (list(started.include), list(started.exclude)) == ([], ["**/_SUCCESS"])
    with pytest.raises(ValueError, match="give them with bucket"):
        StreamwatchWatchSensor(task_id="w", watch_id=watch_id, include=["*.json"])
    with pytest.raises(TypeError, match="not one string"):
        StreamwatchStartWatchOperator(task_id="s", bucket=BUCKET, include="*.json")
