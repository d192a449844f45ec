"""Repository name and tag grammar of the distribution spec. Pure functions."""

from __future__ import annotations

import re

# One path component: lowercase alphanumerics separated by '.', '_', '__' or '-'+.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
NAME_MAX_LENGTH = 255


class InvalidNameError(ValueError):
    """A repository name is not valid (the message says why)."""


class InvalidTagError(ValueError):
    """A tag is not valid (the message says why)."""


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid repository name, else raise ``InvalidNameError``."""
    if not name:
        raise InvalidNameError("repository name is empty")
    if len(name) > NAME_MAX_LENGTH:
        raise InvalidNameError(f"repository name is {len(name)} characters long; the limit is {NAME_MAX_LENGTH}")
    if not NAME_RE.match(name):
        raise InvalidNameError(
            f"invalid repository name {name[:300]!r}: components of lowercase letters and digits "
            "separated by '.', '_', '__' or '-', joined by '/'"
        )
    return name


def check_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag, else raise ``InvalidTagError``."""
    if not TAG_RE.match(tag):
        raise InvalidTagError(
            f"invalid tag {tag[:200]!r}: 1 to 128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'"
        )
    return tag
