"""meshgnn train DATASET.h5 [options]: train a MeshGraphNet; under `mpirun -n R` the parts spread over ranks.

Before training: options checked (meshgnn/config.py), the dataset's values get the quick checks
(meshgnn/io/check.py), and rank 0 takes the ``--out`` folder (meshgnn/io/runfolder.py): a second writer is
refused at once, a folder holding another run needs ``--resume`` or ``--overwrite``, temporary files left by a
killed writer are deleted.
"""
from __future__ import annotations

from ..config import add_dataclass_arguments, resolve
from ..config import TrainConfig


def add_arguments(p):
    p.add_argument("dataset", help="dataset file (HDF5, from `meshgnn generate` or `meshgnn import`)")
    add_dataclass_arguments(p, TrainConfig)
    p.add_argument("--backend", default="auto", help="torch.distributed backend under mpirun: auto|gloo|nccl")


def prepare_run_folder(cfg) -> None:
    """Refuse to mix runs in one folder; ``--overwrite`` deletes the old run's files; stale temps go."""
    from pathlib import Path

    from ..errors import MeshgnnError
    from ..io.atomic import clean_stale_temps
    from ..io.runfolder import holds_run

    out = Path(cfg.out)
    if cfg.resume and cfg.overwrite:
        raise MeshgnnError("--resume and --overwrite exclude each other (continue the run, or replace it)")
    present = holds_run(out)
    if present and not (cfg.resume or cfg.overwrite):
        raise MeshgnnError(f"{out}: holds another run ({', '.join(present)}); pass --resume to continue it, "
                           "--overwrite to replace it, or choose another --out")
    if cfg.overwrite:
        for name in present:
            (out / name).unlink()
    clean_stale_temps(out)


def stop_on_usr1() -> None:
    """SIGUSR1 acts as SIGTERM: checkpoint and stop after the current step. ``mpirun`` ends the whole job at once
    on SIGTERM (the ranks never see it) but forwards SIGUSR1: ``kill -USR1 <mpirun pid>`` stops gracefully."""
    import os
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR1, lambda signum, frame: os.kill(os.getpid(), signal.SIGTERM))


def run(args) -> int:
    import dataclasses
    import json

    from ..provenance import write_run_json

    from ..io.check import check_dataset_file
    from ..io.runfolder import RunFolder
    from ..train import train
    from ._common import guard, make_comm

    cfg = resolve(TrainConfig, args, dataset=args.dataset)
    from ..ops import set_backend
    set_backend(cfg.ops_backend)                 # the aggregation kernels every model call below uses
    stop_on_usr1()
    comm = make_comm(args.backend)
    with guard(comm):
        check_dataset_file(cfg.dataset)
        with RunFolder(cfg.out, "training run", enabled=comm.is_root):
            if comm.is_root:
                prepare_run_folder(cfg)
                write_run_json(cfg.out, dataclasses.asdict(cfg))
            summary = train(cfg, comm)
    if comm.is_root:
        print(json.dumps({k: v for k, v in summary.items()}, default=str))
        state = "stopped early (SIGTERM or --max-minutes), checkpoint saved" if summary["stopped"] else "done"
        print(f"train: {state}: {summary['steps']} steps, loss {summary['loss']:.4e}, "
              f"checkpoint {summary['checkpoint']}")
    if hasattr(comm, "finalize"):
        comm.finalize()
    return 0
