"""The ``meshgnn::*`` torch.library custom ops: kernels picked per device, autograd, fake (meta) impls.

Ops (shapes: N nodes, E receiver-sorted edges, F features; index tensors int64):
    segment_sum(values (E,F), rowptr (N+1,)) -> (N,F)                      backward: segment_expand
    segment_expand(x (N,F), rowptr (N+1,), num_edges) -> (E,F) = x[rows]     backward: segment_sum
    segment_sum_permuted(values (E,F), perm (E,), rowptr (N+1,)) -> (N,F)     sum of values[perm[j]] per row
    gather_add(a, b (N,F), c (E,F), senders, receivers, rowptr, sender_perm, sender_rowptr) -> (E,F)
        = a[senders] + b[receivers] + c;  backward: grad_a = segment_sum_permuted(g, sender_perm, sender_rowptr),
        grad_b = segment_sum(g, rowptr), grad_c = g — every reduction is a deterministic CSR row sum.

Being opaque custom ops with fake impls, they trace under ``torch.compile(fullgraph=True)``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _cpu

_triton = None
_triton_checked = False


def _triton_module():
    """``meshgnn.ops._triton`` if triton imports, else ``None`` (checked once)."""
    global _triton, _triton_checked
    if not _triton_checked:
        _triton_checked = True
        try:
            from . import _triton as mod
            _triton = mod
        except Exception:  # triton absent or broken: CUDA tensors use the pure-torch kernels
            _triton = None
    return _triton


def kernels_for(t: Tensor):
    """Kernel module for tensors on ``t``'s device: Triton on CUDA (when importable), else :mod:`._cpu`."""
    if t.device.type == "cuda":
        mod = _triton_module()
        if mod is not None:
            return mod
    return _cpu


def kernel_name(device="cpu") -> str:
    """Which kernels run on ``device``: ``"triton"``, ``"c++"`` or ``"torch"``."""
    if torch.device(device).type == "cuda":
        return "triton" if _triton_module() is not None else "torch"
    return _cpu.kernel_name()


def _check_csr(rowptr: Tensor, num_edges: int) -> None:
    """The compiled kernels trust ``rowptr``; a wrong edge count would read out of bounds."""
    if rowptr.dim() != 1 or rowptr.numel() < 1:
        raise ValueError(f"rowptr must be 1-D with N+1 >= 1 entries, got shape {tuple(rowptr.shape)}")
    if rowptr.device.type == "cpu" and (int(rowptr[0]) != 0 or int(rowptr[-1]) != num_edges):
        raise ValueError(f"rowptr spans edges {int(rowptr[0])}..{int(rowptr[-1])} but there are {num_edges}")


# --- segment_sum ---------------------------------------------------------------------------------------------

@torch.library.custom_op("meshgnn::segment_sum", mutates_args=())
def segment_sum(values: Tensor, rowptr: Tensor) -> Tensor:
    _check_csr(rowptr, values.shape[0])
    return kernels_for(values).segment_sum(values.contiguous(), rowptr.contiguous(), None)


@segment_sum.register_fake
def _(values, rowptr):
    return values.new_empty((rowptr.shape[0] - 1, values.shape[1]))


def _segment_sum_setup(ctx, inputs, output):
    values, rowptr = inputs
    ctx.save_for_backward(rowptr)
    ctx.num_edges = values.shape[0]


def _segment_sum_backward(ctx, grad):
    (rowptr,) = ctx.saved_tensors
    return segment_expand(grad, rowptr, ctx.num_edges), None


segment_sum.register_autograd(_segment_sum_backward, setup_context=_segment_sum_setup)


# --- segment_expand ------------------------------------------------------------------------------------------

@torch.library.custom_op("meshgnn::segment_expand", mutates_args=())
def segment_expand(x: Tensor, rowptr: Tensor, num_edges: int) -> Tensor:
    _check_csr(rowptr, num_edges)
    return kernels_for(x).segment_expand(x.contiguous(), rowptr.contiguous(), num_edges)


@segment_expand.register_fake
def _(x, rowptr, num_edges):
    return x.new_empty((num_edges, x.shape[1]))


def _segment_expand_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _segment_expand_backward(ctx, grad):
    (rowptr,) = ctx.saved_tensors
    return segment_sum(grad, rowptr), None, None


segment_expand.register_autograd(_segment_expand_backward, setup_context=_segment_expand_setup)


# --- segment_sum_permuted ------------------------------------------------------------------------------------

@torch.library.custom_op("meshgnn::segment_sum_permuted", mutates_args=())
def segment_sum_permuted(values: Tensor, perm: Tensor, rowptr: Tensor) -> Tensor:
    _check_csr(rowptr, values.shape[0])
    return kernels_for(values).segment_sum(values.contiguous(), rowptr.contiguous(), perm.contiguous())


@segment_sum_permuted.register_fake
def _(values, perm, rowptr):
    return values.new_empty((rowptr.shape[0] - 1, values.shape[1]))


def _segment_sum_permuted_setup(ctx, inputs, output):
    values, perm, rowptr = inputs
    ctx.save_for_backward(perm, rowptr)
    ctx.num_edges = values.shape[0]


def _segment_sum_permuted_backward(ctx, grad):
    perm, rowptr = ctx.saved_tensors
    expanded = segment_expand(grad, rowptr, ctx.num_edges)   # expanded[j] = grad[row of j]
    return torch.zeros_like(expanded).index_copy(0, perm, expanded), None, None  # grad_values[perm[j]]


segment_sum_permuted.register_autograd(_segment_sum_permuted_backward, setup_context=_segment_sum_permuted_setup)


# --- gather_add ----------------------------------------------------------------------------------------------

@torch.library.custom_op("meshgnn::gather_add", mutates_args=())
def gather_add(a: Tensor, b: Tensor, c: Tensor, senders: Tensor, receivers: Tensor, rowptr: Tensor,
               sender_perm: Tensor, sender_rowptr: Tensor) -> Tensor:
    _check_csr(rowptr, c.shape[0])
    if a.shape != b.shape or a.shape[0] != rowptr.shape[0] - 1 or a.shape[1:] != c.shape[1:]:
        raise ValueError(f"gather_add: a {tuple(a.shape)}, b {tuple(b.shape)} must be (N,F) and c "
                         f"{tuple(c.shape)} (E,F) with N+1 = {rowptr.shape[0]}")
    return kernels_for(c).gather_add(a.contiguous(), b.contiguous(), c.contiguous(), senders.contiguous(),
                                     receivers.contiguous(), rowptr.contiguous())


@gather_add.register_fake
def _(a, b, c, senders, receivers, rowptr, sender_perm, sender_rowptr):
    return torch.empty_like(c)


def _gather_add_setup(ctx, inputs, output):
    _, _, _, _, _, rowptr, sender_perm, sender_rowptr = inputs
    ctx.save_for_backward(rowptr, sender_perm, sender_rowptr)


def _gather_add_backward(ctx, grad):
    rowptr, sender_perm, sender_rowptr = ctx.saved_tensors
    need_a, need_b, need_c = ctx.needs_input_grad[:3]
    grad_a = segment_sum_permuted(grad, sender_perm, sender_rowptr) if need_a else None
    grad_b = segment_sum(grad, rowptr) if need_b else None
    return grad_a, grad_b, (grad if need_c else None), None, None, None, None, None


gather_add.register_autograd(_gather_add_backward, setup_context=_gather_add_setup)
