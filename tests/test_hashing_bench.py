"""Smoke test of the benchmark command line (``python -m registry.bench``).

Runs the hashing section on a few MiB in a real subprocess and checks the
shape of its JSON output, never its timings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest


def _bench(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "registry.bench", *argv], capture_output=True, text=True, timeout=300, check=False
    )


def _json_tail(stdout: str) -> dict[str, Any]:
    """The JSON object printed after the human-readable lines."""
    lines = stdout.splitlines()
    start = lines.index("{")
    parsed: dict[str, Any] = json.loads("\n".join(lines[start:]))
    return parsed


@pytest.mark.slow
def test_hashing_section_reports_every_figure() -> None:
    proc = _bench("hashing", "--mib", "3", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = _json_tail(proc.stdout)["hashing"]
    for label in ("64k", "1m"):
        row = figures["sha256"][label]
        assert row["sha256_mbps"] > 0 and row["hashlib_mbps"] > 0
        assert row["ratio"] == pytest.approx(row["sha256_mbps"] / row["hashlib_mbps"])
    assert figures["portable"]["mbps"] > 0
    assert figures["state"]["export_import_us"] > 0
    assert figures["threads"]["two_threads_mbps"] > 0
    assert figures["threads"]["parallelism"] > 0
    tarsum = figures["tarsum"]
    if "unavailable" in tarsum:  # registry.tarsum not importable: said so, no figure made up
        assert "tarsum: figure unavailable" in proc.stdout
        assert set(tarsum) == {"unavailable"}
    else:
        assert tarsum["1m"]["tarsum"] == tarsum["64k"]["tarsum"]
        assert tarsum["1m"]["tarsum"].startswith("tarsum.v1+sha256:")
    assert "sha256  1m chunks" in proc.stdout


def test_unknown_section_is_a_usage_error() -> None:
    proc = _bench("nosuch")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


def test_bad_mib_is_a_usage_error() -> None:
    proc = _bench("hashing", "--mib", "0")
    assert proc.returncode == 2
    assert "--mib must be positive" in proc.stderr
