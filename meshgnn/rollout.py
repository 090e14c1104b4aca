"""Rollout: advance a trained simulator from a trajectory's first frame, write ParaView files and error metrics.

Whole graph in one process, or partitioned under ``mpirun -n R``: each rank advances its patches; after every
time step the halo rows are refreshed from their owners (a star-forest broadcast), and the owned values are
gathered to rank 0, which writes one frame at a time — the full time series is never held in memory.
Prescribed (Dirichlet) nodes take the data's values at every step. Reference fields and errors are written
when the dataset has the trajectory's frames; RMSE per field per step goes to CSV and PNG, with the persistence
baseline (no change) beside it.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .config import RolloutConfig
from .errors import MeshgnnError
from .train import LocalComm, PatchData, assign_parts, peak_gpu_mib


def split_fields(y: np.ndarray, names: list[str], comps: list[int]) -> dict:
    out, o = {}, 0
    for n, c in zip(names, comps):
        out[n] = y[:, o:o + c] if c > 1 else y[:, o]
        o += c
    return out


class PatchedState:
    """The state of this rank's patches and how to step, refresh and gather it."""

    def __init__(self, sim, ds, traj, patches: list[PatchData], comm, halo=None, per_layer: bool = False):
        self.sim, self.ds, self.traj, self.patches, self.comm, self.halo = sim, ds, traj, patches, comm, halo
        # per-layer mode: 1-hop halos refreshed before every layer of every stage, and the state after each step
        self.layer_exchange = halo.bcast_flat_ if (halo is not None and per_layer) else None
        self.static = [p.static(traj) for p in patches]
        self.fixed = [sim.fixed_mask(p.tensors.node_type) for p in patches]

    def initial(self) -> list[torch.Tensor]:
        return [p._frame(self.traj, 0) for p in self.patches]

    def reference(self, k) -> list:
        """The data's frame ``k`` per patch (its prescribed rows are imposed); ``None``s beyond the data."""
        if k >= self.ds.num_steps(self.traj):
            return [None] * len(self.patches)
        return [p._frame(self.traj, k) for p in self.patches]

    @torch.no_grad()
    def advance(self, ys, refs) -> list[torch.Tensor]:
        out = [self.sim.step(y, s, p.tensors, y_next_fixed=r, fixed=f, halo_exchange=self.layer_exchange)
               for y, s, p, r, f in zip(ys, self.static, self.patches, refs, self.fixed)]
        if self.layer_exchange is not None:          # one union patch: its rows are the flat buffer
            out = [self.halo.bcast_flat_(out[0])]
        elif self.halo is not None:
            out = self.halo.bcast(out)
        return out

    def gather(self, ys) -> np.ndarray | None:
        """Owned rows of all patches, assembled in global node order on rank 0 (None elsewhere)."""
        if len(self.patches) == 1 and self.patches[0].nodes is None:
            return ys[0].cpu().numpy()
        pieces = []
        for p, y in zip(self.patches, ys):
            core = p.tensors.core_mask().cpu()
            pieces.append((p.nodes[core.numpy()], y[core].cpu().numpy()))
        allp = self.comm.gather_object(pieces)
        if not self.comm.is_root:
            return None
        C = ys[0].shape[1]
        full = np.empty((self.ds.num_nodes, C), dtype=np.float32)
        for rank_pieces in allp:
            for ids, vals in rank_pieces:
                full[ids] = vals
        return full


def rollout(cfg: RolloutConfig, comm=None) -> dict:
    from .checkpoint import check_dataset, load_simulator
    from .io.dataset import Dataset
    from .io.vtk import RolloutWriter
    from .metrics import RMSETracker, plot_rmse

    comm = comm or LocalComm()
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    if cfg.malloc_cache:
        from .memory import keep_freed_memory
        keep_freed_memory()
    sim, state = load_simulator(cfg.checkpoint, device=device)
    if cfg.compile:
        sim.compile_model()
    ds = Dataset(cfg.dataset)
    check_dataset(state, ds, cfg.checkpoint)
    layout = sim.layout
    traj = cfg.trajectory or _default_trajectory(state, ds)
    if traj not in ds.trajectories:
        raise MeshgnnError(f"{cfg.dataset}: trajectory {traj!r} not found (have {', '.join(ds.trajectories)})")
    T = ds.num_steps(traj)
    steps = cfg.steps or T - 1          # beyond the data (T - 1): a forecast, prescribed nodes hold their values
    if steps < 1:
        raise MeshgnnError(f"{cfg.dataset}: /trajectories/{traj}: needs at least 2 time steps to roll out "
                           f"(or --steps)")

    patches, halo, owner = _rollout_patches(cfg, ds, sim, comm, device)
    st = PatchedState(sim, ds, traj, patches, comm, halo, per_layer=cfg.halo_mode == "per-layer")
    out = Path(cfg.out)
    names, comps = layout.state_fields, layout.state_components
    times = np.asarray(ds.times(traj), dtype=np.float64)
    if steps > T - 1:
        step_dt = times[-1] - times[-2] if T > 1 else ds.dt
        times = np.concatenate([times, times[-1] + step_dt * np.arange(1, steps - (T - 1) + 1)])
    writer = tracker = baseline = None
    fixed_global = None
    if comm.is_root:
        out.mkdir(parents=True, exist_ok=True)
        fixed_global = sim.fixed_mask(torch.from_numpy(np.asarray(ds.node_type, np.int64))).numpy()
        static_data = {"node_type": np.asarray(ds.node_type, np.int32)}
        if owner is not None:
            static_data["part"] = np.asarray(owner, np.int32)
        units = {n: layout.units.get(n, "") for n in names}
        units.update({f"{n}_ref": u for n, u in units.items()} | {f"{n}_err": u for n, u in units.items()})
        writer = RolloutWriter(out, ds.points, ds.cells, formats=tuple(cfg.formats), every=cfg.every, units=units,
                               static_point_data=static_data, final_step=steps, keep_last=False)
        fcomp = dict(zip(names, comps))
        tracker = RMSETracker(fcomp, out / "rmse.csv")
        baseline = RMSETracker(fcomp, out / "rmse_persistence.csv")

    ys = st.initial()
    _check_finite_inputs(cfg.dataset, traj, layout, st, ys)
    y0_full = st.gather(ys)
    if comm.is_root:
        writer.write_step(0, float(times[0]), _frame_data(y0_full, y0_full, names, comps))
    bar = None
    if comm.is_root and cfg.progress:
        from tqdm import tqdm
        bar = tqdm(total=steps, desc=f"rollout {traj}", unit="step", dynamic_ncols=True)
    t_model = 0.0
    for k in range(1, steps + 1):
        refs = st.reference(k)
        t0 = time.perf_counter()
        ys = st.advance(ys, refs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # kernels run asynchronously: time them, not their launches
        t_model += time.perf_counter() - t0
        pred = st.gather(ys)
        if comm.is_root and k >= T:
            writer.write_step(k, float(times[k]), split_fields(pred, names, comps))
        elif comm.is_root:
            ref = ds.read_state(traj, k)
            mask = ~fixed_global
            tracker.update(k, float(times[k]), split_fields(pred, names, comps), split_fields(ref, names, comps), mask)
            persist = np.where(fixed_global[:, None], ref, y0_full)
            baseline.update(k, float(times[k]), split_fields(persist, names, comps), split_fields(ref, names, comps),
                            mask)
            writer.write_step(k, float(times[k]), _frame_data(pred, ref, names, comps))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(s_per_step=f"{t_model / k:.3f}")
        if bar is not None and k >= T:
            bar.update(1)
            bar.set_postfix(s_per_step=f"{t_model / k:.3f}", forecast="beyond data")
    if bar is not None:
        bar.close()
    result = dict(trajectory=traj, steps=steps, seconds_per_step=t_model / steps, out=str(out))
    if device.type == "cuda":
        result["peak_cuda_mib"] = peak_gpu_mib(device)
    if comm.is_root:
        writer.close()
        tracker.close()
        baseline.close()
        result["rmse"] = tracker.summary(steps=(1, 10, 50))
        result["rmse_persistence"] = baseline.summary(steps=(1, 10, 50))
        plot_rmse(out / "rmse.csv", out / "rmse.png", baseline_csv=out / "rmse_persistence.csv")
        series = out / ("rollout.pvd" if "pvd" in cfg.formats else "rollout.vtkhdf")
        if "pvd" in cfg.formats:
            result["pvd"] = str(series)
        if cfg.render and series.exists():
            from .render import render_series
            png = out / f"{names[0]}.png"
            render_series(series, names[0], png, step=-1, compare=steps <= T - 1)
            result["png"] = str(png)
    return result


def _check_finite_inputs(path, traj, layout, st: PatchedState, ys) -> None:
    """Refuse NaN/Inf in the initial frame or the static fields: they would roll out as NaN without a word."""
    from .errors import InputError
    from .train import nonfinite_nodes

    for y0, static in zip(ys, st.static):
        for values, names, comps, what in ((y0, layout.state_fields, layout.state_components, "step 0"),
                                           (static, layout.static_fields, layout.static_components, "static")):
            for name, n in nonfinite_nodes(values, names, comps).items():
                raise InputError(path, f"/trajectories/{traj}/fields/{name}",
                                 f"{what}: {n} nodes with non-finite values (NaN/Inf); expected finite numbers")


def _frame_data(pred, ref, names, comps) -> dict:
    p = split_fields(pred, names, comps)
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


def _rollout_patches(cfg, ds, sim, comm, device):
    cache = 256 * 2**20
    if not cfg.parts:
        if comm.size > 1:
            raise MeshgnnError("a rollout on several ranks needs --parts (a part store from `meshgnn partition`)")
        return [PatchData.whole(ds, device, cache, torch.float32)], None, None
    from meshgnn.decomposition import PartStore

    from .halo import StarForest

    store = PartStore(cfg.parts)
    store.check_graph(ds.edge_index())
    per_layer = cfg.halo_mode == "per-layer"
    need = 1 if per_layer else sim.receptive_hops
    if store.halo < need:
        raise MeshgnnError(f"{cfg.parts}: halo depth {store.halo} is too shallow for an exact {cfg.halo_mode} rollout "
                           f"(needs >= {need} = {'1' if per_layer else 'layers x stages'}; re-partition with "
                           f"--halo {need} or use --halo-mode per-layer)")
    counts = np.bincount(store.owner, minlength=store.num_parts).tolist()
    parts_of_rank = assign_parts(counts, comm.size)
    mine = parts_of_rank[comm.rank]
    if not mine:
        raise MeshgnnError(f"{cfg.parts}: {store.num_parts} parts cannot feed {comm.size} ranks")
    parts = [store.read(p) for p in mine]
    patches = [PatchData.from_part(ds, part, device, cache, torch.float32) for part in parts]
    part_to_rank = np.zeros(store.num_parts, dtype=np.int64)
    for r, ps in enumerate(parts_of_rank):
        part_to_rank[ps] = r
    halo = StarForest.from_parts(parts, part_to_rank, comm.rank, dist=comm if comm.size > 1 else None,
                                 owner=store.owner, depth=1 if per_layer else None)
    if per_layer:
        patches = [PatchData.union(patches)]
    return patches, halo, store.owner
