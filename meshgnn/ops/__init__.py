"""Message-passing primitives of MeshGraphNets on receiver-sorted (CSR) graphs.

Public API (shapes: N nodes, E receiver-sorted edges, F features, any trailing feature dims allowed):
    segment_sum(values (E,F), rowptr (N+1,)) -> (N,F)       sum of the incoming edge values of every node
    gather_add(a (N,F), b (N,F), c (E,F), graph) -> (E,F)   a[graph.senders] + b[graph.receivers] + c
        (the MGN concat trick: W [x_s, x_r, e] + bias = (W_s x)[s] + (W_r x)[r] + (W_e e + bias))
    relu_backward_(grad (M,F), result (M,F)) -> (F,)    in place grad[result <= 0] = 0; returns its column sums
        (ReLU backward fused with the bias gradient of the Linear before it; meshgnn.model.fused)
    set_backend(name) / get_backend() / use_backend(name) (context manager)
    kernel_name(device) -> "c++" | "torch" | "triton": what backend "ours" runs on that device

Backends:
    "ours" (default)   the ``meshgnn::*`` torch.library custom ops: C++/OpenMP CSR kernels on CPU, Triton on CUDA,
                       pure torch where neither is available. Deterministic (no atomics): bitwise identical
                       across runs and thread counts. Traceable by ``torch.compile(fullgraph=True)``.
    "torch_scatter"    ``torch_scatter.segment_csr`` (only if torch-scatter is installed: extra ``[scatter]``)
    "pyg"              ``torch_geometric.utils.scatter`` with receiver indices (extra ``[pyg]``)
    "index_add"        ``Tensor.index_add_`` with receiver indices
The baselines compute ``gather_add`` unfused, with torch's own autograd.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch

from ..errors import MeshgnnError
from . import _library
from ._cpu import relu_backward_
from ._cpu import rows_of_edges as _receivers
from ._library import kernel_name

__all__ = ["segment_sum", "gather_add", "relu_backward_", "set_backend", "get_backend", "use_backend", "kernel_name",
           "BACKENDS", "available_backends"]

BACKENDS = ("ours", "torch_scatter", "pyg", "index_add")
_BACKEND = "ours"


def _torch_scatter():
    try:
        import torch_scatter
    except ImportError as exc:
        raise MeshgnnError("ops backend 'torch_scatter' needs the torch-scatter package "
                           "(pip install 'meshgnn[scatter]')") from exc
    return torch_scatter


def _pyg_scatter():
    try:
        from torch_geometric.utils import scatter
    except ImportError as exc:
        raise MeshgnnError("ops backend 'pyg' needs the torch-geometric package (pip install 'meshgnn[pyg]')") from exc
    return scatter


def available_backends() -> list[str]:
    """The backends usable in this environment (``torch_scatter`` only when installed)."""
    names = []
    for name in BACKENDS:
        try:
            _require(name)
        except MeshgnnError:
            continue
        names.append(name)
    return names


def _require(name: str) -> None:
    if name not in BACKENDS:
        raise MeshgnnError(f"unknown ops backend {name!r} (expected one of {', '.join(BACKENDS)})")
    if name == "torch_scatter":
        _torch_scatter()
    elif name == "pyg":
        _pyg_scatter()


def set_backend(name: str) -> None:
    """Select the implementation used by :func:`segment_sum` and :func:`gather_add` (see module doc)."""
    global _BACKEND
    _require(name)
    _BACKEND = name


def get_backend() -> str:
    return _BACKEND


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """``with use_backend("pyg"): ...`` — temporarily switch backend, restoring the previous one on exit."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def segment_sum(values: torch.Tensor, rowptr: torch.Tensor) -> torch.Tensor:
    """Sum of incoming edge values per node.

    Args:
        values: ``(E, F...)`` per-edge values, receiver-sorted.
        rowptr: ``(N+1,)`` int64 CSR row pointer; incoming edges of ``v`` are ``rowptr[v]:rowptr[v+1]``.
    Returns:
        ``(N, F...)``; nodes without incoming edges get zeros.
    """
    E, n = values.shape[0], rowptr.shape[0] - 1
    flat = values.reshape(E, math.prod(values.shape[1:]))
    rowptr = rowptr.long()
    backend = _BACKEND
    if backend == "ours":
        out = _library.segment_sum(flat, rowptr)
    elif backend == "torch_scatter":
        out = _torch_scatter().segment_csr(flat, rowptr, reduce="sum")
    elif backend == "pyg":
        out = _pyg_scatter()(flat, _receivers(rowptr, E), dim=0, dim_size=n, reduce="sum")
    else:
        out = flat.new_zeros((n, flat.shape[1])).index_add_(0, _receivers(rowptr, E), flat)
    return out.reshape((n,) + values.shape[1:])


def gather_add(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, graph) -> torch.Tensor:
    """Fused ``a[graph.senders] + b[graph.receivers] + c``.

    Args:
        a, b: ``(N, F...)`` node values (e.g. ``W_s x`` and ``W_r x``); c: ``(E, F...)`` edge values.
        graph: a :class:`meshgnn.graph.Graph` (receiver-sorted; its cached ``sender_perm``/``sender_rowptr``
            give a deterministic backward for ``a``).
    Returns:
        ``(E, F...)`` in the promoted dtype of ``a``, ``b``, ``c``.
    """
    if _BACKEND != "ours":
        return a[graph.senders] + b[graph.receivers] + c
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), c.dtype)
    E, n, F = c.shape[0], a.shape[0], math.prod(c.shape[1:])
    out = _library.gather_add(a.to(dtype).reshape(n, F), b.to(dtype).reshape(n, F), c.to(dtype).reshape(E, F),
                              graph.senders, graph.receivers, graph.rowptr, graph.sender_perm, graph.sender_rowptr)
    return out.reshape(c.shape)
