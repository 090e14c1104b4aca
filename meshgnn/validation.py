"""Validation while training: the one-step loss and a K-step rollout on the held-out trajectories.

Both run over the trainer's own local domain, so they are exact under patches and ranks like training itself
(docs/design.md, "Validation"): the one-step loss is a sum over core, non-prescribed entries divided by the global
entry count; the rollout RMSE comes from per-rank partial sums (:func:`meshgnn.rollout.rollout_metrics`).

The score that picks ``best.pt`` is the validation rollout's RMSE per field over all K steps divided by the
field's standard deviation in the training data (the node normalizer's), averaged over fields: unit-free, and
comparable across fields with different units. Persistence (predict no change) is reported beside it.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch

from .errors import MeshgnnError
from .recipe import Sample, unrolled_errors


class Validation:
    """Validation of a :class:`meshgnn.train.Trainer` on its held-out trajectories (every rank calls
    :meth:`run`; collective)."""

    def __init__(self, trainer):
        self.tr = trainer
        cfg = trainer.cfg
        self.trajectories = list(trainer.val_trajectories)
        if cfg.history and 0 <= cfg.val_start < cfg.history:
            raise MeshgnnError(f"--val-start {cfg.val_start}: with --history {cfg.history} the validation rollout "
                               f"needs {cfg.history} earlier frame(s); start at frame {cfg.history} or later")
        self.samples = self._samples(cfg.val_samples)

    @property
    def enabled(self) -> bool:
        return bool(self.trajectories)

    def _samples(self, count: int) -> list[Sample]:
        """``count`` input frames spread evenly over the held-out trajectories (past their first frame)."""
        out = []
        per = max(1, math.ceil(count / max(len(self.trajectories), 1)))
        for traj in self.trajectories:
            lo, hi = self.start_frame(traj), self.tr.ds.num_steps(traj) - 1
            if hi <= lo:
                continue
            for t in np.unique(np.linspace(lo, hi - 1, per).round().astype(int)):
                out.append(Sample(traj, int(t), len(out)))
        return out[:max(count, len(self.trajectories))]

    def start_frame(self, traj: str) -> int:
        """``--val-start``, else past an impulsive start (and, with ``--history H``, H frames later)."""
        cfg = self.tr.cfg
        return cfg.val_start if cfg.val_start >= 0 else self.tr.first_frame.get(traj, 0) + cfg.history

    def rollout_steps(self, traj: str) -> int:
        left = self.tr.ds.num_steps(traj) - 1 - self.start_frame(traj)
        k = self.tr.cfg.val_rollout
        return max(0, min(k, left) if k > 0 else left)

    # ------------------------------------------------------------------------------------------------ metrics
    @torch.no_grad()
    def one_step_loss(self) -> float:
        """Mean squared normalised one-step error on the validation frames (clean inputs); collective."""
        tr = self.tr
        std = tr.sim.target_normalizer.std().to(tr.device, tr.dtype)
        total = torch.zeros(2, dtype=torch.float64)
        for smp in self.samples:
            for patch in tr.patches:
                w = tr.prepare_sample(patch, smp, 0, noise=False, unroll=1)
                (err,) = unrolled_errors(tr.sim, patch.tensors, w["y0"], w["refs"], w["static"], w["fixed"],
                                         w["eps"], tr.cfg.noise_gamma, std, halo_exchange=tr.halo_exchange,
                                         history=w["history"])
                m = w["loss_mask"]
                total += torch.tensor([float((err[m].double() ** 2).sum()), float(m.sum())], dtype=torch.float64)
        tr.comm.allreduce_(total)
        return float(total[0] / total[1].clamp(min=1.0))

    def field_std(self) -> dict[str, float]:
        """Per state field: the training data's standard deviation (node normalizer, RMS over components)."""
        lay = self.tr.layout
        std = self.tr.sim.node_normalizer.std()[:lay.state_size].double()
        out, o = {}, 0
        for name, c in zip(lay.state_fields, lay.state_components):
            out[name] = float(torch.sqrt((std[o:o + c] ** 2).mean()))
            o += c
        return out

    def run(self, step: int) -> dict:
        """One validation: ``{"step", "val_loss", "val_score", "val_start", "val_steps", "rmse": {field: x},
        "persistence": {field: x}}`` (RMSE over all rollout steps, first held-out trajectory); collective."""
        from .rollout import rollout_metrics

        tr = self.tr
        was_training = tr.sim.training
        tr.sim.eval()
        try:
            rec = dict(step=step, val_loss=self.one_step_loss())
            traj = self.trajectories[0]
            start, k = self.start_frame(traj), self.rollout_steps(traj)
            rec.update(val_trajectory=traj, val_start=start, val_steps=k)
            if k > 0:
                m = rollout_metrics(tr.sim, tr.domain, traj, start=start, steps=k)
                rec["rmse"] = {f: float(v["all"]) for f, v in m["rmse"].items()}
                rec["persistence"] = {f: float(v["all"]) for f, v in m["persistence"].items()}
                std = self.field_std()
                rec["val_score"] = float(np.mean([rec["rmse"][f] / max(std[f], 1e-30) for f in rec["rmse"]]))
            else:
                rec["val_score"] = rec["val_loss"]
        finally:
            tr.sim.train(was_training)
        return rec


class ValidationLog:
    """``val_log.csv`` (rank 0): one row per validation, with per-field RMSE, persistence and their ratio."""

    def __init__(self, path: Path, fields: list[str], enabled: bool, append: bool, start_step: int):
        self.enabled, self.path = enabled, Path(path)
        self.fields = ["step", "val_loss", "val_score", "val_trajectory", "val_start", "val_steps", "best"]
        for f in fields:
            self.fields += [f"rmse_{f}", f"persistence_{f}", f"ratio_{f}"]
        self._f = None
        if not enabled:
            return
        keep = []
        if append and self.path.exists():
            with open(self.path, newline="") as fh:
                keep = [r for r in csv.DictReader(fh) if r.get("step", "").isdigit() and int(r["step"]) <= start_step]
        self._f = open(self.path, "w", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=self.fields, extrasaction="ignore")
        self._w.writeheader()
        self._w.writerows(keep)
        self._f.flush()

    def write(self, rec: dict, best: bool) -> None:
        if not self.enabled:
            return
        row = {k: rec.get(k) for k in ("step", "val_loss", "val_score", "val_trajectory", "val_start", "val_steps")}
        row["best"] = int(best)
        for f, v in rec.get("rmse", {}).items():
            p = rec["persistence"][f]
            row.update({f"rmse_{f}": v, f"persistence_{f}": p, f"ratio_{f}": p / v if v > 0 else float("inf")})
        self._w.writerow(row)
        self._f.flush()

    def close(self) -> None:
        if self._f:
            self._f.close()
            self._f = None


def plot_curves(train_csv: Path, val_csv: Path, png: Path) -> Path | None:
    """Training loss (raw and smoothed), validation loss and validation score against the step, to ``png``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def read(path):
        if not Path(path).exists():
            return []
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))

    train, val = read(train_csv), read(val_csv)
    if not train:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    s = np.array([float(r["step"]) for r in train])
    loss = np.array([float(r["loss"]) for r in train])
    ax1.semilogy(s, loss, color="0.75", lw=0.8, label="training loss (per step)")
    w = max(1, len(loss) // 50)
    if w > 1:
        ax1.semilogy(s[w - 1:], np.convolve(loss, np.ones(w) / w, mode="valid"), color="C0", label=f"mean of {w}")
    if val:
        vs = np.array([float(r["step"]) for r in val])
        ax1.semilogy(vs, [float(r["val_loss"]) for r in val], "o-", color="C3", label="validation loss (1 step)")
        ax2.semilogy(vs, [float(r["val_score"]) for r in val], "o-", color="C3", label="model")
        for r in val:
            if r.get("best") == "1":
                ax2.axvline(float(r["step"]), color="0.8", lw=0.6)
        ratios = [k for k in val[0] if k.startswith("ratio_")]
        for k in ratios:
            vals = [float(r[k]) for r in val if r.get(k) not in (None, "")]
            if vals:
                ax2.semilogy(vs[:len(vals)], vals, "--", label=f"persistence / model, {k[6:]}")
        ax2.set_title(f"validation rollout ({val[-1].get('val_steps')} steps from frame {val[-1].get('val_start')})")
        ax2.set_xlabel("step")
        ax2.set_ylabel("RMSE / field std (model);  RMSE ratio (dashed)")
        ax2.legend(fontsize=8)
    ax1.set_xlabel("step")
    ax1.set_ylabel("normalised MSE")
    ax1.set_title("training and validation loss")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return Path(png)
