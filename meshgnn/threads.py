"""CPU threads per process: the cores this rank may use, divided among the ranks that share them.

PyTorch's intra-op pool and the C++ kernels in ``meshgnn/ops`` both run on OpenMP. By default each process
starts one OpenMP thread per core of the machine, so ``mpirun -n 4`` on one node runs 4 x cores threads, and on
a box that also runs other work every thread fights for a core; idle OpenMP threads also spin before they sleep,
burning the time the busy ones need. :func:`configure_threads` therefore sets, before PyTorch loads:

- ``OMP_NUM_THREADS`` = :func:`choose_threads`: an explicit ``--threads N`` wins, then an ``OMP_NUM_THREADS`` the
  user exported, else the cores this process may use (``os.sched_getaffinity``; under ``srun`` at most
  ``SLURM_CPUS_PER_TASK``) divided by the ranks started on this node (Open MPI ``OMPI_COMM_WORLD_LOCAL_SIZE``,
  MPICH/Hydra ``MPI_LOCALNRANKS``, torchrun ``LOCAL_WORLD_SIZE``, Slurm tasks per node), at least 1 -- less the
  cores other programs keep busy: when that leaves more than one thread per rank, the usable cores' busy time is
  sampled for 0.15 s (``/proc/stat``) and the busy cores, beyond the ranks' own, are left to their owners (a 2-core
  box running two other busy processes gets 1 thread, not 2 threads fighting for time slices);
- ``OMP_WAIT_POLICY=PASSIVE`` unless set: idle OpenMP threads sleep at once instead of spinning. libgomp reads it
  when it loads (with PyTorch), so it must be set before ``import torch``; measured in benchmarks/RESULTS.md,
  "Threads under load".

The ``meshgnn`` command calls :func:`configure_threads` once, before any sub-command imports torch.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Mapping

WAIT_POLICY = "PASSIVE"
# Launcher variables holding the number of ranks on this node, most specific first.
LOCAL_SIZE_VARS = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "LOCAL_WORLD_SIZE", "PMI_LOCAL_SIZE")
SAMPLE_SECONDS = 0.15
SLURM_TASKS_VARS = ("SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE")


@dataclass(frozen=True)
class ThreadChoice:
    """The threads one process uses and why.

    Attributes:
        threads: OpenMP / PyTorch intra-op threads of this process.
        source: ``"--threads"``, ``"OMP_NUM_THREADS"`` or ``"cores / local ranks"``.
        cores: cores this process may run on (affinity, capped by ``SLURM_CPUS_PER_TASK`` under srun).
        local_ranks: processes the launcher started on this node (1 without a launcher).
        busy: cores other work kept busy when sampled (None: not sampled).
        wait_policy: the ``OMP_WAIT_POLICY`` in effect ('' = the OpenMP default, spin then sleep).
        applied: False when PyTorch was already loaded, so the wait policy could not take effect.
    """

    threads: int
    source: str
    cores: int
    local_ranks: int
    wait_policy: str
    busy: float | None = None
    applied: bool = True

    def describe(self) -> str:
        """One line for verbose / ``--debug`` output."""
        policy = self.wait_policy or "default (spin, then sleep)"
        late = "" if self.applied else "; torch was already loaded, the wait policy is the one it started with"
        busy = "" if self.busy is None else f", {self.busy:.1f} busy with other work"
        return (f"threads: {self.threads} per process ({self.source}; {self.cores} usable core(s){busy}, "
                f"{self.local_ranks} rank(s) on this node), OMP_WAIT_POLICY {policy}{late}")


def usable_cores(env: Mapping[str, str] | None = None) -> int:
    """Cores this process may run on: its CPU affinity (``os.cpu_count()`` where that is unknown), capped by
    ``SLURM_CPUS_PER_TASK`` when started by srun (``SLURM_LOCALID`` set)."""
    env = os.environ if env is None else env
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    per_task = _positive(env.get("SLURM_CPUS_PER_TASK"))
    if per_task and "SLURM_LOCALID" in env:
        cores = min(cores, per_task)
    return max(1, cores)


def local_ranks(env: Mapping[str, str] | None = None) -> int:
    """Ranks the launcher started on this node: Open MPI, MPICH/Hydra, torchrun, then Slurm's tasks per node
    (under srun only; ``"2(x3),1"`` lists are read at ``SLURM_NODEID``); 1 without a launcher."""
    env = os.environ if env is None else env
    for var in LOCAL_SIZE_VARS:
        n = _positive(env.get(var))
        if n:
            return n
    if "SLURM_LOCALID" in env:
        node = _positive(env.get("SLURM_NODEID"), allow_zero=True) or 0
        for var in SLURM_TASKS_VARS:
            counts = slurm_counts(env.get(var, ""))
            if counts:
                return counts[min(node, len(counts) - 1)]
    return 1


def slurm_counts(text: str) -> list[int]:
    """Slurm's compressed per-node counts: ``"2(x3),1"`` -> ``[2, 2, 2, 1]``; ``[]`` when unreadable."""
    out: list[int] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item)
        if not m:
            return []
        out += [int(m.group(1))] * int(m.group(2) or 1)
    return [c for c in out if c > 0] if all(c > 0 for c in out) else []


def busy_cores(seconds: float = SAMPLE_SECONDS, cpus=None) -> float | None:
    """Cores of ``cpus`` (default: this process's affinity) busy over the next ``seconds``, from the per-CPU
    counters of ``/proc/stat`` (user+nice+system+irq+softirq+steal over all ticks); None where unreadable."""
    import time

    try:
        cpus = sorted(os.sched_getaffinity(0)) if cpus is None else sorted(cpus)
    except (AttributeError, OSError):
        return None
    a = _cpu_ticks()
    time.sleep(seconds)
    b = _cpu_ticks()
    if not a or not b:
        return None
    busy = 0.0
    for c in cpus:
        if c not in a or c not in b:
            return None
        (busy_a, all_a), (busy_b, all_b) = a[c], b[c]
        if all_b > all_a:
            busy += (busy_b - busy_a) / (all_b - all_a)
    return busy


def _cpu_ticks() -> dict[int, tuple[int, int]]:
    """``{cpu: (busy ticks, all ticks)}`` from /proc/stat; {} where unreadable."""
    out = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                if not line.startswith("cpu") or line.startswith("cpu "):
                    continue
                name, *vals = line.split()
                v = [int(x) for x in vals[:8]] + [0] * max(0, 8 - len(vals))
                user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
                busy = user + nice + system + irq + softirq + steal
                out[int(name[3:])] = (busy, busy + idle + iowait)
    except (OSError, ValueError):
        return {}
    return out


def choose_threads(explicit: int | None = None, env: Mapping[str, str] | None = None,
                   cores: int | None = None, busy: float | None | bool = True) -> ThreadChoice:
    """The threads for this process (see the module docs); changes nothing.

    Args:
        explicit: ``--threads`` (wins over everything).
        env: the environment (default ``os.environ``).
        cores: usable cores (default :func:`usable_cores`).
        busy: cores busy with other work; True: sample with :func:`busy_cores` when that could change the
            answer; False/None: do not sample.
    """
    env = os.environ if env is None else env
    cores = usable_cores(env) if cores is None else int(cores)
    ranks = local_ranks(env)
    policy = env.get("OMP_WAIT_POLICY", WAIT_POLICY)
    if explicit is not None:
        if int(explicit) < 1:
            from .errors import MeshgnnError
            raise MeshgnnError(f"--threads must be >= 1, got {explicit}")
        return ThreadChoice(int(explicit), "--threads", cores, ranks, policy)
    user = _positive(env.get("OMP_NUM_THREADS", "").split(",")[0])
    if user:
        return ThreadChoice(user, "OMP_NUM_THREADS", cores, ranks, policy)
    share = max(1, cores // ranks)
    if busy is True:
        busy = busy_cores() if share > 1 else None
    elif busy is False:
        busy = None
    if busy is None:
        return ThreadChoice(share, "cores / local ranks", cores, ranks, policy)
    others = max(0, round(busy - (ranks - 1)))        # the other ranks of this job may be busy starting up
    free = max(1, (cores - others) // ranks)
    return ThreadChoice(min(share, free), "cores / local ranks, less busy cores" if free < share else
                        "cores / local ranks", cores, ranks, policy, busy=busy)


def configure_threads(explicit: int | None = None) -> ThreadChoice:
    """Apply :func:`choose_threads` to this process: ``OMP_NUM_THREADS`` and ``OMP_WAIT_POLICY`` in the
    environment (inherited by children; read by OpenMP when PyTorch loads).

    Where PyTorch is already loaded (the CLI called from Python, tests) the wait policy cannot change any more
    (``applied`` is False) and the process keeps its thread count unless ``explicit`` asks for one
    (``torch.set_num_threads``)."""
    loaded = "torch" in sys.modules
    if loaded and explicit is None:
        torch = sys.modules["torch"]
        return ThreadChoice(torch.get_num_threads(), "kept (torch was already loaded)", usable_cores(),
                            local_ranks(), os.environ.get("OMP_WAIT_POLICY", ""), applied=False)
    choice = choose_threads(explicit)
    os.environ["OMP_NUM_THREADS"] = str(choice.threads)
    if not loaded:
        os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
    else:
        sys.modules["torch"].set_num_threads(choice.threads)
    return ThreadChoice(choice.threads, choice.source, choice.cores, choice.local_ranks,
                        os.environ.get("OMP_WAIT_POLICY", ""), busy=choice.busy, applied=not loaded)


def _positive(text, allow_zero: bool = False) -> int | None:
    try:
        n = int(str(text).strip())
    except (TypeError, ValueError):
        return None
    return n if n > 0 or (allow_zero and n == 0) else None
