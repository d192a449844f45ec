"""Serialising the page's ``twisted.web.template`` tag trees to bytes, fast.

``twisted.web.template.flattenString`` handles renderers, slots and
Deferreds through a generator per element, which costs about a second for a
repository page of 1,000 tags. The pages here are plain trees of ``Tag``,
``str`` and lists (no renderers, slots or Deferreds), so ``serialize`` walks
them in one loop with the same escaping as Twisted's flattener: text
``&<>``, attribute values ``&<>"``, void elements as ``<x />``.
``tests/ui/test_serialize.py`` checks the output is byte for byte what
``flattenString`` gives. Anything else in a tree (a renderer, a slot, a
number) is a programming error: ``TypeError``.

Text from JSON can hold what UTF-8 cannot encode (``"\\ud800"``, a lone
surrogate, is valid JSON): ``flattenString`` fails on it, ``serialize``
writes U+FFFD in its place, so one odd label cannot fail a whole page.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.web.template import Tag
from twisted.web._stan import voidElements

_SURROGATE = re.compile("[\ud800-\udfff]")


def _text(data: str) -> str:
    return data.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _attribute(data: str) -> str:
    return data.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def serialize(root: Any) -> bytes:
    """``root`` (a ``Tag``, ``str`` or list of them) as UTF-8 HTML."""
    out: list[str] = []
    _walk(root, out)
    text = "".join(out)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text).encode("utf-8")


def _walk(node: Any, out: list[str]) -> None:
    if isinstance(node, str):
        out.append(_text(node))
    elif isinstance(node, Tag):
        if node.render is not None or node.slotData is not None:
            raise TypeError("serialize takes plain tag trees: no renderers or slot data")
        if not node.tagName:
            for child in node.children:
                _walk(child, out)
            return
        name = node.tagName if isinstance(node.tagName, str) else node.tagName.decode("ascii")
        out.append("<" + name)
        for key, value in node.attributes.items():
            if not isinstance(value, str):
                raise TypeError(f"attribute {key!r} of <{name}> is {type(value).__name__}, not str")
            out.append(f' {key if isinstance(key, str) else key.decode("ascii")}="{_attribute(value)}"')
        if node.children or name not in voidElements:
            out.append(">")
            for child in node.children:
                _walk(child, out)
            out.append(f"</{name}>")
        else:
            out.append(" />")
    elif isinstance(node, (list, tuple)):
        for child in node:
            _walk(child, out)
    else:
        raise TypeError(f"cannot serialise {type(node).__name__} in a page")
