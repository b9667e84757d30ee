"""The package as shipped: the committed stubs are what proto/ generates
today (a change to the contract without regenerating fails here), and the
built wheel carries py.typed, the stubs' type hints and the Airflow
provider's entry point."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path


HERE = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("generate_stubs", HERE / "generate_stubs.py")
generate_stubs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generate_stubs)


def test_committed_stubs_match_the_contract(tmp_path):
    generate_stubs.generate(tmp_path)
    files = generate_stubs.generated_files()
    assert "streamwatch/v1/watch_pb2_grpc.py" in files
    stale = [f for f in files if (tmp_path / f).read_bytes() != (HERE / "src" / f).read_bytes()]
    assert not stale, f"stale stubs {stale}: run `python client/python/generate_stubs.py`"
    committed = {str(p.relative_to(HERE / "src")) for p in (HERE / "src").rglob("*_pb2*.py*")}
    assert committed == set(files), "stubs for a proto file that no longer exists"


def test_the_wheel_is_typed_and_registers_the_airflow_provider(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path), str(HERE)],
        check=True,
    )
    (wheel,) = tmp_path.glob("streamwatch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("streamwatch/py.typed", "streamwatch/v1/watch_pb2.pyi", "streamwatch/v1/watch_pb2_grpc.py",
                   "streamwatch/airflow/triggers.py", "streamwatch/dagster.py"):
        assert needed in names, needed
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[apache_airflow_provider]" in text
    assert "provider_info = streamwatch.airflow:get_provider_info" in text
    assert not any(n.startswith("tests/") for n in names)
