"""``Catalog.page``: one page of repository names in the same order as
``Catalog.repositories``, after ``last`` and under ``prefix``, listing only
the directories the page needs."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from twisted.internet.defer import ensureDeferred
from hypothesis import strategies as st

from registry.storage import paths
from registry.storage.catalog import Catalog
from registry.storage.driver import IStorageDriver
from registry.storage.factory import create_driver

# Names whose code-point order differs from a depth-first walk's: '-' and
# '.' sort before '/', '_' after it.
TRICKY = [
    "a", "a-b", "a.b", "a/b", "a/b/c", "a/b-c", "a__b", "a_b", "ab", "b", "b/a", "b0",
    "library/ubuntu", "library/ubuntu-debootstrap", "library/ubuntu/sub", "z/y/x",
]


async def make_repo(driver: IStorageDriver, name: str, marker: str = "_manifests") -> None:
    await driver.put_content(f"{paths.repository(name)}/{marker}/revisions/sha256/00/link", b"x")


async def catalog_with(names: list[str], *, blobs_only: tuple[str, ...] = (), uploads_only: tuple[str, ...] = ()) -> Catalog:
    driver = create_driver("inmemory", {})
    for name in names:
        await make_repo(driver, name)
    for name in blobs_only:
        await make_repo(driver, name, "_layers")
    for name in uploads_only:
        await make_repo(driver, name, "_uploads")
    return Catalog(driver)


def expected(names: list[str], n: int, last: str | None, prefix: str) -> tuple[list[str], bool]:
    rest = [x for x in sorted(names) if (last is None or x > last) and x.startswith(prefix)]
    return rest[:n], len(rest) > n


@pytest_twisted.ensureDeferred
async def test_pages_follow_the_catalog_order_for_every_last_and_prefix() -> None:
    catalog = await catalog_with(TRICKY, blobs_only=("blobs/only",), uploads_only=("uploads/only",))
    everything = await catalog.repositories()
    assert everything == sorted(TRICKY + ["blobs/only"])  # an upload alone is no repository
    prefixes = ["", "a", "a/", "a/b", "library/ub", "library/ubuntu/", "zz", "b/"]
    for prefix in prefixes:
        for last in [None, *everything, "a/a", "zzz"]:
            for n in (0, 1, 2, 5, 100):
                assert await catalog.page(n, last, prefix) == expected(everything, n, last, prefix), (n, last, prefix)


@pytest_twisted.ensureDeferred
async def test_walking_every_page_yields_every_name_once() -> None:
    catalog = await catalog_with(TRICKY)
    seen: list[str] = []
    last: str | None = None
    while True:
        names, more = await catalog.page(3, last)
        seen += names
        if not more:
            break
        last = names[-1]
    assert seen == sorted(TRICKY)


@pytest_twisted.ensureDeferred
async def test_empty_storage_and_bad_page_size() -> None:
    catalog = Catalog(create_driver("inmemory", {}))
    assert await catalog.page(10) == ([], False)
    with pytest.raises(ValueError):
        await catalog.page(-1)


class CountingDriver:
    """Counts ``list`` calls of the driver it wraps (everything else passes through)."""

    def __init__(self, inner: IStorageDriver) -> None:
        self.inner = inner
        self.lists = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def list(self, path: str) -> Any:
        self.lists += 1
        return self.inner.list(path)


@pytest_twisted.ensureDeferred
async def test_a_page_lists_about_n_directories_not_the_whole_tree() -> None:
    inner = create_driver("inmemory", {})
    names = [f"team{i % 7}/app{i:04d}" for i in range(700)] + [f"solo{i:04d}" for i in range(300)]
    for name in names:
        await make_repo(inner, name)
    counting = CountingDriver(inner)
    catalog = Catalog(counting)  # type: ignore[arg-type]  # a pass-through wrapper
    page, more = await catalog.page(20, "team3/app0500")
    assert (page, more) == expected(names, 20, "team3/app0500", "")
    # The top listing, the few team directories still ahead, and about
    # one listing per name on the page: nowhere near the 1,008 a full walk lists.
    assert counting.lists < 40, counting.lists
    counting.lists = 0
    page, more = await catalog.page(50, None, "team5/")
    assert (page, more) == expected(names, 50, None, "team5/")
    assert counting.lists < 60, counting.lists


@settings(max_examples=30, deadline=None)
@given(
    names=st.lists(st.from_regex(r"[ab](?:[-._/]?[ab]){0,4}", fullmatch=True), max_size=12, unique=True),
    n=st.integers(min_value=0, max_value=5),
    last=st.one_of(st.none(), st.from_regex(r"[ab][-._/ab]{0,5}", fullmatch=True)),
    prefix=st.from_regex(r"[-._/ab]{0,3}", fullmatch=True),
)
def test_pages_match_sorting_for_generated_names(names: list[str], n: int, last: str | None, prefix: str) -> None:
    from registry.reference import InvalidNameError, check_name

    valid = []
    for name in names:
        try:
            check_name(name)
        except InvalidNameError:
            continue
        valid.append(name)

    async def run() -> tuple[list[str], bool]:
        catalog = await catalog_with(valid)
        return await catalog.page(n, last, prefix)

    # The in-memory driver answers synchronously: the Deferred has fired.
    outcome: list[Any] = []
    ensureDeferred(run()).addBoth(outcome.append)
    assert outcome == [expected(valid, n, last, prefix)]
