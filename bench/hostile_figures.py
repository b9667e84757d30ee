"""Figures for the hostile-client fixes, against a running server binary.

  python bench/hostile_figures.py SERVER_BIN memory N
      RSS before, with N watches subscribed and completed, and 15 s after
      every stream ended (KiB per finished watch).
  python bench/hostile_figures.py SERVER_BIN ingest SECONDS
      records/s accepted for a tenant at ingest_records_per_second = 2 when
      it sends one 1,500-record document per call, as fast as it can
      (QUOTA_KEY=ingest_documents_per_second for servers that predate the
      per-record quota).

Run with a Python that has grpcio and protobuf (the client/python test
virtualenv); the server is started on a loopback port with a scratch store.
"""
import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "client", "python", "src"))
import grpc  # noqa: E402
from streamwatch.v1 import ingest_pb2, ingest_pb2_grpc, watch_pb2, watch_pb2_grpc  # noqa: E402

TOKEN = "acme-token-0123456789"


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])


def doc(bucket, keys):
    return json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "eventTime": "2026-01-01T00:00:00Z",
                                    "s3": {"bucket": {"name": bucket}, "object": {"key": k, "sequencer": "01"}}}
                                   for k in keys]})


def start(binary, tenants=None):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    addr = f"127.0.0.1:{port}"
    d = tempfile.mkdtemp()
    args = [binary, "--listen", addr, "--data", os.path.join(d, "s.db")]
    if tenants:
        path = os.path.join(d, "tenants.toml"); open(path, "w").write(tenants); args += ["--tenants", path]
    proc = subprocess.Popen(args, stderr=open(os.path.join(d, "log"), "w"), env={**os.environ, "RUST_LOG": "warn"})
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, addr


async def memory(binary, n):
    proc, addr = start(binary)
    async with grpc.aio.insecure_channel(addr) as ch:
        watch, ingest = watch_pb2_grpc.WatchServiceStub(ch), ingest_pb2_grpc.IngestServiceStub(ch)
        await watch.ListWatches(watch_pb2.ListWatchesRequest())
        await asyncio.sleep(1)
        before = rss_kib(proc.pid)
        sem = asyncio.Semaphore(200)

        async def one(i):
            async with sem:
                policy = watch_pb2.Policy(expected_count=watch_pb2.ExpectedCountRule(objects=1))
                w = (await watch.StartWatch(watch_pb2.StartWatchRequest(bucket="mem-lake", prefix=f"w{i}/", policy=policy))).watch
                stream = watch.StreamWatchEvents(watch_pb2.StreamWatchEventsRequest(watch_id=w.watch_id))
                await ingest.IngestS3Events(ingest_pb2.IngestS3EventsRequest(documents=[doc("mem-lake", [f"w{i}/k"])]))
                kinds = [e.WhichOneof("kind") async for e in stream]
                assert kinds[-1] == "completed", kinds

        t = time.time()
        await asyncio.gather(*(one(i) for i in range(n)))
        peak = rss_kib(proc.pid)
        await asyncio.sleep(15)
        after = rss_kib(proc.pid)
    proc.terminate(); proc.wait()
    print(f"{n} subscribed watches completed in {time.time() - t:.1f}s; RSS before {before/1024:.1f} MiB, "
          f"at the end {peak/1024:.1f} MiB, 15 s after every stream ended {after/1024:.1f} MiB: "
          f"{(after - before) / n:.2f} KiB kept per finished watch")


async def ingest_rate(binary, seconds):
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    tenants = (f'[[tenant]]\nid = "acme"\ntoken_sha256 = ["{digest}"]\nbuckets = ["acme-*"]\n'
               f"[tenant.quotas]\n{os.environ.get('QUOTA_KEY', 'ingest_records_per_second')} = 2\ningest_burst = 2000\n")
    proc, addr = start(binary, tenants)
    md = (("authorization", f"Bearer {TOKEN}"),)
    async with grpc.aio.insecure_channel(addr) as ch:
        ingest = ingest_pb2_grpc.IngestServiceStub(ch)
        accepted = refused = calls = 0
        end = time.time() + seconds
        i = 0
        while time.time() < end:
            keys = [f"k{i}-{j}" for j in range(1500)]; i += 1; calls += 1
            try:
                r = await ingest.IngestS3Events(ingest_pb2.IngestS3EventsRequest(documents=[doc("acme-lake", keys)]), metadata=md)
                accepted += r.records
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
                refused += 1
    proc.terminate(); proc.wait()
    print(f"quota 2 records/s, burst 2,000, one 1,500-record document per call for {seconds}s: {calls} calls, "
          f"{accepted} records accepted ({accepted / seconds:.0f}/s), {refused} calls refused")


if __name__ == "__main__":
    binary, what, arg = sys.argv[1], sys.argv[2], int(sys.argv[3])
    asyncio.run(memory(binary, arg) if what == "memory" else ingest_rate(binary, arg))
