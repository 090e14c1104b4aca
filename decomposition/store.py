"""The part store: a decomposition on disk (one HDF5 file, usually ``<dataset>.parts.h5``), read part by part.

Layout (``SCHEMA_VERSION`` 1)::

    attrs  schema_version, num_parts, halo, method, num_nodes, num_edges, fingerprint, meta (json)
    /owner                 (N,)      int32  owning part of every node
    /parts/<p>/nodes       (n,)      int64  global ids, core first (attr n_core)
    /parts/<p>/hop         (n,)      int16
    /parts/<p>/edge_index  (2, E_p)  int32  local, receiver-sorted (read back as int64)
    /parts/<p>/owner_of    (n,)      int32

``fingerprint`` is :func:`graph_fingerprint` of the graph the parts were cut from; :meth:`PartStore.check_graph`
refuses a store built for another mesh.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np

from .halo import Part, PartSummary

SCHEMA_VERSION = 1


class StoreError(ValueError):
    """A missing, foreign, newer or mismatched part store: ``StoreError(path, field, message)`` reads
    ``path: field: message`` (one line, for a command line to print as is)."""

    def __init__(self, path, field: str | None = None, message: str = ""):
        super().__init__(": ".join([str(path)] + ([field] if field else []) + ([message] if message else [])))
        self.path, self.field = path, field


@contextlib.contextmanager
def atomic_path(path, suffix: str = ".tmp"):
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path`` (so a crash never
    leaves a half-written store); on an exception remove it. Our own few lines: decomposition depends on nothing
    of meshgnn's (meshgnn.io.atomic does the same for meshgnn's files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)      # mkstemp makes 0600; a store is an ordinary file
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class WriteGuard(io.RawIOBase):
    """A file for h5py (``h5py.File(WriteGuard(raw), "w")``) that never lets a failed write reach HDF5.

    HDF5 left with a failed write (full disk, quota, file size limit) crashes the process when the file is
    closed (observed: ~230 lines of h5py tracebacks, then SIGSEGV). Here the first ``OSError`` is remembered,
    later writes are dropped (reported as done), so the file still closes cleanly; the writer then calls
    :meth:`raise_if_failed` and deletes the half-written temporary file. Same speed as h5py's own driver
    (writes are chunk-sized).
    """

    def __init__(self, raw, path):
        super().__init__()
        self.raw, self.path, self.error = raw, Path(path), None

    def readable(self):
        return True

    def writable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=0):
        return self.raw.seek(offset, whence)

    def tell(self):
        return self.raw.tell()

    def readinto(self, b):
        return self.raw.readinto(b)

    def _guarded(self, fn, *args, default=None):
        if self.error is None:
            try:
                return fn(*args)
            except OSError as e:
                self.error = e
        return default

    def write(self, b):
        n = len(memoryview(b).cast("B"))
        done = self._guarded(self.raw.write, b, default=n)
        return n if done is None else done

    def truncate(self, size=None):
        out = self._guarded(self.raw.truncate, size, default=size)
        return size if out is None else out

    def flush(self):
        self._guarded(self.raw.flush)

    def raise_if_failed(self, target=None) -> None:
        """Raise :class:`StoreError` naming ``target`` (default the file) if a write has failed."""
        if self.error is not None:
            e = self.error
            raise StoreError(target or self.path, None, f"cannot write ({e.strerror or e}); nothing was written")


def graph_fingerprint(edge_index, chunk: int = 1 << 22) -> str:
    """Hex blake2b-128 digest of a ``(2, E)`` edge list as int64 (order matters: use the receiver-sorted list).

    ``edge_index`` may be any 2-D array-like with ``shape`` and slicing (an ``h5py`` dataset): it is read
    ``chunk`` entries at a time, so hashing a stored edge list needs no copy of it in memory.
    """
    if not hasattr(edge_index, "shape"):
        edge_index = np.asarray(edge_index)
    shape = tuple(int(x) for x in edge_index.shape)
    h = hashlib.blake2b(digest_size=16)
    h.update(np.array(shape, dtype=np.int64).tobytes())
    if len(shape) != 2:
        h.update(memoryview(np.ascontiguousarray(edge_index, dtype=np.int64).reshape(-1)).cast("B"))
        return h.hexdigest()
    for row in range(shape[0]):                   # row-major bytes: all of row 0, then row 1
        for a in range(0, shape[1], chunk):
            block = np.ascontiguousarray(edge_index[row, a:a + chunk], dtype=np.int64)
            h.update(memoryview(block).cast("B"))
    return h.hexdigest()


def write_part_store(path, parts: Iterable[Part], owner, meta: dict | None = None, *, edge_index=None,
                     method: str = "", halo: int | None = None) -> list[PartSummary]:
    """Write parts (a list, or a generator to keep one part in memory at a time) atomically to ``path``.

    Args:
        path: output ``.h5`` file (replaced only once completely written).
        parts: :class:`Part` objects in part-id order.
        owner: ``(N,)`` owner array.
        meta: json-serialisable extra information (dataset path, layers, integrator, ...).
        edge_index: the whole graph's ``(2, E)`` edges, for ``num_edges`` and ``fingerprint``
            (else taken from ``meta["num_edges"]`` / ``meta["fingerprint"]`` when present).
        method: partition method name. halo: depth (default: the parts' own ``halo``).
    Returns:
        ``[PartSummary]`` of the parts written.
    """
    import h5py

    owner = np.asarray(owner, dtype=np.int32)
    meta = dict(meta or {})
    if edge_index is not None:
        num_edges, fingerprint = int(np.shape(edge_index)[1]), graph_fingerprint(edge_index)
    else:
        num_edges, fingerprint = int(meta.get("num_edges", -1)), str(meta.get("fingerprint", ""))
    summaries = []
    with atomic_path(path, suffix=".h5") as tmp, open(tmp, "w+b", buffering=0) as raw:
        guard = WriteGuard(raw, path)            # a full disk must not crash HDF5 on close (WriteGuard)
        with h5py.File(guard, "w") as f:
            _write_store(f, parts, owner, meta, num_edges, fingerprint, method, halo, summaries)
        guard.raise_if_failed()
    return summaries


def _write_store(f, parts, owner, meta, num_edges, fingerprint, method, halo, summaries) -> None:
    """The part store's content into the open h5py file ``f``; ``summaries`` collects the parts' summaries."""
    f.create_dataset("owner", data=owner)
    group = f.create_group("parts")
    for part in parts:
        _write_part(group.create_group(str(part.part_id)), part)
        summaries.append(part.summary())
        if halo is None:
            halo = part.halo
    f.attrs.update(dict(
        schema_version=SCHEMA_VERSION, num_parts=len(summaries), halo=int(halo or 0), method=str(method),
        num_nodes=owner.size, num_edges=num_edges, fingerprint=fingerprint,
        meta=json.dumps(meta, sort_keys=True, default=str),
    ))


def _write_part(g, part: Part) -> None:
    g.attrs["n_core"] = int(part.n_core)
    g.create_dataset("nodes", data=np.asarray(part.nodes, dtype=np.int64))
    g.create_dataset("hop", data=np.asarray(part.hop, dtype=np.int16))
    local_dtype = np.int32 if part.num_nodes < 2**31 else np.int64
    g.create_dataset("edge_index", data=np.asarray(part.edge_index, dtype=local_dtype))
    g.create_dataset("owner_of", data=np.asarray(part.owner_of, dtype=np.int32))


class PartStore:
    """Read-only handle on a part store; :meth:`read` loads one part only.

    ``PartStore(path)`` validates the schema and raises :class:`StoreError` (one line) on a
    missing, foreign or newer file. Usable as a context manager.
    """

    def __init__(self, path):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(self.path, None, "part store not found (create it with `meshgnn partition`)")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as e:
            raise StoreError(self.path, None, f"not a readable HDF5 part store ({e})") from None
        a = self._file.attrs
        version = a.get("schema_version")
        if version is None or "parts" not in self._file or "owner" not in self._file:
            self.close()
            raise StoreError(self.path, "schema_version", "not a meshgnn part store")
        if int(version) > SCHEMA_VERSION:
            self.close()
            raise StoreError(self.path, "schema_version",
                             f"part store schema {int(version)} is newer than supported ({SCHEMA_VERSION})")
        self.schema_version = int(version)
        self.num_parts = int(a["num_parts"])
        self.halo = int(a["halo"])
        self.method = str(a["method"])
        self.num_nodes = int(a["num_nodes"])
        self.num_edges = int(a["num_edges"])
        self.fingerprint = str(a["fingerprint"])
        self.meta = json.loads(a.get("meta", "{}"))
        self._owner = None

    @property
    def owner(self) -> np.ndarray:
        """``(N,) int32`` owning part of every node."""
        if self._owner is None:
            self._owner = self._file["owner"][...]
        return self._owner

    def read(self, p: int) -> Part:
        """Load part ``p`` (only its own datasets are read)."""
        if not 0 <= int(p) < self.num_parts:
            raise StoreError(self.path, "parts", f"part {p} out of range [0, {self.num_parts})")
        g = self._file["parts"][str(int(p))]
        return Part(int(p), g["nodes"][...].astype(np.int64, copy=False), int(g.attrs["n_core"]), g["hop"][...],
                    g["edge_index"][...].astype(np.int64), g["owner_of"][...], self.halo)

    def summary(self, p: int) -> PartSummary:
        """Sizes of part ``p`` without reading its arrays."""
        g = self._file["parts"][str(int(p))]
        return PartSummary(int(p), int(g.attrs["n_core"]), int(g["nodes"].shape[0]), int(g["edge_index"].shape[1]),
                           self.halo)

    def check_graph(self, edge_index, num_nodes: int | None = None) -> None:
        """Raise :class:`StoreError` (one line) unless ``edge_index`` is the graph this store was cut from.

        ``edge_index``: ``(2, E)`` array, or a stored edge list (``h5py`` dataset) hashed chunk by chunk."""
        e = int(np.shape(edge_index)[1])
        problem = None
        if num_nodes is not None and int(num_nodes) != self.num_nodes:
            problem = f"built for {self.num_nodes} nodes, the dataset has {int(num_nodes)}"
        elif e != self.num_edges:
            problem = f"built for {self.num_edges} edges, the dataset has {e}"
        elif graph_fingerprint(edge_index) != self.fingerprint:
            problem = f"graph fingerprint {self.fingerprint[:12]} does not match the dataset's"
        if problem:
            raise StoreError(self.path, "graph", f"part store does not match the dataset ({problem}); "
                                                 "rerun `meshgnn partition` on this dataset")

    def describe(self) -> str:
        """A readable summary (attributes and the per-part size table) for ``meshgnn info``."""
        from .stats import format_stats, partition_stats

        summaries = [self.summary(p) for p in range(self.num_parts)]
        stats = partition_stats(summaries, None, self.num_nodes, None, num_edges=self.num_edges)
        meta = ", ".join(f"{k}={v}" for k, v in sorted(self.meta.items()))
        return "\n".join([
            f"part store {self.path} (schema {self.schema_version})",
            f"method {self.method}, {self.num_parts} parts, halo {self.halo} hops, graph {self.fingerprint}",
            f"meta: {meta or '-'}",
            format_stats(stats),
        ])

    def __len__(self) -> int:
        return self.num_parts

    def __iter__(self):
        return (self.read(p) for p in range(self.num_parts))

    def close(self) -> None:
        if getattr(self, "_file", None) is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "PartStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"PartStore({str(self.path)!r}, parts={self.num_parts}, halo={self.halo}, method={self.method!r}, "
                f"nodes={self.num_nodes}, edges={self.num_edges})")
