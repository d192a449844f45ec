"""Our registry against CNCF Distribution 2.8.2, side by side on this machine.

``python -m registry.bench versus [--mib N] [--duration S] [--connections C]
[--only KEY[,KEY]] [--soak-minutes M] [--ours-workers N] [--ours-config K=V]``

Starts Distribution (Debian's ``docker-registry``) and ours (``twistd
registry``) on loopback, each over filesystem storage in its own temporary
directory, seeds both with the same small image, then measures each figure
against both in the order A B B A (ours, Distribution, Distribution, ours),
so both see the same machine state on average.  Each figure prints the two
paired ratios and their mean, as a *speed ratio*: above 1 means ours is
faster (for rates ours/theirs, for wall times theirs/ours), and a verdict
against the target of issue 11 (:data:`TARGETS`).

Figures (their keys, for ``--only`` and the JSON): manifest GET by tag at 1
and C connections (``manifest_get_tag_1``, ``manifest_get_tag_C``), by digest
(``manifest_get_digest_C``) and blob HEAD (``blob_head_C``), with p99 latency
(wrk drives the GETs, hey the HEADs); 50 small images pushed at once with a
new connection per request, as docker and skopeo do (``pushes``, Python
threads); a blob download and monolithic, 8 MiB chunked and streamed uploads
of N MiB (``download``, ``upload_monolithic``, ``upload_chunked``,
``upload_streamed``, curl); a real ``docker push`` and ``docker pull`` of a
5-layer image of random bytes (``docker_push``, ``docker_pull``; ``docker``
selects both; see :mod:`registry.bench.dockerpush`), each round against a
fresh registry, after one discarded warm-up round (``--no-docker-warmup``
skips it); and a soak (``soak``, ours only: see
:mod:`registry.bench.soak`) of M minutes (default 10, 0 skips it) of mixed
pushes and pulls at C connections, reporting requests, errors, p99 and the
resident memory of every server process at start and end.

``--ours-workers N`` writes ``http.workers: N`` into our configuration;
``--ours-config KEY=VALUE`` (repeatable) sets any dotted key (the value is
read as YAML), e.g. ``--ours-config log.level=info``.

Needs ``docker-registry``, ``wrk``, ``hey`` and ``curl`` (``scripts/install-system-deps.sh``
installs them); a missing one skips the section with the reason.  A missing
``dockerd`` skips the docker figures (under ``CI=true`` it is an error).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from registry.bench import dockerpush, soak
from registry.bench.daemons import MissingTool
from registry.bench.servers import Target, curl, distribution_argv, our_argv_with, sha256_of, start, write_blob

MIB = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


# -- requests over plain http.client (a new connection per request) ------------


def _request(port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers={"Content-Length": str(len(body)), **(headers or {})})
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def _absolute(port: int, location: str) -> str:
    return location if location.startswith("http") else f"http://127.0.0.1:{port}{location}"


def _path(url: str) -> str:
    u = urllib.parse.urlsplit(url)
    return u.path + ("?" + u.query if u.query else "")


def _push_blob(port: int, name: str, data: bytes) -> str:
    """Docker's sequence, a new connection per request: HEAD, POST, PATCH
    with the bytes, PUT with the digest."""
    digest = sha256_of(data)
    status, _, _ = _request(port, "HEAD", f"/v2/{name}/blobs/{digest}")
    if status == 200:
        return digest
    status, headers, body = _request(port, "POST", f"/v2/{name}/blobs/uploads/")
    if status != 202:
        raise RuntimeError(f"upload start in {name}: {status} {body[:200]!r}")
    status, headers, body = _request(port, "PATCH", _path(_absolute(port, headers["location"])), data,
                                     {"Content-Type": "application/octet-stream"})
    if status != 202:
        raise RuntimeError(f"PATCH in {name}: {status} {body[:200]!r}")
    location = _path(_absolute(port, headers["location"]))
    sep = "&" if "?" in location else "?"
    status, _, body = _request(port, "PUT", f"{location}{sep}digest={digest}")
    if status != 201:
        raise RuntimeError(f"blob push to {name}: {status} {body[:200]!r}")
    return digest


def _push_image(port: int, name: str, tag: str, seed: bytes) -> tuple[str, str]:
    """A small one-layer image; returns (manifest digest, layer digest)."""
    layer = hashlib.sha256(seed).digest() * 64
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha256_of(layer)]},
                         "seed": seed.hex()}).encode()
    layer_digest = _push_blob(port, name, layer)
    config_digest = _push_blob(port, name, config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer)}],
    }).encode()
    status, _, body = _request(port, "PUT", f"/v2/{name}/manifests/{tag}", manifest, {"Content-Type": OCI_MANIFEST})
    if status != 201:
        raise RuntimeError(f"manifest push to {name}: {status} {body[:200]!r}")
    return sha256_of(manifest), layer_digest


# -- figures ----------------------------------------------------------------------

_WRK_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_P99 = re.compile(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_WRK_ERRORS = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)|Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def _wrk(url: str, connections: int, duration: float, workdir: Path, method: str = "GET", accept: str | None = None) -> dict[str, float]:
    script = workdir / f"wrk-{method}.lua"
    script.write_text(f'wrk.method = "{method}"\n')
    cmd = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{duration:g}s", "--latency", "-s", str(script)]
    if accept:
        cmd += ["-H", f"Accept: {accept}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    rate = _WRK_RATE.search(out)
    p99 = _WRK_P99.search(out)
    if rate is None or p99 is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)]
    errors = 0
    for m in _WRK_ERRORS.finditer(out):
        errors += sum(int(g) for g in m.groups() if g)
    return {"rate": float(rate.group(1)), "p99_ms": float(p99.group(1)) * scale, "errors": float(errors)}


_HEY_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_HEY_P99 = re.compile(r"99% in ([\d.]+) secs")
_HEY_STATUS = re.compile(r"^\s*\[(\d{3})\]\s+(\d+) responses", re.M)
_HEY_ERRORS = re.compile(r"^\s*\[(\d+)\]\s+\D", re.M)


def _hey(url: str, connections: int, duration: float, method: str) -> dict[str, float]:
    """hey for HEAD (wrk waits for a body after a HEAD answer that has a
    Content-Length, so it never completes one)."""
    out = subprocess.run(["hey", "-z", f"{duration:g}s", "-c", str(connections), "-m", method, url],
                         capture_output=True, text=True, check=True).stdout
    rate = _HEY_RATE.search(out)
    p99 = _HEY_P99.search(out)
    if rate is None or p99 is None:
        raise RuntimeError(f"cannot read hey's output:\n{out}")
    status_part, _, error_part = out.partition("Error distribution:")
    errors = sum(int(n) for code, n in _HEY_STATUS.findall(status_part) if not code.startswith("2"))
    errors += sum(int(n) for n in _HEY_ERRORS.findall(error_part))
    return {"rate": float(rate.group(1)), "p99_ms": float(p99.group(1)) * 1e3, "errors": float(errors)}


def _concurrent_pushes(target: Target, count: int, round_no: int) -> float:
    """Wall seconds for ``count`` small images pushed at once."""
    def one(i: int) -> None:
        _push_image(target.port, f"push/r{round_no}/img{i}", "latest", f"{target.label}-{round_no}-{i}".encode())

    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
        for f in [pool.submit(one, i) for i in range(count)]:
            f.result()
    return time.perf_counter() - t



def _upload_monolithic(target: Target, src: Path, digest: str, round_no: int) -> None:
    # POST, then the whole body in the closing PUT: the spec's monolithic
    # upload, which both registries take (Distribution 2.8 ignores a body
    # sent with the POST).
    location = _start_upload(target, f"bench/mono{round_no}")
    sep = "&" if "?" in location else "?"
    curl("-X", "PUT", "-T", str(src), "-H", "Content-Type: application/octet-stream", f"{location}{sep}digest={digest}")


def _start_upload(target: Target, name: str) -> str:
    status, headers, _ = _request(target.port, "POST", f"/v2/{name}/blobs/uploads/")
    if status != 202:
        raise RuntimeError(f"upload start: {status}")
    location = headers["location"]
    return location if location.startswith("http") else target.url + location


def _finish_upload(location: str, digest: str) -> None:
    sep = "&" if "?" in location else "?"
    curl("-X", "PUT", "-H", "Content-Length: 0", f"{location}{sep}digest={digest}")


def _upload_chunked(target: Target, src: Path, digest: str, round_no: int, chunk: int = 8 * MIB) -> None:
    location = _start_upload(target, f"bench/chunked{round_no}")
    size = src.stat().st_size
    with open(src, "rb") as f:
        for start in range(0, size, chunk):
            part = f.read(chunk)
            conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=120)
            try:
                conn.request("PATCH", _path(location), body=part, headers={
                    "Content-Type": "application/octet-stream", "Content-Length": str(len(part)),
                    "Content-Range": f"{start}-{start + len(part) - 1}"})
                r = conn.getresponse()
                r.read()
                if r.status != 202:
                    raise RuntimeError(f"PATCH: {r.status}")
                loc = r.getheader("Location") or ""
                location = loc if loc.startswith("http") else target.url + loc
            finally:
                conn.close()
    _finish_upload(location, digest)


def _upload_streamed(target: Target, src: Path, digest: str, round_no: int) -> None:
    location = _start_upload(target, f"bench/stream{round_no}")
    # One PATCH, chunked transfer encoding, no Content-Range: docker's way.
    out = subprocess.run(["curl", "-sS", "--fail", "-o", "/dev/null", "-D", "-", "-X", "PATCH", "-T", str(src),
                          "-H", "Transfer-Encoding: chunked", "-H", "Content-Type: application/octet-stream", location],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"^location:\s*(\S+)", out, re.I | re.M)
    assert m is not None, out
    loc = m.group(1)
    _finish_upload(loc if loc.startswith("http") else target.url + loc, digest)


@dataclass(frozen=True)
class Goal:
    """A target of issue 11 for one figure: the mean speed ratio must reach
    ``ratio`` (and, with ``p99``, ours' p99 latency must not exceed theirs)."""

    ratio: float
    p99: bool = False

    def describe(self) -> str:
        return f">= {self.ratio:g}x" + (", p99 not worse" if self.p99 else "")


#: Targets by figure key (the C-connection rate figures at C = 32 only).
TARGETS: dict[str, Goal] = {
    "manifest_get_tag_32": Goal(2.0, p99=True),
    "manifest_get_digest_32": Goal(2.0, p99=True),
    "blob_head_32": Goal(2.0, p99=True),
    "pushes": Goal(1.25),  # time <= 0.8x Distribution's
    "download": Goal(1.2),
    "upload_monolithic": Goal(1.5),
    "upload_chunked": Goal(1.5),
    "upload_streamed": Goal(1.5),
    "docker_push": Goal(1.0),  # time <= 1.0x Distribution's
    "docker_pull": Goal(1.0),
}


@dataclass
class Figure:
    key: str
    label: str
    higher_is_better: bool
    unit: str
    results: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, list[float]] = field(default_factory=dict)

    def add(self, label: str, value: float, **extra: float) -> None:
        self.results.setdefault(label, []).append(value)
        for k, v in extra.items():
            self.extra.setdefault(f"{label}_{k}", []).append(v)

    def summary(self) -> dict[str, Any]:
        ours, theirs = self.results["ours"], self.results["distribution"]
        # Pairs: (ours[0], theirs[0]) ran first, (ours[1], theirs[1]) second.
        pairs = [(o / t if self.higher_is_better else t / o) for o, t in zip(ours, theirs)]
        out: dict[str, Any] = {
            "ours": statistics.fmean(ours), "distribution": statistics.fmean(theirs), "unit": self.unit,
            "speed_ratio": statistics.fmean(pairs), "pair_ratios": pairs,
        }
        for k, v in self.extra.items():  # errors: the total over the runs; the rest: the mean
            out[k] = sum(v) if k.endswith("_errors") else statistics.fmean(v)
        target = TARGETS.get(self.key)
        out["target"] = target.describe() if target else None
        out["target_met"] = None
        if target is not None:
            met = out["speed_ratio"] >= target.ratio
            if target.p99:
                met = met and out["ours_p99_ms"] <= out["distribution_p99_ms"]
            if out.get("ours_errors", 0):  # an error of ours fails any target; Distribution's are its own
                met = False
            out["target_met"] = met
        return out


def _figure_keys(c: int) -> list[str]:
    return list(dict.fromkeys([
        "manifest_get_tag_1", f"manifest_get_tag_{c}", f"manifest_get_digest_{c}", f"blob_head_{c}",
        "pushes", "download", "upload_monolithic", "upload_chunked", "upload_streamed",
        "docker_push", "docker_pull", "soak"]))


def _selected(only: str | None, c: int, parser: argparse.ArgumentParser) -> list[str]:
    keys = _figure_keys(c)
    if only is None:
        return keys
    wanted: set[str] = set()
    for name in (n.strip() for n in only.split(",")):
        if name == "docker":
            wanted |= {"docker_push", "docker_pull"}
        elif name in keys:
            wanted.add(name)
        else:
            parser.error(f"--only: unknown figure {name!r}; known (with --connections {c}): "
                         + ", ".join(keys) + ", docker")
    if wanted & {"docker_push", "docker_pull"}:  # one run measures both
        wanted |= {"docker_push", "docker_pull"}
    return [k for k in keys if k in wanted]


def _set_dotted(settings: dict[str, Any], dotted: str, value: Any) -> None:
    node = settings
    *parents, last = dotted.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"{dotted}: {part} is already set to a non-mapping value")
        node = child
    node[last] = value


def _our_settings(opts: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for item in opts.ours_config:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            parser.error(f"--ours-config {item!r}: expected KEY=VALUE, e.g. http.workers=2")
        try:
            _set_dotted(settings, key, yaml.safe_load(raw))
        except (ValueError, yaml.YAMLError) as e:
            parser.error(f"--ours-config {item!r}: {e}")
    if opts.ours_workers is not None:
        _set_dotted(settings, "http.workers", opts.ours_workers)
    return settings


def _parse(extra: list[str]) -> tuple[argparse.Namespace, list[str], dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m registry.bench versus")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per request-rate run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--pushes", type=int, default=50)
    parser.add_argument("--only", metavar="KEY[,KEY]", help="run only these figures (keys as in the JSON; "
                        "'docker' for docker_push and docker_pull)")
    parser.add_argument("--soak-minutes", type=float, default=10.0, metavar="M",
                        help="minutes of the soak figure (default 10; 0 skips it; fractions allowed)")
    parser.add_argument("--soak-distribution", action="store_true",
                        help="also soak Distribution (after ours), for comparison")
    parser.add_argument("--docker-layers", type=int, default=5, help="layers of the docker figure's image")
    parser.add_argument("--docker-layer-mib", type=int, default=45, help="MiB of random bytes per layer")
    parser.add_argument("--docker-pairs", type=int, default=1, metavar="N",
                        help="A B B A sequences of docker rounds (default 1: two pairs); the docker figure "
                             "is noisy (docker compresses its layers on the same 2 cores), more pairs steady it")
    parser.add_argument("--docker-warmup", action=argparse.BooleanOptionalAction, default=True,
                        help="one discarded docker push/pull round first (default: on)")
    parser.add_argument("--ours-workers", type=int, default=None, metavar="N",
                        help="write http.workers: N into our configuration")
    parser.add_argument("--ours-config", action="append", default=[], metavar="KEY=VALUE",
                        help="set a dotted key of our configuration (value read as YAML); repeatable")
    opts = parser.parse_args(extra)
    if opts.soak_minutes < 0:
        parser.error("--soak-minutes must not be negative")
    if opts.docker_layers <= 0 or opts.docker_layer_mib <= 0 or opts.docker_pairs <= 0:
        parser.error("--docker-layers, --docker-layer-mib and --docker-pairs must be positive")
    return opts, _selected(opts.only, opts.connections, parser), _our_settings(opts, parser)


_PAIRED = {"manifest_get_tag_1", "pushes", "download", "upload_monolithic", "upload_chunked", "upload_streamed"}


def run(args: argparse.Namespace) -> dict[str, Any]:
    opts, selected, ours_settings = _parse(args.extra)
    size_mib = getattr(args, "mib", None) or 256
    missing = [c for c in ("docker-registry", "wrk", "hey", "curl") if shutil.which(c) is None]
    if missing:
        print(f"versus: {', '.join(missing)} not installed (scripts/install-system-deps.sh installs them); skipped")
        return {"skipped": f"not installed: {', '.join(missing)}"}
    if ours_settings:
        print(f"versus: our configuration adds {json.dumps(ours_settings, sort_keys=True)}", flush=True)
    argv_for: dict[str, Callable[[Path, int], list[str]]] = {
        "ours": our_argv_with(ours_settings), "distribution": distribution_argv}
    order = ["ours", "distribution", "distribution", "ours"]
    paired = [k for k in selected if k in _PAIRED or k.startswith(("manifest_get_", "blob_head_"))]

    figures: list[Figure] = []
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="registry-versus-") as tmp:
        work = Path(tmp)
        if paired:
            figures += _paired_figures(work, paired, argv_for, order, opts, size_mib)
        if "docker_push" in selected:
            figures += _docker_figures(opts, argv_for, order, results)
        if "soak" in selected:
            results.update(_soak(work, opts, argv_for))
    results.update({f.key: f.summary() for f in figures})
    return results


def _paired_figures(work: Path, selected: list[str], argv_for: dict[str, Callable[[Path, int], list[str]]],
                    order: list[str], opts: argparse.Namespace, size_mib: int) -> list[Figure]:
    figures: list[Figure] = []
    c = opts.connections
    src = work / "blob"
    digest = ""
    needs_blob = any(k in selected for k in ("download", "upload_monolithic", "upload_chunked", "upload_streamed"))
    if needs_blob:
        digest = write_blob(src, max(1, size_mib // 16) * 16 * MIB)

    targets: dict[str, Target] = {}
    try:
        for label in ("ours", "distribution"):
            targets[label] = start(label, argv_for[label], work / label)
        for t in targets.values():
            manifest_digest, layer_digest = _push_image(t.port, "bench/small", "latest", b"seed")
            t.seeded = {"manifest": manifest_digest, "layer": layer_digest}
            if "download" in selected:
                _upload_monolithic(t, src, digest, 0)  # the blob downloads read

        def rate(key: str, label: str, url_of: Callable[[Target], str], conns: int, method: str = "GET") -> None:
            if key not in selected:
                return
            fig = Figure(key, label, True, "req/s")
            for name in order:
                if method == "HEAD":
                    r = _hey(url_of(targets[name]), conns, opts.duration, method)
                else:
                    r = _wrk(url_of(targets[name]), conns, opts.duration, work, method, accept=OCI_MANIFEST)
                fig.add(name, r["rate"], p99_ms=r["p99_ms"], errors=r["errors"])
            figures.append(fig)
            _report(fig)

        rate("manifest_get_tag_1", "manifest GET by tag, 1 connection",
             lambda t: f"{t.url}/v2/bench/small/manifests/latest", 1)
        rate(f"manifest_get_tag_{c}", f"manifest GET by tag, {c} connections",
             lambda t: f"{t.url}/v2/bench/small/manifests/latest", c)
        rate(f"manifest_get_digest_{c}", f"manifest GET by digest, {c} connections",
             lambda t: f"{t.url}/v2/bench/small/manifests/{t.seeded['manifest']}", c)
        rate(f"blob_head_{c}", f"blob HEAD, {c} connections",
             lambda t: f"{t.url}/v2/bench/small/blobs/{t.seeded['layer']}", c, "HEAD")

        def timed(key: str, label: str, fn: Callable[[Target, int], Any], mb: float | None) -> None:
            if key not in selected:
                return
            fig = Figure(key, label, mb is not None, "MB/s" if mb is not None else "s")
            for round_no, name in enumerate(order, start=1):
                t0 = time.perf_counter()
                fn(targets[name], round_no)
                seconds = time.perf_counter() - t0
                fig.add(name, mb / seconds if mb is not None else seconds)
            figures.append(fig)
            _report(fig)

        timed("pushes", f"{opts.pushes} small images pushed at once", lambda t, n: _concurrent_pushes(t, opts.pushes, n), None)
        timed("download", f"{size_mib} MiB download", lambda t, n: curl(f"{t.url}/v2/bench/mono0/blobs/{digest}"), size_mib)
        timed("upload_monolithic", f"{size_mib} MiB upload, monolithic", lambda t, n: _upload_monolithic(t, src, digest, n), size_mib)
        timed("upload_chunked", f"{size_mib} MiB upload, 8 MiB chunks", lambda t, n: _upload_chunked(t, src, digest, n), size_mib)
        timed("upload_streamed", f"{size_mib} MiB upload, streamed", lambda t, n: _upload_streamed(t, src, digest, n), size_mib)
    finally:
        for t in targets.values():
            t.stop()
    return figures


def _docker_figures(opts: argparse.Namespace, argv_for: dict[str, Callable[[Path, int], list[str]]],
                    order: list[str], results: dict[str, Any]) -> list[Figure]:
    total = opts.docker_layers * opts.docker_layer_mib
    what = f"{opts.docker_layers}-layer {total} MiB image"
    push = Figure("docker_push", f"docker push, {what}", False, "s")
    pull = Figure("docker_pull", f"docker pull, {what}", False, "s")

    def progress(r: dockerpush.Round) -> None:
        print(f"versus: docker round {r.label:12s} push {r.push_seconds:6.2f} s (registry CPU {r.push_cpu:5.2f} s)"
              f"  pull {r.pull_seconds:6.2f} s (registry CPU {r.pull_cpu:5.2f} s)", flush=True)

    try:
        rounds = dockerpush.run_rounds(order * opts.docker_pairs, argv_for, opts.docker_layers, opts.docker_layer_mib, progress,
                                       warmup="distribution" if opts.docker_warmup else None)
    except MissingTool as e:
        if running_in_ci():
            raise
        print(f"versus: docker push/pull skipped: {e}", flush=True)
        results["docker_push"] = results["docker_pull"] = {"skipped": str(e)}
        return []
    for r in rounds:
        push.add(r.label, r.push_seconds, server_cpu_s=r.push_cpu)
        pull.add(r.label, r.pull_seconds, server_cpu_s=r.pull_cpu)
    _report(push)
    _report(pull)
    return [push, pull]


def running_in_ci() -> bool:
    """True under CI (``CI=true``): a missing dockerd is then an error, not a skip."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _soak(work: Path, opts: argparse.Namespace, argv_for: dict[str, Callable[[Path, int], list[str]]]) -> dict[str, Any]:
    """``{"soak": ours}``, plus ``"soak_distribution"`` with ``--soak-distribution``."""
    if opts.soak_minutes == 0:
        print("versus: soak skipped (--soak-minutes 0)", flush=True)
        return {"soak": {"skipped": "--soak-minutes 0"}}
    out: dict[str, Any] = {}
    for label in ["ours", "distribution"] if opts.soak_distribution else ["ours"]:
        target = start(label, argv_for[label], work / f"soak-{label}")
        try:
            figure = soak.run_soak(target, opts.soak_minutes * 60, opts.connections)
        finally:
            target.stop()
        soak.report(label, figure)
        out["soak" if label == "ours" else "soak_distribution"] = figure
    return out


def _report(fig: Figure) -> None:
    s = fig.summary()
    extra = ""
    if "ours_p99_ms" in s:
        extra = f"  p99 {s['ours_p99_ms']:.1f} vs {s['distribution_p99_ms']:.1f} ms"
        errors = s.get("ours_errors", 0) + s.get("distribution_errors", 0)
        if errors:
            extra += f"  ERRORS ours {s.get('ours_errors', 0):.0f} distribution {s.get('distribution_errors', 0):.0f}"
    if "ours_server_cpu_s" in s:  # busy machines vary wall time more than the server's own CPU time
        extra += f"  registry CPU {s['ours_server_cpu_s']:.2f} vs {s['distribution_server_cpu_s']:.2f} s"
    pairs = "/".join(f"{p:.2f}" for p in s["pair_ratios"])
    if s["target"] is None:
        verdict = "[no target]"
    else:
        verdict = f"[target {s['target']}: {'MET' if s['target_met'] else 'NOT MET'}]"
    print(f"versus: {fig.label:40s} ours {s['ours']:9.2f}  distribution {s['distribution']:9.2f} {fig.unit:5s}"
          f"  speed ratio {s['speed_ratio']:.2f} (pairs {pairs}){extra}  {verdict}", flush=True)
