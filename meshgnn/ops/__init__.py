"""Message-passing primitives of MeshGraphNets.

Public API (shapes: N nodes, E receiver-sorted edges, F features):
    segment_sum(values (E,F), rowptr (N+1,)) -> (N,F)        sum of incoming edge values per node
    gather_add(a (N,F), b (N,F), c (E,F), senders, receivers) -> (E,F) = a[senders] + b[receivers] + c
    set_backend(name) / get_backend()

NOTE: reference implementation; the custom kernels (torch.library ops, Triton) replace the internals.
"""
from __future__ import annotations

import torch

_BACKEND = "ours"


def set_backend(name: str) -> None:
    global _BACKEND
    _BACKEND = name


def get_backend() -> str:
    return _BACKEND


def segment_sum(values: torch.Tensor, rowptr: torch.Tensor) -> torch.Tensor:
    n = rowptr.numel() - 1
    counts = rowptr[1:] - rowptr[:-1]
    index = torch.repeat_interleave(torch.arange(n, device=values.device), counts)
    out = values.new_zeros((n,) + values.shape[1:])
    return out.index_add(0, index, values)


def gather_add(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, senders: torch.Tensor,
               receivers: torch.Tensor) -> torch.Tensor:
    return a[senders] + b[receivers] + c
