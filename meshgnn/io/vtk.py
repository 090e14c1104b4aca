"""ParaView-ready rollout output: ``.pvd`` collections of ``.vtu`` files, partitioned ``.pvtu`` pieces, VTKHDF.

Formats
-------
``pvd``     ``<out>/<name>.pvd`` (a ParaView collection, one ``<DataSet timestep=...>`` per written step) pointing to
            ``<name>_<step:05d>.vtu``: XML UnstructuredGrid, raw binary *appended* data, ``header_type="UInt64"``,
            written with numpy alone (the mesh arrays are prepared once and streamed as-is every step, so a
            3M-node frame costs one sequential write). Each ``.vtu`` goes through :func:`atomic_path` and the
            ``.pvd`` is rewritten atomically after every step, so an interrupted rollout leaves a valid series
            listing only complete steps.
``pvtu``    :class:`PartitionedRolloutWriter`: every rank writes ``<name>_<step:05d>_p<rank:04d>.vtu``; rank 0
            writes ``<name>_<step:05d>.pvtu`` and the ``.pvd`` listing the ``.pvtu`` files. Pieces carry the
            cell field ``part`` and the point field ``global_id``. :class:`RolloutWriter` with ``"pvtu"`` cuts
            whole frames into such pieces by a node ``part`` array from one process.
``vtkhdf``  ``<out>/<name>.vtkhdf``: one HDF5 file in the VTKHDF 2.0 transient UnstructuredGrid layout; the mesh
            is stored once (all ``Steps/*Offsets`` of the geometry are 0) and every point field is appended per
            step (``Steps/PointDataOffsets/<field>`` = step index x N). Written to a temporary name and renamed
            when the writer closes; the ``.pvd`` series is the crash-safe one.

Field names and units
---------------------
Arrays keep plain names (``co2``, ``co2_ref``, ``co2_err``; an (N, C) field is one C-component array, so a
3-component field is a vector in ParaView). The unit string of each array is stored the VTK way, as the
``UNITS_LABEL`` information key of the data array (``<InformationKey name="UNITS_LABEL" ...>`` in XML, the
``Units`` attribute in VTKHDF): VTK and ParaView read it back with the array
(``array.GetInformation().Get(vtkDataArray.UNITS_LABEL())``), meshio ignores it, and :mod:`meshgnn.render` /
``jobs/paraview_render.py`` title colour bars ``"co2 [mol/m^3]"`` from it. Plain names keep scripts, ParaView
state files and ``meshgnn render --field co2`` simple.
"""
from __future__ import annotations

import contextlib
import os
import re
import time as _time
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from ..errors import MeshgnnError
from .atomic import atomic_path

#: meshio-style cell type names -> VTK cell type ids (VTK node order assumed).
VTK_CELL_TYPES = {"vertex": 1, "line": 3, "triangle": 5, "quad": 9, "tetra": 10, "hexahedron": 12,
                  "wedge": 13, "pyramid": 14}
_VTK_DTYPES = {np.dtype(np.float32): "Float32", np.dtype(np.float64): "Float64", np.dtype(np.int8): "Int8",
               np.dtype(np.uint8): "UInt8", np.dtype(np.int16): "Int16", np.dtype(np.uint16): "UInt16",
               np.dtype(np.int32): "Int32", np.dtype(np.uint32): "UInt32", np.dtype(np.int64): "Int64",
               np.dtype(np.uint64): "UInt64"}
FORMATS = ("pvd", "pvtu", "vtkhdf")
STEP_DIGITS = 5


# ----------------------------------------------------------------------------------------------------------------
# arrays and the mesh, prepared once
# ----------------------------------------------------------------------------------------------------------------
def _as_vtk_array(name: str, values, n: int | None = None) -> np.ndarray:
    """A C-contiguous little-endian copy-free view of ``values`` (n,) or (n, C) with a VTK-writable dtype."""
    a = np.asarray(values)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    elif a.dtype.kind == "f" and a.dtype.itemsize not in (4, 8):
        a = a.astype(np.float32)
    if a.dtype.newbyteorder("<") not in _VTK_DTYPES:
        raise MeshgnnError(f"field {name!r}: dtype {a.dtype} cannot be written to VTK")
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    if a.ndim not in (1, 2) or (n is not None and a.shape[0] != n):
        raise MeshgnnError(f"field {name!r}: expected shape ({n},) or ({n}, C), got {a.shape}")
    return a


def pad_points_3d(points) -> np.ndarray:
    """(N, 3) float64 points: a 2-D mesh's (N, 2) points get z = 0 (VTK points are always 3-D)."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 2:
        p = np.concatenate([p, np.zeros((p.shape[0], 1))], axis=1)
    if p.ndim != 2 or p.shape[1] != 3:
        raise MeshgnnError(f"points: expected shape (N, 3) or (N, 2), got {p.shape}")
    return p


class VtuMesh:
    """An unstructured mesh laid out as the VTK arrays it is written as (built once, reused every step).

    points (N, 3) float64 (an (N, 2) input gets z = 0); cells {type: (M_t, k_t)} node ids; connectivity
    (sum M_t k_t,), offsets (M,) (end offsets, VTK XML convention), types (M,) uint8, in the insertion order of
    ``cells``.
    """

    def __init__(self, points, cells: dict):
        self.points = _as_vtk_array("points", pad_points_3d(points))
        self.num_points = self.points.shape[0]
        idx = np.int32 if self.num_points < 2**31 - 1 else np.int64
        conn, sizes, types = [], [], []
        for ctype, block in cells.items():
            if ctype not in VTK_CELL_TYPES:
                raise MeshgnnError(f"cells: unsupported cell type {ctype!r} (have {', '.join(VTK_CELL_TYPES)})")
            block = np.asarray(block)
            if block.ndim != 2:
                raise MeshgnnError(f"cells/{ctype}: expected shape (M, k), got {block.shape}")
            if block.size and (block.min() < 0 or block.max() >= self.num_points):
                raise MeshgnnError(f"cells/{ctype}: node ids outside [0, {self.num_points})")
            conn.append(block.astype(idx, copy=False).ravel())
            sizes.append(np.full(block.shape[0], block.shape[1], dtype=np.int64))
            types.append(np.full(block.shape[0], VTK_CELL_TYPES[ctype], dtype=np.uint8))
        self.connectivity = np.ascontiguousarray(np.concatenate(conn) if conn else np.zeros(0, idx))
        sizes = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
        self.offsets = np.cumsum(sizes).astype(idx)
        self.types = np.concatenate(types) if types else np.zeros(0, np.uint8)
        self.num_cells = self.types.shape[0]


# ----------------------------------------------------------------------------------------------------------------
# XML writers
# ----------------------------------------------------------------------------------------------------------------
def _data_array_xml(tag: str, name: str | None, a: np.ndarray, offset: int, units: str = "", indent="        ",
                    appended=True) -> str:
    attrs = f'type="{_VTK_DTYPES[a.dtype.newbyteorder("<")]}"'
    if name is not None:
        attrs += f" Name={quoteattr(name)}"
    if a.ndim == 2:                     # (n,) arrays omit it: VTK reads 1, meshio then returns (n,) not (n, 1)
        attrs += f' NumberOfComponents="{a.shape[1]}"'
    if appended:
        attrs += f' format="appended" offset="{offset}"'
    if not units:
        return f"{indent}<{tag} {attrs}/>\n"
    return (f"{indent}<{tag} {attrs}>\n{indent}  <InformationKey name=\"UNITS_LABEL\" location=\"vtkDataArray\">"
            f"{escape(units)}</InformationKey>\n{indent}</{tag}>\n")


def write_vtu(path, mesh: VtuMesh, point_data: dict | None = None, cell_data: dict | None = None,
              units: dict | None = None) -> Path:
    """Write one ``.vtu`` (raw appended binary, UInt64 headers) atomically. Arrays: (N|M,) or (N|M, C)."""
    units = units or {}
    pdata = {k: _as_vtk_array(k, v, mesh.num_points) for k, v in (point_data or {}).items()}
    cdata = {k: _as_vtk_array(k, v, mesh.num_cells) for k, v in (cell_data or {}).items()}
    blocks, offset = [], 0

    def add(tag, name, a, unit=""):
        nonlocal offset
        xml = _data_array_xml(tag, name, a, offset, unit)
        blocks.append(a)
        offset += 8 + a.nbytes
        return xml

    head = ['<?xml version="1.0"?>\n',
            '<VTKFile type="UnstructuredGrid" version="1.0" byte_order="LittleEndian" header_type="UInt64">\n',
            '  <UnstructuredGrid>\n',
            f'    <Piece NumberOfPoints="{mesh.num_points}" NumberOfCells="{mesh.num_cells}">\n',
            '      <PointData>\n']
    head += [add("DataArray", k, a, units.get(k, "")) for k, a in pdata.items()]
    head += ['      </PointData>\n      <CellData>\n']
    head += [add("DataArray", k, a, units.get(k, "")) for k, a in cdata.items()]
    head += ['      </CellData>\n      <Points>\n', add("DataArray", "Points", mesh.points),
             '      </Points>\n      <Cells>\n', add("DataArray", "connectivity", mesh.connectivity),
             add("DataArray", "offsets", mesh.offsets), add("DataArray", "types", mesh.types),
             '      </Cells>\n    </Piece>\n  </UnstructuredGrid>\n  <AppendedData encoding="raw">\n   _']
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write("".join(head).encode())
        for a in blocks:
            f.write(np.uint64(a.nbytes).tobytes())
            f.write(a.reshape(-1).view(np.uint8).data if a.size else b"")
        f.write(b"\n  </AppendedData>\n</VTKFile>\n")
    return path


def write_pvtu(path, pieces: list[str], point_arrays: dict, cell_arrays: dict, units: dict | None = None,
               points_dtype=np.float64) -> Path:
    """Write a ``.pvtu`` naming ``pieces`` (paths relative to the .pvtu). ``*_arrays``: {name: example array}."""
    units = units or {}
    lines = ['<?xml version="1.0"?>\n',
             '<VTKFile type="PUnstructuredGrid" version="1.0" byte_order="LittleEndian" header_type="UInt64">\n',
             '  <PUnstructuredGrid GhostLevel="0">\n    <PPointData>\n']
    lines += [_data_array_xml("PDataArray", k, a, 0, units.get(k, ""), "      ", False) for k, a in point_arrays.items()]
    lines += ['    </PPointData>\n    <PCellData>\n']
    lines += [_data_array_xml("PDataArray", k, a, 0, units.get(k, ""), "      ", False) for k, a in cell_arrays.items()]
    lines += ['    </PCellData>\n    <PPoints>\n',
              _data_array_xml("PDataArray", "Points", np.zeros((0, 3), points_dtype), 0, "", "      ", False),
              '    </PPoints>\n']
    lines += [f"    <Piece Source={quoteattr(p)}/>\n" for p in pieces]
    lines += ['  </PUnstructuredGrid>\n</VTKFile>\n']
    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_text("".join(lines))
    return path


def write_pvd(path, entries: list[tuple[float, str]]) -> Path:
    """Write a ParaView collection atomically: ``entries`` = [(time, file relative to the .pvd)]."""
    lines = ['<?xml version="1.0"?>\n', '<VTKFile type="Collection" version="0.1" byte_order="LittleEndian">\n',
             '  <Collection>\n']
    lines += [f'    <DataSet timestep="{float(t)!r}" group="" part="0" file={quoteattr(f)}/>\n' for t, f in entries]
    lines += ['  </Collection>\n</VTKFile>\n']
    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_text("".join(lines))
    return path


def read_pvd(path) -> list[tuple[float, Path]]:
    """The (time, absolute file path) entries of a ``.pvd`` in file order."""
    import xml.etree.ElementTree as ET

    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise MeshgnnError(f"{path}: not a readable .pvd collection ({e})") from None
    out = []
    for ds in root.iter("DataSet"):
        out.append((float(ds.get("timestep", len(out))), path.parent / ds.get("file")))
    return out


_STEP_RE = re.compile(r"_(\d+)\.p?vtu$")


VTK_XML_SUFFIXES = (".vtu", ".pvtu", ".vtp", ".vts", ".vtr", ".vti", ".vtm", ".pvd")


def check_vtk_header(path) -> None:
    """Raise a one-line :class:`InputError` unless ``path`` starts like a VTK file (XML ``<VTKFile`` / legacy
    ``# vtk DataFile``): VTK itself prints pages of C++ errors for random bytes and returns an empty mesh."""
    from ..errors import InputError

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VTK_XML_SUFFIXES + (".vtk",) or not path.is_file():
        return
    with open(path, "rb") as f:
        head = f.read(1024)
    ok = head.lstrip().startswith(b"# vtk DataFile") if suffix == ".vtk" else (b"<VTKFile" in head)
    if not ok:
        raise InputError(path, None, f"not a VTK {'legacy' if suffix == '.vtk' else 'XML'} file (no VTK header; "
                                     "damaged or another format)")


def step_of(file) -> int | None:
    """The rollout step encoded in a series file name ``<name>_<step>.vtu|.pvtu`` (None if there is none)."""
    m = _STEP_RE.search(str(file))
    return int(m.group(1)) if m else None


# ----------------------------------------------------------------------------------------------------------------
# VTKHDF transient series
# ----------------------------------------------------------------------------------------------------------------
class VTKHDFSeries:
    """A transient VTKHDF 2.0 UnstructuredGrid file: the mesh once, point fields appended per step.

    Layout: /VTKHDF (attrs Version=[2, 0], Type="UnstructuredGrid") with NumberOfPoints/Cells/ConnectivityIds
    (1,), Points (N, 3), Connectivity, Offsets (M+1,), Types (M,), PointData/<f> (T*N[, C]) and
    Steps (attr NSteps) with Values (T,), PartOffsets, NumberOfParts, PointOffsets, CellOffsets,
    ConnectivityIdOffsets (all 0 / 1: the mesh is static) and PointDataOffsets/<f> (T,) = step * N
    (0 for static fields). Written to a temporary file, renamed by :meth:`close`.
    """

    def __init__(self, path, mesh: VtuMesh, static_point_data: dict | None = None, units: dict | None = None):
        import h5py

        self.path, self.mesh, self.units = Path(path), mesh, units or {}
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path))
        self.f = h5py.File(tmp, "w")
        self._dirty = False
        root = self.f.create_group("VTKHDF")
        root.attrs["Version"] = np.array([2, 0], dtype=np.int64)
        root.attrs.create("Type", np.bytes_("UnstructuredGrid"), dtype=h5py.string_dtype("ascii", 16))
        for k, v in (("NumberOfPoints", mesh.num_points), ("NumberOfCells", mesh.num_cells),
                     ("NumberOfConnectivityIds", mesh.connectivity.size)):
            root.create_dataset(k, data=np.array([v], dtype=np.int64))
        root.create_dataset("Points", data=mesh.points)
        root.create_dataset("Connectivity", data=mesh.connectivity.astype(np.int64))
        root.create_dataset("Offsets", data=np.concatenate([[0], mesh.offsets]).astype(np.int64))
        root.create_dataset("Types", data=mesh.types)
        self.pd = root.create_group("PointData")
        self.steps = root.create_group("Steps")
        self.steps.attrs["NSteps"] = np.int64(0)
        for k in ("Values",):
            self.steps.create_dataset(k, shape=(0,), maxshape=(None,), dtype=np.float64, chunks=(1024,))
        for k in ("PartOffsets", "NumberOfParts", "PointOffsets", "CellOffsets", "ConnectivityIdOffsets"):
            self.steps.create_dataset(k, shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(1024,))
        self.pdo = self.steps.create_group("PointDataOffsets")
        self.static = {}
        for name, v in (static_point_data or {}).items():
            a = _as_vtk_array(name, v, mesh.num_points)
            self._attach_units(self.pd.create_dataset(name, data=a), name)
            self.static[name] = a
            self.pdo.create_dataset(name, shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(1024,))
        self.fields: dict[str, tuple] = {}
        self.num_steps = 0

    def _attach_units(self, dset, name):
        if self.units.get(name):
            dset.attrs["Units"] = self.units[name]

    def _field(self, name, a: np.ndarray):
        if name not in self.fields:
            if self.num_steps:
                raise MeshgnnError(f"vtkhdf: field {name!r} first appears at step {self.num_steps}; every step "
                                   "must carry the same fields")
            N = self.mesh.num_points
            shape = (0,) + a.shape[1:]
            chunks = (max(1, min(N, 65536)),) + a.shape[1:]
            d = self.pd.create_dataset(name, shape=shape, maxshape=(None,) + a.shape[1:], dtype=a.dtype,
                                       chunks=chunks)
            self._attach_units(d, name)
            self.pdo.create_dataset(name, shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(1024,))
            self.fields[name] = (a.dtype, a.shape[1:])
        elif self.fields[name] != (a.dtype, a.shape[1:]):
            raise MeshgnnError(f"vtkhdf: field {name!r} changed dtype/shape to {a.dtype}{a.shape}")
        return self.pd[name]

    @staticmethod
    def _append(dset, values):
        n = dset.shape[0]
        dset.resize((n + len(values),) + dset.shape[1:])
        dset[n:] = values

    def write_step(self, time: float, point_data: dict):
        N, t = self.mesh.num_points, self.num_steps
        arrays = {k: _as_vtk_array(k, v, N) for k, v in point_data.items()}
        missing = set(self.fields) - set(arrays)
        if missing:
            raise MeshgnnError(f"vtkhdf: step {t} lacks fields {sorted(missing)}")
        self._dirty = True
        for k, a in arrays.items():
            self._append(self._field(k, a), a)
            self._append(self.pdo[k], [t * N])
        for k in self.static:
            self._append(self.pdo[k], [0])
        self._append(self.steps["Values"], [float(time)])
        for k in ("PartOffsets", "PointOffsets", "CellOffsets", "ConnectivityIdOffsets"):
            self._append(self.steps[k], [0])
        self._append(self.steps["NumberOfParts"], [1])
        self.num_steps = t + 1
        self.steps.attrs["NSteps"] = np.int64(self.num_steps)
        self.f.flush()
        self._dirty = False

    def close(self, ok: bool = True):
        """Close the file; rename it into place unless ``ok`` is False or a step was left half-written."""
        if self.f is None:
            return
        self.f.close()
        self.f = None
        if ok and not self._dirty:
            self._stack.close()
        else:
            self._stack.__exit__(MeshgnnError, MeshgnnError("vtkhdf aborted"), None)


# ----------------------------------------------------------------------------------------------------------------
# rollout writers
# ----------------------------------------------------------------------------------------------------------------
class _Stride:
    """Which steps a rollout writes: multiples of ``every``, step 0, and the last step (flag, ``final_step``,
    or the last skipped step kept in memory and flushed by ``close``)."""

    def __init__(self, every: int, final_step: int | None, keep_last: bool):
        if every < 1:
            raise MeshgnnError(f"every: expected a positive integer, got {every}")
        self.every, self.final_step, self.keep_last = int(every), final_step, keep_last
        self.pending = None          # (step, time, point_data copy) of the last skipped step
        self.last_written = None

    def wanted(self, step: int, last: bool) -> bool:
        return step == 0 or step % self.every == 0 or last or (self.final_step is not None
                                                                  and step == self.final_step)

    def skip(self, step, time, point_data):
        if self.keep_last:
            self.pending = (step, time, {k: np.array(v, copy=True) for k, v in point_data.items()})

    def take_pending(self):
        p, self.pending = self.pending, None
        if p is not None and self.last_written is not None and p[0] <= self.last_written:
            return None
        return p


class _SeriesWriter:
    """Shared stepping logic of the rollout writers: stride, last-step flush, context manager."""

    stride: _Stride
    closed = False

    def write_step(self, step: int, time: float, point_data: dict, last: bool = False) -> bool:
        """Write one frame if the stride wants it (True when written). point_data: {name: (N,)|(N,C)}."""
        if self.closed:
            raise MeshgnnError(f"{type(self).__name__}: write_step after close")
        if not self.stride.wanted(step, last):
            self.stride.skip(step, time, point_data)
            return False
        self.write_frame(step, time, point_data)
        self.stride.last_written = step
        self.stride.pending = None
        return True

    def write_frame(self, step, time, point_data):
        """Write one frame unconditionally (no stride). point_data: {name: (N,)|(N,C)}."""
        raise NotImplementedError

    def _finish(self):
        """Called once by :meth:`close` after the last frame."""

    def close(self, flush_last: bool = True):
        """Write the last skipped step (if any and ``flush_last``) and finish the files."""
        if self.closed:
            return
        pending = self.stride.take_pending() if flush_last else None
        try:
            if pending is not None:
                self.write_frame(*pending)
        finally:
            self.closed = True
            self._finish()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        # on an error keep what is complete (the .pvd already lists only finished steps); no flush of skipped steps
        self.close(flush_last=exc_type is None)
        return False


class RolloutWriter(_SeriesWriter):
    """Write a rollout as a ParaView time series (and optionally a transient VTKHDF file).

    ``RolloutWriter(out_dir, points (N,3), cells {type: (M,k)}, formats=("pvd",), every=1, units={field: unit},
    static_point_data={name: (N,)|(N,C)}, static_cell_data={name: (M,)}, name="rollout", final_step=None,
    keep_last=True)``; ``write_step(step, time, point_data, last=False)`` writes step 0, every multiple of
    ``every``, ``final_step`` and any step flagged ``last``; other steps are skipped, the latest skipped one is
    kept (``keep_last``) and written by :meth:`close` so the series always ends at the last step.
    Files: ``pvd``: ``<out>/<name>.pvd`` + ``<name>_<step:05d>.vtu``; ``vtkhdf``: ``<out>/<name>.vtkhdf``;
    ``pvtu``: the frame cut into pieces by the integer point field ``part`` (``parts=`` or
    ``static_point_data["part"]``; cells go to the part of their first node, see :func:`cell_piece`), written
    from this one process as ``<name>_<step:05d>_p<part:04d>.vtu`` + ``<name>_<step:05d>.pvtu``, listed in
    ``<name>.pvd`` (``<name>_pieces.pvd`` when ``pvd`` is written too). Use as a context manager or call
    :meth:`close`.
    """

    def __init__(self, out_dir, points, cells: dict, formats=("pvd",), every: int = 1, units: dict | None = None,
                 static_point_data: dict | None = None, static_cell_data: dict | None = None,
                 name: str = "rollout", final_step: int | None = None, keep_last: bool = True, parts=None):
        formats = (formats,) if isinstance(formats, str) else tuple(formats)
        bad = [f for f in formats if f not in FORMATS]
        if bad or not formats:
            raise MeshgnnError(f"formats: unknown {bad or formats} (choose from {', '.join(FORMATS)}; partitioned "
                               "pieces: PartitionedRolloutWriter)")
        self.out_dir, self.name, self.formats = Path(out_dir), name, formats
        self.out_dir.mkdir(parents=True, exist_ok=True)
        remove_series(self.out_dir, name)         # no stale frames of an earlier, longer run in the folder
        self.mesh, self._cells = VtuMesh(points, cells), cells
        self.units = dict(units or {})
        self.static_point_data = {k: _as_vtk_array(k, v, self.mesh.num_points)
                                  for k, v in (static_point_data or {}).items()}
        self.static_cell_data = {k: _as_vtk_array(k, v, self.mesh.num_cells)
                                 for k, v in (static_cell_data or {}).items()}
        self.stride = _Stride(every, final_step, keep_last)
        self.entries: list[tuple[float, str]] = []
        self.files: list[Path] = []
        self.pvd_path = self.out_dir / f"{name}.pvd"
        self.vtkhdf_path = self.out_dir / f"{name}.vtkhdf"
        self.hdf = (VTKHDFSeries(self.vtkhdf_path, self.mesh, self.static_point_data, self.units)
                    if "vtkhdf" in formats else None)
        self.pieces = self._piece_writers(parts) if "pvtu" in formats else []
        self.closed = False
        self.seconds_writing = 0.0

    def _piece_writers(self, parts) -> list[tuple[np.ndarray, "PartitionedRolloutWriter"]]:
        parts = parts if parts is not None else self.static_point_data.get("part")
        if parts is None:
            raise MeshgnnError("formats: 'pvtu' needs the part of every node (parts= or static_point_data['part'])")
        parts = np.asarray(parts).astype(np.int64)
        if parts.shape != (self.mesh.num_points,) or parts.min() < 0:
            raise MeshgnnError(f"parts: expected ({self.mesh.num_points},) non-negative part ids")
        size = int(parts.max()) + 1
        pvd = f"{self.name}_pieces.pvd" if "pvd" in self.formats else f"{self.name}.pvd"
        cells = {t: np.asarray(c) for t, c in self._cells.items()}
        first = dict(zip(cells, np.cumsum([0] + [len(c) for c in cells.values()])))   # global row of each block
        out = []
        for rank in reversed(range(size)):          # part 0 last: it lists every piece in the .pvtu
            ids, local, chosen = cell_piece(cells, parts, rank)
            static = {k: v[ids] for k, v in self.static_point_data.items()}
            cdata = {k: np.concatenate([v[first[t] + c] for t, c in chosen.items()])
                     for k, v in self.static_cell_data.items()} if chosen else {}
            out.append((ids, PartitionedRolloutWriter(
                self.out_dir, rank, size, self.mesh.points[ids], local, global_ids=ids, units=self.units,
                static_point_data=static, static_cell_data=cdata, name=self.name, keep_last=False,
                wait_timeout=0.0, pvd_name=pvd)))
        return out

    def write_frame(self, step, time, point_data):
        t0 = _time.perf_counter()
        if "pvd" in self.formats:
            fname = f"{self.name}_{step:0{STEP_DIGITS}d}.vtu"
            write_vtu(self.out_dir / fname, self.mesh, {**self.static_point_data, **point_data},
                      self.static_cell_data, self.units)
            self.files.append(self.out_dir / fname)
            self.entries.append((float(time), fname))
            write_pvd(self.pvd_path, self.entries)
        if self.hdf is not None:
            self.hdf.write_step(time, point_data)
        for ids, piece in self.pieces:
            piece.write_frame(step, time, {k: np.asarray(v)[ids] for k, v in point_data.items()})
        self.seconds_writing += _time.perf_counter() - t0

    def _finish(self):
        if self.hdf is not None:
            self.hdf.close(ok=True)


def cell_piece(cells: dict, owner: np.ndarray, rank: int):
    """This rank's piece of a mesh whose nodes are owned by ranks: the cells whose first node it owns.

    Returns (node_ids (n,) int64 global ids of the points the piece's cells use, sorted; local_cells
    {type: (m,k)} in local numbering; cell_ids {type: (m,)} row indices into ``cells[type]``). The pieces
    of all ranks cover every cell exactly once; their points overlap on piece boundaries (values there are
    halo copies of the owner's, equal after a halo refresh).
    """
    owner = np.asarray(owner)
    chosen = {t: np.flatnonzero(owner[np.asarray(c)[:, 0]] == rank) for t, c in cells.items() if len(c)}
    used = [np.asarray(cells[t])[ids].ravel() for t, ids in chosen.items()]
    node_ids = np.unique(np.concatenate(used)) if used else np.zeros(0, np.int64)
    local = {t: np.searchsorted(node_ids, np.asarray(cells[t])[ids]) for t, ids in chosen.items()}
    return node_ids.astype(np.int64), local, chosen


class PartitionedRolloutWriter(_SeriesWriter):
    """Each rank writes its own ``.vtu`` piece; rank 0 also writes the per-step ``.pvtu`` and the ``.pvd``.

    ``PartitionedRolloutWriter(out_dir, rank, size, points (n,3), cells {type: (m,k)} local ids,
    global_ids=(n,) | None, units=..., static_point_data=..., name="rollout", every=1, final_step=None,
    barrier=None, wait_timeout=600)``. Needs no MPI: piece names are ``<name>_<step:05d>_p<rank:04d>.vtu``, so
    rank 0 knows them. Pass ``barrier=comm.Barrier`` to order the pieces before rank 0's ``.pvtu``/``.pvd``;
    without it rank 0 waits (polling) until every piece of the step exists. Every piece carries the cell
    field ``part`` (= rank) and, when given, the point field ``global_id``.
    """

    def __init__(self, out_dir, rank: int, size: int, points, cells: dict, global_ids=None, units=None,
                 static_point_data=None, static_cell_data=None, name="rollout", every=1, final_step=None,
                 keep_last=True, barrier=None, wait_timeout: float = 600.0, pvd_name: str | None = None):
        if not 0 <= rank < size:
            raise MeshgnnError(f"rank {rank} outside [0, {size})")
        self.out_dir, self.rank, self.size, self.name = Path(out_dir), rank, size, name
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.mesh = VtuMesh(points, cells)
        self.units = dict(units or {})
        self.static_point_data = {k: _as_vtk_array(k, v, self.mesh.num_points)
                                  for k, v in (static_point_data or {}).items()}
        if global_ids is not None:
            self.static_point_data["global_id"] = _as_vtk_array("global_id", np.asarray(global_ids, np.int64),
                                                                self.mesh.num_points)
        self.static_cell_data = {"part": np.full(self.mesh.num_cells, rank, dtype=np.int32)}
        self.static_cell_data.update({k: _as_vtk_array(k, v, self.mesh.num_cells)
                                      for k, v in (static_cell_data or {}).items()})
        self.stride = _Stride(every, final_step, keep_last)
        self.barrier, self.wait_timeout = barrier, wait_timeout
        self.entries: list[tuple[float, str]] = []
        self.pvd_path = self.out_dir / (pvd_name or f"{name}.pvd")
        self.closed = False

    def piece_name(self, step: int, rank: int) -> str:
        return f"{self.name}_{step:0{STEP_DIGITS}d}_p{rank:04d}.vtu"

    def write_frame(self, step, time, point_data):
        pdata = {**self.static_point_data, **point_data}
        write_vtu(self.out_dir / self.piece_name(step, self.rank), self.mesh, pdata, self.static_cell_data,
                  self.units)
        if self.barrier is not None:
            self.barrier()
        if self.rank != 0:
            return
        pieces = [self.piece_name(step, r) for r in range(self.size)]
        self._wait_for(pieces)
        pvtu = f"{self.name}_{step:0{STEP_DIGITS}d}.pvtu"
        write_pvtu(self.out_dir / pvtu, pieces, {k: _as_vtk_array(k, v) for k, v in pdata.items()},
                   self.static_cell_data, self.units)
        self.entries.append((float(time), pvtu))
        write_pvd(self.pvd_path, self.entries)

    def _wait_for(self, pieces):
        deadline = _time.monotonic() + self.wait_timeout
        while True:
            missing = [p for p in pieces if not (self.out_dir / p).exists()]
            if not missing:
                return
            if _time.monotonic() > deadline:
                raise MeshgnnError(f"{self.out_dir}: pieces never appeared: {', '.join(missing)}")
            _time.sleep(0.05)


def remove_series(out_dir, name="rollout") -> int:
    """Delete the files of a previous series ``name`` in ``out_dir`` (only names this module writes:
    ``<name>.pvd``, ``<name>_pieces.pvd``, ``<name>.vtkhdf``, ``<name>_<5 digits>[_p<4 digits>].vtu|.pvtu``).
    Returns how many were removed."""
    out_dir = Path(out_dir)
    frame = re.compile(re.escape(name) + r"_\d{%d}(_p\d{4})?\.p?vtu$" % STEP_DIGITS)
    fixed = {f"{name}.pvd", f"{name}_pieces.pvd", f"{name}.vtkhdf"}
    n = 0
    for p in out_dir.iterdir() if out_dir.is_dir() else ():
        if p.is_file() and (p.name in fixed or frame.fullmatch(p.name)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
                n += 1
    return n
