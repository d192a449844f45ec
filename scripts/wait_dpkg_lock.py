#!/usr/bin/env python3
"""Wait until no other package manager holds dpkg's or apt's locks.

apt-get and dpkg take fcntl write locks on a few files and, when one is
held, fail at once ("Could not get lock ... It is held by process N").
A machine that runs unattended upgrades, or a user running apt in another
terminal, would then make every install fail.  This waits (probing with the
same kind of lock, and releasing it at once) until every lock is free or
the timeout passes.

    wait_dpkg_lock.py [--timeout SECONDS] [--interval SECONDS] [LOCKFILE ...]

Exit status: 0 when the locks are free, 1 on timeout (the holder's pid is
named when the kernel tells it).
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import struct
import sys
import time

DEFAULT_LOCKS = (
    "/var/lib/dpkg/lock-frontend",
    "/var/lib/dpkg/lock",
    "/var/lib/apt/lists/lock",
    "/var/cache/apt/archives/lock",
)


def holder(path: str) -> int | None:
    """The pid holding a write lock on ``path`` (0 when held by someone we
    cannot name), or None when it is free (or absent)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        # F_GETLK: ask which lock would block a write lock on the whole file.
        probe = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, probe)
        kind, _, _, _, pid = struct.unpack("hhqqi4x", answer)
        if kind == fcntl.F_UNLCK:
            return None
        return pid
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EAGAIN):
            return 0
        return None
    finally:
        os.close(fd)


def wait(paths: list[str], timeout: float, interval: float) -> bool:
    deadline = time.monotonic() + timeout
    announced: set[tuple[str, int]] = set()
    while True:
        held = [(p, pid) for p in paths if (pid := holder(p)) is not None]
        if not held:
            return True
        for p, pid in held:
            if (p, pid) not in announced:
                announced.add((p, pid))
                who = f"process {pid}" if pid else "another process"
                print(f"install-system-deps: {p} is held by {who}; waiting (up to {timeout:.0f} s)", file=sys.stderr, flush=True)
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("locks", nargs="*", default=list(DEFAULT_LOCKS))
    args = parser.parse_args(argv)
    if wait(args.locks, args.timeout, args.interval):
        return 0
    print(f"install-system-deps: package manager locks still held after {args.timeout:.0f} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
