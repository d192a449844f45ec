"""The web page's HTML, built with ``twisted.web.template`` tags: every
piece of text and every attribute value goes through the flattener, which
escapes it, so a repository name, tag, label or annotation holding markup
shows as text. No scripts, no inline styles (the Content-Security-Policy
forbids both); one stylesheet.

Each ``*_page`` function takes plain data (``registry.ui.views``) and a
``Page`` (URLs, the signed-in user, the stylesheet's URL) and returns the
tag tree; ``render`` flattens it to bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Sequence
from urllib.parse import quote, urlencode

from twisted.web.template import Tag, flattenString, tags

from registry.digest import Digest
from registry.manifest_types import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, Descriptor
from registry.ui.serialize import serialize
from registry.ui.views import ConfigDetail, ManifestDetail, Summary

DOCTYPE = b"<!DOCTYPE html>\n"

_TYPE_LABELS = {
    OCI_MANIFEST: "OCI image",
    OCI_INDEX: "OCI index",
    DOCKER_MANIFEST: "Docker image",
    DOCKER_LIST: "Docker manifest list",
}


class Urls:
    """The page's URLs under ``base`` (``<http.prefix>ui/``). Names and
    tags are path-safe by their grammar; they are quoted anyway."""

    def __init__(self, base: str) -> None:
        self.base = base if base.endswith("/") else base + "/"

    @staticmethod
    def _query(**params: str | int | None) -> str:
        given = {k: str(v) for k, v in params.items() if v not in (None, "")}
        return "?" + urlencode(given) if given else ""

    def home(self, q: str = "", last: str | None = None) -> str:
        return self.base + self._query(q=q, last=last)

    def repository(self, name: str, last: str | None = None, n: int | None = None) -> str:
        return f"{self.base}r/{quote(name, safe='/')}" + self._query(last=last, n=n)

    def manifest(self, name: str, reference: str | Digest) -> str:
        return f"{self.base}r/{quote(name, safe='/')}/-/manifest/{quote(str(reference), safe=':')}"

    def delete(self, name: str, tag: str | None = None, digest: Digest | None = None) -> str:
        return f"{self.base}r/{quote(name, safe='/')}/-/delete" + self._query(tag=tag, digest=str(digest) if digest else None)

    def static(self, filename: str) -> str:
        return f"{self.base}static/{filename}"


@dataclass
class Page:
    """What every page needs besides its own data."""

    urls: Urls
    stylesheet: str
    #: The signed-in user ("" when anonymous or without access control).
    user: str = ""
    #: ``host[:port]`` clients pull from (for the copyable commands).
    registry_host: str = "localhost"
    #: False when the page was served over plain HTTP (skopeo then needs
    #: ``--src-tls-verify=false``).
    secure: bool = False


# -- small pieces ---------------------------------------------------------------


def human_size(size: int | None) -> str:
    """``1.5 MB`` style (powers of 1000, as docker shows sizes); "?" for None."""
    if size is None:
        return "?"
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        value /= 1000
        if value < 1000 or unit == "PB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def size_cell(size: int | None) -> Tag:
    return tags.span(human_size(size), title=f"{size} bytes" if size is not None else "unknown", class_="size")


def type_label(media_type: str) -> Tag:
    return tags.span(_TYPE_LABELS.get(media_type, media_type), title=media_type, class_="type")


def digest_tag(d: Digest | str) -> Tag:
    """The full digest, shown shortened by the stylesheet; one click selects
    all of it for copying."""
    return tags.code(str(d), class_="digest", title=str(d))


def copy_line(text: str) -> Tag:
    """A command to copy: the whole line selects at one click."""
    return tags.pre(tags.code(text), class_="copy")


def _el(name: str, attributes: dict[str | bytes, Any], *children: Any) -> Tag:
    """``<name attributes>children</name>``: what ``tags.<name>(...)`` makes, for less."""
    return Tag(name, attributes=attributes, children=list(children))


def link(href: str, *children: Any, **attrs: str) -> Tag:
    return tags.a(*children, href=href, **attrs)


def table(headers: Sequence[str], rows: Iterable[Tag], **attrs: str) -> Tag:
    return tags.table(tags.thead(tags.tr(*[tags.th(h) for h in headers])), tags.tbody(*rows), **attrs)


def definitions(items: Iterable[tuple[str, Any]]) -> Tag:
    """A ``<dl>`` of the items whose value is not None."""
    children: list[Tag] = []
    for term, value in items:
        if value is None:
            continue
        children += [tags.dt(term), tags.dd(value)]
    return tags.dl(*children, class_="facts")


def layout(page: Page, title: str, crumbs: Sequence[tuple[str, str | None]], *body: Any) -> Tag:
    """The frame of every page: head, breadcrumb header, main."""
    trail: list[Any] = []
    for i, (text, href) in enumerate(crumbs):
        if i:
            trail.append(tags.span("/", class_="sep"))
        trail.append(link(href, text) if href else tags.span(text, class_="here"))
    header = tags.header(
        tags.nav(link(page.urls.home(), "Registry", class_="home"), tags.span("/", class_="sep") if trail else "", *trail),
        tags.span("signed in as ", tags.strong(page.user), class_="user") if page.user else "",
    )
    return tags.html(
        tags.head(
            tags.meta(charset="utf-8"),
            tags.meta(name="viewport", content="width=device-width, initial-scale=1"),
            tags.meta(name="referrer", content="no-referrer"),
            tags.title(title + " · registry"),
            tags.link(rel="stylesheet", href=page.stylesheet),
        ),
        tags.body(header, Tag("main")(*body)),  # ``tags`` predates <main>
        lang="en",
    )


async def render(tree: Tag) -> bytes:
    """The page as UTF-8 bytes, doctype first (``serialize``: the same
    bytes as ``flattenString``, without its per-element cost)."""
    return DOCTYPE + serialize(tree)


async def render_with_twisted(tree: Tag) -> bytes:
    """The page through ``flattenString`` (the reference ``render`` matches)."""
    return DOCTYPE + await flattenString(None, tree)


# -- the repository list ----------------------------------------------------------


def repositories_page(page: Page, names: list[str], more: bool, q: str, last: str | None) -> Tag:
    urls = page.urls
    search = tags.form(
        tags.label("Names starting with ", tags.input(type="search", name="q", value=q, placeholder="e.g. library/", autofocus="")),
        tags.button("Filter", type="submit"),
        link(urls.home(), "Clear", class_="clear") if q else "",
        method="get",
        action=urls.home(),
        class_="filter",
        role="search",
    )
    if names:
        listing: Any = tags.ul(*[tags.li(link(urls.repository(n), n), class_="repository") for n in names], class_="repositories")
    elif q or last:
        listing = tags.p("No repositories ", f"starting with “{q}” " if q else "", "here." if last else "", class_="empty")
    else:
        listing = tags.p("No repositories yet: push an image to see it here.", class_="empty")
    pager: list[Any] = []
    if last:
        pager.append(link(urls.home(q=q), "« First page", rel="first"))
    if more and names:
        pager.append(link(urls.home(q=q, last=names[-1]), "Next page »", rel="next"))
    return layout(
        page,
        "Repositories",
        [],
        tags.h1("Repositories"),
        search,
        tags.p(f"after “{last}”", class_="position") if last else "",
        listing,
        tags.nav(*pager, class_="pager") if pager else "",
    )


# -- one repository -------------------------------------------------------------------


def repository_page(
    page: Page,
    name: str,
    rows: list[tuple[str, Summary | None]],
    *,
    total: int,
    more: bool,
    last: str | None,
    previous: str | None,
    n: int,
    can_delete: bool,
    done: str | None,
) -> Tag:
    urls = page.urls
    body: list[Any] = [tags.h1(name, class_="name")]
    if done:
        body.append(tags.p(done, class_="notice", role="status"))
    body.append(tags.p(f"{total} tag{'s' if total != 1 else ''}", class_="count"))
    headers = ["Tag", "Digest", "Type", "Size", "Created", "Platforms"] + (["" ] if can_delete else [])
    trs = []
    # Tags are [A-Za-z0-9_.-] by their grammar: nothing to quote in a URL.
    repo_url = urls.repository(name)
    for tag, summary in rows:
        # Few elements per row, made as ``Tag`` directly (``tags.td(...)``
        # costs twice as much): a page of many tags is built and flattened quickly.
        cells: list[Tag] = [_el("td", {"class": "tag"}, _el("a", {"href": f"{repo_url}/-/manifest/{tag}"}, tag))]
        if summary is None:
            cells.append(_el("td", {"colspan": "5", "class": "broken"}, "the tag's manifest cannot be read"))
        else:
            d = str(summary.digest)
            cells += [
                _el("td", {}, _el("code", {"class": "digest", "title": d}, d)),
                _el("td", {"title": summary.media_type, "class": "type"}, _TYPE_LABELS.get(summary.media_type, summary.media_type)),
                _el("td", {"title": f"{summary.size} bytes", "class": "size"}, human_size(summary.size)),
                _el("td", {"class": "created"}, summary.created or ""),
                _el("td", {"class": "platforms"}, *[_el("span", {"class": "platform"}, p) for p in summary.platforms]),
            ]
        if can_delete:
            cells.append(_el("td", {"class": "actions"}, _el("a", {"href": f"{repo_url}/-/delete?tag={tag}", "class": "danger"}, "Delete")))
        trs.append(_el("tr", {"class": "tag-row", "data-tag": tag}, *cells))
    if rows:
        body.append(table(headers, trs, class_="tags"))
    elif total == 0:
        body.append(tags.p("This repository has no tags.", class_="empty"))
    pager: list[Any] = []
    if last is not None:
        pager.append(link(urls.repository(name, last=previous, n=n if n != DEFAULT_TAGS else None), "« Previous page", rel="prev"))
    if more and rows:
        pager.append(link(urls.repository(name, last=rows[-1][0], n=n if n != DEFAULT_TAGS else None), "Next page »", rel="next"))
    if pager:
        body.append(tags.nav(*pager, class_="pager"))
    return layout(page, name, [(name, None)], *body)


#: Tags shown per repository page unless ``n`` says otherwise.
DEFAULT_TAGS = 100


# -- one manifest --------------------------------------------------------------------


def pull_lines(page: Page, detail: ManifestDetail) -> list[Tag]:
    ref = detail.reference
    by_digest = ref == str(detail.digest)
    image = f"{page.registry_host}/{detail.name}" + (f"@{ref}" if by_digest else f":{ref}")
    tls = "" if page.secure else "--src-tls-verify=false "
    every = "--all " if detail.manifest.is_index else ""
    archive = detail.name.rsplit("/", 1)[-1] + ".tar"
    return [
        copy_line(f"docker pull {image}"),
        copy_line(f"skopeo copy {every}{tls}docker://{image} oci-archive:{archive}"),
    ]


def _annotations(values: dict[str, str] | None) -> Any:
    if not values:
        return None
    return tags.table(
        tags.tbody(*[tags.tr(tags.th(k), tags.td(v)) for k, v in sorted(values.items())]), class_="annotations"
    )


def _words(values: list[str] | None) -> Any:
    if values is None:
        return None
    return tags.code(json.dumps(values, ensure_ascii=False))


def _layers(detail: ManifestDetail) -> Tag:
    diff_ids = detail.config.diff_ids if detail.config is not None else []
    rows = []
    for i, layer in enumerate(detail.manifest.layers):
        rows.append(
            tags.tr(
                tags.td(str(i + 1)),
                tags.td(digest_tag(layer.digest)),
                tags.td(type_label(layer.media_type)),
                tags.td(size_cell(layer.size)),
                tags.td(digest_tag(diff_ids[i]) if i < len(diff_ids) else ""),
                class_="layer",
            )
        )
    return table(["#", "Digest", "Media type", "Size", "Uncompressed digest (diff_id)"], rows, class_="layers")


def _config(page: Page, config: ConfigDetail) -> list[Any]:
    out: list[Any] = [
        tags.h2("Config"),
        definitions(
            [
                ("Digest", digest_tag(config.descriptor.digest)),
                ("Media type", config.descriptor.media_type),
                ("Size", size_cell(config.descriptor.size)),
                ("Created", config.created),
                ("Platform", config.platform or None),
                ("Entrypoint", _words(config.entrypoint)),
                ("Cmd", _words(config.cmd)),
                ("Working directory", config.workdir or None),
                ("User", config.user or None),
            ]
        ),
    ]
    if config.note:
        out.append(tags.p(config.note, class_="note"))
    if config.env:
        out += [tags.h3("Environment"), tags.ul(*[tags.li(tags.code(e)) for e in config.env], class_="env")]
    if config.labels:
        out += [tags.h3("Labels"), _annotations(config.labels)]
    if config.history:
        rows = [
            tags.tr(
                tags.td(str(h.get("created", "")) if h.get("created") is not None else ""),
                tags.td(tags.code(str(h.get("created_by", ""))), class_="created-by"),
                tags.td(str(h.get("comment", "")) if h.get("comment") is not None else ""),
                tags.td("no layer" if h.get("empty_layer") else ""),
            )
            for h in config.history
        ]
        out += [tags.h3("History"), table(["Created", "Created by", "Comment", ""], rows, class_="history")]
    if config.diff_ids:
        out += [tags.h3("rootfs.diff_ids"), tags.ol(*[tags.li(digest_tag(d)) for d in config.diff_ids], class_="diff-ids")]
    if config.pretty is not None:
        out.append(tags.details(tags.summary("Config JSON"), tags.pre(config.pretty, class_="json config-json")))
    return out


def manifest_page(page: Page, detail: ManifestDetail, *, can_delete: bool) -> Tag:
    urls = page.urls
    m = detail.manifest
    name = detail.name
    shown_ref = detail.reference
    title = f"{name}@{shown_ref}" if shown_ref == str(detail.digest) else f"{name}:{shown_ref}"
    body: list[Any] = [
        tags.h1(title, class_="name"),
        definitions(
            [
                ("Digest", digest_tag(detail.digest)),
                ("Media type", tags.span(detail.media_type, class_="media-type")),
                ("Artifact type", m.artifact_type),
                ("Manifest size", size_cell(detail.body_size)),
                ("Total size", None if m.is_index else size_cell(detail.total_size)),
                ("Subject", link(urls.manifest(name, m.subject.digest), digest_tag(m.subject.digest)) if m.subject else None),
                ("Annotations", _annotations(m.annotations)),
            ]
        ),
        tags.h2("Pull"),
        *pull_lines(page, detail),
    ]
    if m.is_index:
        rows = [
            tags.tr(
                tags.td(platform or "—", class_="platform"),
                tags.td(link(urls.manifest(name, child.digest), digest_tag(child.digest))),
                tags.td(type_label(child.media_type)),
                tags.td(size_cell(child.size)),
                class_="child",
            )
            for child, platform in detail.children
        ]
        body += [tags.h2("Platforms"), table(["Platform", "Manifest", "Media type", "Manifest size"], rows, class_="children")]
    else:
        body += [tags.h2(f"Layers ({len(m.layers)})"), _layers(detail)]
        if detail.config is not None:
            body += _config(page, detail.config)
    body.append(tags.h2(f"Referrers ({len(detail.referrers)})"))
    if detail.referrers:
        rows = []
        for ref in detail.referrers:
            d = str(ref.get("digest", ""))
            rows.append(
                tags.tr(
                    tags.td(str(ref.get("artifactType") or "—"), class_="artifact-type"),
                    tags.td(link(urls.manifest(name, d), digest_tag(d))),
                    tags.td(type_label(str(ref.get("mediaType", "")))),
                    tags.td(size_cell(ref.get("size") if isinstance(ref.get("size"), int) else None)),
                    tags.td(_annotations(ref.get("annotations")) or ""),
                    class_="referrer",
                )
            )
        body.append(table(["Artifact type", "Manifest", "Media type", "Size", "Annotations"], rows, class_="referrers"))
    else:
        body.append(tags.p("No signatures, SBOMs or other artifacts refer to this manifest.", class_="empty"))
    body.append(tags.details(tags.summary("Manifest JSON"), tags.pre(detail.pretty, class_="json manifest-json")))
    if can_delete:
        body.append(
            tags.p(link(urls.delete(name, digest=detail.digest), "Delete this manifest…", class_="danger"), class_="actions")
        )
    return layout(page, title, [(name, urls.repository(name)), (shown_ref if len(shown_ref) < 40 else shown_ref[:19] + "…", None)], *body)


# -- delete -------------------------------------------------------------------------------


def delete_page(page: Page, name: str, *, tag: str | None, digest: Digest | None, csrf: str, tags_of: list[str]) -> Tag:
    urls = page.urls
    if tag is not None:
        what: list[Any] = ["Delete tag ", tags.strong(tag), " of ", tags.strong(name), "?"]
        explain = "The manifest it points at stays (and any other tags pointing at it)."
        fields = [tags.input(type="hidden", name="tag", value=tag)]
        back = urls.manifest(name, tag)
    else:
        assert digest is not None
        what = ["Delete manifest ", digest_tag(digest), " of ", tags.strong(name), "?"]
        explain = (
            "The manifest and every tag pointing at it are removed"
            + (f" ({', '.join(tags_of)})" if tags_of else "")
            + ". Its layers stay until garbage collection."
        )
        fields = [tags.input(type="hidden", name="digest", value=str(digest))]
        back = urls.manifest(name, digest)
    form = tags.form(
        tags.input(type="hidden", name="csrf", value=csrf),
        *fields,
        tags.button("Delete", type="submit", class_="danger"),
        " ",
        link(back, "Cancel"),
        method="post",
        action=urls.delete(name),
        class_="confirm",
    )
    return layout(page, "Delete", [(name, urls.repository(name)), ("delete", None)], tags.h1(*what), tags.p(explain), form)


# -- errors -------------------------------------------------------------------------------


def error_page(page: Page, status: int, heading: str, message: str) -> Tag:
    return layout(
        page,
        heading,
        [],
        tags.h1(heading),
        tags.p(message, class_="error-message"),
        tags.p(link(page.urls.home(), "All repositories")),
    )
