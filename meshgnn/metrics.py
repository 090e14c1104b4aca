"""Rollout error metrics: RMSE per field per step, streamed to CSV, summarised and plotted.

CSV layout (one row per :meth:`RMSETracker.update`): ``step,time,<field>,<field>,...`` where each field column
is ``sqrt(mean over counted nodes and components of (pred - ref)^2)``. A mask (True = counted) drops prescribed
(Dirichlet) nodes, or per field the prescribed components. For a distributed rollout compute
:func:`field_error_sums` (or :func:`squared_error_sums`) per rank, sum the sums and counts across ranks and feed
:meth:`RMSETracker.update_sums`: nothing the size of the mesh leaves its rank.
"""
from __future__ import annotations

import contextlib
import csv
import math
import sys
from pathlib import Path

import numpy as np

from .errors import InputError, MeshgnnError
from .io.atomic import atomic_path

SUMMARY_STEPS = (1, 10, 50)


def _as_2d(name, a, C=None) -> np.ndarray:
    a = np.asarray(a)
    a = a[:, None] if a.ndim == 1 else a
    if a.ndim != 2 or (C is not None and a.shape[1] != C):
        raise MeshgnnError(f"field {name!r}: expected shape (N,) or (N, {C}), got {np.shape(a)}")
    return a


def squared_error_sums(pred: dict, ref: dict, mask=None, components: dict | None = None) -> tuple[dict, dict]:
    """Per field: (sum over counted nodes and components of (pred-ref)^2 in float64, number of values counted).

    pred/ref: {name: (N,) | (N, C)}; mask: (N,) bool, True = counted (None: all nodes).
    """
    sums, counts = {}, {}
    for name, p in pred.items():
        C = (components or {}).get(name)
        p = _as_2d(name, p, C)
        r = _as_2d(name, ref[name], p.shape[1])
        if r.shape != p.shape:
            raise MeshgnnError(f"field {name!r}: prediction {p.shape} and reference {r.shape} differ")
        d = p.astype(np.float64) - r.astype(np.float64)
        if mask is not None:
            d = d[np.asarray(mask, dtype=bool)]
        sums[name] = float(np.einsum("ij,ij->", d, d))
        counts[name] = int(d.size)
    return sums, counts


def field_error_sums(pred, ref, free, components: list[int]):
    """Per field: ``(sum of (pred - ref)^2 over the entries counted, number of entries counted)``, float64.

    pred, ref: ``(n, C)`` tensors (columns field after field, ``components`` of each); free: ``(n, C)`` bool (True =
    counted: the model predicts it) or ``(n,)`` for whole rows. Returns a ``(2, F)`` float64 CPU tensor: row 0 the
    sums, row 1 the counts. Partial sums of ranks add up; RMSE = ``sqrt(sum / count)`` of the totals.
    """
    import torch

    d = pred.double() - ref.double()
    free = free if free.dim() == 2 else free[:, None].expand_as(d)
    sq = torch.where(free, d * d, torch.zeros((), dtype=d.dtype, device=d.device))
    out = torch.zeros(2, len(components), dtype=torch.float64)
    o = 0
    for j, c in enumerate(components):
        out[0, j] = sq[:, o:o + c].sum().cpu()
        out[1, j] = free[:, o:o + c].sum().cpu()
        o += c
    return out


class RMSETracker:
    """RMSE per field per step, streamed to ``out_csv`` (a temporary file renamed by :meth:`close`).

    ``RMSETracker({"co2": 1, "u": 3}, "out/rmse.csv")``; ``update(step, time, pred, ref, mask=None)`` with
    {name: (N,) | (N, C)}; ``summary(steps=(1, 10, 50))`` -> {field: {"1": .., "10": .., "50": .., "all": ..}}
    ("all" = mean RMSE over every step > 0; steps not recorded are left out).
    """

    def __init__(self, fields: dict, out_csv=None):
        self.fields = {str(k): int(v) for k, v in fields.items()}
        self.rows: list[tuple[int, float, dict]] = []
        self.out_csv = Path(out_csv) if out_csv is not None else None
        self._stack = contextlib.ExitStack()
        self._file = None
        if self.out_csv is not None:
            tmp = self._stack.enter_context(atomic_path(self.out_csv))
            self._file = self._stack.enter_context(open(tmp, "w", newline=""))
            self._csv = csv.writer(self._file)
            self._csv.writerow(["step", "time", *self.fields])

    def update(self, step: int, time: float, pred: dict, ref: dict, mask=None) -> dict:
        """Record the RMSE of every tracked field at ``step``; returns {field: rmse}."""
        missing = [f for f in self.fields if f not in pred or f not in ref]
        if missing:
            raise MeshgnnError(f"RMSETracker.update: fields {missing} missing from pred/ref")
        sums, counts = squared_error_sums({f: pred[f] for f in self.fields}, ref, mask, self.fields)
        return self.update_sums(step, time, sums, counts)

    def update_sums(self, step: int, time: float, sums: dict, counts: dict) -> dict:
        """Record from global squared-error sums and counts (see :func:`squared_error_sums`)."""
        rmse = {f: math.sqrt(sums[f] / counts[f]) if counts[f] else float("nan") for f in self.fields}
        self.rows.append((int(step), float(time), rmse))
        if self._file is not None:
            self._csv.writerow([int(step), repr(float(time)), *(repr(rmse[f]) for f in self.fields)])
            self._file.flush()
        return rmse

    def close(self):
        """Finish the CSV (rename into place). Safe to call twice."""
        self._stack.close()
        self._file = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self._stack.__exit__(exc_type, exc, tb)
            self._file = None
        return False

    def series(self, field: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, rmse) of one field."""
        return (np.array([r[0] for r in self.rows], dtype=np.int64),
                np.array([r[2][field] for r in self.rows], dtype=np.float64))

    def summary(self, steps=SUMMARY_STEPS, print_table: bool = False, file=None) -> dict:
        """{field: {"<k>": rmse at step k (recorded steps only), "all": mean over steps > 0}}; optionally print."""
        return summarise(self.rows, list(self.fields), steps, print_table, file)


def summarise(rows, fields, steps=SUMMARY_STEPS, print_table=False, file=None) -> dict:
    by_step = {r[0]: r[2] for r in rows}
    out = {}
    for f in fields:
        d = {str(k): by_step[k][f] for k in steps if k in by_step}
        vals = [r[2][f] for r in rows if r[0] > 0]
        d["all"] = float(np.mean(vals)) if vals else float("nan")
        out[f] = d
    if print_table:
        print(format_summary(out, steps), file=file or sys.stdout)
    return out


def format_summary(summary: dict, steps=SUMMARY_STEPS) -> str:
    """A plain-text table: one row per field, columns 'step k' and 'all'."""
    cols = [str(k) for k in steps] + ["all"]
    head = ["field"] + [f"step {c}" if c != "all" else "all steps" for c in cols]
    lines = [head] + [[f] + [f"{d[c]:.4g}" if c in d else "-" for c in cols] for f, d in summary.items()]
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    fmt = lambda r: "  ".join(s.rjust(w) if i else s.ljust(w) for i, (s, w) in enumerate(zip(r, widths)))  # noqa
    return "\n".join(["RMSE per field", fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in lines[1:]])


def read_rmse_csv(path) -> tuple[list[str], np.ndarray, dict]:
    """(fields, steps (T,), {field: rmse (T,)}) from a tracker CSV."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise InputError(path, None, f"cannot read ({e.strerror})") from None
    if not rows or rows[0][:2] != ["step", "time"]:
        raise InputError(path, "header", "expected 'step,time,<field>...'")
    fields = rows[0][2:]
    data = np.array([[float(x) for x in r] for r in rows[1:] if r], dtype=np.float64).reshape(-1, len(rows[0]))
    return fields, data[:, 0].astype(np.int64), {f: data[:, 2 + i] for i, f in enumerate(fields)}


def plot_rmse(csv_path, png_path, baseline_csv=None, size=(1200, 450), dpi=100, units: dict | None = None,
              title: str | None = None) -> Path:
    """Log-y RMSE vs step, one panel per field; the baseline (e.g. persistence) dashed. PNG of ``size`` pixels."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fields, steps, rmse = read_rmse_csv(csv_path)
    base = read_rmse_csv(baseline_csv) if baseline_csv is not None else None
    units = units or {}
    fig, axes = plt.subplots(1, max(1, len(fields)), figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi,
                             squeeze=False)
    for ax, f in zip(axes[0], fields):
        ok = rmse[f] > 0
        ax.semilogy(steps[ok], rmse[f][ok], "-", color="C0", label="model")
        if base is not None and f in base[2]:
            bok = base[2][f] > 0
            ax.semilogy(base[1][bok], base[2][f][bok], "--", color="C1", label="persistence")
        ax.set_xlabel("step")
        ax.set_ylabel(f"RMSE [{units[f]}]" if units.get(f) else "RMSE")
        ax.set_title(f)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png_path = Path(png_path)
    with atomic_path(png_path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return png_path
