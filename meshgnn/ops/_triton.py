"""Triton GPU kernels for receiver-sorted CSR graphs (used for CUDA tensors when triton is importable).

Each program handles a block of ``ROWS`` consecutive CSR rows (nodes) and ``BLOCK_F`` features as one
``(ROWS, BLOCK_F)`` tile, and walks the rows' edges in lock-step: step ``k`` loads edge ``start + k`` of every row in
the tile that has one (masked), so a program keeps ``ROWS`` independent loads in flight instead of one. Every row
still adds its own edges in CSR order, one after the other, so the result does not depend on the tile shape or the
launch configuration: deterministic and bitwise reproducible (no atomics). Accumulation is float32 (float64 for
float64 inputs).

The tile is ``TILE`` (rows per program, feature block, warps; ``set_tile`` or the environment variable
``MESHGNN_TRITON_TILE=rows,block_f,warps`` change it, e.g. for the sweep in benchmarks/bench_aggregation.py); the
feature block shrinks to the next power of two of F for narrow features.

Shapes: ``values``/``c``/``out`` are ``(E, F)``, ``x``/``a``/``b`` are ``(N, F)``, index tensors int64.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

TILE = {"rows": 8, "block_f": 128, "num_warps": 4}


def set_tile(rows: int, block_f: int, num_warps: int) -> None:
    """Launch configuration of all kernels (powers of two); results do not depend on it (module doc).

    Tiles of up to 16 rows are tested on a GPU (tests/test_ops_cuda.py); Triton 3.6 failed to compile the permuted
    sum with 32-row, 8-warp tiles on an H200 (a layout pass error), so larger tiles are at your own risk."""
    for v in (rows, block_f, num_warps):
        if v < 1 or v & (v - 1):
            raise ValueError(f"tile sizes must be powers of two, got {(rows, block_f, num_warps)}")
    TILE.update(rows=rows, block_f=block_f, num_warps=num_warps)


if os.environ.get("MESHGNN_TRITON_TILE"):
    set_tile(*(int(v) for v in os.environ["MESHGNN_TRITON_TILE"].split(",")))


def _launch(kernel, n: int, F: int, *args, **kw) -> None:
    block = min(TILE["block_f"], triton.next_power_of_2(max(F, 1)))
    grid = (triton.cdiv(n, TILE["rows"]), triton.cdiv(F, block))
    kernel[grid](*args, ROWS=TILE["rows"], BLOCK_F=block, num_warps=TILE["num_warps"], **kw)


@triton.jit
def _segment_sum_kernel(x_ptr, perm_ptr, rowptr_ptr, out_ptr, N, F,
                        HAS_PERM: tl.constexpr, ACC: tl.constexpr, ROWS: tl.constexpr, BLOCK_F: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    offs = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    row_ok = rows < N
    fmask = offs < F
    start = tl.load(rowptr_ptr + rows, mask=row_ok, other=0)
    deg = tl.load(rowptr_ptr + rows + 1, mask=row_ok, other=0) - start
    acc = tl.zeros([ROWS, BLOCK_F], dtype=ACC)
    for k in range(0, tl.max(deg, axis=0)):
        live = k < deg
        j = start + k
        if HAS_PERM:
            src = tl.load(perm_ptr + j, mask=live, other=0)
        else:
            src = j
        m = live[:, None] & fmask[None, :]
        acc += tl.load(x_ptr + src[:, None] * F + offs[None, :], mask=m, other=0.0).to(ACC)
    tl.store(out_ptr + rows[:, None] * F + offs[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & fmask[None, :])


@triton.jit
def _segment_expand_kernel(x_ptr, rowptr_ptr, out_ptr, N, F, ROWS: tl.constexpr, BLOCK_F: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    offs = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    row_ok = rows < N
    fmask = offs < F
    start = tl.load(rowptr_ptr + rows, mask=row_ok, other=0)
    deg = tl.load(rowptr_ptr + rows + 1, mask=row_ok, other=0) - start
    x = tl.load(x_ptr + rows[:, None] * F + offs[None, :], mask=row_ok[:, None] & fmask[None, :])
    for k in range(0, tl.max(deg, axis=0)):
        m = (k < deg)[:, None] & fmask[None, :]
        tl.store(out_ptr + (start + k)[:, None] * F + offs[None, :], x, mask=m)


@triton.jit
def _gather_add_kernel(a_ptr, b_ptr, c_ptr, senders_ptr, rowptr_ptr, out_ptr, N, F,
                       ACC: tl.constexpr, ROWS: tl.constexpr, BLOCK_F: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    offs = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    row_ok = rows < N
    fmask = offs < F
    start = tl.load(rowptr_ptr + rows, mask=row_ok, other=0)
    deg = tl.load(rowptr_ptr + rows + 1, mask=row_ok, other=0) - start
    b = tl.load(b_ptr + rows[:, None] * F + offs[None, :], mask=row_ok[:, None] & fmask[None, :],
                other=0.0).to(ACC)
    for k in range(0, tl.max(deg, axis=0)):
        live = k < deg
        j = start + k
        m = live[:, None] & fmask[None, :]
        s = tl.load(senders_ptr + j, mask=live, other=0)
        a = tl.load(a_ptr + s[:, None] * F + offs[None, :], mask=m, other=0.0).to(ACC)
        c = tl.load(c_ptr + j[:, None] * F + offs[None, :], mask=m, other=0.0).to(ACC)
        tl.store(out_ptr + j[:, None] * F + offs[None, :], ((a + b) + c).to(out_ptr.dtype.element_ty), mask=m)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def segment_sum(values: torch.Tensor, rowptr: torch.Tensor, perm: torch.Tensor | None = None) -> torch.Tensor:
    """``out[i] = sum_{j in rowptr[i]:rowptr[i+1]} values[perm[j] if perm else j]``; ``(E,F) -> (N,F)``."""
    n, F = rowptr.numel() - 1, values.shape[1]
    out = values.new_empty((n, F))
    if n == 0 or F == 0:
        return out
    _launch(_segment_sum_kernel, n, F, values, perm if perm is not None else rowptr, rowptr, out, n, F,
            HAS_PERM=perm is not None, ACC=_acc(values.dtype))
    return out


def segment_expand(x: torch.Tensor, rowptr: torch.Tensor, num_edges: int) -> torch.Tensor:
    """``out[j] = x[i]`` for the edges ``j`` of row ``i``; ``(N,F) -> (E,F)``."""
    n, F = rowptr.numel() - 1, x.shape[1]
    out = x.new_empty((num_edges, F))
    if n == 0 or F == 0 or num_edges == 0:
        return out
    _launch(_segment_expand_kernel, n, F, x, rowptr, out, n, F)
    return out


def gather_add(a, b, c, senders, receivers, rowptr) -> torch.Tensor:
    """``out[j] = a[senders[j]] + b[receivers[j]] + c[j]`` (receivers implied by ``rowptr``)."""
    n, F = rowptr.numel() - 1, c.shape[1]
    out = torch.empty_like(c)
    if n == 0 or F == 0 or c.shape[0] == 0:
        return out
    _launch(_gather_add_kernel, n, F, a, b, c, senders, rowptr, out, n, F, ACC=_acc(c.dtype))
    return out
