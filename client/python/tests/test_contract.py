"""The contract in proto/ with the buf CLI (BUF, default `buf` on PATH): lint
clean under buf.yaml, no breaking change against the released contract
(the commit in proto/BASELINE, read from git history), and a breaking
change, a renumbered field, is caught."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
BASELINE = (REPO / "proto" / "BASELINE").read_text().strip()


def buf(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    binary = os.environ.get("BUF") or shutil.which("buf")
    if not binary:
        pytest.fail("the buf CLI is needed: `npm install @bufbuild/buf` and set BUF to its bin/buf")
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def against() -> str:
    found = subprocess.run(["git", "cat-file", "-e", f"{BASELINE}^{{commit}}"], cwd=REPO)
    assert found.returncode == 0, f"the baseline commit {BASELINE} (proto/BASELINE) is not in this clone's history"
    return f".git#ref={BASELINE},subdir=proto"


def test_lint_is_clean():
    result = buf("lint", "proto")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_breaking_change_against_the_released_contract():
    result = buf("breaking", "proto", "--against", against())
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_renumbered_field_is_a_breaking_change(tmp_path):
    changed = tmp_path / "proto"
    shutil.copytree(REPO / "proto", changed)
    watch = changed / "streamwatch" / "v1" / "watch.proto"
    text = watch.read_text()
    assert "  uint64 after_seq = 2;" in text
    watch.write_text(text.replace("  uint64 after_seq = 2;", "  uint64 after_seq = 3;"))
    result = buf("breaking", str(changed), "--against", against())
    assert result.returncode != 0
    assert "StreamWatchEventsRequest" in result.stdout and "after_seq" in result.stdout, result.stdout
