"""Point tables (STAR-CCM+ / ParaView CSV exports): one ``.csv`` per time step with coordinates and field columns,
mapped onto a given mesh by coordinates (nearest CSV point within a tolerance, ``scipy.spatial.cKDTree``).

Headers understood (case-insensitive, quotes and ``(units)`` stripped, units kept):
    coordinates   ``X, Y, Z`` | ``Points:0/1/2`` | ``Position[X]/[Y]/[Z]`` | ``coords_x/_y/_z``
    vectors       ``Velocity[i]/[j]/[k]`` | ``Velocity[X]/[Y]/[Z]`` | ``U:0/1/2`` | ``U_x/_y/_z``  -> field ``Velocity``
    time          ``Time`` / ``Physical Time`` / ``t`` (constant within a file) -> the step's time
    text columns  per-node labels (usable with ``--node-types COLUMN``)
Row order may differ between files; rows with no mesh node nearby are reported (and ignored).
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from ...errors import InputError
from .series import Frame, Series
from .vtk_series import _meshio_cells, _meshio_region_names, _points3, expand_files, read_meshio_mesh

COORD_BASES = ("", "points", "point", "coordinates", "coordinate", "coords", "coord", "position", "centroid",
               "node coordinates")
TIME_NAMES = ("time", "physical time", "t", "solution time", "timevalue")
_COMPONENT = re.compile(r"^(?P<base>.*?)\s*(?:\[(?P<a>[ijkxyz])\]|:(?P<b>[0-2])|[_ ](?P<c>[xyz]))$", re.I)
_ORDER = {"i": 0, "j": 1, "k": 2, "x": 0, "y": 1, "z": 2, "0": 0, "1": 1, "2": 2}
_UNITS = re.compile(r"^(?P<name>.*?)\s*\((?P<units>[^()]*)\)\s*$")


def parse_header(header: list[str], path) -> tuple[list[int], dict[str, list[int]], int | None, dict[str, str]]:
    """Column layout of a header row.

    Returns:
        ``(coordinate columns [x, y(, z)], {field: component columns}, time column or None, {field: units})``.
    """
    names, units = [], {}
    for raw in header:
        h = raw.strip().strip('"').strip()
        m = _UNITS.match(h)
        name, unit = (m.group("name").strip(), m.group("units").strip()) if m else (h, "")
        names.append((name, unit))
    groups: dict[str, dict[int, int]] = {}
    order: list[str] = []
    time_col = None
    for col, (name, unit) in enumerate(names):
        low = name.lower()
        if low in TIME_NAMES:
            time_col = col
            continue
        if low in ("x", "y", "z"):
            base, comp = "", _ORDER[low]
        else:
            m = _COMPONENT.match(name)
            if m:
                base = m.group("base").strip()
                comp = _ORDER[(m.group("a") or m.group("b") or m.group("c")).lower()]
            else:
                base, comp = name, -1
        key = "\0coords" if base.lower() in COORD_BASES and comp >= 0 else base
        if not key:
            raise InputError(path, f"column {col + 1}", "empty column name")
        if key not in groups:
            groups[key] = {}
            order.append(key)
        if comp in groups[key]:
            raise InputError(path, name, f"column {col + 1} repeats component {comp} of '{key}'")
        groups[key][comp] = col
        if unit and key != "\0coords":
            units.setdefault(key, unit)
    if "\0coords" not in groups:
        raise InputError(path, "X,Y,Z", "no coordinate columns (expected X, Y, Z or Points:0/1/2)")
    coords = groups.pop("\0coords")
    if sorted(coords) not in ([0, 1], [0, 1, 2]):
        raise InputError(path, "X,Y,Z", f"incomplete coordinate columns (found components {sorted(coords)})")
    fields = {}
    for key in order:
        if key == "\0coords":
            continue
        comps = groups[key]
        if -1 in comps:
            if len(comps) > 1:
                raise InputError(path, key, "column appears both as a scalar and as vector components")
            fields[key] = [comps[-1]]
        elif sorted(comps) in ([0, 1], [0, 1, 2]):
            fields[key] = [comps[c] for c in sorted(comps)]
        else:
            raise InputError(path, key, f"incomplete vector components {sorted(comps)} (expected 2 or 3)")
    return [coords[c] for c in sorted(coords)], fields, time_col, units


def read_table(path: Path) -> tuple[list[str], np.ndarray | list[list[str]]]:
    """Header and rows of a CSV file; rows as a float array when every cell is numeric, else as strings."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            head = fh.readline()
            dialect_delim = ";" if head.count(";") > head.count(",") else ","
            header = next(csv.reader([head], delimiter=dialect_delim))
            try:
                data = np.loadtxt(fh, delimiter=dialect_delim, dtype=np.float64, ndmin=2)
                return header, data
            except ValueError:
                pass
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh, delimiter=dialect_delim))[1:]
        return header, [r for r in rows if r]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, None, f"cannot read CSV ({e})") from None


def _column(rows, col: int, path, name: str, numeric: bool = True):
    if isinstance(rows, np.ndarray):
        return rows[:, col]
    vals = []
    for r, row in enumerate(rows):
        if col >= len(row):
            raise InputError(path, name, f"row {r + 2} has {len(row)} columns, expected at least {col + 1}")
        vals.append(row[col].strip())
    if not numeric:
        return np.asarray(vals)
    try:
        return np.asarray(vals, dtype=np.float64)
    except ValueError:
        bad = next(r for r, v in enumerate(vals) if not _is_float(v))
        raise InputError(path, name, f"row {bad + 2}: '{vals[bad]}' is not a number") from None


def _is_text(values) -> bool:
    """A label column: most entries are not numbers (a few bad numbers in a numeric column are an error)."""
    return sum(not _is_float(v) for v in values) > len(values) // 2


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def match_points(mesh_points: np.ndarray, table_points: np.ndarray, tolerance: float, path) -> np.ndarray:
    """For every mesh node the CSV row at its position: ``(N,)`` row ids.

    Raises when some node has no row within ``tolerance`` (how many, the worst distance) or when two nodes
    pick the same row (tolerance larger than the mesh spacing, or duplicate rows).
    """
    from scipy.spatial import cKDTree

    if table_points.shape[1] == 2:
        table_points = np.concatenate([table_points, np.zeros((len(table_points), 1))], axis=1)
    if len(table_points) == 0:
        raise InputError(path, "X,Y,Z", "table has no rows")
    dist, rows = cKDTree(table_points).query(mesh_points, k=1)
    far = np.flatnonzero(dist > tolerance)
    if far.size:
        worst = far[np.argmax(dist[far])]
        raise InputError(path, "X,Y,Z", f"{far.size} of {len(mesh_points)} mesh nodes have no CSV point within "
                         f"tolerance {tolerance:.3g} (worst: node {worst} at distance {dist[worst]:.3g}); "
                         f"check units or raise --tolerance")
    uniq, counts = np.unique(rows, return_counts=True)
    if uniq.size != rows.size:
        r = uniq[np.argmax(counts)]
        nodes = np.flatnonzero(rows == r)[:2].tolist()
        raise InputError(path, "X,Y,Z", f"row {r + 2} is the nearest point of several mesh nodes {nodes}; "
                         f"lower --tolerance or remove duplicate rows")
    return rows


def default_tolerance(points: np.ndarray) -> float:
    """1e-6 of the mesh's bounding-box diagonal."""
    return 1e-6 * float(np.linalg.norm(np.ptp(points, axis=0))) or 1e-9


def read_csv_series(source: str, mesh_path: str | None, tolerance: float | None) -> Series:
    """CSV tables (folder, glob or file) mapped onto the mesh ``mesh_path`` (any meshio-readable file)."""
    if not mesh_path:
        raise InputError(source, "--mesh", "CSV import needs the mesh the points belong to (--mesh FILE)")
    files = expand_files(source, (".csv", ".txt", ".dat"))
    mesh = read_meshio_mesh(mesh_path)
    points = _points3(mesh.points)
    cells, regions = _meshio_cells(mesh, mesh_path)
    tol = default_tolerance(points) if tolerance is None else float(tolerance)
    if tol < 0:
        raise InputError("--tolerance", None, f"expected a non-negative distance, got {tol}")
    cache: dict = {}

    def rows_for(f: Path, table_points: np.ndarray) -> np.ndarray:
        prev = cache.get("points")
        if prev is not None and prev.shape == table_points.shape and np.array_equal(prev, table_points):
            return cache["rows"]
        rows = match_points(points, table_points, tol, f)
        cache.update(points=table_points, rows=rows, extra=len(table_points) - len(points))
        return rows

    def parse(f: Path):
        header, rows = read_table(f)
        coords, fields, time_col, units = parse_header(header, f)
        xyz = np.stack([_column(rows, c, f, "XYZ"[i]) for i, c in enumerate(coords)], axis=1)
        node_rows = rows_for(f, xyz)
        values, labels = {}, {}
        for name, cols in fields.items():
            first = _column(rows, cols[0], f, name, numeric=False) if not isinstance(rows, np.ndarray) else None
            if first is not None and len(cols) == 1 and _is_text(first[:1000]):
                labels[name] = first[node_rows]
                continue
            values[name] = np.stack([_column(rows, c, f, name) for c in cols], axis=1)[node_rows]
        t = None
        if time_col is not None:
            tv = _column(rows, time_col, f, "Time")
            if tv.size and np.ptp(tv) > 1e-12 * max(1.0, abs(float(tv[0]))):
                raise InputError(f, "Time", f"time column is not constant within the file ({tv.min():.6g} .. "
                                 f"{tv.max():.6g})")
            t = float(tv[0]) if tv.size else None
        return t, values, labels, units

    t0, values0, labels0, units0 = parse(files[0])
    frames = [Frame(t0, str(files[0]), lambda: values0)]
    for f in files[1:]:
        frames.append(Frame(_peek_time(f), str(f), (lambda f=f: parse(f)[1])))
    series = Series(source, "csv", points, cells, frames, cell_regions=regions,
                    region_names=_meshio_region_names(mesh), point_labels=labels0, units=units0)
    if cache.get("extra", 0) > 0:
        series.notes.append(f"{cache['extra']} CSV rows of {files[0].name} match no mesh node (ignored)")
    return series


def _peek_time(path: Path) -> float | None:
    """The time of a CSV step from its header and first row only."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        head = fh.readline()
        delim = ";" if head.count(";") > head.count(",") else ","
        header = next(csv.reader([head], delimiter=delim))
        first = next(csv.reader([fh.readline()], delimiter=delim), [])
    _, _, time_col, _ = parse_header(header, path)
    if time_col is None or time_col >= len(first):
        return None
    try:
        return float(first[time_col])
    except ValueError:
        raise InputError(path, "Time", f"row 2: '{first[time_col]}' is not a number") from None
