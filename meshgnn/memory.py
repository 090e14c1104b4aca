"""Process memory settings.

:func:`allocator_env` picks a caching ``malloc`` for the CLI (``--allocator``, default ``auto``): jemalloc, else
tcmalloc, loaded with ``LD_PRELOAD`` by re-executing the command once at start (:func:`reexec_with_allocator`,
before torch or MPI load). Every freed CPU tensor larger than glibc's mmap threshold otherwise goes back to the
kernel and its successor is zero-filled page by page: on an Intel Xeon VM a 15 x 128 training step of a
10,648-node mesh spent more CPU time in the kernel than in PyTorch (sys 13 s, user 12 s, 4.3M page faults; 15.2 s
per step), with jemalloc 5.8 s (sys 0.2 s); on the fused step 12.7 s -> 4.5 s at 0.97x glibc's peak RSS
(benchmarks/bench_allocator.py, benchmarks/RESULTS.md "Fused MLPs"). ``--allocator system`` keeps glibc (what
``--memory-budget`` plans for: the planner budgets the live peak).

:func:`keep_freed_memory` asks glibc's malloc to keep freed blocks for reuse instead of returning them to the OS:
every tensor larger than glibc's mmap threshold (at most 32 MiB by default) otherwise gets fresh pages from the
kernel, which are zero-filled on first touch. A 4 x 32 rollout of a 216k-node mesh on one CPU thread spent more
time in the kernel than in PyTorch (49 s sys vs 32 s user); with freed memory kept it ran 2.5x faster per step
(18.7 -> 7.3 s) at 1.9x the peak RSS (2.8 -> 5.3 GiB), see benchmarks/RESULTS.md. Training keeps many more
tensors alive at once and fragmented the kept memory until it ran out (a 216k-node training step went from 11 GB
to an out-of-memory kill), so only rollout offers it (``meshgnn rollout --malloc-cache true``).

:func:`enable_huge_pages` attacks the same cost for every tensor size: PyTorch's CPU allocator backs each
allocation of >= 2 MiB with transparent huge pages (``THP_MEM_ALLOC_ENABLE=1``: 2 MiB-aligned blocks given
``madvise(MADV_HUGEPAGE)``), so a fresh tensor costs one fault per 2 MiB instead of one per 4 KiB. Whether that
pays depends on the machine, so it is **off unless asked for** (``THP_MEM_ALLOC_ENABLE=1`` in the environment,
which PyTorch reads itself, or this function before torch loads). Measured (benchmarks/RESULTS.md, "Huge
pages"): on an AMD EPYC VM a 15 x 128 training step went 18.2 -> 15.0 s with it; on an Intel Xeon VM (THP mode
and defrag ``madvise``) a 15 x 128 step of a 4,845-node mesh went 2.2 -> 4.3-4.8 s and a 4 x 32 step 0.31 ->
0.39 s, the extra time all in the kernel (sys 16 -> 28 s).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_LIMIT = 2**31 - 1          # mallopt takes an int: blocks up to 2 GiB come from (and go back to) the heap


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to 2 GiB; True when applied (False: not glibc, or refused)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, _LIMIT)) and bool(mallopt(_M_TRIM_THRESHOLD, _LIMIT))


THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_pages_supported() -> bool:
    """True on Linux when the kernel's transparent-huge-page mode is ``always`` or ``madvise``."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open(THP_SETTING) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def enable_huge_pages() -> bool:
    """Set ``THP_MEM_ALLOC_ENABLE=1`` unless the environment already says otherwise; True when it takes effect.

    PyTorch reads the variable once, at its first CPU allocation, so this must run before ``import torch``;
    afterwards (or without kernel support, see :func:`huge_pages_supported`) it returns False and changes nothing.
    """
    if "torch" in sys.modules or not huge_pages_supported():
        return False
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return os.environ["THP_MEM_ALLOC_ENABLE"] == "1"


# ------------------------------------------------------------------------------------------------ allocator
ALLOCATORS = ("auto", "jemalloc", "tcmalloc", "system")
_LIBRARIES = {"jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
              "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so")}
# jemalloc: keep freed pages (no decay-driven purging: a training step frees and re-allocates the same sizes
# every few seconds, and purged pages fault back in zero-filled)
_JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
_ACTIVE = "MESHGNN_ALLOCATOR_ACTIVE"        # set in the re-executed process: never re-exec twice


def find_allocator(name: str) -> str | None:
    """Path of the shared library of allocator ``name`` (jemalloc/tcmalloc), or None when not installed."""
    dirs = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib",
            *filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(":"))]
    if os.environ.get("CONDA_PREFIX"):
        dirs.insert(0, os.path.join(os.environ["CONDA_PREFIX"], "lib"))
    for lib in _LIBRARIES[name]:
        for d in dirs:
            path = os.path.join(d, lib)
            if os.path.isfile(path):
                return path
    return None


def allocator_env(choice: str, env: dict) -> tuple[str, dict | None]:
    """``(allocator in effect, environment to re-execute with or None)`` for ``--allocator choice``.

    ``auto``: jemalloc, else tcmalloc, else the system's; an explicit library that is not installed is an error
    (ValueError, one line). Already preloaded (or re-executed once): no new environment.
    """
    if choice not in ALLOCATORS:
        raise ValueError(f"--allocator {choice!r}: expected one of {', '.join(ALLOCATORS)}")
    if env.get(_ACTIVE):
        return env[_ACTIVE], None
    if choice == "system" or not sys.platform.startswith("linux"):
        return "system", None
    names = ["jemalloc", "tcmalloc"] if choice == "auto" else [choice]
    for name in names:
        path = find_allocator(name)
        if path:
            break
    else:
        if choice != "auto":
            raise ValueError(f"--allocator {choice}: lib{choice} not found (Debian: apt-get install "
                             f"{'libjemalloc2' if choice == 'jemalloc' else 'libtcmalloc-minimal4'}; or pass "
                             f"--allocator system)")
        return "system", None
    preload = env.get("LD_PRELOAD", "")
    if os.path.basename(path).split(".so")[0] in preload:
        return name, None
    new = dict(env, LD_PRELOAD=":".join(filter(None, [path, preload])), **{_ACTIVE: name})
    if name == "jemalloc":
        new.setdefault("MALLOC_CONF", _JEMALLOC_CONF)
    return name, new


def reexec_with_allocator(choice: str, argv: list[str]) -> str:
    """Re-execute ``python *argv`` (e.g. ``["-m", "meshgnn.cli", "train", ...]`` or a script and its arguments)
    with the chosen allocator preloaded (does not return then); returns the allocator in effect when no
    re-execution is needed. Call before torch or MPI load."""
    name, env = allocator_env(choice, dict(os.environ))
    if env is None:
        return name
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv], env)   # replaces this process; raises OSError on failure


def allocator_in_effect() -> str:
    """The malloc this process runs on: jemalloc or tcmalloc when mapped (/proc/self/maps), else system."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return "system"
    return next((n for n in ("jemalloc", "tcmalloc") if f"lib{n}" in maps), "system")

