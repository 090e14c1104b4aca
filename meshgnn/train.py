"""Training: whole graph or patches, one process or ``mpirun -n R`` ranks, all the same optimisation.

One optimizer step takes one (trajectory, time) sample — the same on every rank, drawn from (seed, step) — and
runs forward/backward over this rank's patches with gradients accumulated. Each patch's loss sums over its
*core*, non-prescribed nodes and is divided by the *global* count of such nodes, so the sum of patch gradients is
the whole-graph gradient (docs/design.md, "Exactness"). Then one all-reduce of one gradient bucket, one optimizer step.
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

from .checkpoint import dataset_signature  # noqa: F401 - re-exported (moved to checkpoint.py)
from .distributed import Dist, choose_device
from .domain import LocalDomain, PatchData
from .errors import MeshgnnError
from .config import TrainConfig
from .recipe import Sample, draw_samples, impulsive_frames, lr_lambda, noise_key, per_field_rms, unrolled_errors
from .simulator import FieldLayout, Simulator, history_features, training_noise


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
                             integrator=cfg.integrator, aggregate=cfg.aggregate,
                             checkpoint_layers=cfg.checkpoint_layers,
                             checkpoint_stages=cfg.checkpoint_stages, checkpoint_segments=cfg.checkpoint_segments,
                             checkpoint_storage=cfg.checkpoint_storage,
                             memory_budget=cfg.memory_budget, history=cfg.history,
                             freeze_after=cfg.freeze_normalizers_after).to(self.device, self.dtype)
        for nz in self.sim.normalizers():   # statistics stay float64
            nz.to(torch.float64)
        if cfg.compile:
            self.sim.compile_model()
        self._split_trajectories()
        self.halo_exchange = None
        self.group, self.group_comm = self._data_parallel_group()
        self._build_patches()
        self.owned_total = self._owned_total()
        self.first_frame = self._first_frames()
        self.frame_ranges = self._frame_ranges()
        self.optimizer = torch.optim.Adam(self.sim.model.parameters(), lr=cfg.lr)
        decay = (cfg.lr_final / cfg.lr) if cfg.lr > 0 else 1.0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg.lr_schedule, cfg.steps, min(cfg.warmup_steps, cfg.steps // 2), decay))
        self.step_index = 0
        self.best = dict(score=float("inf"), step=-1)      # best validation score so far and its step
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
        reason = f"{cfg.layers} layers x {self.sim.stages} stages x {cfg.unroll} unrolled step(s)"
        self.domain = d = LocalDomain(self.ds, cfg.parts, self.group_comm, cfg.halo_mode, self.hops_needed,
                                      self.device, self.dtype, cfg.max_cache_mb * 2**20,
                                      allow_inexact=cfg.allow_inexact, hops_reason=reason)
        self.num_parts, self.parts_of_rank, self.patch_parts = d.num_parts, d.parts_of_rank, d.patch_parts
        self.patches, self.store, self.sf = d.patches, d.store, d.sf
        self.halo_exchange = d.layer_exchange      # per-layer: in place, differentiable (no copy per layer)

    def _data_parallel_group(self):
        """(this rank's data-parallel group index, the group's communicator): G contiguous groups of ranks, each
        holding a full copy of the domain; gradients and statistics are still summed over the whole job."""
        G = self.cfg.data_parallel
        if G == 1:
            return 0, self.comm
        if self.comm.size < G:
            raise MeshgnnError(f"--data-parallel {G}: needs at least {G} ranks (this job has {self.comm.size}); "
                               f"on one process use --batch instead")
        return self.comm.rank // (self.comm.size // G), self.comm.split_groups(G)

    @property
    def hops_needed(self) -> int:
        """Halo depth for exact L-hop training: layers x stages per step, times the unrolled steps."""
        return self.sim.receptive_hops * self.cfg.unroll

    def _owned_total(self) -> int:
        n = torch.tensor([float(sum(int(p.tensors.core_mask().sum()) for p in self.patches))], dtype=torch.float64)
        self.comm.allreduce_(n)
        return int(n[0]) // max(self.cfg.data_parallel, 1)

    def _change_rms(self, traj: str, probe: int = 10) -> np.ndarray:
        """``(K, F)`` RMS change of the first ``probe`` transitions k -> k+1 of ``traj`` per state field (owned
        nodes, all ranks)."""
        K = min(probe, self.ds.num_steps(traj) - 1)
        C = self.layout.state_size
        sums = torch.zeros(K * C + 1, dtype=torch.float64)     # per-component sums of squares, then the count
        for p in self.patches:
            core = p.tensors.core_mask()
            prev = p.frame(traj, 0)[core].double()
            for k in range(K):
                nxt = p.frame(traj, k + 1)[core].double()
                sums[k * C:(k + 1) * C] += ((nxt - prev) ** 2).sum(0).cpu()
                prev = nxt
            sums[-1] += float(core.sum())
        self.comm.allreduce_(sums)
        return per_field_rms(sums[:-1].reshape(K, C).numpy(), float(sums[-1]), self.layout.state_components)

    def _first_frames(self) -> dict[str, int]:
        """First input frame per trajectory. Training: ``--train-start`` (-1: past an impulsive start).
        Held-out trajectories: past an impulsive start (where validation rollouts begin unless --val-start)."""
        cfg = self.cfg
        detect = [t for t in self.val_trajectories if t not in self.train_trajectories]
        if cfg.train_start < 0:
            detect = self.train_trajectories + detect
        found = {t: impulsive_frames(self._change_rms(t)) for t in detect}
        out = {t: (cfg.train_start if cfg.train_start >= 0 else found[t]) for t in self.train_trajectories}
        out.update({t: found[t] for t in self.val_trajectories if t in found})
        skipped = {t: k for t, k in found.items() if k}
        if skipped and self.comm.is_root:
            what = "training and validation start" if cfg.train_start < 0 else "validation rollouts start"
            print(f"train: impulsive start (first transitions >10x the later ones) in {len(skipped)} of "
                  f"{len(found)} trajectories checked; {what} at frame {max(skipped.values())} there", flush=True)
        return out

    def _frame_ranges(self) -> dict[str, tuple[int, int]]:
        out = {}
        for t in self.train_trajectories:
            # with --history H the first input frame is H past the start, so the history holds no earlier frame
            lo, hi = self.first_frame[t] + self.cfg.history, self.ds.num_steps(t) - self.cfg.unroll
            if hi <= lo:
                raise MeshgnnError(f"{self.cfg.dataset}: /trajectories/{t}: {self.ds.num_steps(t)} frames leave no "
                                   f"sample for --unroll {self.cfg.unroll} from frame {lo}"
                                   f"{f' (--history {self.cfg.history})' if self.cfg.history else ''}")
            out[t] = (lo, hi)
        return out

    def _noise_std(self) -> torch.Tensor:
        """Noise std per state component: the user's values (relative) times a data scale per component,
        ``--noise-scale field`` (the field's std) or ``step`` (the std of its one-step change)."""
        rel = list(self.cfg.noise_std)
        C = self.layout.state_size
        if len(rel) == 1:
            rel = rel * C
        if len(rel) != C:
            raise MeshgnnError(f"--noise-std: expected 1 or {C} values (state components), got {len(rel)}")
        if not any(rel):
            return torch.zeros(C, dtype=torch.float64)
        scale = self._step_std() if self.cfg.noise_scale == "step" else self._field_std()
        return torch.tensor(rel, dtype=torch.float64) * scale

    def _component_std(self, values) -> torch.Tensor:
        """``(C,)`` std per component of the ``(n, C)`` tensors ``values`` yields, owned nodes, summed over ranks."""
        C = self.layout.state_size
        stats = torch.zeros(1 + 2 * C, dtype=torch.float64)
        for y in values:
            stats += torch.cat([y.new_tensor([y.shape[0]]), y.sum(0), (y * y).sum(0)])
        self.comm.allreduce_(stats)
        n = stats[0].clamp(min=1)
        return (stats[1 + C:] / n - (stats[1:1 + C] / n) ** 2).clamp(min=0).sqrt()

    def _field_std(self) -> torch.Tensor:
        """The field scale: frames 0, T/2 and T-1 of the first training trajectory."""
        traj = self.train_trajectories[0]
        T = self.ds.num_steps(traj)
        return self._component_std(p.frame(traj, t)[p.core_mask()].double().cpu()
                                   for p in self.patches for t in sorted({0, T // 2, T - 1}))

    def _step_std(self) -> torch.Tensor:
        """The one-step change scale: transitions at the start, middle and end of the trained frames of (up to)
        four training trajectories."""
        def changes():
            for traj in self.train_trajectories[:4]:
                lo, hi = self.frame_ranges[traj]
                for k in sorted({lo, (lo + hi) // 2, hi - 1}):
                    for p in self.patches:
                        y, y_next = p.frames(traj, k)[:2]
                        core = p.core_mask()
                        yield (y_next[core] - y[core]).double().cpu()
        return self._component_std(changes())

    # ---------------------------------------------------------------------------------------------------- a step
    def sample(self, step: int) -> tuple[list[Sample], list[int]]:
        """(this step's batch of samples, active parts): a pure function of (seed, step), the same on every rank."""
        samples = draw_samples(self.cfg.seed, step, self.train_trajectories, self.frame_ranges, self.cfg.batch)
        rng = np.random.default_rng([self.cfg.seed, step, 0x9A27])
        if self.cfg.sample_parts and self.cfg.sample_parts < self.num_parts:
            active = sorted(rng.choice(self.num_parts, self.cfg.sample_parts, replace=False).tolist())
        else:
            active = list(range(self.num_parts))
        return samples, active

    def my_samples(self, samples: list[Sample]) -> list[Sample]:
        """The batch slots this rank's data-parallel group trains (slot b goes to group b mod G)."""
        return [s for s in samples if s.index % self.cfg.data_parallel == self.group]

    def prepare_sample(self, patch: PatchData, sample: Sample, step: int, noise: bool = True,
                       unroll: Optional[int] = None) -> dict:
        """The tensors one sample's loss on ``patch`` needs (frames, noise, masks); ``noise=False``: clean input;
        ``unroll``: reference frames to read (default ``--unroll``). With ``--history H``, ``history`` (n, H·C) is
        the last H changes into the noisy input (:func:`meshgnn.simulator.history_features`)."""
        y0, y1, static = patch.frames(sample.trajectory, sample.time)
        refs = [y1] + [patch.frames(sample.trajectory, sample.time + k)[1]
                       for k in range(1, self.cfg.unroll if unroll is None else unroll)]
        tens = patch.tensors
        fixed = self.sim.fixed_mask(tens.node_type)                       # (n, C)
        eps = training_noise(self.cfg.seed, noise_key(step, sample.index, self.cfg.batch), tens.global_ids,
                             self.noise_std if noise else torch.zeros_like(self.noise_std), fixed, self.dtype)
        core = tens.core_mask()
        loss_mask = core[:, None] & ~fixed                               # (n, C) entries the loss counts
        history = None
        if self.cfg.history:
            past = [patch.frame(sample.trajectory, sample.time - k) for k in range(1, self.cfg.history + 1)]
            history = history_features([y0 + eps, *past])
        return dict(y0=y0, y0n=y0 + eps, eps=eps, refs=refs, static=static, fixed=fixed, history=history,
                    target=(y1 - y0) - self.cfg.noise_gamma * eps, core=core, loss_mask=loss_mask,
                    free_rows=core & ~fixed.all(1))

    def _accumulate_normalizers(self, work) -> None:
        if all(nz.frozen for nz in self.sim.normalizers()):
            return
        parts = [torch.zeros(1 + 2 * nz.size, dtype=torch.float64) for nz in self.sim.normalizers()]
        for patch, w in work:
            tens = patch.tensors
            core = w["core"]
            parts[0] += self.sim.node_normalizer.stats(torch.cat([w["y0n"], w["static"]], 1)[core]).cpu()
            parts[1] += self.sim.edge_normalizer.stats(tens.edge_features[core[tens.graph.receivers]]).cpu()
            parts[2] += self.sim.target_normalizer.stats(w["target"][w["free_rows"]]).cpu()
            if self.cfg.history:
                parts[3] += self.sim.history_normalizer.stats(w["history"][core]).cpu()
        flat = torch.cat(parts)
        self.comm.allreduce_(flat)
        offset = 0
        for nz, p in zip(self.sim.normalizers(), parts):
            nz.accumulate_stats(flat[offset:offset + p.numel()])
            offset += p.numel()
        self._widen_range(work)

    def _widen_range(self, work) -> None:
        """Record the clean state's range over the frames trained on (owned rows; max-reduced over ranks)."""
        C = self.layout.state_size
        ext = torch.full((2 * C,), -float("inf"), dtype=torch.float64)
        for _, w in work:
            for y in (w["y0"], w["refs"][0]):
                rows = y[w["core"]].double().cpu()
                if rows.numel():
                    ext = torch.maximum(ext, torch.cat([-rows.min(0).values, rows.max(0).values]))
        self.comm.allreduce_max_(ext)
        self.sim.widen_range(-ext[:C], ext[C:])

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16)

    def patch_loss(self, patch: PatchData, w: dict, n_loss: float) -> torch.Tensor:
        """This patch's share of the global loss: Σ over its core, non-prescribed entries of every unrolled
        step's squared normalised error / the global entry count of the step."""
        std = self.sim.target_normalizer.std().to(self.device, self.dtype)
        errs = unrolled_errors(self.sim, patch.tensors, w["y0"], w["refs"], w["static"], w["fixed"], w["eps"],
                               self.cfg.noise_gamma, std, halo_exchange=self.halo_exchange,
                               refresh=self.halo_exchange, pushforward=self.cfg.pushforward,
                               autocast=self._autocast, history=w["history"])
        mask = w["loss_mask"]
        return sum((e[mask] ** 2).sum() for e in errs) / n_loss

    def loss_terms_per_sample(self) -> int:
        return 1 if self.cfg.pushforward else self.cfg.unroll

    def compute_gradients(self, step: int) -> float:
        """Zero grads, accumulate this rank's gradients over its samples and patches (no all-reduce). Returns
        this rank's share of the loss."""
        samples, active = self.sample(step)
        work = [(p, self.prepare_sample(p, smp, step)) for smp in self.my_samples(samples)
                for p, pids in zip(self.patches, self.patch_parts) if set(pids) & set(active)]
        self._accumulate_normalizers(work)
        n = torch.tensor([float(sum(int(w["loss_mask"].sum()) for _, w in work))], dtype=torch.float64)
        self.comm.allreduce_(n)
        n_loss = max(float(n[0]) * self.loss_terms_per_sample(), 1.0)
        self.optimizer.zero_grad(set_to_none=False)
        total = 0.0
        for patch, w in work:
            loss = self.patch_loss(patch, w, n_loss)
            loss.backward()
            total += float(loss.detach())
        self.last_sample = (samples, len(work), n_loss)
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
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip if self.cfg.grad_clip > 0
                                                         else float("inf")))
        self.optimizer.step()
        self.scheduler.step()
        self.step_index += 1
        dt = time.perf_counter() - t0
        samples = self.last_sample[0]
        owned = self.owned_total * len(samples)
        return dict(step=step, loss=loss, lr=self.optimizer.param_groups[0]["lr"], seconds=dt,
                    nodes_per_s=owned / dt, peak_rss_mb=peak_rss_mb(), stop=bool(summary[1] > 0),
                    peak_gpu_mb=peak_gpu_mib(self.device), grad_norm=grad_norm,
                    trajectory=samples[0].trajectory, time_index=samples[0].time)

    def _diagnose(self, step, loss) -> str:
        samples = self.my_samples(self.last_sample[0])
        where = ", ".join(f"trajectory {s.trajectory}, time index {s.time}" for s in samples)
        bad = [n for n, p in self.sim.model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        msg = [f"non-finite loss/gradients at step {step} ({where}; loss {loss})"]
        lay = self.layout
        for smp in samples:
            for patch in self.patches:
                frames = [patch.frames(smp.trajectory, smp.time + k)[1] for k in range(self.cfg.unroll)]
                y = torch.cat([patch.frames(smp.trajectory, smp.time)[0]] + frames, 1)
                bad_nodes = {**nonfinite_nodes(y, lay.state_fields * (1 + self.cfg.unroll),
                                               lay.state_components * (1 + self.cfg.unroll)),
                             **nonfinite_nodes(patch.static(smp.trajectory), lay.static_fields, lay.static_components)}
                for name, nbad in bad_nodes.items():
                    msg.append(f"part {patch.part_id}: field {name}: {nbad} non-finite node values in the data "
                               f"(trajectory {smp.trajectory}, frames {smp.time}..{smp.time + self.cfg.unroll})")
        if bad:
            msg.append(f"parameters with non-finite gradients: {', '.join(bad[:3])}{'...' if len(bad) > 3 else ''}")
        return "; ".join(msg) + "; the last good checkpoint is kept"

    # ------------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return dict(step=self.step_index, simulator=self.sim.state_dict(), optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict(), config=asdict(self.cfg), sim_config=self.sim.config(),
                    rng=dict(torch=torch.get_rng_state(), numpy=np.random.get_state()), best=dict(self.best))

    def load_state_dict(self, state: dict) -> None:
        self.sim.load_state_dict(state["simulator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step_index = int(state["step"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        if "best" in state:
            self.best = dict(score=float(state["best"]["score"]), step=int(state["best"]["step"]))


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


def train(cfg: TrainConfig, comm=None) -> dict:
    """Run training per ``cfg``; returns a summary dict (rank 0's view)."""
    return TrainingRun(cfg, comm or Dist()).run()


class TrainingRun:
    """One training job: the trainer, its run folder (checkpoint.pt, best.pt, logs, curves), validation and
    progress. Every rank runs it; rank 0 writes the files."""

    def __init__(self, cfg: TrainConfig, comm):
        from .validation import Validation, ValidationLog

        self.cfg, self.comm = cfg, comm
        self.out = Path(cfg.out)
        self.ckpt_path, self.best_path = self.out / "checkpoint.pt", self.out / "best.pt"
        self.trainer = Trainer(cfg, comm)
        if cfg.resume:
            self._resume()
        if comm.is_root:
            self.out.mkdir(parents=True, exist_ok=True)
        self.validation = Validation(self.trainer)
        start = self.trainer.step_index
        self.log = TrainLog(self.out / "train_log.csv", enabled=comm.is_root, append=cfg.resume, start_step=start,
                            every=cfg.log_every)
        self.val_log = ValidationLog(self.out / "val_log.csv", self.trainer.layout.state_fields, comm.is_root,
                                     cfg.resume, start)
        self.last_val: dict | None = None

    def _resume(self) -> None:
        from . import checkpoint as ckpt

        if not self.ckpt_path.exists():
            raise MeshgnnError(f"{self.ckpt_path}: --resume given but no checkpoint there")
        state = ckpt.load(self.ckpt_path)
        ckpt.check_compatible(state, self.trainer, self.ckpt_path)
        self.trainer.load_state_dict(state["trainer"])

    def save(self, path: Path) -> None:
        from . import checkpoint as ckpt

        if self.comm.is_root:
            ckpt.save(path, self.trainer, self.comm)
        self.comm.barrier()

    def validate(self, bar) -> None:
        """Validate, log, and keep ``best.pt`` when the score improved (the trainer's best-so-far survives
        resume: it is part of the checkpoint)."""
        if not self.validation.enabled:
            return
        tr = self.trainer
        rec = self.validation.run(tr.step_index)
        improved = rec["val_score"] < tr.best["score"]
        if improved:
            tr.best = dict(score=rec["val_score"], step=tr.step_index)
            self.save(self.best_path)
        self.val_log.write(rec, improved)
        self.log.scalars({"val/loss": rec["val_loss"], "val/score": rec["val_score"],
                          **{f"val/rmse_{f}": v for f, v in rec.get("rmse", {}).items()},
                          **{f"val/persistence_{f}": v for f, v in rec.get("persistence", {}).items()}},
                         tr.step_index)
        self.last_val = rec
        bar.update(0, val=rec["val_score"], best=tr.best["score"])

    def _due(self, every: int) -> bool:
        return every > 0 and self.trainer.step_index % every == 0

    def run(self) -> dict:
        from .progress import Progress, estimate_line

        cfg, tr, comm = self.cfg, self.trainer, self.comm
        old = signal.signal(signal.SIGTERM, _request_stop)
        bar = Progress(cfg.steps, "train", enabled=comm.is_root and cfg.progress,
                       every_s=30.0 if comm.is_root else None, initial=tr.step_index)
        t_start = time.perf_counter()
        rec, stopped, first = None, False, tr.step_index
        try:
            while tr.step_index < cfg.steps:
                rec = tr.step()
                self.log.write(rec, last=tr.step_index >= cfg.steps or rec["stop"])
                bar.update(1, loss=rec["loss"], lr=rec["lr"])
                if tr.step_index == first + 2 and comm.is_root:     # the first step pays warm-up costs
                    bar.write(f"train: {estimate_line(rec['seconds'], cfg.steps - first)}")
                done = tr.step_index >= cfg.steps or rec["stop"]
                if (done and not _STOP_REQUESTED) or self._due(cfg.val_every):   # SIGTERM: checkpoint at once
                    self.validate(bar)
                if done or self._due(cfg.checkpoint_every):
                    self.save(self.ckpt_path)
                if rec["stop"]:
                    stopped = True
                    break
        finally:
            signal.signal(signal.SIGTERM, old)
            bar.close()
            self.log.close()
            self.val_log.close()
        return self.summary(rec, stopped, time.perf_counter() - t_start)

    def summary(self, rec, stopped: bool, seconds: float) -> dict:
        from .validation import plot_curves

        tr, comm = self.trainer, self.comm
        curves = None
        if comm.is_root:
            curves = plot_curves(self.out / "train_log.csv", self.out / "val_log.csv", self.out / "curves.png")
        peaks = comm.gather_object(peak_rss_mb())
        extra = {}
        if tr.device.type == "cuda":
            extra["peak_cuda_mib"] = comm.gather_object(peak_gpu_mib(tr.device))
        if self.best_path.exists() or tr.best["step"] >= 0:
            extra.update(best=str(self.best_path), best_step=tr.best["step"], best_score=tr.best["score"])
        if self.last_val is not None:
            extra["validation"] = self.last_val
        return dict(**extra, steps=tr.step_index, loss=rec["loss"] if rec else float("nan"),
                    checkpoint=str(self.ckpt_path), curves=str(curves) if curves else None, seconds=seconds,
                    stopped=stopped, peak_rss_mb=peaks, bytes_allreduced=getattr(comm, "bytes_allreduced", 0))


class TrainLog:
    """CSV log of every ``every``-th step and the last (rank 0), plus TensorBoard event files."""

    FIELDS = ["step", "loss", "lr", "grad_norm", "seconds", "nodes_per_s", "peak_rss_mb", "trajectory",
              "time_index", "peak_gpu_mb"]

    def __init__(self, path: Path, enabled: bool, append: bool = False, start_step: int | None = None,
                 every: int = 1):
        self.enabled = enabled
        self.every = max(1, int(every))
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
        except Exception as e:  # noqa: BLE001 - the CSV log still works; say why the event files are missing
            print(f"train: TensorBoard event files off ({type(e).__name__}: {str(e)[:80]})", flush=True)
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

    def write(self, rec: dict, last: bool = False) -> None:
        if not self.enabled or not (last or rec["step"] % self.every == 0):
            return
        self._w.writerow(rec)
        self._f.flush()
        self.scalars({k: rec[k] for k in ("loss", "lr", "grad_norm", "nodes_per_s")}, rec["step"])

    def scalars(self, values: dict, step: int) -> None:
        """TensorBoard scalars ``{tag: value}`` at ``step`` (rank 0)."""
        if self._tb is not None:
            for tag, v in values.items():
                self._tb.add_scalar(tag, v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._f:
            self._f.close()
        if self._tb is not None:
            self._tb.close()
