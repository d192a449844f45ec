"""Run ``tests.auth.tokenserver.TokenServer`` as a process of its own, for
the real-client tests (dockerd, skopeo and podman fetch tokens themselves,
so the token server must answer while the test process waits on them).

``python -m tests.clients.tokenserver_main SETTINGS.json`` reads::

    {"key": "signer.key", "chain": "signer-chain.pem", "alg": "ES256",
     "issuer": "...", "users": {"alice": "pw"},
     "grants": {"alice": [["repository", "team/*", ["pull", "push"]]]},
     "port_file": "port"}

(``key``: the signing key, PEM; ``chain``: its certificate then the
intermediates, PEM, sent as the JWT's ``x5c``; user ``""`` holds anonymous
grants), listens on a free port of 127.0.0.1 and writes the port number to
``port_file`` once listening (written to a temporary name and renamed, so a
reader never sees half of it). The token URL is
``http://127.0.0.1:<port>/token``. It runs until SIGTERM.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.auth.pki import Signer
from tests.auth.tokenserver import Grant, TokenServer


def build(settings: dict[str, Any]) -> TokenServer:
    """The token server ``settings`` describe (see the module docstring)."""
    key = serialization.load_pem_private_key(Path(settings["key"]).read_bytes(), password=None)
    chain = x509.load_pem_x509_certificates(Path(settings["chain"]).read_bytes())
    grants = {
        user: [Grant(rtype, pattern, tuple(actions)) for rtype, pattern, actions in items]
        for user, items in settings["grants"].items()
    }
    return TokenServer(
        Signer(key, settings["alg"], chain),
        users=settings["users"],
        grants=grants,
        issuer=settings["issuer"],
    )


def main(argv: list[str]) -> None:
    settings = json.loads(Path(argv[1]).read_text())
    root = Resource()
    root.putChild(b"token", build(settings))
    port_file = Path(settings["port_file"])

    def listening(port: Any) -> None:
        partial = port_file.with_name(port_file.name + ".partial")
        partial.write_text(str(port.getHost().port))
        os.replace(partial, port_file)

    def failed(failure: Any) -> None:
        print(f"token server cannot listen: {failure.getErrorMessage()}", file=sys.stderr)
        reactor.stop()

    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    endpoint.listen(Site(root)).addCallbacks(listening, failed)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv)
