"""What every reader returns (a :class:`Series`: one mesh, frames loaded lazily) and the import itself:
validate, resolve roles and node types, report, then stream the steps into a :class:`DatasetWriter`.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ...errors import InputError
from . import validate
from .mapping import ImportOptions, assign_node_types, codes_as_groups, label_groups

MESH_TYPE_DIM = {"tetra": 3, "hexahedron": 3, "wedge": 3, "pyramid": 3, "triangle": 2, "quad": 2, "line": 1,
                 "vertex": 0}
SAME_MESH_RTOL = 1e-6


@dataclass
class Frame:
    """One time step: its time (``None`` when the file has none), the file it comes from, and a loader that
    returns ``{field: (N,) or (N, C) array}`` of point data."""

    time: float | None
    source: str
    load: Callable[[], dict[str, np.ndarray]]


@dataclass
class Series:
    """One trajectory as a reader sees it.

    Attributes:
        source: the path the user gave.
        fmt: reader name.
        points: ``(N, 3)`` float64.
        cells: ``{cell type: (M, k) int64}``, every cell block of the file (lower-dimensional ones included).
        frames: time steps in file order.
        cell_regions: ``{region field: {cell type: (M,) ints}}`` cell-data labels (e.g. ``gmsh:physical``).
        region_names: ``{region field: {value: name}}`` (gmsh physical names).
        node_groups: ``{name: node ids}`` named node sets (OpenFOAM patches).
        point_labels: ``{name: (N,) labels}`` per-node labels that are not fields (text columns).
        units: units found in the files (CSV headers).
        notes: things worth telling the user.
    """

    source: str
    fmt: str
    points: np.ndarray
    cells: dict[str, np.ndarray]
    frames: list[Frame]
    cell_regions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    region_names: dict[str, dict[int, str]] = field(default_factory=dict)
    node_groups: dict[str, np.ndarray] = field(default_factory=dict)
    point_labels: dict[str, np.ndarray] = field(default_factory=dict)
    patch_conditions: dict[str, dict[str, str]] = field(default_factory=dict)   # {field: {patch: bc type}}
    units: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    _first: dict | None = None

    def first(self) -> dict[str, np.ndarray]:
        """Fields of step 0 (cached)."""
        if self._first is None:
            if not self.frames:
                raise InputError(self.source, None, "no time steps found")
            self._first = as_columns(self.frames[0].load())
        return self._first


def as_columns(fields: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Make every field 2-D: ``(N,)`` -> ``(N, 1)``; ``(N, a, b)`` -> ``(N, a*b)``."""
    out = {}
    for name, arr in fields.items():
        arr = np.asarray(arr)
        out[name] = arr.reshape(len(arr), -1) if arr.ndim != 2 else arr
    return out


def natural_key(path) -> list:
    """Sort key treating digit runs as numbers: ``step_2`` before ``step_10``."""
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", str(path))]


def top_cells(series: Series) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The highest-dimensional cell blocks (the mesh the graph is built from) and counts of dropped blocks."""
    from ...graph import CELL_EDGES

    present = {t: c for t, c in series.cells.items() if len(c)}
    if not present:
        raise InputError(series.source, "cells", "the mesh has no cells")
    unknown = sorted(t for t in present if t not in MESH_TYPE_DIM)
    dim = max((MESH_TYPE_DIM.get(t, 3) for t in present), default=0)
    if unknown:
        raise InputError(series.source, f"cells/{unknown[0]}", f"unsupported cell type (supported: "
                         f"{', '.join(t for t in CELL_EDGES)})")
    keep = {t: np.asarray(c, dtype=np.int64) for t, c in present.items() if MESH_TYPE_DIM[t] == dim}
    dropped = {t: len(c) for t, c in present.items() if MESH_TYPE_DIM[t] < dim}
    return keep, dropped


def region_groups(series: Series, name: str) -> dict[str, np.ndarray]:
    """Node groups from a cell-data region field: nodes of the cells of each region value (named if known)."""
    names = series.region_names.get(name, {})
    groups: dict[str, list[np.ndarray]] = {}
    for ctype, values in series.cell_regions[name].items():
        conn = series.cells[ctype]
        for v in np.unique(values):
            key = names.get(int(v), str(int(v)))
            groups.setdefault(key, []).append(np.unique(conn[values == v]))
    return {k: np.unique(np.concatenate(v)) for k, v in groups.items()}


def resolve_node_types(series: Series, options: ImportOptions, type_names: list[str]):
    """Node types of ``series`` by the rules in ``options``; see the module docs of :mod:`.mapping`.

    Returns ``(node_type (N,) int8, type_names, label_field or None, {group: type or None})``.
    """
    rules = options.node_types
    n = len(series.points)
    if rules.field:
        f = rules.field
        if f in series.point_labels or f in series.first():
            labels = series.point_labels[f] if f in series.point_labels else series.first()[f]
            try:
                groups = label_groups(labels)
            except ValueError:
                raise InputError(series.frames[0].source, f, "node-type field must hold integers or names") from None
            if np.asarray(labels).dtype.kind in "iuf":
                rules = codes_as_groups(labels, rules, type_names)
            node_type, names, chosen = assign_node_types(n, groups, rules, type_names)
            return node_type, names, f, chosen
        if f in series.cell_regions:
            node_type, names, chosen = assign_node_types(n, region_groups(series, f), rules, type_names)
            return node_type, names, None, chosen
        avail = sorted(set(series.point_labels) | set(series.first()) | set(series.cell_regions))
        raise InputError(series.source, f, f"node-type field not found (point or cell data available: "
                         f"{', '.join(avail) or 'none'})")
    if series.node_groups:
        node_type, names, chosen = assign_node_types(n, series.node_groups, rules, type_names)
        return node_type, names, None, chosen
    named = [r for r in series.cell_regions if series.region_names.get(r)]
    if named:
        node_type, names, chosen = assign_node_types(n, region_groups(series, named[0]), rules, type_names)
        return node_type, names, None, chosen
    if "node_type" in series.first():
        rules2 = codes_as_groups(series.first()["node_type"], rules, type_names)
        node_type, names, chosen = assign_node_types(n, label_groups(series.first()["node_type"]), rules2,
                                                     type_names)
        return node_type, names, "node_type", chosen
    return np.zeros(n, dtype=np.int8), list(type_names), None, {}


def select_fields(series: Series, options: ImportOptions, label_field: str | None):
    """State and static field names (validated against step 0)."""
    first = series.first()
    src = series.frames[0].source
    for name in list(options.state or []) + list(options.static):
        if name not in first:
            avail = ", ".join(sorted(first)) or "none"
            raise InputError(src, name, f"field not found in step 0 (available: {avail})")
    if options.state is not None:
        state = list(options.state)
    else:
        state = [k for k, v in first.items()
                 if k not in options.static and k != label_field and v.dtype.kind == "f"
                 and not k.startswith(("vtk", "gmsh:"))]
    if not state:
        raise InputError(src, None, "no state fields (pass --state NAME,...)")
    return state, list(options.static)


def same_mesh(a: Series, b: Series) -> None:
    """Raise unless ``b`` has ``a``'s mesh (trajectories of one dataset share it)."""
    if a.points.shape != b.points.shape:
        raise InputError(b.source, "points", f"{len(b.points)} nodes, but {a.source} has {len(a.points)} "
                         f"(all sources must share one mesh)")
    scale = float(np.ptp(a.points, axis=0).max()) or 1.0
    dist = np.abs(a.points - b.points).max()
    if dist > SAME_MESH_RTOL * scale:
        raise InputError(b.source, "points", f"node coordinates differ from {a.source} by up to {dist:.3g} "
                         f"(all sources must share one mesh)")
    ca, cb = top_cells(a)[0], top_cells(b)[0]
    if sorted(ca) != sorted(cb) or any(not np.array_equal(ca[t], cb[t]) for t in ca):
        raise InputError(b.source, "cells", f"cells differ from {a.source} (all sources must share one mesh)")


def describe(series: Series, cells, dropped, state, static, first, node_type, names, chosen, times, dt,
             unreferenced) -> list[str]:
    """Lines reporting what was found."""
    lines = [f"{series.source} [{series.fmt}]: {len(series.points)} nodes, cells: "
             + ", ".join(f"{len(c)} {t}" for t, c in cells.items())
             + (f" (boundary blocks used for labels only: {', '.join(f'{n} {t}' for t, n in dropped.items())})"
                if dropped else "")]
    n, t = len(series.points), len(times)
    for role, names_ in (("state", state), ("static", static)):
        for f in names_:
            c = first[f].shape[1] if f in first else "?"
            shape = f"(T, N, C) = ({t}, {n}, {c})" if role == "state" else f"(N, C) = ({n}, {c})"
            lines.append(f"  {role:6s} {f}: {c} component(s), {shape}")
    t0, t1 = (times[0], times[-1]) if len(times) else (None, None)
    lines.append(f"  time steps: {len(times)}" + (f", t = {t0:.6g} .. {t1:.6g}, dt = {dt:.6g}" if dt else ""))
    counts = np.bincount(node_type.astype(np.int64), minlength=len(names))
    lines.append("  node types: " + ", ".join(f"{names[i]} {c}" for i, c in enumerate(counts) if c))
    unmatched = [g for g, t in chosen.items() if t is None]
    if unmatched:
        lines.append(f"  groups without a node-type rule (left interior): {', '.join(unmatched)}")
    if len(unreferenced):
        lines.append(f"  dropped {len(unreferenced)} nodes used by no cell (first: node {unreferenced[0]})")
    lines += [f"  note: {n}" for n in series.notes]
    return lines


def import_series(sources, out, options: ImportOptions, parameters=None, trajectory_ids=None,
                  provenance=None, report: Callable[[str], None] | None = None, progress: bool = False) -> Path:
    """Read, validate and write ``sources`` (one trajectory each, shared mesh) to the dataset ``out``.

    Args:
        sources: paths as the user gave them (formats detected unless ``options.fmt`` says).
        out: dataset path; written through ``DatasetWriter`` (temp file + rename): nothing is left on failure.
        options: roles, units, node types, ... (:func:`~.mapping.build_options`).
        parameters: per-trajectory parameter dicts (default: the source path).
        trajectory_ids: ids (default ``"0", "1", ...``).
        provenance: extra provenance entries.
        report: called with each report line (default: print to stderr).
    Returns:
        ``Path(out)``.
    """
    from ..dataset import NODE_TYPES, DatasetWriter, FieldSpec
    from . import read_source

    report = report or (lambda s: print(s, file=sys.stderr))
    sources = [str(s) for s in sources]
    ids = list(trajectory_ids) if trajectory_ids else [str(i) for i in range(len(sources))]
    if len(ids) != len(sources):
        raise InputError("--trajectory", None, f"{len(ids)} ids for {len(sources)} sources")
    if len(set(ids)) != len(ids):
        raise InputError("--trajectory", None, "trajectory ids must be distinct")
    params = list(parameters) if parameters else [{"source": s} for s in sources]
    out = Path(out)
    if any(Path(s).resolve() == out.resolve() for s in sources):
        raise InputError(out, None, "the output would overwrite a source")

    series = [read_source(s, options) for s in sources]
    ref = series[0]
    for s in series[1:]:
        same_mesh(ref, s)
    cells, dropped = top_cells(ref)
    validate.check_cells(ref.points, cells, ref.source)
    node_type, type_names, label_field, chosen = resolve_node_types(ref, options, list(NODE_TYPES))
    state, static = select_fields(ref, options, label_field)
    first = ref.first()
    unref, keep, cells = _drop_unreferenced(ref, cells, options.drop_unreferenced)
    timings, dt = _times(series, options.dt)
    for s, (t, _) in zip(series, timings):
        for line in describe(s, cells, dropped, state, static, s.first(),
                             node_type if keep is None else node_type[keep], type_names,
                             chosen, t, dt, unref):
            report(line)

    units = {**ref.units, **options.units}
    specs = [FieldSpec(f, "state", first[f].shape[1], units.get(f, "")) for f in state]
    specs += [FieldSpec(f, "static", first[f].shape[1], units.get(f, "")) for f in static]
    dirichlet = options.dirichlet if options.dirichlet is not None else [n for n in ("inlet",)
                                                                         if n in type_names]
    unknown = [d for d in dirichlet if d not in type_names]
    if unknown:
        raise InputError("--dirichlet", unknown[0], f"not a node type (known: {', '.join(type_names)})")
    per_field = None
    if options.dirichlet is None and ref.patch_conditions:
        per_field = dirichlet_from_conditions(ref.patch_conditions, chosen, state)
        if per_field is not None:
            dirichlet = [t for t in type_names if all(t in v for v in per_field.values())]
            report("boundary conditions from the case: " + "; ".join(
                f"{f} prescribed on {', '.join(v) or 'no node type'}" for f, v in per_field.items())
                + " (--dirichlet overrides)")
    points = ref.points if keep is None else ref.points[keep]
    prov = {"importer": "meshgnn import", "format": ref.fmt, "sources": sources,
            "node_types_from": (f"field {options.node_types.field}" if options.node_types.field
                                else ("patches/groups" if chosen else "none (all interior)")),
            **(provenance or {})}
    total = sum(len(s.frames) for s in series)
    from ...progress import Progress

    bar = Progress(total, "import", enabled=progress, every_s=30 if progress else None, stream=sys.stderr)
    try:
        with DatasetWriter(out, points, cells, (node_type if keep is None else node_type[keep]), type_names, dt,
                           fields=specs, dirichlet_types=list(dirichlet), provenance=prov,
                           dirichlet_fields=per_field) as w:
            for s, tid, par, (times, _) in zip(series, ids, params, timings):
                _write_trajectory(w, s, tid, par, times, specs, keep)
                bar.update(len(s.frames))
    finally:
        bar.close()
    report(f"wrote {out}: {len(series)} trajectories, {total} steps, {len(points)} nodes")
    return out


def dirichlet_from_conditions(conditions: dict, chosen: dict, state: list[str]) -> dict[str, list[str]] | None:
    """Per state field, the node types whose every patch fixes its value (:data:`openfoam.PRESCRIBING`).

    ``conditions``: {field: {patch: bc type}}; ``chosen``: {patch: node type or None}. ``None`` when no state
    field has boundary conditions on record (then the ``--dirichlet`` default applies).
    """
    from .openfoam import PRESCRIBING

    if not any(f in conditions for f in state):
        return None
    out = {}
    for f in state:
        bcs = conditions.get(f, {})
        by_type: dict[str, list[bool]] = {}
        for patch, ntype in chosen.items():
            if ntype is not None and ntype != "interior":
                by_type.setdefault(ntype, []).append(bcs.get(patch) in PRESCRIBING)
        out[f] = sorted(t for t, flags in by_type.items() if flags and all(flags))
    return out


def _drop_unreferenced(ref: Series, cells, drop: bool):
    """Nodes no cell uses: an error, or (``drop``) ``(unreferenced ids, kept ids, renumbered cells)``."""
    unref = validate.unreferenced_nodes(len(ref.points), cells)
    if not len(unref):
        return unref, None, cells
    if not drop:
        raise InputError(ref.source, "cells", f"{len(unref)} nodes are used by no cell (first: node {unref[0]}); "
                         f"pass --drop-unreferenced to drop them")
    keep = np.setdiff1d(np.arange(len(ref.points)), unref)
    renum = np.full(len(ref.points), -1, dtype=np.int64)
    renum[keep] = np.arange(len(keep))
    return unref, keep, {t: renum[c] for t, c in cells.items()}


def _times(series: list[Series], dt_override: float | None):
    """Checked times of every series and the dataset's common dt."""
    timings = [validate.check_times([f.time for f in s.frames], s.source, dt_override) for s in series]
    dts = [dt for _, dt in timings if dt is not None]
    if dts and max(dts) - min(dts) > 1e-6 * max(dts):
        raise InputError(series[dts.index(max(dts))].source, "time", f"time step {max(dts):.6g} differs from "
                         f"{min(dts):.6g} of another source (one dataset has one dt)")
    return timings, (dts[0] if dts else (dt_override or 1.0))


def _write_trajectory(w, s: Series, tid, params, times, specs, keep) -> None:
    """Stream one series into the writer, checking every step (missing fields, sizes, NaN/Inf)."""
    n = len(s.points)
    first = s.first()
    comps = {sp.name: sp.components for sp in specs}
    static = {}
    for sp in specs:
        if sp.role == "static":
            if sp.name not in first:
                raise InputError(s.frames[0].source, sp.name, "static field missing in step 0")
            v = first[sp.name]
            validate.check_shape(v, s.frames[0].source, sp.name, n, comps[sp.name], times[0], 0)
            validate.check_finite(v, s.frames[0].source, sp.name, times[0], 0)
            static[sp.name] = _take(v, keep).astype(np.float32)
    w.add_trajectory(tid, len(s.frames), parameters=params, static=static)
    for k, (frame, t) in enumerate(zip(s.frames, times)):
        data = first if k == 0 else as_columns(frame.load())
        out = {}
        for sp in specs:
            if sp.role != "state":
                continue
            if sp.name not in data:
                raise InputError(frame.source, sp.name, f"field missing at time {t:.6g} (step {k}); "
                                 f"present in step 0")
            v = data[sp.name]
            validate.check_shape(v, frame.source, sp.name, n, comps[sp.name], t, k)
            validate.check_finite(v, frame.source, sp.name, t, k)
            out[sp.name] = _take(v, keep).astype(np.float32)
        w.write_step(tid, k, float(t), out)
    s._first = None


def _take(v: np.ndarray, keep) -> np.ndarray:
    return v if keep is None else v[keep]
