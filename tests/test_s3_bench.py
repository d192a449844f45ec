"""The ``s3`` benchmark (``python -m registry.bench s3``): runs it once with
tiny settings on its own throwaway Ceph RGW and checks the figures' shape and
the invariants that do not depend on timing, never the timings themselves."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from typing import Any

import pytest

from registry.bench import s3
from tests.clients.harness import MissingTool, missing_tool


def test_rounds_option() -> None:
    class Args:
        extra = ["--rounds", "5", "--pin"]

    options = s3._options(Args())  # type: ignore[arg-type]
    assert (options.rounds, options.pin) == (5, True)
    assert s3._options(Args()).download_repeats == 5  # type: ignore[arg-type]
    for bad in (["--rounds", "0"], ["--download-repeats", "0"]):
        Args.extra = bad
        with pytest.raises(SystemExit):
            s3._options(Args())  # type: ignore[arg-type]


@pytest.mark.slow  # a gateway start, 2 rounds of 16 MiB transfers, a docker push+pull through each registry
def test_two_rounds_report_every_transfer() -> None:
    for command in ("ceph-mon", "ceph-osd", "radosgw", "curl", "wrk", "redis-server", "docker-registry", "dockerd"):
        if shutil.which(command) is None:
            missing_tool(MissingTool(command, {"dockerd": "docker.io"}.get(command, command)))
    proc = subprocess.run(
        [sys.executable, "-m", "registry.bench", "s3", "--json", "--mib", "16", "--rounds", "2",
         "--download-repeats", "3", "--docker-pairs", "1", "--docker-layer-mib", "1"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    figures: dict[str, Any] = json.loads("\n".join(lines[lines.index("{"):]))["s3"]
    assert "skipped" not in figures, figures
    assert figures["rounds"] == 2 and figures["size_mib"] == 16
    for figure, _, reference, _ in s3.RATIOS:
        # One sample per round; downloads --download-repeats per round.
        assert len(figures[figure + "_mbps_all"]) == (6 if figure.startswith("download") else 2), figure
        # The figure is the samples' median (they are printed rounded to 0.1).
        assert figures[figure + "_mbps"] == pytest.approx(statistics.median(figures[figure + "_mbps_all"]), abs=0.1)
        assert figures[figure + "_ratio"] == pytest.approx(figures[figure + "_mbps"] / figures[reference + "_mbps"])
    for figure, _, _ in s3.DISTRIBUTION:
        assert figure + "_mbps" in figures or figure + "_failed" in figures, figure
    assert len(figures["plain_get_mbps_all"]) == 6 and len(figures["plain_multipart_put_mbps_all"]) == 2
    # Every upload through a registry made S3 requests and cost it CPU; the plain ones cost it none.
    for upload in ("upload_monolithic", "upload_streamed", "upload_chunked_8mib", "upload_monolithic_signed"):
        assert figures[upload + "_s3_requests"] > figures["plain_multipart_put_s3_requests"] > 0, upload
        assert figures[upload + "_registry_cpu_s"] > 0, upload
    assert figures["plain_multipart_put_registry_cpu_s"] == 0
    # 16 MiB in 8 MiB PATCHes: at least a part per PATCH, more requests than one streamed PATCH.
    assert figures["upload_chunked_8mib_s3_requests"] > figures["upload_streamed_s3_requests"]
    for cache in ("no_cache", "redis_cache"):
        assert figures[f"manifest_get_rps_{cache}"] > 0 and figures[f"manifest_get_digest_rps_{cache}"] > 0
    assert "8 MiB PATCH chunks against plain 8 MiB parts" in proc.stdout
    # docker pushed and pulled through both (a round each), on the gateway.
    assert figures["docker_layer_mib"] == 1
    for label in ("ours", "distribution"):
        assert figures[f"docker_push_s_{label}"] > 0 and figures[f"docker_pull_s_{label}"] > 0
        assert figures[f"docker_push_cpu_s_{label}"] > 0
    assert figures["docker_push_speed_ratio"] > 0 and "docker push of a 5-layer 5 MiB image" in proc.stdout
