"""Fixtures for the registry client tests: real registry processes.

``ours`` is this project's registry started as ``twistd -n registry`` (so
the tests do not depend on ``registry.app`` internals); ``reference`` is
CNCF Distribution 2.8.2 (Debian ``docker-registry``), used by the tests
marked ``clients`` and skipped (loudly) when the package is missing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
import pytest_twisted

from registry.client import RegistryClient
from tests.clients.harness import (
    MissingTool,
    Registry,
    missing_tool,
    new_workdir,
    remove_tree,
    start_our_registry,
    start_reference_registry,
)


@pytest.fixture(scope="session")
def client_root() -> Iterator[Path]:
    root = new_workdir("registry-client-tests-")
    try:
        yield root
    finally:
        remove_tree(root)


@pytest.fixture(scope="session")
def ours(client_root: Path) -> Iterator[Registry]:
    """Our registry as a real process, shared by the session."""
    registry = start_our_registry(client_root / "ours")
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def reference(client_root: Path) -> Iterator[Registry]:
    """CNCF Distribution 2.8.2 as a real process, shared by the session."""
    try:
        registry = start_reference_registry(client_root / "reference")
    except MissingTool as error:
        missing_tool(error)
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture(
    params=[
        "ours",
        pytest.param("reference", marks=pytest.mark.clients),
    ]
)
def registry(request: pytest.FixtureRequest) -> Registry:
    """Each registry in turn (the reference one only under ``-m clients``)."""
    found: Registry = request.getfixturevalue(request.param)
    return found


@pytest_twisted.async_yield_fixture
async def client(registry: Registry) -> AsyncIterator[RegistryClient]:
    """A client of ``registry`` (plain http, loopback)."""
    c = RegistryClient(registry.host)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> str:
    """A repository name unique to the test."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    return f"client/{name}"
