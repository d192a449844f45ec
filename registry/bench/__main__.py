"""Command line of the benchmarks: ``python -m registry.bench <section> [--json] [--mib N]``.

Dispatches to ``registry.bench.<section>.run(args)`` (see the package
docstring for the contract); ``all`` runs every known section whose module
exists.  Exit status 0 when every section that ran finished, 1 when one
raised, 2 for a usage error or a named section that does not exist.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import traceback
from typing import Any

from registry.bench import SECTIONS


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m registry.bench",
        description="Run the registry's benchmarks and print their figures.",
    )
    parser.add_argument("section", choices=SECTIONS + ("all",), help="what to measure")
    parser.add_argument("--json", action="store_true", help="print one JSON object of all figures at the end")
    parser.add_argument(
        "--mib", type=int, default=None, metavar="N",
        help="data volume per measurement in MiB (default: each section's own, 256 for hashing)",
    )
    args, extra = parser.parse_known_args(argv)
    if args.mib is not None and args.mib <= 0:
        parser.error("--mib must be positive")
    args.extra = extra
    return args


def _section_exists(name: str) -> bool:
    return importlib.util.find_spec("registry.bench." + name) is not None


def main(argv: list[str] | None = None) -> int:
    """Run the requested sections; return the process exit status."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    wanted = list(SECTIONS) if args.section == "all" else [args.section]
    figures: dict[str, Any] = {}
    status = 0
    for name in wanted:
        if not _section_exists(name):
            print(f"{name}: not available yet (no module registry.bench.{name})", flush=True)
            figures[name] = {"unavailable": f"no module registry.bench.{name}"}
            if args.section != "all":
                status = 2
            continue
        print(f"== {name}", flush=True)
        try:
            module = importlib.import_module("registry.bench." + name)
            figures[name] = module.run(args)
        except Exception as e:  # one broken section must not hide the others' figures
            traceback.print_exc()
            print(f"{name}: FAILED: {e!r}", flush=True)
            figures[name] = {"error": repr(e)}
            status = 1
        sys.stdout.flush()
    if args.json:
        print(json.dumps(figures, indent=2, sort_keys=True, default=str))
    return status


if __name__ == "__main__":
    sys.exit(main())
