"""One validation pass over a dataset's *values* (the schema and shapes are checked by :class:`Dataset` on open).

Two depths, shared by ``info``, ``partition``, ``train`` and ``rollout``:

* :func:`quick_problems` — cheap, run by every command at its start: at least one trajectory with >= 2 steps,
  numeric dtypes of points, times and every field, finite points, finite and strictly increasing times that
  step by the dataset's ``dt`` (relative tolerance :data:`DT_RTOL`, the importer's), node type codes in range.
  Reads the points, the node types and the times only — never a frame.
* :func:`full_problems` — everything (``meshgnn info --check``): the quick checks, edge indices in range, and
  every frame of every state field and every static field finite.
* :func:`check_frames` — the frames one command is about to use (rollout: its trajectory's reference frames).

Each problem is an :class:`InputError` ``file: /hdf5/path: what (trajectory, step, count)``; the ``check_*``
functions raise the first, :func:`full_problems` returns them all (``info --check`` prints one line each).
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from ..errors import InputError

DT_RTOL = 1e-3       # as meshgnn.io.importers.validate.check_times: a constant step within 0.1 %
_NUMERIC = "fiu"


def _numeric(ds, where: str) -> list[InputError]:
    dtype = ds.stored_dtype(where)
    if dtype is not None and dtype.kind not in _NUMERIC:
        return [InputError(ds.path, where, f"expected numbers, stored as {dtype}")]
    return []


def _times(ds, tid: str) -> list[InputError]:
    where = f"/trajectories/{tid}/time"
    t = ds.times(tid)
    bad = np.flatnonzero(~np.isfinite(t))
    if bad.size:
        return [InputError(ds.path, where, f"step {bad[0]}: time is {t[bad[0]]} ({bad.size} non-finite times); "
                                           "expected finite numbers")]
    d = np.diff(t)
    back = np.flatnonzero(d <= 0)
    if back.size:
        k = int(back[0])
        return [InputError(ds.path, where, f"times must increase strictly: step {k + 1} has t={t[k + 1]:.6g} "
                                           f"after t={t[k]:.6g} ({back.size} such steps)")]
    off = np.flatnonzero(np.abs(d - ds.dt) > DT_RTOL * ds.dt)
    if off.size:
        k = int(off[0])
        return [InputError(ds.path, where, f"times step by {d[k]:.6g} at step {k + 1}, the dataset's dt is "
                                           f"{ds.dt:.6g} ({off.size} such steps)")]
    return []


def quick_problems(ds) -> list[InputError]:
    """The cheap value checks (no frame is read)."""
    out: list[InputError] = []
    if not ds.trajectories:
        return [InputError(ds.path, "/trajectories", "no trajectories; expected at least one with >= 2 time steps")]
    steps = {tid: ds.num_steps(tid) for tid in ds.trajectories}
    if max(steps.values()) < 2:
        out.append(InputError(ds.path, "/trajectories", f"every trajectory has fewer than 2 time steps "
                                                        f"({', '.join(f'{k}: {v}' for k, v in steps.items())}); "
                                                        "expected at least one with >= 2"))
    out += _numeric(ds, "/mesh/points")
    for tid in ds.trajectories:
        out += _numeric(ds, f"/trajectories/{tid}/time")
        for name in ds.fields:
            out += _numeric(ds, f"/trajectories/{tid}/fields/{name}")
    if out:
        return out                                    # the value checks below would only fail to convert
    pts = ds.points
    bad = ~np.isfinite(pts).all(axis=1)
    if bad.any():
        out.append(InputError(ds.path, "/mesh/points", f"{int(bad.sum())} nodes with non-finite coordinates "
                                                       f"(first: node {int(np.flatnonzero(bad)[0])}); expected "
                                                       "finite numbers"))
    try:
        ds.node_type                                  # range-checked on first access
    except InputError as e:
        out.append(e)
    for tid in ds.trajectories:
        out += _times(ds, tid)
    return out


def _edge_problems(ds) -> list[InputError]:
    dtype = ds.stored_dtype("/mesh/edges")
    if dtype is not None and dtype.kind not in "iu":
        return [InputError(ds.path, "/mesh/edges", f"expected integer node indices, stored as {dtype}")]
    try:
        ds.edge_index()                               # range-checked when read
    except InputError as e:
        return [e]
    return []


def _nonfinite(ds, tid: str, name: str, step) -> InputError | None:
    values = ds.read(tid, name, step)
    bad = int(np.count_nonzero(~np.isfinite(values).all(axis=-1)))
    if not bad:
        return None
    what = "static" if step is None else f"step {step}"
    return InputError(ds.path, f"/trajectories/{tid}/fields/{name}",
                      f"{what}: {bad} nodes with non-finite values (NaN/Inf); expected finite numbers")


def frame_problems(ds, traj: str, steps: Iterable[int], static: bool = True) -> Iterable[InputError]:
    """Non-finite values in frames ``steps`` of ``traj`` (every state field), and (``static``) in its static
    fields, checked after the first frame."""
    for i, k in enumerate(steps):
        for name in ds.state_fields:
            p = _nonfinite(ds, traj, name, int(k))
            if p is not None:
                yield p
        if i == 0 and static:
            for name in ds.static_fields:
                p = _nonfinite(ds, traj, name, None)
                if p is not None:
                    yield p


def full_problems(ds, progress: Callable[[int], None] | None = None) -> list[InputError]:
    """Every check (``meshgnn info --check``); ``progress(frames_done)`` is called after each frame."""
    out = quick_problems(ds)
    if any(p.field and not p.field.endswith("/time") and p.field != "/mesh/points" for p in out):
        return out                                    # no trajectories / not numbers: frames cannot be read
    out += _edge_problems(ds)
    done = 0
    for tid in ds.trajectories:
        for k in range(ds.num_steps(tid)):
            out += list(frame_problems(ds, tid, [k], static=k == 0))
            done += 1
            if progress is not None:
                progress(done)
    return out


def check_quick(ds) -> None:
    """Raise the first quick problem."""
    problems = quick_problems(ds)
    if problems:
        raise problems[0]


def check_frames(ds, traj: str, steps: Iterable[int]) -> None:
    """Raise for the first non-finite value in frames ``steps`` of ``traj`` (or its static fields)."""
    for p in frame_problems(ds, traj, steps):
        raise p


def check_dataset_file(path) -> None:
    """Open ``path`` as a dataset and run the quick checks (the commands' start-up check)."""
    from .dataset import Dataset

    with Dataset(path) as ds:
        check_quick(ds)
