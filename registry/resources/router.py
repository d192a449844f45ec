"""The root resource: routes ``/v2/...`` with the spec's patterns (names
contain ``/``), validates path parameters, dispatches to ``METHOD`` coroutines
of the route's handler, and decides how each request's body is received.

A request is routed once, when its headers are in
(:meth:`RegistryRoot.headers_received`, called by ``RegistryRequest``): the
:class:`RouteMatch` (or the error that stops the request) is kept on the
request, then :meth:`RegistryRoot.before_body` -- the one place a routed
request is looked at before its body streams, where authorisation goes --
decides the body handling.  ``render`` answers from the stored match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, cast, runtime_checkable
from urllib.parse import parse_qs, unquote

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from registry import errors
from registry.digest import Digest
from registry.errors import RegistryError
from registry.auth import Access, AuthChallenge, Credentials, IAccessController, Identity, required_access
from registry.auth.scopes import credentials_from_request
from registry.http import BodyHandling, DeferredBody, LimitedBody, RegistryRequest
from registry.reference import check_name
from registry.resources.base import render_async, write_error
from registry.resources.blobs import BlobResource
from registry.resources.catalog import CatalogResource
from registry.resources.context import SMALL_BODY, Context
from registry.resources.layers import LayerInfoResource
from registry.resources.manifests import ManifestResource
from registry.resources.referrers import ReferrersResource
from registry.resources.tags import TagsResource
from registry.resources.uploads import UploadResource, UploadStartResource

if TYPE_CHECKING:
    from registry.ui import UIResource

API_VERSION_HEADER = (b"Docker-Distribution-API-Version", b"registry/2.0")

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


class BaseResource:
    """``GET /v2/``: the API version check."""

    async def GET(self, request: RegistryRequest) -> None:
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"2")
        if request.method != b"HEAD":
            request.write(b"{}")

    HEAD = GET


@runtime_checkable
class BodyHook(Protocol):
    """A handler that chooses how its requests' bodies are received (uploads
    stream, manifests buffer up to a limit); others get ``SMALL_BODY``."""

    def body_handling(
        self,
        request: RegistryRequest,
        method: bytes,
        params: dict[str, str],
        query: dict[str, list[str]],
        length: int | None,
    ) -> BodyHandling: ...


class Route:
    """One row of the route table: a name (what kind of request this is,
    e.g. ``"manifest"``; access control will key on it), the path pattern and
    the handler whose ``METHOD`` coroutines serve it."""

    def __init__(self, name: str, pattern: str, handler: object) -> None:
        self.name = name
        self.regex = re.compile(pattern)
        self.handler = handler
        #: The handler's ``body_handling`` (a ``BodyHook``), looked up once
        #: (a runtime Protocol check per request costs more than routing).
        self.body_hook: Callable[..., BodyHandling] | None = getattr(handler, "body_handling", None)
        #: Which path parameters need checking (known when the route is made).
        self.has_name = "(?P<name>" in pattern
        self.has_digest = "(?P<digest>" in pattern


@dataclass(frozen=True)
class RouteMatch:
    """A request's route, resolved once when its headers are in."""

    route: Route
    #: The request method, upper-cased.
    method: bytes
    #: Path parameters, percent-decoded and validated (``name``, ``digest``...).
    params: dict[str, str]
    #: The query string, percent-decoded.
    query: dict[str, list[str]]

    @property
    def handler(self) -> object:
        return self.route.handler

    @property
    def repository(self) -> str | None:
        """The repository the request is about (None for ``/v2/``, catalog)."""
        return self.params.get("name")


class RegistryRoot(Resource):
    """Leaf resource for the whole URL space."""

    isLeaf = True

    def __init__(
        self,
        routes: Sequence[Route],
        extra_headers: dict[str, list[str]] | None = None,
        access: IAccessController | None = None,
        ui: UIResource | None = None,
    ) -> None:
        super().__init__()
        self.routes = list(routes)
        self.extra_headers = extra_headers or {}
        #: The access controller (None: every request is allowed, as Distribution without ``auth``).
        self.access = access
        #: Health checks (``registry.observe.health.HealthChecks``): while any
        #: fails, every request is answered 503 UNAVAILABLE, as Distribution
        #: does, so a load balancer takes the instance out.  None: no checks.
        self.health: Any = None
        #: ``health.mainlistener``: the health page (a Resource) answered at
        #: ``health_path`` before routing, without authentication or the
        #: health gate; None: that path is no endpoint.
        self.health_page: Any = None
        self.health_path = b"/debug/health"
        #: The web page (``ui.enabled``): serves ``<prefix>ui/...`` itself,
        #: outside the API's routes and JSON errors, asking ``access`` per page.
        self.ui = ui

    def match(self, path: bytes) -> tuple[Route, dict[str, str]]:
        """The route for ``path`` and its validated parameters; raises
        RegistryError for unknown endpoints and invalid names or digests."""
        try:
            text = path.decode("ascii")
        except UnicodeDecodeError:
            raise RegistryError(errors.NAME_INVALID, "the request path must be ASCII") from None
        for route in self.routes:
            m = route.regex.match(text)
            if m is None:
                continue
            # Route on the raw path (an encoded '/' must not split a name),
            # then decode each parameter: clients may send sha256%3A<hex>.
            params = {k: unquote(v) if "%" in v else v for k, v in m.groupdict().items()}
            if route.has_name:
                check_name(params["name"])
            if route.has_digest:
                Digest.parse(params["digest"])
            return route, params
        raise RegistryError(
            errors.UNSUPPORTED,
            f"no registry endpoint at {text[:200]!r}; see the OCI distribution-spec for the API",
            status=404,
        )

    def resolve(self, method: bytes, target: bytes) -> RouteMatch:
        """Route the request line ``method target``; raises like :meth:`match`."""
        path, _, query = target.partition(b"?")
        route, params = self.match(path)
        return RouteMatch(
            route=route,
            method=method.upper(),
            params=params,
            query=parse_qs(query.decode("latin-1"), keep_blank_values=True) if query else {},
        )

    def headers_received(
        self, request: RegistryRequest, method: bytes, target: bytes, length: int | None
    ) -> BodyHandling:
        """Called by the request once its headers are in: route it (the only
        time), keep the outcome on the request, and say how its body is
        received.  A request that cannot be served gets a small body buffer
        that is dropped; ``render`` answers it with the error."""
        if self.health_page is not None and target.partition(b"?")[0] == self.health_path:
            return LimitedBody(SMALL_BODY)
        if self.ui is not None and self.ui.handles(target.partition(b"?")[0]):
            return LimitedBody(SMALL_BODY)  # the web page's forms are small
        try:
            match = self.resolve(method, target)
        except Exception as e:
            request.route_error = e
            return LimitedBody(SMALL_BODY)
        request.route_match = match
        if self.health is not None and self.health.failing():
            request.route_error = RegistryError(
                errors.UNAVAILABLE, "a health check fails: see /debug/health on the debug listener"
            )
            return LimitedBody(SMALL_BODY)
        try:
            return self.before_body(request, match, length)
        except Exception as e:
            request.route_error = e
            return LimitedBody(SMALL_BODY)

    def before_body(self, request: RegistryRequest, match: RouteMatch, length: int | None) -> BodyHandling:
        """The one place a routed request is looked at before its body
        streams.  An exception raised here refuses the request: its body is
        not received and ``render`` answers with the error (authorisation
        plugs in here).  Otherwise the handler's body hook chooses."""
        if self.access is None:
            return self._body_for(request, match, length)
        needed, optional = _needed_access(match)
        credentials = credentials_from_request(request)
        # Ask for everything (a challenge then names the mount source's
        # scope too, so clients fetch one token for both); if only the
        # source is refused, the request goes on without mounting.
        decision = self.access.authorize(credentials, needed + optional)
        if optional:
            decision.addErrback(self._without_optional, credentials, needed)
        outcome: list[Identity | Failure] = []

        def decided_now(result: Identity | Failure) -> None:
            outcome.append(result)  # and the Deferred ends handled

        if decision.called:
            decision.addBoth(decided_now)
            # Decided at once (a token, a cached password, no credentials).
            return self._authorized(outcome[0], request, match, length, optional)
        later = decision.addCallback(self._authorized, request, match, length, optional)
        return DeferredBody(later)

    def _without_optional(self, failure: Failure, credentials: Credentials, needed: list[Access]) -> Deferred[Identity]:
        """Retry without the optional access when valid credentials were
        refused only for lack of it (``DENIED``)."""
        error = failure.value
        if not isinstance(error, AuthChallenge) or error.code is not errors.DENIED:
            return failure  # type: ignore[return-value]  # passes the refusal on
        assert self.access is not None
        return self.access.authorize(credentials, needed)

    def _authorized(
        self, outcome: Identity | Failure, request: RegistryRequest, match: RouteMatch, length: int | None,
        optional: list[Access],
    ) -> BodyHandling:
        """Continue a request the access controller has decided on: keep the
        identity (the access log names the user) or raise its refusal."""
        if isinstance(outcome, Failure):
            outcome.raiseException()
        assert isinstance(outcome, Identity)
        request.identity = outcome
        if outcome.name:
            request.log_fields["user"] = outcome.name
        # A mount source the caller may not read is no error: the upload
        # just is not mounted (never 201 without pull on the source).
        request.mount_allowed = all(outcome.allows(a) for a in optional)
        return self._body_for(request, match, length)

    def _body_for(self, request: RegistryRequest, match: RouteMatch, length: int | None) -> BodyHandling:
        hook = match.route.body_hook
        if hook is None:
            return LimitedBody(SMALL_BODY)
        return hook(request, match.method, match.params, match.query, length)

    def render(self, request: RegistryRequest) -> object:
        request.setHeader(*API_VERSION_HEADER)
        for header, values in self.extra_headers.items():
            request.responseHeaders.setRawHeaders(header, values)
        if self.health_page is not None and request.path == self.health_path:
            return self.health_page.render(request)
        if self.ui is not None and self.ui.handles(request.path):
            return self.ui.render(request)
        method = request.method.upper()

        async def handle() -> None:
            if request.route_error is not None:
                raise request.route_error
            match = request.route_match
            if match is None:
                raise RuntimeError(
                    "the request was not routed when its headers arrived; serve RegistryRoot through RegistrySite"
                )
            handler, params = match.handler, match.params
            fn = getattr(handler, method.decode("ascii", "replace"), None)
            if fn is None or not method.isalpha() or not method.isupper():
                allowed = [m for m in _METHODS if hasattr(handler, m)]
                raise RegistryError(
                    errors.UNSUPPORTED,
                    f"{method.decode('ascii', 'replace')} is not supported here; allowed: {', '.join(allowed)}",
                    headers={"Allow": ", ".join(allowed)},
                )
            if request.body_too_large:
                if request.body_too_large_error is not None:
                    raise request.body_too_large_error
                raise RegistryError(
                    errors.SIZE_INVALID, f"the request body is larger than this endpoint accepts ({request.body_limit} bytes)", status=413
                )
            await fn(request, **params)

        return render_async(request, handle)


#: Route names to the kinds ``registry.auth.required_access`` knows.
_ACCESS_KINDS = {
    "base": "base",
    "catalog": "catalog",
    "tags": "tags",
    "manifest": "manifests",
    "upload-start": "upload_start",
    "upload": "upload",
    "blob": "blobs",
    "referrers": "referrers",
    "layer-info": "blobs",
}


def _needed_access(match: RouteMatch) -> tuple[list[Access], list[Access]]:
    """(what the request must be allowed, what it may use if allowed): a
    mount's pull on its source repository is the second kind."""
    needed = required_access(match.method.decode("ascii", "replace"), _ACCESS_KINDS[match.route.name], match.params, match.query)
    name = match.params.get("name")
    optional = [a for a in needed if a.type == "repository" and a.name != name]
    return [a for a in needed if a not in optional], optional


def build_routes(ctx: Context) -> list[Route]:
    """The route table, in matching order (under ``ctx.prefix``)."""
    v2 = "^" + re.escape(ctx.prefix) + "v2"
    name = r"(?P<name>.+)"
    return [
        Route("base", rf"{v2}/?$", BaseResource()),
        Route("catalog", rf"{v2}/_catalog$", CatalogResource(ctx)),
        Route("tags", rf"{v2}/{name}/tags/list$", TagsResource(ctx)),
        Route("manifest", rf"{v2}/{name}/manifests/(?P<reference>[^/]+)$", ManifestResource(ctx)),
        Route("upload-start", rf"{v2}/{name}/blobs/uploads/?$", UploadStartResource(ctx)),
        Route("upload", rf"{v2}/{name}/blobs/uploads/(?P<upload_id>[^/]+)$", UploadResource(ctx)),
        Route("blob", rf"{v2}/{name}/blobs/(?P<digest>[^/]+)$", BlobResource(ctx)),
        Route("referrers", rf"{v2}/{name}/referrers/(?P<digest>[^/]+)$", ReferrersResource(ctx)),
        # This registry's extension (registry.resources.layers); no spec path has a "_" component.
        Route("layer-info", rf"{v2}/{name}/_registry/layers/(?P<digest>[^/]+)$", LayerInfoResource(ctx)),
    ]


__all__ = ["BodyHook", "RegistryRoot", "Route", "RouteMatch", "build_routes", "write_error"]
