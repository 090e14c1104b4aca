"""Helpers shared by the sub-commands."""
from __future__ import annotations

import os


def under_mpi_launcher() -> bool:
    """True when started by mpirun/mpiexec/srun with more than one rank (or asked to use MPI explicitly)."""
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS"):
        v = os.environ.get(var)
        if v and v.isdigit() and int(v) > 1:
            return True
    return os.environ.get("MESHGNN_USE_MPI") == "1"


def make_comm(backend: str = "auto"):
    """A :class:`meshgnn.distributed.Dist` under an MPI launcher, else the single-process stand-in."""
    if under_mpi_launcher():
        from ..distributed import init_from_mpi
        return init_from_mpi(backend=backend)
    from ..train import LocalComm
    return LocalComm()


def guard(comm):
    """Under several ranks, an exception on one rank ends the whole job (``rank R: ...`` then MPI Abort)
    instead of leaving the others blocked in a collective; a single process lets the CLI report it."""
    import contextlib

    if getattr(comm, "size", 1) > 1:
        from ..distributed import abort_on_exception
        return abort_on_exception(comm)
    return contextlib.nullcontext()
