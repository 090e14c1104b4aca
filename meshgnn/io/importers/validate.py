"""Checks run on every import. Each failure is one :class:`InputError` line naming the file, the field and the
offending cell / node / time step, so the user can find it in their own data.
"""
from __future__ import annotations

import numpy as np

from ...errors import InputError
from ...graph import CELL_EDGES

VOLUME_TYPES = ("tetra", "hexahedron", "wedge", "pyramid")
SURFACE_TYPES = ("triangle", "quad")
# Tet decompositions (local vertex ids, VTK order) whose summed signed volume is the cell's volume.
TET_SPLITS = {
    "tetra": ((0, 1, 2, 3),),
    "pyramid": ((0, 1, 2, 4), (0, 2, 3, 4)),
    "wedge": ((0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5)),
    "hexahedron": ((0, 1, 3, 4), (1, 2, 3, 6), (1, 3, 4, 6), (1, 4, 5, 6), (3, 4, 6, 7)),
}
DEGENERATE_RTOL = 1e-10  # |volume| <= rtol * (longest edge)^3 counts as zero


def _signed_tet_volumes(points: np.ndarray, tets: np.ndarray) -> np.ndarray:
    """Signed volumes ``(M,)`` of tets ``(M,4)``; positive for VTK's orientation."""
    p0 = points[tets[:, 0]]
    return np.einsum("ij,ij->i", np.cross(points[tets[:, 1]] - p0, points[tets[:, 2]] - p0),
                     points[tets[:, 3]] - p0) / 6.0


def _longest_edge(points: np.ndarray, conn: np.ndarray, ctype: str) -> np.ndarray:
    pairs = np.asarray(CELL_EDGES[ctype])
    d = points[conn[:, pairs[:, 0]]] - points[conn[:, pairs[:, 1]]]
    return np.sqrt((d * d).sum(-1)).max(1)


def cell_measures(points: np.ndarray, conn: np.ndarray, ctype: str) -> np.ndarray:
    """Signed volume (3D types) or area (2D types, unsigned) of each cell, ``(M,)`` float64."""
    points = np.asarray(points, dtype=np.float64)
    if ctype in TET_SPLITS:
        return sum(_signed_tet_volumes(points, conn[:, list(t)]) for t in TET_SPLITS[ctype])
    if ctype in SURFACE_TYPES:
        fans = [(0, 1, 2)] if ctype == "triangle" else [(0, 1, 2), (0, 2, 3)]
        area = 0.0
        for a, b, c in fans:
            area = area + 0.5 * np.linalg.norm(np.cross(points[conn[:, b]] - points[conn[:, a]],
                                                        points[conn[:, c]] - points[conn[:, a]]), axis=1)
        return area
    if ctype == "line":
        return np.linalg.norm(points[conn[:, 1]] - points[conn[:, 0]], axis=1)
    raise ValueError(ctype)


def check_cells(points: np.ndarray, cells: dict[str, np.ndarray], source) -> None:
    """Raise on out-of-range indices, degenerate (zero-measure) or inverted (negative-volume) cells."""
    n = len(points)
    for ctype, conn in cells.items():
        if conn.size == 0:
            continue
        bad = np.flatnonzero((conn < 0).any(1) | (conn >= n).any(1))
        if bad.size:
            raise InputError(source, f"cells/{ctype}", f"cell {bad[0]} refers to node "
                             f"{conn[bad[0]].tolist()} but the mesh has {n} nodes ({bad.size} such cells)")
        measure = cell_measures(points, conn, ctype)
        dim = 3 if ctype in VOLUME_TYPES else (2 if ctype in SURFACE_TYPES else 1)
        scale = _longest_edge(points, conn, ctype) ** dim
        zero = np.flatnonzero(np.abs(measure) <= DEGENERATE_RTOL * np.maximum(scale, np.finfo(float).tiny))
        if zero.size:
            i = zero[0]
            what = "volume" if dim == 3 else ("area" if dim == 2 else "length")
            raise InputError(source, f"cells/{ctype}", f"cell {i} (nodes {conn[i].tolist()}) is degenerate: "
                             f"zero {what} ({zero.size} degenerate cells in total)")
        if dim == 3:
            neg = np.flatnonzero(measure < 0)
            if neg.size:
                i = neg[0]
                raise InputError(source, f"cells/{ctype}", f"cell {i} (nodes {conn[i].tolist()}) is inverted: "
                                 f"volume {measure[i]:.3g} < 0 ({neg.size} inverted cells in total; "
                                 f"expected VTK vertex order)")


def unreferenced_nodes(num_nodes: int, cells: dict[str, np.ndarray]) -> np.ndarray:
    """Ids of nodes used by no cell, ``(K,)`` int64."""
    used = np.zeros(num_nodes, dtype=bool)
    for conn in cells.values():
        used[conn.ravel()] = True
    return np.flatnonzero(~used)


def check_finite(values: np.ndarray, source, field: str, time, step: int) -> None:
    """Raise if ``values`` (N, C) holds NaN or Inf: count, first node, time."""
    ok = np.isfinite(values)
    if ok.all():
        return
    bad_rows = np.flatnonzero(~ok.reshape(len(values), -1).all(1))
    kind = "NaN" if np.isnan(values).any() else "Inf"
    raise InputError(source, field, f"{bad_rows.size} nodes hold {kind}/Inf values at time {_fmt_time(time)} "
                     f"(step {step}); first: node {bad_rows[0]}")


def check_shape(values: np.ndarray, source, field: str, num_nodes: int, components: int, time, step: int) -> None:
    """Raise if a step's array is not ``(num_nodes, components)``."""
    if values.shape[0] != num_nodes:
        raise InputError(source, field, f"has {values.shape[0]} rows at time {_fmt_time(time)} (step {step}), "
                         f"expected {num_nodes} as in step 0")
    if values.shape[1] != components:
        raise InputError(source, field, f"has {values.shape[1]} components at time {_fmt_time(time)} "
                         f"(step {step}), expected {components} as in step 0")


def check_times(times, source, dt_override: float | None = None, rtol: float = 1e-3):
    """Validate a trajectory's time values; return ``(times (T,) float64, dt)``.

    ``times`` may hold ``None`` entries (no time in the file); then ``dt_override`` is required and times become
    ``t_k = k * dt``. With ``dt_override`` set, times always become ``t0 + k * dt`` (t0 from the file if known).
    Otherwise times must increase with a constant step (within ``rtol``): offending times are named.
    """
    times = list(times)
    if dt_override is not None:
        if dt_override <= 0:
            raise InputError("--dt", None, f"expected a positive time step, got {dt_override}")
        t0 = times[0] if times and times[0] is not None else 0.0
        return t0 + dt_override * np.arange(len(times), dtype=np.float64), float(dt_override)
    missing = [k for k, t in enumerate(times) if t is None]
    if missing:
        raise InputError(source, "time", f"{len(missing)} of {len(times)} steps carry no time value "
                         f"(first: step {missing[0]}); give the step with --dt")
    t = np.asarray(times, dtype=np.float64)
    if len(t) < 2:
        return t, None
    d = np.diff(t)
    back = np.flatnonzero(d <= 0)
    if back.size:
        k = back[0]
        raise InputError(source, "time", f"times do not increase: step {k + 1} has t={t[k + 1]:.6g} after "
                         f"t={t[k]:.6g} ({back.size} such steps)")
    dt = float(np.median(d))
    off = np.flatnonzero(np.abs(d - dt) > rtol * dt)
    if off.size:
        shown = ", ".join(f"{t[k]:.6g}->{t[k + 1]:.6g}" for k in off[:3])
        raise InputError(source, "time", f"irregular time steps: {off.size} steps differ from dt={dt:.6g} "
                         f"({shown}{', ...' if off.size > 3 else ''}); pass --dt to impose a constant step")
    return t, dt


def _fmt_time(t) -> str:
    return "?" if t is None else f"{float(t):.6g}"
