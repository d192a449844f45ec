"""``python -m registry.bench.trees``: versions side by side, interleaved."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _git_checkout() -> bool:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _git_checkout(), reason="needs the project's git checkout")
def test_two_versions_are_uploaded_to_in_turn_and_their_worktrees_removed() -> None:
    before = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout
    run = subprocess.run(
        [sys.executable, "-m", "registry.bench.trees", "--rounds", "2", "--mib", "16", "HEAD@1", str(ROOT)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    runs = [line.split()[0] for line in lines if "MB/s  server CPU" in line and "median" not in line]
    # A B then B A: each version ran once per round, interleaved.
    assert runs == ["HEAD@1", str(ROOT), str(ROOT), "HEAD@1"]
    medians = {line.split()[0]: line for line in lines if "median" in line}
    assert set(medians) == {"HEAD@1", str(ROOT)}
    for line in medians.values():
        assert float(line.split()[2]) > 0
    after = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout
    assert after == before


def test_an_unknown_revision_is_refused_by_name() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "registry.bench.trees", "--rounds", "1", "no-such-rev-xyz"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert run.returncode != 0
    assert "'no-such-rev-xyz' is neither a directory nor a git revision" in run.stderr
