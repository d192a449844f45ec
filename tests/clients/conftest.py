"""Session fixtures for the real-client tests: daemons, clients, registries.

Each fixture lives in its own temporary directory, removed at the end of the
session together with every process it started.  A fixture whose Debian
package is missing skips its tests with a reason naming the package
(``scripts/install-system-deps.sh`` installs them all); under ``CI=true``
it fails them instead, so a green CI run means the real clients ran.

``registry_under_test`` is the registry the client tests talk to: ours
(``twistd -n registry``) by default, CNCF Distribution 2.8 when the
environment has ``REGISTRY_UNDER_TEST=reference``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator, NoReturn

import pytest

from tests.clients.harness import (
    DockerDaemon,
    MissingTool,
    Podman,
    Registry,
    Skopeo,
    SystemLeftovers,
    new_workdir,
    remove_tree,
    start_our_registry,
    missing_tool,
    start_reference_registry,
)

REGISTRY_KINDS = ("ours", "reference")


def _skip_missing(error: MissingTool) -> NoReturn:
    missing_tool(error)  # skips loudly; fails under CI=true


@pytest.fixture(scope="session")
def clients_root() -> Iterator[Path]:
    """One temp directory holding every client fixture's state; removed at the end.

    Files the clients create outside it (see ``SYSTEM_LEFTOVERS``) are removed
    too, when the session created them.
    """
    leftovers = SystemLeftovers()
    root = new_workdir("registry-clients-")
    try:
        yield root
    finally:
        remove_tree(root)
        leftovers.remove()


@pytest.fixture(scope="session")
def dockerd(clients_root: Path) -> Iterator[DockerDaemon]:
    """A private docker daemon on vfs storage, shared by the whole session."""
    try:
        daemon = DockerDaemon(clients_root / "docker")
    except MissingTool as error:
        _skip_missing(error)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def skopeo(clients_root: Path) -> Skopeo:
    """skopeo with private policy/registries configuration."""
    try:
        return Skopeo(clients_root / "skopeo")
    except MissingTool as error:
        _skip_missing(error)


@pytest.fixture(scope="session")
def podman(clients_root: Path) -> Iterator[Podman]:
    """Root podman on private vfs storage."""
    try:
        client = Podman(clients_root / "podman")
    except MissingTool as error:
        _skip_missing(error)
    try:
        yield client
    finally:
        client.stop()


@pytest.fixture(scope="session")
def reference_registry(clients_root: Path) -> Iterator[Registry]:
    """CNCF Distribution 2.8.2 (Debian ``docker-registry``) on a free port."""
    try:
        registry = start_reference_registry(clients_root / "reference-registry")
    except MissingTool as error:
        _skip_missing(error)
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def our_registry(clients_root: Path) -> Iterator[Registry]:
    """This project's registry as a real ``twistd -n registry`` process."""
    registry = start_our_registry(clients_root / "our-registry")
    try:
        yield registry
    finally:
        registry.stop()


def registry_kind() -> str:
    """``ours`` or ``reference``, from ``REGISTRY_UNDER_TEST`` (default ``ours``)."""
    kind = os.environ.get("REGISTRY_UNDER_TEST", "ours").strip() or "ours"
    if kind not in REGISTRY_KINDS:
        raise pytest.UsageError(
            f"REGISTRY_UNDER_TEST={kind!r}: expected one of {', '.join(REGISTRY_KINDS)}"
        )
    return kind


@pytest.fixture(scope="session")
def registry_under_test(request: pytest.FixtureRequest) -> Registry:
    """The registry the client tests run against (see module docstring)."""
    name = "reference_registry" if registry_kind() == "reference" else "our_registry"
    registry: Registry = request.getfixturevalue(name)
    return registry


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> str:
    """A repository name unique to the test: ``clients/<test name>``."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    return f"clients/{name}"


@pytest.fixture
def scratch(clients_root: Path, request: pytest.FixtureRequest) -> Path:
    """A directory for one test's files (inside the session's temp dir)."""
    name = re.sub(r"[^a-zA-Z0-9]+", "-", request.node.name).strip("-")
    path = clients_root / "tests" / name
    path.mkdir(parents=True, exist_ok=True)
    return path
