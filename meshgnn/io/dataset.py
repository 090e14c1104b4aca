"""The meshgnn dataset: one HDF5 file holding a mesh and trajectories of node fields on it.

Layout (schema version 1; see ``data/README.md``)::

    /mesh/points        (N, D) float64          D = 3, or 2 for a planar mesh (attr ``dim`` on /mesh = D)
    /mesh/cells/<type>  (M, k) int64           tetra, hexahedron, wedge, pyramid, triangle, quad, line
    /mesh/node_type     (N,)   int8            attr ``names``: json list, code = index
    /mesh/edges         (2, E) int64           receiver-sorted directed edges (both directions)
    /trajectories/<id>/time           (T,) float64
    /trajectories/<id>/fields/<name>  (T, N, C) float32 for state fields, chunks (1, min(N, 65536), C)
                                      (N, C)    float32 for static fields, chunks (min(N, 65536), C)
    /trajectories/<id>  attr ``parameters``: json dict
    /  attrs: schema_version, dt, fields (json list of FieldSpec), dirichlet_types (json), provenance (json),
              dirichlet_fields (json, optional): {state field: [node type names]} -- per-field prescribed values;
              absent: every state field is prescribed on ``dirichlet_types``

Reads are lazy: :meth:`Dataset.read` touches only the chunks holding the requested step and nodes.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, MeshgnnError

SCHEMA_VERSION = 1
NODE_TYPES = ("interior", "inlet", "outlet", "wall", "obstacle")
ROLES = ("state", "static")
CHUNK_NODES = 65536
CELL_NODES = {"line": 2, "triangle": 3, "quad": 4, "tetra": 4, "pyramid": 5, "wedge": 6, "hexahedron": 8}
VOLUME_CELLS = ("tetra", "pyramid", "wedge", "hexahedron")   # need 3-D points; the rest also live in a plane
_CELL_CHECK_ROWS = 1 << 20   # rows of a cell block range-checked at once on open


@dataclass(frozen=True)
class FieldSpec:
    """One node field: ``role`` "state" (changes per step, predicted) or "static" (per trajectory, an input)."""

    name: str
    role: str
    components: int
    units: str = ""

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"field {self.name!r}: role must be one of {ROLES}, got {self.role!r}")
        if int(self.components) < 1:
            raise ValueError(f"field {self.name!r}: components must be >= 1, got {self.components}")


def _json_attr(value) -> str:
    return json.dumps(value, sort_keys=True, default=_json_default)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _chunk_nodes(n: int) -> int:
    return max(1, min(n, CHUNK_NODES))


def _take_nodes(dset, lead: tuple, nodes: np.ndarray) -> np.ndarray:
    """Read rows ``nodes`` (any order, repeats allowed) of ``dset[lead + (node, :)]`` chunk by chunk.

    h5py's fancy indexing needs increasing indices and is slow for many of them; instead read, for every node
    chunk that holds requested nodes, the contiguous span between its first and last requested node, and pick.
    """
    uniq, inverse = np.unique(nodes, return_inverse=True)
    out = np.empty((uniq.size,) + dset.shape[len(lead) + 1:], dtype=np.float32)
    chunk = dset.chunks[len(lead)] if dset.chunks else _chunk_nodes(dset.shape[len(lead)])
    block = uniq // chunk
    bounds = np.flatnonzero(np.diff(block)) + 1
    starts = np.concatenate([[0], bounds])
    stops = np.concatenate([bounds, [uniq.size]])
    for a, b in zip(starts, stops):
        lo, hi = int(uniq[a]), int(uniq[b - 1]) + 1
        span = dset[lead + (slice(lo, hi),)]
        out[a:b] = span[uniq[a:b] - lo]
    return out[inverse]


class Dataset:
    """Read-only, lazy view of a meshgnn HDF5 dataset; validates the schema on open.

    Args:
        path: the ``.h5`` file.
    Raises:
        InputError: ``path: /hdf5/path: expected ...`` for anything that does not match the schema.
    """

    def __init__(self, path):
        import h5py

        self.path = Path(path)
        if not self.path.exists():
            raise InputError(self.path, None, "no such file")
        if not self.path.is_file() or not h5py.is_hdf5(self.path):
            raise InputError(self.path, None, "not an HDF5 file (expected a meshgnn dataset .h5)")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as e:
            raise InputError(self.path, None, f"cannot open HDF5 file ({e})") from None
        try:
            self._validate()
        except BaseException:
            self._f.close()
            raise
        self._cells = None
        self._points = None
        self._node_type = None

    # ---------------------------------------------------------------- validation
    def _err(self, where: str, message: str) -> InputError:
        return InputError(self.path, where, message)

    def _need(self, where: str, kind: str = "dataset"):
        import h5py

        obj = self._f.get(where)
        want = h5py.Dataset if kind == "dataset" else h5py.Group
        if obj is None or not isinstance(obj, want):
            raise self._err(where, f"missing {kind}")
        return obj

    def _attr(self, where: str, name: str, parse_json: bool = False):
        obj = self._f[where]
        label = f"/@{name}" if where == "/" else f"{where}@{name}"
        if name not in obj.attrs:
            raise self._err(label, "missing attribute")
        value = obj.attrs[name]
        if isinstance(value, bytes):
            value = value.decode()
        if parse_json:
            try:
                return json.loads(value)
            except (TypeError, ValueError):
                raise self._err(label, "expected a JSON string") from None
        return value

    def _validate(self) -> None:
        version = self._attr("/", "schema_version")
        if int(np.asarray(version)) != SCHEMA_VERSION:
            raise self._err("/@schema_version", f"expected {SCHEMA_VERSION}, got {version}")
        self.dt = float(np.asarray(self._attr("/", "dt")))
        if not np.isfinite(self.dt) or self.dt <= 0:
            raise self._err("/@dt", f"expected a positive time step, got {self.dt}")
        self._validate_fields()
        self._validate_mesh()
        self._validate_trajectories()

    def _validate_fields(self) -> None:
        raw = self._attr("/", "fields", parse_json=True)
        try:
            specs = [FieldSpec(str(d["name"]), str(d["role"]), int(d["components"]), str(d.get("units", "")))
                     for d in raw]
        except (TypeError, KeyError, ValueError) as e:
            raise self._err("/@fields", f"expected a list of {{name, role, components, units}} ({e})") from None
        self.fields = {s.name: s for s in specs}
        if len(self.fields) != len(specs):
            raise self._err("/@fields", "expected unique field names")
        self.state_fields = [s.name for s in specs if s.role == "state"]
        self.static_fields = [s.name for s in specs if s.role == "static"]
        if not self.state_fields:
            raise self._err("/@fields", "expected at least one state field")
        self.provenance = dict(self._attr("/", "provenance", parse_json=True))

    def _validate_mesh(self) -> None:
        self._need("/mesh", "group")
        points = self._need("/mesh/points")
        if points.ndim != 2 or points.shape[1] not in (2, 3) or points.shape[0] < 1:
            raise self._err("/mesh/points", f"expected shape (N, 3), or (N, 2) for a 2-D mesh, got {points.shape}")
        self.num_nodes = n = int(points.shape[0])
        self.dim = int(points.shape[1])
        if "dim" in self._f["/mesh"].attrs and int(np.asarray(self._f["/mesh"].attrs["dim"])) != self.dim:
            raise self._err("/mesh@dim", f"expected {self.dim} like /mesh/points {points.shape}, "
                                         f"got {self._f['/mesh'].attrs['dim']}")
        nt = self._need("/mesh/node_type")
        if nt.shape != (n,):
            raise self._err("/mesh/node_type", f"expected shape ({n},) like /mesh/points, got {nt.shape}")
        names = self._attr("/mesh/node_type", "names", parse_json=True)
        if not isinstance(names, list) or not names or not all(isinstance(x, str) for x in names):
            raise self._err("/mesh/node_type@names", "expected a JSON list of node type names")
        self.node_type_names = list(names)
        dirichlet = self._attr("/", "dirichlet_types", parse_json=True)
        unknown = [d for d in dirichlet if d not in self.node_type_names]
        if unknown:
            raise self._err("/@dirichlet_types", f"expected names from {self.node_type_names}, got {unknown}")
        self.dirichlet_types = list(dirichlet)
        self.dirichlet_fields = self._dirichlet_fields()
        cells = self._need("/mesh/cells", "group")
        if not len(cells):
            raise self._err("/mesh/cells", "expected at least one cell block")
        for ctype, block in cells.items():
            self._validate_cells(f"/mesh/cells/{ctype}", ctype, block, n)
            if self.dim == 2 and ctype in VOLUME_CELLS:
                raise self._err(f"/mesh/cells/{ctype}", "volume cells need 3-D points, /mesh/points is (N, 2)")
        if "edges" in self._f["/mesh"]:
            e = self._f["/mesh/edges"]
            if e.ndim != 2 or e.shape[0] != 2:
                raise self._err("/mesh/edges", f"expected shape (2, E), got {e.shape}")

    def _dirichlet_fields(self) -> dict[str, list[str]]:
        """``{state field: node types prescribing it}`` from ``/@dirichlet_fields``, else ``dirichlet_types``."""
        if "dirichlet_fields" not in self._f.attrs:
            return {f: list(self.dirichlet_types) for f in self.state_fields}
        raw = self._attr("/", "dirichlet_fields", parse_json=True)
        where = "/@dirichlet_fields"
        if not isinstance(raw, dict):
            raise self._err(where, "expected a JSON object {state field: [node type names]}")
        out = {f: [] for f in self.state_fields}
        for name, types in raw.items():
            if name not in self.state_fields:
                raise self._err(where, f"{name!r} is not a state field (have {self.state_fields})")
            if not isinstance(types, list) or any(t not in self.node_type_names for t in types):
                raise self._err(where, f"{name}: expected a list of node types from {self.node_type_names}, "
                                       f"got {types!r}")
            out[name] = list(types)
        return out

    def _validate_cells(self, where: str, ctype: str, block, n: int) -> None:
        if ctype not in CELL_NODES:
            raise self._err(where, f"expected a cell type in {sorted(CELL_NODES)}")
        k = CELL_NODES[ctype]
        if block.ndim != 2 or block.shape[1] != k:
            raise self._err(where, f"expected shape (M, {k}), got {block.shape}")
        if not np.issubdtype(block.dtype, np.integer):
            raise self._err(where, f"expected integer node indices, got {block.dtype}")
        for lo in range(0, block.shape[0], _CELL_CHECK_ROWS):
            part = block[lo:lo + _CELL_CHECK_ROWS]
            if part.size and (part.min() < 0 or part.max() >= n):
                bad = int(np.count_nonzero((part < 0) | (part >= n)))
                raise self._err(where, f"expected node indices in [0, {n}), found {bad} outside")

    def _validate_trajectories(self) -> None:
        group = self._need("/trajectories", "group")
        self.trajectories = list(group.keys())
        n = self.num_nodes
        for tid in self.trajectories:
            base = f"/trajectories/{tid}"
            self._need(base, "group")
            time = self._need(f"{base}/time")
            if time.ndim != 1:
                raise self._err(f"{base}/time", f"expected shape (T,), got {time.shape}")
            t = time.shape[0]
            self._attr(base, "parameters", parse_json=True)
            for name, spec in self.fields.items():
                where = f"{base}/fields/{name}"
                d = self._need(where)
                want = (t, n, spec.components) if spec.role == "state" else (n, spec.components)
                if d.shape != want:
                    what = "(T, N, C)" if spec.role == "state" else "(N, C)"
                    raise self._err(where, f"expected shape {what} = {want}, got {d.shape}")

    # ---------------------------------------------------------------- mesh
    @property
    def points(self) -> np.ndarray:
        """(N, D) float64 node coordinates (D = :attr:`dim`, 2 or 3)."""
        if self._points is None:
            self._points = np.asarray(self._f["/mesh/points"][...], dtype=np.float64)
        return self._points

    @property
    def node_type(self) -> np.ndarray:
        """(N,) int8 node type codes (index into :attr:`node_type_names`)."""
        if self._node_type is None:
            nt = np.asarray(self._f["/mesh/node_type"][...]).astype(np.int8)
            if nt.size and (nt.min() < 0 or nt.max() >= len(self.node_type_names)):
                raise self._err("/mesh/node_type", f"expected codes in [0, {len(self.node_type_names)})")
            self._node_type = nt
        return self._node_type

    @property
    def cells(self) -> dict[str, np.ndarray]:
        """``{cell_type: (M, k) int64}``."""
        if self._cells is None:
            self._cells = {k: np.asarray(v[...], dtype=np.int64) for k, v in self._f["/mesh/cells"].items()}
        return self._cells

    def edge_index(self) -> np.ndarray:
        """(2, E) int64 receiver-sorted directed edges (stored at /mesh/edges, else derived from the cells)."""
        if "edges" in self._f["/mesh"]:
            e = np.asarray(self._f["/mesh/edges"][...], dtype=np.int64)
            if e.size and (e.min() < 0 or e.max() >= self.num_nodes):
                raise self._err("/mesh/edges", f"expected node indices in [0, {self.num_nodes})")
            return e
        from ..graph import edges_from_cells

        return edges_from_cells(self.cells, self.num_nodes)

    # ---------------------------------------------------------------- trajectories
    def _traj(self, traj) -> str:
        tid = str(traj)
        if tid not in self._f["/trajectories"]:
            raise InputError(self.path, f"/trajectories/{tid}", f"no such trajectory (have {self.trajectories})")
        return tid

    def num_steps(self, traj) -> int:
        return int(self._f[f"/trajectories/{self._traj(traj)}/time"].shape[0])

    def times(self, traj) -> np.ndarray:
        """(T,) float64 times of the recorded steps."""
        return np.asarray(self._f[f"/trajectories/{self._traj(traj)}/time"][...], dtype=np.float64)

    def parameters(self, traj) -> dict:
        return dict(self._attr(f"/trajectories/{self._traj(traj)}", "parameters", parse_json=True))

    def read(self, traj, field: str, step: int | None = None, nodes=None) -> np.ndarray:
        """Values of one field: ``(N, C)`` or ``(len(nodes), C)`` float32 (static fields ignore ``step``)."""
        tid = self._traj(traj)
        if field not in self.fields:
            raise InputError(self.path, f"/trajectories/{tid}/fields/{field}",
                             f"no such field (have {list(self.fields)})")
        dset = self._f[f"/trajectories/{tid}/fields/{field}"]
        lead: tuple = ()
        if self.fields[field].role == "state":
            if step is None:
                raise ValueError(f"read({traj!r}, {field!r}): state fields need a step")
            t = dset.shape[0]
            if not -t <= int(step) < t:
                raise IndexError(f"step {step} out of range for trajectory {tid} with {t} steps")
            lead = (int(step) % t,)
        if nodes is not None:
            nodes = np.asarray(nodes, dtype=np.int64).reshape(-1)
            if nodes.size == 0:
                return np.zeros((0, self.fields[field].components), dtype=np.float32)
            if nodes.min() < 0 or nodes.max() >= self.num_nodes:
                raise IndexError(f"node ids must lie in [0, {self.num_nodes})")
        try:
            if nodes is None:
                return np.asarray(dset[lead + (slice(None),)], dtype=np.float32)
            return _take_nodes(dset, lead, nodes)
        except OSError as e:  # a damaged chunk (bit rot, partial copy): name the data, not h5py's internals
            at = f"step {lead[0]}: " if lead else ""
            raise InputError(self.path, f"/trajectories/{tid}/fields/{field}",
                             f"{at}unreadable data, the file is damaged ({e})") from None

    def read_state(self, traj, step: int, nodes=None) -> np.ndarray:
        """(n, sum of state components) float32, fields concatenated in :attr:`state_fields` order."""
        return np.concatenate([self.read(traj, f, step, nodes) for f in self.state_fields], axis=1)

    def read_static(self, traj, nodes=None) -> np.ndarray:
        """(n, sum of static components) float32; (n, 0) when the dataset has no static fields."""
        if not self.static_fields:
            n = self.num_nodes if nodes is None else int(np.asarray(nodes).size)
            return np.zeros((n, 0), dtype=np.float32)
        return np.concatenate([self.read(traj, f, None, nodes) for f in self.static_fields], axis=1)

    # ---------------------------------------------------------------- housekeeping
    def cell_counts(self) -> dict[str, int]:
        """``{cell type: M}`` from the stored shapes (no cell is read)."""
        return {k: int(v.shape[0]) for k, v in self._f["/mesh/cells"].items()}

    def stored_dtype(self, where: str) -> np.dtype | None:
        """The on-disk dtype of the HDF5 dataset ``where`` (e.g. ``/mesh/points``); ``None`` when absent."""
        obj = self._f.get(where)
        return getattr(obj, "dtype", None)

    def node_type_counts(self) -> dict[str, int]:
        counts = np.bincount(self.node_type, minlength=len(self.node_type_names))
        return {name: int(c) for name, c in zip(self.node_type_names, counts)}

    def close(self) -> None:
        if getattr(self, "_f", None) is not None:
            self._f.close()
            self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"Dataset({str(self.path)!r}, nodes={self.num_nodes}, trajectories={len(self.trajectories)}, "
                f"state={self.state_fields}, static={self.static_fields})")


class DatasetWriter:
    """Write a dataset to a temporary file that is renamed to ``path`` only when the ``with`` block exits cleanly.

    Args:
        path: output ``.h5``.
        points: (N, 3) float coordinates, or (N, 2) for a 2-D mesh (triangles, quads, lines only).
        cells: ``{cell_type: (M, k) int}``.
        node_type: (N,) int codes into ``node_type_names``.
        node_type_names: names of the codes (default :data:`NODE_TYPES`).
        dt: time between recorded steps.
        fields: list of :class:`FieldSpec` (order fixes the state/static concatenation order).
        dirichlet_types: node type names whose state values the data prescribes (every state field).
        dirichlet_fields: optional ``{state field: [node type names]}``: per-field prescribed values (overrides
            ``dirichlet_types``; a state field left out is prescribed nowhere).
        provenance: JSON-able dict; :attr:`provenance` may be updated until the writer closes.
        compression: h5py filter for field data (``"lzf"`` default, ``None`` for none).
        edges: optional precomputed ``edges_from_cells(cells, N)`` (2, E), to skip recomputing it.
    """

    def __init__(self, path, points, cells, node_type, node_type_names=NODE_TYPES, dt: float = 1.0,
                 fields=(), dirichlet_types=(), provenance=None, compression: str | None = "lzf", edges=None,
                 dirichlet_fields=None):
        self.path = Path(path)
        self.points = np.asarray(points, dtype=np.float64)
        if self.points.ndim != 2 or self.points.shape[1] not in (2, 3):
            raise ValueError(f"points: expected shape (N, 3) or (N, 2), got {self.points.shape}")
        self.num_nodes = n = self.points.shape[0]
        self.cells = {str(k): np.asarray(v, dtype=np.int64) for k, v in cells.items()}
        flat3 = sorted(set(self.cells) & set(VOLUME_CELLS)) if self.points.shape[1] == 2 else []
        if flat3:
            raise ValueError(f"cells[{flat3[0]!r}]: volume cells need (N, 3) points, got {self.points.shape}")
        for k, v in self.cells.items():
            if k not in CELL_NODES or v.ndim != 2 or v.shape[1] != CELL_NODES[k]:
                raise ValueError(f"cells[{k!r}]: expected a known cell type with shape (M, {CELL_NODES.get(k)})")
            if v.size and (v.min() < 0 or v.max() >= n):
                raise ValueError(f"cells[{k!r}]: node indices outside [0, {n})")
        self.node_type = np.asarray(node_type).astype(np.int8)
        self.node_type_names = [str(x) for x in node_type_names]
        if self.node_type.shape != (n,):
            raise ValueError(f"node_type: expected shape ({n},), got {self.node_type.shape}")
        if n and (self.node_type.min() < 0 or self.node_type.max() >= len(self.node_type_names)):
            raise ValueError(f"node_type: codes outside [0, {len(self.node_type_names)})")
        self.dt = float(dt)
        self.fields = {f.name: f for f in fields}
        if not any(f.role == "state" for f in fields):
            raise ValueError("fields: expected at least one state field")
        self.dirichlet_types = [str(d) for d in dirichlet_types]
        bad = [d for d in self.dirichlet_types if d not in self.node_type_names]
        if bad:
            raise ValueError(f"dirichlet_types: unknown node types {bad}")
        self.dirichlet_fields = None
        if dirichlet_fields is not None:
            self.dirichlet_fields = {str(k): [str(t) for t in v] for k, v in dirichlet_fields.items()}
            for name, types in self.dirichlet_fields.items():
                if name not in self.fields or self.fields[name].role != "state":
                    raise ValueError(f"dirichlet_fields: {name!r} is not a state field")
                bad = [t for t in types if t not in self.node_type_names]
                if bad:
                    raise ValueError(f"dirichlet_fields[{name!r}]: unknown node types {bad}")
        self.provenance = dict(provenance or {})
        self.compression = compression
        self._edges = None if edges is None else np.asarray(edges, dtype=np.int64)
        self._steps_written: dict[str, np.ndarray] = {}
        self._atomic = None
        self._f = None

    # ---------------------------------------------------------------- context
    def __enter__(self):
        import h5py

        from .atomic import WriteGuard, atomic_path

        self._atomic = atomic_path(self.path, suffix=".h5.tmp")
        try:
            tmp = self._atomic.__enter__()
        except OSError as e:
            raise MeshgnnError(f"{self.path}: cannot write the dataset ({e.strerror or e})") from None
        try:
            self._raw = open(tmp, "w+b", buffering=0)
            self._guard = WriteGuard(self._raw, self.path)   # a full disk must not crash HDF5 (atomic.py)
            self._f = h5py.File(self._guard, "w")
            self._write_mesh()
            self._guard.raise_if_failed()
        except BaseException as e:
            self._abort(e)
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self._check_complete()
                self._f.attrs["provenance"] = _json_attr(self.provenance)
                self._f.close()
                self._f = None
                self._raw.close()
                self._guard.raise_if_failed()
            except BaseException as e:
                self._abort(e)
                raise
            self._atomic.__exit__(None, None, None)
            return False
        self._abort(exc)
        return False

    def _abort(self, exc) -> None:
        if self._f is not None:
            try:
                self._f.close()
            except Exception:  # noqa: BLE001 - already failing; the temp file is deleted next
                pass
            self._f = None
        if getattr(self, "_raw", None) is not None:
            self._raw.close()
        if self._atomic is not None:
            try:
                self._atomic.__exit__(type(exc), exc, exc.__traceback__)
            except BaseException:  # noqa: BLE001 - atomic_path re-raises the exception it was given
                pass
            self._atomic = None

    def _check_complete(self) -> None:
        for tid, done in self._steps_written.items():
            if not done.all():
                missing = np.flatnonzero(~done)
                raise MeshgnnError(f"{self.path}: trajectory {tid}: steps {missing[:10].tolist()}"
                                   f"{' ...' if missing.size > 10 else ''} were never written")

    # ---------------------------------------------------------------- content
    def _write_mesh(self) -> None:
        from ..graph import edges_from_cells

        f = self._f
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["dt"] = self.dt
        f.attrs["fields"] = json.dumps([asdict(s) for s in self.fields.values()])
        f.attrs["dirichlet_types"] = json.dumps(self.dirichlet_types)
        if self.dirichlet_fields is not None:
            f.attrs["dirichlet_fields"] = json.dumps(self.dirichlet_fields, sort_keys=True)
        f.attrs["provenance"] = _json_attr(self.provenance)
        mesh = f.create_group("mesh")
        mesh.attrs["dim"] = int(self.points.shape[1])
        mesh.create_dataset("points", data=self.points)
        cells = mesh.create_group("cells")
        for k, v in self.cells.items():
            cells.create_dataset(k, data=v, chunks=(min(max(len(v), 1), 1 << 18), v.shape[1]) if len(v) else None,
                                 compression=self.compression if len(v) else None)
        nt = mesh.create_dataset("node_type", data=self.node_type)
        nt.attrs["names"] = json.dumps(self.node_type_names)
        edges = self._edges if self._edges is not None else edges_from_cells(self.cells, self.num_nodes)
        if edges.ndim != 2 or edges.shape[0] != 2:
            raise ValueError(f"edges: expected shape (2, E), got {edges.shape}")
        mesh.create_dataset("edges", data=edges, chunks=(2, min(max(edges.shape[1], 1), 1 << 20))
                            if edges.shape[1] else None, compression=self.compression if edges.shape[1] else None)
        f.create_group("trajectories", track_order=True)

    def add_trajectory(self, traj_id, num_steps: int, parameters=None, static=None) -> None:
        """Create trajectory ``traj_id`` with ``num_steps`` steps; ``static`` = ``{name: (N, C)}`` for every
        static field."""
        tid = str(traj_id)
        if not tid or "/" in tid:
            raise ValueError(f"trajectory id {tid!r}: expected a non-empty name without '/'")
        if tid in self._steps_written:
            raise ValueError(f"trajectory {tid!r} already exists")
        num_steps = int(num_steps)
        if num_steps < 1:
            raise ValueError(f"trajectory {tid}: num_steps must be >= 1")
        static = dict(static or {})
        need = [f for f, s in self.fields.items() if s.role == "static"]
        extra = set(static) - set(need)
        if set(need) - set(static) or extra:
            raise ValueError(f"trajectory {tid}: static fields given {sorted(static)}, expected {sorted(need)}")
        g = self._f["trajectories"].create_group(tid)
        g.attrs["parameters"] = _json_attr(dict(parameters or {}))
        g.create_dataset("time", data=np.full(num_steps, np.nan))
        fg = g.create_group("fields")
        n, cn = self.num_nodes, _chunk_nodes(self.num_nodes)
        for name, spec in self.fields.items():
            c = spec.components
            if spec.role == "state":
                fg.create_dataset(name, shape=(num_steps, n, c), dtype=np.float32, chunks=(1, cn, c),
                                  compression=self.compression)
            else:
                values = self._checked(tid, name, "static", static[name])
                fg.create_dataset(name, data=values, chunks=(cn, c), compression=self.compression)
        self._steps_written[tid] = np.zeros(num_steps, dtype=bool)

    def _checked(self, tid: str, name: str, step, values) -> np.ndarray:
        spec = self.fields[name]
        values = np.asarray(values, dtype=np.float32)
        if values.ndim == 1 and spec.components == 1:
            values = values[:, None]
        if values.shape != (self.num_nodes, spec.components):
            raise ValueError(f"trajectory {tid}: field {name}: step {step}: expected shape "
                             f"({self.num_nodes}, {spec.components}), got {values.shape}")
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise InputError(self.path, f"/trajectories/{tid}/fields/{name}",
                             f"step {step}: {bad} non-finite values (NaN/Inf); expected finite numbers")
        return values

    def write_step(self, traj_id, step: int, time: float, values: dict) -> None:
        """Write ``{state_name: (N, C)}`` for every state field at ``step`` of trajectory ``traj_id``."""
        tid = str(traj_id)
        if tid not in self._steps_written:
            raise ValueError(f"trajectory {tid!r}: call add_trajectory first")
        done = self._steps_written[tid]
        if not 0 <= int(step) < done.size:
            raise IndexError(f"trajectory {tid}: step {step} outside [0, {done.size})")
        need = [f for f, s in self.fields.items() if s.role == "state"]
        if set(values) != set(need):
            raise ValueError(f"trajectory {tid}: step {step}: state fields given {sorted(values)}, "
                             f"expected {sorted(need)}")
        if not np.isfinite(time):
            raise InputError(self.path, f"/trajectories/{tid}/time", f"step {step}: time is not finite")
        checked = {name: self._checked(tid, name, step, v) for name, v in values.items()}
        g = self._f[f"trajectories/{tid}"]
        for name, v in checked.items():
            g["fields"][name][int(step)] = v
        g["time"][int(step)] = float(time)
        self._guard.raise_if_failed()
        done[int(step)] = True

    def write_steps(self, traj_id, start: int, times, values: dict) -> None:
        """Write steps ``start .. start + K - 1`` at once: ``times`` (K,), ``{state_name: (K, N, C)}`` (one HDF5
        write per field instead of K; the same checks as :meth:`write_step`)."""
        tid, times = str(traj_id), np.asarray(times, dtype=np.float64).reshape(-1)
        done = self._steps_written.get(tid)
        if done is None:
            raise ValueError(f"trajectory {tid!r}: call add_trajectory first")
        k, start = times.size, int(start)
        if not (0 <= start and start + k <= done.size):
            raise IndexError(f"trajectory {tid}: steps {start}..{start + k - 1} outside [0, {done.size})")
        need = [f for f, s in self.fields.items() if s.role == "state"]
        if set(values) != set(need):
            raise ValueError(f"trajectory {tid}: state fields given {sorted(values)}, expected {sorted(need)}")
        if not np.isfinite(times).all():
            raise InputError(self.path, f"/trajectories/{tid}/time",
                             f"step {start + int(np.argmin(np.isfinite(times)))}: time is not finite")
        checked = {}
        for name, v in values.items():
            v = np.asarray(v, dtype=np.float32)
            v = v[..., None] if v.ndim == 2 and self.fields[name].components == 1 else v
            if v.shape != (k, self.num_nodes, self.fields[name].components):
                raise ValueError(f"trajectory {tid}: field {name}: expected shape ({k}, {self.num_nodes}, "
                                 f"{self.fields[name].components}), got {v.shape}")
            bad = ~np.isfinite(v).reshape(k, -1).all(1)
            if bad.any():
                self._checked(tid, name, start + int(np.argmax(bad)), v[int(np.argmax(bad))])   # raises, names it
            checked[name] = v
        g = self._f[f"trajectories/{tid}"]
        for name, v in checked.items():
            g["fields"][name][start:start + k] = v
        g["time"][start:start + k] = times
        self._guard.raise_if_failed()
        done[start:start + k] = True


def describe(ds: Dataset) -> str:
    """A human-readable multi-line summary of a dataset (used by ``meshgnn info``)."""
    size = os.path.getsize(ds.path)
    lines = [f"dataset        {ds.path}  ({size / 2**20:.1f} MiB, schema v{SCHEMA_VERSION})",
             f"mesh           {ds.dim}-D, {ds.num_nodes} nodes, "
             + ", ".join(f"{m} {k}" for k, m in _cell_counts(ds).items())
             + f", {ds._f['/mesh/edges'].shape[1] if 'edges' in ds._f['/mesh'] else '?'} directed edges"]
    counts = ds.node_type_counts()
    lines.append("node types     " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    per_field = {f: t for f, t in ds.dirichlet_fields.items()}
    if all(t == ds.dirichlet_types for t in per_field.values()):
        lines.append(f"dirichlet      {ds.dirichlet_types or 'none'} (all state fields)")
    else:
        lines.append("dirichlet      " + "; ".join(f"{f} on {', '.join(t) or 'none'}" for f, t in per_field.items()))
    lines.append(f"dt             {ds.dt:g}")
    for name, s in ds.fields.items():
        lines.append(f"field          {name:<12} {s.role:<6} {s.components} comp  [{s.units}]")
    lines.append(f"trajectories   {len(ds.trajectories)}")
    for tid in ds.trajectories:
        t = ds.times(tid)
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in ds.parameters(tid).items())
        lines.append(f"  {tid:<12} {t.size} steps, t = {t[0]:g} .. {t[-1]:g}   {params}")
    for i, (k, v) in enumerate(ds.provenance.items()):
        lines.append(f"{'provenance' if i == 0 else '':<15}{k} = {_fmt(v)}")
    return "\n".join(lines)


def _cell_counts(ds: Dataset) -> dict[str, int]:
    return {k: int(v.shape[0]) for k, v in ds._f["/mesh/cells"].items()}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and len(v) > 6:
        return f"[{len(v)} values]"
    return str(v)
