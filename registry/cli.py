"""The ``registry`` command (Distribution's command names)::

    registry serve [--workers N] CONFIG
    registry garbage-collect [--dry-run] [--delete-untagged] [--grace DURATION] [--json] CONFIG
    registry check [--repair] [--upload-age DURATION] [--json] CONFIG
    registry purge-uploads [--older-than DURATION] [--dry-run] CONFIG

Every command but ``serve`` builds the storage driver the configuration
names and works on it directly, so it may run while the registry serves the
same storage (see ``registry.storage.gc`` for why garbage collection is
safe then). Exit status: 0 done (``check``: nothing wrong, or everything
repaired), 1 a failure or, for ``check``, problems left, 2 a usage or
configuration error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import Any, Awaitable, Callable, Sequence, TextIO

from registry.config import Config, ConfigError, load_config_file, parse_go_duration

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A problem with the command line or the configuration (exit status 2)."""


class ProgressBar:
    """A one-line progress bar on a terminal; silent when ``stream`` is not one."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.width = width
        self._phase = ""
        self._last = 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        finished = total > 0 and done >= total
        if phase == self._phase and not finished and now - self._last < 0.1:
            return
        if phase != self._phase and self._phase:
            self.stream.write("\n")
        self._phase, self._last = phase, now
        filled = int(self.width * done / total) if total else self.width
        self.stream.write(f"\r{phase}: [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._phase:
            self.stream.write("\n")
            self.stream.flush()
            self._phase = ""


def _duration(option: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = parse_go_duration(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{option}: {e}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{option}: a duration cannot be negative, got {text!r}")
        return value

    return parse


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"--workers: must be a whole number, 0 or more, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="registry",
        description="A container image registry (OCI distribution-spec / Docker Registry API v2).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser("serve", help="serve the registry (the same as `twistd -n registry --config CONFIG`)",
                           description="Serve the registry in the foreground: runs `twistd -n registry --config CONFIG`.")
    serve.add_argument("config", metavar="CONFIG", help="the configuration file (YAML, Distribution's format)")
    serve.add_argument("-w", "--workers", type=_workers, default=None, metavar="N",
                       help="worker processes sharing the listening socket (0: one per CPU core, 1: a single "
                            "process; default: http.workers, else one per core)")

    gc = sub.add_parser(
        "garbage-collect",
        help="delete blobs no manifest references (safe while the registry serves)",
        description=(
            "Mark every blob referenced by a manifest in any repository and delete the blobs and "
            "repository layer links nothing references. Objects younger than the grace period are "
            "kept, so pushes in progress are never disturbed; safe to run while the registry serves."
        ),
    )
    gc.add_argument("config", metavar="CONFIG", help="the configuration file")
    gc.add_argument("-d", "--dry-run", action="store_true", help="print what would be deleted; change nothing")
    gc.add_argument("-m", "--delete-untagged", action="store_true",
                    help="first delete manifests no tag reaches (keeping children of tagged indexes and "
                         "referrers of kept manifests)")
    gc.add_argument("--grace", type=_duration("--grace"), default=3600.0, metavar="DURATION",
                    help="keep objects written less than DURATION before the run started (Go syntax: "
                         "0s, 90m, 1h; default 1h; 0s collects everything unreferenced now)")
    gc.add_argument("--json", action="store_true", help="print the summary as JSON on standard output")

    check = sub.add_parser(
        "check",
        help="verify the storage's integrity (re-hash blobs, find dangling links and broken manifests)",
        description=(
            "Re-hash every blob and report corrupt blobs, links to missing blobs, manifests referencing "
            "missing blobs, unreadable tags and stale uploads. Exit status 1 when a problem is left."
        ),
    )
    check.add_argument("config", metavar="CONFIG", help="the configuration file")
    check.add_argument("--repair", action="store_true",
                       help="quarantine corrupt blobs, remove links to missing blobs, re-link stored blobs "
                            "a manifest references; never touches healthy data")
    check.add_argument("--upload-age", type=_duration("--upload-age"), default=None, metavar="DURATION",
                       help="uploads older than this are stale (default: storage.maintenance.uploadpurging.age, 168h)")
    check.add_argument("--json", action="store_true", help="print the report as JSON on standard output")

    purge = sub.add_parser("purge-uploads", help="remove uploads that were started long ago and never finished",
                           description="Remove abandoned uploads older than a maximum age.")
    purge.add_argument("config", metavar="CONFIG", help="the configuration file")
    purge.add_argument("--older-than", type=_duration("--older-than"), default=None, metavar="DURATION",
                       help="age limit (default: storage.maintenance.uploadpurging.age, 168h)")
    purge.add_argument("-d", "--dry-run", action="store_true", help="print what would be removed; change nothing")
    return parser


def _load(path: str) -> Config:
    try:
        return load_config_file(path, os.environ)
    except OSError as e:
        raise UsageError(f"cannot read the configuration file {path}: {e.strerror or e}") from None
    except ConfigError as e:
        raise UsageError(f"{path}: {e}") from None


def _driver(config: Config) -> Any:
    from registry.storage.factory import create_driver

    try:
        return create_driver(config.storage.driver, dict(config.storage.params))
    except ValueError as e:
        raise UsageError(f"storage: {e}" if not str(e).startswith("storage") else str(e)) from None


def _share_generation(config: Config, driver: Any) -> Any:
    """With ``redis`` configured, instances (on other hosts too) keep
    in-process content caches: deletions by this command (garbage
    collection, ``check`` repairs) advance the deletion generation shared
    in Redis (``registry.storage.generation.SharedGeneration``). They do not
    wait one by one (this process answers no request); the command waits
    once before it exits (``Generation.settle``), so when it has exited no
    instance serves from its cache what it deleted. Returns the generation
    to settle, or None."""
    from registry.storage.generation import Generation, SharedGeneration

    generation = getattr(driver, "generation", None)
    if config.redis is None or not isinstance(generation, Generation) or generation.path is None:
        return None
    from twisted.internet import reactor

    from registry.redis import RedisClient, settings_from_config

    generation.attach(SharedGeneration(RedisClient(reactor, settings_from_config(config.redis)), reactor))
    generation.wait_each = False
    return generation


def _upload_age(config: Config) -> float:
    """``storage.maintenance.uploadpurging.age`` in seconds."""
    return float(config.storage.uploadpurging.age)


def _twistd() -> list[str]:
    beside = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.access(beside, os.X_OK):
        return [beside]
    found = shutil.which("twistd")
    return [found] if found else [sys.executable, "-m", "twisted"]


def serve(args: argparse.Namespace) -> int:
    config = _load(args.config)  # fail here, with the key named, rather than in twistd
    from registry.workers import WorkersError, resolve_workers

    try:
        resolve_workers(config, args.workers, None)
    except WorkersError as e:
        raise UsageError(f"{args.config}: {e}") from None
    argv = [*_twistd(), "-n", "registry", "--config", args.config]
    if args.workers is not None:
        argv += ["--workers", str(args.workers)]
    os.execv(argv[0], argv)
    return EXIT_FAILED  # not reached


async def _garbage_collect(
    args: argparse.Namespace, driver: Any, out: TextIO, err: TextIO, config: Config | None = None
) -> int:
    from registry.storage.gc import GarbageCollector, GCError

    bar = ProgressBar(err)
    invalidate = None
    if config is not None and config.redis is not None and config.storage.cache_blobdescriptor == "redis":
        # Instances cache blob descriptors in Redis: forget what is swept
        # (registry.storage.cache explains the order).
        from twisted.internet import reactor

        from registry.redis import RedisClient, settings_from_config
        from registry.storage.cache import invalidate_digests

        client = RedisClient(reactor, settings_from_config(config.redis))

        async def invalidate_(digests: list[Any]) -> None:
            await invalidate_digests(client, digests)

        invalidate = invalidate_
    collector = GarbageCollector(
        driver,
        grace_s=args.grace,
        delete_untagged=args.delete_untagged,
        dry_run=args.dry_run,
        progress=bar,
        invalidate=invalidate,
    )
    try:
        report = await collector.run()
    except GCError as e:
        bar.close()
        err.write(f"registry garbage-collect: {e}\n")
        return EXIT_FAILED
    bar.close()
    if args.json:
        out.write(json.dumps(report.to_json(), indent=2) + "\n")
        return EXIT_OK
    verb = "would delete" if args.dry_run else "deleted"
    for name, d in report.manifests:
        out.write(f"{verb} manifest {name}@{d}\n")
    for name, d in report.links:
        out.write(f"{verb} layer link {name} -> {d}\n")
    for d, size in report.blobs:
        out.write(f"{verb} blob {d} ({size} bytes)\n")
    out.write(report.summary() + "\n")
    return EXIT_OK


async def _check(args: argparse.Namespace, config: Config, driver: Any, out: TextIO, err: TextIO) -> int:
    from registry.storage.check import Checker

    bar = ProgressBar(err)
    age = args.upload_age if args.upload_age is not None else _upload_age(config)
    report = await Checker(driver, repair=args.repair, upload_age_s=age, progress=bar).run()
    bar.close()
    if args.json:
        out.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        for p in report.problems:
            out.write(p.line() + "\n")
        out.write(report.summary() + "\n")
    return EXIT_FAILED if report.unrepaired else EXIT_OK


async def _purge(args: argparse.Namespace, config: Config, driver: Any, out: TextIO) -> int:
    from registry.storage.purge import purge_uploads

    age = args.older_than if args.older_than is not None else _upload_age(config)
    purged = await purge_uploads(driver, age, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for path in purged:
        out.write(f"{verb} upload {path}\n")
    out.write(f"{verb} {len(purged)} uploads older than {age:g}s\n")
    return EXIT_OK


async def _close(driver: Any) -> None:
    """Close the driver (an out-of-process driver stops its child)."""
    await driver.close()


def _run(work: Callable[[], Awaitable[int]]) -> int:
    """Run ``work`` on the reactor and return its exit status."""
    from twisted.internet import defer, task

    status: list[int] = []

    async def main(_reactor: Any) -> None:
        status.append(await work())

    try:
        task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    except SystemExit as e:
        if not status:
            return e.code if isinstance(e.code, int) else EXIT_FAILED
    return status[0] if status else EXIT_FAILED


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        config = _load(args.config)
        driver = _driver(config)
    except UsageError as e:
        err.write(f"registry {args.command}: {e}\n")
        return EXIT_USAGE
    if config.storage.driver == "inmemory":
        err.write(
            f"registry {args.command}: warning: storage.inmemory keeps nothing between processes; "
            "this command sees an empty storage\n"
        )

    async def work() -> int:
        from registry.storage.driver import StorageError

        generation = _share_generation(config, driver)
        try:
            if args.command == "garbage-collect":
                return await _garbage_collect(args, driver, out, err, config)
            if args.command == "check":
                return await _check(args, config, driver, out, err)
            return await _purge(args, config, driver, out)
        except UsageError as e:
            err.write(f"registry {args.command}: {e}\n")
            return EXIT_USAGE
        except StorageError as e:
            err.write(f"registry {args.command}: storage failure: {e}\n")
            return EXIT_FAILED
        finally:
            if generation is not None:
                await generation.settle()
            await _close(driver)

    return _run(work)
