"""Webhook notifications over real HTTP: a receiver on 127.0.0.1 records the
envelopes; pushes, pulls, mounts and deletes produce Distribution's events;
failing, hanging and dead endpoints never slow the registry, get their events
in order once they answer, and cost bounded memory."""

from __future__ import annotations

import time
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater

from registry.config import ConfigError, load_config
from registry.observe.notifications import DEFAULT_QUEUE_LIMIT, EVENTS_MEDIA_TYPE, Notifier

from .conftest import REGISTRY_YAML, Receiver, Running, run_registry, sha


def endpoint_yaml(url: str, name: str = "hook", extra: str = "") -> str:
    return f"    - name: {name}\n      url: {url}\n{extra}"


def notifications_yaml(endpoints: str, include_references: bool = False) -> str:
    return (
        REGISTRY_YAML
        + "notifications:\n"
        + f"  events:\n    includereferences: {str(include_references).lower()}\n"
        + "  endpoints:\n"
        + endpoints
    )


def with_metrics(yaml_text: str) -> str:
    return yaml_text.replace(
        "  addr: 127.0.0.1:0\n", "  addr: 127.0.0.1:0\n  debug:\n    addr: 127.0.0.1:0\n    prometheus: {enabled: true}\n"
    )


def notifier_of(r: Running) -> Notifier:
    for route in r.application.root.routes:  # type: ignore[attr-defined]
        ctx = getattr(route.handler, "ctx", None)
        if ctx is not None and ctx.events is not None:
            return ctx.events  # type: ignore[no-any-return]
    raise AssertionError("no notifier")


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    return [(e["action"], e["target"].get("mediaType", ""), e["target"].get("tag")) for e in events]


@pytest_twisted.ensureDeferred
async def test_push_pull_mount_delete_events(receiver: Receiver) -> None:
    ignoring = endpoint_yaml(
        receiver.url + "?second", "quiet", "      ignore:\n        actions: [pull]\n"
        "      ignoredmediatypes: [application/octet-stream]\n"
    )
    yaml_text = notifications_yaml(
        endpoint_yaml(receiver.url, extra="      headers:\n        Authorization: [Bearer t0ken]\n") + ignoring,
        include_references=True,
    )
    async with run_registry(yaml_text) as r:
        layer = b"layer data" * 100
        digest, manifest = await r.push_manifest("team/app", "v1", [layer])
        pulled = await treq.get(
            f"{r.url}/v2/team/app/manifests/v1",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json", "X-Request-Id": "pull-1",
                     "User-Agent": "test-client/1.0"},
        )
        assert await pulled.content() == manifest
        head = await treq.head(f"{r.url}/v2/team/app/manifests/v1", headers={"Accept": "*/*"})
        assert head.code == 200  # a HEAD is a pull too, as in Distribution
        blob = await treq.get(f"{r.url}/v2/team/app/blobs/{sha(layer)}")
        assert await blob.content() == layer
        blob_head = await treq.head(f"{r.url}/v2/team/app/blobs/{sha(layer)}")
        assert blob_head.code == 200
        mount = await treq.post(f"{r.url}/v2/other/app/blobs/uploads/?mount={sha(layer)}&from=team/app")
        assert mount.code == 201
        deleted_tag = await treq.delete(f"{r.url}/v2/team/app/manifests/v1")
        assert deleted_tag.code == 202
        deleted = await treq.delete(f"{r.url}/v2/team/app/manifests/{digest}")
        assert deleted.code == 202
        deleted_blob = await treq.delete(f"{r.url}/v2/other/app/blobs/{sha(layer)}")
        assert deleted_blob.code == 202

        # 10 events for "hook"; "quiet" gets the manifest push and deletes without a media type.
        await receiver.wait_for(lambda: len([e for e in receiver.events]) >= 10 + 4)
        await deferLater(reactor, 0.1, lambda: None)
        by_endpoint: dict[str, list[dict[str, Any]]] = {"hook": [], "quiet": []}
        for request, envelope in zip(receiver.requests, receiver.envelopes):
            key = "quiet" if b"second" in request.uri else "hook"
            by_endpoint[key].extend(envelope["events"])
            assert request.getHeader(b"content-type") == EVENTS_MEDIA_TYPE.encode()
            if key == "hook":
                assert request.getHeader(b"authorization") == b"Bearer t0ken"
        events = by_endpoint["hook"]
        oci = "application/vnd.oci.image.manifest.v1+json"
        assert summary(events) == [
            ("push", "application/octet-stream", None),
            ("push", "application/octet-stream", None),
            ("push", oci, "v1"),
            ("pull", oci, "v1"),
            ("pull", oci, "v1"),
            ("pull", "application/octet-stream", None),
            ("pull", "application/octet-stream", None),
            ("mount", "application/octet-stream", None),
            ("delete", "", "v1"),
            ("delete", "", None),
            ("delete", "", None),
        ][: len(events)]
        assert len(events) == 11
        assert summary(by_endpoint["quiet"]) == [("push", oci, "v1"), ("delete", "", "v1"), ("delete", "", None), ("delete", "", None)]

        push = events[2]
        assert set(push) == {"id", "timestamp", "action", "target", "request", "actor", "source"}
        target = push["target"]
        assert target["digest"] == digest and target["repository"] == "team/app"
        assert target["size"] == target["length"] == len(manifest)
        assert target["url"] == f"{r.url}/v2/team/app/manifests/{digest}"
        assert [ref["digest"] for ref in target["references"]] == [
            sha(b'{"architecture":"amd64","os":"linux"}'), sha(layer)
        ]
        assert push["request"]["method"] == "PUT"
        assert push["request"]["host"] == r.url.removeprefix("http://")
        assert push["request"]["addr"].startswith("127.0.0.1:")
        assert push["actor"] == {}  # no access control: nobody
        assert push["source"]["instanceID"] and push["source"]["addr"]
        assert push["timestamp"].endswith("Z")

        pull = events[3]
        assert pull["request"]["id"] == "pull-1"
        assert pull["request"]["useragent"] == "test-client/1.0"
        assert events[4]["request"]["method"] == "HEAD" and events[4]["target"]["digest"] == digest
        assert events[5]["target"]["digest"] == sha(layer) and events[5]["target"]["size"] == len(layer)
        assert events[6]["request"]["method"] == "HEAD" and events[6]["target"] == events[5]["target"]
        assert events[7]["target"]["fromRepository"] == "team/app"
        assert events[7]["target"]["repository"] == "other/app"
        assert events[8]["target"] == {"repository": "team/app", "tag": "v1"}
        assert events[9]["target"] == {"repository": "team/app", "digest": digest}
        assert events[10]["target"] == {"repository": "other/app", "digest": sha(layer)}
        assert len({e["id"] for e in events}) == len(events)


@pytest_twisted.ensureDeferred
async def test_request_id_follows_a_push_to_the_webhook(receiver: Receiver) -> None:
    async with run_registry(notifications_yaml(endpoint_yaml(receiver.url))) as r:
        pushed = await r.push_blob("a/b", b"payload", headers={"X-Request-Id": "trace-42"})
        assert pushed.headers.getRawHeaders("x-request-id") == ["trace-42"]
        await receiver.wait_for(lambda: len(receiver.events) == 1)
        (event,) = receiver.events
        assert event["request"]["id"] == "trace-42" and event["action"] == "push"
        assert "references" not in event["target"]  # includereferences is off
        assert event["request"]["addr"].startswith("127.0.0.1:")
        # Behind a proxy: the client's address from X-Forwarded-For (its
        # first entry), else X-Real-Ip, when it is an IP, as Distribution does.
        for headers, addr in [
            ({"X-Forwarded-For": "203.0.113.7, 10.0.0.1"}, "203.0.113.7"),
            ({"X-Forwarded-For": "not-an-ip", "X-Real-Ip": "2001:db8::5"}, "2001:db8::5"),
            ({"X-Real-Ip": "garbage"}, None),
        ]:
            before = len(receiver.events)
            await r.push_blob("a/b", addr.encode() if addr else b"garbage", headers=headers)
            await receiver.wait_for(lambda: len(receiver.events) == before + 1)
            got = receiver.events[-1]["request"]["addr"]
            assert got == addr if addr else got.startswith("127.0.0.1:"), (headers, got)


@pytest_twisted.ensureDeferred
async def test_failing_endpoint_is_retried_in_order(receiver: Receiver) -> None:
    receiver.mode = "fail"
    extra = "      threshold: 2\n      backoff: 200ms\n      timeout: 1s\n"
    async with run_registry(with_metrics(notifications_yaml(endpoint_yaml(receiver.url, extra=extra)))) as r:
        started = time.monotonic()
        blobs = [f"blob {i}".encode() for i in range(5)]
        for b in blobs:
            await r.push_blob("x/y", b)
        assert time.monotonic() - started < 2
        await receiver.wait_for(lambda: receiver.attempts >= 4)
        assert receiver.events == []
        endpoint = notifier_of(r).endpoints[0]
        assert endpoint.consecutive_failures >= 2
        receiver.mode = "ok"
        await receiver.wait_for(lambda: len(receiver.events) == 5)
        assert [e["target"]["digest"] for e in receiver.events] == [sha(b) for b in blobs]
        for _ in range(100):  # the answer reaches the notifier after the receiver saw the events
            if not endpoint.queue:
                break
            await deferLater(reactor, 0.02, lambda: None)
        assert not endpoint.queue and endpoint.consecutive_failures == 0
        # Distribution's notification metrics: per event and attempt, answers by status.
        metrics = await (await treq.get(f"{r.debug_url}/metrics")).text()
        assert 'registry_notifications_events_total{endpoint="hook",type="Events"} 5.0' in metrics
        assert 'registry_notifications_events_total{endpoint="hook",type="Successes"} 5.0' in metrics
        assert 'registry_notifications_events_total{endpoint="hook",type="Failures"}' in metrics
        assert 'registry_notifications_status_total{code="500 Internal Server Error",endpoint="hook"}' in metrics
        assert 'registry_notifications_status_total{code="200 OK",endpoint="hook"}' in metrics
        assert 'registry_notifications_pending{endpoint="hook"} 0.0' in metrics


@pytest_twisted.ensureDeferred
async def test_hanging_endpoint_times_out_and_never_slows_pushes(receiver: Receiver) -> None:
    receiver.mode = "hang"
    extra = "      timeout: 200ms\n      backoff: 100ms\n"
    async with run_registry(notifications_yaml(endpoint_yaml(receiver.url, extra=extra))) as r:
        blobs = [f"hang {i}".encode() for i in range(5)]
        started = time.monotonic()
        for b in blobs:
            await r.push_blob("x/y", b)
        assert time.monotonic() - started < 1.0
        await receiver.wait_for(lambda: receiver.attempts >= 2)  # the first attempt timed out: retried
        receiver.mode = "ok"
        await receiver.wait_for(lambda: len(receiver.events) >= 5)
        assert [e["target"]["digest"] for e in receiver.events] == [sha(b) for b in blobs]


@pytest_twisted.ensureDeferred
async def test_dead_endpoint_keeps_memory_bounded() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    from twisted.logger import LogEvent, formatEvent, globalLogPublisher

    warnings: list[str] = []

    def observer(event: LogEvent) -> None:
        if event.get("log_namespace") == "registry.notifications":
            warnings.append(formatEvent(event))

    yaml_text = with_metrics(notifications_yaml(endpoint_yaml(dead, extra="      backoff: 1s\n")))
    globalLogPublisher.addObserver(observer)
    try:
        async with run_registry(yaml_text) as r:
            endpoint = notifier_of(r).endpoints[0]
            pushes = DEFAULT_QUEUE_LIMIT + 100
            started = time.monotonic()
            for i in range(pushes):
                await r.push_blob("dead/end", b"%d" % i)
            elapsed = time.monotonic() - started
            # Said once in the log when the queue filled (not per dropped event).
            full = [w for w in warnings if "queue full" in w]
            assert len(full) == 1 and f"({DEFAULT_QUEUE_LIMIT} events waiting)" in full[0], warnings
            assert len(endpoint.queue) == DEFAULT_QUEUE_LIMIT
            assert endpoint.dropped == 100
            # The queue keeps the oldest events (delivered in order later).
            assert endpoint.queue[0]["target"]["digest"] == sha(b"0")
            metrics = await (await treq.get(f"{r.debug_url}/metrics")).text()
            assert 'registry_notifications_events_total{endpoint="hook",type="Dropped"} 100.0' in metrics
            assert f'registry_notifications_events_total{{endpoint="hook",type="Events"}} {float(DEFAULT_QUEUE_LIMIT)}' in metrics
            assert f'registry_notifications_pending{{endpoint="hook"}} {float(DEFAULT_QUEUE_LIMIT)}' in metrics
            assert 'registry_notifications_events_total{endpoint="hook",type="Errors"}' in metrics  # refused connections
            assert elapsed < 60
    finally:
        globalLogPublisher.removeObserver(observer)


def test_notifier_provides_the_event_sink_interface() -> None:
    from zope.interface.verify import verifyObject

    from registry.observe.notifications import IEventSink

    assert verifyObject(IEventSink, Notifier([]))


def test_notifications_config() -> None:
    config = load_config(
        REGISTRY_YAML
        + "notifications:\n  endpoints:\n    - name: a\n      url: https://hooks.example.com/x\n"
        "      timeout: 500ms\n      threshold: 5\n      backoff: 2s\n      ignore: {mediatypes: [a/b], actions: [pull]}\n"
        "    - name: b\n      url: http://127.0.0.1:1/\n      disabled: true\n",
        {},
    )
    a, b = config.notifications.endpoints
    assert (a.timeout, a.threshold, a.backoff) == (0.5, 5, 2.0)
    assert a.ignore.mediatypes == ("a/b",) and a.ignore.actions == ("pull",)
    assert b.disabled and b.timeout == 1.0 and b.threshold == 10 and b.backoff == 1.0
    with pytest.raises(ConfigError, match="notifications.endpoints.0.url"):
        load_config(REGISTRY_YAML + "notifications:\n  endpoints:\n    - name: a\n      url: ftp://x\n", {})
    with pytest.raises(ConfigError, match="names must be unique"):
        load_config(
            REGISTRY_YAML + "notifications:\n  endpoints:\n    - {name: a, url: 'http://x'}\n    - {name: a, url: 'http://y'}\n",
            {},
        )


@pytest_twisted.ensureDeferred
async def test_actor_is_the_authenticated_user(receiver: Receiver, tmp_path: Any) -> None:
    import base64

    import bcrypt

    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{bcrypt.hashpw(b'wonder', bcrypt.gensalt(rounds=4)).decode()}\n")
    yaml_text = (
        notifications_yaml(endpoint_yaml(receiver.url))
        + f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n"
    )
    async with run_registry(yaml_text) as r:
        auth = {"Authorization": "Basic " + base64.b64encode(b"alice:wonder").decode()}
        await r.push_blob("alice/app", b"by alice", headers=auth)
        refused = await treq.post(f"{r.url}/v2/alice/app/blobs/uploads/?digest={sha(b'x')}", data=b"x")
        assert refused.code == 401
        await refused.content()
        await receiver.wait_for(lambda: len(receiver.events) == 1)
        await deferLater(reactor, 0.1, lambda: None)
        (event,) = receiver.events
        assert event["actor"] == {"name": "alice"}
        assert event["target"]["repository"] == "alice/app"


def test_retry_delays_double_until_threshold_then_back_off() -> None:
    from registry.config import EndpointConfig
    from registry.observe.notifications import FIRST_RETRY, Endpoint

    def delays(threshold: int, backoff: float) -> list[float]:
        endpoint = Endpoint(EndpointConfig(name="x", url="http://127.0.0.1:1/", threshold=threshold, backoff=backoff), reactor)
        out = []
        for failures in range(1, 8):
            endpoint.consecutive_failures = failures
            out.append(endpoint._retry_delay("answered 500"))
        return out

    f = FIRST_RETRY
    assert delays(4, 10.0) == [f, 2 * f, 4 * f, 10.0, 10.0, 10.0, 10.0]
    assert delays(6, 0.15) == [f, 2 * f, 0.15, 0.15, 0.15, 0.15, 0.15]  # never longer than backoff
    assert delays(0, 2.0) == [2.0] * 7  # threshold 0: back off at the first failure


@pytest_twisted.ensureDeferred
async def test_retries_back_off_after_threshold_failures_and_disabled_endpoints_get_nothing(receiver: Receiver) -> None:
    receiver.mode = "fail"
    extra = "      threshold: 3\n      backoff: 400ms\n      timeout: 1s\n"
    disabled = endpoint_yaml(receiver.url + "?disabled", "switched-off", "      disabled: true\n")
    async with run_registry(notifications_yaml(endpoint_yaml(receiver.url, extra=extra) + disabled)) as r:
        await r.push_blob("x/y", b"retried")
        await receiver.wait_for(lambda: receiver.attempts >= 6)
        gaps = [b - a for a, b in zip(receiver.attempt_times, receiver.attempt_times[1:])]
        # Retries 1 and 2 wait FIRST_RETRY doubling (short); from the third
        # failure in a row on, the endpoint waits its backoff.
        assert gaps[0] < 0.35 and gaps[1] < 0.35, gaps
        assert all(gap >= 0.38 for gap in gaps[2:5]), gaps
        receiver.mode = "ok"
        await receiver.wait_for(lambda: len(receiver.events) == 1)
        await deferLater(reactor, 0.2, lambda: None)
        assert all(b"disabled" not in request.uri for request in receiver.requests)
        assert [e.name for e in notifier_of(r).endpoints] == ["hook"]
