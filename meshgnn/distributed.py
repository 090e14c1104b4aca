"""Launching ``torch.distributed`` from MPI, and the few collectives training needs.

One call sets a job up, whatever started it::

    from meshgnn.distributed import init_from_mpi, abort_on_exception
    dist = init_from_mpi()                 # mpirun -n 4 ..., srun --mpi=pmix ..., or plain `python ...`
    with abort_on_exception(dist):
        ...
        loss.backward()
        dist.allreduce_grads(model.parameters())   # ONE all-reduce of a flat gradient bucket
    dist.finalize()

Launch. Rank, size and the node-local rank come from MPI (``COMM_WORLD``; the local rank from
``Split_type(COMM_TYPE_SHARED)``), so ``mpirun`` and ``srun --mpi=pmix`` behave alike. The
``torch.distributed`` rendezvous is derived from MPI as well: rank 0 picks a free TCP port (or takes
``MASTER_PORT``), the address is ``MASTER_ADDR`` if set, else ``127.0.0.1`` when every rank runs on one
host, else rank 0's hostname; both are broadcast over MPI and every rank calls
``init_process_group(init_method="tcp://addr:port")``. Backend ``"auto"`` is NCCL when CUDA is available
(device ``cuda:local_rank % device_count``), else gloo on the CPU.

Single process. Without a launcher (no ``OMPI_*``/``PMI*``/``PMIX_*`` variables) — or with a launcher
and one rank — the job is size 1: MPI is not needed, no process group is created, and every collective
is a local no-op (``allreduce_`` leaves the tensor as is, ``gather_object`` returns ``[obj]``).

Threads. Unless the user set ``OMP_NUM_THREADS``, each rank uses ``max(1, cores // local ranks)``
intra-op threads (cores = the CPUs this process may run on), so ranks on one node do not oversubscribe it.

Failure. A rank that dies must not leave the others waiting forever:
  * every ``torch.distributed`` collective carries the process-group timeout (``timeout_s``; gloo
    honours it, and it notices a closed peer socket at once), so a survivor raises instead of hanging;
  * :func:`abort_on_exception` (a context manager) and :func:`install_excepthook` turn any uncaught
    exception into ``rank R: <Type>: <message>`` on stderr followed by ``MPI.COMM_WORLD.Abort(1)``,
    which makes ``mpirun``/``srun`` kill every rank and exit non-zero;
  * a rank that exits with a non-zero status is torn down by ``mpirun`` itself (it names the rank).
Object collectives (``broadcast_object``, ``gather_object``) use MPI; they rely on the launcher's
tear-down rather than a timeout.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import traceback
from dataclasses import dataclass, field
from datetime import timedelta

import torch

_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK", "MPI_LOCALNRANKS")


def _launched_by_mpi() -> bool:
    """True when an MPI launcher (mpirun/mpiexec/srun with PMI/PMIx) started this process."""
    return any(v in os.environ for v in _LAUNCHER_VARS)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _set_threads(local_size: int) -> int:
    """Per-rank intra-op threads: ``OMP_NUM_THREADS`` if set, else ``max(1, cores // local_size)``."""
    if os.environ.get("OMP_NUM_THREADS"):
        n = max(1, int(os.environ["OMP_NUM_THREADS"]))
    else:
        n = max(1, _usable_cores() // max(1, local_size))
        os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)
    return n


def _pick_device(backend: str, local_rank: int) -> tuple[str, torch.device]:
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return backend, device


def _alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _free_port(host: str = "") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _rendezvous(comm) -> tuple[str, int]:
    """``(addr, port)`` agreed by all ranks: picked on rank 0, broadcast over MPI."""
    hosts = comm.allgather(socket.gethostname())
    if os.environ.get("MASTER_ADDR"):
        addr = os.environ["MASTER_ADDR"]
    elif len(set(hosts)) == 1:
        addr = "127.0.0.1"
    else:
        addr = hosts[0]
    port = None
    if comm.rank == 0:
        port = int(os.environ["MASTER_PORT"]) if os.environ.get("MASTER_PORT") else _free_port()
    return addr, int(comm.bcast(port, root=0))


@dataclass
class Dist:
    """This process's place in the job, and the collectives training uses.

    Attributes:
        rank, size: position in ``COMM_WORLD``; ``size == 1`` means no process group exists.
        local_rank, local_size: position among the ranks on this node.
        device: where this rank computes (``cuda:k`` with NCCL, else ``cpu``).
        backend: ``"nccl"``, ``"gloo"`` or ``"none"`` (size 1).
        bytes_allreduced: bytes this rank passed to all-reduce (``allreduce_`` + ``allreduce_grads``).
        comm: the mpi4py communicator (``None`` for a single process without a launcher).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str = "none"
    threads: int = 1
    comm: object = None
    bytes_allreduced: int = 0
    peers: list = field(default_factory=list)   # (hostname, pid) of every rank, for naming a lost rank

    def lost_ranks(self) -> list[int]:
        """Ranks on this host whose process is gone (or a zombie): whom to name when a collective fails."""
        host = socket.gethostname()
        return [r for r, (h, pid) in enumerate(self.peers) if r != self.rank and h == host and not _alive(pid)]

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a ``torch.distributed`` process group carries the collectives (size > 1)."""
        return self.size > 1

    # ---- tensor collectives (torch.distributed, with the process-group timeout) ----
    def allreduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all ranks, in place; returns it. A no-op for size 1."""
        if self.distributed:
            import torch.distributed as td
            td.all_reduce(tensor, op=td.ReduceOp.SUM)
            self.bytes_allreduced += tensor.numel() * tensor.element_size()
        return tensor

    def allreduce_grads(self, params) -> None:
        """Sum the gradients of ``params`` over ranks with ONE all-reduce of a flat bucket.

        Every rank must pass the same parameters in the same order. A parameter whose ``.grad`` is
        ``None`` contributes zeros (and receives the summed gradient). Parameters of different dtypes
        would need one bucket each; mixed dtypes raise ``ValueError``. Sum, not mean: the loss is
        already normalised by the global count of owned nodes (DESIGN §2).
        """
        params = [p for p in params if p.requires_grad]
        if not self.distributed or not params:
            return
        dtypes = {p.dtype for p in params}
        if len(dtypes) != 1:
            raise ValueError(f"allreduce_grads: one dtype per bucket expected, got {sorted(map(str, dtypes))}")
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        bucket = torch.cat([g.reshape(-1) for g in grads])
        self.allreduce_(bucket)
        offset = 0
        for p in params:
            n = p.numel()
            chunk = bucket[offset:offset + n].view_as(p)
            if p.grad is None:
                p.grad = chunk.clone()
            else:
                p.grad.copy_(chunk)
            offset += n

    def barrier(self) -> None:
        """Wait for every rank (process-group barrier, so it honours the timeout)."""
        if self.distributed:
            import torch.distributed as td
            td.barrier()

    # ---- object collectives (MPI pickles; size 1 needs no MPI) ----
    def broadcast_object(self, obj=None, root: int = 0):
        """``obj`` from ``root`` on every rank (any picklable object)."""
        if self.comm is None or self.size == 1:
            return obj
        return self.comm.bcast(obj, root=root)

    def gather_object(self, obj, root: int = 0):
        """List of every rank's ``obj`` (rank order) on ``root``; ``None`` elsewhere."""
        if self.comm is None or self.size == 1:
            return [obj]
        return self.comm.gather(obj, root=root)

    def abort(self, code: int = 1) -> None:
        """Kill the whole job (``MPI.COMM_WORLD.Abort``); a plain exit for a single process."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.comm is not None and self.size > 1:
            self.comm.Abort(code)
        os._exit(code)

    def finalize(self) -> None:
        """Wait for every rank, then tear down the process group, joining its worker threads (MPI finalizes
        itself at interpreter exit). Call it once, at the end of a successful run."""
        if self.distributed:
            import torch.distributed as td
            if td.is_initialized():
                td.barrier()
                td.destroy_process_group()


def init_from_mpi(backend: str = "auto", timeout_s: float = 60) -> Dist:
    """Set up this rank: MPI coordinates, a ``torch.distributed`` group (size > 1), threads, device.

    Args:
        backend: ``"auto"`` (NCCL if CUDA is available, else gloo), ``"gloo"`` or ``"nccl"``.
        timeout_s: the process-group timeout every collective honours (seconds).
    Returns:
        :class:`Dist`. Size 1 (no launcher, or one rank) creates no process group. Calling it again
        returns a new ``Dist`` on the already initialised group.
    """
    if backend not in ("auto", "gloo", "nccl"):
        raise ValueError(f"backend: expected auto, gloo or nccl, got {backend!r}")
    comm = None
    rank, size, local_rank, local_size = 0, 1, 0, 1
    if _launched_by_mpi():
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        rank, size = comm.rank, comm.size
        local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
        local_rank, local_size = local.rank, local.size
        local.Free()
    threads = _set_threads(local_size)
    backend, device = _pick_device(backend, local_rank)
    dist = Dist(rank=rank, size=size, local_rank=local_rank, local_size=local_size, device=device,
                backend=backend if size > 1 else "none", threads=threads, comm=comm)
    import torch.distributed as td
    if size > 1:
        dist.peers = comm.allgather((socket.gethostname(), os.getpid()))
    if size > 1 and not td.is_initialized():  # a second call reuses the existing group
        # torch.distributed.nn binds ``group.WORLD`` as a default argument when it is imported, and the first
        # custom-op call imports it (via torch._dynamo); imported after init_process_group it would keep the
        # group alive past destroy_process_group, and its gloo threads would then race interpreter shutdown
        # (a worker freeing a tensor after finalization began aborts the rank with SIGABRT). Import it first.
        import torch.distributed.nn  # noqa: F401
        addr, port = _rendezvous(comm)
        for k, v in (("RANK", rank), ("WORLD_SIZE", size), ("LOCAL_RANK", local_rank),
                     ("MASTER_ADDR", addr), ("MASTER_PORT", port)):
            os.environ.setdefault(k, str(v))
        td.init_process_group(backend, init_method=f"tcp://{addr}:{port}", rank=rank, world_size=size,
                              timeout=timedelta(seconds=timeout_s))
    return dist


def report_exception(rank: int, exc: BaseException) -> None:
    """Print ``rank R: <Type>: <message>`` (with the traceback, unless it is a user error) to stderr."""
    from .errors import MeshgnnError
    if not isinstance(exc, MeshgnnError):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"rank {rank}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def abort_on_exception(dist: Dist):
    """Turn an exception on one rank into the end of the whole job.

    Inside the block, any exception (``KeyboardInterrupt`` included; ``SystemExit(0)`` excepted) is
    printed as ``rank R: <Type>: <message>`` and, for size > 1, ``MPI.COMM_WORLD.Abort(1)`` follows, so
    the launcher kills all ranks instead of leaving them blocked in a collective. For size 1 the
    exception propagates normally after the message.
    """
    try:
        yield dist
    except SystemExit as e:
        if e.code in (0, None) or dist.size == 1:
            raise
        report_exception(dist.rank, e)
        dist.abort(1)
    except BaseException as e:  # noqa: BLE001 - any failure must end the job
        report_exception(dist.rank, e)
        if dist.size == 1:
            raise
        lost = _wait_for_lost_ranks(dist, e)   # a collective failed because a peer died: name it (mpirun may not)
        if lost:
            print(f"rank {dist.rank}: lost rank {', '.join(map(str, lost))} (process gone); ending the job",
                  file=sys.stderr, flush=True)
        dist.abort(1)


def _wait_for_lost_ranks(dist: Dist, exc: BaseException, patience_s: float = 2.0) -> list[int]:
    """Ranks found dead on this host; a peer's socket closes while it exits, so look again for ``patience_s``
    (not for user errors, which no dead peer causes)."""
    import time

    from .errors import MeshgnnError

    deadline = time.monotonic() + (0.0 if isinstance(exc, MeshgnnError) else patience_s)
    while True:
        lost = dist.lost_ranks()
        if lost or time.monotonic() >= deadline:
            return lost
        time.sleep(0.05)


def install_excepthook(dist: Dist) -> None:
    """``sys.excepthook`` that prints ``rank R: ...`` and aborts the MPI job (size > 1)."""

    def hook(etype, value, tb):
        report_exception(dist.rank, value)
        if dist.size > 1:
            dist.abort(1)

    sys.excepthook = hook
