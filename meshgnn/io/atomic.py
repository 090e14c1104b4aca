"""Write files so that a crash never leaves a half-written result: temp file in the same folder, then rename."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from ..decomposition.store import WriteGuard as _StoreWriteGuard


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path next to ``path``; on success fsync and rename it over ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)      # mkstemp makes 0600; results are ordinary files
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):
            dfd = os.open(path.parent, os.O_RDONLY)
            os.fsync(dfd)
            os.close(dfd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ``atomic_path`` names its temporary files ``.<name>.<8 random chars from mkstemp><suffix>``.
_TEMP_NAME = r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}(\.h5)?\.tmp$"


def stale_temps(folder) -> list[Path]:
    """Temporary files of :func:`atomic_path` in ``folder`` (left by a writer that was killed)."""
    import re

    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = re.compile(_TEMP_NAME)
    return sorted(p for p in folder.iterdir() if pattern.match(p.name) and p.is_file())


def clean_stale_temps(folder) -> list[Path]:
    """Delete :func:`stale_temps` of ``folder``; call it only while holding the folder (no live writer).

    Returns the files removed."""
    removed = []
    for p in stale_temps(folder):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed


class WriteGuard(_StoreWriteGuard):
    """:class:`meshgnn.decomposition.store.WriteGuard` (an h5py file object that never lets a failed write reach
    HDF5, which would crash the process on close) whose :meth:`raise_if_failed` raises a :class:`MeshgnnError`."""

    def raise_if_failed(self, target=None) -> None:
        """Raise :class:`MeshgnnError` naming ``target`` (default the file) if a write has failed."""
        from ..errors import MeshgnnError

        if self.error is not None:
            e = self.error
            raise MeshgnnError(f"{target or self.path}: cannot write ({e.strerror or e}); nothing was written")
