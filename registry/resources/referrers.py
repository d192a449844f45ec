"""``GET /v2/<name>/referrers/<digest>``: an OCI image index of the
manifests whose ``subject`` is ``<digest>``, optionally filtered by
``artifactType`` (then ``OCI-Filters-Applied: artifactType``).

As the distribution-spec asks, this never answers 404: an unknown
repository or a digest nothing refers to gives an empty index.
"""

from __future__ import annotations

from registry.digest import Digest
from registry.http import RegistryRequest
from registry.manifest_types import OCI_INDEX
from registry.resources.base import write_json
from registry.resources.context import Context, query_values


class ReferrersResource:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def GET(self, request: RegistryRequest, name: str, digest: str) -> None:
        subject = Digest.parse(digest)
        request.log_fields.update(repository=name, digest=str(subject))
        descriptors = await self.ctx.model.manifests.referrers(name, subject)
        wanted = [v for v in query_values(request).get("artifactType", []) if v]
        if wanted:
            descriptors = [d for d in descriptors if d.get("artifactType") in wanted]
            request.setHeader(b"OCI-Filters-Applied", b"artifactType")
        write_json(
            request,
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors},
            content_type=OCI_INDEX,
        )

    HEAD = GET
