"""DeepMind MeshGraphNets datasets (``meta.json`` + ``<split>.tfrecord``: cylinder_flow, airfoil, deforming_plate,
flag_simple, ...) -> a meshgnn dataset, read with the ``tfrecord`` package (no TensorFlow).

The format, as DeepMind's ``meshgraphnets/dataset.py`` reads it:

* ``meta.json``: ``field_names`` (list), ``features`` = ``{name: {"type", "shape", "dtype"}}``,
  ``trajectory_length`` T, and in the CFD sets ``dt``. ``type`` is ``static`` (shape ``[1, -1, C]``: one value per
  trajectory), ``dynamic`` (``[T, -1, C]``: one per step) or ``dynamic_varlen`` (steps of different lengths, row
  counts in the extra feature ``length_<name>``, int32); ``-1`` is the node (or cell) count of the record.
* ``<split>.tfrecord``: TFRecord framing (length, masked CRC32C of it, payload, masked CRC32C of it); each record is
  **one trajectory**, a ``tf.train.Example`` whose feature ``<name>`` is a bytes list holding the field's raw
  little-endian array bytes, reshaped by ``shape``.
* Node types (``node_type``, int32, ``[1, -1, 1]``): NORMAL 0, OBSTACLE 1, AIRFOIL 2, HANDLE 3, INFLOW 4,
  OUTFLOW 5, WALL_BOUNDARY 6 -> :data:`NODE_TYPE_NAMES`.
* The mesh: ``mesh_pos`` (N, 2) or (N, 3) and ``cells`` (M, 3) triangles or (M, 4) tetrahedra (quads in 2-D).

A meshgnn dataset holds one mesh, so the imported records must share it (cylinder_flow's records each have their
own mesh: import them one per dataset with ``--skip K --limit 1``).

    from meshgnn.io.importers import build_options
    from meshgnn.io.importers.deepmind import import_deepmind
    import_deepmind("cylinder_flow", "cyl.h5", build_options(state="velocity"), split="valid", limit=1)
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np

from ...errors import InputError
from . import validate
from .deepmind_format import (CELLS, POSITIONS, FieldMeta, Meta, decode_record, is_deepmind, iter_records,
                              read_meta, split_path)
from .mapping import ImportOptions

__all__ = ["DEEPMIND_CODES", "NODE_TYPE_NAMES", "import_deepmind", "is_deepmind", "read_meta"]

#: DeepMind's NodeType codes -> meshgnn node type names (code = index). The first five are meshgnn's defaults.
DEEPMIND_CODES = {0: "interior", 1: "obstacle", 2: "airfoil", 3: "handle", 4: "inlet", 5: "outlet", 6: "wall"}
NODE_TYPE_NAMES = ("interior", "inlet", "outlet", "wall", "obstacle", "airfoil", "handle")
#: Node types whose values the data prescribes by default (MeshGraphNets trains on NORMAL and OUTFLOW nodes only).
DEFAULT_DIRICHLET = ("inlet", "wall", "obstacle", "airfoil", "handle")
NODE_TYPE = "node_type"


# ----------------------------------------------------------------------------------------------------------------
# record -> mesh and fields
# ----------------------------------------------------------------------------------------------------------------
def _per_step(value, fm: FieldMeta, path, where) -> list[np.ndarray] | np.ndarray:
    """Static fields -> (n, C); dynamic -> (T, n, C); dynamic_varlen -> a list of (n_t, C)."""
    if fm.kind == "dynamic_varlen":
        return list(value)
    v = np.asarray(value)
    if fm.kind == "static":
        v = v[0] if v.ndim >= 3 else v            # meta shape [1, n, C...]: one value per trajectory
        return v.reshape(v.shape[0], -1)
    if v.ndim < 2:
        raise InputError(path, where, f"dynamic field of shape {v.shape}: expected (T, n, C)")
    return v.reshape(v.shape[0], v.shape[1], -1)


def _static_of(value, fm: FieldMeta, path, where) -> np.ndarray:
    """One (n, C) array of a field that must not change over the trajectory (the mesh, the node types)."""
    v = _per_step(value, fm, path, where)
    if fm.kind == "static":
        return v
    steps = list(v)
    if any(s.shape != steps[0].shape or not np.array_equal(s, steps[0]) for s in steps[1:]):
        raise InputError(path, where, f"{fm.kind} and changing over the trajectory (remeshing); a meshgnn dataset "
                         f"has one fixed mesh")
    return np.asarray(steps[0])


def mesh_of(rec: dict, meta: Meta, path, where: str, node_types=None):
    """``(points (N, D) float64, cells {type: (M, k) int64}, node_type (N,) int8, notes)`` of a record."""
    pos = _static_of(rec[POSITIONS], meta.fields[POSITIONS], path, f"{where}/{POSITIONS}").astype(np.float64)
    if pos.shape[1] not in (2, 3):
        raise InputError(path, f"{where}/{POSITIONS}", f"expected (N, 2) or (N, 3) positions, got {pos.shape}")
    n, dim = pos.shape
    conn = _static_of(rec[CELLS], meta.fields[CELLS], path, f"{where}/{CELLS}")
    if conn.dtype.kind not in "iu":
        raise InputError(path, f"{where}/{CELLS}", f"expected integer node ids, got {conn.dtype}")
    conn = conn.astype(np.int64)
    k = conn.shape[1]
    ctype = {3: "triangle", 4: "tetra" if dim == 3 else "quad"}.get(k)
    if ctype is None:
        raise InputError(path, f"{where}/{CELLS}", f"expected 3 (triangles) or 4 (tetrahedra) nodes per cell, got {k}")
    notes = []
    pts3 = pos if dim == 3 else np.concatenate([pos, np.zeros((n, 1))], axis=1)
    if ctype == "tetra":
        vol = validate.cell_measures(pts3, conn, "tetra")
        flip = vol < 0
        if flip.any():           # DeepMind's tets need not follow VTK's orientation; swap two vertices
            conn[flip] = conn[flip][:, [0, 2, 1, 3]]
            notes.append(f"{int(flip.sum())} tetrahedra reordered to VTK's positive orientation")
    validate.check_cells(pts3, {ctype: conn}, f"{path}: {where}")
    if NODE_TYPE in rec:
        codes = _static_of(rec[NODE_TYPE], meta.fields[NODE_TYPE], path, f"{where}/{NODE_TYPE}").reshape(-1)
        if codes.shape != (n,):
            raise InputError(path, f"{where}/{NODE_TYPE}", f"expected {n} node types like {POSITIONS}, got "
                             f"{codes.shape[0]}")
        node_type = node_type_codes(codes, path, f"{where}/{NODE_TYPE}", node_types)
    else:
        node_type = np.zeros(n, dtype=np.int8)
        notes.append("no node_type field: every node interior")
    return pos, {ctype: conn}, node_type, notes


def node_type_codes(codes: np.ndarray, path, where, overrides=None) -> np.ndarray:
    """DeepMind codes (N,) -> codes into :data:`NODE_TYPE_NAMES`; ``overrides``: ``{"code": name}``."""
    names = {**DEEPMIND_CODES, **{int(c): v for c, v in (overrides or {}).items()}}
    bad = [v for v in names.values() if v not in NODE_TYPE_NAMES]
    if bad:
        raise InputError("--node-types", bad[0], f"not a node type (known: {', '.join(NODE_TYPE_NAMES)})")
    lut = np.full(max(names) + 1, -1, dtype=np.int64)
    for c, v in names.items():
        lut[c] = NODE_TYPE_NAMES.index(v)
    codes = np.asarray(codes, dtype=np.int64)
    out = np.where((codes >= 0) & (codes < lut.size), lut[np.clip(codes, 0, lut.size - 1)], -1)
    if (out < 0).any():
        i = int(np.flatnonzero(out < 0)[0])
        raise InputError(path, where, f"node {i} has code {codes[i]}, not a DeepMind NodeType (0..6: NORMAL, OBSTACLE,"
                         f" AIRFOIL, HANDLE, INFLOW, OUTFLOW, WALL_BOUNDARY); map it with --node-types CODE=TYPE")
    return out.astype(np.int8)


def choose_fields(meta: Meta, rec: dict, n: int, options: ImportOptions, path) -> tuple[list[str], list[str]]:
    """State and static field names: ``--state`` / ``--static``, else every per-node float field that changes
    (dynamic) as state and the static per-node float fields other than the mesh as static."""
    mesh = {POSITIONS, CELLS, NODE_TYPE}
    per_node = [f for f, fm in meta.fields.items() if f not in mesh and fm.dtype.kind == "f"
                and _rows(rec[f], fm) == n]
    for name in list(options.state or []) + list(options.static):
        if name not in meta.fields:
            raise InputError(meta.path, name, f"no such field (have {', '.join(meta.fields)})")
        if name in (CELLS, NODE_TYPE) or name not in per_node and name != POSITIONS:
            raise InputError(meta.path, name, f"not a per-node float field (per-node float fields: "
                             f"{', '.join(per_node) or 'none'})")
    state = list(options.state) if options.state is not None else \
        [f for f in per_node if meta.fields[f].kind != "static" and f not in options.static]
    static = list(options.static) if options.static else []
    if not state:
        raise InputError(meta.path, None, "no state fields (no dynamic per-node float field; pass --state NAME,...)")
    for f in state:
        if meta.fields[f].kind == "static":
            raise InputError(meta.path, f, "static in meta.json (one value per trajectory); it cannot be a state "
                             "field, pass it with --static")
    return state, static


def _rows(value, fm: FieldMeta) -> int:
    """Rows per step of a field (-1 when a dynamic_varlen field's row count changes)."""
    if fm.kind == "dynamic" and np.asarray(value).ndim < 2:
        return -1
    v = _per_step(value, fm, None, None)
    if fm.kind == "dynamic_varlen":
        lens = {len(s) for s in v}
        return lens.pop() if len(lens) == 1 else -1
    return v.shape[0] if fm.kind == "static" else v.shape[1]


def _components(value, fm: FieldMeta) -> int:
    v = _per_step(value, fm, None, None)
    return int((v[0] if fm.kind == "dynamic_varlen" else v).shape[-1]) if len(v) else 1


def state_steps(value, fm: FieldMeta, n: int, path, where) -> np.ndarray:
    """(T, n, C) float32 of a state field (a dynamic_varlen one must keep n rows every step)."""
    v = _per_step(value, fm, path, where)
    if fm.kind == "dynamic_varlen":
        if any(len(s) != n for s in v):
            bad = next(k for k, s in enumerate(v) if len(s) != n)
            raise InputError(path, where, f"dynamic_varlen with {len(v[bad])} rows at step {bad}, expected {n} "
                             f"(a remeshed trajectory cannot be a meshgnn trajectory)")
        v = np.stack(v)
    return np.asarray(v, dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------------
# the import
# ----------------------------------------------------------------------------------------------------------------
def import_deepmind(source, out, options: ImportOptions, split: str = "train", limit: int | None = None,
                    skip: int = 0, trajectory_ids=None, provenance=None,
                    report: Callable[[str], None] | None = None, progress: bool = False) -> Path:
    """Import records ``skip .. skip + limit - 1`` of ``<source>/<split>.tfrecord`` (one trajectory each).

    Args:
        source: the dataset folder (with ``meta.json``), or one of its ``.tfrecord`` files (then ``split`` is
            ignored).
        out: the dataset to write (temp file + rename: nothing is left on failure).
        options: ``state`` / ``static`` / ``units`` / ``dt`` / ``dirichlet`` and ``node_types.values``
            (``{"<DeepMind code>": type}`` overrides of :data:`DEEPMIND_CODES`) from :func:`~.mapping.build_options`.
        limit: number of trajectories (default: all remaining records).
        trajectory_ids: ids (default: the record numbers).
    Returns:
        ``Path(out)``.
    """
    from ..dataset import DatasetWriter, FieldSpec

    report = report or (lambda s: print(s, file=sys.stderr))
    folder, file = split_path(source, split)
    meta = read_meta(folder)
    out = Path(out)
    if limit is not None and limit < 1:
        raise InputError("--limit", None, f"expected at least 1 trajectory, got {limit}")
    if skip < 0:
        raise InputError("--skip", None, f"expected a record count >= 0, got {skip}")
    dt = options.dt if options.dt is not None else meta.dt
    if dt is None:
        raise InputError(meta.path, "dt", "meta.json has no dt; give the time step with --dt")
    if dt <= 0:
        raise InputError("--dt", None, f"expected a positive time step, got {dt}")
    overrides = {k: v for k, v in options.node_types.values.items() if k.lstrip("-").isdigit()}
    dirichlet = list(options.dirichlet) if options.dirichlet is not None else list(DEFAULT_DIRICHLET)
    unknown = [d for d in dirichlet if d not in NODE_TYPE_NAMES]
    if unknown:
        raise InputError("--dirichlet", unknown[0], f"not a node type (known: {', '.join(NODE_TYPE_NAMES)})")

    records = ((k, p) for k, p in iter_records(file) if k >= skip)
    writer = ref = None
    count = 0
    bar = None
    try:
        for k, payload in records:
            rec = decode_record(payload, meta, file, k)
            where = f"record {k}"
            pos, cells, node_type, notes = mesh_of(rec, meta, file, where, overrides)
            if ref is None:
                state, static = choose_fields(meta, rec, len(pos), options, file)
                specs = [FieldSpec(f, "state", _components(rec[f], meta.fields[f]), options.units.get(f, ""))
                         for f in state]
                specs += [FieldSpec(f, "static", _components(rec[f], meta.fields[f]), options.units.get(f, ""))
                          for f in static]
                ref = (pos, cells, node_type)
                ids = list(trajectory_ids) if trajectory_ids else None
                prov = {"importer": "meshgnn import", "format": "deepmind", "sources": [str(file)],
                        "meta": meta.raw, "records_from": skip, **(provenance or {})}
                writer = DatasetWriter(out, pos, cells, node_type, NODE_TYPE_NAMES, dt, fields=specs,
                                       dirichlet_types=dirichlet, provenance=prov).__enter__()
                for line in _describe(file, k, pos, cells, node_type, specs, rec, meta, dt, notes):
                    report(line)
                if progress:
                    from ...progress import Progress
                    bar = Progress(limit, "import", stream=sys.stderr, unit="trajectory")
            else:
                _same_mesh(ref, (pos, cells, node_type), file, k, skip)
            tid = ids[count] if ids and count < len(ids) else str(k)
            _write_record(writer, rec, meta, specs, tid, {"source": str(file), "record": k}, dt, file, where,
                          len(pos))
            count += 1
            if bar is not None:
                bar.update(1)
            if limit is not None and count >= limit:
                break            # before the next record is read: a damaged record after the last one is not touched
        if writer is None:
            raise InputError(file, f"record {skip}", f"no such record (the file holds fewer than {skip + 1})")
        if ids and len(ids) != count:
            raise InputError("--trajectory", None, f"{len(ids)} ids for {count} trajectories")
        writer.provenance["records"] = count
        w, writer = writer, None
        w.__exit__(None, None, None)
    except BaseException as e:
        if writer is not None:
            writer.__exit__(type(e), e, e.__traceback__)
        raise
    finally:
        if bar is not None:
            bar.close()
    report(f"wrote {out}: {count} trajectories from {file.name} (records {skip}..{skip + count - 1}), "
           f"{len(ref[0])} nodes")
    return out


def _write_record(w, rec, meta: Meta, specs, tid, params, dt, path, where, n) -> None:
    """One record as one trajectory: static fields first, then every step (NaN/Inf named by step)."""
    static, steps = {}, {}
    for sp in specs:
        fm = meta.fields[sp.name]
        if sp.role == "static":
            v = _per_step(rec[sp.name], fm, path, f"{where}/{sp.name}")
            v = v if fm.kind == "static" else np.asarray(v[0])
            validate.check_finite(v, f"{path}: {where}", sp.name, 0.0, 0)
            static[sp.name] = np.asarray(v, dtype=np.float32).reshape(n, sp.components)
        else:
            steps[sp.name] = state_steps(rec[sp.name], fm, n, path, f"{where}/{sp.name}")
    lengths = {f: len(v) for f, v in steps.items()}
    if len(set(lengths.values())) != 1:
        raise InputError(path, where, f"state fields have different step counts {lengths}")
    T = next(iter(lengths.values()))
    if meta.trajectory_length is not None and T != meta.trajectory_length:
        raise InputError(path, where, f"{T} steps, but meta.json's trajectory_length is {meta.trajectory_length}")
    w.add_trajectory(tid, T, parameters=params, static=static)
    for f, v in steps.items():
        bad = ~np.isfinite(v).reshape(T, -1).all(1)
        if bad.any():                  # name the first step holding NaN/Inf, its node count and first node
            t = int(np.argmax(bad))
            validate.check_finite(v[t].reshape(n, -1), f"{path}: {where}", f, t * dt, t)
    w.write_steps(tid, 0, dt * np.arange(T), {f: v.reshape(T, n, -1) for f, v in steps.items()})


def _same_mesh(ref, have, path, k, skip) -> None:
    names = ("mesh_pos", "cells", "node_type")
    for name, a, b in zip(names, (ref[0], ref[1], ref[2]), have):
        same = (sorted(a) == sorted(b) and all(np.array_equal(a[t], b[t]) for t in a)) if isinstance(a, dict) \
            else (a.shape == b.shape and np.array_equal(a, b))
        if not same:
            raise InputError(path, f"record {k}/{name}", f"differs from record {skip}'s: a meshgnn dataset has one "
                             f"mesh; import such records one per dataset (--skip {k} --limit 1)")


def _describe(path, k, pos, cells, node_type, specs, rec, meta: Meta, dt, notes) -> list[str]:
    lines = [f"{path} [deepmind]: record {k}: {len(pos)} nodes ({pos.shape[1]}-D), cells: "
             + ", ".join(f"{len(c)} {t}" for t, c in cells.items())]
    for sp in specs:
        fm = meta.fields[sp.name]
        lines.append(f"  {sp.role:6s} {sp.name}: {sp.components} component(s) ({fm.kind} {fm.dtype.name} "
                     f"{list(fm.shape)} in meta.json)")
    T = meta.trajectory_length
    lines.append(f"  time steps per trajectory: {T if T is not None else '?'}, dt = {dt:.6g}")
    counts = np.bincount(node_type.astype(np.int64), minlength=len(NODE_TYPE_NAMES))
    lines.append("  node types: " + ", ".join(f"{NODE_TYPE_NAMES[i]} {c}" for i, c in enumerate(counts) if c))
    skipped = [f for f in meta.fields if f not in {s.name for s in specs} | {POSITIONS, CELLS, NODE_TYPE}]
    if skipped:
        rows = {f: _rows(rec[f], meta.fields[f]) for f in skipped}
        lines.append("  not imported: " + ", ".join(
            f if rows[f] == len(pos) else f"{f} ({'varying' if rows[f] < 0 else rows[f]} rows, not per node)"
            for f in skipped))
    return lines + [f"  note: {n}" for n in notes]
