"""From the ``auth`` section of the configuration to an access controller,
and the catalog filter that goes with an ``Identity``."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from registry.auth.htpasswd import HtpasswdAccessController
from registry.auth.interfaces import Access, IAccessController, Identity
from registry.auth.scopes import CATALOG_ACCESS
from registry.auth.token import TokenAccessController

KINDS = ("htpasswd", "token")

_HTPASSWD_KEYS = {"realm", "path"}
_TOKEN_KEYS = {"realm", "service", "issuer", "rootcertbundle", "jwks", "autoredirect", "autoredirectpath", "signingalgorithms"}


def _string(section: str, options: Mapping[str, Any], key: str, required: bool) -> str | None:
    value = options.get(key)
    if value is None or value == "":
        if required:
            raise ValueError(f"auth.{section}.{key} is required")
        return None
    if not isinstance(value, str):
        raise ValueError(f"auth.{section}.{key} must be a string, not {type(value).__name__}")
    return value


def _unknown(section: str, options: Mapping[str, Any], known: set[str]) -> None:
    extra = sorted(set(options) - known)
    if extra:
        raise ValueError(f"auth.{section}: unknown key(s) {', '.join(map(str, extra))}; known: {', '.join(sorted(known))}")


def access_controller_from_config(config: Mapping[str, Any] | None, reactor: Any = None) -> IAccessController | None:
    """The controller for an ``auth`` mapping: ``{"htpasswd": {realm,
    path}}`` or ``{"token": {realm, service, issuer, rootcertbundle, jwks,
    autoredirect, autoredirectpath, signingalgorithms}}``, exactly one.
    None for an empty or missing section (no access control). Raises
    ``ValueError`` whose message starts with the offending key
    (``auth.htpasswd.path: ...``). Loads files now: call at start-up."""
    if not config:
        return None
    if not isinstance(config, Mapping):
        raise ValueError(f"auth must be a mapping with one of {', '.join(KINDS)}")
    kinds = [k for k in config if config[k] is not None]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"auth.{unknown[0]}: unsupported access controller; choose one of {', '.join(KINDS)}")
    if len(kinds) != 1:
        raise ValueError(f"auth: configure exactly one of {', '.join(KINDS)}, not {', '.join(kinds) or 'none'}")
    kind = kinds[0]
    options = config[kind]
    if not isinstance(options, Mapping):
        raise ValueError(f"auth.{kind} must be a mapping of options")
    if kind == "htpasswd":
        _unknown(kind, options, _HTPASSWD_KEYS)
        realm = _string(kind, options, "realm", True)
        path = _string(kind, options, "path", True)
        assert realm is not None and path is not None
        return HtpasswdAccessController(realm, path, reactor=reactor)
    _unknown(kind, options, _TOKEN_KEYS)
    autoredirect = options.get("autoredirect", False)
    if not isinstance(autoredirect, bool):
        raise ValueError("auth.token.autoredirect must be true or false")
    algorithms = options.get("signingalgorithms")
    if algorithms is not None and (not isinstance(algorithms, list) or not all(isinstance(a, str) for a in algorithms)):
        raise ValueError("auth.token.signingalgorithms must be a list of algorithm names")
    realm = _string(kind, options, "realm", True)
    service = _string(kind, options, "service", True)
    issuer = _string(kind, options, "issuer", True)
    assert realm is not None and service is not None and issuer is not None
    return TokenAccessController(
        realm=realm,
        service=service,
        issuer=issuer,
        rootcertbundle=_string(kind, options, "rootcertbundle", False),
        jwks=_string(kind, options, "jwks", False),
        autoredirect=autoredirect,
        autoredirectpath=_string(kind, options, "autoredirectpath", False) or "/auth/token",
        signingalgorithms=algorithms,
    )


def filter_catalog(identity: Identity, names: Iterable[str]) -> list[str]:
    """The repository names ``identity`` may see in the catalog: all of them
    for htpasswd users and for tokens granting ``registry:catalog:*``,
    otherwise those the token grants ``pull`` on. Order is kept."""
    if identity.granted is None or identity.allows(CATALOG_ACCESS):
        return list(names)
    return [n for n in names if identity.allows(Access("repository", n, "pull"))]


__all__ = ["KINDS", "access_controller_from_config", "filter_catalog"]
