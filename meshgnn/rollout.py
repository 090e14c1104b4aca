"""Rollout: advance a trained simulator from a frame of a trajectory; ParaView files and error metrics.

Whole graph in one process, or partitioned under a launcher (``mpirun``/``srun``/``torchrun``): each rank
advances the patches of its :class:`~meshgnn.domain.LocalDomain`; after every time step the halo rows are
refreshed from their owners (a star-forest broadcast), or before every layer in per-layer mode. Output and
metrics stay on their ranks (docs/design.md, "Output and metrics"): each rank writes its own ``.vtu`` piece of
every frame (rank 0 adds the small ``.pvtu`` index and the ``.pvd``), and the RMSE per field comes from per-rank
partial sums (squared error, count) reduced across ranks. Prescribed (Dirichlet) components take the data's
values at every step and are left out of the RMSE. A whole-graph single-process run writes ``.pvd`` + ``.vtu``.

Three entry points share one generator, :func:`rollout_frames`:

* :func:`rollout` (``meshgnn rollout``): files, CSV/PNG metrics, optionally the predicted fields as an array;
* :func:`rollout_metrics`: no output, per-field RMSE of the model and of persistence (validation while training);
* :func:`rollout_frames` itself: ``(step, frame, time, owned ids, predicted rows, ...)`` per step, per rank.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from .config import RolloutConfig
from .distributed import Dist, choose_device
from .domain import LocalDomain
from .errors import MeshgnnError
from .metrics import SUMMARY_STEPS, field_error_sums, summarise
from .simulator import history_features
from .train import nonfinite_nodes, peak_gpu_mib


def split_fields(y: np.ndarray, names: list[str], comps: list[int]) -> dict:
    """``{name: (n,) | (n, c)}`` views of the columns of ``y`` (n, sum comps), field after field."""
    out, o = {}, 0
    for n, c in zip(names, comps):
        out[n] = y[:, o:o + c] if c > 1 else y[:, o]
        o += c
    return out


def component_mask(sim, node_type: torch.Tensor) -> torch.Tensor:
    """``(n, C)`` bool prescribed components from :meth:`Simulator.fixed_mask` (an ``(n,)`` mask is broadcast)."""
    fixed = sim.fixed_mask(node_type)
    return fixed[:, None].expand(-1, sim.layout.state_size).contiguous() if fixed.dim() == 1 else fixed


# ------------------------------------------------------------------------------------------------ stepping
def check_history_start(sim, start: int) -> None:
    """A model with history inputs needs ``history`` frames before the start frame."""
    if start < sim.history:
        raise MeshgnnError(f"--start {start}: the model reads the last {sim.history} state change(s) (trained "
                           f"with --history {sim.history}), so a rollout starts at frame {sim.history} or later")


class PatchedState:
    """The state of this rank's patches (a :class:`LocalDomain`) on one trajectory, and how to step it. For a
    simulator with history inputs it also carries the last changes per patch (``history``, (n_p, H·C) each)."""

    def __init__(self, sim, domain: LocalDomain, traj: str):
        self.sim, self.domain, self.traj = sim, domain, traj
        self.static = domain.static(traj)
        self.fixed = [sim.fixed_mask(p.tensors.node_type) for p in domain.patches]     # as the simulator takes it
        self.free = [~component_mask(sim, p.tensors.node_type) for p in domain.patches]   # (n_p, C) predicted
        self.history = [None] * len(domain.patches)

    def initial(self, start: int = 0) -> list[torch.Tensor]:
        """``[(n_p, C)]`` the data's frame ``start`` per patch; the history becomes the data's changes into it."""
        ys = self.domain.frame(self.traj, start)
        H = self.sim.history
        if H:
            check_history_start(self.sim, start)
            frames = [ys] + [self.domain.frame(self.traj, start - k) for k in range(1, H + 1)]   # [frame][patch]
            self.history = [history_features(list(per_patch)) for per_patch in zip(*frames)]
        return ys

    def reference(self, k: int) -> list:
        """The data's frame ``k`` per patch (its prescribed entries are imposed); ``None``s beyond the data."""
        if k >= self.domain.ds.num_steps(self.traj):
            return [None] * len(self.domain.patches)
        return self.domain.frame(self.traj, k)

    @torch.no_grad()
    def advance(self, ys, refs) -> list[torch.Tensor]:
        """One time step of every patch, then the halo refresh (collective); new tensors, inputs untouched (the
        history moves on by this step's change)."""
        ex = self.domain.layer_exchange
        out = [self.sim.step(y, s, p.tensors, y_next_fixed=r, fixed=f, halo_exchange=ex, history=h)
               for y, s, p, r, f, h in zip(ys, self.static, self.domain.patches, refs, self.fixed, self.history)]
        out = self.domain.refresh(out)
        self.history = [self.sim.next_history(h, y, o) for h, y, o in zip(self.history, ys, out)]
        return out


@dataclass
class Frame:
    """One frame of a rollout on this rank (rows: the rank's owned nodes, in :meth:`LocalDomain.owned_rows`
    order).

    step: steps taken from the start (0: the start frame itself); frame: its index in the trajectory
    (``start + step``; past the data's end a forecast); time: its time; ids: ``(n_own,) int64`` global node ids;
    pred: ``(n_own, C)`` predicted state; ref: ``(n_own, C)`` the data's frame, ``None`` past the data;
    free: ``(n_own, C)`` bool, the components the model predicts (not prescribed); seconds: model time of the
    step (0 for step 0).
    """

    step: int
    frame: int
    time: float
    ids: np.ndarray
    pred: torch.Tensor
    ref: Optional[torch.Tensor]
    free: torch.Tensor
    seconds: float = 0.0


def frame_times(ds, traj: str, start: int, steps: int) -> np.ndarray:
    """``(steps + 1,)`` times of frames ``start .. start + steps``; past the data, steps of the last spacing."""
    times = np.asarray(ds.times(traj), dtype=np.float64)
    T = times.size
    if start + steps > T - 1:
        dt = times[-1] - times[-2] if T > 1 else float(ds.dt)
        times = np.concatenate([times, times[-1] + dt * np.arange(1, start + steps - (T - 1) + 1)])
    return times[start:start + steps + 1]


def rollout_frames(sim, domain: LocalDomain, traj: str, start: int = 0, steps: Optional[int] = None,
                   check_inputs: bool = True) -> Iterator[Frame]:
    """Roll ``sim`` out over ``domain`` from frame ``start`` of ``traj``: yields ``steps + 1`` :class:`Frame`\\ s
    (``steps`` default: to the data's last frame). Every rank iterates it in step (it is collective)."""
    T = domain.ds.num_steps(traj)
    steps = T - 1 - start if steps is None else int(steps)
    if not 0 <= start < T:
        raise MeshgnnError(f"--start {start}: trajectory {traj} has frames 0..{T - 1}")
    st = PatchedState(sim, domain, traj)
    times = frame_times(domain.ds, traj, start, steps)
    ys = st.initial(start)
    if check_inputs:
        _check_finite_inputs(getattr(domain.ds, "path", "dataset"), traj, sim.layout, st, ys)
    ids, free = domain.owned_rows(st.free)
    ids, y0 = domain.owned_rows(ys)
    yield Frame(0, start, float(times[0]), ids, y0, y0, free)
    device = domain.device
    for i in range(1, steps + 1):
        refs = st.reference(start + i)
        t0 = time.perf_counter()
        ys = st.advance(ys, refs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)   # kernels run asynchronously: time them, not their launches
        dt = time.perf_counter() - t0
        ref = None if refs[0] is None else domain.owned_rows(refs)[1]
        yield Frame(i, start + i, float(times[i]), ids, domain.owned_rows(ys)[1], ref, free, dt)


def _error_sums(fr: Frame, y_start: torch.Tensor, comps: list[int]) -> torch.Tensor:
    """``(2, 2, F)``: [model, persistence] x [sum of squared error, count] of this rank's rows."""
    return torch.stack([field_error_sums(fr.pred, fr.ref, fr.free, comps),
                        field_error_sums(y_start, fr.ref, fr.free, comps)])


def _rmse(sums: torch.Tensor) -> torch.Tensor:
    """RMSE from ``(..., 2, F)`` reduced sums (nan where nothing was counted)."""
    return torch.where(sums[..., 1, :] > 0, (sums[..., 0, :] / sums[..., 1, :].clamp(min=1)).sqrt(),
                       torch.full_like(sums[..., 0, :], float("nan")))


@torch.no_grad()
def rollout_metrics(sim, domain: LocalDomain, traj: str, start: int = 0, steps: Optional[int] = None,
                    summary_steps=SUMMARY_STEPS) -> dict:
    """Per-field RMSE of a no-output rollout of ``steps`` steps from frame ``start`` (default: to the data's end;
    at most that), and of persistence (the start frame held), reduced across ranks; collective, exact on any
    rank count.

    Returns ``{"start", "steps", "rmse": {field: {"1": x, "10": x, "50": x, "all": mean over steps}},
    "persistence": {...same...}, "per_step": {"rmse": {field: [steps floats]}, "persistence": {...}}}``
    (summary keys only for steps that ran).
    """
    lay = sim.layout
    T = domain.ds.num_steps(traj)
    steps = T - 1 - start if steps is None else min(int(steps), T - 1 - start)
    acc = torch.zeros(max(steps, 0), 2, 2, len(lay.state_fields), dtype=torch.float64)
    y_start = None
    for fr in rollout_frames(sim, domain, traj, start, steps, check_inputs=False):
        if fr.step == 0:
            y_start = fr.pred
        else:
            acc[fr.step - 1] = _error_sums(fr, y_start, lay.state_components)
    domain.comm.allreduce_(acc)
    rmse = _rmse(acc)                                     # (steps, 2, F)
    out = dict(start=start, steps=steps, per_step={})
    for j, key in enumerate(("rmse", "persistence")):
        rows = [(i + 1, 0.0, {f: float(rmse[i, j, q]) for q, f in enumerate(lay.state_fields)})
                for i in range(steps)]
        out[key] = summarise(rows, lay.state_fields, summary_steps)
        out["per_step"][key] = {f: [r[2][f] for r in rows] for f in lay.state_fields}
    return out


# ------------------------------------------------------------------------------------------------ the command
def rollout(cfg: RolloutConfig, comm=None, return_fields: bool = False, model=None) -> dict:
    """Run ``meshgnn rollout``: frames ``cfg.start .. cfg.start + steps`` written, RMSE per field to CSV/PNG.

    Returns (rank 0's view) ``{"trajectory", "start", "steps", "seconds_per_step", "out", "rmse",
    "rmse_persistence", "pvd", "png", "peak_cuda_mib", "bytes_sent", "excursion_pct"}`` (metrics where the data
    has the frames; ``excursion_pct``: per field, how far the prediction left the training range, % of it;
    ``bytes_sent``: this rank's, halo + piece boundaries + reductions), plus
    ``"fields"``: ``(steps + 1, N, C) float32`` predicted states when ``return_fields`` (one process only).
    ``model``: a module with :class:`meshgnn.model.MeshGraphNet`'s ``forward``/``encode_edges`` to run in place of
    the checkpoint's network (same normalizers, integrator, boundary handling and metrics; e.g. another
    library's MeshGraphNet in a benchmark).
    """
    comm = comm or Dist()
    run = _open_run(cfg, comm, model)
    if return_fields and comm.size > 1:
        raise MeshgnnError("rollout(return_fields=True) runs in one process (a partitioned run keeps its rows on "
                           "their ranks; iterate rollout_frames instead)")
    out = Path(cfg.out)
    if comm.is_root:
        out.mkdir(parents=True, exist_ok=True)
    comm.barrier()
    sink = _Outputs(cfg, run, comm)
    fields = (np.empty((run.steps + 1, run.domain.num_nodes, run.sim.layout.state_size), np.float32)
              if return_fields else None)
    t_model = 0.0
    try:
        for fr in rollout_frames(run.sim, run.domain, run.traj, run.start, run.steps):
            t_model += fr.seconds
            sink.add(fr)
            if fields is not None:
                fields[fr.step][fr.ids] = fr.pred.cpu().numpy()
    finally:
        sink.close()
    result = dict(trajectory=run.traj, start=run.start, steps=run.steps, seconds_per_step=t_model / run.steps,
                  out=str(out), bytes_sent=sink.bytes_sent(), excursion_pct=sink.excursion_pct())
    if run.device.type == "cuda":
        result["peak_cuda_mib"] = peak_gpu_mib(run.device)
    if fields is not None:
        result["fields"] = fields
    if comm.is_root:
        result.update(sink.finish())
    return result


@dataclass
class _Run:
    sim: object
    domain: LocalDomain
    traj: str
    start: int
    steps: int
    device: torch.device


def _open_run(cfg: RolloutConfig, comm, model=None) -> _Run:
    """Load the checkpoint and dataset, pick the trajectory and steps, build the local domain."""
    from .checkpoint import check_dataset, load_simulator
    from .io.dataset import Dataset

    device = choose_device(cfg.device, comm.local_rank)
    if cfg.malloc_cache:
        from .memory import keep_freed_memory
        keep_freed_memory()
    sim, state = load_simulator(cfg.checkpoint, device=device)
    if model is not None:
        sim.model = model
    sim.clamp = cfg.clamp
    if cfg.compile:
        sim.compile_model()
    ds = Dataset(cfg.dataset)
    check_dataset(state, ds, cfg.checkpoint)
    traj = cfg.trajectory or _default_trajectory(state, ds)
    if traj not in ds.trajectories:
        raise MeshgnnError(f"{cfg.dataset}: trajectory {traj!r} not found (have {', '.join(ds.trajectories)})")
    T = ds.num_steps(traj)
    start = int(getattr(cfg, "start", 0) or 0)
    if not 0 <= start < T:
        raise MeshgnnError(f"{cfg.dataset}: /trajectories/{traj}: --start {start} outside its frames 0..{T - 1}")
    check_history_start(sim, start)
    steps = cfg.steps or T - 1 - start    # beyond the data: a forecast, prescribed entries hold their values
    if steps < 1:
        raise MeshgnnError(f"{cfg.dataset}: /trajectories/{traj}: needs at least 2 time steps from frame {start} "
                           f"to roll out (or --steps)")
    domain = LocalDomain(ds, cfg.parts, comm, cfg.halo_mode, sim.receptive_hops, device, torch.float32,
                         256 * 2**20, what="rollout")
    return _Run(sim, domain, traj, start, steps, device)


class _Outputs:
    """Where a rollout's frames go: ParaView files (whole-graph writer, or this rank's pieces) and the RMSE
    trackers (rank 0), fed from per-rank partial sums."""

    def __init__(self, cfg: RolloutConfig, run: _Run, comm):
        from .metrics import RMSETracker

        self.cfg, self.run, self.comm = cfg, run, comm
        lay = run.sim.layout
        self.names, self.comps = lay.state_fields, lay.state_components
        self.out = Path(cfg.out)
        self.T = run.domain.ds.num_steps(run.traj)
        self.y_start = None
        self.bar = None
        units = {n: lay.units.get(n, "") for n in self.names}
        units.update({f"{n}_ref": u for n, u in units.items()} | {f"{n}_err": u for n, u in units.items()})
        self.pieces = self.writer = None
        if run.domain.partitioned and comm.size > 1:
            self.pieces = _piece_writer(cfg, run, comm, units)
        elif comm.is_root:
            self.writer = _whole_writer(cfg, run, units)
        self.trackers = None
        if comm.is_root:
            fcomp = dict(zip(self.names, self.comps))
            self.trackers = (RMSETracker(fcomp, self.out / "rmse.csv"),
                             RMSETracker(fcomp, self.out / "rmse_persistence.csv"))
            from .progress import Progress
            self.bar = Progress(run.steps, f"rollout {run.traj}", enabled=cfg.progress)
        self.t_model = 0.0
        self.excursion = torch.zeros(run.sim.layout.state_size, dtype=torch.float64)   # max over steps, (C,)

    def add(self, fr: Frame) -> None:
        if fr.step == 0:
            self.y_start = fr.pred
        elif fr.ref is not None:
            sums = _error_sums(fr, self.y_start, self.comps)
            self.comm.allreduce_(sums)
            if self.trackers is not None:
                for tr, s in zip(self.trackers, sums):
                    tr.update_sums(fr.step, fr.time, dict(zip(self.names, s[0].tolist())),
                                   dict(zip(self.names, s[1].tolist())))
        self._write(fr)
        self.t_model += fr.seconds
        self._track_excursion(fr)
        if self.bar is not None and fr.step:
            self.bar.update(1, s_per_step=self.t_model / fr.step,
                            **({"forecast": "beyond data"} if fr.ref is None else {}))

    def _track_excursion(self, fr: Frame) -> None:
        """Largest distance of the predicted free entries outside the training range, per component, as a
        fraction of that range (the range the model saw in training: ``Simulator.state_lo/hi``)."""
        sim = self.run.sim
        lo, hi = sim.state_lo, sim.state_hi
        if fr.step == 0 or not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()) or not fr.pred.numel():
            return
        y = fr.pred.double().cpu()
        out = torch.clamp(torch.maximum(y - hi, lo - y), min=0.0)
        out = torch.where(fr.free.cpu(), out, 0.0).amax(0) / (hi - lo).clamp(min=1e-30)
        self.excursion = torch.maximum(self.excursion, out)

    def excursion_pct(self) -> dict[str, float]:
        """Per field: the largest excursion outside the training range over the run, % of the range; collective."""
        exc = self.excursion.clone()
        self.comm.allreduce_max_(exc)
        out, o = {}, 0
        for name, c in zip(self.names, self.comps):
            out[name] = 100.0 * float(exc[o:o + c].max())
            o += c
        return out

    def _write(self, fr: Frame) -> None:
        if self.pieces is not None:
            pred = self.pieces.piece_values(fr.pred)
            ref = (self.run.domain.ds.read_state(self.run.traj, fr.frame, nodes=self.pieces.nodes)
                   if fr.ref is not None else None)
            self.pieces.write_step(fr.step, fr.time, _frame_data(pred, ref, self.names, self.comps))
        elif self.writer is not None:          # one process holds every node: rows into global order
            ref = _in_node_order(fr.ids, fr.ref) if fr.ref is not None else None
            self.writer.write_step(fr.step, fr.time, _frame_data(_in_node_order(fr.ids, fr.pred), ref, self.names,
                                                                 self.comps))

    def bytes_sent(self) -> int:
        """Bytes this rank has sent to others: halo refreshes, piece boundaries and the metric reductions."""
        return (self.run.domain.bytes_exchanged + (self.pieces.bytes_exchanged if self.pieces is not None else 0)
                + int(getattr(self.comm, "bytes_allreduced", 0)))

    def close(self) -> None:
        for w in (self.pieces, self.writer):
            if w is not None:
                w.close()
        if self.trackers is not None:
            for tr in self.trackers:
                tr.close()
        if self.bar is not None:
            self.bar.close()

    def finish(self) -> dict:
        """Rank 0: summaries, RMSE plot, the series path and the optional PNG."""
        from .metrics import plot_rmse

        res = {}
        model, persistence = self.trackers
        if model.rows:
            res["rmse"] = model.summary(steps=SUMMARY_STEPS)
            res["rmse_persistence"] = persistence.summary(steps=SUMMARY_STEPS)
            plot_rmse(self.out / "rmse.csv", self.out / "rmse.png", baseline_csv=self.out / "rmse_persistence.csv")
        series = self.out / ("rollout.pvd" if "pvd" in self.cfg.formats or self.pieces is not None
                             else "rollout.vtkhdf")
        if series.suffix == ".pvd":
            res["pvd"] = str(series)
        if self.cfg.render and series.exists():
            from .render import render_series
            png = self.out / f"{self.names[0]}.png"
            render_series(series, self.names[0], png, step=-1, compare=self.run.start + self.run.steps < self.T)
            res["png"] = str(png)
        return res


def _whole_writer(cfg: RolloutConfig, run: _Run, units: dict):
    from .io.vtk import RolloutWriter

    ds = run.domain.ds
    static = {"node_type": np.asarray(ds.node_type, np.int32)}
    if run.domain.owner is not None:
        static["part"] = np.asarray(run.domain.owner, np.int32)
    return RolloutWriter(cfg.out, ds.points, ds.cells, formats=tuple(cfg.formats), every=cfg.every, units=units,
                         static_point_data=static, final_step=run.steps, keep_last=False)


def _piece_writer(cfg: RolloutConfig, run: _Run, comm, units: dict):
    from .io.vtk import remove_series
    from .pieces import RankPieces

    other = [f for f in cfg.formats if f not in ("pvd", "pvtu")]
    if other:
        raise MeshgnnError(f"--formats {' '.join(other)}: a rollout on several ranks writes per-rank pieces "
                           "(.pvtu + .vtu, listed in rollout.pvd); use --formats pvd")
    if comm.is_root:
        remove_series(cfg.out)            # no stale frames of an earlier, longer run in the folder
    comm.barrier()
    return RankPieces(run.domain.ds, run.domain, cfg.out, units, every=cfg.every, final_step=run.steps)


def _in_node_order(ids: np.ndarray, rows: torch.Tensor) -> np.ndarray:
    """``(N, C)`` numpy rows placed at their global ids ``(N,)`` (a copy-free view when already in order)."""
    vals = rows.cpu().numpy()
    if ids.size and ids[0] == 0 and np.all(np.diff(ids) == 1):
        return vals
    out = np.empty_like(vals)
    out[ids] = vals
    return out


def _check_finite_inputs(path, traj, layout, st: PatchedState, ys) -> None:
    """Refuse NaN/Inf in the initial frame or the static fields: they would roll out as NaN without a word."""
    from .errors import InputError

    for y0, static in zip(ys, st.static):
        for values, names, comps, what in ((y0, layout.state_fields, layout.state_components, "initial frame"),
                                           (static, layout.static_fields, layout.static_components, "static")):
            for name, n in nonfinite_nodes(values, names, comps).items():
                raise InputError(path, f"/trajectories/{traj}/fields/{name}",
                                 f"{what}: {n} nodes with non-finite values (NaN/Inf); expected finite numbers")


def _frame_data(pred: np.ndarray, ref: Optional[np.ndarray], names, comps) -> dict:
    """Point data of one frame: ``{f: pred}`` and, where the data has the frame, ``f_ref`` and ``f_err``."""
    p = split_fields(pred, names, comps)
    if ref is None:
        return p
    r = split_fields(ref, names, comps)
    data = {}
    for n in names:
        data[n] = p[n]
        data[f"{n}_ref"] = r[n]
        data[f"{n}_err"] = p[n] - r[n]
    return data


def _default_trajectory(state, ds) -> str:
    val = state["trainer"]["config"].get("val_trajectories") or []
    if val:
        return val[0]
    trajs = list(ds.trajectories)
    return trajs[-1]
