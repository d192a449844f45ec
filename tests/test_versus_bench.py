"""The ``versus`` benchmark's options and figures (``python -m registry.bench versus``).

Runs real registries (ours and CNCF Distribution) in subprocesses with tiny
settings and checks the shape of the JSON, never the timings; the soak must
finish without a single error.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from registry.bench import dockerpush, servers, versus
from tests.clients.harness import MissingTool, missing_tool


def _bench(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "registry.bench", "versus", "--json", *argv],
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def _figures(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    parsed: dict[str, Any] = json.loads("\n".join(lines[lines.index("{"):]))
    figures: dict[str, Any] = parsed["versus"]
    return figures


def _need(*commands: str) -> None:
    for command in commands:
        if shutil.which(command) is None:
            missing_tool(MissingTool(command, "docker-registry" if command == "docker-registry" else command))


# -- options, in process ------------------------------------------------------------


def test_only_selects_figures_and_docker_means_both() -> None:
    opts, selected, settings = versus._parse(["--only", "pushes,docker", "--connections", "8"])
    assert selected == ["pushes", "docker_push", "docker_pull"]
    assert settings == {}
    _, selected, _ = versus._parse(["--only", "manifest_get_digest_8", "--connections", "8"])
    assert selected == ["manifest_get_digest_8"]
    _, selected, _ = versus._parse([])
    assert selected[0] == "manifest_get_tag_1" and selected[-1] == "soak" and "docker_pull" in selected


def test_only_rejects_an_unknown_figure(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        versus._parse(["--only", "manifest_get_tag_8"])  # default connections: 32
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown figure 'manifest_get_tag_8'" in err and "manifest_get_tag_32" in err


def test_our_settings_go_into_our_config_only(tmp_path: Path) -> None:
    _, _, settings = versus._parse(["--ours-workers", "3", "--ours-config", "log.level=info",
                                    "--ours-config", "http.draintimeout=5s"])
    assert settings == {"http": {"workers": 3, "draintimeout": "5s"}, "log": {"level": "info"}}
    (tmp_path / "ours").mkdir()
    argv = servers.our_argv_with(settings)(tmp_path / "ours", 5000)
    config = yaml.safe_load(Path(argv[argv.index("--config") + 1]).read_text())
    assert config["http"] == {"addr": "127.0.0.1:5000", "workers": 3, "draintimeout": "5s"}
    assert config["log"]["level"] == "info" and config["log"]["accesslog"] == {"disabled": True}
    assert config["storage"]["filesystem"]["rootdirectory"] == str(tmp_path / "ours" / "storage")
    (tmp_path / "plain").mkdir()
    plain = servers.our_argv(tmp_path / "plain", 5001)
    assert "workers" not in yaml.safe_load(Path(plain[plain.index("--config") + 1]).read_text())["http"]


def test_bad_our_config_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        versus._parse(["--ours-config", "http.workers"])
    assert "expected KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        versus._parse(["--docker-pairs", "0"])
    assert "--docker-pairs must be positive" in capsys.readouterr().err
    assert versus._parse(["--docker-pairs", "3"])[0].docker_pairs == 3


def test_verdict_against_targets() -> None:
    fig = versus.Figure("blob_head_32", "blob HEAD", True, "req/s")
    for label, rate, p99 in (("ours", 300, 5), ("distribution", 100, 6), ("distribution", 100, 6), ("ours", 300, 5)):
        fig.add(label, rate, p99_ms=p99, errors=0)
    assert fig.summary()["target_met"] is True
    slow_tail = versus.Figure("blob_head_32", "blob HEAD", True, "req/s")
    for label, rate, p99 in (("ours", 300, 9), ("distribution", 100, 6), ("distribution", 100, 6), ("ours", 300, 9)):
        slow_tail.add(label, rate, p99_ms=p99, errors=0)
    assert slow_tail.summary()["target_met"] is False  # faster, but p99 worse
    theirs_failing = versus.Figure("blob_head_32", "blob HEAD", True, "req/s")
    for label, errors in (("ours", 0), ("distribution", 3), ("distribution", 0), ("ours", 0)):
        theirs_failing.add(label, 300 if label == "ours" else 100, p99_ms=5, errors=errors)
    summary = theirs_failing.summary()
    assert summary["distribution_errors"] == 3 and summary["target_met"] is True
    ours_failing = versus.Figure("blob_head_32", "blob HEAD", True, "req/s")
    for label, errors in (("ours", 1), ("distribution", 0), ("distribution", 0), ("ours", 0)):
        ours_failing.add(label, 300 if label == "ours" else 100, p99_ms=5, errors=errors)
    assert ours_failing.summary()["target_met"] is False  # one error of ours: not met, however fast
    push = versus.Figure("docker_push", "docker push", False, "s")
    for label, seconds in (("ours", 11.0), ("distribution", 10.0), ("distribution", 10.0), ("ours", 11.0)):
        push.add(label, seconds)
    summary = push.summary()
    assert summary["speed_ratio"] == pytest.approx(10 / 11)
    assert summary["target"] == ">= 1x" and summary["target_met"] is False
    untargeted = versus.Figure("manifest_get_tag_1", "x", True, "req/s")
    untargeted.add("ours", 1.0)
    untargeted.add("distribution", 2.0)
    assert untargeted.summary()["target_met"] is None


# -- helpers ------------------------------------------------------------------------------


def test_server_processes_are_its_group_and_descendants() -> None:
    proc = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        found: list[int] = []
        while len(found) < 3 and time.monotonic() < deadline:
            found = servers.process_tree(proc.pid)
            time.sleep(0.05)
        assert proc.pid in found and len(found) == 3, found
        rss = servers.process_rss(proc.pid)
        assert rss is not None and rss > 0
        cpu = servers.process_cpu_seconds(os.getpid())  # this test process has used some
        assert cpu is not None and cpu > 0
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the shell and its two sleeps
        proc.wait()
    assert servers.process_rss(proc.pid) is None


def test_docker_image_archive_is_consistent(tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    image_id = dockerpush.write_image_archive(archive, 3, 10_000, "bench/x:latest")
    with tarfile.open(archive) as tar:
        def read(name: str) -> bytes:
            member = tar.extractfile(name)
            assert member is not None
            return member.read()

        (manifest,) = json.loads(read("manifest.json"))
        config = read(manifest["Config"])
        assert image_id == "sha256:" + hashlib.sha256(config).hexdigest()
        layers = [read(name) for name in manifest["Layers"]]
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    assert diff_ids == ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    assert len(set(diff_ids)) == 3 and manifest["RepoTags"] == ["bench/x:latest"]


# -- the command line, real registries ------------------------------------------------------


@pytest.mark.slow  # 10-20 s on a busy machine: two registries start
def test_only_one_figure_reports_it_alone() -> None:
    _need("docker-registry", "wrk", "hey", "curl")
    figures = _figures(_bench("--only", "pushes", "--pushes", "3"))
    assert set(figures) == {"pushes"}
    pushes = figures["pushes"]
    assert pushes["unit"] == "s" and pushes["ours"] > 0 and pushes["distribution"] > 0
    assert len(pushes["pair_ratios"]) == 2 and pushes["speed_ratio"] > 0
    assert pushes["target"] == ">= 1.25x" and isinstance(pushes["target_met"], bool)


@pytest.mark.slow  # about 10-15 s: a server start, 3 s of load, the threads' last operations
def test_soak_for_seconds_has_no_errors() -> None:
    _need("docker-registry", "wrk", "hey", "curl")
    proc = _bench("--only", "soak", "--soak-minutes", "0.05", "--connections", "8")
    soak = _figures(proc)["soak"]
    assert soak["errors"] == 0, soak["first_errors"]
    # A 3 s run is all warm-up, so flatness is reported but not asserted here.
    assert soak["target_met"] is soak["rss_flat"]
    assert soak["connections"] == 8 and soak["seconds"] >= 3
    assert soak["requests"] > 0 and soak["pushes"] > 0
    assert soak["p99_ms"] >= soak["p50_ms"] > 0
    for which in ("rss_start", "rss_end"):
        assert soak[which] and all(rss > 0 for rss in soak[which].values())
    assert soak["rss_peak_total_mib"] >= soak["rss_end_total_mib"] > 0
    assert soak["server_cpu_s"] > 0 and soak["server_cpu_ms_per_request"] > 0
    assert "versus: soak, ours:" in proc.stdout and "RSS at start" in proc.stdout
    series = soak["rss_series"]
    assert len(series) >= 3 and series[0]["t_s"] == 0.0
    assert [s["t_s"] for s in series] == sorted(s["t_s"] for s in series)
    assert series[0]["rss"] == soak["rss_start"] and series[-1]["rss"] == soak["rss_end"]
    assert set(soak["rss_second_half_growth_mib"]) <= set(soak["rss_end"])
    assert "MiB per sample" in proc.stdout and "over the second half" in proc.stdout


def test_second_half_growth_compares_mid_run_with_the_end() -> None:
    from registry.bench.soak import FLAT_SLACK_BYTES, second_half_growth
    mib = 1 << 20
    series = [(0.0, {1: 50 * mib, 2: 50 * mib}), (30.0, {1: 90 * mib, 2: 60 * mib}),
              (60.0, {1: 92 * mib, 2: 61 * mib}), (90.0, {1: 93 * mib, 3: 40 * mib}),
              (120.0, {1: 94 * mib, 3: 70 * mib})]
    growth = second_half_growth(series)
    # mid-run is the sample nearest 60 s; pid 2 is gone and 3 was not there then.
    assert growth == {1: (2 * mib, 92 * mib)}
    assert growth[1][0] <= FLAT_SLACK_BYTES
    assert second_half_growth(series[:1]) == {}
    leaking = [(0.0, {1: 50 * mib}), (60.0, {1: 80 * mib}), (120.0, {1: 110 * mib})]
    assert second_half_growth(leaking) == {1: (30 * mib, 80 * mib)}


def test_soak_minutes_zero_skips_it() -> None:
    _need("docker-registry", "wrk", "hey", "curl")
    assert _figures(_bench("--only", "soak", "--soak-minutes", "0"))["soak"] == {"skipped": "--soak-minutes 0"}


@pytest.mark.slow
@pytest.mark.clients
def test_docker_push_and_pull_of_a_small_image() -> None:
    _need("docker-registry", "wrk", "hey", "curl", "dockerd")
    proc = _bench("--only", "docker", "--docker-layers", "2", "--docker-layer-mib", "1", "--no-docker-warmup",
                  timeout=900)
    figures = _figures(proc)
    for key in ("docker_push", "docker_pull"):
        assert figures[key]["unit"] == "s" and len(figures[key]["pair_ratios"]) == 2
        assert figures[key]["ours_server_cpu_s"] > 0 and figures[key]["distribution_server_cpu_s"] > 0
        assert figures[key]["target"] == ">= 1x"
    assert proc.stdout.count("versus: docker round") == 4
