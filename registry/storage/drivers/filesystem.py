"""The filesystem storage driver: the embedded default.

Objects are regular files below ``rootdirectory`` at their driver path
(``/a/b`` is ``<root>/a/b``), so a Distribution registry's storage can be
served as is. Directories are implicit: they are created for an object and
removed again (up to the root) when delete, move or cancel empties them.

Durability and atomicity
  * ``put_content`` writes ``<name>~put~<random>`` in the same directory,
    fsyncs it, renames it over ``<name>`` and fsyncs the directory: after a
    crash at any moment the object is its old or its new content. Temporary
    names contain ``~``, which no valid path segment does, so ``list`` and
    ``walk`` never show them (a crash may leave one behind, invisible).
  * ``put_content(..., durable=False)`` (scratch: an upload's hash states,
    ``startedat``, its empty ``data``) does the same without either fsync:
    still atomic, and a killed process loses nothing (the page cache
    belongs to the kernel), but after a crash of the machine the object may
    be old or absent. Every scratch object of an upload can be re-derived
    from its data, or the upload restarted (``registry.storage.uploads``).
  * ``move`` fsyncs the source file, renames it (atomic), and fsyncs the
    destination's directory: when it returns the object's bytes and its new
    name are durable, which is how an upload's data becomes a blob (the
    bytes are durable before the blob's name, the name before its link).
    The source directory is not fsynced: a machine crash may bring the old
    name back beside the new one (a stale upload, purged later), never lose
    the new one.
  * A writer writes the file in place at its path: this is what resumable
    uploads need (``close`` at the end of each request, ``writer(path,
    append=True)`` later, possibly from another process). ``close`` does not
    fsync (the bytes of an unfinished upload are scratch too); ``commit``
    fsyncs the file and its directory. After a crash, a written file holds a
    prefix of what was written to it, never bytes that were not.
  * What is durable is exactly what is acknowledged as committed: a blob
    (``move`` or ``commit``, then its link), links, manifests and tag links
    (``put_content``), each fsynced before the call fires, so before the
    response that reports it. The order of dependent writes (data before
    link, revision before tag) is the order of the awaited calls, and each
    is durable before the next starts.

Threads
  All blocking file work runs in the driver's own bounded pool of daemon
  threads (``_Workers``, ``maxthreads``, default 16), stopped by
  ``close()``, which the application calls when it stops. A call costs the
  reactor one queue put and its share of one ``callFromThread`` (answers
  that finish together are delivered together): a small push makes dozens
  of calls, and Twisted's general ``ThreadPool`` (context propagation, a
  coordinator, a Deferred per hop through ``callFromThread``) cost about
  three times as much per call.
  Bytes move in 1 MiB pieces, through the shared stream helpers of
  ``registry.storage.streams``: a writer gathers small writes into a 1 MiB
  piece and returns an already-fired Deferred while the piece has room, and
  hands full pieces to the pool one at a time (so one piece is being written
  while the next one fills); a reader reads ``READ_AHEAD`` pieces ahead.
  A reader also sends its bytes straight to a socket (``IZeroCopyReader``:
  ``os.sendfile``, used by ``registry.sendfile`` for downloads): on the
  calling thread when the range is in the page cache (``pagecache``: a
  memory copy in the kernel, cheaper than a trip through the pool), in the
  pool when it is not (a cold disk blocks a pool thread, never the reactor).

Small reads on the reactor thread
  A thread-pool round trip costs more than reading a link file, and under
  load the reactor then waits for the pool (GIL handoffs). ``get_content``
  of a small file (<= ``INLINE_MAX``) that the pool read recently opens it
  by its whole path on the reactor thread and reads it with
  ``preadv(..., RWF_NOWAIT)``, which fails with EAGAIN instead of waiting
  for a disk: only data already in the page cache is read inline, anything
  else (and any symlink on the path, see ``_read_inline``) goes to the
  pool. For a tag link (the one storage read of a manifest GET by tag
  once the content cache is warm) the inline read is 5 system calls (open,
  readlink, fstat, preadv, close) and no thread handoff, against ~27 calls
  (a descriptor per directory of the path) plus two thread switches; on
  this project's bench it took manifest GET by tag at 32 connections from
  ~450 to ~650-750 req/s together with the content cache. ``stat`` stays
  in the pool: what the read path
  stats (blob sizes, links) is immutable and kept by the content cache
  (``registry.storage.cache.ContentCache``), so a stat on the hot path is
  a cache miss, rare after warm-up.

Containment
  Paths are resolved one segment at a time from a descriptor of the root with
  ``O_NOFOLLOW``; a symlink is followed only if its real target lies inside
  the root, otherwise the call fails with ``InvalidPathError``. ``list`` and
  ``walk`` hide symlinks that lead outside and do not descend into symlinked
  directories.
"""

from __future__ import annotations

import builtins
import errno
import os
import secrets
import shutil
import stat as statmod
import queue
import threading
import time
from collections.abc import Mapping
from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from zope.interface import implementer

from registry.storage.driver import (
    DriverError,
    FileInfo,
    IFileReader,
    IFileWriter,
    IStorageDriver,
    IZeroCopyReader,
    InvalidOffsetError,
    InvalidPathError,
    PathNotFoundError,
    _PATH_RE,
)
from registry.storage.drivers import pagecache
from registry.storage.params import warn_unknown_params
from registry.storage.streams import GatheringWriter, IPieceSink, IPieceSource, ReadAhead

NAME = "filesystem"
CHUNK = 1 << 20  # bytes moved per thread-pool call
#: 1 MiB pieces a reader asks for ahead of the one being consumed.
READ_AHEAD = 2
#: Bytes one ``send_to`` (one thread-pool call) moves at most.
SEND_SLICE = 8 * CHUNK
#: A writer asks the kernel to start writing its file to the disk after
#: every this many bytes, when they came slower than ``WRITEBACK_BELOW``
#: bytes a second (see ``_Writeback``).
WRITEBACK_EVERY = 8 * CHUNK
WRITEBACK_BELOW = 64 * CHUNK
DEFAULT_MAXTHREADS = 16
#: Files up to this size may be read on the reactor thread (``get_content``).
INLINE_MAX = 256 * 1024
#: Recently read small files remembered for inline reads (then forgotten at once).
WARM_PATHS = 50_000
_INLINE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_CREATE_RETRIES = 5

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NOFOLLOW = os.O_NOFOLLOW

T = TypeVar("T")


class _Workers:
    """Up to ``maxthreads`` daemon threads taking calls from one queue;
    each call's Deferred fires on the reactor thread. Threads start when a
    call finds none idle and stay until ``stop``."""

    def __init__(self, reactor: Any, maxthreads: int, name: str) -> None:
        self._reactor = reactor
        self._max = maxthreads
        self._name = name
        self._calls: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a call
        self._waiting = 0  # calls queued, not yet taken
        self._answers: list[tuple[Deferred[Any], bool, Any]] = []
        self._delivering = False  # a callFromThread(_deliver) is pending

    def submit(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        d: Deferred[T] = Deferred()
        with self._lock:
            self._waiting += 1
            start = self._waiting > self._idle and len(self._threads) < self._max
            if start:
                thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
        self._calls.put((fn, args, d))
        if start:
            thread.start()
        return d

    def _work(self) -> None:
        calls, lock = self._calls, self._lock
        while True:
            with lock:
                self._idle += 1
            call = calls.get()
            with lock:
                self._idle -= 1
                self._waiting -= 1
            if call is None:
                return
            fn, args, d = call
            try:
                answer = (d, True, fn(*args))
            except BaseException:
                answer = (d, False, Failure())
            del call, fn, args, d
            with lock:
                self._answers.append(answer)
                deliver = not self._delivering
                self._delivering = True
            del answer
            if deliver:
                self._reactor.callFromThread(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            answers, self._answers = self._answers, []
            self._delivering = False
        for d, ok, value in answers:
            if ok:
                d.callback(value)
            else:
                d.errback(value)

    def stop(self) -> None:
        """Let queued calls finish, then end every thread (blocking: call it
        off the reactor thread; answers not delivered by then are dropped)."""
        with self._lock:
            threads = list(self._threads)
            self._waiting += len(threads)
        for _ in threads:
            self._calls.put(None)
        for thread in threads:
            thread.join()


def _valid_name(name: str) -> bool:
    """True if ``name`` is a valid path segment (temp files are not)."""
    return name not in (".", "..") and _PATH_RE.match("/" + name) is not None


def _segments(path: str) -> list[str]:
    return [] if path == "/" else path[1:].split("/")


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _write_all(fd: int, chunks: list[bytes]) -> None:
    """Write every byte of ``chunks`` at the file position (one syscall usually)."""
    total = sum(len(c) for c in chunks)
    done = os.writev(fd, chunks) if len(chunks) > 1 else os.write(fd, chunks[0])
    if done < total:
        rest = memoryview(b"".join(chunks))[done:]
        while rest:
            rest = rest[os.write(fd, rest) :]


class _Writeback:
    """Starts the disk writing files being written, off the write path.

    An upload's bytes are scratch until its commit ``fsync``s them
    (``move``). Left to the kernel, a layer's tens of megabytes would all
    still be dirty then, and the commit (the client's final PUT, which it
    waits for) would pay for writing them all at once. Asked every
    ``WRITEBACK_EVERY`` bytes, the kernel writes while the client is still
    sending, and the commit's ``fsync`` finds little left. Only for bytes
    that arrive slowly (docker streams a layer as fast as it compresses it,
    some 25 MB/s): a fast writer fills the page cache faster than the disk
    empties it, and writing back under it halved its throughput (8 MiB
    PATCHes: 357 -> 199 MB/s); its commit's ``fsync`` writes at disk speed.

    ``sync_file_range`` may block while the disk's queue is full, so it runs
    on one thread of its own, never in the writers' pool: a writer never
    waits for it (a fast upload is not made disk-bound; a request is simply
    skipped while the file's previous one runs). Durability is unchanged:
    still the commit's ``fsync``, before it answers.
    """

    def __init__(self) -> None:
        self._jobs: "queue.SimpleQueue[tuple[int, _FileSink]]" = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.started = 0

    def request(self, sink: "_FileSink") -> bool:
        """Start writing ``sink``'s file in the background (through a
        duplicate of its descriptor, closed there), unless its previous
        request is still waiting or running. False if not asked."""
        if pagecache._sync_file_range is None or sink.writeback_pending or sink._fd < 0:
            return False
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="registry-writeback", daemon=True)
                self._thread.start()
        sink.writeback_pending = True
        self._jobs.put((os.dup(sink._fd), sink))
        return True

    def _run(self) -> None:
        while True:
            fd, sink = self._jobs.get()
            try:
                pagecache.start_writeback(fd)
                self.started += 1
            except Exception:
                pass
            finally:
                os.close(fd)
                sink.writeback_pending = False


_WRITEBACK = _Writeback()


class _Tree:
    """Blocking, descriptor-based path operations below one root directory."""

    def __init__(self, root: str) -> None:
        self.root = root

    # -- resolution ------------------------------------------------------------

    def _inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self.root + os.sep)

    def _follow(self, dirfd: int, name: str, path: str) -> str:
        """``name`` in ``dirfd`` is a symlink: return its real target if inside
        the root, else raise ``InvalidPathError``."""
        here = os.readlink(f"/proc/self/fd/{dirfd}")
        real = os.path.realpath(os.path.join(here, name))
        if not self._inside(real):
            raise InvalidPathError(path, NAME, "symlink leads outside the root directory")
        return real

    def _is_link(self, dirfd: int, name: str) -> bool:
        try:
            return statmod.S_ISLNK(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode)
        except OSError:
            return False

    def chain(self, segments: list[str], path: str, create: bool = False) -> list[int]:
        """Open root and each directory of ``segments``; return all their fds
        (the caller closes them). ``create`` makes missing directories.

        A concurrent delete may prune a directory between our opening (or
        creating) it and creating the next one inside it (``mkdir`` in a
        removed directory fails with ENOENT): then the walk starts again from
        the root, a bounded number of times."""
        if not create:
            return self._chain(segments, path, False)
        for attempt in range(_CREATE_RETRIES):
            try:
                return self._chain(segments, path, True)
            except FileNotFoundError:
                if attempt == _CREATE_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _chain(self, segments: list[str], path: str, create: bool) -> list[int]:
        fds = [os.open(self.root, _DIR_FLAGS)]
        try:
            for seg in segments:
                fd = fds[-1]
                try:
                    fds.append(os.open(seg, _DIR_FLAGS | _NOFOLLOW, dir_fd=fd))
                    continue
                except FileNotFoundError:
                    if not create:
                        raise PathNotFoundError(path, NAME) from None
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    if not self._is_link(fd, seg):
                        if exc.errno == errno.ENOTDIR and not create:
                            raise PathNotFoundError(path, NAME) from None
                        raise
                    fds.append(os.open(self._follow(fd, seg, path), _DIR_FLAGS))
                    continue
                try:
                    os.mkdir(seg, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                fds.append(os.open(seg, _DIR_FLAGS | _NOFOLLOW, dir_fd=fd))
            return fds
        except BaseException:
            _close_all(fds)
            raise

    def open_exact(self, relative: str, flags: int) -> int | None:
        """A descriptor of ``root + relative`` opened by its whole path in one
        call, if no symlink lies on it (its real path is exactly that path,
        so it is inside the root); else None, and the caller takes the
        careful way (``chain``)."""
        full = self.root + relative
        try:
            fd = os.open(full, flags | _NOFOLLOW)
        except OSError:
            return None
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == full:
                return fd
        except OSError:
            pass
        os.close(fd)
        return None

    def direct_dir(self, segments: list[str]) -> int | None:
        """The existing directory ``segments`` by ``open_exact``: three
        syscalls instead of two per segment; the write path (links, states,
        upload data) takes this way."""
        return self.open_exact("".join("/" + seg for seg in segments), _DIR_FLAGS)

    def dir_fds(self, segments: list[str], path: str, create: bool) -> list[int]:
        """Like ``chain``, but only the last directory when it can be opened
        directly (``direct_dir``): for callers that need no ancestors."""
        fd = self.direct_dir(segments)
        if fd is not None:
            return [fd]
        return self.chain(segments, path, create)

    def parent(self, path: str, create: bool = False) -> tuple[list[int], str]:
        """Fds of the directories above ``path``'s last segment, and that segment."""
        segs = _segments(path)
        return self.chain(segs[:-1], path, create), segs[-1]

    def open_file(self, dirfd: int, name: str, path: str, flags: int, mode: int = 0o644) -> int:
        """Open ``name`` in ``dirfd`` without following a symlink out of the root."""
        try:
            return os.open(name, flags | _NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dirfd)
        except FileNotFoundError:
            raise PathNotFoundError(path, NAME) from None
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
        return os.open(self._follow(dirfd, name, path), flags | os.O_CLOEXEC, mode)

    def stat_at(self, dirfd: int, name: str, path: str) -> os.stat_result:
        """lstat ``name``; a symlink inside the root reports its target."""
        try:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if statmod.S_ISLNK(st.st_mode):
                st = os.stat(self._follow(dirfd, name, path))
            return st
        except (FileNotFoundError, NotADirectoryError):
            raise PathNotFoundError(path, NAME) from None

    def prune(self, fds: list[int], segments: list[str]) -> None:
        """Remove emptied directories ``segments`` bottom-up (never the root).

        ``fds[i]`` is the directory holding ``segments[i]``.
        """
        for i in range(len(segments) - 1, -1, -1):
            try:
                os.rmdir(segments[i], dir_fd=fds[i])
            except OSError:
                return

    # -- operations --------------------------------------------------------------

    def open_object(self, path: str) -> tuple[int, os.stat_result]:
        """Open the object at ``path`` for reading: (fd, its stat). A
        directory there is no object (``PathNotFoundError``)."""
        fds, name = self.parent(path)
        try:
            fd = self.open_file(fds[-1], name, path, os.O_RDONLY)
        finally:
            _close_all(fds)
        try:
            st = os.fstat(fd)
            if statmod.S_ISDIR(st.st_mode):
                raise PathNotFoundError(path, NAME)
            return fd, st
        except BaseException:
            os.close(fd)
            raise

    def get_content(self, path: str) -> bytes:
        fd, st = self.open_object(path)
        try:
            parts: list[bytes] = []
            while True:
                data = os.read(fd, max(st.st_size, CHUNK))
                if not data:
                    return b"".join(parts)
                parts.append(data)
        finally:
            os.close(fd)

    def put_content(self, path: str, data: bytes, durable: bool = True) -> None:
        segs = _segments(path)
        for attempt in range(_CREATE_RETRIES):
            fds = self.dir_fds(segs[:-1], path, create=True)
            try:
                try:
                    self._put_in(fds[-1], segs[-1], data, durable)
                    return
                except FileNotFoundError:
                    # The directory was pruned by a concurrent delete between
                    # creating and using it: create it again.
                    if attempt == _CREATE_RETRIES - 1:
                        raise
            finally:
                _close_all(fds)

    def _put_in(self, dirfd: int, name: str, data: bytes, durable: bool = True) -> None:
        tmp = f"{name}~put~{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dirfd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view[: 64 * CHUNK]) :]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dirfd)
            except OSError:
                pass
            raise
        if durable:
            os.fsync(dirfd)

    def open_reader(self, path: str, offset: int) -> int:
        fd, st = self.open_object(path)
        if offset > st.st_size:
            os.close(fd)
            raise InvalidOffsetError(path, offset, NAME)
        return fd

    def open_writer(self, path: str, append: bool) -> tuple[int, int, list[int], list[str]]:
        """Open the file for a writer; return (fd, size, directory fds, segments)."""
        segs = _segments(path)
        flags = os.O_WRONLY if append else os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        for attempt in range(_CREATE_RETRIES):
            fds = self.dir_fds(segs[:-1], path, create=not append)
            try:
                fd = self.open_file(fds[-1], segs[-1], path, flags)
            except PathNotFoundError:
                _close_all(fds)
                if append or attempt == _CREATE_RETRIES - 1:
                    raise
                continue
            except BaseException:
                _close_all(fds)
                raise
            # Only the file's own directory stays open (``commit`` fsyncs
            # it): the writer's owner closes what it holds on the reactor
            # thread, so hold as little as possible.
            _close_all(fds[:-1])
            size = os.lseek(fd, 0, os.SEEK_END)
            return fd, size, fds[-1:], segs
        raise AssertionError("unreachable")

    def stat(self, path: str) -> FileInfo:
        fds, name = self.parent(path)
        try:
            st = self.stat_at(fds[-1], name, path)
        finally:
            _close_all(fds)
        if statmod.S_ISDIR(st.st_mode):
            return FileInfo(path, 0, st.st_mtime, True)
        return FileInfo(path, st.st_size, st.st_mtime, False)

    def list(self, path: str) -> list[str]:
        fds = self._dir_chain(path)
        try:
            prefix = "/" if path == "/" else path + "/"
            with os.scandir(fds[-1]) as entries:
                names = [e.name for e in entries if _valid_name(e.name)]
            return sorted(prefix + n for n in names if self._visible(fds[-1], n, prefix + n))
        finally:
            _close_all(fds)

    def _visible(self, dirfd: int, name: str, path: str) -> bool:
        if not self._is_link(dirfd, name):
            return True
        try:
            self._follow(dirfd, name, path)
            return True
        except (InvalidPathError, OSError):
            return False

    def _dir_chain(self, path: str) -> builtins.list[int]:
        try:
            return self.chain(_segments(path), path)
        except NotADirectoryError:
            raise PathNotFoundError(path, NAME) from None

    def move(self, source: str, dest: str) -> None:
        sfds, sname = self.parent(source)
        try:
            st = self.stat_at(sfds[-1], sname, source)
            if statmod.S_ISDIR(st.st_mode):
                raise PathNotFoundError(source, NAME)
            if source == dest:
                return
            dsegs = _segments(dest)
            for attempt in range(_CREATE_RETRIES):
                dfds = self.chain(dsegs[:-1], dest, create=True)
                try:
                    if attempt == 0:
                        # The bytes are durable before the new name is.
                        self._fsync_file(sfds[-1], sname, source)
                    try:
                        os.rename(sname, dsegs[-1], src_dir_fd=sfds[-1], dst_dir_fd=dfds[-1])
                    except FileNotFoundError:
                        if attempt == _CREATE_RETRIES - 1 or self._missing(sfds[-1], sname):
                            raise
                        continue
                    os.fsync(dfds[-1])
                    break
                finally:
                    _close_all(dfds)
            self.prune(sfds, _segments(source)[:-1])
        finally:
            _close_all(sfds)

    def _fsync_file(self, dirfd: int, name: str, path: str) -> None:
        fd = self.open_file(dirfd, name, path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def prune_path(self, path: str) -> None:
        """Remove the emptied directories above ``path``'s object (never the root)."""
        segs = _segments(path)[:-1]
        try:
            fds = self.chain(segs, path)
        except (PathNotFoundError, OSError):
            return
        try:
            self.prune(fds, segs)
        finally:
            _close_all(fds)

    def _missing(self, dirfd: int, name: str) -> bool:
        try:
            os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            return False
        except FileNotFoundError:
            return True

    def delete(self, path: str) -> None:
        if path == "/":
            fd = os.open(self.root, _DIR_FLAGS)
            try:
                with os.scandir(fd) as entries:
                    names = [e.name for e in entries]
                for name in names:
                    self._remove(fd, name)
            finally:
                os.close(fd)
            return
        fds, name = self.parent(path)
        try:
            try:
                self._remove(fds[-1], name)
            except (FileNotFoundError, NotADirectoryError):
                raise PathNotFoundError(path, NAME) from None
            self.prune(fds, _segments(path)[:-1])
        finally:
            _close_all(fds)

    def _remove(self, dirfd: int, name: str) -> None:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        if statmod.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=dirfd)
        else:
            os.unlink(name, dir_fd=dirfd)

    def walk(self, path: str) -> builtins.list[FileInfo]:
        fds = self._dir_chain(path)
        out: list[FileInfo] = []
        try:
            self._walk(fds[-1], "/" if path == "/" else path + "/", out)
        finally:
            _close_all(fds)
        return out

    def _walk(self, dirfd: int, prefix: str, out: builtins.list[FileInfo]) -> None:
        with os.scandir(dirfd) as it:
            entries = sorted((e for e in it if _valid_name(e.name)), key=lambda e: e.name)
        for entry in entries:
            full = prefix + entry.name
            try:
                st = entry.stat(follow_symlinks=False)
                link = statmod.S_ISLNK(st.st_mode)
                if link:
                    st = os.stat(self._follow(dirfd, entry.name, full))
            except (OSError, InvalidPathError):
                continue
            if statmod.S_ISDIR(st.st_mode):
                out.append(FileInfo(full, 0, st.st_mtime, True))
                if link:
                    continue
                try:
                    sub = os.open(entry.name, _DIR_FLAGS | _NOFOLLOW, dir_fd=dirfd)
                except FileNotFoundError:
                    continue
                try:
                    self._walk(sub, full + "/", out)
                finally:
                    os.close(sub)
            elif statmod.S_ISREG(st.st_mode):
                out.append(FileInfo(full, st.st_size, st.st_mtime, False))


@implementer(IPieceSource)
class _FilePieces:
    """The pieces of an open file for ``ReadAhead``: ``pread`` in the pool."""

    def __init__(self, driver: FilesystemDriver, fd: int) -> None:
        self._driver = driver
        self._fd = fd

    def fetch(self, offset: int, size: int) -> Deferred[bytes]:
        return self._driver._run(os.pread, self._fd, size, offset)

    def close(self) -> Deferred[None]:
        os.close(self._fd)
        return succeed(None)


def _sendfile(path: str, socket_fd: int, fd: int, offset: int, count: int) -> int:
    """``os.sendfile`` from ``fd`` at ``offset`` to the non-blocking
    ``socket_fd`` until ``count`` bytes went or the socket is full (in a pool
    thread, or on the calling thread when the range is cached); see
    ``IZeroCopyReader.send_to`` for the result."""
    sent = 0
    while sent < count:
        try:
            n = os.sendfile(socket_fd, fd, offset + sent, count - sent)
        except BlockingIOError:
            break
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            return sent or -1
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:
                return sent or -1
            raise
        if n == 0:  # end of the file
            if sent:
                break
            raise InvalidOffsetError(path, offset, NAME)
        sent += n
    return sent


@implementer(IZeroCopyReader)
class _FileReader:
    """A reader of an open file: ``read`` through ``ReadAhead`` (1 MiB
    pieces, ``READ_AHEAD`` ahead; nothing is read before the first
    ``read``); ``send_to`` with ``os.sendfile``, at most ``SEND_SLICE``
    bytes a call, on the calling thread when the range is in the page cache
    and in the pool otherwise."""

    def __init__(self, driver: FilesystemDriver, path: str, fd: int, offset: int) -> None:
        self._driver = driver
        self._path = path
        self._fd = fd
        self._stream = ReadAhead(_FilePieces(driver, fd), CHUNK, depth=1 + READ_AHEAD, offset=offset, positional=True)
        self._sending: Deferred[int] | None = None

    def read(self, max_bytes: int) -> Deferred[bytes]:
        return self._stream.read(max_bytes)

    def send_to(self, socket_fd: int, offset: int, count: int) -> Deferred[int]:
        count = min(count, SEND_SLICE)
        driver = self._driver
        if not driver._closed and pagecache.resident(self._fd, offset, count):
            # Every page is cached: sendfile copies within memory, no disk
            # wait; a thread-pool round trip would cost more than it saves.
            driver.sends_inline += 1
            try:
                return succeed(_sendfile(self._path, socket_fd, self._fd, offset, count))
            except Exception:
                return fail()
        driver.sends_pooled += 1
        d = driver._run(_sendfile, self._path, socket_fd, self._fd, offset, count)
        self._sending = d
        d.addBoth(self._sent, d)
        return d

    def _sent(self, result: T, d: Deferred[int]) -> T:
        if self._sending is d:
            self._sending = None
        return result

    def close(self) -> Deferred[None]:
        """Close the file, after a ``send_to`` still in the pool (the
        descriptor must not be closed, and its number reused, under it)."""
        sending = self._sending
        if sending is None:
            return self._stream.close()
        done: Deferred[None] = Deferred()

        def settled(result: Any) -> Any:
            done.callback(None)
            return result

        sending.addBoth(settled)
        return done.addCallback(lambda _: self._stream.close())


def open_reader(driver: FilesystemDriver, path: str, fd: int, offset: int) -> IFileReader:
    """A reader of ``fd`` (the file at ``path``) from ``offset``: ``read``
    in 1 MiB pieces, ``READ_AHEAD`` ahead, or ``send_to`` a socket."""
    return _FileReader(driver, path, fd, offset)


@implementer(IPieceSink)
class _FileSink:
    """Appends pieces to a file in place for ``GatheringWriter``."""

    def __init__(self, driver: FilesystemDriver, fd: int, dirfds: list[int], segments: list[str]) -> None:
        self._driver = driver
        self._fd = fd
        self._dirfds = dirfds
        self._segments = segments
        self._unflushed = 0
        self._unflushed_since = time.monotonic()
        #: True while a ``_Writeback`` request for this file waits or runs.
        self.writeback_pending = False

    def send(self, piece: Any) -> Deferred[None]:
        chunks = list(piece)
        d = self._driver._run(_write_all, self._fd, chunks)
        self._unflushed += sum(len(c) for c in chunks)
        if self._unflushed >= WRITEBACK_EVERY:
            now = time.monotonic()
            slow = self._unflushed < WRITEBACK_BELOW * (now - self._unflushed_since)
            self._unflushed, self._unflushed_since = 0, now
            if slow:
                d.addCallback(self._written)
        return d

    def _written(self, result: T) -> T:
        _WRITEBACK.request(self)
        return result

    def _release(self, result: T) -> T:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        _close_all(self._dirfds)
        self._dirfds = []
        return result

    def close(self) -> Deferred[None]:
        return succeed(None).addBoth(self._release)

    abort = close  # a failed write keeps what reached the file, for a resumed upload

    def _release_here(self) -> None:
        """Close the descriptors in the pool thread doing the last work."""
        fds, self._dirfds = [self._fd, *self._dirfds], []
        self._fd = -1
        _close_all(fds)

    def commit(self) -> Deferred[None]:
        def work() -> None:
            try:
                os.fsync(self._fd)
                os.fsync(self._dirfds[-1])
            finally:
                self._release_here()

        return self._driver._run(work).addErrback(self._release)

    def cancel(self) -> Deferred[None]:
        def work() -> None:
            try:
                try:
                    os.unlink(self._segments[-1], dir_fd=self._dirfds[-1])
                except FileNotFoundError:
                    pass
            finally:
                self._release_here()
            self._driver._tree.prune_path("/" + "/".join(self._segments))

        return self._driver._run(work).addErrback(self._release)


def open_writer(driver: FilesystemDriver, fd: int, size: int, dirfds: list[int], segments: list[str]) -> IFileWriter:
    """A writer appending to ``fd`` in place: small writes gather into 1 MiB
    pieces; one piece is written in the pool while the next one fills."""
    return GatheringWriter(_FileSink(driver, fd, dirfds, segments), CHUNK, window_bytes=CHUNK, max_in_flight=1, size=size)


@implementer(IStorageDriver)
class FilesystemDriver:
    """Objects as files below a root directory. See the module docstring."""

    name = NAME

    def __init__(self, rootdirectory: str, maxthreads: int = DEFAULT_MAXTHREADS, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        os.makedirs(rootdirectory, exist_ok=True)
        self._tree = _Tree(os.path.realpath(rootdirectory))
        self._reactor = reactor
        # Daemon threads: a driver nobody closes does not keep the process
        # alive. The application closes it (``close``) when it stops.
        self._pool = _Workers(reactor, maxthreads, f"storage-{NAME}")
        self._closed = False
        #: ``send_to`` calls answered on the calling thread (their range was
        #: in the page cache) and in the pool (it was not, or not all).
        self.sends_inline = 0
        self.sends_pooled = 0
        #: Paths of small files the pool read recently (``_read_inline``).
        self._warm: dict[str, None] = {}
        self._inline_ok = hasattr(os, "preadv") and hasattr(os, "RWF_NOWAIT") and os.path.isdir("/proc/self/fd")

    @property
    def root(self) -> str:
        """The real path of the root directory."""
        return self._tree.root

    def close(self) -> Deferred[None]:
        """Stop the thread pool, waiting for work in progress."""
        if not self._closed:
            # stop joins the threads: do it off the reactor thread.
            pool = self._pool
            self._closed = True
            return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), pool.stop)
        return succeed(None)

    def _run(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        if self._closed:
            return fail(DriverError(NAME, "driver is closed"))
        return self._pool.submit(fn, *args)

    # -- IStorageDriver ----------------------------------------------------------

    def get_content(self, path: str) -> Deferred[bytes]:
        """Fire with the file's bytes; ``PathNotFoundError`` if absent.

        Small files read recently (links, tag links, small manifests) are
        read on the calling (reactor) thread when their pages are cached
        (see ``_read_inline``); everything else in the pool."""
        if path in self._warm and self._inline_ok:
            data = self._read_inline(path)
            if data is not None:
                return succeed(data)
        d = self._run(self._tree.get_content, path)
        if self._inline_ok:
            d.addCallback(self._warmed, path)
        return d

    def _warmed(self, data: bytes, path: str) -> bytes:
        if len(data) <= INLINE_MAX:
            warm = self._warm
            if len(warm) >= WARM_PATHS:
                warm.clear()
            warm[path] = None
        return data

    def _read_inline(self, path: str) -> bytes | None:
        """The bytes of the small file at ``path``, read without blocking, or
        None (then the pool reads it).

        Only paths the pool read recently are tried (their directory entries
        and inodes are then in the kernel's caches, so the path lookup does
        not go to disk). The whole path is opened at once (no per-segment
        walk), and the descriptor's real path must be exactly ``root +
        path``: any symlink on the way, or a file that moved, sends the read
        to the pool's careful walk. The data is read with
        ``preadv(RWF_NOWAIT)``, which fails with EAGAIN instead of waiting
        for the disk; a short read, a large file or any error also falls
        back to the pool."""
        fd = self._tree.open_exact(path, _INLINE_FLAGS)
        if fd is None:
            self._warm.pop(path, None)
            return None
        try:
            size = os.fstat(fd).st_size
            if size > INLINE_MAX:
                self._warm.pop(path, None)
                return None
            buf = bytearray(size + 1)  # one more: a file that grew reads short of EOF
            n = os.preadv(fd, [buf], 0, os.RWF_NOWAIT)
            if n != size:
                return None
            return bytes(memoryview(buf)[:n])
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                self._inline_ok = False  # this filesystem cannot say "would block"
            return None
        finally:
            os.close(fd)

    def put_content(self, path: str, data: bytes, durable: bool = True) -> Deferred[None]:
        """Atomically replace the file (temp file, fsync, rename, fsync dir;
        no fsync for a scratch put, ``durable=False``)."""
        return self._run(self._tree.put_content, path, data, durable)

    def reader(self, path: str, offset: int = 0) -> Deferred[IFileReader]:
        """Fire with a read-ahead reader (``registry.storage.streams``) at ``offset``."""
        d = self._run(self._tree.open_reader, path, offset)
        return d.addCallback(lambda fd: open_reader(self, path, fd, offset))

    def writer(self, path: str, append: bool = False) -> Deferred[IFileWriter]:
        """Fire with a gathering writer (``registry.storage.streams``) on the file in place."""
        d = self._run(self._tree.open_writer, path, append)
        return d.addCallback(lambda opened: open_writer(self, *opened))

    def stat(self, path: str) -> Deferred[FileInfo]:
        """Fire with the ``FileInfo`` of a file or directory."""
        return self._run(self._tree.stat, path)

    def list(self, path: str) -> Deferred[list[str]]:
        """Fire with the sorted full paths of the directory's entries."""
        return self._run(self._tree.list, path)

    def move(self, source: str, dest: str) -> Deferred[None]:
        """Rename ``source`` over ``dest`` (atomic, durable: fsync the file,
        rename, fsync the destination directory), creating and pruning dirs."""
        return self._run(self._tree.move, source, dest)

    def delete(self, path: str) -> Deferred[None]:
        """Remove a file or a directory tree, then emptied parents."""
        return self._run(self._tree.delete, path)

    def walk(self, path: str) -> Deferred[builtins.list[FileInfo]]:
        """Fire with everything below ``path``, depth-first, sorted per level."""
        return self._run(self._tree.walk, path)

    def redirect_url(self, path: str, method: str = "GET") -> Deferred[str | None]:
        """Local files have no URL."""
        return succeed(None)


def _parse_maxthreads(value: Any) -> int:
    key = "storage.filesystem.maxthreads"
    if isinstance(value, bool):
        raise ValueError(f"{key}: must be an integer >= 1, got {value!r}")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{key}: must be an integer >= 1, got {value!r}")
    return value


def create(params: Mapping[str, Any], reactor: Any = None) -> FilesystemDriver:
    """Build the driver from ``rootdirectory`` (required, absolute; created if
    missing) and ``maxthreads`` (default 16). Raises ``ValueError`` naming the
    parameter."""
    warn_unknown_params(NAME, params, known=("rootdirectory", "maxthreads"))
    root = params.get("rootdirectory")
    key = "storage.filesystem.rootdirectory"
    if root is None:
        raise ValueError(f"{key}: required")
    if not isinstance(root, str) or not os.path.isabs(root):
        raise ValueError(f"{key}: must be an absolute path, got {root!r}")
    maxthreads = _parse_maxthreads(params.get("maxthreads", DEFAULT_MAXTHREADS))
    try:
        return FilesystemDriver(root, maxthreads, reactor)
    except OSError as exc:
        raise ValueError(f"{key}: cannot use {root!r}: {exc.strerror or exc}") from None
