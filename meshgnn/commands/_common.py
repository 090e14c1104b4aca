"""Helpers shared by the sub-commands."""
from __future__ import annotations


def make_comm(backend: str = "auto"):
    """This process's :class:`meshgnn.distributed.Dist`: a job of several ranks under mpirun/mpiexec, srun or
    torchrun, else a single process (:func:`meshgnn.distributed.init_distributed`, the one launcher detector)."""
    from ..distributed import init_distributed
    return init_distributed(backend=backend)


def guard(comm):
    """Under several ranks, an exception on one rank ends the whole job (``rank R: ...`` then MPI Abort)
    instead of leaving the others blocked in a collective; a single process lets the CLI report it."""
    import contextlib

    if getattr(comm, "size", 1) > 1:
        from ..distributed import abort_on_exception
        return abort_on_exception(comm)
    return contextlib.nullcontext()
