"""Process memory settings.

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
