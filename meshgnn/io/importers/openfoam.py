"""OpenFOAM cases through VTK's OpenFOAM reader (``pyvista.POpenFOAMReader``), reconstructed or decomposed.

Nodes are the mesh points; fields are the volume fields of every time folder, interpolated from cells to points
by the reader (boundary points take the patch values, so Dirichlet values are exact there). Boundary patches
become named node groups, turned into node types by the patch rules of :mod:`.mapping`
(``inlet*`` -> inlet, ``outlet*`` -> outlet, ``wall*`` -> wall, ``obstacle*``/``packing*``/``sphere*`` -> obstacle).

With ``cell_data=True`` the nodes are the cell centres instead, holding the cell values; two cells are
connected when they share a face (stored as ``line`` cells), and a cell takes the type of the patches its faces lie on.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import InputError
from .series import Frame, Series
from .vtk_series import vtk_cells

# Faces of each cell type (local vertex ids, VTK order); triangles padded with -1.
CELL_FACES = {
    "tetra": ((0, 1, 2), (0, 1, 3), (1, 2, 3), (0, 2, 3)),
    "pyramid": ((0, 1, 2, 3), (0, 1, 4), (1, 2, 4), (2, 3, 4), (0, 3, 4)),
    "wedge": ((0, 1, 2), (3, 4, 5), (0, 1, 4, 3), (1, 2, 5, 4), (0, 2, 5, 3)),
    "hexahedron": ((0, 1, 2, 3), (4, 5, 6, 7), (0, 1, 5, 4), (1, 2, 6, 5), (2, 3, 7, 6), (0, 3, 7, 4)),
}


def case_dir(source: str) -> Path:
    """The case folder of ``source`` (the folder, or the folder of a ``.foam`` file / ``system/controlDict``)."""
    p = Path(source)
    if p.is_file():
        p = p.parent.parent if p.name == "controlDict" else p.parent
    if not p.is_dir():
        raise InputError(source, None, "no such OpenFOAM case folder")
    if not (p / "system" / "controlDict").is_file():
        raise InputError(source, "system/controlDict", "not an OpenFOAM case (system/controlDict missing)")
    return p


def is_case(source: str) -> bool:
    p = Path(source)
    if p.is_file() and p.suffix.lower() in (".foam", ".openfoam"):
        return True
    return p.is_dir() and (p / "system" / "controlDict").is_file()


def _reader(case: Path):
    import pyvista as pv

    reader = pv.POpenFOAMReader(str(case / "system" / "controlDict"))
    vtk_reader = reader.reader
    if hasattr(vtk_reader, "SetUse64BitFloats"):
        vtk_reader.SetUse64BitFloats(True)
    if hasattr(vtk_reader, "SetUse64BitLabels"):
        vtk_reader.SetUse64BitLabels(True)
    if hasattr(vtk_reader, "SetSkipZeroTime"):
        vtk_reader.SetSkipZeroTime(False)
    reader.cell_to_point_creation = True
    has_times = len(reader.time_values) > 1
    if not has_times and (case / "processor0").is_dir():
        reader.case_type = "decomposed"
        reader.reader.UpdateInformation()
    return reader


def _read_block(reader, t: float, case: Path):
    reader.set_active_time_value(t)
    try:
        return reader.read()
    except Exception as e:  # noqa: BLE001 - VTK raises many kinds
        raise InputError(case, f"time {t:g}", f"OpenFOAM reader failed ({type(e).__name__}: {e})") from None


def _internal(block, case: Path, t: float):
    if "internalMesh" not in block.keys():
        raise InputError(case, f"time {t:g}", "no internalMesh in the reader output")
    return block["internalMesh"]


def merge_coincident(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge points with identical coordinates (copies on processor boundaries of a decomposed case).

    Returns ``(merged points (M, 3), merge (N,) -> merged id)``, merged ids in order of first occurrence.
    """
    _, first, inverse = np.unique(points, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return points[first[order]], rank[inverse.ravel()]


def average_merged(values: np.ndarray, merge: np.ndarray, m: int) -> np.ndarray:
    """Mean of the copies of each merged point: ``(N, ...)`` -> ``(M, ...)``."""
    flat = values.reshape(len(values), -1).astype(np.float64)
    out = np.zeros((m, flat.shape[1]))
    np.add.at(out, merge, flat)
    out /= np.bincount(merge, minlength=m)[:, None]
    return out.reshape((m,) + values.shape[1:])


def _boundary_patches(block):
    """``(name, patch)`` of the physical boundary patches (processor patches skipped)."""
    if "boundary" not in block.keys() or block["boundary"] is None:
        return []
    b = block["boundary"]
    return [(name, b[name]) for name in b.keys()
            if b[name] is not None and b[name].n_points and not name.startswith("procBoundary")]


def _patch_point_groups(block, points: np.ndarray, case: Path) -> dict[str, np.ndarray]:
    """``{patch: node ids}``: patch points matched to internal-mesh points by coordinates."""
    from scipy.spatial import cKDTree

    tree = cKDTree(points)
    tol = 1e-9 * float(np.ptp(points, axis=0).max() or 1.0)
    groups = {}
    for name, patch in _boundary_patches(block):
        d, ids = tree.query(np.asarray(patch.points, dtype=np.float64))
        if d.max() > tol:
            raise InputError(case, f"patch {name}", f"{int((d > tol).sum())} patch points are not mesh points")
        groups[name] = np.unique(ids)
    return groups


def _patch_faces(block, points: np.ndarray, case: Path) -> dict[str, np.ndarray]:
    """``{patch: (F, 4) sorted node ids of its faces, -1 padded}``."""
    from scipy.spatial import cKDTree

    out = {}
    tree = cKDTree(points)
    for name, patch in _boundary_patches(block):
        if patch.n_cells == 0:
            continue
        _, ids = tree.query(np.asarray(patch.points, dtype=np.float64))
        faces = []
        for vtk_type, conn in patch.cast_to_unstructured_grid().cells_dict.items():
            conn = ids[np.asarray(conn)]
            if conn.shape[1] == 3:
                conn = np.concatenate([conn, np.full((len(conn), 1), -1)], axis=1)
            elif conn.shape[1] != 4:
                raise InputError(case, f"patch {name}", f"faces with {conn.shape[1]} vertices are not supported")
            faces.append(conn)
        out[name] = _face_keys(np.concatenate(faces))
    return out


def _face_keys(faces: np.ndarray) -> np.ndarray:
    """Sort each face's vertex ids (padding -1 stays first)."""
    return np.sort(faces, axis=1)


def cell_adjacency(cells: dict[str, np.ndarray]):
    """Face-sharing cell pairs and boundary faces of a volume mesh.

    Returns:
        ``(pairs (P, 2) int64 cell ids, boundary_faces (B, 4) sorted node ids, boundary_cell (B,))``;
        cell ids number the blocks in ``cells`` order.
    """
    keys, owner = [], []
    offset = 0
    for ctype, conn in cells.items():
        for face in CELL_FACES[ctype]:
            f = conn[:, list(face)]
            if f.shape[1] == 3:
                f = np.concatenate([f, np.full((len(f), 1), -1)], axis=1)
            keys.append(f)
            owner.append(np.arange(len(conn)) + offset)
        offset += len(conn)
    keys = _face_keys(np.concatenate(keys))
    owner = np.concatenate(owner)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")
    inv_sorted = inverse[order]
    starts = np.flatnonzero(np.r_[True, np.diff(inv_sorted) != 0])
    c = counts[inv_sorted[starts]]
    if (c > 2).any():
        raise InputError("mesh", "cells", "a face is shared by more than two cells (non-manifold mesh)")
    inner = starts[c == 2]
    pairs = np.stack([owner[order[inner]], owner[order[inner + 1]]], axis=1)
    bnd = starts[c == 1]
    return pairs, keys[order[bnd]], owner[order[bnd]]


def _cell_groups(patch_faces: dict[str, np.ndarray], bfaces: np.ndarray, bcell: np.ndarray, case: Path):
    """``{patch: cell ids}`` of the cells owning each patch's faces."""
    groups = {}
    index = {tuple(f): c for f, c in zip(bfaces.tolist(), bcell.tolist())}
    for name, faces in patch_faces.items():
        ids = [index.get(tuple(f)) for f in faces.tolist()]
        missing = sum(i is None for i in ids)
        if missing:
            raise InputError(case, f"patch {name}", f"{missing} patch faces are not boundary faces of the mesh")
        groups[name] = np.unique(np.asarray(ids, dtype=np.int64))
    return groups


# Boundary condition types that fix a field's value on a patch (Dirichlet): the data's values there are imposed.
PRESCRIBING = frozenset({"fixedValue", "uniformFixedValue", "timeVaryingUniformFixedValue", "noSlip",
                         "movingWallVelocity", "flowRateInletVelocity", "surfaceNormalFixedValue", "codedFixedValue",
                         "totalPressure", "fixedMean"})


def boundary_conditions(field_file: Path) -> dict[str, str]:
    """``{patch: condition type}`` of an OpenFOAM field file's ``boundaryField`` (``#include``s and regex patch
    names are left out). A regex over the dictionary, not a full OpenFOAM parser: only the ``type`` of each
    top-level patch entry is needed."""
    import re

    text = re.sub(r"/\*.*?\*/|//[^\n]*", "", Path(field_file).read_text(errors="replace"), flags=re.S)
    start = text.find("boundaryField")
    if start < 0:
        return {}
    body, depth, i = [], 0, text.index("{", start)
    for ch in text[i:]:
        depth += ch == "{"
        depth -= ch == "}"
        body.append(ch)
        if depth == 0:
            break
    out = {}
    for name, entry in re.findall(r'([A-Za-z_][\w.:-]*|"[^"]*")\s*\{((?:[^{}]|\{[^{}]*\})*)\}', "".join(body)[1:-1]):
        m = re.search(r"\btype\s+([\w:]+)\s*;", entry)
        if m:
            out[name.strip('"')] = m.group(1)
    return out


def case_conditions(case: Path, time_name: str, fields) -> dict[str, dict[str, str]]:
    """``{field: {patch: type}}`` for the fields with a file in the case's first time folder."""
    folder = case / time_name
    return {f: boundary_conditions(folder / f) for f in fields if (folder / f).is_file()}


def read_openfoam(source: str, cell_data: bool = False) -> Series:
    """An OpenFOAM case as a :class:`Series` (every time folder a step, read lazily)."""
    case = case_dir(source)
    reader = _reader(case)
    times = [float(t) for t in reader.time_values]
    if not times:
        raise InputError(case, None, "no time folders found (run the solver, or reconstructPar a parallel run)")
    reader.enable_all_patch_arrays()
    block0 = _read_block(reader, times[0], case)
    grid = _internal(block0, case, times[0])
    points = np.asarray(grid.points, dtype=np.float64)
    cells = vtk_cells(grid, case)
    notes = [f"case type {reader.case_type}, {len(times)} time folders"]
    merge = None
    if reader.case_type == "decomposed":
        raw = len(points)
        points, merge = merge_coincident(points)
        cells = {t: merge[c] for t, c in cells.items()}
        notes.append(f"decomposed case: {raw - len(points)} processor-boundary point copies merged (point values "
                     f"averaged; reconstructPar gives the exact ones)")
    if cell_data:
        pairs, bfaces, bcell = cell_adjacency(cells)
        groups = _cell_groups(_patch_faces(block0, points, case), bfaces, bcell, case)
        centres = np.asarray(grid.cell_centers().points, dtype=np.float64)
        notes.append(f"cell-centred: {len(centres)} cells as nodes, {len(pairs)} face neighbours as edges")
        points, cells, n_expected = centres, {"line": pairs}, grid.n_cells
    else:
        groups = _patch_point_groups(block0, points, case)
        n_expected = grid.n_points
    for name in list(reader.patch_array_names):
        if name != "internalMesh":
            reader.disable_patch_array(name)

    def loader(k: int, t: float):
        def load():
            g = grid if k == 0 else _internal(_read_block(reader, t, case), case, t)
            data = g.cell_data if cell_data else g.point_data
            n = g.n_cells if cell_data else g.n_points
            if n != n_expected:
                raise InputError(case, f"time {t:g}", f"{n} {'cells' if cell_data else 'points'}, step 0 has "
                                 f"{n_expected} (moving or changing meshes are not supported)")
            fields = {name: np.asarray(data[name]) for name in data.keys() if not name.startswith("vtk")}
            if merge is not None and not cell_data:
                fields = {name: average_merged(v, merge, len(points)) for name, v in fields.items()}
            return fields
        return load

    frames = [Frame(t, str(case / _time_name(case, t)), loader(k, t)) for k, t in enumerate(times)]
    fields = [n for n in (grid.cell_data if cell_data else grid.point_data).keys() if not n.startswith("vtk")]
    return Series(str(source), "openfoam", points, cells, frames, node_groups=groups, notes=notes,
                  units=foam_units(case / _time_name(case, times[-1])),
                  patch_conditions=case_conditions(case, _time_name(case, times[0]), fields))


_SI = ("kg", "m", "s", "K", "mol", "A", "cd")   # the order of OpenFOAM's ``dimensions [...]`` exponents


def foam_units(folder: Path) -> dict[str, str]:
    """``{field: unit}`` from the ``dimensions [kg m s K mol A cd]`` entry of each field file in a time folder,
    e.g. ``U`` with ``[0 1 -1 0 0 0 0]`` -> ``"m s^-1"``, a dimensionless field -> ``"1"``."""
    import re

    out = {}
    pattern = re.compile(rb"\bdimensions\s*\[([^\]]*)\]")
    for f in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not f.is_file():
            continue
        try:
            with open(f, "rb") as fh:
                m = pattern.search(fh.read(8192))
            exps = [float(x) for x in m.group(1).split()] if m else []
        except (OSError, ValueError):
            continue
        if len(exps) < 5:
            continue
        parts = [u if e == 1 else f"{u}^{e:g}" for u, e in zip(_SI, exps) if e != 0]
        out[f.name] = " ".join(parts) or "1"
    return out


def _time_name(case: Path, t: float) -> str:
    """The time folder name of time ``t`` (for messages)."""
    for d in case.iterdir():
        try:
            if d.is_dir() and abs(float(d.name) - t) <= 1e-12 * max(1.0, abs(t)):
                return d.name
        except ValueError:
            continue
    return f"{t:g}"
