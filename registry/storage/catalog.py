"""The catalog: every repository in the storage, found by walking
``repositories/`` one directory level at a time.

A directory is a repository when it holds ``_manifests`` or ``_layers``
(Distribution's rule). Name components never start with ``_``, so the walk
descends into every other child, which finds nested repositories such as
``a/b`` below ``a``. Only name directories are listed, never the contents of
a repository.
"""

from __future__ import annotations

from zope.interface import implementer

from registry.storage import paths
from registry.storage.driver import IStorageDriver, PathNotFoundError
from registry.storage.interfaces import ICatalog

_MARKERS = ("_manifests", "_layers")


@implementer(ICatalog)
class Catalog:
    """Lists repositories through a storage driver."""

    def __init__(self, driver: IStorageDriver) -> None:
        self.driver = driver

    async def name_directories(self) -> list[tuple[str, list[str]]]:
        """Every directory below ``repositories/`` that could be a repository
        name, with the names of its children: the walk never enters a
        ``_``-directory, so it costs the number of names, not of files."""
        found: list[tuple[str, list[str]]] = []
        pending = [paths.REPOSITORIES]
        prefix = paths.REPOSITORIES + "/"
        while pending:
            directory = pending.pop()
            try:
                children = await self.driver.list(directory)
            except PathNotFoundError:
                continue
            names = [child.rsplit("/", 1)[-1] for child in children]
            if directory != paths.REPOSITORIES:
                found.append((directory[len(prefix) :], names))
            pending.extend(child for child, n in zip(children, names) if not n.startswith("_"))
        return found

    async def repositories(self) -> list[str]:
        """Fire with every repository name, sorted lexically."""
        return sorted(name for name, children in await self.name_directories() if any(n in _MARKERS for n in children))

    async def exists(self, name: str) -> bool:
        """True if ``name`` is a repository (has manifests or layers)."""
        try:
            children = await self.driver.list(paths.repository(name))
        except PathNotFoundError:
            return False
        return any(child.rsplit("/", 1)[-1] in _MARKERS for child in children)
