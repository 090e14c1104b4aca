"""meshgnn rollout CHECKPOINT DATASET.h5 [options]: roll out a trained model, write .pvd/.vtu, RMSE and PNGs."""
from __future__ import annotations

from ..config import add_dataclass_arguments, resolve
from ..config import RolloutConfig


def add_arguments(p):
    p.add_argument("checkpoint", help="checkpoint.pt from `meshgnn train`")
    p.add_argument("dataset", help="dataset with the trajectory's initial (and reference) frames")
    add_dataclass_arguments(p, RolloutConfig)
    p.add_argument("--backend", default="auto", help="torch.distributed backend under mpirun: auto|gloo|nccl")


def run(args) -> int:
    from ..rollout import rollout
    from ._common import guard, make_comm

    cfg = resolve(RolloutConfig, args, checkpoint=args.checkpoint, dataset=args.dataset)
    from ..ops import set_backend
    set_backend(cfg.ops_backend)                 # the aggregation kernels every model call below uses
    comm = make_comm(args.backend)
    with guard(comm):
        res = rollout(cfg, comm)
    if comm.is_root:
        print_summary(res)
    if hasattr(comm, "finalize"):
        comm.finalize()
    return 0


def print_summary(res: dict) -> None:
    from ..metrics import format_summary

    print(f"rollout: trajectory {res['trajectory']}, {res['steps']} steps, "
          f"{res['seconds_per_step']:.3f} s/step (model)"
          + (f", peak GPU memory {res['peak_cuda_mib'] / 1024:.1f} GiB" if "peak_cuda_mib" in res else ""))
    if "rmse" in res:
        print("surrogate " + format_summary(res["rmse"]))
        print("persistence baseline (no change) " + format_summary(res["rmse_persistence"]))
        for f, d in res["rmse"].items():
            base = res["rmse_persistence"][f]
            ratios = [f"{k}: {base[k] / v:.2f}x" for k, v in d.items() if v > 0 and base[k] > 0]
            print(f"  {f}: persistence RMSE / surrogate RMSE  " + ", ".join(ratios))
    for k in ("pvd", "png"):
        if k in res:
            print(f"  {k}: {res[k]}")
