"""``UIResource``: the web page under ``<http.prefix>ui/``.

URLs (names contain ``/``; ``-`` never starts a name component, so ``/-/``
ends a name)::

    ui/                                   repositories (?q=prefix&last=name)
    ui/r/<name>                           a repository's tags (?last=tag&n=100)
    ui/r/<name>/-/manifest/<tag|digest>   a manifest
    ui/r/<name>/-/delete?tag=|digest=     GET: confirm; POST: delete (CSRF)
    ui/static/style-<hash>.css            the stylesheet (cached for a year)

Every page asks the registry's access controller for what the API asks for
the same data (``required_access``): the catalog's access for the list,
``pull`` for a repository or manifest, ``delete`` to delete. A refusal is an
HTML page with the controller's status and ``WWW-Authenticate`` challenge
(a browser asks for the htpasswd user and password). Errors of the data
model go through the API's one table (``to_registry_error``) for their
status and message, and become HTML pages.

Every response carries a strict Content-Security-Policy (no scripts at all,
styles only from this origin), ``nosniff``, no framing and no referrer.
"""

from __future__ import annotations

import bisect
import hashlib
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from registry import errors
from registry.auth import Access, IAccessController, Identity, credentials_from_request, filter_catalog, required_access
from registry.digest import Digest, DigestError
from registry.errors import RegistryError
from registry.reference import InvalidTagError, check_name, check_tag
from registry.resources.base import to_registry_error
from registry.resources.context import Context
from registry.storage.errors import ManifestUnknown
from registry.ui import pages
from registry.ui.csrf import CSRF
from registry.ui.pages import DEFAULT_TAGS, Page, Urls
from registry.ui.views import Reader, SummaryCache

log = Logger(namespace="registry.ui")

#: Repositories per page of the list.
REPOSITORIES_PER_PAGE = 50
#: The most tags one repository page shows (``n``).
MAX_TAGS = 1000

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    b"Content-Security-Policy": CONTENT_SECURITY_POLICY.encode(),
    b"X-Content-Type-Options": b"nosniff",
    b"X-Frame-Options": b"DENY",
    b"Referrer-Policy": b"no-referrer",
    b"Cross-Origin-Opener-Policy": b"same-origin",
    b"Cross-Origin-Resource-Policy": b"same-origin",
}
HTML = b"text/html; charset=utf-8"

_HEADINGS = {
    400: "Bad request",
    401: "Sign in required",
    403: "Not allowed",
    404: "Not found",
    405: "Not possible here",
    413: "Request too large",
    500: "Something went wrong",
    503: "Storage unavailable",
}


def stylesheet() -> bytes:
    """The stylesheet shipped with the package (``registry/ui/static/style.css``)."""
    return resources.files("registry.ui").joinpath("static/style.css").read_bytes()


class Refusal(Exception):
    """A request the page refuses with ``status`` and a message for people."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class UIResource(Resource):
    """Leaf resource for every path under the page's base."""

    isLeaf = True

    def __init__(
        self,
        ctx: Context,
        access: IAccessController | None = None,
        secret: bytes | None = None,
        cache: SummaryCache | None = None,
    ) -> None:
        super().__init__()
        self.ctx = ctx
        self.access = access
        #: ``<http.prefix>ui/``
        self.base = ctx.prefix.rstrip("/") + "/ui/"
        self.urls = Urls(self.base)
        self.reader = Reader(ctx.model, cache)
        self.csrf = CSRF(secret, self.base)
        self.css = stylesheet()
        self.css_name = f"style-{hashlib.sha256(self.css).hexdigest()[:16]}.css"

    def handles(self, path: bytes) -> bool:
        """True for the page's paths (``<prefix>ui`` and below; no query)."""
        base = self.base.encode("ascii")
        return path == base[:-1] or path.startswith(base)

    # -- rendering ---------------------------------------------------------------

    def render(self, request: Any) -> object:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        d = ensureDeferred(self._dispatch(request))
        d.addErrback(self._failed, request)
        d.addErrback(lambda f: log.failure("while answering a web page request", f))
        return NOT_DONE_YET

    def _failed(self, failure: Failure, request: Any) -> None:
        if _gone(request):
            return
        exc = failure.value
        if isinstance(exc, Refusal):
            status, message, headers = exc.status, exc.message, exc.headers
        else:
            err = to_registry_error(exc)  # logs what it does not know
            status, message, headers = err.status, err.message, err.headers
        request.setResponseCode(status)
        for k, v in headers.items():
            request.setHeader(k, v)
        if hasattr(request, "log_fields"):
            request.log_fields["error"] = status
        try:
            tree = pages.error_page(self._page(request, ""), status, _HEADINGS.get(status, f"Error {status}"), message)
        except Exception:
            self._render_failed(Failure(), request)
            return
        self._send_page(request, tree)

    def _page(self, request: Any, user: str) -> Page:
        return Page(
            urls=self.urls,
            stylesheet=self.urls.static(self.css_name),
            user=user,
            registry_host=self._registry_host(request),
            secure=bool(request.isSecure()),
        )

    def _registry_host(self, request: Any) -> str:
        """``host[:port]`` for pull commands: ``http.host``'s, else the Host the browser used."""
        if self.ctx.base_url:
            netloc = urlsplit(self.ctx.base_url).netloc
            if netloc:
                return netloc
        host = request.getHeader(b"host")
        return host.decode("latin-1") if host else "localhost"

    def _send_page(self, request: Any, tree: Any) -> None:
        d = ensureDeferred(pages.render(tree))
        d.addCallbacks(lambda body: self._send(request, body), self._render_failed, errbackArgs=(request,))

    def _render_failed(self, failure: Failure, request: Any) -> None:
        log.failure("while rendering a web page", failure)
        if not _gone(request) and not request.startedWriting:
            request.setResponseCode(500)
            self._send(request, b"internal error: the registry logged the cause\n", b"text/plain; charset=utf-8")

    def _send(self, request: Any, body: bytes, content_type: bytes = HTML, cache: bytes = b"no-store") -> None:
        if _gone(request):
            return
        request.setHeader(b"Content-Type", content_type)
        request.setHeader(b"Content-Length", str(len(body)).encode())
        request.setHeader(b"Cache-Control", cache)
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    def _redirect(self, request: Any, location: str, status: int = 303) -> None:
        request.setResponseCode(status)
        request.setHeader(b"Location", location.encode("ascii"))
        self._send(request, b"", b"text/plain; charset=utf-8")

    # -- routing -------------------------------------------------------------------

    async def _dispatch(self, request: Any) -> None:
        path: bytes = request.path
        method: bytes = request.method.upper()
        if path == self.base.encode("ascii")[:-1]:
            self._redirect(request, self.base, 301)
            return
        try:
            rest = unquote(path[len(self.base) :].decode("ascii"), errors="strict")
        except UnicodeDecodeError:
            raise Refusal(404, "no such page: the path must be ASCII") from None
        if rest.startswith("static/"):
            self._allow(method, (b"GET", b"HEAD"))
            if rest != "static/" + self.css_name:
                raise Refusal(404, "no such file")
            self._send(request, self.css, b"text/css; charset=utf-8", b"public, max-age=31536000, immutable")
            return
        if rest == "":
            self._allow(method, (b"GET", b"HEAD"))
            await self._repositories(request)
            return
        if rest.startswith("r/"):
            name, sep, sub = rest[2:].partition("/-/")
            try:
                check_name(name)
            except ValueError as e:
                raise Refusal(404, f"no such repository: {e}") from None
            if hasattr(request, "log_fields"):
                request.log_fields["repository"] = name
            if not sep:
                self._allow(method, (b"GET", b"HEAD"))
                await self._repository(request, name)
                return
            if sub.startswith("manifest/"):
                self._allow(method, (b"GET", b"HEAD"))
                await self._manifest(request, name, sub[len("manifest/") :])
                return
            if sub == "delete":
                self._allow(method, (b"GET", b"HEAD", b"POST"))
                if method == b"POST":
                    await self._delete(request, name)
                else:
                    await self._confirm_delete(request, name)
                return
        raise Refusal(404, "no such page")

    @staticmethod
    def _allow(method: bytes, allowed: tuple[bytes, ...]) -> None:
        if method not in allowed:
            names = ", ".join(m.decode() for m in allowed)
            raise Refusal(405, f"{method.decode('ascii', 'replace')} is not possible here; use {names}", {"Allow": names})

    async def _authorize(self, request: Any, needed: list[Access]) -> Identity | None:
        """The caller's identity, through the registry's access controller
        (None without access control); fails with its challenge."""
        if self.access is None:
            return None
        identity: Identity = await self.access.authorize(credentials_from_request(request), needed)
        if identity.name and hasattr(request, "log_fields"):
            request.log_fields["user"] = identity.name
        return identity

    def _may_delete(self, identity: Identity | None, name: str) -> bool:
        if not self.ctx.delete_enabled or self.ctx.readonly:
            return False
        return identity is None or identity.allows(Access("repository", name, "delete"))

    # -- pages -----------------------------------------------------------------------

    async def _repositories(self, request: Any) -> None:
        identity = await self._authorize(request, required_access("GET", "catalog", {}))
        q = _arg(request, "q").strip()
        last = _arg(request, "last") or None
        names, more = await self.reader.repositories(REPOSITORIES_PER_PAGE, last, q)
        if identity is not None:
            names = filter_catalog(identity, names)
        page = self._page(request, identity.name if identity else "")
        self._send_page(request, pages.repositories_page(page, names, more, q, last))

    async def _repository(self, request: Any, name: str) -> None:
        identity = await self._authorize(request, required_access("GET", "tags", {"name": name}))
        n = _page_size(_arg(request, "n"))
        last = _arg(request, "last") or None
        all_tags = await self.reader.tags(name)
        start = bisect.bisect_right(all_tags, last) if last is not None else 0
        shown = all_tags[start : start + n]
        previous = all_tags[start - n - 1] if start - n > 0 else None
        rows = await self.reader.tag_rows(name, shown)
        page = self._page(request, identity.name if identity else "")
        tree = pages.repository_page(
            page,
            name,
            rows,
            total=len(all_tags),
            more=start + n < len(all_tags),
            last=last,
            previous=previous,
            n=n,
            can_delete=self._may_delete(identity, name),
            done=_done_message(request),
        )
        self._send_page(request, tree)

    async def _manifest(self, request: Any, name: str, reference: str) -> None:
        identity = await self._authorize(request, required_access("GET", "manifests", {"name": name}))
        _check_reference(reference)
        detail = await self.reader.manifest(name, reference)
        page = self._page(request, identity.name if identity else "")
        self._send_page(request, pages.manifest_page(page, detail, can_delete=self._may_delete(identity, name)))

    def _delete_target(self, request: Any) -> tuple[str | None, Digest | None]:
        tag, digest = _arg(request, "tag") or None, _arg(request, "digest") or None
        if (tag is None) == (digest is None):
            raise Refusal(400, "say what to delete: a tag or a digest (one of them)")
        if tag is not None:
            try:
                return check_tag(tag), None
            except InvalidTagError as e:
                raise Refusal(400, str(e)) from None
        assert digest is not None
        try:
            return None, Digest.parse(digest)
        except DigestError as e:
            raise Refusal(400, str(e)) from None

    async def _confirm_delete(self, request: Any, name: str) -> None:
        identity = await self._authorize(request, required_access("DELETE", "manifests", {"name": name}))
        self.ctx.check_delete()
        tag, digest = self._delete_target(request)
        tags_of: list[str] = []
        if tag is not None:
            await self.ctx.model.tags.resolve(name, tag)  # ManifestUnknown: nothing to delete
        else:
            assert digest is not None
            if not await self.ctx.model.manifests.exists(name, digest):
                raise ManifestUnknown(name, str(digest))
            tags_of = await self.ctx.model.tags.tags_of(name, digest)
        user = identity.name if identity else ""
        page = self._page(request, user)
        token = self.csrf.token(request, user)
        self._send_page(request, pages.delete_page(page, name, tag=tag, digest=digest, csrf=token, tags_of=tags_of))

    async def _delete(self, request: Any, name: str) -> None:
        if getattr(request, "body_too_large", False):
            raise Refusal(413, "the form is larger than this page ever sends")
        identity = await self._authorize(request, required_access("DELETE", "manifests", {"name": name}))
        fetch_site = request.getHeader(b"sec-fetch-site")
        if fetch_site is not None and fetch_site.lower() == b"cross-site":
            raise Refusal(403, "a form from another site cannot delete here")
        if not self.csrf.check(request, identity.name if identity else "", _arg(request, "csrf") or None):
            raise Refusal(403, "the form's security token is missing or out of date: reload the page and try again")
        self.ctx.check_delete()
        tag, digest = self._delete_target(request)
        if tag is not None:
            await self.ctx.model.tags.untag(name, tag)
            log.info("web page: deleted tag {name}:{tag}", name=name, tag=tag)
            self._redirect(request, self.urls.repository(name) + "?" + _query(deleted_tag=tag))
            return
        assert digest is not None
        await self.ctx.model.manifests.delete(name, digest)
        log.info("web page: deleted manifest {name}@{digest}", name=name, digest=str(digest))
        self._redirect(request, self.urls.repository(name) + "?" + _query(deleted_manifest=str(digest)))


# -- helpers ------------------------------------------------------------------------------


def _gone(request: Any) -> bool:
    return bool(request.finished or getattr(request, "_disconnected", False))


def _arg(request: Any, name: str) -> str:
    """The first value of query or form field ``name`` ("" when absent);
    undecodable bytes become U+FFFD."""
    values = (request.args or {}).get(name.encode("ascii"))
    if not values:
        return ""
    value: bytes = values[0]
    return value.decode("utf-8", "replace")


def _query(**params: str) -> str:
    from urllib.parse import urlencode

    return urlencode(params)


def _page_size(raw: str) -> int:
    if not raw:
        return DEFAULT_TAGS
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_TAGS:
        raise Refusal(400, f"n={raw[:20]!r}: the number of tags per page must be between 1 and {MAX_TAGS}")
    return int(raw)


def _check_reference(reference: str) -> None:
    if ":" in reference:
        return  # a digest; Digest.parse checks it
    try:
        check_tag(reference)
    except InvalidTagError as e:
        raise RegistryError(errors.TAG_INVALID, str(e)) from None


def _done_message(request: Any) -> str | None:
    """The notice after a delete (the redirect names what was deleted);
    only a valid tag or digest is shown."""
    tag = _arg(request, "deleted_tag")
    if tag:
        try:
            return f"Deleted tag {check_tag(tag)}."
        except InvalidTagError:
            return None
    digest = _arg(request, "deleted_manifest")
    if digest:
        try:
            return f"Deleted manifest {Digest.parse(digest)} and its tags."
        except DigestError:
            return None
    return None
