"""The import direction of ``/work/shared/ARCHITECTURE.md``'s layers, checked
over every ``import`` in ``registry/`` (module level, inside functions and
under ``TYPE_CHECKING``): the data model knows nothing of HTTP or the
application, a driver knows nothing of the data model, and the client
library never imports storage.  A new upward import fails here, naming the
file and line."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: What each part may never import (module prefixes).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    # Layer 4 (and 3 below it): no HTTP, resources or application.
    "registry.storage": (
        "registry.resources", "registry.http", "registry.app", "registry.tap", "registry.workers",
        "registry.cli", "registry.ui", "registry.auth", "registry.observe", "registry.proxy",
        "registry.client", "registry.config",
    ),
    # Layer 3: drivers know paths and bytes, not the data model nor the factory.
    "registry.storage.drivers": (
        "registry.storage.model", "registry.storage.blobs", "registry.storage.uploads",
        "registry.storage.manifests", "registry.storage.tags", "registry.storage.catalog",
        "registry.storage.cache", "registry.storage.gc", "registry.storage.check", "registry.storage.factory",
    ),
    # Layer 5: resources do not build the application.
    "registry.resources": ("registry.app", "registry.tap", "registry.workers", "registry.cli", "registry.config"),
    # The client library depends only on the protocol.
    "registry.client": ("registry.storage", "registry.resources", "registry.app", "registry.http"),
}

#: Known exceptions, each with its reason (see the issue 9 note).
ALLOWED = {
    # gc_schedule_service(config: GCConfig, ...): a config-to-service adapter
    # that belongs beside app.purge_service; config.py imports nothing of
    # storage, so there is no cycle.
    ("registry/storage/gcservice.py", "registry.config"),
}


def _module(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, root: Path = ROOT) -> list[tuple[str, int]]:
    module = _module(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((name, node.lineno))
            found += [(f"{name}.{alias.name}", node.lineno) for alias in node.names]
    return found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(root: Path = ROOT) -> list[str]:
    out = []
    for path in sorted((root / "registry").rglob("*.py")):
        module = _module(path, root)
        rel = str(path.relative_to(root))
        parts = [(part, forbidden) for part, forbidden in FORBIDDEN.items() if _under(module, part)]
        if not parts:
            continue
        imports = _imports(path, root)
        for part, forbidden in parts:
            for name, line in imports:
                for prefix in forbidden:
                    if _under(name, prefix) and (rel, prefix) not in ALLOWED:
                        out.append(f"{rel}:{line} imports {name} ({part} must not import {prefix})")
    return sorted(set(out))


def test_layers_import_only_downwards() -> None:
    assert violations() == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    # The walker finds function-level and relative imports (so the test above can fail).
    probe = tmp_path / "registry" / "storage" / "drivers" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("def f():\n    from ...resources import router\n    import registry.http\n    from .. import blobs\n")
    found = violations(tmp_path)
    assert any("registry.resources" in v and ":2 " in v for v in found), found
    assert any("registry.http" in v and ":3 " in v for v in found), found
    assert any("registry.storage.blobs" in v and ":4 " in v for v in found), found
