"""Output folders owned by one writer: an advisory lock that dies with its process.

``with RunFolder(out):`` creates ``out`` (if needed), takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``out/.lock``
and writes this process's pid into it. A second meshgnn process asking for the same folder is refused at once
with a one-line error naming the folder and the holder's pid. The kernel releases the lock when the process
exits in any way (SIGKILL included), so there is never a stale lock to delete. While holding it the owner may
delete temporary files that killed writers left (:func:`meshgnn.io.atomic.clean_stale_temps`). A folder the
context created and that holds nothing but the lock afterwards (or, after a failure, the lock and bookkeeping such
as ``run.json``) is removed again: a command refused on bad input leaves nothing behind.

fcntl.flock and not a pid file: a pid file outlives a SIGKILL and then needs guessing whether its owner lives.
On network file systems without flock support the lock is a no-op there (the kernel says so with ENOLCK; we
then go on without it rather than refusing every run).
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from ..errors import MeshgnnError

LOCK_NAME = ".lock"


class FolderBusy(MeshgnnError):
    """Another process holds the folder."""


class RunFolder:
    """Context manager: exclusive ownership of ``path`` for this process (``enabled=False``: a no-op, for the
    non-root ranks of an MPI job)."""

    def __init__(self, path, what: str = "run", enabled: bool = True, bookkeeping=("run.json",)):
        self.path, self.what, self.enabled = Path(path), what, enabled
        self.bookkeeping = set(bookkeeping)           # written before the work: not a result on their own
        self._fd: int | None = None
        self._created = False

    def __enter__(self) -> "RunFolder":
        if not self.enabled:
            return self
        import fcntl

        self._created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise MeshgnnError(f"{self.path}: cannot use the output folder ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holder = _read_pid(fd)
                os.close(fd)
                raise FolderBusy(f"{self.path}: another meshgnn process{f' (pid {holder})' if holder else ''} is "
                                 f"writing a {self.what} into this folder; wait for it or choose another --out") from None
            if e.errno != errno.ENOLCK:
                os.close(fd)
                raise MeshgnnError(f"{self.path}: cannot lock the output folder ({e.strerror})") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass                      # a full disk must not stop a lock we hold; the pid is only informative
        self._fd = fd
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._fd is None:
            return False
        try:
            names = {p.name for p in self.path.iterdir()} - {LOCK_NAME}
            if self._created and (not names or (exc_type is not None and names <= self.bookkeeping)):
                for name in names | {LOCK_NAME}:       # still holding the lock: nobody else can be waiting on it
                    os.unlink(self.path / name)
                self.path.rmdir()
        except OSError:
            pass
        os.close(self._fd)                               # releases the flock
        self._fd = None
        return False


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None


def holds_run(folder, names=("checkpoint.pt", "best.pt", "train_log.csv", "val_log.csv")) -> list[str]:
    """The run files present in ``folder`` (a previous training's checkpoint or log)."""
    folder = Path(folder)
    return [n for n in names if (folder / n).exists()]
