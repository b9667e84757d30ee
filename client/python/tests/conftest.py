"""Fixtures for the tests of the streamwatch Python package: the real server
binary (STREAMWATCH_SERVER_BIN, default target/debug/streamwatch-server) on
loopback with a two-tenant tenants file, in plaintext or TLS (certificates
made here with `cryptography`), one per session or started and killed by a
test; and the notification documents S3 sends.

Airflow reads its configuration when first imported, so its home (a temp dir
with a SQLite metadata database) is set here, before any test imports it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import grpc
import pytest

REPO = Path(__file__).resolve().parents[3]
DEFAULT_BIN = REPO / "target" / "debug" / "streamwatch-server"
STARTUP_DEADLINE_S = 20.0

_airflow_home = Path(tempfile.mkdtemp(prefix="streamwatch-airflow-"))
os.environ["AIRFLOW_HOME"] = str(_airflow_home)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parent / "dags")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_airflow_home / 'airflow.db'}"
os.environ.setdefault("DAGSTER_HOME", str(_airflow_home / "dagster"))
Path(os.environ["DAGSTER_HOME"]).mkdir(exist_ok=True)

TOKENS = {"acme": "acme-" + secrets.token_hex(16), "globex": "globex-" + secrets.token_hex(16)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_binary() -> Path:
    binary = Path(os.environ.get("STREAMWATCH_SERVER_BIN", str(DEFAULT_BIN)))
    if not binary.is_file():
        pytest.fail(f"server binary {binary} not found; run `cargo build -p streamwatch-server`")
    return binary


def write_tenants(path: Path) -> Path:
    lines = []
    for tenant, token in TOKENS.items():
        digest = hashlib.sha256(token.encode()).hexdigest()
        lines += ["[[tenant]]", f'id = "{tenant}"', f'token_sha256 = ["{digest}"]', f'buckets = ["{tenant}-*"]', ""]
    path.write_text("\n".join(lines))
    return path


@dataclass
class Pki:
    """A CA and a server certificate for `localhost` and 127.0.0.1, as PEM files."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def make(cls, directory: Path) -> "Pki":
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "streamwatch test CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False, key_agreement=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        pki = cls(directory / "ca.pem", directory / "server.pem", directory / "server.key")
        pki.ca.write_bytes(ca.public_bytes(pem))
        pki.cert.write_bytes(cert.public_bytes(pem))
        pki.key.write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        return pki


@dataclass
class Server:
    """One streamwatch-server process."""

    proc: subprocess.Popen
    port: int
    log_path: Path
    pki: Optional[Pki] = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.pki else 'http'}://{self.address}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "<no log>"

    def kill(self) -> None:
        """kill -9: no graceful shutdown, connections drop."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def _wait_ready(server: Server) -> None:
    """Until the server accepts a gRPC connection (TLS handshake included)."""
    if server.pki:
        creds = grpc.ssl_channel_credentials(root_certificates=server.pki.ca.read_bytes())
        channel = grpc.secure_channel(
            server.address, creds, options=[("grpc.ssl_target_name_override", "localhost")]
        )
    else:
        channel = grpc.insecure_channel(server.address)
    try:
        grpc.channel_ready_future(channel).result(timeout=STARTUP_DEADLINE_S)
    except grpc.FutureTimeoutError:
        raise RuntimeError(
            f"server not ready within {STARTUP_DEADLINE_S}s (exit status {server.proc.poll()}):\n{server.log()}"
        ) from None
    finally:
        channel.close()


@dataclass
class Launcher:
    """Starts servers on a shared store; every one started is stopped at the end."""

    work: Path
    started: List[Server] = field(default_factory=list)

    def __call__(self, *, port: Optional[int] = None, data: Optional[Path] = None, tls: bool = False) -> Server:
        binary = server_binary()
        tenants = write_tenants(self.work / "tenants.toml")
        pki = Pki.make(self.work) if tls and not (self.work / "ca.pem").exists() else (
            Pki(self.work / "ca.pem", self.work / "server.pem", self.work / "server.key") if tls else None
        )
        port = port or free_port()
        log_path = self.work / f"server-{len(self.started)}.log"
        args = [
            str(binary), "--listen", f"127.0.0.1:{port}",
            "--data", str(data or self.work / "streamwatch.db"),
            "--tenants", str(tenants),
            "--shutdown-grace", "1s",
        ]
        if pki:
            args += ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        server = Server(proc, port, log_path, pki)
        self.started.append(server)
        _wait_ready(server)
        return server

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    """A plaintext server shared by the session's tests (tenants acme and globex)."""
    launcher = Launcher(tmp_path_factory.mktemp("server"))
    srv = launcher()
    yield srv
    launcher.stop_all()
    assert srv.proc.returncode == 0, f"server exited with {srv.proc.returncode}:\n{srv.log()}"


@pytest.fixture
def launch(tmp_path) -> Launcher:
    launcher = Launcher(tmp_path)
    yield launcher
    launcher.stop_all()


# --- notification documents, shaped as S3 sends them ---------------------------


def s3_document(bucket: str, *keys: str) -> str:
    """One S3 event notification with an ObjectCreated:Put record per key."""
    records = [
        {
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": "eu-west-1",
            "eventTime": "2024-05-01T12:00:00.123Z",
            "eventName": "ObjectCreated:Put",
            "s3": {
                "s3SchemaVersion": "1.0",
                "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                "object": {"key": key, "size": 1024, "sequencer": f"0065F1A2B3C4D5E6{i:02X}"},
            },
        }
        for i, key in enumerate(keys)
    ]
    return json.dumps({"Records": records})


def unique_prefix(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:12]}/"


def kinds(events) -> List[str]:
    return [e.WhichOneof("kind") for e in events]


def tokens() -> Dict[str, str]:
    return dict(TOKENS)
