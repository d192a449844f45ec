"""``GET /v2/<name>/tags/list`` with ``n``/``last`` pagination, and the
pagination helpers the catalog shares.

Entries are sorted lexically (code-point order). ``last`` returns the entries
after it; ``n`` caps the page. When entries remain after a page, an RFC 5988
``Link: <url?n=..&last=..>; rel="next"`` header points at the next page.
"""

from __future__ import annotations

import bisect
from urllib.parse import urlencode

from registry import errors
from registry.errors import RegistryError
from registry.http import RegistryRequest
from registry.resources.base import write_json
from registry.resources.context import Context, query_values
from registry.storage.errors import NameUnknown


def parse_page(query: dict[str, list[str]]) -> tuple[int | None, str | None]:
    """``(n, last)`` from the query; raises ``PAGINATION_NUMBER_INVALID`` for
    an ``n`` that is not a non-negative decimal integer."""
    n: int | None = None
    raw_n = query.get("n", [None])[0]
    if raw_n is not None:
        if not raw_n.isascii() or not raw_n.isdigit():
            raise RegistryError(
                errors.PAGINATION_NUMBER_INVALID,
                f"n={raw_n[:50]!r} is not a valid page size: give a non-negative integer",
                {"n": raw_n[:50]},
            )
        n = int(raw_n)
    last = query.get("last", [None])[0]
    return n, last or None


def page(entries: list[str], n: int | None, last: str | None) -> tuple[list[str], bool]:
    """The sorted ``entries`` after ``last``, at most ``n`` of them, and
    whether more remain after the page."""
    start = bisect.bisect_right(entries, last) if last is not None else 0
    rest = entries[start:]
    if n is None:
        return rest, False
    return rest[:n], len(rest) > n


def next_link(ctx: Context, path: str, n: int, last: str) -> str:
    """The ``Link`` header value for the page after ``last``."""
    return f'<{ctx.url(path)}?{urlencode({"n": n, "last": last})}>; rel="next"'


class TagsResource:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def GET(self, request: RegistryRequest, name: str) -> None:
        request.log_fields["repository"] = name
        n, last = parse_page(query_values(request))
        tags = await self.ctx.model.tags.all(name)
        if tags is None:
            if not await self.ctx.model.catalog.exists(name):
                raise NameUnknown(name)
            tags = []
        selected, more = page(tags, n, last)
        if more and n:
            request.setHeader(b"Link", next_link(self.ctx, f"/v2/{name}/tags/list", n, selected[-1]).encode())
        write_json(request, {"name": name, "tags": selected})

    HEAD = GET
