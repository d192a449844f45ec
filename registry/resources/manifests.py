"""``PUT|GET|HEAD|DELETE /v2/<name>/manifests/<reference>`` (a tag or a
digest).

PUT bodies are buffered up to ``MANIFEST_MAX`` bytes; a larger body is
answered 413 ``MANIFEST_INVALID`` without being stored.
GET and HEAD serve the exact bytes pushed with their media type, after
checking the client's ``Accept`` header lines (all of them).
"""

from __future__ import annotations

import io

from registry import errors
from registry.digest import Digest, DigestError, sha256_digest
from registry.errors import RegistryError
from registry.http import LimitedBody, RegistryRequest
from registry.manifest_types import is_acceptable, media_type_of, parse_manifest
from registry.reference import InvalidTagError, check_tag
from registry.resources.base import empty_response
from registry.resources.context import SMALL_BODY, Context

MANIFEST_MAX = 4 * 1024 * 1024


def parse_reference(reference: str) -> tuple[str | None, Digest | None]:
    """``(tag, None)`` or ``(None, digest)``; raises ``InvalidTagError`` /
    ``DigestError`` for a reference that is neither."""
    if ":" in reference:
        return None, Digest.parse(reference)
    return check_tag(reference), None


def lookup_reference(name: str, reference: str) -> tuple[str | None, Digest | None]:
    """``parse_reference`` for reads: a reference that is neither a valid tag
    nor a valid digest names no manifest that could ever exist, so it is
    unknown (404 ``MANIFEST_UNKNOWN``, as the spec's pull workflow and
    Distribution answer), not a client error; writes keep their 400."""
    try:
        return parse_reference(reference)
    except (InvalidTagError, DigestError) as e:
        raise RegistryError(
            errors.MANIFEST_UNKNOWN,
            f"manifest {reference[:200]!r} of {name!r} is unknown: it is neither a valid tag nor a valid digest ({e})",
            {"name": name, "reference": reference[:200]},
        ) from None


#: Media types remembered by manifest digest (a digest's bytes never change).
MEDIA_TYPES_KEPT = 10_000


class ManifestResource:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._media_types: dict[Digest, str] = {}

    def _media_type(self, d: Digest, body: bytes) -> str:
        media_type = self._media_types.get(d)
        if media_type is None:
            media_type = media_type_of(body)
            if len(self._media_types) >= MEDIA_TYPES_KEPT:
                self._media_types.clear()
            self._media_types[d] = media_type
        return media_type

    def body_handling(
        self, request: RegistryRequest, method: bytes, params: dict[str, str], query: dict[str, list[str]], length: int | None
    ) -> object:
        if method == b"PUT":
            return LimitedBody(
                MANIFEST_MAX,
                RegistryError(
                    errors.MANIFEST_INVALID,
                    f"the manifest is larger than this registry accepts ({MANIFEST_MAX} bytes); "
                    "split a large index or move data out of annotations",
                    status=413,
                ),
            )
        return LimitedBody(SMALL_BODY)

    def _target(self, name: str, d: Digest, body: bytes, media_type: str, tag: str | None) -> dict[str, object]:
        from registry.observe.notifications import manifest_references, manifest_target

        url = self.ctx.url(f"/v2/{name}/manifests/{d}")
        return manifest_target(
            name, str(d), media_type, len(body), url, tag, lambda: manifest_references(body, media_type)
        )

    async def GET(self, request: RegistryRequest, name: str, reference: str) -> None:
        request.log_fields.update(repository=name, reference=reference)
        tag, digest = lookup_reference(name, reference)
        model = self.ctx.model
        d = digest if digest is not None else await model.tags.resolve(name, reference)
        body = await model.manifests.get(name, d)
        media_type = self._media_type(d, body)
        accept = request.all_header_values(b"accept")
        if not is_acceptable(media_type, accept):
            raise RegistryError(
                errors.MANIFEST_UNKNOWN,
                f"manifest {reference!r} of {name!r} is a {media_type}, which the request's Accept header "
                f"does not allow ({', '.join(accept)[:300]}); add {media_type} to Accept to fetch it",
                {"name": name, "reference": reference, "mediaType": media_type},
            )
        digest_text = str(d)
        request.setHeader(b"Content-Type", media_type.encode())
        request.setHeader(b"Content-Length", str(len(body)).encode())
        request.setHeader(b"Docker-Content-Digest", digest_text.encode())
        request.setHeader(b"ETag", f'"{digest_text}"'.encode())
        if self.ctx.events is not None:
            # A HEAD is a pull too, as in Distribution: docker resolves a tag
            # with HEAD, so that event is the one naming the tag pulled.
            self.ctx.notify(request, "pull", self._target(name, d, body, media_type, tag))
        if request.method != b"HEAD":
            request.write(body)

    HEAD = GET

    async def PUT(self, request: RegistryRequest, name: str, reference: str) -> None:
        self.ctx.check_writable()
        request.log_fields.update(repository=name, reference=reference)
        tag, digest = parse_reference(reference)
        content = request.content
        assert isinstance(content, io.BytesIO)  # body_handling gave PUT a LimitedBody buffer
        body = content.getvalue()
        content_type = request.getHeader(b"content-type")
        manifest = parse_manifest(body, content_type.decode("latin-1") if content_type else None)
        actual = sha256_digest(body)
        if digest is not None and digest != actual:
            raise RegistryError(
                errors.DIGEST_INVALID,
                f"the manifest body has digest {actual}, not the {digest} in the URL; "
                "push the exact bytes whose digest you name (no re-serialisation)",
                {"expected": str(digest), "actual": str(actual)},
            )
        await self.ctx.model.manifests.put(name, body, manifest, actual, tag)
        self.ctx.notify(request, "push", self._target(name, actual, body, manifest.media_type, tag))
        headers = {
            "Location": self.ctx.url(f"/v2/{name}/manifests/{actual}"),
            "Docker-Content-Digest": str(actual),
        }
        if manifest.subject is not None:
            headers["OCI-Subject"] = str(manifest.subject.digest)
        empty_response(request, 201, headers)

    async def DELETE(self, request: RegistryRequest, name: str, reference: str) -> None:
        self.ctx.check_delete()
        tag, digest = parse_reference(reference)
        request.log_fields.update(repository=name, reference=reference)
        if tag is not None:
            await self.ctx.model.tags.untag(name, tag)
            self.ctx.notify(request, "delete", {"repository": name, "tag": tag})
            empty_response(request, 202)
            return
        assert digest is not None
        await self.ctx.model.manifests.delete(name, digest)
        self.ctx.notify(request, "delete", {"repository": name, "digest": str(digest)})
        empty_response(request, 202, {"Docker-Content-Digest": str(digest)})
