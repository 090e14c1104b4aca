"""Model inputs: normalizers, counter-based training noise, node and edge features.

Everything here is *patch-safe*: a quantity computed for a node on a patch equals the one computed for the same
node on the whole graph (noise is keyed by global node id, edge features come from global positions, normalizer
statistics count each node once and are summed across patches and ranks).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

# ----------------------------------------------------------------------------------------------------------- noise
_MASK32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser ("lowbias32") on int64 tensors holding values in [0, 2^32)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def counter_uniform(seed: int, step: int, ids: torch.Tensor, stream: int) -> torch.Tensor:
    """Uniform (0, 1) float64 numbers, a pure function of (seed, step, id, stream): no generator state."""
    key = _hash32(torch.tensor([(seed * 0x9E3779B1 + step) & _MASK32], dtype=torch.int64))
    key = _hash32(key ^ (step >> 32) * 0x85EBCA6B)
    h = _hash32(ids.to(torch.int64) ^ key)
    h = _hash32(h ^ ((ids.to(torch.int64) >> 32) + stream * 0x27D4EB2F + 0x165667B1))
    return (h.to(torch.float64) + 0.5) / 4294967296.0


def counter_normal(seed: int, step: int, ids: torch.Tensor, components: int) -> torch.Tensor:
    """Standard normal ``(n, components)`` float64 keyed by (seed, step, global node id, component).

    A halo copy of a node draws exactly the numbers its owner draws, wherever and on whichever rank it lives.
    Box-Muller on two counter-based uniforms per component.
    """
    ids = ids.reshape(-1)
    cols = []
    for c in range(components):
        u1 = counter_uniform(seed, step, ids, 2 * c)
        u2 = counter_uniform(seed, step, ids, 2 * c + 1)
        cols.append(torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * np.pi * u2))
    if not cols:
        return torch.zeros(ids.numel(), 0, dtype=torch.float64)
    return torch.stack(cols, dim=1)


# ------------------------------------------------------------------------------------------------------ normalizer
class Normalizer(nn.Module):
    """Online mean/std normalizer, accumulated in float64 and frozen after ``freeze_after`` accumulations.

    Statistics are sums (count, Σx, Σx²), so the contributions of patches and ranks add up exactly like the whole
    graph's: use :meth:`stats` to get a batch's contribution, sum them (all-reduce), then :meth:`accumulate_stats`.
    """

    def __init__(self, size: int, freeze_after: int = 10_000, std_epsilon: float = 1e-8):
        super().__init__()
        self.size = size
        self.freeze_after = freeze_after
        self.std_epsilon = std_epsilon
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("sum", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("sumsq", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("accumulations", torch.zeros((), dtype=torch.int64))

    @property
    def frozen(self) -> bool:
        return int(self.accumulations) >= self.freeze_after

    def stats(self, x: torch.Tensor) -> torch.Tensor:
        """This batch's contribution ``[count, Σx (size), Σx² (size)]`` as a float64 vector."""
        x = x.detach().to(torch.float64).reshape(-1, self.size)
        return torch.cat([x.new_tensor([x.shape[0]]), x.sum(0), (x * x).sum(0)])

    def accumulate_stats(self, stats: torch.Tensor) -> None:
        """Add summed contributions (one accumulation), unless frozen."""
        if self.frozen:
            return
        stats = stats.to(self.sum.device, torch.float64)
        self.count += stats[0]
        self.sum += stats[1:1 + self.size]
        self.sumsq += stats[1 + self.size:]
        self.accumulations += 1

    def mean(self) -> torch.Tensor:
        return self.sum / self.count.clamp(min=1.0)

    def std(self) -> torch.Tensor:
        n = self.count.clamp(min=1.0)
        mean = self.sum / n
        var = (self.sumsq / n - mean * mean).clamp(min=0.0)
        # A floor relative to the feature's magnitude: a feature (nearly) constant over the training data is
        # scaled by 1% of its magnitude, so a different value at inference (another trajectory's inlet velocity)
        # gives O(100 x relative change), not O(1e6) that saturates the MLPs and silences every other input.
        floor = 1e-2 * torch.sqrt(self.sumsq / n) + self.std_epsilon
        return torch.maximum(torch.sqrt(var), floor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.count == 0:
            return x
        return (x - self.mean().to(x.dtype)) / self.std().to(x.dtype)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        if self.count == 0:
            return y
        return y * self.std().to(y.dtype) + self.mean().to(y.dtype)


# -------------------------------------------------------------------------------------------------------- features
def edge_feature_size(dim: int) -> int:
    """Width of :func:`edge_features` for ``dim``-D points: ``[dx, dy, |d|]`` (3) in 2-D, ``[dx, dy, dz, |d|]`` (4)."""
    if dim not in (2, 3):
        raise ValueError(f"points: expected 2-D or 3-D coordinates, got {dim}-D")
    return dim + 1


def edge_features(points: np.ndarray | torch.Tensor, senders, receivers) -> torch.Tensor:
    """``(E, D + 1)`` relative position ``p_s - p_r`` and its norm for ``(N, D)`` points (D = 2 or 3), computed in
    float64 from global positions."""
    p = torch.as_tensor(points, dtype=torch.float64)
    s = torch.as_tensor(senders)
    r = torch.as_tensor(receivers)
    d = p[s] - p[r]
    return torch.cat([d, d.norm(dim=1, keepdim=True)], dim=1)


def one_hot(node_type: torch.Tensor, num_types: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(node_type.long(), num_types).to(torch.float32)
