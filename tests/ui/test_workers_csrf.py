"""The delete form's CSRF token under ``http.workers``: a real ``twistd -n
registry`` with two worker processes on one socket and no ``http.secret``.
The confirmation page and the POST that follows are two connections, which
the kernel hands to either worker: both must sign tokens with one secret."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator
from urllib.parse import urlencode

import pytest

from registry.ui.csrf import COOKIE
from tests.test_workers import OCI_MANIFEST, Registry, manifest_for, push_blob

NONCE = "0123456789abcdef" * 2


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Registry]:
    r = Registry(tmp_path, workers=2)
    try:
        r.wait_serving(2)
        yield r
    finally:
        r.stop()


def confirmation(r: Registry, tag: str) -> tuple[str, int | None]:
    """(the form's token, the worker that served it) for a browser whose cookie is NONCE."""
    status, _, body, pid = r.request(
        "GET", f"/ui/r/team/app/-/delete?tag={tag}", headers={"Cookie": f"{COOKIE.decode()}={NONCE}"}
    )
    assert status == 200, body
    token = re.search(rb'name="csrf" value="([0-9a-f]+)"', body)
    assert token is not None, body
    return token.group(1).decode(), pid


def test_every_worker_accepts_the_token_another_worker_issued(workers: Registry) -> None:
    assert "secret" not in workers.config.read_text()
    config = push_blob(workers, "team/app", b'{"architecture":"amd64","os":"linux"}')
    layer = push_blob(workers, "team/app", b"layer")
    body = manifest_for(config, 37, layer, 5, "one")
    tags = [f"t{i}" for i in range(30)]
    for tag in tags:
        status, _, reply, _ = workers.request(
            "PUT", f"/v2/team/app/manifests/{tag}", body=body, headers={"Content-Type": OCI_MANIFEST}
        )
        assert status == 201, reply

    # The same browser (cookie) gets the same token from either worker.
    issued: dict[int, str] = {}
    for _ in range(200):
        token, pid = confirmation(workers, "t0")
        if pid is not None:
            issued[pid] = token
        if len(issued) == 2:
            break
    assert len(issued) == 2, "every confirmation page came from one worker"
    assert len(set(issued.values())) == 1, issued

    # A form from one worker's page deletes through whichever worker takes the POST.
    token = next(iter(issued.values()))
    deleted_by: set[int | None] = set()
    for tag in tags:
        form = urlencode({"tag": tag, "csrf": token}).encode()
        status, headers, reply, pid = workers.request(
            "POST", "/ui/r/team/app/-/delete", body=form,
            headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": f"{COOKIE.decode()}={NONCE}"},
        )
        assert status == 303, (pid, reply)
        assert headers["location"] == f"/ui/r/team/app?deleted_tag={tag}"
        deleted_by.add(pid)
        if set(issued) <= deleted_by:
            break
    assert set(issued) <= deleted_by, deleted_by


def test_workers_take_the_supervisors_secret_unless_http_secret_is_set() -> None:
    from registry.config import load_config
    from registry.workers import worker_config

    unset = load_config("version: 0.1\nstorage: inmemory\n", {})
    for primary in (True, False):
        assert worker_config(unset, primary, secret="drawn").http.secret == "drawn"
        assert worker_config(unset, primary).http.secret is None
    configured = load_config("version: 0.1\nstorage: inmemory\nhttp:\n  secret: mine\n", {})
    assert worker_config(configured, False, secret="drawn").http.secret == "mine"
