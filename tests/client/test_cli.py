"""The ``registry-client`` command against real registries: in this process
(``execute``, on the test's reactor) for speed, and as the installed console
script for what only a real process shows (exit status, a terminal)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest_twisted

from tests.client.clitool import cli, cli_process
from tests.clients.harness import Registry, make_image, sha256_digest, write_oci_layout


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("registry-client")
    return lines[0]


@pytest_twisted.ensureDeferred
async def test_copy_tags_inspect_delete(registry: Registry, repo: str, tmp_path: Path) -> None:
    images = [make_image("cli", architecture=arch, layers=2, layer_size=16 * 1024) for arch in ("amd64", "arm64")]
    layout = write_oci_layout(tmp_path / "src", images, "v1")
    target = registry.docker_ref(repo, "v1")

    pushed = await cli("copy", f"oci:{layout.path}:v1", target)
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.strip() == layout.digest
    assert pushed.stderr == ""  # not a terminal: quiet
    assert registry.manifest(repo, "v1").body == layout.manifest

    # docker -> docker, with options after the subcommand, skopeo style
    copied = await cli("copy", "--src-tls-verify=false", "--dest-tls-verify=false", target, registry.docker_ref(repo, "v2"))
    assert copied.returncode == 0, copied.stderr
    # docker -> oci
    pulled = await cli("copy", registry.docker_ref(repo, "v2"), f"oci:{tmp_path / 'dst'}:pulled")
    assert pulled.returncode == 0, pulled.stderr
    index = json.loads((tmp_path / "dst" / "index.json").read_text())
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] == ["pulled"]
    assert index["manifests"][0]["digest"] == layout.digest

    tags = await cli("tags", "docker://" + registry.host + "/" + repo)
    assert tags.returncode == 0, tags.stderr
    assert json.loads(tags.stdout) == {"Repository": f"{registry.host}/{repo}", "Tags": ["v1", "v2"]}

    child = layout.children["linux/arm64"]
    inspected = await cli("inspect", registry.docker_ref(repo, sha256_digest(child)))
    assert inspected.returncode == 0, inspected.stderr
    report = json.loads(inspected.stdout)
    assert report["Digest"] == sha256_digest(child)
    assert report["Manifest"] == json.loads(child)
    assert report["Config"]["architecture"] == "arm64"
    raw = await cli("inspect", "--raw", registry.docker_ref(repo, "v1"))
    assert raw.stdout.encode() == layout.manifest

    deleted = await cli("delete", registry.docker_ref(repo, "v2"))
    assert deleted.returncode == 0, deleted.stderr
    if registry.kind == "ours":
        assert deleted.stdout.startswith("Removed tag v2")
        assert registry.manifest(repo, "v1").status == 200
    else:
        assert deleted.stdout.startswith(f"Deleted manifest {layout.digest}")
        assert registry.manifest(repo, "v1").status == 404

    gone = await cli("inspect", registry.docker_ref(repo, "v2"))
    assert "MANIFEST_UNKNOWN" in one_error_line(gone)


@pytest_twisted.ensureDeferred
async def test_errors_are_one_line(ours: Registry, tmp_path: Path) -> None:
    assert "MANIFEST_UNKNOWN" in one_error_line(await cli("inspect", ours.docker_ref("nothing/here", "x")))
    assert "Connection refused" in one_error_line(
        await cli("tags", "docker://127.0.0.1:1/a/b")
    )
    assert "not an OCI image layout" in one_error_line(
        await cli("copy", f"oci:{tmp_path / 'none'}:x", ours.docker_ref("a/b", "x"))
    )
    usage = await cli("copy", "only-one")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
    bad_ref = await cli("copy", "dir:/x", ours.docker_ref("a/b", "x"))
    assert bad_ref.returncode == 2 and "transport 'dir' is not supported" in bad_ref.stderr
    bad_bool = await cli("tags", "--tls-verify=maybe", "docker://127.0.0.1:1/a/b")
    assert bad_bool.returncode == 2 and "expected true or false" in bad_bool.stderr


@pytest_twisted.ensureDeferred
async def test_progress_on_a_terminal(ours: Registry, repo: str, tmp_path: Path) -> None:
    image = make_image("progress", layers=2, layer_size=64 * 1024)
    layout = write_oci_layout(tmp_path / "src", [image], "t")
    first = cli_process("copy", f"oci:{layout.path}:t", ours.docker_ref(repo, "t"), stderr_tty=True)
    assert first.returncode == 0, first.stderr
    lines = [line.split("\r")[-1].replace("\x1b[K", "") for line in first.stderr.splitlines()]
    done = [line for line in lines if line.startswith("Copying blob")]
    assert len(done) == 3 and all(line.endswith("done") for line in done), first.stderr
    again = await cli("copy", f"oci:{layout.path}:t", ours.docker_ref(repo, "t"), stderr_tty=True)
    assert again.stderr.count("skipped: already exists") == 3, again.stderr
    quiet = await cli("copy", "--quiet", f"oci:{layout.path}:t", ours.docker_ref(repo, "t"), stderr_tty=True)
    assert quiet.stderr.strip() == ""


def test_console_script_exit_status_and_one_line(ours: Registry) -> None:
    ok = cli_process("tags", "docker://" + ours.host + "/nothing/here")
    line = one_error_line(ok)
    assert ok.returncode == 1 and "NAME_UNKNOWN" in line
    usage = cli_process("frobnicate")
    assert usage.returncode == 2 and "invalid choice" in usage.stderr and "Traceback" not in usage.stderr
