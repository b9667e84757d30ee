"""Fixtures for the black-box gRPC tests of streamwatch-server.

A session fixture generates Python stubs from proto/ into a temp dir (the
grpc.health.v1 stubs come from grpcio-health-checking), starts the real server
binary on a free loopback port with a temp SQLite file and a two-tenant
tenants file, waits for it to report SERVING over grpc.health.v1, and stops
it with SIGTERM at the end.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import grpc
import pytest

REPO = Path(__file__).resolve().parents[3]
PROTO_ROOT = REPO / "proto"
DEFAULT_BIN = REPO / "target" / "debug" / "streamwatch-server"

STARTUP_DEADLINE_S = 20.0
RPC_TIMEOUT_S = 5.0

def _well_known_protos() -> str:
    """The include dir of google/protobuf/*.proto shipped with grpcio-tools."""
    try:
        from importlib.resources import files

        return str(files("grpc_tools") / "_proto")
    except Exception:  # pragma: no cover - older Pythons
        import pkg_resources

        return pkg_resources.resource_filename("grpc_tools", "_proto")


@pytest.fixture(scope="session")
def pb(tmp_path_factory) -> types.SimpleNamespace:
    """Generated message and stub modules."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("stubs")

    protos = [str(p.relative_to(PROTO_ROOT)) for p in sorted(PROTO_ROOT.rglob("*.proto"))]
    assert "streamwatch/v1/watch.proto" in protos and "streamwatch/v1/ingest.proto" in protos
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{_well_known_protos()}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    rc = protoc.main(args)
    assert rc == 0, f"protoc failed ({rc}): {' '.join(args)}"

    # The generated *_pb2_grpc modules import their *_pb2 siblings by package path.
    sys.path.insert(0, str(out))
    importlib.invalidate_caches()
    return types.SimpleNamespace(
        watch=importlib.import_module("streamwatch.v1.watch_pb2"),
        watch_grpc=importlib.import_module("streamwatch.v1.watch_pb2_grpc"),
        ingest=importlib.import_module("streamwatch.v1.ingest_pb2"),
        ingest_grpc=importlib.import_module("streamwatch.v1.ingest_pb2_grpc"),
        health=importlib.import_module("grpc_health.v1.health_pb2"),
        health_grpc=importlib.import_module("grpc_health.v1.health_pb2_grpc"),
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Server:
    def __init__(self, proc, addr, log_path, tokens, channel, pb):
        self.proc = proc
        self.addr = addr
        self.log_path = log_path
        self.tokens = tokens
        self.channel = channel
        self.pb = pb
        self.watch = pb.watch_grpc.WatchServiceStub(channel)
        self.ingest = pb.ingest_grpc.IngestServiceStub(channel)
        self.health = pb.health_grpc.HealthStub(channel)

    def auth(self, tenant: str | None):
        """Call metadata for `tenant` (None: no authorization header)."""
        if tenant is None:
            return ()
        return (("authorization", f"Bearer {self.tokens[tenant]}"),)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "<no log>"


def _wait_serving(proc, channel, pb, log_path) -> None:
    health = pb.health_grpc.HealthStub(channel)
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    last_error = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode} during startup:\n"
                + log_path.read_text(errors="replace")[-4000:]
            )
        try:
            resp = health.Check(pb.health.HealthCheckRequest(), timeout=0.5)
            if resp.status == pb.health.HealthCheckResponse.SERVING:
                return
            last_error = f"status {resp.status}"
        except grpc.RpcError as e:
            last_error = f"{e.code()}: {e.details()}"
        time.sleep(0.05)
    raise RuntimeError(
        f"server not SERVING within {STARTUP_DEADLINE_S}s (last: {last_error}):\n"
        + log_path.read_text(errors="replace")[-4000:]
    )


def _stop(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="session")
def server(pb, tmp_path_factory):
    binary = Path(os.environ.get("STREAMWATCH_SERVER_BIN", str(DEFAULT_BIN)))
    if not binary.is_file():
        pytest.fail(f"server binary {binary} not found; run `cargo build -p streamwatch-server`")

    work = tmp_path_factory.mktemp("server")
    tokens = {"acme": "acme-" + secrets.token_hex(16), "globex": "globex-" + secrets.token_hex(16)}
    tenants = work / "tenants.toml"
    tenants.write_text(
        "[[tenant]]\n"
        'id = "acme"\n'
        f'token_sha256 = ["{_sha256(tokens["acme"])}"]\n'
        'buckets = ["acme-*"]\n'
        "\n"
        "[[tenant]]\n"
        'id = "globex"\n'
        f'token_sha256 = ["{_sha256(tokens["globex"])}"]\n'
        'buckets = ["globex-*"]\n'
    )
    log_path = work / "server.log"

    # The free port can be taken between probing and binding: retry a few times.
    for attempt in range(3):
        addr = f"127.0.0.1:{_free_port()}"
        log = open(log_path, "ab")
        proc = subprocess.Popen(
            [str(binary), "--listen", addr, "--data", str(work / "streamwatch.db"),
             "--tenants", str(tenants)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        channel = grpc.insecure_channel(addr)
        try:
            _wait_serving(proc, channel, pb, log_path)
            break
        except RuntimeError:
            channel.close()
            _stop(proc)
            log.close()
            if attempt == 2 or "cannot listen" not in log_path.read_text(errors="replace"):
                raise
    srv = Server(proc, addr, log_path, tokens, channel, pb)
    try:
        yield srv
    finally:
        channel.close()
        _stop(proc)
        log.close()
    # A clean SIGTERM shutdown ends the process with status 0.
    assert proc.returncode == 0, f"server exited with {proc.returncode}:\n{srv.log()}"


@pytest.fixture
def launch(pb, tmp_path):
    """Starts the server binary with extra flags; every server started is stopped at the end.

    Returns a function `launch(*flags) -> Server`. Each call gets a fresh
    loopback port; pass `--data` to share a store between calls.
    """
    binary = Path(os.environ.get("STREAMWATCH_SERVER_BIN", str(DEFAULT_BIN)))
    if not binary.is_file():
        pytest.fail(f"server binary {binary} not found; run `cargo build -p streamwatch-server`")
    started = []

    def _launch(*flags: str) -> Server:
        log_path = tmp_path / f"server-{len(started)}.log"
        addr = f"127.0.0.1:{_free_port()}"
        log = open(log_path, "ab")
        proc = subprocess.Popen(
            [str(binary), "--listen", addr, *flags],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")},
        )
        channel = grpc.insecure_channel(addr)
        started.append((proc, channel, log))
        _wait_serving(proc, channel, pb, log_path)
        return Server(proc, addr, log_path, {}, channel, pb)

    yield _launch
    for proc, channel, log in started:
        channel.close()
        _stop(proc)
        log.close()
