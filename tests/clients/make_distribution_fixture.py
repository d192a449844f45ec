"""Writes ``tests/fixtures/distribution/``: a storage tree made by CNCF Distribution.

Run it (as root, with the Debian packages of scripts/install-system-deps.sh)::

    .venv/bin/python -m tests.clients.make_distribution_fixture

It starts the reference registry (Debian ``docker-registry``, Distribution
2.8) on an empty filesystem storage, fills it through real clients and raw
HTTP, stops it, and copies the storage tree to
``tests/fixtures/distribution/storage`` with ``contents.json`` beside it
saying what is inside (repositories, tags, manifest digests and media types,
configs, the deleted manifest, the unfinished upload).  Image content is
generated from fixed seeds and pushed from OCI layouts with gzipped layers,
so manifests and blobs are the same bytes on every run; only the upload's
id and ``startedat`` vary.

What the tree holds:

* ``fixture/app``: one OCI image manifest tagged ``v1`` and ``latest``, the
  same image as a Docker schema 2 manifest tagged ``v2s2``, and an
  unfinished blob upload (``_uploads/<id>/`` with ``data``, ``startedat`` and
  ``hashstates/sha256/<offset>``) of a known prefix of a known blob.
* ``fixture/multi``: an OCI image index (linux/amd64, linux/arm64) tagged
  ``multi``.
* ``fixture/mounted``: ``fixture/app:v1`` pushed again, so its layers were
  cross-repository mounted (linked in both repositories).
* ``fixture/deleted``: a manifest pushed as ``gone`` and deleted by digest
  (its blobs remain, unreferenced: garbage for a collector).

Empty directories (an emptied ``_manifests/tags``, the deleted revision's
directory, empty ``_uploads``) are removed, as git would not keep them.
"""

from __future__ import annotations

import json
import random
import shutil
import urllib.parse
from pathlib import Path

from tests.clients.harness import (
    MEDIA_DOCKER_MANIFEST,
    Registry,
    Skopeo,
    SystemLeftovers,
    http_request,
    make_image,
    new_workdir,
    remove_tree,
    run,
    sha256_digest,
    start_reference_registry,
    write_oci_layout,
)

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "distribution"
UPLOAD_SEED = "fixture/upload"
UPLOAD_TOTAL = 10_000
UPLOAD_SENT = 6_000


def upload_blob() -> bytes:
    """The whole blob whose first :data:`UPLOAD_SENT` bytes the upload holds."""
    return random.Random(UPLOAD_SEED).randbytes(UPLOAD_TOTAL)


def _tag_record(registry: Registry, repo: str, tag: str) -> dict[str, str]:
    response = registry.manifest(repo, tag)
    assert response.status == 200, (repo, tag, response.status)
    return {
        "digest": sha256_digest(response.body),
        "mediaType": response.headers["content-type"],
    }


def _start_unfinished_upload(registry: Registry, repo: str) -> dict[str, object]:
    started = http_request(f"{registry.url}/v2/{repo}/blobs/uploads/", method="POST")
    assert started.status == 202, started
    location = urllib.parse.urljoin(registry.url, started.headers["location"])
    data = upload_blob()[:UPLOAD_SENT]
    patched = http_request(
        location, method="PATCH", body=data, headers={"Content-Type": "application/octet-stream"}
    )
    assert patched.status == 202, patched
    return {
        "repository": repo,
        "uuid": started.headers["docker-upload-uuid"],
        "offset": UPLOAD_SENT,
        "sha256_of_data": sha256_digest(data),
        "blob": {
            "digest": sha256_digest(upload_blob()),
            "size": UPLOAD_TOTAL,
            "made_by": f"random.Random({UPLOAD_SEED!r}).randbytes({UPLOAD_TOTAL})",
        },
    }


def main() -> None:
    """Generate the fixture tree and ``contents.json`` (replacing any old one)."""
    leftovers = SystemLeftovers()
    work = new_workdir("distribution-fixture-")
    try:
        generate(work)
    finally:
        remove_tree(work)
        leftovers.remove()


def generate(work: Path) -> None:
    """Fill a reference registry under ``work`` and copy its tree into the fixture."""
    registry = start_reference_registry(work / "registry")
    try:
        skopeo = Skopeo(work / "skopeo")
        app = make_image("fixture/app", layers=2, layer_size=2048)
        app_layout = write_oci_layout(work / "app", [app], "v1")
        for tag in ("v1", "latest"):
            skopeo.copy(app_layout.reference, registry.docker_ref("fixture/app", tag))
        skopeo.copy(app_layout.reference, registry.docker_ref("fixture/app", "v2s2"), "--format", "v2s2")
        skopeo.copy(app_layout.reference, registry.docker_ref("fixture/mounted", "v1"))
        multi = [
            make_image("fixture/multi", layers=1, layer_size=2048, architecture=arch)
            for arch in ("amd64", "arm64")
        ]
        multi_layout = write_oci_layout(work / "multi", multi, "multi")
        skopeo.copy(multi_layout.reference, registry.docker_ref("fixture/multi", "multi"), "--all")
        doomed = make_image("fixture/deleted", layers=1, layer_size=2048)
        doomed_layout = write_oci_layout(work / "deleted", [doomed], "gone")
        skopeo.copy(doomed_layout.reference, registry.docker_ref("fixture/deleted", "gone"))
        skopeo.delete(registry.docker_ref("fixture/deleted", "gone"))

        tags = {
            "fixture/app": {t: _tag_record(registry, "fixture/app", t) for t in ("latest", "v1", "v2s2")},
            "fixture/mounted": {"v1": _tag_record(registry, "fixture/mounted", "v1")},
            "fixture/multi": {"multi": _tag_record(registry, "fixture/multi", "multi")},
        }
        assert tags["fixture/app"]["v2s2"]["mediaType"] == MEDIA_DOCKER_MANIFEST
        upload = _start_unfinished_upload(registry, "fixture/app")
        version = run(["docker-registry", "--version"]).stdout.strip()
    finally:
        registry.stop()

    contents = {
        "made_by": f"{version}, filled by skopeo and raw HTTP; "
        "regenerate with: .venv/bin/python -m tests.clients.make_distribution_fixture",
        "root": "storage",
        "note": "empty directories removed (git keeps none)",
        "tags": tags,
        "configs": {
            "fixture/app": app.config_digest,
            "fixture/multi": {f"linux/{i.architecture}": i.config_digest for i in multi},
        },
        "children": {
            "fixture/multi": {
                platform: sha256_digest(body) for platform, body in multi_layout.children.items()
            }
        },
        "deleted": {"fixture/deleted": {"tag": "gone", "digest": doomed_layout.digest}},
        "unfinished_upload": upload,
    }
    storage = FIXTURE_DIR / "storage"
    if storage.exists():
        shutil.rmtree(storage)
    FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copytree(registry.storage, storage)
    # git stores no empty directories: drop them here too, so the tree a test
    # reads from a clone is the tree written here.
    for directory in sorted(storage.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    (FIXTURE_DIR / "contents.json").write_text(json.dumps(contents, indent=2, sort_keys=True) + "\n")
    size = sum(p.stat().st_size for p in storage.rglob("*") if p.is_file())
    print(f"wrote {storage} ({size} bytes) and contents.json")
    print(json.dumps(contents, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
