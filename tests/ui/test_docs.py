"""The README shows the repository page: a PNG committed under ``docs/``
(taken by ``tests/ui/test_browser.py`` with ``UI_SCREENSHOTS`` set)."""

from __future__ import annotations

import re
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_shows_a_committed_screenshot_of_the_repository_page() -> None:
    images = re.findall(r"!\[([^\]]*)\]\((docs/[^)]+\.png)\)", (ROOT / "README.md").read_text())
    assert [alt for alt, _ in images if "repository page" in alt.lower()], images
    for _, path in images:
        data = (ROOT / path).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
        width, height = struct.unpack(">II", data[16:24])
        assert width >= 800 and height >= 600, (path, width, height)
