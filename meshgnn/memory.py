"""Process memory settings.

:func:`keep_freed_memory` asks glibc's malloc to keep freed blocks for reuse instead of returning them to the OS:
every tensor larger than glibc's mmap threshold (at most 32 MiB by default) otherwise gets fresh pages from the
kernel, which are zero-filled on first touch. A 4 x 32 rollout of a 216k-node mesh on one CPU thread spent more
time in the kernel than in PyTorch (49 s sys vs 32 s user); with freed memory kept it ran 2.5x faster per step
(18.7 -> 7.3 s) at 1.9x the peak RSS (2.8 -> 5.3 GiB), see benchmarks/RESULTS.md. Training keeps many more
tensors alive at once and fragmented the kept memory until it ran out (a 216k-node training step went from 11 GB
to an out-of-memory kill), so only rollout offers it (``meshgnn rollout --malloc-cache true``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
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
