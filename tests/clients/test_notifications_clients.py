"""docker push and pull against a registry with a webhook: the events a real
receiver on 127.0.0.1 records (issue 14).

Run against ours (``twistd registry`` with two worker processes, so events
come from both) and against CNCF Distribution 2.8.2 with the same
configuration: the same assertions hold for both, so a receiver written for
Distribution's events works with ours.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import Counter
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.clients.harness import (
    MEDIA_DOCKER_MANIFEST,
    DockerDaemon,
    MissingTool,
    Registry,
    _start_registry,
    make_image,
    missing_tool,
    require,
    twistd_path,
)
from tests.clients.test_docker import push_new_image, rmi_and_pull_back

pytestmark = pytest.mark.clients

EVENTS_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"


class Receiver:
    """A webhook endpoint in a thread: every envelope, with its headers."""

    def __init__(self) -> None:
        self.envelopes: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.envelopes.append(({k.lower(): v for k, v in self.headers.items()}, json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [e for _, envelope in self.envelopes for e in envelope["events"]]

    def wait_for(self, predicate: Any, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.events):
                return self.events
            time.sleep(0.1)
        raise AssertionError(f"the expected events did not arrive; got {kinds(self.events)} of {summary(self.events)}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def when(timestamp: str) -> datetime:
    """An event's RFC 3339 timestamp (Go trims trailing zeros of the fraction)."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", timestamp)
    assert m, timestamp
    fraction = (m.group(2) or "0")[:6].ljust(6, "0")
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.fromisoformat(f"{m.group(1)}.{fraction}{zone}")


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(e["action"], e["target"].get("mediaType", ""), e["target"].get("tag", "")) for e in events]


def docker(events: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    """The ``action`` events of docker's requests (not the test's own reads)."""
    return [e for e in events if e["action"] == action and "docker/" in e["request"]["useragent"]]


def kinds(events: list[dict[str, Any]]) -> Counter[tuple[str, str, str, str | None]]:
    return Counter(
        (e["action"], e["request"]["method"], "manifest" if e["target"]["mediaType"] == MEDIA_DOCKER_MANIFEST else "blob",
         e["target"].get("tag"))
        for e in docker(events, "push") + docker(events, "pull")
    )


#: What docker push and pull of a two-layer image give, as seen with
#: Distribution 2.8.2: after each blob upload docker HEADs the blob (a
#: pull), and it resolves the tag with a HEAD before GETting the manifest
#: by digest.
EXPECTED = Counter({
    ("push", "PUT", "blob", None): 3,
    ("pull", "HEAD", "blob", None): 3,
    ("push", "PUT", "manifest", "v1"): 1,
    ("pull", "HEAD", "manifest", "v1"): 1,
    ("pull", "GET", "manifest", None): 1,
    ("pull", "GET", "blob", None): 3,
})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def start_with_webhook(kind: str, workdir: Path, url: str) -> Registry:
    settings: dict[str, Any] = {
        "notifications": {
            "endpoints": [
                {"name": "hook", "url": url, "headers": {"X-Hook-Token": ["s3cret"]},
                 "timeout": "2s", "threshold": 5, "backoff": "1s"}
            ]
        }
    }
    if kind == "ours":
        settings["http"] = {"workers": 2}
        argv = [twistd_path(), "-n", "--pidfile=", "registry", "--config"]
    else:
        try:
            argv = [require("docker-registry", "docker-registry"), "serve"]
        except MissingTool as error:
            missing_tool(error)
    return _start_registry(kind, lambda config: [*argv, str(config)], f"{kind} registry", workdir, 30, None, settings)


@pytest.mark.parametrize("kind", ["ours", "reference"])
def test_docker_push_and_pull_produce_distributions_events(
    kind: str, dockerd: DockerDaemon, receiver: Receiver, clients_root: Path, repo: str, scratch: Path
) -> None:
    registry = start_with_webhook(kind, clients_root / f"webhook-{kind}", receiver.url)
    try:
        image = make_image(f"{repo}-{kind}", layers=2)
        digest, local, remote = push_new_image(dockerd, registry, repo, scratch, image)
        manifest_body = registry.manifest(repo, digest).body
        manifest = json.loads(manifest_body)
        blobs = {manifest["config"]["digest"]} | {layer["digest"] for layer in manifest["layers"]}
        rmi_and_pull_back(dockerd, image, digest, local, remote)

        def complete(events: list[dict[str, Any]]) -> bool:
            # Every event delivered (workers deliver independently: wait for all).
            return kinds(events) == EXPECTED

        events = receiver.wait_for(complete)
    finally:
        registry.stop()

    # The envelope: Distribution's media type, the configured header.
    for headers, envelope in receiver.envelopes:
        assert headers["content-type"] == EVENTS_MEDIA_TYPE and headers["x-hook-token"] == "s3cret"
        assert set(envelope) == {"events"}
    # docker push: each blob once, then the manifest with its tag.
    pushes = docker(events, "push")
    blob_pushes = [e for e in pushes if e["target"]["mediaType"] == "application/octet-stream"]
    assert {e["target"]["digest"] for e in blob_pushes} == blobs, summary(events)
    (manifest_push,) = [e for e in pushes if e["target"]["mediaType"] == MEDIA_DOCKER_MANIFEST]
    target = manifest_push["target"]
    assert (target["digest"], target["tag"], target["repository"]) == (digest, "v1", repo)
    assert target["size"] == target["length"] == len(manifest_body)
    assert target["url"].endswith(f"/v2/{repo}/manifests/{digest}")
    # docker pull: the manifest by tag, then every blob.
    manifest_pulls = [e for e in docker(events, "pull") if e["target"]["mediaType"] == MEDIA_DOCKER_MANIFEST]
    assert manifest_pulls and all(e["target"]["digest"] == digest for e in manifest_pulls)
    # docker resolves the tag with a HEAD: that pull event names the tag.
    assert any(e["target"].get("tag") == "v1" and e["request"]["method"] == "HEAD" for e in manifest_pulls)
    assert kinds(events) == EXPECTED
    for event in events:
        assert {"id", "timestamp", "action", "target", "request", "actor", "source"} <= set(event)
        assert event["target"]["repository"] == repo
        request = event["request"]
        assert request["id"] and request["addr"].startswith("127.0.0.1:") and request["host"] == registry.host
        assert request["method"] in ("GET", "PUT", "POST", "HEAD")
        uuid.UUID(event["source"]["instanceID"])
        assert event["source"]["addr"]
    # One worker's events arrive in the order they happened (ours: stamped and
    # queued on the reactor thread together; Distribution stamps an event
    # before its goroutine queues it, so two concurrent requests' events can
    # arrive a few ms out of order, as a clean-clone run saw once).
    by_instance: dict[str, list[datetime]] = {}
    for event in events:
        by_instance.setdefault(event["source"]["instanceID"], []).append(when(event["timestamp"]))
    if kind == "ours":
        for stamps in by_instance.values():
            assert stamps == sorted(stamps), stamps
        assert len(by_instance) <= 2  # one instance id per worker process
        assert {e["source"]["addr"] for e in events} == {e["source"]["addr"] for e in events[:1]}
