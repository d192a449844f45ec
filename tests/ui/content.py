"""Content the web page tests browse: images (with a config carrying
history, env, entrypoint, labels and diff_ids), multi-platform indexes and
referrers, built as bytes and stored either through the data model (fast
resource tests) or pushed over the registry's HTTP API (browser tests)."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from registry.digest import Digest
from registry.manifest_types import OCI_INDEX, OCI_MANIFEST, parse_manifest
from registry.storage.model import DataModel

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
HOSTILE = "<script>alert('label')</script>"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Built:
    """A manifest and the blobs it needs."""

    body: bytes
    media_type: str
    blobs: list[bytes] = field(default_factory=list)
    children: list["Built"] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return sha(self.body)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.body), **extra}


def image(seed: str, *, labels: dict[str, str] | None = None, layers: int = 2, arch: str = "amd64",
          created: str | None = "2024-05-06T07:08:09Z", annotations: dict[str, str] | None = None) -> Built:
    layer_blobs = [f"layer {seed} {i} ".encode() * (50 + i) for i in range(layers)]
    config: dict[str, Any] = {
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/bin:/usr/bin", f"SEED={seed}"],
            "Entrypoint": ["/bin/app", "--serve"],
            "Cmd": ["--port", "8080"],
            "WorkingDir": "/srv",
            "Labels": labels or {"org.opencontainers.image.title": seed},
        },
        "rootfs": {"type": "layers", "diff_ids": [sha(b"uncompressed " + b) for b in layer_blobs]},
        "history": [{"created": created or "", "created_by": f"/bin/sh -c #(nop) ADD file:{seed} in /"}],
    }
    if created is not None:
        config["created"] = created
    config_bytes = json.dumps(config).encode()
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha(config_bytes), "size": len(config_bytes)},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha(b), "size": len(b)} for b in layer_blobs],
    }
    if annotations:
        manifest["annotations"] = annotations
    return Built(json.dumps(manifest, indent=2).encode(), OCI_MANIFEST, [config_bytes, *layer_blobs])


def index(*children: tuple[Built, dict[str, str]]) -> Built:
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [child.descriptor(platform=platform) for child, platform in children],
    }
    return Built(json.dumps(body).encode(), OCI_INDEX, [], [c for c, _ in children])


def referrer(subject: Built, artifact_type: str, annotations: dict[str, str] | None = None) -> Built:
    payload = f"signature of {subject.digest}".encode()
    body: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha(b"{}"), "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": sha(payload), "size": len(payload)}],
        "subject": subject.descriptor(),
    }
    if annotations:
        body["annotations"] = annotations
    return Built(json.dumps(body).encode(), OCI_MANIFEST, [b"{}", payload])


# -- storing through the data model ------------------------------------------------------


async def store(model: DataModel, name: str, built: Built, tag: str | None = None) -> Digest:
    """Store ``built`` (children first) in ``name`` as a push would."""
    for child in built.children:
        await store(model, name, child)
    for blob in built.blobs:
        d = Digest.parse(sha(blob))
        await model.blobs.put_content(d, blob)
        await model.blobs.descriptors.link(name, d)
    d = Digest.parse(built.digest)
    await model.manifests.put(name, built.body, parse_manifest(built.body, built.media_type), d, tag)
    return d


# -- pushing over HTTP (synchronous: the browser tests run no reactor) ---------------------------


def _call(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=30) as response:
        response.read()
        return response.status, {k.lower(): v for k, v in response.headers.items()}


def push(base_url: str, name: str, built: Built, tag: str | None = None, headers: dict[str, str] | None = None) -> None:
    """Push ``built`` (blobs, children, then the manifest) to the registry at
    ``base_url``, sending ``headers`` (credentials) with every request."""
    extra = headers or {}
    for child in built.children:
        push(base_url, name, child, headers=extra)
    for blob in built.blobs:
        status, _ = _call("POST", f"{base_url}/v2/{name}/blobs/uploads/?digest={sha(blob)}", blob,
                          {"Content-Type": "application/octet-stream", **extra})
        assert status == 201
    status, _ = _call("PUT", f"{base_url}/v2/{name}/manifests/{tag or built.digest}", built.body,
                      {"Content-Type": built.media_type, **extra})
    assert status == 201
