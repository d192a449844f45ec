"""The ``soak`` figure of ``versus``: mixed pushes and pulls against one
registry for minutes, at many connections, counting every error.

Each of C client threads keeps one keep-alive connection and loops until
the time is up: half the time it pushes a new small image the way docker
does (blob HEAD, POST, PATCH with the bytes, PUT with the digest, for the
layer and the config, then the manifest PUT), half the time it pulls one
pushed earlier by any thread (manifest GET by tag, config and layer GETs,
the layer checked against its digest).  Every request is timed; any
unexpected status, wrong bytes or connection failure is an error.  The
resident memory of every process of the server (its process group and
descendants: workers included) is read from /proc before the load starts,
every few seconds during it (the peak) and after it ends; so is the CPU time
they used, per request a figure that a busy machine disturbs less than
latency.
"""

from __future__ import annotations

import http.client
import json
import random
import statistics
import threading
import time
import urllib.parse
from typing import Any

from registry.bench.servers import Target, process_rss, sha256_of

MIB = 1 << 20
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


class _Failure(Exception):
    pass


class _Client:
    """One keep-alive connection; every request timed into ``latencies``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None
        self.latencies: list[float] = []
        self.requests = 0

    def request(self, method: str, path: str, expect: tuple[int, ...], body: bytes = b"",
                headers: dict[str, str] | None = None) -> tuple[dict[str, str], bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        t0 = time.perf_counter()
        self.requests += 1
        try:
            self.conn.request(method, path, body=body, headers={"Content-Length": str(len(body)), **(headers or {})})
            response = self.conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as e:
            self.conn.close()
            self.conn = None
            raise _Failure(f"{method} {path}: {e!r}") from e
        self.latencies.append(time.perf_counter() - t0)
        if response.will_close:
            self.conn.close()
            self.conn = None
        if response.status not in expect:
            raise _Failure(f"{method} {path}: {response.status} {data[:200]!r}")
        return {k.lower(): v for k, v in response.getheaders()}, data

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _relative(location: str) -> str:
    u = urllib.parse.urlsplit(location)
    return u.path + ("?" + u.query if u.query else "")


def _push_blob(client: _Client, name: str, data: bytes) -> str:
    digest = sha256_of(data)
    client.request("HEAD", f"/v2/{name}/blobs/{digest}", (404,))
    headers, _ = client.request("POST", f"/v2/{name}/blobs/uploads/", (202,))
    headers, _ = client.request("PATCH", _relative(headers["location"]), (202,), data,
                                {"Content-Type": "application/octet-stream"})
    location = _relative(headers["location"])
    sep = "&" if "?" in location else "?"
    client.request("PUT", f"{location}{sep}digest={digest}", (201,))
    return digest


def _push(client: _Client, name: str, layer: bytes) -> None:
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [sha256_of(layer)]}}).encode()
    layer_digest = _push_blob(client, name, layer)
    config_digest = _push_blob(client, name, config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": DOCKER_LAYER, "digest": layer_digest, "size": len(layer)}],
    }).encode()
    client.request("PUT", f"/v2/{name}/manifests/latest", (201,), manifest, {"Content-Type": DOCKER_MANIFEST})


def _pull(client: _Client, name: str) -> None:
    _, body = client.request("GET", f"/v2/{name}/manifests/latest", (200,), headers={"Accept": DOCKER_MANIFEST})
    manifest = json.loads(body)
    for descriptor in [manifest["config"], *manifest["layers"]]:
        _, blob = client.request("GET", f"/v2/{name}/blobs/{descriptor['digest']}", (200,))
        if sha256_of(blob) != descriptor["digest"]:
            raise _Failure(f"GET {name} blob {descriptor['digest']}: {len(blob)} bytes with digest {sha256_of(blob)}")


def _rss(target: Target) -> dict[int, int]:
    found = {pid: process_rss(pid) for pid in target.processes()}
    return {pid: rss for pid, rss in found.items() if rss is not None}


FLAT_SLACK_BYTES = 8 * MIB
FLAT_SLACK_FRACTION = 0.10


def second_half_growth(series: list[tuple[float, dict[int, int]]]) -> dict[int, tuple[int, int]]:
    """Per process seen at both ends of the run's second half: (growth, RSS at mid-run).

    The first half is warm-up (caches fill up to their bounds); a leak shows as
    growth that goes on after it.  A process that is not in both samples (a
    worker restarted) is left out of the comparison.
    """
    if len(series) < 2:
        return {}
    end_t, end = series[-1]
    mid_t, mid = min(series, key=lambda sample: abs(sample[0] - end_t / 2))
    return {pid: (end[pid] - mid[pid], mid[pid]) for pid in end if pid in mid}


def run_soak(target: Target, seconds: float, connections: int, layer_bytes: int = 64 * 1024) -> dict[str, Any]:
    """Run the mixed load for ``seconds`` against ``target``; return the figure."""
    pushed: list[str] = []
    lock = threading.Lock()
    errors: list[str] = []
    counts = {"pushes": 0, "pulls": 0}
    clients = [_Client(target.port) for _ in range(connections)]
    rss_start = _rss(target)
    cpu_start = target.cpu_seconds()
    peak = sum(rss_start.values())
    stop = threading.Event()
    started = time.monotonic()
    deadline = started + seconds
    # One sample per minute (at least ten over a short run): enough to see
    # whether memory levels off or keeps climbing.
    sample_every = min(60.0, max(1.0, seconds / 10))
    series: list[tuple[float, dict[int, int]]] = [(0.0, rss_start)]
    next_sample = started + sample_every

    def worker(index: int, client: _Client) -> None:
        rng = random.Random(index)
        number = 0
        while time.monotonic() < deadline:
            with lock:
                name = rng.choice(pushed) if pushed and rng.random() < 0.5 else None
            try:
                if name is None:
                    number += 1
                    name = f"soak/c{index}/i{number}"
                    _push(client, name, rng.randbytes(layer_bytes))
                    with lock:
                        pushed.append(name)
                        counts["pushes"] += 1
                else:
                    _pull(client, name)
                    with lock:
                        counts["pulls"] += 1
            except _Failure as e:
                with lock:
                    errors.append(str(e))
        client.close()

    threads = [threading.Thread(target=worker, args=(i, c), daemon=True) for i, c in enumerate(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    while not stop.wait(min(5.0, sample_every, max(0.1, deadline - time.monotonic()))):
        now_rss = _rss(target)
        peak = max(peak, sum(now_rss.values()))
        now = time.monotonic()
        if now >= next_sample and now < deadline:
            series.append((now - started, now_rss))
            next_sample += sample_every
        if now >= deadline:
            stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    rss_end = _rss(target)
    cpu = target.cpu_seconds() - cpu_start
    peak = max(peak, sum(rss_end.values()))
    series.append((time.monotonic() - started, rss_end))
    growth = second_half_growth(series)
    flat = all(grew <= max(FLAT_SLACK_BYTES, FLAT_SLACK_FRACTION * mid) for grew, mid in growth.values())
    latencies = sorted(x for c in clients for x in c.latencies)
    requests = sum(c.requests for c in clients)

    def quantile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3 if latencies else 0.0

    return {
        "seconds": elapsed, "connections": connections, "layer_bytes": layer_bytes,
        "requests": requests, "rate": requests / elapsed if elapsed else 0.0,
        "pushes": counts["pushes"], "pulls": counts["pulls"],
        "errors": len(errors), "first_errors": errors[:5],
        "p50_ms": quantile(0.50), "p99_ms": quantile(0.99), "max_ms": latencies[-1] * 1e3 if latencies else 0.0,
        "mean_ms": statistics.fmean(latencies) * 1e3 if latencies else 0.0,
        "server_cpu_s": cpu, "server_cpu_ms_per_request": cpu * 1e3 / requests if requests else 0.0,
        "rss_start": {str(pid): rss for pid, rss in rss_start.items()},
        "rss_end": {str(pid): rss for pid, rss in rss_end.items()},
        "rss_start_total_mib": sum(rss_start.values()) / MIB,
        "rss_end_total_mib": sum(rss_end.values()) / MIB,
        "rss_peak_total_mib": peak / MIB,
        "rss_series": [{"t_s": round(t, 1), "rss": {str(pid): rss for pid, rss in found.items()}}
                       for t, found in series],
        "rss_second_half_growth_mib": {str(pid): grew / MIB for pid, (grew, _) in growth.items()},
        "rss_flat": flat,
        "target": (f"zero errors; RSS flat: no process grows more than {FLAT_SLACK_BYTES // MIB} MiB "
                   f"or {FLAT_SLACK_FRACTION:.0%} over the second half of the run"),
        "target_met": not errors and flat,
    }


def report(label: str, s: dict[str, Any]) -> None:
    verdict = "MET" if s["target_met"] else "NOT MET"
    print(f"versus: soak, {label}: {s['seconds']:.0f} s ({s['seconds'] / 60:.1f} min) at {s['connections']} connections: "
          f"{s['requests']} requests ({s['rate']:.0f}/s; {s['pushes']} pushes, {s['pulls']} pulls), "
          f"{s['errors']} errors, p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, max {s['max_ms']:.0f} ms"
          f"  [target: {s['target']}: {verdict}]", flush=True)

    def rss(which: str) -> str:
        per = ", ".join(f"pid {pid} {rss / MIB:.1f}" for pid, rss in sorted(s[which].items()))
        return f"{s[which + '_total_mib']:.1f} MiB ({per})"

    print(f"versus: soak, {label}: RSS at start {rss('rss_start')}; at end {rss('rss_end')}; "
          f"peak total {s['rss_peak_total_mib']:.1f} MiB; server CPU {s['server_cpu_s']:.1f} s "
          f"({s['server_cpu_ms_per_request']:.2f} ms per request)", flush=True)
    pids = sorted({pid for sample in s["rss_series"] for pid in sample["rss"]})
    for pid in pids:
        points = " ".join(f"{sample['rss'][pid] / MIB:.0f}" if pid in sample["rss"] else "-"
                          for sample in s["rss_series"])
        print(f"versus: soak, {label}: RSS of pid {pid}, MiB per sample ({len(s['rss_series'])} samples, "
              f"every {s['rss_series'][1]['t_s'] if len(s['rss_series']) > 1 else 0:.0f} s): {points}", flush=True)
    if s["rss_second_half_growth_mib"]:
        grew = ", ".join(f"pid {pid} {mib:+.1f}" for pid, mib in sorted(s["rss_second_half_growth_mib"].items()))
        print(f"versus: soak, {label}: RSS growth over the second half (MiB): {grew}: "
              f"{'flat' if s['rss_flat'] else 'NOT flat'}", flush=True)
    for error in s["first_errors"]:
        print(f"versus: soak, {label}: error: {error}", flush=True)
