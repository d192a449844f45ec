"""``registry.ui.serialize`` writes exactly what Twisted's flattener writes
for the page's trees (so the escaping is Twisted's), and refuses what it
does not handle."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.web.template import Tag, flattenString, slot, tags

from registry.digest import Digest
from registry.manifest_types import OCI_INDEX, OCI_MANIFEST, parse_manifest
from registry.ui import pages
from registry.ui.pages import Page, Urls
from registry.ui.serialize import serialize
from registry.ui.views import ConfigDetail, ManifestDetail, Summary
from tests.ui.content import HOSTILE, image, index, referrer

NASTY = HOSTILE + ' & "quotes" \'single\' <b>bold</b> ]]> é ✓ \u2028'


def flatten_now(tree: Any) -> bytes:
    out: list[bytes] = []
    flattenString(None, tree).addCallback(out.append)
    assert out, "the reference flattener did not finish synchronously"
    return out[0]


def every_page() -> list[Tag]:
    page = Page(Urls("/ui/"), "/ui/static/style.css", user=NASTY, registry_host=NASTY)
    d = Digest("sha256", "a" * 64)
    summary = Summary(d, OCI_INDEX, 1234567, NASTY, (NASTY, "linux/amd64"), NASTY)
    img = image("x", labels={NASTY: NASTY}, annotations={"a": NASTY})
    config = ConfigDetail(descriptor=parse_manifest(img.body, OCI_MANIFEST).config)  # type: ignore[arg-type]
    import json

    config.fill(json.loads(img.blobs[0]))
    config.pretty = NASTY
    config.note = NASTY
    config.history.append({"created": NASTY, "created_by": NASTY, "comment": NASTY, "empty_layer": True})
    detail = ManifestDetail(
        name="a/b", reference="v1", digest=d, media_type=OCI_MANIFEST, body_size=10,
        manifest=parse_manifest(img.body, OCI_MANIFEST), pretty=NASTY, config=config,
        referrers=[{"digest": str(d), "mediaType": OCI_MANIFEST, "size": 3, "artifactType": NASTY, "annotations": {NASTY: NASTY}}],
    )
    multi = index((img, {"os": "linux", "architecture": "amd64"}))
    index_detail = ManifestDetail(
        name="a/b", reference=str(d), digest=d, media_type=OCI_INDEX, body_size=10,
        manifest=parse_manifest(multi.body, OCI_INDEX), pretty=NASTY,
        children=[(parse_manifest(multi.body, OCI_INDEX).children[0], NASTY)],
    )
    sig = referrer(img, "x")
    sig_detail = ManifestDetail(name="a/b", reference="v1", digest=d, media_type=OCI_MANIFEST, body_size=1,
                                manifest=parse_manifest(sig.body, OCI_MANIFEST), pretty="{}")
    return [
        pages.repositories_page(page, ["a", NASTY], True, NASTY, NASTY),
        pages.repositories_page(page, [], False, "", None),
        pages.repository_page(page, "a/b", [("v1", summary), ("broken", None)], total=2, more=True, last="a",
                              previous=None, n=100, can_delete=True, done=NASTY),
        pages.manifest_page(page, detail, can_delete=True),
        pages.manifest_page(page, index_detail, can_delete=False),
        pages.manifest_page(page, sig_detail, can_delete=False),
        pages.delete_page(page, "a/b", tag="v1", digest=None, csrf=NASTY, tags_of=[]),
        pages.delete_page(page, "a/b", tag=None, digest=d, csrf="t", tags_of=[NASTY]),
        pages.error_page(page, 404, NASTY, NASTY),
    ]


def test_every_page_serialises_as_twisted_flattens_it() -> None:
    for tree in every_page():
        mine = serialize(tree)
        assert mine == flatten_now(tree)
        assert b"<script" not in mine


@pytest_twisted.ensureDeferred
async def test_render_and_the_twisted_reference_agree() -> None:
    for tree in every_page():
        assert await pages.render(tree) == await pages.render_with_twisted(tree)


texts = st.text(alphabet=st.sampled_from(list("ab<>&\"' é✓\n")), max_size=8)
names = st.sampled_from(["div", "p", "br", "img", "input", "span", "td", "meta", "a"])


def trees(depth: int = 3) -> st.SearchStrategy[Any]:
    leaf = texts
    if depth == 0:
        return leaf
    sub = trees(depth - 1)
    tag = st.builds(
        lambda name, attrs, children: Tag(name, attributes=attrs, children=children),
        names,
        st.dictionaries(st.sampled_from(["class", "title", "href", "data-x"]), texts, max_size=3),
        st.lists(sub, max_size=3),
    )
    return st.one_of(leaf, tag, st.lists(sub, max_size=3))


@settings(max_examples=200, deadline=None)
@given(trees())
def test_generated_trees_serialise_as_twisted_flattens_them(tree: Any) -> None:
    assert serialize(tree) == flatten_now(tree)


def test_what_it_does_not_handle_is_refused() -> None:
    for bad in (tags.p(slot("x")), tags.p(render="thing"), tags.p(3), tags.p(title=tags.b("x"))):
        with pytest.raises(TypeError):
            serialize(bad)
