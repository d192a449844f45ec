"""The htpasswd access controller: bcrypt files made here, checks in the
thread pool, reload on change, the success cache, and no visible
difference between an unknown user and a wrong password."""

from __future__ import annotations

import base64
import os
import statistics
import time
from pathlib import Path
from typing import AsyncIterator

import bcrypt
import pytest
import pytest_twisted
from twisted.internet import reactor
from zope.interface.verify import verifyObject

from registry import errors
from registry.auth import Access, AuthChallenge, Credentials, IAccessController, Identity
from registry.auth.htpasswd import HtpasswdAccessController, HtpasswdError, parse_htpasswd
from registry.auth.interfaces import MAX_AUTHORIZATION_BYTES
from registry.errors import RegistryError

PULL = [Access("repository", "a/b", "pull")]
CHALLENGE = 'Basic realm="Registry Realm"'


def entry(user: str, password: str, cost: int = 4, prefix: bytes = b"$2y$") -> str:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=cost))
    return f"{user}:{(prefix + hashed[4:]).decode()}\n"


def basic(user: str | bytes, password: str | bytes) -> Credentials:
    u = user.encode() if isinstance(user, str) else user
    p = password.encode() if isinstance(password, str) else password
    return Credentials(b"Basic " + base64.b64encode(u + b":" + p), peer="127.0.0.1")


async def refusal(c: HtpasswdAccessController, credentials: Credentials, needed: list[Access] = PULL) -> RegistryError:
    try:
        await c.authorize(credentials, needed)
    except RegistryError as e:
        return e
    raise AssertionError("authorize succeeded")


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    path.write_text("# users\n\n" + entry("alice", "wonderland") + entry("bob", "builder", prefix=b"$2b$"))
    return path


@pytest_twisted.async_yield_fixture
async def controller(htpasswd: Path) -> AsyncIterator[HtpasswdAccessController]:
    c = HtpasswdAccessController("Registry Realm", str(htpasswd), reactor=reactor)
    yield c
    await c.close()


def test_provides_interface(htpasswd: Path) -> None:
    c = HtpasswdAccessController("r", str(htpasswd), reactor=reactor)
    assert verifyObject(IAccessController, c)
    c.close()


@pytest_twisted.ensureDeferred
async def test_valid_users(controller: HtpasswdAccessController) -> None:
    assert await controller.authorize(basic("alice", "wonderland"), PULL) == Identity("alice")
    assert await controller.authorize(basic("bob", "builder"), []) == Identity("bob")
    # An htpasswd user may do everything.
    assert Identity("alice").allows(Access("repository", "x", "delete"))


@pytest_twisted.ensureDeferred
async def test_anonymous_gets_basic_challenge(controller: HtpasswdAccessController) -> None:
    e = await refusal(controller, Credentials(None))
    assert isinstance(e, AuthChallenge)
    assert (e.status, e.code, e.www_authenticate) == (401, errors.UNAUTHORIZED, CHALLENGE)
    assert e.headers == {"WWW-Authenticate": CHALLENGE}
    assert "error=" not in e.www_authenticate


@pytest_twisted.ensureDeferred
async def test_wrong_password_and_unknown_user(controller: HtpasswdAccessController) -> None:
    wrong = await refusal(controller, basic("alice", "nope"))
    unknown = await refusal(controller, basic("mallory", "nope"))
    for e in (wrong, unknown):
        assert isinstance(e, AuthChallenge)
        assert (e.status, e.code, e.www_authenticate) == (401, errors.UNAUTHORIZED, CHALLENGE)
    assert wrong.message == unknown.message
    assert controller.checks == 2  # each ran bcrypt once


@pytest_twisted.ensureDeferred
async def test_unknown_user_takes_as_long_as_wrong_password(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    path.write_text(entry("alice", "wonderland", cost=10))
    c = HtpasswdAccessController("r", str(path), reactor=reactor)
    try:
        wrong, unknown = [], []
        for _ in range(6):
            for user, into in (("alice", wrong), ("mallory", unknown)):
                start = time.perf_counter()
                await refusal(c, basic(user, "nope"))
                into.append(time.perf_counter() - start)
        w, u = statistics.median(wrong), statistics.median(unknown)
        assert 0.5 < u / w < 2.0, (wrong, unknown)
        assert w > 0.01  # the real cost-10 comparison ran for both
    finally:
        await c.close()


@pytest_twisted.ensureDeferred
async def test_success_is_cached(controller: HtpasswdAccessController) -> None:
    for _ in range(3):
        await controller.authorize(basic("alice", "wonderland"), PULL)
    assert controller.checks == 1
    # A wrong password is never served from the cache.
    await refusal(controller, basic("alice", "wonderland!"))
    assert controller.checks == 2


@pytest_twisted.ensureDeferred
async def test_cache_expires(htpasswd: Path) -> None:
    now = [1000.0]
    c = HtpasswdAccessController("r", str(htpasswd), reactor=reactor, cache_seconds=5, clock=lambda: now[0])
    try:
        await c.authorize(basic("alice", "wonderland"), PULL)
        await c.authorize(basic("alice", "wonderland"), PULL)
        assert c.checks == 1
        now[0] += 6
        await c.authorize(basic("alice", "wonderland"), PULL)
        assert c.checks == 2
    finally:
        await c.close()


def _bump(path: Path, text: str) -> None:
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest_twisted.ensureDeferred
async def test_reload_on_change(controller: HtpasswdAccessController, htpasswd: Path) -> None:
    await controller.authorize(basic("alice", "wonderland"), PULL)
    _bump(htpasswd, entry("carol", "singer") + entry("alice", "changed"))
    assert await controller.authorize(basic("carol", "singer"), PULL) == Identity("carol")
    # The old password was cached, but the entry changed: refused now.
    assert isinstance(await refusal(controller, basic("alice", "wonderland")), AuthChallenge)
    assert await controller.authorize(basic("alice", "changed"), PULL) == Identity("alice")
    _bump(htpasswd, entry("carol", "singer"))
    assert isinstance(await refusal(controller, basic("alice", "changed")), AuthChallenge)


@pytest_twisted.ensureDeferred
async def test_file_turning_bad_refuses_everyone(controller: HtpasswdAccessController, htpasswd: Path) -> None:
    _bump(htpasswd, entry("alice", "wonderland") + "bob:{SHA}abc=\n")
    e = await refusal(controller, basic("alice", "wonderland"))
    assert not isinstance(e, AuthChallenge)
    assert (e.status, e.code) == (503, errors.UNAVAILABLE)
    assert str(htpasswd) not in e.message  # the path is for the log, not the client
    _bump(htpasswd, entry("alice", "wonderland"))
    assert await controller.authorize(basic("alice", "wonderland"), PULL) == Identity("alice")
    htpasswd.unlink()
    assert (await refusal(controller, basic("alice", "wonderland"))).status == 503


@pytest.mark.parametrize(
    "line, scheme",
    [
        ("bob:$apr1$abc$def", "Apache MD5"),
        ("bob:{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M=", "SHA-1"),
        ("bob:plain", "crypt or plain-text"),
        ("bob:$6$salt$hash", "SHA-crypt"),
        ("bob:$2y$10$short", "malformed bcrypt"),
    ],
)
def test_non_bcrypt_line_refused_at_start_naming_the_line(tmp_path: Path, line: str, scheme: str) -> None:
    path = tmp_path / "htpasswd"
    path.write_text(entry("alice", "x") + "# comment\n" + line + "\n")
    with pytest.raises(ValueError) as info:
        HtpasswdAccessController("r", str(path), reactor=reactor)
    message = str(info.value)
    assert message.startswith(f"auth.htpasswd.path: {path} line 3: user 'bob'")
    assert scheme in message
    assert "htpasswd -B" in message


def test_parse_errors() -> None:
    with pytest.raises(HtpasswdError, match="f line 1: expected 'user:bcrypt-hash'"):
        parse_htpasswd(b"no-colon\n", "f")
    with pytest.raises(HtpasswdError, match="f line 2: user 'a' appears twice"):
        parse_htpasswd(entry("a", "x").encode() * 2, "f")
    assert parse_htpasswd(b"\n# only comments\n", "f") == {}


def test_missing_file_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^auth\.htpasswd\.path: .*missing.*cannot stat"):
        HtpasswdAccessController("r", str(tmp_path / "missing"), reactor=reactor)


@pytest_twisted.ensureDeferred
async def test_malformed_credentials(controller: HtpasswdAccessController) -> None:
    cases = [
        b"Basic !!!not-base64!!!",
        b"Basic " + base64.b64encode(b"no-colon"),
        b"Basic " + base64.b64encode(b":empty-user"),
        b"Basic " + base64.b64encode(b"\xff\xfe:x"),
        b"Bearer abc.def.ghi",
        b"Basic \xff",
        b"Basic " + base64.b64encode(b"alice:" + b"x" * MAX_AUTHORIZATION_BYTES),
    ]
    for raw in cases:
        e = await refusal(controller, Credentials(raw))
        assert isinstance(e, AuthChallenge), raw
        assert (e.status, e.www_authenticate) == (401, CHALLENGE)
    assert controller.checks == 0  # none reached bcrypt
    e = await refusal(controller, Credentials(b"Basic " + b"A" * (MAX_AUTHORIZATION_BYTES + 1)))
    assert str(MAX_AUTHORIZATION_BYTES) in e.message


@pytest_twisted.ensureDeferred
async def test_empty_basic_credentials_are_no_credentials(controller: HtpasswdAccessController) -> None:
    # containers/image (skopeo, podman) sends "Basic Og==" (":") when it holds
    # no credentials; the answer must be the one for no login at all.
    e = await refusal(controller, Credentials(b"Basic " + base64.b64encode(b":")))
    assert isinstance(e, AuthChallenge)
    assert (e.status, e.code, e.message, e.www_authenticate) == (401, errors.UNAUTHORIZED, "authentication required", CHALLENGE)
    assert controller.checks == 0


@pytest_twisted.ensureDeferred
async def test_password_longer_than_bcrypt_allows(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    long_password = "p" * 72
    path.write_text(entry("alice", long_password))
    c = HtpasswdAccessController("r", str(path), reactor=reactor)
    try:
        assert await c.authorize(basic("alice", long_password), PULL) == Identity("alice")
        # bcrypt ignores bytes past 72; a longer password must not pass as the 72-byte one.
        assert isinstance(await refusal(c, basic("alice", long_password + "extra")), AuthChallenge)
    finally:
        await c.close()


@pytest_twisted.ensureDeferred
async def test_too_many_pending_checks(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    path.write_text(entry("alice", "wonderland"))
    c = HtpasswdAccessController("r", str(path), reactor=reactor, maxthreads=1, max_pending=2, cache_seconds=0)
    try:
        pending = [c.authorize(basic("alice", "wonderland"), PULL) for _ in range(2)]
        e = await refusal(c, basic("alice", "wonderland"))
        assert (e.status, e.code, e.headers.get("Retry-After")) == (429, errors.TOOMANYREQUESTS, "1")
        for d in pending:
            assert await d == Identity("alice")
        assert await c.authorize(basic("alice", "wonderland"), PULL) == Identity("alice")
    finally:
        await c.close()


@pytest_twisted.ensureDeferred
async def test_reactor_is_not_blocked_by_bcrypt(tmp_path: Path) -> None:
    from twisted.internet.task import deferLater

    path = tmp_path / "htpasswd"
    path.write_text(entry("alice", "wonderland", cost=12))
    c = HtpasswdAccessController("r", str(path), reactor=reactor, maxthreads=1)
    try:
        ticks: list[float] = []
        d = c.authorize(basic("alice", "wonderland"), PULL)
        start = time.perf_counter()
        while not d.called:
            await deferLater(reactor, 0.005, lambda: None)
            ticks.append(time.perf_counter() - start)
        assert await d == Identity("alice")
        assert len(ticks) > 5, ticks  # the reactor kept turning during the check
    finally:
        await c.close()


@pytest_twisted.ensureDeferred
async def test_closed_controller_refuses(htpasswd: Path) -> None:
    c = HtpasswdAccessController("r", str(htpasswd), reactor=reactor)
    await c.close()
    e = await refusal(c, basic("alice", "wonderland"))
    assert e.status == 503


