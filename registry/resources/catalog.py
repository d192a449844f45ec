"""``GET /v2/_catalog``: every repository, sorted, with the same ``n``/``last``
pagination and ``Link`` header as tag lists. A page (``n`` given) is listed
without walking the whole tree (``ICatalog.page``)."""

from __future__ import annotations

from registry.http import RegistryRequest
from registry.resources.base import write_json
from registry.resources.context import Context, query_values
from registry.resources.tags import next_link, page, parse_page


class CatalogResource:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def GET(self, request: RegistryRequest) -> None:
        n, last = parse_page(query_values(request))
        catalog = self.ctx.model.catalog
        if n is None:
            selected, more = page(await catalog.repositories(), None, last)
        else:
            # One page costs about n directory listings, not a walk of every
            # repository (10,000 of them took seconds per page).
            selected, more = await catalog.page(n, last)
        if more and n:
            request.setHeader(b"Link", next_link(self.ctx, "/v2/_catalog", n, selected[-1]).encode())
        write_json(request, {"repositories": selected})

    HEAD = GET
