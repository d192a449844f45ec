"""Parsing the ``Authorization`` header's scheme and credentials, shared by
both controllers. Pure functions that raise ``ValueError`` with a message a
client's user can act on; the header size bound is checked first."""

from __future__ import annotations

import base64
import binascii

from registry.auth.interfaces import MAX_AUTHORIZATION_BYTES


class MalformedCredentials(ValueError):
    """The Authorization header is present but cannot be used."""


def split_authorization(value: bytes) -> tuple[str, bytes]:
    """(lower-case scheme, the rest with surrounding spaces removed).
    Raises ``MalformedCredentials`` for an oversized or non-ASCII header."""
    if len(value) > MAX_AUTHORIZATION_BYTES:
        raise MalformedCredentials(f"the Authorization header is longer than {MAX_AUTHORIZATION_BYTES} bytes")
    try:
        value.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedCredentials("the Authorization header is not ASCII") from None
    scheme, _, rest = value.strip().partition(b" ")
    return scheme.decode("ascii").lower(), rest.strip()


def parse_basic(rest: bytes) -> tuple[str, bytes]:
    """(user, password) from the part of a ``Basic`` header after the
    scheme. The user name is UTF-8; the password stays bytes (bcrypt
    compares bytes). Raises ``MalformedCredentials``."""
    try:
        raw = base64.b64decode(rest, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedCredentials("the Basic credentials are not valid base64") from None
    user_bytes, sep, password = raw.partition(b":")
    if not sep:
        raise MalformedCredentials("the Basic credentials have no ':' between user name and password")
    try:
        user = user_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedCredentials("the Basic user name is not UTF-8") from None
    if not user:
        raise MalformedCredentials("the Basic credentials have an empty user name")
    return user, password
