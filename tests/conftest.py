"""Session-wide test settings.

Host-wide registry state (the deletion generation, upload lock files: see
``registry.storage.generation``) goes to a directory of this session, not
``/dev/shm``: every temporary storage root of the suite would otherwise
leave a file there. Child processes (``twistd registry``, the CLI) inherit
the variable, so they share it with the tests.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from registry.storage.generation import SHARED_DIR_ENV

_created: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    if SHARED_DIR_ENV not in os.environ:
        path = tempfile.mkdtemp(prefix="registry-test-shared-")
        os.environ[SHARED_DIR_ENV] = path
        _created.append(path)


def pytest_unconfigure(config: pytest.Config) -> None:
    for path in _created:
        shutil.rmtree(path, ignore_errors=True)
