"""meshgnn train DATASET.h5 [options]: train a MeshGraphNet; under `mpirun -n R` the parts spread over ranks."""
from __future__ import annotations

from ..config import add_dataclass_arguments, resolve
from ..config import TrainConfig


def add_arguments(p):
    p.add_argument("dataset", help="dataset file (HDF5, from `meshgnn generate` or `meshgnn import`)")
    add_dataclass_arguments(p, TrainConfig)
    p.add_argument("--backend", default="auto", help="torch.distributed backend under mpirun: auto|gloo|nccl")


def run(args) -> int:
    import json

    from ..train import train
    from ._common import guard, make_comm

    cfg = resolve(TrainConfig, args, dataset=args.dataset)
    from ..ops import set_backend
    set_backend(cfg.ops_backend)                 # the aggregation kernels every model call below uses
    comm = make_comm(args.backend)
    with guard(comm):
        summary = train(cfg, comm)
    if comm.is_root:
        print(json.dumps({k: v for k, v in summary.items()}, default=str))
        state = "stopped early (SIGTERM or --max-minutes), checkpoint saved" if summary["stopped"] else "done"
        print(f"train: {state}: {summary['steps']} steps, loss {summary['loss']:.4e}, "
              f"checkpoint {summary['checkpoint']}")
    if hasattr(comm, "finalize"):
        comm.finalize()
    return 0
