"""Memory planner: predict a training step's peak memory per checkpoint plan and pick the plan (and a part count).

Model (per patch, one training forward + backward of MGN L x H, ``stages`` model calls per step): peak bytes ≈
``H · (4 u E + 4 v N)`` + the parameters with Adam state, where ``u`` (edge units: an (E, H) fp32 tensor each) and
``v`` (node units) depend on the plan:

* ``none`` (no checkpointing): ``u = stages · L · A`` — every block keeps ~A (E, H) intermediates;
* ``layers`` (torch checkpoint per block): ``u = stages · L + W_t`` — the L block inputs plus one block's
  recompute;
* ``segments`` (:mod:`meshgnn.model.lowmem`, S segments of k = ceil(L/S) blocks, storage s = 1 fp32, ½ bf16):
  ``u = s · (stages · S + k - 1) + W_s`` — the segment starts, one segment's recomputed interior, and the chunked
  block backward's working set.

A, W_t, W_s and the node coefficients are calibrated from the fresh-process peak-RSS measurements of
benchmarks/bench_memory.py (benchmarks/RESULTS.md "Memory per node"). Plans are tried in order of predicted
step time — exact ones (fp32 storage) before bf16 storage — and the first that fits the budget is chosen.

Shapes are plain counts: N nodes, E edges of the patch.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from .errors import InputError

# Calibration (benchmarks/RESULTS.md "Memory per node": 22^3 and 40^3 grids, 15 x 128, CPU peak RSS growth).
# 22^3 fp32: 4894 MiB -> A = 4.2; ckpt: 1662 MiB -> W_t = 7.4; seg 15 (fp32 storage): 1318 MiB -> W_s = 1.1.
A_NONE = 4.2        # (E, H) fp32 intermediates kept per block without checkpointing
W_LAYERS = 7.4      # working set of torch's per-block recompute, in (E, H) fp32 units
W_SEGMENTS = 1.1    # working set of the chunked block backward, in (E, H) fp32 units
V_NONE = 8.0        # node units per block without checkpointing
V_LAYERS = 1.0      # node units per block, torch checkpoint (x_l)
V_SEGMENTS = 2.0    # node units per block, segments (x_l, agg_l; times the storage factor)
# Step time relative to no checkpointing (forward f, backward 2f): recompute of a block costs ~f. Measured at
# 22^3 (1 thread, CPU time relative to per-layer torch checkpointing): seg 15 bf16-stored 1.09x, seg 4 1.36x.
T_LAYERS = 4 / 3
T_SEGMENTS = 1.09 * T_LAYERS
T_SEGMENT_EXTRA = 0.36 * T_LAYERS   # the edge-only recompute of a segment's interior, times (k - 1) / k


@dataclass(frozen=True)
class Plan:
    """A checkpoint plan and its prediction. mode: "none" | "layers" | "segments"."""

    mode: str
    segments: int = 0
    storage: str = "float32"
    predicted_bytes: float = 0.0
    relative_time: float = 1.0
    budget_bytes: float = 0.0
    fits: bool = True

    def describe(self) -> str:
        what = {"none": "no activation checkpointing", "layers": "checkpoint every layer (torch)"}.get(self.mode)
        if what is None:
            what = (f"checkpoint segments S={self.segments}, saved activations in "
                    f"{'bf16' if self.storage == 'bfloat16' else 'fp32 (exact)'}")
        fit = "fits" if self.fits else "does NOT fit; smallest plan"
        return (f"{what}: predicted peak {_size(self.predicted_bytes)} of {_size(self.budget_bytes)} budget ({fit}), "
                f"step time ~{self.relative_time:.2f}x no checkpointing")


def _size(b: float) -> str:
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"


def param_bytes(latent: int, layers: int, hidden_layers: int = 2) -> float:
    """Parameters + gradients + Adam moments (fp32) of MGN L x H."""
    H = latent
    per_mlp = (3 * H * H + H) + hidden_layers * (H * H + H) + 2 * H   # upper bound: 3H input, LayerNorm
    params = (2 * layers + 3) * per_mlp
    return 16.0 * params


def predict(mode: str, num_nodes: int, num_edges: int, latent: int = 128, layers: int = 15, stages: int = 1,
            segments: int = 0, storage: str = "float32", hidden_layers: int = 2) -> float:
    """Predicted peak bytes of one training forward + backward of one patch (see module doc)."""
    L, H = layers, latent
    s = 0.5 if storage == "bfloat16" else 1.0
    if mode == "none":
        u, v = stages * L * A_NONE, stages * L * V_NONE
    elif mode == "layers":
        u, v = stages * L + W_LAYERS, stages * L * V_LAYERS + V_NONE
    elif mode == "segments":
        S = min(max(segments, 1), L)
        k = math.ceil(L / S)
        u = s * (stages * S + k - 1) + W_SEGMENTS
        v = stages * L * V_SEGMENTS * s + V_NONE
    else:
        raise ValueError(f"unknown plan mode {mode!r}")
    return 4.0 * H * (u * num_edges + v * num_nodes) + param_bytes(H, L, hidden_layers)


def relative_time(mode: str, layers: int = 15, segments: int = 0) -> float:
    """Predicted step time relative to no checkpointing."""
    if mode == "none":
        return 1.0
    if mode == "layers":
        return T_LAYERS
    k = math.ceil(layers / min(max(segments, 1), layers))
    return T_SEGMENTS + T_SEGMENT_EXTRA * (k - 1) / k


def candidates(layers: int) -> list[tuple[str, int, str]]:
    """``(mode, segments, storage)`` in order of preference: faster first, exact before bf16 storage."""
    seg_counts = sorted({math.ceil(layers / k) for k in range(2, layers + 1)}, reverse=True)
    exact = [("none", 0, "float32"), ("segments", layers, "float32")]
    exact += [("segments", S, "float32") for S in seg_counts]
    compact = [("segments", layers, "bfloat16")] + [("segments", S, "bfloat16") for S in seg_counts]
    return exact + compact


def choose(num_nodes: int, num_edges: int, latent: int, layers: int, stages: int, budget_bytes: float,
           hidden_layers: int = 2) -> Plan:
    """The first plan of :func:`candidates` whose predicted peak fits ``budget_bytes``; if none does, the one
    with the smallest prediction (``fits=False``)."""
    plans = []
    for mode, S, storage in candidates(layers):
        b = predict(mode, num_nodes, num_edges, latent, layers, stages, S, storage, hidden_layers)
        plans.append(Plan(mode, S, storage, b, relative_time(mode, layers, S), budget_bytes, b <= budget_bytes))
    for p in plans:
        if p.fits:
            return p
    return min(plans, key=lambda p: p.predicted_bytes)


def device_memory_bytes(device) -> float:
    """What a training step may use: CUDA: 90% of the card's total memory; CPU: 80% of MemAvailable."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return 0.9 * torch.cuda.get_device_properties(device).total_memory
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return 0.8 * int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def budget_bytes(text: str, device) -> float:
    """``--memory-budget``: "" (off: 0), "auto" (:func:`device_memory_bytes`) or GiB as a number."""
    text = str(text).strip()
    if not text:
        return 0.0
    if text == "auto":
        return device_memory_bytes(device)
    try:
        gib = float(text)
    except ValueError:
        gib = -1.0
    if not gib > 0:
        raise InputError("--memory-budget", None, f"expected 'auto' or a positive number of GiB, got {text!r}")
    return gib * 2**30


# Halo growth of a patch: a core of n nodes has ~n^(1/3) hops across; an h-hop halo adds ~HALO_REACH·h hops on
# each side (fitted to the box_tets(145) part stores of benchmarks/RESULTS.md: 16 RCB parts, 2.30 N in all; 64
# METIS parts, 3.89 E in all; both with 15-hop halos: 0.61 and 0.69).
HALO_REACH = 0.7


def patch_nodes(num_nodes: int, parts: int, halo: int) -> float:
    """Estimated nodes of the largest patch of a 3-D mesh cut into ``parts`` with an ``halo``-hop halo."""
    core = num_nodes / parts
    return min(float(num_nodes), 1.15 * (core ** (1 / 3) + 2 * HALO_REACH * halo) ** 3)


def suggest_parts(num_nodes: int, num_edges: int, budget: float, latent: int = 128, layers: int = 15,
                  stages: int = 1, halo: int = 15, max_parts: int = 4096) -> tuple[int, Plan]:
    """Smallest part count whose largest patch trains within ``budget`` bytes under some plan (with the plan
    :func:`choose` picks for it); ``max_parts`` with a non-fitting plan if none does."""
    ratio = num_edges / max(num_nodes, 1)
    plan = None
    for P in range(1, max_parts + 1):
        n = patch_nodes(num_nodes, P, halo)
        plan = choose(int(n), int(n * ratio), latent, layers, stages, budget)
        if plan.fits:
            return P, plan
    return max_parts, plan


def partition_hint(num_nodes: int, num_edges: int, layers: int, stages: int, halo: int, latent: int = 128,
                   device: str = "auto") -> str:
    """One line for ``meshgnn partition``: the suggested part count for one device's memory."""
    import torch

    dev = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    budget = device_memory_bytes(dev)
    P, plan = suggest_parts(num_nodes, num_edges, budget, latent, layers, stages, halo)
    return (f"memory plan: a {layers} x {latent} training step on one {dev} device ({budget / 2**30:.1f} GiB usable) "
            f"fits the largest patch with ~{P} parts ({plan.describe().split(':')[0]}); a suggestion from a "
            f"calibrated model (meshgnn/plan.py), not a measurement")
