"""A per-blob progress display for a terminal (the ``registry-client`` command).

Each finished blob gets a permanent line (``Copying blob sha256:0123abcd4567
done``, ``... skipped: already exists``); while blobs move, one status line
below them is redrawn (at most ten times a second) with the percentage of
each blob in flight.  Not a terminal: nothing is written.
"""

from __future__ import annotations

import time
from typing import Callable, TextIO

from zope.interface import implementer

from registry.client.images import ITransferProgress
from registry.digest import Digest

_OUTCOME_TEXT = {
    "copied": "done",
    "exists": "skipped: already exists",
    "mounted": "done (mounted)",
}


def human_size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} GiB"


@implementer(ITransferProgress)
class TerminalProgress:
    """Draws on ``stream`` (a terminal); see the module docstring."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._clock = clock
        self._active: dict[Digest, list[int]] = {}
        self._last_draw = 0.0
        self._status_shown = False

    def started(self, digest: Digest, size: int) -> None:
        self._active[digest] = [0, size]
        self._draw(force=True)

    def advanced(self, digest: Digest, count: int) -> None:
        entry = self._active.get(digest)
        if entry is not None:
            entry[0] = max(0, entry[0] + count)
        self._draw()

    def finished(self, digest: Digest, outcome: str) -> None:
        entry = self._active.pop(digest, None)
        self._clear()
        size = f" ({human_size(entry[1])})" if entry is not None else ""
        self._stream.write(f"Copying blob {digest.hex[:12]}{size} {_OUTCOME_TEXT.get(outcome, outcome)}\n")
        self._draw(force=True)

    def _clear(self) -> None:
        if self._status_shown:
            self._stream.write("\r\x1b[K")
            self._status_shown = False

    def _draw(self, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        self._clear()
        if not self._active:
            self._stream.flush()
            return
        parts = []
        for digest, (done, size) in list(self._active.items())[:4]:
            percent = 100 * done // size if size else 100
            parts.append(f"{digest.hex[:12]} {percent:3d}% of {human_size(size)}")
        more = len(self._active) - 4
        line = "  ".join(parts) + (f"  (+{more} more)" if more > 0 else "")
        self._stream.write(line[:200])
        self._status_shown = True
        self._stream.flush()

    def close(self) -> None:
        """Remove the status line."""
        self._clear()
        self._stream.flush()
