"""Time series of VTK files (``.pvd`` collections, folders or globs of ``.vtu``/``.vtk``/``.vtp``) read with
VTK (pyvista), and any series meshio reads (XDMF time series, or one mesh file per step).

Each step file must hold the same mesh; point data become fields, integer cell data become region labels
(``gmsh:physical`` with ``field_data`` names, ``region``, ...). Times come from the ``.pvd`` ``timestep``
attributes, the XDMF times, or a VTK ``TimeValue`` field-data entry; otherwise ``--dt`` supplies them.
"""
from __future__ import annotations

import glob
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ...errors import InputError
from .series import Frame, Series, natural_key

VTK_SUFFIXES = (".vtu", ".vtk", ".vtp")
# VTK cell type id -> meshio/meshgnn cell name.
VTK_CELL_NAMES = {1: "vertex", 3: "line", 5: "triangle", 9: "quad", 10: "tetra", 12: "hexahedron", 13: "wedge",
                  14: "pyramid"}
# Axis-aligned VTK types stored as their general cousins (vertex order permuted).
VTK_RENAMED = {8: ("quad", (0, 1, 3, 2)), 11: ("hexahedron", (0, 1, 3, 2, 4, 5, 7, 6))}
VTK_UNSUPPORTED = {2: "poly_vertex", 4: "poly_line", 6: "triangle_strip", 7: "polygon", 24: "tetra10",
                   25: "hexahedron20", 42: "polyhedron"}


def expand_files(source: str, suffixes) -> list[Path]:
    """Step files of ``source``: a folder (its files with ``suffixes``), a glob pattern, or a single file;
    sorted naturally (``step_2`` before ``step_10``)."""
    p = Path(source)
    if p.is_dir():
        files = [f for f in p.iterdir() if f.suffix.lower() in suffixes and not f.name.startswith(".")]
        if not files:
            raise InputError(source, None, f"folder holds no {'/'.join(suffixes)} files")
    elif any(c in source for c in "*?["):
        files = [Path(f) for f in glob.glob(source)]
        if not files:
            raise InputError(source, None, "no files match this pattern")
    elif p.is_file():
        files = [p]
    else:
        raise InputError(source, None, "no such file or folder")
    return sorted(files, key=natural_key)


def read_pvd(path: Path) -> list[tuple[float | None, Path]]:
    """``(time, file)`` entries of a ParaView collection, in file order (part 0 only)."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise InputError(path, None, f"not a valid .pvd (XML) file: {e}") from None
    entries = []
    for k, ds in enumerate(root.iter("DataSet")):
        if ds.get("part", "0") != "0":
            continue
        f = ds.get("file")
        if not f:
            raise InputError(path, f"DataSet[{k}]", "missing 'file' attribute")
        t = ds.get("timestep")
        try:
            t = None if t is None or t == "" else float(t)
        except ValueError:
            raise InputError(path, f"DataSet[{k}]", f"timestep '{t}' is not a number") from None
        entries.append((t, (path.parent / f)))
    if not entries:
        raise InputError(path, None, "collection lists no DataSet entries")
    return entries


def read_series_json(path: Path) -> list[tuple[float | None, Path]]:
    """``(time, file)`` entries of a ParaView ``.series`` file (``case.vtm.series``, ``run.vtu.series``: JSON
    ``{"file-series-version": "1.0", "files": [{"name": ..., "time": ...}, ...]}``), in file order."""
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise InputError(path, None, f"not a valid .series (JSON) file: {str(e).splitlines()[0]}") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list) or not files:
        raise InputError(path, "files", "expected a non-empty list of {\"name\": ..., \"time\": ...} entries")
    entries = []
    for k, item in enumerate(files):
        if not isinstance(item, dict) or not item.get("name"):
            raise InputError(path, f"files[{k}]", "missing 'name'")
        t = item.get("time")
        try:
            t = None if t is None else float(t)
        except (TypeError, ValueError):
            raise InputError(path, f"files[{k}].time", f"'{t}' is not a number") from None
        entries.append((t, Path(path).parent / str(item["name"])))
    return entries


def read_vtk_grid(path: Path):
    """One VTK file as a pyvista UnstructuredGrid (other data set types cast); multi-block files are an error."""
    import pyvista as pv

    if not path.is_file():
        raise InputError(path, None, "file listed in the series does not exist")
    from ..vtk import check_vtk_header

    check_vtk_header(path)
    try:
        mesh = pv.read(str(path))
    except Exception as e:  # noqa: BLE001 - VTK raises many kinds; the user sees one line
        raise InputError(path, None, f"VTK cannot read this file ({type(e).__name__}: {str(e).splitlines()[0]})"
                         ) from None
    if isinstance(mesh, pv.MultiBlock):
        raise InputError(path, None, "multi-block files are not supported; save one unstructured grid per step")
    if not isinstance(mesh, pv.UnstructuredGrid):
        mesh = mesh.cast_to_unstructured_grid()
    return mesh


def vtk_cells(grid, path: Path) -> dict[str, np.ndarray]:
    """``{cell name: (M, k) int64}`` of a VTK unstructured grid; unsupported types are an error."""
    cells: dict[str, np.ndarray] = {}
    for vtk_type, conn in grid.cells_dict.items():
        vtk_type, conn = int(vtk_type), np.asarray(conn, dtype=np.int64)
        if vtk_type in VTK_RENAMED:
            name, order = VTK_RENAMED[vtk_type]
            conn = conn[:, list(order)]
        elif vtk_type in VTK_CELL_NAMES:
            name = VTK_CELL_NAMES[vtk_type]
        else:
            name = VTK_UNSUPPORTED.get(vtk_type, f"VTK type {vtk_type}")
            raise InputError(path, f"cells/{name}", "unsupported cell type (supported: linear tetra, hexahedron, "
                             "wedge, pyramid, triangle, quad)")
        cells[name] = np.concatenate([cells[name], conn]) if name in cells else conn
    return cells


def vtk_time(grid) -> float | None:
    """The ``TimeValue`` (or ``TIME``/``time``) field-data entry of a grid; None when absent."""
    for key in ("TimeValue", "TIME", "time"):
        if key in grid.field_data:
            v = np.asarray(grid.field_data[key]).ravel()
            if v.size:
                return float(v[0])
    return None


def vtk_cell_regions(grid) -> dict[str, dict[str, np.ndarray]]:
    """Integer cell-data arrays, split per cell type (in ``cells_dict`` order)."""
    ctypes = np.asarray(grid.celltypes)
    out = {}
    for name in grid.cell_data.keys():
        arr = np.asarray(grid.cell_data[name])
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            continue
        out[name] = {VTK_CELL_NAMES[int(t)]: arr[ctypes == t] for t in np.unique(ctypes)
                     if int(t) in VTK_CELL_NAMES}
    return out


def point_fields(grid) -> dict[str, np.ndarray]:
    """``{name: (N,) or (N, C)}`` point data of a grid."""
    return {name: np.asarray(grid.point_data[name]) for name in grid.point_data.keys()}


def read_vtk_series(source: str, pvd: bool | None = None) -> Series:
    """A ``.pvd`` collection or a folder/glob/file of VTK files as a :class:`Series` (steps read lazily)."""
    path = Path(source)
    if pvd or (pvd is None and path.suffix.lower() == ".pvd"):
        if not path.is_file():
            raise InputError(source, None, "no such file")
        entries = read_pvd(path)
    elif path.name.lower().endswith(".series"):
        entries = read_series_json(path)
    else:
        entries = [(None, f) for f in expand_files(source, VTK_SUFFIXES)]
    grid = read_vtk_grid(entries[0][1])
    points = np.asarray(grid.points, dtype=np.float64)
    cells = vtk_cells(grid, entries[0][1])
    n = len(points)

    def loader(f: Path, k: int):
        def load():
            g = grid if k == 0 else read_vtk_grid(f)
            if g.n_points != n:
                raise InputError(f, "points", f"{g.n_points} points, but step 0 ({entries[0][1].name}) has {n}")
            return point_fields(g)
        return load

    frames = []
    for k, (t, f) in enumerate(entries):
        if t is None and k == 0:
            t = vtk_time(grid)
        elif t is None:
            t = vtk_file_time(f)
        frames.append(Frame(t, str(f), loader(f, k)))
    return Series(source, "pvd" if path.suffix.lower() == ".pvd" else "vtu", points, cells, frames,
                  cell_regions=vtk_cell_regions(grid), units=vtk_units(grid))


def vtk_units(grid) -> dict[str, str]:
    """``{point array: unit}`` from each array's ``UNITS_LABEL`` information key (how meshgnn's rollout output,
    VTK and ParaView store units; meshio drops them)."""
    from vtkmodules.vtkCommonCore import vtkDataArray

    key = vtkDataArray.UNITS_LABEL()
    pd = grid.GetPointData()
    out = {}
    for i in range(pd.GetNumberOfArrays()):
        arr = pd.GetAbstractArray(i)
        info = arr.GetInformation() if arr is not None else None
        if info is not None and info.Has(key) and info.Get(key):
            out[arr.GetName()] = str(info.Get(key))
    return out


def vtk_file_time(path: Path) -> float | None:
    """``TimeValue`` of a VTK XML file without reading its arrays (scan the head of the file)."""
    if path.suffix.lower() not in (".vtu", ".vtp") or not path.is_file():
        return None
    with open(path, "rb") as fh:
        head = fh.read(1 << 16).decode("latin-1")
    if 'Name="TimeValue"' not in head:
        return None
    return vtk_time(read_vtk_grid(path))


# ---------------------------------------------------------------------------------------------- meshio
def _meshio_cells(mesh, path) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """Concatenate meshio cell blocks per type; integer cell data likewise (region labels)."""
    cells: dict[str, list[np.ndarray]] = {}
    regions: dict[str, dict[str, list[np.ndarray]]] = {}
    for b, block in enumerate(mesh.cells):
        cells.setdefault(block.type, []).append(np.asarray(block.data, dtype=np.int64))
        for name, per_block in mesh.cell_data.items():
            arr = np.asarray(per_block[b])
            if arr.ndim == 1 and arr.dtype.kind in "iu":
                regions.setdefault(name, {}).setdefault(block.type, []).append(arr)
    cat = {t: np.concatenate(v) for t, v in cells.items()}
    regs = {name: {t: np.concatenate(v) for t, v in per.items()} for name, per in regions.items()
            if all(len(np.concatenate(per.get(t, [np.zeros(0)]))) == len(cat[t]) for t in per)}
    return cat, regs


def _meshio_region_names(mesh) -> dict[str, dict[int, str]]:
    """gmsh physical names: ``field_data = {name: [tag, dim]}`` -> ``{"gmsh:physical": {tag: name}}``."""
    names = {}
    for name, val in (mesh.field_data or {}).items():
        val = np.asarray(val).ravel()
        if val.size >= 1 and val.dtype.kind in "iu":
            names[int(val[0])] = str(name)
    return {"gmsh:physical": names} if names else {}


def read_meshio_mesh(path):
    """``meshio.read`` with errors as one line."""
    import meshio

    try:
        return meshio.read(str(path))
    except Exception as e:  # noqa: BLE001 - meshio raises many kinds
        raise InputError(path, None, f"meshio cannot read this file ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0]})") from None


def read_meshio_series(source: str) -> Series:
    """An XDMF time series (meshio ``TimeSeriesWriter`` layout) or one meshio-readable file per step."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() in (".xdmf", ".xmf"):
        series = _read_xdmf_time_series(path)
        if series is not None:
            return series
    files = expand_files(source, _ANY_MESH)
    mesh = read_meshio_mesh(files[0])
    points = _points3(mesh.points)
    cells, regions = _meshio_cells(mesh, files[0])
    n = len(points)

    def loader(f, k):
        def load():
            m = mesh if k == 0 else read_meshio_mesh(f)
            if len(m.points) != n:
                raise InputError(f, "points", f"{len(m.points)} points, but step 0 ({files[0].name}) has {n}")
            return dict(m.point_data)
        return load

    frames = [Frame(None, str(f), loader(f, k)) for k, f in enumerate(files)]
    return Series(source, "meshio", points, cells, frames, cell_regions=regions,
                  region_names=_meshio_region_names(mesh))


_ANY_MESH = (".xdmf", ".xmf", ".vtu", ".vtk", ".msh", ".med", ".inp", ".obj", ".ply", ".stl", ".mesh", ".h5m")


def _points3(points) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 2:
        p = np.concatenate([p, np.zeros((len(p), 1))], axis=1)
    return p


def _read_xdmf_time_series(path: Path) -> Series | None:
    """Read with ``meshio.xdmf.TimeSeriesReader``; ``None`` when the file is not a time series."""
    import meshio

    try:
        reader = meshio.xdmf.TimeSeriesReader(str(path))
        points, blocks = reader.read_points_cells()
    except Exception:  # noqa: BLE001 - not a time series: let meshio.read try it as one mesh
        return None
    mesh = meshio.Mesh(points, blocks)
    cells, _ = _meshio_cells(mesh, path)
    n = len(points)
    frames = []

    def loader(k):
        def load():
            _, point_data, _ = reader.read_data(k)
            for name, arr in point_data.items():
                if len(arr) != n:
                    raise InputError(path, name, f"{len(arr)} rows at step {k}, but the mesh has {n} nodes")
            return dict(point_data)
        return load

    for k in range(reader.num_steps):
        t = _xdmf_time(reader, k)
        frames.append(Frame(t, f"{path}[step {k}]", loader(k)))
    if not frames:
        return None
    # Region labels from the first step's cell data.
    _, _, cell_data = reader.read_data(0)
    regions = {}
    for name, per_block in cell_data.items():
        per = {}
        for b, block in enumerate(blocks):
            arr = np.asarray(per_block[b])
            if arr.ndim == 1 and arr.dtype.kind in "iu":
                per.setdefault(block.type, []).append(arr)
        if per:
            regions[name] = {t: np.concatenate(v) for t, v in per.items()}
    return Series(str(path), "xdmf", _points3(points), cells, frames, cell_regions=regions)


def _xdmf_time(reader, k: int) -> float | None:
    """The ``<Time Value=..>`` of step ``k`` of a meshio XDMF time series."""
    grid = reader.collection[k]
    for child in grid:
        if child.tag == "Time":
            try:
                return float(child.attrib["Value"])
            except (KeyError, ValueError):
                return None
    return None
