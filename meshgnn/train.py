"""Training: whole graph or patches, one process or ``mpirun -n R`` ranks, all the same optimisation.

One optimizer step takes one (trajectory, time) sample — the same on every rank, drawn from (seed, step) — and
runs forward/backward over this rank's patches with gradients accumulated. Each patch's loss sums over its
*core*, non-prescribed nodes and is divided by the *global* count of such nodes, so the sum of patch gradients is
the whole-graph gradient (DESIGN §2). Then one all-reduce of one gradient bucket, one optimizer step.
"""
from __future__ import annotations

import csv
import math
import os
import resource
import signal
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .distributed import Dist, choose_device
from .domain import LocalDomain, PatchData
from .errors import MeshgnnError
from .config import TrainConfig
from .simulator import FieldLayout, Simulator, training_noise


# ------------------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Holds the simulator, optimizer, this rank's patches; :meth:`step` is one optimizer step."""

    def __init__(self, cfg: TrainConfig, comm=None, dataset=None):
        from .io.dataset import Dataset

        self.cfg = cfg
        self.comm = comm or Dist()
        self.ds = dataset or Dataset(cfg.dataset)
        self.dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        self.device = choose_device(cfg.device, self.comm.local_rank)
        torch.manual_seed(cfg.seed)
        self.layout = FieldLayout.from_dataset(self.ds)
        self.sim = Simulator(self.layout, latent=cfg.latent, layers=cfg.layers, hidden_layers=cfg.hidden_layers,
                             integrator=cfg.integrator, checkpoint_layers=cfg.checkpoint_layers,
                             checkpoint_stages=cfg.checkpoint_stages,
                             freeze_after=cfg.freeze_normalizers_after).to(self.device, self.dtype)
        for nz in self.sim.normalizers():   # statistics stay float64
            nz.to(torch.float64)
        if cfg.compile:
            self.sim.compile_model()
        self._split_trajectories()
        self.halo_exchange = None
        self._build_patches()
        self.optimizer = torch.optim.Adam(self.sim.model.parameters(), lr=cfg.lr)
        decay = (cfg.lr_final / cfg.lr) if cfg.lr > 0 else 1.0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: decay ** (min(s, cfg.steps) / max(cfg.steps, 1)))
        self.step_index = 0
        self.noise_std = self._noise_std()
        self.deadline = time.perf_counter() + 60 * cfg.max_minutes if cfg.max_minutes > 0 else None

    # ---------------------------------------------------------------------------------------------------- set-up
    def _split_trajectories(self):
        trajs = list(self.ds.trajectories)
        val = list(self.cfg.val_trajectories)
        unknown = [t for t in val if t not in trajs]
        if unknown:
            raise MeshgnnError(f"{self.cfg.dataset}: --val-trajectories: unknown trajectory {unknown[0]!r} "
                               f"(have {', '.join(trajs)})")
        if not val and len(trajs) > 1:
            val = [trajs[-1]]
        self.val_trajectories = val
        self.train_trajectories = [t for t in trajs if t not in val] or trajs
        for t in self.train_trajectories:
            if self.ds.num_steps(t) < 2:
                raise MeshgnnError(f"{self.cfg.dataset}: /trajectories/{t}: needs at least 2 time steps to train")

    def _build_patches(self):
        """This rank's :class:`LocalDomain`; its patches, parts and per-layer exchange under the trainer's names."""
        cfg = self.cfg
        if cfg.halo_mode == "per-layer" and cfg.sample_parts and cfg.parts:
            raise MeshgnnError("--sample-parts works with --halo-mode lhop only (per-layer mode runs every "
                               "part in lock step)")
        self.domain = d = LocalDomain(self.ds, cfg.parts, self.comm, cfg.halo_mode, self.sim.receptive_hops,
                                      self.device, self.dtype, cfg.max_cache_mb * 2**20,
                                      allow_inexact=cfg.allow_inexact)
        self.num_parts, self.parts_of_rank, self.patch_parts = d.num_parts, d.parts_of_rank, d.patch_parts
        self.patches, self.store, self.sf = d.patches, d.store, d.sf
        self.halo_exchange = d.layer_exchange      # per-layer: in place, differentiable (no copy per layer)

    def _noise_std(self) -> torch.Tensor:
        """Noise std per state component: the user's values (relative) times the field's data std at step 0."""
        rel = list(self.cfg.noise_std)
        C = self.layout.state_size
        if len(rel) == 1:
            rel = rel * C
        if len(rel) != C:
            raise MeshgnnError(f"--noise-std: expected 1 or {C} values (state components), got {len(rel)}")
        if not any(rel):
            return torch.zeros(C, dtype=torch.float64)
        # A field-scale reference from the first training trajectory, owned nodes only, summed over ranks.
        traj = self.train_trajectories[0]
        T = self.ds.num_steps(traj)
        stats = torch.zeros(1 + 2 * C, dtype=torch.float64)
        for p in self.patches:
            for t in sorted({0, T // 2, T - 1}):
                y = p.frame(traj, t)[p.core_mask()].double().cpu()
                stats += torch.cat([y.new_tensor([y.shape[0]]), y.sum(0), (y * y).sum(0)])
        self.comm.allreduce_(stats)
        n = stats[0]
        var = (stats[1 + C:] / n - (stats[1:1 + C] / n) ** 2).clamp(min=0)
        return torch.tensor(rel, dtype=torch.float64) * var.sqrt()

    # ---------------------------------------------------------------------------------------------------- a step
    def sample(self, step: int) -> tuple[str, int, list[int]]:
        """(trajectory, time index, active parts) for ``step``: a pure function of (seed, step)."""
        rng = np.random.default_rng([self.cfg.seed, step, 0x5EED])
        traj = self.train_trajectories[int(rng.integers(len(self.train_trajectories)))]
        t = int(rng.integers(self.ds.num_steps(traj) - 1))
        if self.cfg.sample_parts and self.cfg.sample_parts < self.num_parts:
            active = sorted(rng.choice(self.num_parts, self.cfg.sample_parts, replace=False).tolist())
        else:
            active = list(range(self.num_parts))
        return traj, t, active

    def _prepare(self, patch: PatchData, traj: str, t: int, step: int):
        y0, y1, static = patch.frames(traj, t)
        tens = patch.tensors
        fixed = self.sim.fixed_mask(tens.node_type)
        eps = training_noise(self.cfg.seed, step, tens.global_ids, self.noise_std, fixed, self.dtype)
        y0n = y0 + eps
        target = (y1 - y0) - self.cfg.noise_gamma * eps      # the change the step must produce from y0n
        core = tens.core_mask()
        loss_rows = core & ~fixed
        return dict(y0n=y0n, y1=y1, static=static, fixed=fixed, target=target, core=core, loss_rows=loss_rows)

    def _accumulate_normalizers(self, work) -> None:
        if all(nz.frozen for nz in self.sim.normalizers()):
            return
        parts = [torch.zeros(1 + 2 * nz.size, dtype=torch.float64) for nz in self.sim.normalizers()]
        for patch, w in work:
            tens = patch.tensors
            core = w["core"]
            parts[0] += self.sim.node_normalizer.stats(torch.cat([w["y0n"], w["static"]], 1)[core]).cpu()
            parts[1] += self.sim.edge_normalizer.stats(tens.edge_features[core[tens.graph.receivers]]).cpu()
            parts[2] += self.sim.target_normalizer.stats(w["target"][w["loss_rows"]]).cpu()
        flat = torch.cat(parts)
        self.comm.allreduce_(flat)
        offset = 0
        for nz, p in zip(self.sim.normalizers(), parts):
            nz.accumulate_stats(flat[offset:offset + p.numel()])
            offset += p.numel()

    def patch_loss(self, patch: PatchData, w: dict, n_loss: float) -> torch.Tensor:
        """This patch's share of the global loss: Σ over its core non-prescribed nodes / global count."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            pred = self.sim.step(w["y0n"], w["static"], patch.tensors, y_next_fixed=w["y1"],
                                 halo_exchange=self.halo_exchange, fixed=w["fixed"])
        std = self.sim.target_normalizer.std().to(self.device, self.dtype)
        err = ((pred.to(self.dtype) - w["y0n"]) - w["target"]) / std
        return (err[w["loss_rows"]] ** 2).sum() / (n_loss * self.layout.state_size)

    def compute_gradients(self, step: int) -> float:
        """Zero grads, accumulate this rank's patch gradients (no all-reduce). Returns this rank's loss share."""
        traj, t, active = self.sample(step)
        work = [(p, self._prepare(p, traj, t, step)) for p, pids in zip(self.patches, self.patch_parts)
                if set(pids) & set(active)]
        self._accumulate_normalizers(work)
        n = torch.tensor([float(sum(int(w["loss_rows"].sum()) for _, w in work))], dtype=torch.float64)
        self.comm.allreduce_(n)
        n_loss = max(float(n[0]), 1.0)
        self.optimizer.zero_grad(set_to_none=False)
        total = 0.0
        for patch, w in work:
            loss = self.patch_loss(patch, w, n_loss)
            loss.backward()
            total += float(loss.detach())
        self._last_sample = (traj, t, len(work), n_loss)
        return total

    def step(self) -> dict:
        """One optimizer step. Returns a log record."""
        t0 = time.perf_counter()
        step = self.step_index
        local = self.compute_gradients(step)
        params = [p for p in self.sim.model.parameters()]
        self.comm.allreduce_grads(params)
        over_time = self.deadline is not None and time.perf_counter() > self.deadline
        over_time |= bool(self.cfg.stop_at) and step + 1 >= self.cfg.stop_at
        stop = 1.0 if (_STOP_REQUESTED or over_time) else 0.0
        bad_local = 0.0 if all(torch.isfinite(p.grad).all() for p in params if p.grad is not None) else 1.0
        summary = torch.tensor([local, stop, bad_local], dtype=torch.float64)
        self.comm.allreduce_(summary)
        loss = float(summary[0])
        if not math.isfinite(loss) or summary[2] > 0:
            raise NonFiniteError(self._diagnose(step, loss))
        self.optimizer.step()
        self.scheduler.step()
        self.step_index += 1
        dt = time.perf_counter() - t0
        owned = self._last_sample[3]
        return dict(step=step, loss=loss, lr=self.optimizer.param_groups[0]["lr"], seconds=dt,
                    nodes_per_s=owned / dt, peak_rss_mb=peak_rss_mb(), stop=bool(summary[1] > 0),
                    peak_gpu_mb=peak_gpu_mib(self.device),
                    trajectory=self._last_sample[0], time_index=self._last_sample[1])

    def _diagnose(self, step, loss) -> str:
        traj, t, _, _ = self._last_sample
        bad = [n for n, p in self.sim.model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        msg = [f"non-finite loss/gradients at step {step} (trajectory {traj}, time index {t}, loss {loss})"]
        lay = self.layout
        for patch in self.patches:
            y0, y1, static = patch.frames(traj, t)
            bad_nodes = {**nonfinite_nodes(torch.cat([y0, y1], 1), lay.state_fields * 2, lay.state_components * 2),
                         **nonfinite_nodes(static, lay.static_fields, lay.static_components)}
            for name, nbad in bad_nodes.items():
                msg.append(f"part {patch.part_id}: field {name}: {nbad} non-finite node values in the data")
        if bad:
            msg.append(f"parameters with non-finite gradients: {', '.join(bad[:3])}{'...' if len(bad) > 3 else ''}")
        return "; ".join(msg) + "; the last good checkpoint is kept"

    # ------------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return dict(step=self.step_index, simulator=self.sim.state_dict(), optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict(), config=asdict(self.cfg), sim_config=self.sim.config(),
                    rng=dict(torch=torch.get_rng_state(), numpy=np.random.get_state()))

    def load_state_dict(self, state: dict) -> None:
        self.sim.load_state_dict(state["simulator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step_index = int(state["step"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])


class NonFiniteError(MeshgnnError):
    pass


_STOP_REQUESTED = False


def _request_stop(signum, frame):  # noqa: ARG001
    global _STOP_REQUESTED
    _STOP_REQUESTED = True


def nonfinite_nodes(values: torch.Tensor, names: list[str], comps: list[int]) -> dict[str, int]:
    """``{field: number of nodes (rows) with a NaN/Inf in its columns}`` for ``values`` (n, sum comps),
    columns laid out field after field; fields without any are left out (a repeated name adds up)."""
    out: dict[str, int] = {}
    o = 0
    for name, c in zip(names, comps):
        n = int((~torch.isfinite(values[:, o:o + c])).any(1).sum())
        if n:
            out[name] = out.get(name, 0) + n
        o += c
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_gpu_mib(device: torch.device) -> float | None:
    """Peak memory allocated by torch on a CUDA ``device`` so far (MiB); None elsewhere."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def dataset_signature(ds) -> dict:
    return dict(num_nodes=int(ds.num_nodes), state_fields=list(ds.state_fields), static_fields=list(ds.static_fields),
                node_type_names=list(ds.node_type_names))


def train(cfg: TrainConfig, comm=None) -> dict:
    """Run training per ``cfg``; returns a summary dict (rank 0's view)."""
    from . import checkpoint as ckpt

    comm = comm or Dist()
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    trainer = Trainer(cfg, comm)
    if cfg.resume:
        if not ckpt_path.exists():
            raise MeshgnnError(f"{ckpt_path}: --resume given but no checkpoint there")
        state = ckpt.load(ckpt_path)
        ckpt.check_compatible(state, trainer, ckpt_path)
        trainer.load_state_dict(state["trainer"])
    if comm.is_root:
        out.mkdir(parents=True, exist_ok=True)
    old = signal.signal(signal.SIGTERM, _request_stop)
    log = TrainLog(out / "train_log.csv", enabled=comm.is_root, append=cfg.resume,
                   start_step=trainer.step_index)
    bar = None
    if comm.is_root and cfg.progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=trainer.step_index, desc="train", unit="step", dynamic_ncols=True)
    t_start = time.perf_counter()
    rec = None
    stopped = False
    try:
        while trainer.step_index < cfg.steps:
            rec = trainer.step()
            log.write(rec)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.3e}", lr=f"{rec['lr']:.1e}",
                                nodes_s=f"{rec['nodes_per_s']:.0f}")
            done = trainer.step_index >= cfg.steps
            if rec["stop"] or done or trainer.step_index % cfg.checkpoint_every == 0:
                if comm.is_root:
                    ckpt.save(ckpt_path, trainer, comm)
                comm.barrier()
            if rec["stop"]:
                stopped = True
                break
    finally:
        signal.signal(signal.SIGTERM, old)
        if bar is not None:
            bar.close()
        log.close()
    peaks = comm.gather_object(peak_rss_mb())
    extra = {}
    if trainer.device.type == "cuda":
        extra["peak_cuda_mib"] = comm.gather_object(peak_gpu_mib(trainer.device))
    return dict(**extra, steps=trainer.step_index, loss=rec["loss"] if rec else float("nan"), checkpoint=str(ckpt_path),
                seconds=time.perf_counter() - t_start, stopped=stopped, peak_rss_mb=peaks,
                bytes_allreduced=getattr(comm, "bytes_allreduced", 0))


class TrainLog:
    """Per-step CSV log (rank 0), plus TensorBoard when installed."""

    FIELDS = ["step", "loss", "lr", "seconds", "nodes_per_s", "peak_rss_mb", "trajectory", "time_index",
              "peak_gpu_mb"]

    def __init__(self, path: Path, enabled: bool, append: bool = False, start_step: int | None = None):
        self.enabled = enabled
        self._f = None
        self._tb = None
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not (append and path.exists())
        if not new and start_step is not None:
            self._drop_rows_from(path, start_step)
        self._f = open(path, "w" if new else "a", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=self.FIELDS, extrasaction="ignore")
        if new:
            self._w.writeheader()
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
            self._tb = SummaryWriter(str(path.parent / "tensorboard"))
        except Exception:  # noqa: BLE001 - tensorboard is optional
            self._tb = None

    @staticmethod
    def _drop_rows_from(path: Path, step: int) -> None:
        """Forget rows of steps >= ``step`` (logged after the checkpoint a crashed run resumes from)."""
        from .io.atomic import atomic_path

        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        keep = [r for r in rows if r.get("step", "").isdigit() and int(r["step"]) < step]
        if len(keep) == len(rows):
            return
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=TrainLog.FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(keep)

    def write(self, rec: dict) -> None:
        if not self.enabled:
            return
        self._w.writerow(rec)
        self._f.flush()
        if self._tb is not None:
            self._tb.add_scalar("loss", rec["loss"], rec["step"])
            self._tb.add_scalar("lr", rec["lr"], rec["step"])
            self._tb.add_scalar("nodes_per_s", rec["nodes_per_s"], rec["step"])

    def close(self) -> None:
        if self._f:
            self._f.close()
        if self._tb is not None:
            self._tb.close()
