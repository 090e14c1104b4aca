"""Starting a job whatever launched it, and the few collectives training and rollout need.

One call sets a job up::

    from meshgnn.distributed import init_distributed, abort_on_exception
    dist = init_distributed()       # mpirun -n 4 ..., srun ..., torchrun --nproc_per_node 4 ..., or plain `python ...`
    with abort_on_exception(dist):
        ...
        loss.backward()
        dist.allreduce_grads(model.parameters())   # ONE all-reduce of a flat gradient bucket
    dist.finalize()

Launchers (:func:`detect_launcher`, the one reader of the launcher's environment; docs/design.md, "Launchers"):

* ``mpi`` — Open MPI (``OMPI_COMM_WORLD_*``), MPICH/Hydra and Intel MPI (``PMI_RANK``/``PMI_SIZE``,
  ``MPI_LOCALRANKID``/``MPI_LOCALNRANKS``), PMIx (``PMIX_RANK``, e.g. ``srun --mpi=pmix``), MVAPICH
  (``MV2_COMM_WORLD_*``), or ``MESHGNN_USE_MPI=1``. Rank and size come from mpi4py's ``COMM_WORLD`` (and are
  checked against the launcher's: an mpi4py built for another MPI would see size 1 in every process); the
  ``torch.distributed`` rendezvous is derived over MPI (rank 0 picks a free port, or ``MASTER_PORT``; the address
  is ``MASTER_ADDR``, else ``127.0.0.1`` on one host, else rank 0's hostname) with ``init_method="tcp://..."``.
* ``torchrun`` — ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``:
  ``init_method="env://"``; MPI is not needed (object collectives go through ``torch.distributed``).
* ``slurm`` — plain ``srun`` (no MPI plugin): ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``, ``SLURM_LOCALID``,
  ``SLURM_STEP_TASKS_PER_NODE``; the address is ``MASTER_ADDR``, else ``127.0.0.1`` on one node, else the first
  host of ``SLURM_STEP_NODELIST``; the port ``MASTER_PORT``, else one derived from the job and step ids.
* ``single`` — none of these, or a launcher with one process: size 1, no process group, every collective a local
  no-op (``allreduce_`` leaves the tensor as is, ``gather_object`` returns ``[obj]``). ``Dist()`` is that job.

Anything else that says several processes were started (``WORLD_SIZE`` > 1 without ``RANK``/``MASTER_ADDR``,
IBM ``jsrun``'s ``JSM_NAMESPACE_SIZE``, Cray PALS/ALPS ranks without PMI) is refused with a one-line
:class:`~meshgnn.errors.MeshgnnError` rather than run as several independent single-rank jobs.

Backend ``"auto"`` is NCCL when CUDA is available (device ``cuda:local_rank % device_count``), else gloo.

Threads. Unless the user set ``OMP_NUM_THREADS``, each rank uses ``max(1, cores // local ranks)``
intra-op threads (cores = the CPUs this process may run on), so ranks on one node do not oversubscribe it.

Failure. A rank that dies must not leave the others waiting forever:
  * every ``torch.distributed`` collective carries the process-group timeout (``timeout_s``; gloo
    honours it, and it notices a closed peer socket at once), so a survivor raises instead of hanging;
  * :func:`abort_on_exception` (a context manager) and :func:`install_excepthook` turn any uncaught
    exception into ``rank R: <Type>: <message>`` on stderr followed by ``MPI.COMM_WORLD.Abort(1)`` (or, without
    MPI, the process's exit, which torchrun and srun answer by ending the other ranks);
  * a rank that exits with a non-zero status is torn down by the launcher itself (it names the rank).
Object collectives (``broadcast_object``, ``gather_object``) use MPI when it launched the job, else
``torch.distributed``.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
import traceback
from dataclasses import dataclass, field
from datetime import timedelta

import torch

from .errors import MeshgnnError, user_errors

#: Launcher variables naming a process's MPI rank or size (any one present: an MPI launch).
MPI_VARS = ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMI_SIZE", "PMI_RANK", "PMIX_RANK",
            "MPI_LOCALNRANKS", "MV2_COMM_WORLD_SIZE")
#: Variables of launchers this module cannot join (IBM jsrun's size; Cray PALS/ALPS ranks without PMI); a size > 1
#: or a rank > 0 means several processes were started.
FOREIGN_VARS = ("JSM_NAMESPACE_SIZE", "PALS_RANKID", "ALPS_APP_PE")


@dataclass(frozen=True)
class Launch:
    """What started this process. ``kind``: ``"single"``, ``"mpi"``, ``"torchrun"`` or ``"slurm"``; rank, size,
    local_rank, local_size as the launcher's environment states them (for ``mpi`` MPI itself has the last word)."""

    kind: str = "single"
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1


def _int(env, *names, default=None):
    for n in names:
        v = env.get(n)
        if v is not None and str(v).strip().lstrip("-").isdigit():
            return int(v)
    return default


def _slurm_local_size(env) -> int:
    """Tasks on this node from ``SLURM_STEP_TASKS_PER_NODE`` (e.g. ``"4(x2),3"``) and ``SLURM_NODEID``."""
    spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or ""
    counts = []
    for item in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if m:
            counts += [int(m.group(1))] * int(m.group(2) or 1)
    node = _int(env, "SLURM_NODEID", default=0)
    return counts[node] if 0 <= node < len(counts) else 1


def first_host(nodelist: str) -> str:
    """The first host of a Slurm hostlist: ``"gpu[003-005,9],cpu1"`` -> ``"gpu003"``."""
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            end = i
            break
    return re.sub(r"\[([^\],-]+)[^\]]*\]", r"\1", nodelist[:end])


def detect_launcher(env=None) -> Launch:
    """The one reader of launcher environments (see the module docstring); raises :class:`MeshgnnError` (one
    line) for a multi-process environment it cannot join."""
    env = os.environ if env is None else env
    if any(v in env for v in MPI_VARS) or env.get("MESHGNN_USE_MPI") == "1":
        size = _int(env, "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS",
                    default=0)
        return Launch("mpi", _int(env, "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK",
                                  default=0), size,
                      _int(env, "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK",
                           default=0),
                      _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_LOCAL_SIZE",
                           default=0))
    world = _int(env, "WORLD_SIZE", default=None)
    if world is not None and world > 1:
        missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not env.get(v)]
        if missing:
            raise MeshgnnError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: not a torchrun/torch."
                               "distributed launch meshgnn can join (use torchrun, mpirun or srun)")
        local_size = _int(env, "LOCAL_WORLD_SIZE", default=world)
        return Launch("torchrun", _int(env, "RANK"), world, _int(env, "LOCAL_RANK", default=0), local_size)
    slurm_size = _int(env, "SLURM_STEP_NUM_TASKS", default=None)
    if slurm_size is not None and slurm_size > 1 and "SLURM_PROCID" in env:
        return Launch("slurm", _int(env, "SLURM_PROCID"), slurm_size, _int(env, "SLURM_LOCALID", default=0),
                      _slurm_local_size(env))
    several = [v for v in FOREIGN_VARS if _int(env, v, default=0) > (1 if v == "JSM_NAMESPACE_SIZE" else 0)]
    several += [v for v in ("RANK", "LOCAL_RANK") if _int(env, v, default=0) > 0]   # a rank > 0 of an unknown job
    for v in several:
        raise MeshgnnError(f"{v}={env[v]}: this process is one of several started by a launcher meshgnn cannot "
                               "join; launch with mpirun/mpiexec (MPI), srun or torchrun")
    return Launch()


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


def choose_device(request: str = "auto", local_rank: int = 0) -> torch.device:
    """The one device choice: ``"cpu"``, ``"cuda"`` (``cuda:local_rank % device_count``), ``"cuda:k"``, or
    ``"auto"`` (CUDA when available, else the CPU). Raises :class:`MeshgnnError` for CUDA without a GPU."""
    req = str(request or "auto").strip().lower()
    if req == "cpu":
        return torch.device("cpu")
    if req not in ("auto", "cuda") and not re.fullmatch(r"cuda:\d+", req):
        raise MeshgnnError(f"--device: expected auto, cpu, cuda or cuda:K, got {request!r}")
    if not torch.cuda.is_available():
        if req == "auto":
            return torch.device("cpu")
        raise MeshgnnError(f"--device {request}: no CUDA device is available (use --device cpu or auto)")
    if req.startswith("cuda:"):
        return torch.device(req)
    return torch.device("cuda", int(local_rank) % torch.cuda.device_count())


def _pick_device(backend: str, local_rank: int) -> tuple[str, torch.device]:
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    device = choose_device("cuda" if backend == "nccl" else "cpu", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
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
    """This process's place in the job, and the collectives training uses. ``Dist()`` is a single process.

    Attributes:
        rank, size: position in the job; ``size == 1`` means no process group exists.
        local_rank, local_size: position among the ranks on this node.
        device: where this rank computes (``cuda:k`` with NCCL, else ``cpu``).
        backend: ``"nccl"``, ``"gloo"`` or ``"none"`` (size 1).
        bytes_allreduced: bytes this rank passed to all-reduce (``allreduce_`` + ``allreduce_grads``).
        comm: the mpi4py communicator (``None`` for a single process, torchrun or plain srun).
        group: the ``torch.distributed`` process group of the collectives (``None``: the whole job); set on the
            group views :meth:`split_groups` returns.
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
    group: object = None

    def split_groups(self, groups: int) -> "Dist":
        """This rank's view of its group when the job's ranks are cut into ``groups`` contiguous, equal groups
        (data parallelism: each group holds a full copy of the domain). Collective: every rank calls it."""
        if groups == 1:
            return self
        if self.size % groups:
            raise MeshgnnError(f"--data-parallel {groups}: {self.size} ranks do not split into {groups} equal groups")
        m = self.size // groups
        g = self.rank // m
        import torch.distributed as td
        handles = [td.new_group(list(range(k * m, (k + 1) * m))) for k in range(groups)]   # every rank makes all
        comm = self.comm.Split(g, self.rank) if self.comm is not None else None
        return Dist(rank=self.rank % m, size=m, local_rank=self.local_rank, local_size=self.local_size,
                    device=self.device, backend=self.backend if m > 1 else "none", threads=self.threads,
                    comm=comm, peers=self.peers[g * m:(g + 1) * m], group=handles[g])

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
            if self.backend == "nccl" and tensor.device != self.device:   # NCCL reduces device tensors only
                buf = tensor.to(self.device)
                td.all_reduce(buf, op=td.ReduceOp.SUM, group=self.group)
                tensor.copy_(buf)
            else:
                td.all_reduce(tensor, op=td.ReduceOp.SUM, group=self.group)
            self.bytes_allreduced += tensor.numel() * tensor.element_size()
        return tensor

    def allreduce_max_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise maximum of ``tensor`` over all ranks, in place; returns it. A no-op for size 1."""
        if self.distributed:
            import torch.distributed as td
            buf = tensor.to(self.device) if self.backend == "nccl" else tensor
            td.all_reduce(buf, op=td.ReduceOp.MAX, group=self.group)
            if buf is not tensor:
                tensor.copy_(buf)
        return tensor

    def allreduce_grads(self, params) -> None:
        """Sum the gradients of ``params`` over ranks with ONE all-reduce of a flat bucket.

        Every rank must pass the same parameters in the same order. A parameter whose ``.grad`` is
        ``None`` contributes zeros (and receives the summed gradient). Parameters of different dtypes
        would need one bucket each; mixed dtypes raise ``ValueError``. Sum, not mean: the loss is
        already normalised by the global count of owned nodes (docs/design.md, "Exactness").
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
            td.barrier(group=self.group)

    # ---- object collectives (MPI pickles when MPI launched the job, else torch.distributed; size 1: local) ----
    def broadcast_object(self, obj=None, root: int = 0):
        """``obj`` from ``root`` on every rank (any picklable object)."""
        if self.size == 1:
            return obj
        if self.comm is not None:
            return self.comm.bcast(obj, root=root)
        import torch.distributed as td
        box = [obj]
        td.broadcast_object_list(box, src=root)
        return box[0]

    def gather_object(self, obj, root: int = 0):
        """List of every rank's ``obj`` (rank order) on ``root``; ``None`` elsewhere."""
        if self.size == 1:
            return [obj]
        if self.comm is not None:
            return self.comm.gather(obj, root=root)
        import torch.distributed as td
        out = [None] * self.size if self.rank == root else None
        td.gather_object(obj, out, dst=root)
        return out

    def allgather_object(self, obj) -> list:
        """List of every rank's ``obj`` (rank order) on every rank."""
        if self.size == 1:
            return [obj]
        if self.comm is not None:
            return self.comm.allgather(obj)
        import torch.distributed as td
        out = [None] * self.size
        td.all_gather_object(out, obj)
        return out

    def abort(self, code: int = 1) -> None:
        """Kill the whole job (``MPI.COMM_WORLD.Abort``); without MPI exit this process (torchrun and srun
        then end the others)."""
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
                _await_gloo_teardown()


def gloo_threads() -> list[str]:
    """Names of this process's running gloo threads (read from ``/proc/self/task``; empty where there is none)."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return []
    names = []
    for t in tasks:
        try:
            with open(f"/proc/self/task/{t}/comm") as f:
                names.append(f.read().strip())
        except OSError:  # the thread ended while we listed
            continue
    return [s for s in names if s.startswith(("pt_gloo", "gloo"))]


def _await_gloo_teardown(timeout_s: float = 10.0) -> None:
    """Let gloo's transport threads finish after ``destroy_process_group``: its TCP loop thread ends when the last
    reference to the device goes, which can be a Python object awaiting collection or a worker finishing late; one
    still alive at interpreter exit can abort the rank after a successful run."""
    import gc
    import time
    gc.collect()
    deadline = time.monotonic() + timeout_s
    while gloo_threads() and time.monotonic() < deadline:
        time.sleep(0.05)


def init_distributed(backend: str = "auto", timeout_s: float = 60, env=None) -> Dist:
    """Set up this rank, whatever launched it (:func:`detect_launcher`): coordinates, a ``torch.distributed``
    group (size > 1), threads, device.

    Args:
        backend: ``"auto"`` (NCCL if CUDA is available, else gloo), ``"gloo"`` or ``"nccl"``.
        timeout_s: the process-group timeout every collective honours (seconds).
        env: the environment to read (default ``os.environ``).
    Returns:
        :class:`Dist`. Size 1 (no launcher, or one process) creates no process group. Calling it again
        returns a new ``Dist`` on the already initialised group.
    Raises:
        MeshgnnError: an environment of several processes it cannot join, or MPI disagreeing with its launcher.
    """
    if backend not in ("auto", "gloo", "nccl"):
        raise ValueError(f"backend: expected auto, gloo or nccl, got {backend!r}")
    launch = detect_launcher(env)
    comm = None
    if launch.kind == "mpi" and launch.size != 1:
        comm, launch = _mpi_world(launch)
    threads = _set_threads(launch.local_size)
    backend, device = _pick_device(backend, launch.local_rank)
    size = launch.size if launch.kind != "single" else 1
    dist = Dist(rank=launch.rank if size > 1 else 0, size=size, local_rank=launch.local_rank,
                local_size=max(1, launch.local_size), device=device, backend=backend if size > 1 else "none",
                threads=threads, comm=comm)
    if size == 1:
        return dist
    import torch.distributed as td
    if not td.is_initialized():  # a second call reuses the existing group
        # torch.distributed.nn binds ``group.WORLD`` as a default argument when it is imported, and the first
        # custom-op call imports it (via torch._dynamo); imported after init_process_group it would keep the
        # group alive past destroy_process_group, and its gloo threads would then race interpreter shutdown
        # (a worker freeing a tensor after finalization began aborts the rank with SIGABRT). Import it first.
        import torch.distributed.nn  # noqa: F401
        timeout = timedelta(seconds=timeout_s)
        if launch.kind == "torchrun":
            td.init_process_group(backend, init_method="env://", rank=dist.rank, world_size=size, timeout=timeout)
        else:
            addr, port = _rendezvous(comm) if comm is not None else _slurm_rendezvous(os.environ if env is None
                                                                                      else env)
            for k, v in (("RANK", dist.rank), ("WORLD_SIZE", size), ("LOCAL_RANK", dist.local_rank),
                         ("MASTER_ADDR", addr), ("MASTER_PORT", port)):
                os.environ.setdefault(k, str(v))
            td.init_process_group(backend, init_method=f"tcp://{addr}:{port}", rank=dist.rank, world_size=size,
                                  timeout=timeout)
    dist.peers = dist.allgather_object((socket.gethostname(), os.getpid()))
    return dist


def _mpi_world(launch: Launch):
    """(mpi4py ``COMM_WORLD``, the launch with MPI's rank/size/local numbers); refuses a size MPI does not see."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise MeshgnnError("started by an MPI launcher but mpi4py is not installed (pip install 'meshgnn[mpi]', "
                           "or mpi4py built for the site MPI as in jobs/README.md, or launch with torchrun)") from None
    comm = MPI.COMM_WORLD
    if launch.size > 1 and comm.size != launch.size:
        raise MeshgnnError(f"the launcher started {launch.size} processes but MPI (mpi4py) sees {comm.size}: "
                           "mpi4py is built for another MPI than this mpirun; use the matching mpirun")
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)
    out = Launch("mpi", comm.rank, comm.size, local.rank, local.size)
    local.Free()
    return comm, out


def _slurm_rendezvous(env) -> tuple[str, int]:
    """``(addr, port)`` for plain srun: MASTER_ADDR or 127.0.0.1 (one node) or the step's first host;
    MASTER_PORT or 20000 + (job id * 16 + step id) mod 20000."""
    addr = env.get("MASTER_ADDR") or ("127.0.0.1" if _int(env, "SLURM_STEP_NUM_NODES", "SLURM_NNODES", default=1)
                                      == 1 else first_host(env.get("SLURM_STEP_NODELIST")
                                                           or env.get("SLURM_NODELIST", "")))
    port = _int(env, "MASTER_PORT", default=None)
    if port is None:
        port = 20000 + (_int(env, "SLURM_JOB_ID", default=0) * 16 + _int(env, "SLURM_STEP_ID", default=0)) % 20000
    return addr, port


def report_exception(rank: int, exc: BaseException) -> None:
    """Print ``rank R: <Type>: <message>`` (with the traceback, unless it is a user error) to stderr."""
    if not isinstance(exc, user_errors()):
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

    deadline = time.monotonic() + (0.0 if isinstance(exc, user_errors()) else patience_s)
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
