"""Triton GPU kernels for receiver-sorted CSR graphs (used for CUDA tensors when triton is importable).

One program handles one CSR row (node) and one block of ``BLOCK_F`` features, and walks the row's edges in
order, so results are deterministic (no atomics). Accumulation is float32 (float64 for float64 inputs).
``TRITON_INTERPRET=1`` runs the same kernels on CPU tensors (how the tests check them without a GPU).

Shapes: ``values``/``c``/``out`` are ``(E, F)``, ``x``/``a``/``b`` are ``(N, F)``, index tensors int64.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _segment_sum_kernel(x_ptr, perm_ptr, rowptr_ptr, out_ptr, F,
                        HAS_PERM: tl.constexpr, ACC: tl.constexpr, BLOCK_F: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    mask = offs < F
    start = tl.load(rowptr_ptr + row)
    end = tl.load(rowptr_ptr + row + 1)
    acc = tl.zeros([BLOCK_F], dtype=ACC)
    for j in range(start, end):
        if HAS_PERM:
            src = tl.load(perm_ptr + j)
        else:
            src = j
        acc += tl.load(x_ptr + src * F + offs, mask=mask, other=0.0).to(ACC)
    tl.store(out_ptr + row * F + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _segment_expand_kernel(x_ptr, rowptr_ptr, out_ptr, F, BLOCK_F: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    mask = offs < F
    start = tl.load(rowptr_ptr + row)
    end = tl.load(rowptr_ptr + row + 1)
    x = tl.load(x_ptr + row * F + offs, mask=mask)
    for j in range(start, end):
        tl.store(out_ptr + j * F + offs, x, mask=mask)


@triton.jit
def _gather_add_kernel(a_ptr, b_ptr, c_ptr, senders_ptr, rowptr_ptr, out_ptr, F,
                       ACC: tl.constexpr, BLOCK_F: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    mask = offs < F
    start = tl.load(rowptr_ptr + row)
    end = tl.load(rowptr_ptr + row + 1)
    b = tl.load(b_ptr + row * F + offs, mask=mask, other=0.0).to(ACC)
    for j in range(start, end):
        s = tl.load(senders_ptr + j)
        a = tl.load(a_ptr + s * F + offs, mask=mask, other=0.0).to(ACC)
        c = tl.load(c_ptr + j * F + offs, mask=mask, other=0.0).to(ACC)
        tl.store(out_ptr + j * F + offs, ((a + b) + c).to(out_ptr.dtype.element_ty), mask=mask)


def _grid(n: int, F: int):
    block = min(triton.next_power_of_2(max(F, 1)), 128)
    return (n, triton.cdiv(F, block)), block


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def segment_sum(values: torch.Tensor, rowptr: torch.Tensor, perm: torch.Tensor | None = None) -> torch.Tensor:
    """``out[i] = sum_{j in rowptr[i]:rowptr[i+1]} values[perm[j] if perm else j]``; ``(E,F) -> (N,F)``."""
    n, F = rowptr.numel() - 1, values.shape[1]
    out = values.new_empty((n, F))
    if n == 0 or F == 0:
        return out
    grid, block = _grid(n, F)
    _segment_sum_kernel[grid](values, perm if perm is not None else rowptr, rowptr, out, F,
                              HAS_PERM=perm is not None, ACC=_acc(values.dtype), BLOCK_F=block)
    return out


def segment_expand(x: torch.Tensor, rowptr: torch.Tensor, num_edges: int) -> torch.Tensor:
    """``out[j] = x[i]`` for the edges ``j`` of row ``i``; ``(N,F) -> (E,F)``."""
    n, F = rowptr.numel() - 1, x.shape[1]
    out = x.new_empty((num_edges, F))
    if n == 0 or F == 0 or num_edges == 0:
        return out
    grid, block = _grid(n, F)
    _segment_expand_kernel[grid](x, rowptr, out, F, BLOCK_F=block)
    return out


def gather_add(a, b, c, senders, receivers, rowptr) -> torch.Tensor:
    """``out[j] = a[senders[j]] + b[receivers[j]] + c[j]`` (receivers implied by ``rowptr``)."""
    n, F = rowptr.numel() - 1, c.shape[1]
    out = torch.empty_like(c)
    if n == 0 or F == 0 or c.shape[0] == 0:
        return out
    grid, block = _grid(n, F)
    _gather_add_kernel[grid](a, b, c, senders, rowptr, out, F, ACC=_acc(c.dtype), BLOCK_F=block)
    return out
