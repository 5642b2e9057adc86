"""File plumbing for the whole project: atomic writes, their leftovers, inter-process locks.

:func:`atomic_write` is the one way persona replaces a file: a temp file next
to the target (``.NAME.tmp-<16 hex>``; 0600 unless ``private=False``), written
and fsynced, optionally verified, renamed over the target with ``os.replace``,
then the folder fsynced. A crash at any point leaves the old file or the new
one, never a mix. The writer holds an exclusive ``flock`` on its temp file
until the rename, so a temp file nobody holds is a killed writer's leftover:
:func:`remove_stale_temps` removes those and never a live writer's.

Vault profiles, export files, the export manifest, the shipped source prefix
and background table, the evaluation report and the benchmark caches are all
written through it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Callable

TMP_MARK = ".tmp-"

try:
    import fcntl as _fcntl

    _HAVE_FLOCK = True
except ImportError:  # Windows
    _fcntl = None
    _HAVE_FLOCK = False


def atomic_write(path: Path | str, data: bytes, *, verify: Callable[[Path], None] | None = None,
                 private: bool = True, error: Callable[[str], Exception] | None = None) -> Path:
    """Replace ``path`` with ``data`` atomically (temp file, fsync, (verify), os.replace, fsync of the folder).

    ``private``: the file is 0600 whatever the umask (else as the umask allows).
    ``verify(tmp)`` may raise to keep the old file. On failure the temp file is
    removed and nothing is replaced; an ``OSError`` is raised as ``error(message)``
    when ``error`` is given (the message names the file, never its content), else
    as it is.
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(3):
        tmp = path.parent / f".{path.name}{TMP_MARK}{secrets.token_hex(8)}"
        try:
            fd = os.open(tmp, flags, 0o600 if private else 0o666)
        except OSError as exc:
            if error is None:
                raise
            raise error(f"cannot write in {path.parent} ({exc.strerror or type(exc).__name__})") from None
        if _hold(fd):
            break
        os.close(fd)  # a cleaner removed it between create and lock: take a new name
    else:  # pragma: no cover - needs three lost races in a row
        message = f"cannot write in {path.parent} (temp files keep disappearing)"
        raise error(message) if error is not None else OSError(message)
    keep_open = _HAVE_FLOCK  # Windows cannot rename a file that is open
    try:
        try:
            if private and os.name == "posix":
                os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            if not keep_open:
                os.close(fd)
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and error is not None:
            raise error(f"writing {path.name} failed ({exc.strerror or type(exc).__name__})") from None
        raise
    finally:
        if keep_open:
            os.close(fd)
    fsync_dir(path.parent)
    return path


def _hold(fd: int) -> bool:
    """Lock a new temp file as a live writer's; False if a cleaner unlinked it first."""
    if not _HAVE_FLOCK:
        return True
    try:
        _fcntl.flock(fd, _fcntl.LOCK_EX)  # blocks only while a cleaner checks this very file
    except OSError:  # a filesystem without flock: writers are not marked, cleaners skip nothing
        return True
    return os.fstat(fd).st_nlink > 0


def remove_stale_temps(out: Path) -> None:
    """Remove the temp files killed writers left next to ``out`` (a live writer holds a lock on its own)."""
    if not _HAVE_FLOCK:
        return
    prefix = f".{out.name}{TMP_MARK}"
    try:
        entries = [e for e in os.scandir(out.parent) if e.name.startswith(prefix)
                   and len(e.name) == len(prefix) + 16]
    except OSError:
        return
    for entry in entries:
        try:
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
                         | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            try:
                _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
            except OSError:
                continue  # held: a live writer
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        finally:
            os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make a rename or unlink in ``folder`` durable (POSIX; a no-op elsewhere)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock(fd: int, timeout: float) -> bool:
    """Take an exclusive inter-process lock on open file ``fd``, waiting up to ``timeout`` seconds;
    False if another process still holds it then."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        deadline = time.monotonic() + timeout
        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                return True
            except OSError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)


def unlock(fd: int) -> None:
    """Release :func:`lock`."""
    try:
        import fcntl
    except ImportError:
        import msvcrt

        with contextlib.suppress(OSError):
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)
