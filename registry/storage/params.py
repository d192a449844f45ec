"""Helpers for driver factories' parameters (no imports of drivers or the factory)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from twisted.logger import Logger

_log = Logger()


def warn_unknown_params(driver: str, params: Mapping[str, Any], known: Iterable[str]) -> None:
    """Log a warning naming each key of ``params`` that is not in ``known``."""
    allowed = set(known)
    for key in params:
        if key not in allowed:
            _log.warn(
                "storage.{driver}.{key}: unknown parameter, ignored", driver=driver, key=key
            )


def param_key(driver: str, key: str) -> str:
    """The configuration key of a driver parameter, used in error messages."""
    return f"storage.{driver}.{key}"
