"""The catalog: every repository in the storage, found by walking
``repositories/`` one directory level at a time.

A directory is a repository when it holds ``_manifests`` or ``_layers``
(Distribution's rule). Name components never start with ``_``, so the walk
descends into every other child, which finds nested repositories such as
``a/b`` below ``a``. Only name directories are listed, never the contents of
a repository.

``page`` lists one page of names in sorted order without the full walk: a
directory's name is a lower bound of every name below it, so a heap of
directories not yet listed, keyed by name, yields the repositories in
code-point order one ``list`` call at a time, and skips the directories
that cannot hold a name after ``last`` or under ``prefix``.
"""

from __future__ import annotations

import heapq

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

    async def page(self, n: int, last: str | None = None, prefix: str = "") -> tuple[list[str], bool]:
        """Up to ``n`` repository names after ``last`` that start with
        ``prefix``, sorted, and whether another follows. Lists the top
        directory, then one directory per candidate in name order (about
        ``n`` plus the nesting above them), never the whole tree."""
        if n < 0:
            raise ValueError(f"page size must be >= 0, not {n}")
        start = paths.REPOSITORIES + "/"
        # Every entry is a directory not yet listed; its name is the
        # smallest name in its subtree (the name itself, then name/...).
        pending: list[str] = []

        def consider(names: list[str]) -> None:
            for name in names:
                if _may_hold(name, last, prefix):
                    heapq.heappush(pending, name)

        try:
            top = await self.driver.list(paths.REPOSITORIES)
        except PathNotFoundError:
            return [], False
        consider([c[len(start):] for c in top if not c.rsplit("/", 1)[-1].startswith("_")])
        found: list[str] = []
        while pending and len(found) <= n:
            name = heapq.heappop(pending)
            try:
                children = await self.driver.list(paths.repository(name))
            except PathNotFoundError:
                continue  # removed since its parent was listed
            leaves = [c.rsplit("/", 1)[-1] for c in children]
            if (
                any(leaf in _MARKERS for leaf in leaves)
                and (last is None or name > last)
                and name.startswith(prefix)
            ):
                found.append(name)
            consider([f"{name}/{leaf}" for leaf in leaves if not leaf.startswith("_")])
        return found[:n], len(found) > n


def _may_hold(name: str, last: str | None, prefix: str) -> bool:
    """Whether the subtree of directory ``name`` (``name`` and the names
    below it, ``name/...``) can hold a name after ``last`` starting with
    ``prefix``. Below ``last`` only when ``last`` does not start with
    ``name`` (then ``name/...`` sorts before ``last`` too: they differ
    within ``name``)."""
    if last is not None and name < last and not last.startswith(name):
        return False
    return name.startswith(prefix) or prefix.startswith(name + "/")
