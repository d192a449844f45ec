"""``GET|HEAD /v2/<name>/_registry/layers/<digest>``: what verified pushes
(``validation.manifests.verifylayers``, ``registry.storage.verify``)
recorded about a layer blob of the repository, as JSON::

    {"digest": "sha256:...", "diffID": "sha256:...", "tarsum": "tarsum.v1+sha256:...",
     "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "compression": "gzip",
     "size": 123456}

(``size``: uncompressed bytes). Read-only; pull access to the repository.
The path cannot collide with the distribution-spec's routes: repository
name components never start with ``_``, so ``<name>/_registry/...`` is no
spec path. 404 ``BLOB_UNKNOWN`` when the blob is not in the repository or
nothing was recorded for it (no manifest using it was verified);
405 ``UNSUPPORTED`` when verification is off on this registry.
"""

from __future__ import annotations

from registry import errors
from registry.digest import Digest
from registry.errors import RegistryError
from registry.http import RegistryRequest
from registry.resources.base import write_json
from registry.resources.context import Context
from registry.storage.verify import COMPRESSIONS


class LayerInfoResource:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def GET(self, request: RegistryRequest, name: str, digest: str) -> None:
        request.log_fields.update(repository=name, digest=digest)
        verifier = self.ctx.layers
        if verifier is None:
            raise RegistryError(
                errors.UNSUPPORTED,
                "layer verification is off on this registry (validation.manifests.verifylayers): nothing is recorded",
            )
        d = Digest.parse(digest)
        if not await self.ctx.model.blobs.descriptors.is_linked(name, d):
            raise RegistryError(
                errors.BLOB_UNKNOWN, f"blob {d} is not known in repository {name!r}", {"digest": str(d)}
            )
        for compression in COMPRESSIONS:
            info = await verifier.recorded(d, compression)
            if info is not None and info.error is None:
                doc = {
                    "digest": info.digest,
                    "diffID": info.diff_id,
                    "tarsum": info.tarsum,
                    "mediaType": info.media_type,
                    "compression": info.compression,
                    "size": info.size,
                }
                write_json(request, doc)
                return
        raise RegistryError(
            errors.BLOB_UNKNOWN,
            f"nothing is recorded about blob {d} as a layer: it is verified when a manifest using it as a "
            "layer is pushed with validation.manifests.verifylayers on",
            {"digest": str(d)},
        )

    HEAD = GET
