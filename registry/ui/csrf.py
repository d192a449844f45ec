"""CSRF tokens for the page's forms (double-submit, signed).

A browser gets a random nonce in an ``HttpOnly; SameSite=Strict`` cookie
scoped to the page's path. Every form carries ``HMAC(secret, nonce, user)``;
a POST is accepted only when its cookie's nonce and the signed-in user give
the same token. A page on another site can neither read the token (same
origin policy) nor make the browser send the cookie with its POST
(``SameSite=Strict``), nor forge a token without the secret; a token taken
from one user's page does not work for another user.

The secret is ``http.secret`` when configured (instances behind one load
balancer must share it), otherwise random per start: the worker processes
of one registry get the same one from their supervisor
(``registry.workers``), so a token from one worker's page is good at all.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from typing import Any

COOKIE = b"registry_ui_csrf"
_NONCE_RE = re.compile(rb"^[0-9a-f]{32}$")


class CSRF:
    """Issues and checks the tokens of one registry."""

    def __init__(self, secret: bytes | None, path: str) -> None:
        self.secret = secret or os.urandom(32)
        #: The cookie's path (the page's base, ``/ui/``).
        self.path = path

    def _nonce(self, request: Any) -> bytes | None:
        value = request.getCookie(COOKIE)
        if value is not None and _NONCE_RE.match(value):
            return bytes(value)
        return None

    def _sign(self, nonce: bytes, user: str) -> str:
        return hmac.new(self.secret, b"registry-ui-csrf\0" + nonce + b"\0" + user.encode("utf-8"), hashlib.sha256).hexdigest()

    def token(self, request: Any, user: str) -> str:
        """The token for the forms of a page served to ``request`` (setting
        the cookie when the browser has none yet)."""
        nonce = self._nonce(request)
        if nonce is None:
            nonce = os.urandom(16).hex().encode("ascii")
            request.addCookie(
                COOKIE, nonce, path=self.path, httpOnly=True, sameSite="strict", secure=bool(request.isSecure())
            )
        return self._sign(nonce, user)

    def check(self, request: Any, user: str, submitted: str | None) -> bool:
        """True when ``submitted`` is the token of ``request``'s cookie and ``user``."""
        nonce = self._nonce(request)
        if nonce is None or not submitted:
            return False
        return hmac.compare_digest(self._sign(nonce, user), submitted)
