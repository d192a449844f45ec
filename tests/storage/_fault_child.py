"""Child process for test_filesystem_faults.py: writes to a filesystem store
forever, reporting each finished step on stdout, until it is SIGKILLed.

``python -m tests.storage._fault_child put <root>``: ``put_content`` of
alternating versions (``versions()``) over ``/obj``.
``python -m tests.storage._fault_child writer <root>``: writers committing
``/objs/<n>`` and a resumable upload ``/up/data`` appended, closed and
reopened in 1 MiB steps.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react

from registry.storage.factory import create_driver
from tests.storage.conformance import MiB, pattern

CHUNK = 64 * 1024
OBJECT_SIZE = 3 * MiB + 5
UPLOAD_STEP = MiB + 3
UPLOAD_MAX = 200 * UPLOAD_STEP


def versions() -> list[bytes]:
    """The contents the put child cycles through (distinct sizes and bytes)."""
    return [pattern(2 * MiB + 1000 * i, seed=500 + i) for i in range(4)]


def object_content(n: int) -> bytes:
    """What the writer child commits at ``/objs/<n>``."""
    return pattern(OBJECT_SIZE, seed=1000 + n)


UPLOAD_SEED = 77


def upload_bytes(start: int, end: int) -> bytes:
    """Bytes ``start:end`` of the stream the writer child appends to
    ``/up/data`` (``pattern(UPLOAD_MAX, UPLOAD_SEED)``, without building it)."""
    period = 64 * 1024  # pattern() repeats with this period
    skip = start % period
    return pattern(skip + end - start, seed=UPLOAD_SEED)[skip:]


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def run_put(driver: Any) -> None:
    contents = versions()
    await driver.put_content("/obj", contents[0])
    say("ready")
    i = 1
    while True:
        await driver.put_content("/obj", contents[i % len(contents)])
        say(f"put {i % len(contents)}")
        i += 1


async def run_writer(driver: Any) -> None:
    writer = await driver.writer("/up/data")
    await writer.close()
    say("ready")
    n = 0
    offset = 0
    while offset + UPLOAD_STEP <= UPLOAD_MAX:
        content = object_content(n)
        w = await driver.writer(f"/objs/{n}")
        for start in range(0, len(content), CHUNK):
            await w.write(content[start : start + CHUNK])
        await w.commit()
        say(f"committed {n}")
        n += 1
        up = await driver.writer("/up/data", append=True)
        step = upload_bytes(offset, offset + UPLOAD_STEP)
        for start in range(0, UPLOAD_STEP, CHUNK):
            await up.write(step[start : start + CHUNK])
        offset += UPLOAD_STEP
        await (up.commit() if n % 2 else up.close())
        say(f"closed {offset}")
    say("done")


def main(reactor: Any, mode: str, root: str) -> Any:
    driver = create_driver("filesystem", {"rootdirectory": root}, reactor)
    return ensureDeferred(run_put(driver) if mode == "put" else run_writer(driver))


if __name__ == "__main__":
    react(main, sys.argv[1:3])
