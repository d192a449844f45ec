"""What a registry request needs, as ``Access`` items, and how the token
spec writes them: ``repository:<name>:<actions>`` scopes.

``required_access`` follows Distribution: GET/HEAD need ``pull``; PUT, POST
and PATCH need ``pull`` and ``push`` (a client pushing also reads); DELETE
needs ``delete``; the catalog needs ``registry:catalog:*``; ``GET /v2/``
needs nothing beyond valid credentials. A cross-repository mount
(``POST .../blobs/uploads/?mount=<digest>&from=<repo>``) also needs ``pull``
on ``from``.
"""

from __future__ import annotations

from typing import Final, Iterable, Mapping, Sequence

from registry.auth.interfaces import Access, Credentials
from registry.reference import InvalidNameError, check_name

ROUTE_BASE: Final = "base"
ROUTE_CATALOG: Final = "catalog"
ROUTE_TAGS: Final = "tags"
ROUTE_MANIFESTS: Final = "manifests"
ROUTE_BLOBS: Final = "blobs"
ROUTE_UPLOAD_START: Final = "upload_start"
ROUTE_UPLOAD: Final = "upload"
ROUTE_REFERRERS: Final = "referrers"

ROUTE_KINDS: Final = frozenset(
    {
        ROUTE_BASE,
        ROUTE_CATALOG,
        ROUTE_TAGS,
        ROUTE_MANIFESTS,
        ROUTE_BLOBS,
        ROUTE_UPLOAD_START,
        ROUTE_UPLOAD,
        ROUTE_REFERRERS,
    }
)

CATALOG_ACCESS: Final = Access("registry", "catalog", "*")


def _actions_for(method: str) -> tuple[str, ...]:
    if method in ("GET", "HEAD"):
        return ("pull",)
    if method == "DELETE":
        return ("delete",)
    # PUT, POST, PATCH, and anything unknown (the router refuses those;
    # asking for the most a write needs reveals nothing to an anonymous client).
    return ("pull", "push")


def required_access(
    method: str | bytes,
    route_kind: str,
    params: Mapping[str, str],
    query: Mapping[str, Sequence[str]] | None = None,
) -> list[Access]:
    """The access a request needs.

    ``method`` is the HTTP method, ``route_kind`` one of ``ROUTE_KINDS``,
    ``params`` the route's path parameters (``name`` for repository routes)
    and ``query`` the parsed query (``parse_qs`` shape) — only a
    ``POST .../blobs/uploads/`` reads it, for ``mount``/``from``. Raises
    ``ValueError`` for an unknown route kind or a repository route without
    a name (a programming error, not bad input).
    """
    if isinstance(method, bytes):
        method = method.decode("ascii", "replace")
    method = method.upper()
    if route_kind not in ROUTE_KINDS:
        raise ValueError(f"unknown route kind {route_kind!r}; expected one of {sorted(ROUTE_KINDS)}")
    if route_kind == ROUTE_BASE:
        return []
    if route_kind == ROUTE_CATALOG:
        return [CATALOG_ACCESS]
    name = params.get("name")
    if not name:
        raise ValueError(f"route kind {route_kind!r} needs a 'name' parameter")
    needed = [Access("repository", name, action) for action in _actions_for(method)]
    if route_kind == ROUTE_UPLOAD_START and method == "POST" and query:
        sources = query.get("from") or []
        if (query.get("mount") or [""])[0] and sources:
            source = sources[0]
            try:
                check_name(source)
            except InvalidNameError:
                # The mount cannot happen; the route answers the bad name.
                return needed
            if source != name:
                needed.append(Access("repository", source, "pull"))
    return needed


def quote_param(value: str) -> str:
    """``value`` as an HTTP quoted-string, with its quotes."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def scope_param(needed: Iterable[Access]) -> str:
    """The token spec's ``scope`` value for ``needed``: one
    ``type:name:action[,action]`` per resource, in first-seen order,
    space-separated (``repository:a/b:pull,push repository:c:pull``)."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for access in needed:
        actions = grouped.setdefault((access.type, access.name), [])
        if access.action not in actions:
            actions.append(access.action)
    return " ".join(f"{t}:{n}:{','.join(actions)}" for (t, n), actions in grouped.items())


def parse_scope(scope: str) -> list[Access]:
    """Parse one token-spec scope (``repository:a/b:pull,push``) into
    ``Access`` items. The name may contain ``:`` only in a registry host
    port (``repository:host:5000/a:pull``): the type is before the first
    ``:`` and the actions after the last. Raises ``ValueError`` when the
    scope has fewer than three parts."""
    rtype, sep1, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep1 or not sep2 or not rtype or not name:
        raise ValueError(f"scope {scope!r} is not 'type:name:actions'")
    return [Access(rtype, name, a) for a in actions.split(",") if a]


def credentials_from_request(request: object) -> Credentials:
    """``Credentials`` from a ``twisted.web`` request (its ``Authorization``,
    ``Host`` and ``X-Forwarded-Proto`` headers and peer address). Reads only
    headers: safe before the body streams."""
    get = getattr(request, "getHeader")
    authorization = get(b"authorization")
    host = get(b"host")
    proto = get(b"x-forwarded-proto")
    is_secure = getattr(request, "isSecure", lambda: False)()
    peer: str | None = None
    client = getattr(request, "getClientAddress", None)
    if client is not None:
        address = client()
        peer = f"{getattr(address, 'host', address)}"
    forwarded = proto.decode("latin-1").split(",")[0].strip() if proto else None
    return Credentials(
        authorization=authorization,
        peer=peer,
        host=host.decode("latin-1") if host else None,
        scheme=forwarded if forwarded else ("https" if is_secure else "http"),
        forwarded_proto=forwarded or None,
    )


__all__ = [
    "CATALOG_ACCESS",
    "ROUTE_BASE",
    "ROUTE_BLOBS",
    "ROUTE_CATALOG",
    "ROUTE_KINDS",
    "ROUTE_MANIFESTS",
    "ROUTE_REFERRERS",
    "ROUTE_TAGS",
    "ROUTE_UPLOAD",
    "ROUTE_UPLOAD_START",
    "credentials_from_request",
    "parse_scope",
    "quote_param",
    "required_access",
    "scope_param",
]
