"""The root resource: routes ``/v2/...`` with the spec's patterns (names
contain ``/``), validates path parameters, dispatches to ``METHOD`` coroutines
of the route's handler, and decides how each request's body is received."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, unquote

from twisted.web.resource import Resource

from registry import errors
from registry.digest import Digest
from registry.errors import RegistryError
from registry.http import LimitedBody, RegistryRequest
from registry.reference import check_name
from registry.resources.base import render_async, write_error
from registry.resources.context import SMALL_BODY

API_VERSION_HEADER = (b"Docker-Distribution-API-Version", b"registry/2.0")


class BaseResource:
    """``GET /v2/``: the API version check."""

    async def GET(self, request: RegistryRequest) -> None:
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"2")
        if request.method != b"HEAD":
            request.write(b"{}")

    HEAD = GET


class Route:
    def __init__(self, pattern: str, handler: Any) -> None:
        self.regex = re.compile(pattern)
        self.handler = handler


class RegistryRoot(Resource):
    """Leaf resource for the whole URL space."""

    isLeaf = True

    def match(self, path: bytes) -> tuple[Any, dict[str, str]]:
        """(handler, params) for ``path``; raises RegistryError for unknown
        endpoints and invalid names or digests."""
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
            params = {k: unquote(v) for k, v in m.groupdict().items()}
            if "name" in params:
                check_name(params["name"])
            if "digest" in params:
                Digest.parse(params["digest"])
            return route.handler, params
        raise RegistryError(
            errors.UNSUPPORTED,
            f"no registry endpoint at {text[:200]!r}; see the OCI distribution-spec for the API",
            status=404,
        )

    def body_handling(self, request: RegistryRequest, command: bytes, uri: bytes, length: int | None) -> object:
        """Called when a request's headers are in: a body sink to stream the
        body into, a ``LimitedBody``, or None for Twisted's default."""
        path, _, query = uri.partition(b"?")
        try:
            handler, params = self.match(path)
        except Exception:
            return LimitedBody(SMALL_BODY)
        hook = getattr(handler, "body_handling", None)
        if hook is None:
            return LimitedBody(SMALL_BODY)
        q = parse_qs(query.decode("latin-1"), keep_blank_values=True)
        return hook(request, command.upper(), params, q, length)

    def __init__(self, routes: list[Route], extra_headers: dict[str, list[str]] | None = None) -> None:
        super().__init__()
        self.routes = routes
        self.extra_headers = extra_headers or {}

    def render(self, request: RegistryRequest) -> object:
        request.setHeader(*API_VERSION_HEADER)
        for header, values in self.extra_headers.items():
            request.responseHeaders.setRawHeaders(header, values)
        method = request.method.upper()

        async def handle() -> None:
            handler, params = self.match(request.path)
            fn = getattr(handler, method.decode("ascii", "replace"), None)
            if fn is None or not method.isalpha() or not method.isupper():
                allowed = [m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE") if hasattr(handler, m)]
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


def build_routes(ctx: Any, extra: dict[str, Any] | None = None) -> list[Route]:
    """The route table. ``extra`` maps route keys ('manifests', 'tags',
    'catalog', 'referrers') to handlers supplied by other modules."""
    from registry.resources.blobs import BlobResource
    from registry.resources.uploads import UploadResource, UploadStartResource

    extra = extra or {}
    v2 = "^" + re.escape(getattr(ctx, "prefix", "/")) + "v2"
    name = r"(?P<name>.+)"
    routes = [Route(rf"{v2}/?$", BaseResource())]
    if "catalog" in extra:
        routes.append(Route(rf"{v2}/_catalog$", extra["catalog"]))
    if "tags" in extra:
        routes.append(Route(rf"{v2}/{name}/tags/list$", extra["tags"]))
    if "manifests" in extra:
        routes.append(Route(rf"{v2}/{name}/manifests/(?P<reference>[^/]+)$", extra["manifests"]))
    routes += [
        Route(rf"{v2}/{name}/blobs/uploads/?$", UploadStartResource(ctx)),
        Route(rf"{v2}/{name}/blobs/uploads/(?P<upload_id>[^/]+)$", UploadResource(ctx)),
        Route(rf"{v2}/{name}/blobs/(?P<digest>[^/]+)$", BlobResource(ctx)),
    ]
    if "referrers" in extra:
        routes.append(Route(rf"{v2}/{name}/referrers/(?P<digest>[^/]+)$", extra["referrers"]))
    return routes


__all__ = ["RegistryRoot", "Route", "build_routes", "write_error"]
