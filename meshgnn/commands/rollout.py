"""meshgnn rollout CHECKPOINT DATASET.h5 [options]: roll out a trained model, write .pvd/.vtu, RMSE and PNGs.

Before the rollout: the checkpoint is opened without running code (meshgnn/checkpoint.py), the dataset gets the
quick value checks and the frames this rollout compares with — the trajectory's reference frames — are checked
finite (meshgnn/io/check.py), a large output gets a warning with its estimated size, and rank 0 takes the
``--out`` folder (meshgnn/io/runfolder.py).
"""
from __future__ import annotations

import sys

from ..config import add_dataclass_arguments, resolve
from ..config import RolloutConfig

WARN_BYTES = 2**30           # warn when a rollout would write more than this


def add_arguments(p):
    p.add_argument("checkpoint", help="checkpoint.pt from `meshgnn train`")
    p.add_argument("dataset", help="dataset with the trajectory's initial (and reference) frames")
    add_dataclass_arguments(p, RolloutConfig)
    p.add_argument("--backend", default="auto", help="torch.distributed backend under mpirun: auto|gloo|nccl")


def estimate_output_bytes(ds, steps: int, every: int, formats, state_components: int) -> int:
    """Bytes a rollout of ``steps`` steps writes: per written frame the predicted, reference and error fields
    (float32) and, for .vtu/.pvtu files, the mesh again (points, connectivity, offsets, types, node types)."""
    n = ds.num_nodes
    frames = steps // max(every, 1) + 2                    # step 0, every K-th, the last
    from ..io.dataset import CELL_NODES

    mesh = n * (3 * 8 + 4) + sum(m * (CELL_NODES[t] * 8 + 8 + 1) for t, m in ds.cell_counts().items())
    fields = n * 3 * state_components * 4
    total = 0
    for fmt in formats:
        total += frames * (fields + mesh) if fmt in ("pvd", "pvtu") else mesh + frames * fields
    return total


def preflight(cfg, comm) -> None:
    """The checks before a rollout: checkpoint format, dataset values, reference frames, output size."""
    import shutil
    from pathlib import Path

    from ..checkpoint import load_metadata
    from ..io.check import check_frames, check_quick
    from ..io.dataset import Dataset

    tree, _ = load_metadata(cfg.checkpoint)             # refuses pickles before anything is unpickled
    with Dataset(cfg.dataset) as ds:
        check_quick(ds)
        traj = cfg.trajectory or default_trajectory(tree, ds)
        if traj not in ds.trajectories:
            return                                      # rollout names the unknown trajectory
        T = ds.num_steps(traj)
        steps = cfg.steps or T - 1
        check_frames(ds, traj, range(0, min(steps, T - 1) + 1))
        if not comm.is_root:
            return
        comps = sum(ds.fields[f].components for f in ds.state_fields)
        size = estimate_output_bytes(ds, steps, cfg.every, cfg.formats, comps)
        out = Path(cfg.out)
        probe = next((p for p in (out, *out.resolve().parents) if p.exists()), Path("."))
        free = shutil.disk_usage(probe).free
        if size > WARN_BYTES or size > free:
            print(f"meshgnn rollout: warning: {steps} steps write about {size / 1e9:.1f} GB to {out} "
                  f"({free / 1e9:.1f} GB free there){'; it will not fit' if size > free else ''}; --every K "
                  "writes every K-th step only", file=sys.stderr)
    cfg.trajectory = traj


def default_trajectory(tree: dict, ds) -> str:
    """The first held-out trajectory of the checkpoint's training run, else the dataset's last one."""
    val = (tree.get("trainer", {}).get("config", {}) or {}).get("val_trajectories") or []
    return val[0] if val else list(ds.trajectories)[-1]


def run(args) -> int:
    import dataclasses

    from ..provenance import write_run_json
    from ..io.atomic import clean_stale_temps
    from ..io.runfolder import RunFolder
    from ..rollout import rollout
    from ._common import guard, make_comm

    cfg = resolve(RolloutConfig, args, checkpoint=args.checkpoint, dataset=args.dataset)
    from ..ops import set_backend
    set_backend(cfg.ops_backend)                 # the aggregation kernels every model call below uses
    comm = make_comm(args.backend)
    with guard(comm):
        preflight(cfg, comm)
        with RunFolder(cfg.out, "rollout", enabled=comm.is_root):
            if comm.is_root:
                clean_stale_temps(cfg.out)
                write_run_json(cfg.out, dataclasses.asdict(cfg))
            res = rollout(cfg, comm)
    if comm.is_root:
        print_summary(res)
    if hasattr(comm, "finalize"):
        comm.finalize()
    return 0


def print_summary(res: dict) -> None:
    from ..metrics import format_summary

    print(f"rollout: trajectory {res['trajectory']}, {res['steps']} steps from frame {res.get('start', 0)}, "
          f"{res['seconds_per_step']:.3f} s/step (model)"
          + (f", peak GPU memory {res['peak_cuda_mib'] / 1024:.1f} GiB" if "peak_cuda_mib" in res else ""))
    if "rmse" in res:
        print("surrogate " + format_summary(res["rmse"]))
        print("persistence baseline (no change) " + format_summary(res["rmse_persistence"]))
        for f, d in res["rmse"].items():
            base = res["rmse_persistence"][f]
            ratios = [f"{k}: {base[k] / v:.2f}x" for k, v in d.items() if v > 0 and base[k] > 0]
            print(f"  {f}: persistence RMSE / surrogate RMSE  " + ", ".join(ratios))
    if res.get("excursion_pct"):
        exc = res["excursion_pct"]
        print("  largest excursion outside the training range: "
              + ", ".join(f"{f} {v:.1f}%" for f, v in exc.items())
              + ("" if max(exc.values()) > 0 else " (none)") + "  (--clamp true holds the range)")
    for k in ("pvd", "png"):
        if k in res:
            print(f"  {k}: {res[k]}")
