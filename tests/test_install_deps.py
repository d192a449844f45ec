"""``scripts/install-system-deps.sh`` helpers: waiting for another package
manager's lock (a real fcntl lock held by another process, as apt and dpkg
take them), and the CI rule that a missing real-client package fails the run
instead of skipping."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.clients.harness import MissingTool, missing_tool, running_in_ci

ROOT = Path(__file__).resolve().parent.parent
WAITER = ROOT / "scripts" / "wait_dpkg_lock.py"

HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()   # hold until told
"""


def hold_lock(path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(timeout=10)


def test_waits_while_another_process_holds_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "lock-frontend"
    holder = hold_lock(lock)
    waiter = subprocess.Popen(
        [sys.executable, str(WAITER), "--timeout", "60", "--interval", "0.1", str(lock), str(tmp_path / "absent")],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(1.0)
        assert waiter.poll() is None, "the waiter must not give up while the lock is held"
    finally:
        release(holder)
    assert waiter.wait(timeout=30) == 0
    assert waiter.stderr is not None
    assert f"held by process {holder.pid}" in waiter.stderr.read()


def test_gives_up_after_the_timeout_naming_the_holder(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    holder = hold_lock(lock)
    try:
        r = subprocess.run([sys.executable, str(WAITER), "--timeout", "0.5", "--interval", "0.1", str(lock)],
                           capture_output=True, text=True, timeout=30)
    finally:
        release(holder)
    assert r.returncode == 1
    assert f"held by process {holder.pid}" in r.stderr and "still held" in r.stderr


def test_free_and_absent_locks_do_not_wait(tmp_path: Path) -> None:
    (tmp_path / "free").write_bytes(b"")
    r = subprocess.run([sys.executable, str(WAITER), "--timeout", "0", str(tmp_path / "free"), str(tmp_path / "none")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_missing_client_package_skips_outside_ci_and_fails_under_ci() -> None:
    error = MissingTool("skopeo", "skopeo")
    with pytest.raises(pytest.skip.Exception, match="PACKAGE MISSING"):
        missing_tool(error, {})
    with pytest.raises(pytest.fail.Exception, match="under CI=true"):
        missing_tool(error, {"CI": "true"})
    assert running_in_ci({"CI": "true"}) and not running_in_ci({"CI": ""}) and not running_in_ci({})


def test_install_script_is_strict_under_ci() -> None:
    # The script turns CI=true into SYSTEM_DEPS_STRICT=1 before anything else.
    script = (ROOT / "scripts" / "install-system-deps.sh").read_text()
    head, sep, _ = script.partition("esac\n")
    assert sep, "the CI case block moved"
    probe = head + sep + 'echo "strict=${SYSTEM_DEPS_STRICT:-0}"\n'
    for ci, expected in (("true", "strict=1"), ("", "strict=0")):
        env = {k: v for k, v in os.environ.items() if k not in ("CI", "SYSTEM_DEPS_STRICT")}
        env["CI"] = ci
        r = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, env=env, timeout=30)
        assert r.stdout.strip() == expected, (ci, r.stdout, r.stderr)
    assert 'DPkg::Lock::Timeout=$LOCK_TIMEOUT' in script and "wait_dpkg_lock.py" in script


def _skip_calls_for_missing_packages(path: Path) -> list[int]:
    """Lines of ``path`` that call ``pytest.skip`` with a message about a
    package that is not installed (what only ``missing_tool`` may do)."""
    import ast

    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "skip"):
            continue
        if not (isinstance(node.func.value, ast.Name) and node.func.value.id == "pytest"):
            continue
        text = " ".join(
            c.value for arg in node.args for c in ast.walk(arg) if isinstance(c, ast.Constant) and isinstance(c.value, str)
        ).lower()
        if "install" in text or "package" in text:
            lines.append(node.lineno)
    return lines


def test_every_missing_package_skip_goes_through_missing_tool() -> None:
    # A test that skips for a missing package on its own would skip under
    # CI=true too, and a green CI run would not mean the real parts ran.
    offenders = {
        str(path.relative_to(ROOT)): lines
        for path in sorted((ROOT / "tests").rglob("*.py"))
        if (lines := _skip_calls_for_missing_packages(path))
    }
    offenders.pop("tests/clients/harness.py", None)  # missing_tool itself
    assert offenders == {}, f"skips for a missing package outside missing_tool (use it): {offenders}"


# --- the script itself, against a stand-in apt-get --------------------------------
#
# apt cannot really run in a test (it needs the network and changes the
# machine), so the script runs with a PATH holding only the tools it uses:
# the real coreutils and python3, and stand-ins for id (root), dpkg-query
# (knows no package), dpkg and apt-get.  The apt-get stand-in records each
# call, whether the policy file that keeps services from starting was in
# place, and "installs" by creating the commands the script checks for.

SCRIPT = ROOT / "scripts" / "install-system-deps.sh"
REAL_TOOLS = ("bash", "dirname", "mktemp", "cp", "chmod", "rm", "date", "tail", "sleep")

FAKE_APT = r"""#!/bin/bash
printf '%s\n' "$*" >>"$FAKE_STATE/calls"
[ -x "$SYSTEM_DEPS_POLICY_RC" ] && printf '%s\n' "$1" >>"$FAKE_STATE/policy"
[ "$1" = update ] && exit 0
n=0
[ -f "$FAKE_STATE/installs" ] && read -r n <"$FAKE_STATE/installs"
n=$((n + 1))
printf '%s\n' "$n" >"$FAKE_STATE/installs"
if [ "$FAKE_APT_MODE" = flaky ] && [ "$n" -eq 1 ]; then
    echo "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4242 (apt-get)" >&2
    exit 100
fi
for arg in "$@"; do
    if [ "$FAKE_APT_MODE" = unavailable ] && [ "$arg" = "$FAKE_UNAVAILABLE" ]; then
        echo "E: Package '$arg' has no installation candidate" >&2
        exit 100
    fi
done
for cmd in $FAKE_PROVIDES; do
    [ "$cmd" = "$FAKE_UNAVAILABLE_CMD" ] && continue
    printf '#!/bin/sh\nexit 0\n' >"$FAKE_BIN/$cmd"
    /bin/chmod 0755 "$FAKE_BIN/$cmd"
done
exit 0
"""


def wanted_commands() -> dict[str, str]:
    """The script's command -> package table."""
    import re

    return dict(re.findall(r"^\s+\[([\w-]+)\]=([\w.-]+)$", SCRIPT.read_text(), re.M))


def run_script(tmp_path: Path, mode: str, ci: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    import shutil

    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for tool in REAL_TOOLS:
        real = shutil.which(tool)
        assert real is not None, tool
        (bin_dir / tool).symlink_to(real)
    # The lock waiter is the real one, on this interpreter (a pyenv shim
    # would need more of PATH).
    (bin_dir / "python3").symlink_to(os.path.realpath(sys.executable))
    stand_ins = {"id": "echo 0", "dpkg-query": "exit 1", "dpkg": "exit 0"}
    for name, body in stand_ins.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
    (bin_dir / "apt-get").write_text(FAKE_APT)
    for path in bin_dir.iterdir():
        if not path.is_symlink():
            path.chmod(0o755)
    wanted = wanted_commands()
    env = {
        "PATH": str(bin_dir), "HOME": str(tmp_path), "CI": ci,
        "SYSTEM_DEPS_LOCK_TIMEOUT": "2", "SYSTEM_DEPS_RETRY_PAUSE": "0",
        "SYSTEM_DEPS_LOG": str(state / "apt.log"), "SYSTEM_DEPS_POLICY_RC": str(state / "policy-rc.d"),
        "FAKE_STATE": str(state), "FAKE_BIN": str(bin_dir), "FAKE_APT_MODE": mode,
        "FAKE_PROVIDES": " ".join(wanted), "FAKE_UNAVAILABLE": wanted["podman"],
        "FAKE_UNAVAILABLE_CMD": "podman" if mode == "unavailable" else "",
    }
    r = subprocess.run(["/bin/bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=300)
    return r, state


def test_script_retries_a_failed_install_once_with_the_lock_timeout(tmp_path: Path) -> None:
    r, state = run_script(tmp_path, "flaky", ci="")
    assert r.returncode == 0, r.stderr
    calls = (state / "calls").read_text().splitlines()
    installs = [c for c in calls if c.startswith("install ")]
    assert len(installs) == 2, calls  # the first failed (lock held), the retry installed everything
    assert all("DPkg::Lock::Timeout=2" in c for c in calls), calls
    assert "retrying once" in r.stderr and "NOT INSTALLED" not in r.stderr
    assert "held by process 4242" in (state / "apt.log").read_text()
    # Every apt call ran with the policy file that stops services starting,
    # and the script removed it afterwards (there was none before).
    assert len((state / "policy").read_text().splitlines()) == len(calls)
    assert not (state / "policy-rc.d").exists()


@pytest.mark.parametrize("ci", ["true", ""])
def test_script_reports_a_package_it_cannot_install(tmp_path: Path, ci: str) -> None:
    r, state = run_script(tmp_path, "unavailable", ci=ci)
    installs = [c for c in (state / "calls").read_text().splitlines() if c.startswith("install ")]
    podman = wanted_commands()["podman"]
    # All at once (twice), then one by one, the unavailable one twice.
    assert len(installs) == 2 + len(wanted_commands()) - 1 + 2, installs
    assert sum(c.endswith(" " + podman) for c in installs) == 2
    if ci:
        assert r.returncode == 1, r.stderr
        assert f"ERROR: NOT INSTALLED: {podman}" in r.stderr
    else:
        assert r.returncode == 0, r.stderr
        assert f"WARNING: NOT INSTALLED: {podman}" in r.stderr and "SKIPPED" in r.stderr
    assert not (state / "policy-rc.d").exists()
