"""Regenerates the gRPC stubs in src/streamwatch/v1 from the contract in proto/.

The stubs are committed so the package installs with nothing but grpcio and
protobuf; tests/test_stubs.py fails when they differ from what this produces.
Run it with the grpcio-tools pinned in requirements-test.txt:

    python client/python/generate_stubs.py [OUT_DIR]
"""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parents[1] / "proto"
SRC = HERE / "src"
# The generated files (relative to the source root), one set per proto file.
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def protos() -> list[str]:
    return [str(p.relative_to(PROTO_ROOT)) for p in sorted(PROTO_ROOT.rglob("*.proto"))]


def generated_files() -> list[str]:
    return [p[: -len(".proto")] + s for p in protos() for s in SUFFIXES]


def generate(out: Path) -> None:
    from grpc_tools import protoc

    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{files('grpc_tools') / '_proto'}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *protos(),
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed: {' '.join(args)}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else SRC)
