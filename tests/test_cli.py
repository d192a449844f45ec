"""The ``registry`` console script, run as a real process: help, errors that
name the problem and the configuration key, garbage-collect (dry run, JSON),
check (exit status, --repair), purge-uploads, and serve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import pytest_twisted

from registry.digest import Digest
from registry.storage import paths
from registry.storage.factory import create_driver
from registry.storage.model import DataModel
from tests.clients.harness import free_port
from tests.test_gc import files, manifest_body, push_blob, put_manifest


def registry(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    beside = os.path.join(os.path.dirname(sys.executable), "registry")
    argv = [beside] if os.access(beside, os.X_OK) else [sys.executable, "-m", "registry.cli"]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60, env=env)


def run_with_terminal_stderr(*args: str) -> tuple[subprocess.CompletedProcess[bytes], str]:
    """Run the ``registry`` command beside this interpreter with stderr on a
    pseudo-terminal (read while it runs, so a long progress bar cannot fill
    the terminal's buffer) and stdout on a pipe: (the process, what the
    terminal showed)."""
    import pty
    import threading

    beside = os.path.join(os.path.dirname(sys.executable), "registry")
    main_fd, child_fd = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(main_fd, 4096)
            except OSError:  # EIO once the last writer has closed it
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        try:
            done = subprocess.run([beside, *args], stdout=subprocess.PIPE, stderr=child_fd, timeout=60)
        finally:
            os.close(child_fd)
        reader.join(10)
    finally:
        os.close(main_fd)
    return done, b"".join(chunks).decode()


def write_config(tmp_path: Path, extra: str = "") -> Path:
    config = tmp_path / "config.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'store'}\n{extra}"
        f"http:\n  addr: 127.0.0.1:{free_port()}\n"
    )
    return config


@pytest.mark.parametrize("command", ["serve", "garbage-collect", "check", "purge-uploads"])
def test_help_of_every_command(command: str) -> None:
    done = registry(command, "--help")
    assert done.returncode == 0
    assert done.stdout.startswith(f"usage: registry {command}")
    assert "CONFIG" in done.stdout


def test_errors_name_the_problem_and_the_key(tmp_path: Path) -> None:
    missing = registry("garbage-collect", str(tmp_path / "nope.yml"))
    assert missing.returncode == 2
    assert "cannot read the configuration file" in missing.stderr and "nope.yml" in missing.stderr

    bad = tmp_path / "bad.yml"
    bad.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}\n  delete:\n    enabled: maybe\n")
    done = registry("check", str(bad))
    assert done.returncode == 2
    assert "storage.delete.enabled" in done.stderr and "maybe" in done.stderr
    bad.write_text("version: 0.1\nstorage:\n  nosuchdriver: {}\n")
    done = registry("garbage-collect", str(bad))
    assert done.returncode == 2
    assert "storage" in done.stderr and "nosuchdriver" in done.stderr

    config = write_config(tmp_path)
    done = registry("garbage-collect", "--grace", "ten minutes", str(config))
    assert done.returncode == 2 and "--grace" in done.stderr and "ten minutes" in done.stderr
    done = registry("purge-uploads", "--older-than", "-1h", str(config))
    assert done.returncode == 2 and "--older-than" in done.stderr

    env = {**os.environ, "REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE": "soon"}
    done = registry("purge-uploads", str(config), env=env)
    assert done.returncode == 2 and "storage.maintenance.uploadpurging.age" in done.stderr


@pytest_twisted.ensureDeferred
async def test_garbage_collect_dry_run_json_and_real_run(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    driver = create_driver("filesystem", {"rootdirectory": str(tmp_path / "store")})
    model = DataModel.over(driver)
    config_blob = await push_blob(model, "app", b'{"x": 1}')
    layer = await push_blob(model, "app", b"layer " * 100)
    await put_manifest(model, "app", manifest_body(config_blob, [layer]), tag="v1")
    orphan = await push_blob(model, "app", b"orphan " * 100)
    time.sleep(0.05)
    before = await files(driver)

    dry = registry("garbage-collect", "--dry-run", "--grace", "0s", str(config))
    assert dry.returncode == 0, dry.stderr
    assert f"would delete blob {orphan['digest']} (700 bytes)" in dry.stdout
    assert "would free 1 blobs" in dry.stdout
    assert dry.stderr == ""  # no progress bar when stderr is not a terminal
    assert await files(driver) == before

    young = registry("garbage-collect", "--json", str(config))  # default grace 1h: all young
    assert json.loads(young.stdout)["blobs_deleted"] == 0

    real = registry("garbage-collect", "--json", "--grace", "0s", str(config))
    assert real.returncode == 0, real.stderr
    report = json.loads(real.stdout)
    assert report["blobs_deleted"] == 1 and report["bytes_freed"] == 700
    assert report["blobs"] == [{"digest": orphan["digest"], "size": 700}]
    assert report["links"] == [{"repository": "app", "digest": orphan["digest"]}]
    assert not await model.blobs.descriptors.is_linked("app", Digest.parse(orphan["digest"]))
    assert await model.blobs.repo_size("app", Digest.parse(layer["digest"])) == 600


@pytest_twisted.ensureDeferred
async def test_check_exit_status_and_repair(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    driver = create_driver("filesystem", {"rootdirectory": str(tmp_path / "store")})
    model = DataModel.over(driver)
    blob = await push_blob(model, "app", b"some layer " * 50)
    healthy = registry("check", str(config))
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "0 problems" in healthy.stdout

    on_disk = Path(str(tmp_path / "store") + paths.blob_data(Digest.parse(blob["digest"])))
    on_disk.write_bytes(b"X" + on_disk.read_bytes()[1:])
    found = registry("check", str(config))
    assert found.returncode == 1
    assert f"corrupt-blob: {paths.blob_data(Digest.parse(blob['digest']))}" in found.stdout

    repaired = registry("check", "--repair", "--json", str(config))
    assert repaired.returncode == 0, repaired.stdout
    kinds = sorted((p["kind"], p["repaired"] is not None) for p in json.loads(repaired.stdout)["problems"])
    assert kinds == [("corrupt-blob", True), ("dangling-link", True)]
    assert registry("check", str(config)).returncode == 0


@pytest_twisted.ensureDeferred
async def test_purge_uploads(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    driver = create_driver("filesystem", {"rootdirectory": str(tmp_path / "store")})
    model = DataModel.over(driver)
    old = await model.uploads.create("app")
    await driver.put_content(
        paths.upload_startedat("app", old),
        (datetime.now(timezone.utc) - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode(),
    )
    fresh = await model.uploads.create("app")
    dry = registry("purge-uploads", "--older-than", "2h", "--dry-run", str(config))
    assert dry.returncode == 0 and "would remove 1 uploads" in dry.stdout and old in dry.stdout
    assert sorted(p.rsplit("/", 1)[-1] for p in await driver.list(paths.uploads_dir("app"))) == sorted([old, fresh])
    real = registry("purge-uploads", "--older-than", "2h", str(config))
    assert real.returncode == 0 and "removed 1 uploads" in real.stdout
    assert [p.rsplit("/", 1)[-1] for p in await driver.list(paths.uploads_dir("app"))] == [fresh]
    stale = registry("check", str(config))
    assert stale.returncode == 0  # the fresh upload is not stale


def test_serve_runs_the_registry(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    port = int(config.read_text().rsplit(":", 1)[1])
    beside = os.path.join(os.path.dirname(sys.executable), "registry")
    proc = subprocess.Popen([beside, "serve", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60  # a loaded 2-core machine can take long to start it
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    # Stop it first: reading a live process's output to its end would wait forever.
                    proc.terminate()
                    output, _ = proc.communicate(timeout=15)
                    raise AssertionError(output.decode() if output else "no output") from None
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_serve_checks_the_workers_before_starting(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(f"version: 0.1\nstorage: inmemory\nhttp:\n  addr: 127.0.0.1:{free_port()}\n")
    done = registry("serve", "--workers", "2", str(config))
    assert done.returncode == 2
    assert "--workers = 2: storage inmemory" in done.stderr and "workers: 1" in done.stderr
    done = registry("serve", "--workers", "two", str(config))
    assert done.returncode == 2 and "--workers: must be a whole number" in done.stderr
    assert "--workers N" in registry("serve", "--help").stdout


@pytest_twisted.ensureDeferred
async def test_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    driver = create_driver("filesystem", {"rootdirectory": str(tmp_path / "store")})
    model = DataModel.over(driver)
    await push_blob(model, "app", b"layer " * 100)
    done, shown = run_with_terminal_stderr("check", str(config))
    assert done.returncode == 0
    assert "re-hash blobs: [" in shown and "repositories: [" in shown
    assert b"0 problems" in done.stdout and b"[" not in done.stdout  # the report itself has no bar


@pytest_twisted.ensureDeferred
async def test_garbage_collect_delete_untagged_summary_and_json(tmp_path: Path) -> None:
    """The summary names the blobs and bytes freed and the manifests removed;
    ``--json`` gives the same as numbers and lists."""
    from tests.test_gc import push_image

    config = write_config(tmp_path)
    driver = create_driver("filesystem", {"rootdirectory": str(tmp_path / "store")})
    model = DataModel.over(driver)
    await push_image(model, "app", "kept", tag="v1")
    untagged = await push_image(model, "app", "untagged")
    time.sleep(0.05)
    dry = registry("garbage-collect", "--delete-untagged", "--dry-run", "--grace", "0s", str(config))
    assert dry.returncode == 0, dry.stderr
    assert f"would delete manifest app@{untagged}" in dry.stdout
    assert "would free 4 blobs" in dry.stdout and "would remove 1 manifests" in dry.stdout, dry.stdout
    real = registry("garbage-collect", "--delete-untagged", "--grace", "0s", "--json", str(config))
    assert real.returncode == 0, real.stderr
    doc = json.loads(real.stdout)
    assert doc["manifests_deleted"] == 1 and doc["manifests"] == [{"repository": "app", "digest": str(untagged)}]
    assert doc["blobs_deleted"] == 4 and doc["bytes_freed"] == sum(b["size"] for b in doc["blobs"]) > 0
    assert not await model.manifests.exists("app", untagged)
    text = registry("garbage-collect", "--delete-untagged", "--grace", "0s", str(config))
    assert "freed 0 blobs (0 B, 0 bytes); removed 0 manifests" in text.stdout, text.stdout


@pytest_twisted.ensureDeferred
async def test_garbage_collect_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    driver = create_driver("filesystem", {"rootdirectory": str(tmp_path / "store")})
    model = DataModel.over(driver)
    await push_blob(model, "app", b"layer " * 100)
    done, shown = run_with_terminal_stderr("garbage-collect", "--delete-untagged", "--grace", "0s", str(config))
    assert done.returncode == 0
    for phase in ("untagged manifests: [", "mark: [", "sweep links: [", "sweep blobs: ["):
        assert phase in shown, shown
    assert b"freed 1 blobs" in done.stdout and b"[" not in done.stdout
    quiet = registry("garbage-collect", "--grace", "0s", str(config))  # stderr a pipe: no bar
    assert quiet.returncode == 0 and quiet.stderr == ""
