"""The ``docker_push`` and ``docker_pull`` figures of ``versus``: a real
``docker push`` and ``docker pull`` of a multi-layer image, timed.

A private ``dockerd`` (:class:`registry.bench.daemons.DockerDaemon`: vfs
storage, no bridge, no iptables) loads an image built here from random
(incompressible) bytes, in ``docker save`` format, so nothing is fetched
from any network.  Each round starts a *fresh* registry on a new port (ours
or Distribution) so docker has never seen it: it cannot skip a layer as
already there nor mount it from another repository, and every push really
uploads every layer (docker compresses them as it goes, as it always does).
After the push the image is removed locally (every tag, so its layers go
too) and pulled back; the pulled image must have the same ID.  Besides
the wall time of each, the CPU time the registry's processes used is
recorded: on a busy machine it varies less than the wall time.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from registry.bench.daemons import DockerDaemon, SystemLeftovers, remove_tree
from registry.bench.servers import start

MIB = 1 << 20
LOCAL_TAG = "bench/layers:latest"


def _tar_of(name: str, data: bytes, mtime: int = 1_700_000_000) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        directory = tarfile.TarInfo(name.split("/")[0])
        directory.type = tarfile.DIRTYPE
        directory.mode = 0o755
        directory.mtime = mtime
        archive.addfile(directory)
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        info.mtime = mtime
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_image_archive(path: Path, layers: int, layer_bytes: int, repo_tag: str) -> str:
    """Write a ``docker save`` archive of an image of ``layers`` layers, each
    one file of ``layer_bytes`` random bytes; return its image ID
    (``sha256:`` of the config)."""
    diff_ids: list[str] = []
    layer_names: list[str] = []
    with tarfile.open(path, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for index in range(layers):
            layer = _tar_of(f"layer{index}/data.bin", os.urandom(layer_bytes))
            hex_digest = hashlib.sha256(layer).hexdigest()
            diff_ids.append("sha256:" + hex_digest)
            layer_names.append(f"{hex_digest}/layer.tar")
            directory = tarfile.TarInfo(hex_digest)
            directory.type = tarfile.DIRTYPE
            directory.mode = 0o755
            archive.addfile(directory)
            info = tarfile.TarInfo(layer_names[-1])
            info.size = len(layer)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(layer))
            del layer
        config = json.dumps({
            "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
            "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": "2024-01-01T00:00:00Z", "created_by": f"bench layer {i}"} for i in range(layers)],
        }, sort_keys=True).encode()
        config_hex = hashlib.sha256(config).hexdigest()
        manifest = json.dumps([{"Config": f"{config_hex}.json", "RepoTags": [repo_tag], "Layers": layer_names}]).encode()
        for name, data in ((f"{config_hex}.json", config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return "sha256:" + config_hex


@dataclass
class Round:
    label: str
    push_seconds: float
    pull_seconds: float
    #: CPU seconds the registry's processes used during the push / the pull.
    push_cpu: float
    pull_cpu: float


def run_rounds(
    order: list[str], argv_for: dict[str, Callable[[Path, int], list[str]]], layers: int, layer_mib: int,
    on_round: Callable[[Round], None] | None = None, warmup: str | None = None,
) -> list[Round]:
    """Start a private dockerd, load the image, then for each label in
    ``order`` push it to a fresh registry of that kind and pull it back.
    With ``warmup`` (a label), one round against that kind first, reported
    through ``on_round`` with the label ``warm-up`` and left out of the
    result, so that any first-push cost of the daemon itself (its caches,
    its heap growing) falls on neither registry.

    Raises :class:`registry.bench.daemons.MissingTool` when dockerd is not
    installed."""
    leftovers = SystemLeftovers()
    workdir = Path(tempfile.mkdtemp(prefix="bench-docker-"))
    daemon = DockerDaemon(workdir / "d")
    rounds: list[Round] = []
    try:
        daemon.start()
        archive = workdir / "image.tar"
        image_id = write_image_archive(archive, layers, layer_mib * MIB, LOCAL_TAG)
        daemon.load(archive)
        archive.unlink()
        plan = ([(0, warmup)] if warmup else []) + list(enumerate(order, start=1))
        for number, label in plan:
            target = start(label, argv_for[label], workdir / f"r{number}-{label}")
            try:
                ref = f"127.0.0.1:{target.port}/bench/docker{number}:latest"
                daemon.docker("tag", LOCAL_TAG, ref)
                cpu0, t0 = target.cpu_seconds(), time.perf_counter()
                daemon.docker("push", ref, timeout=1800)
                push_seconds, push_cpu = time.perf_counter() - t0, target.cpu_seconds() - cpu0
                daemon.docker("rmi", ref, LOCAL_TAG)
                if daemon.docker("image", "inspect", image_id, check=False).returncode == 0:
                    raise RuntimeError(f"image {image_id} still present after docker rmi; the pull would not download")
                cpu0, t0 = target.cpu_seconds(), time.perf_counter()
                daemon.docker("pull", ref, timeout=1800)
                pull_seconds, pull_cpu = time.perf_counter() - t0, target.cpu_seconds() - cpu0
                pulled = daemon.image_id(ref)
                if pulled != image_id:
                    raise RuntimeError(f"pulled {ref} has image ID {pulled}, pushed {image_id}")
                daemon.docker("tag", ref, LOCAL_TAG)
                daemon.docker("rmi", ref)
            finally:
                target.stop()
                remove_tree(target.workdir)
            result = Round(label if number else "warm-up", push_seconds, pull_seconds, push_cpu, pull_cpu)
            if number:
                rounds.append(result)
            if on_round is not None:
                on_round(result)
    finally:
        daemon.stop()
        remove_tree(workdir)
        leftovers.remove()
    return rounds
