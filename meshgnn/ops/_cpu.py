"""CPU kernels: the C++ CSR kernels (``csr_kernels.cpp``) built on first use, with a pure-torch fallback.

The C++ source has no torch headers, so ``g++ -O3 -fopenmp`` builds it in about a second; the shared library is
cached under ``$MESHGNN_CACHE`` (default ``~/.cache/meshgnn/ops``) keyed by source, flags and CPU, and is loaded
with :mod:`ctypes`. If no compiler is found or the build fails, every kernel falls back to pure torch (slower but
equally correct and deterministic on CPU); ``MESHGNN_OPS_NO_CPP=1`` forces the fallback.

All functions take contiguous 2-D tensors: ``values``/``c``/``out`` are ``(E, F)``, ``x``/``a``/``b`` are
``(N, F)``, index tensors are int64.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("csr_kernels.cpp")
_FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]
_DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2}
_MIN_PARALLEL_ELEMENTS = 1 << 15  # below this, one thread (the result does not depend on the thread count)

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_lib_error: str | None = None


def _cache_dir() -> Path:
    root = os.environ.get("MESHGNN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "meshgnn")
    return Path(root) / "ops"


def _cpu_signature() -> str:
    """CPU model and feature flags: ``-march=native`` binaries must not be reused on another CPU."""
    try:
        with open("/proc/cpuinfo") as fh:
            lines = [ln for ln in fh if ln.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _build(compiler: str) -> Path:
    """Compile the kernels into the cache (atomically: temp file, then rename) and return the library path."""
    src = _SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([src, " ".join(_FLAGS).encode(), compiler.encode(),
                                      platform.machine().encode(), _cpu_signature().encode()])).hexdigest()[:16]
    lib = _cache_dir() / f"csr_kernels_{key}.so"
    if lib.exists():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib.parent)
    os.close(fd)
    try:
        proc = subprocess.run([compiler, *_FLAGS, str(_SOURCE), "-o", tmp], capture_output=True, text=True,
                              timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{compiler} failed:\n{proc.stderr[-2000:]}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


def _load() -> ctypes.CDLL:
    import torch  # noqa: F401  (torch's libgomp must be loaded first so the kernels share its OpenMP runtime)

    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise RuntimeError("no C++ compiler found (set CXX)")
    lib = ctypes.CDLL(str(_build(compiler)))
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.meshgnn_segment_sum.argtypes = [i32, p, p, p, p, i64, i64, i32]
    lib.meshgnn_segment_expand.argtypes = [i32, p, p, p, i64, i64, i32]
    lib.meshgnn_gather_add.argtypes = [i32, p, p, p, p, p, p, i64, i64, i32]
    lib.meshgnn_relu_backward.argtypes = [i32, p, p, p, i64, i64, i32]
    for fn in (lib.meshgnn_segment_sum, lib.meshgnn_segment_expand, lib.meshgnn_gather_add,
               lib.meshgnn_relu_backward):
        fn.restype = i32
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled kernel library, building it on first call; ``None`` (with one warning) if unavailable."""
    global _lib, _lib_error
    if _lib is not None or _lib_error is not None:
        return _lib
    with _lock:
        if _lib is None and _lib_error is None:
            if os.environ.get("MESHGNN_OPS_NO_CPP", "") not in ("", "0"):
                _lib_error = "disabled by MESHGNN_OPS_NO_CPP"
            else:
                try:
                    _lib = _load()
                except Exception as exc:  # any build/load failure -> pure-torch fallback
                    _lib_error = f"{type(exc).__name__}: {exc}"
                    warnings.warn(f"meshgnn.ops: C++ CPU kernels unavailable, using the pure-torch fallback "
                                  f"({_lib_error})", RuntimeWarning, stacklevel=3)
    return _lib


def kernel_name() -> str:
    """``"c++"`` when the compiled kernels are in use on CPU, else ``"torch"``."""
    return "c++" if library() is not None else "torch"


def _native(t: torch.Tensor) -> ctypes.CDLL | None:
    return library() if t.device.type == "cpu" and t.dtype in _DTYPE_CODE else None


def _threads(elements: int) -> int:
    return 1 if elements < _MIN_PARALLEL_ELEMENTS else torch.get_num_threads()


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _check(rc: int) -> None:
    if rc != 0:
        raise RuntimeError(f"meshgnn.ops C++ kernel returned {rc}")


def segment_sum(values: torch.Tensor, rowptr: torch.Tensor, perm: torch.Tensor | None = None) -> torch.Tensor:
    """``out[i] = sum_{j in rowptr[i]:rowptr[i+1]} values[perm[j] if perm else j]``; ``(E,F) -> (N,F)``."""
    n, F = rowptr.numel() - 1, values.shape[1]
    lib = _native(values)
    if lib is None or n == 0 or F == 0:
        return fallback_segment_sum(values, rowptr, perm)
    out = values.new_empty((n, F))
    _check(lib.meshgnn_segment_sum(_DTYPE_CODE[values.dtype], _ptr(values), _ptr(rowptr), _ptr(perm), _ptr(out),
                                   n, F, _threads(values.numel())))
    return out


def segment_expand(x: torch.Tensor, rowptr: torch.Tensor, num_edges: int) -> torch.Tensor:
    """``out[j] = x[i]`` for the edges ``j`` of row ``i``; ``(N,F) -> (E,F)``."""
    n, F = rowptr.numel() - 1, x.shape[1]
    lib = _native(x)
    if lib is None or num_edges == 0 or F == 0:
        return fallback_segment_expand(x, rowptr, num_edges)
    out = x.new_empty((num_edges, F))
    _check(lib.meshgnn_segment_expand(_DTYPE_CODE[x.dtype], _ptr(x), _ptr(rowptr), _ptr(out), n, F,
                                      _threads(out.numel())))
    return out


def gather_add(a, b, c, senders, receivers, rowptr) -> torch.Tensor:
    """``out[j] = a[senders[j]] + b[receivers[j]] + c[j]``; ``(N,F),(N,F),(E,F) -> (E,F)``."""
    n, F = rowptr.numel() - 1, c.shape[1]
    lib = _native(c)
    if lib is None or c.shape[0] == 0 or F == 0:
        return a[senders] + b[receivers] + c
    out = torch.empty_like(c)
    _check(lib.meshgnn_gather_add(_DTYPE_CODE[c.dtype], _ptr(a), _ptr(b), _ptr(c), _ptr(senders), _ptr(rowptr),
                                  _ptr(out), n, F, _threads(c.numel())))
    return out


def relu_backward_(grad: torch.Tensor, result: torch.Tensor, colsum: bool = True) -> torch.Tensor | None:
    """In place ``grad[result <= 0] = 0`` (ReLU's backward from its output ``result``), ``(M,F)``; returns the column
    sums ``(F,)`` of the new ``grad`` (the bias gradient of the Linear before the ReLU), or None without ``colsum``.
    One pass over ``grad`` instead of threshold_backward + sum; summed in fixed row blocks (thread-count
    independent)."""
    lib = _native(grad)
    if lib is None or grad.numel() == 0 or grad.dtype != result.dtype:
        grad.masked_fill_(result <= 0, 0)
        return grad.sum(0) if colsum else None
    out = grad.new_empty(grad.shape[1]) if colsum else None
    _check(lib.meshgnn_relu_backward(_DTYPE_CODE[grad.dtype], _ptr(grad), _ptr(result), _ptr(out), grad.shape[0],
                                     grad.shape[1], _threads(grad.numel())))
    return out


def fallback_segment_sum(values, rowptr, perm=None) -> torch.Tensor:
    """Pure-torch segment sum, deterministic: on CPU ``index_add_`` walks the edges in order."""
    n = rowptr.numel() - 1
    if perm is not None:
        values = values.index_select(0, perm)
    if values.is_cuda:  # index_add_ uses atomics on CUDA; segment_reduce sums each segment in one thread block
        return torch.segment_reduce(values, "sum", offsets=rowptr, axis=0)
    return values.new_zeros((n, values.shape[1])).index_add_(0, rows_of_edges(rowptr, values.shape[0]), values)


def fallback_segment_expand(x, rowptr, num_edges: int) -> torch.Tensor:
    """Pure-torch ``x[receivers]``."""
    return x.index_select(0, rows_of_edges(rowptr, num_edges))


def rows_of_edges(rowptr: torch.Tensor, num_edges: int) -> torch.Tensor:
    """Receiver of every edge from the CSR row pointer, ``(N+1,) -> (E,)``."""
    n = rowptr.numel() - 1
    return torch.repeat_interleave(torch.arange(n, device=rowptr.device), rowptr.diff(), output_size=num_edges)
