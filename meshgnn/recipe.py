"""The training recipe: which samples a step draws, what one sample's loss is, and the learning-rate schedule.

A step draws ``batch`` samples (trajectory, input frame) as a pure function of (seed, step), so every rank (and
every data-parallel group) agrees on them without talking. One sample's loss unrolls the simulator ``unroll``
steps from the noisy input frame and compares each predicted state with the data (docs/design.md, "Training
objective"): the first step in the MeshGraphNets form (target = the change from the noisy input, corrected by
``noise_gamma``), later steps as state errors; with ``pushforward`` only the last step carries gradient
(Brandstetter et al. 2022). All terms are sums over core, non-prescribed (node, component) entries divided by
the *global* entry count of the step, so patch and sample contributions add up to the whole-graph batch loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch


@dataclass(frozen=True)
class Sample:
    """One training sample: input frame ``time`` of ``trajectory``; ``index`` is its slot in the step's batch."""

    trajectory: str
    time: int
    index: int


def draw_samples(seed: int, step: int, trajectories: list[str], frame_ranges: dict[str, tuple[int, int]],
                 batch: int) -> list[Sample]:
    """``batch`` samples for ``step``: a trajectory uniformly, then an input frame in its ``[lo, hi)`` range."""
    rng = np.random.default_rng([seed, step, 0x5EED])
    out = []
    for b in range(batch):
        traj = trajectories[int(rng.integers(len(trajectories)))]
        lo, hi = frame_ranges[traj]
        out.append(Sample(traj, int(rng.integers(lo, hi)), b))
    return out


def noise_key(step: int, index: int, batch: int) -> int:
    """The counter the training noise of batch slot ``index`` at ``step`` is keyed by (distinct per sample)."""
    return step * batch + index


def impulsive_frames(change_rms, ratio: float = 10.0) -> int:
    """How many leading transitions to skip. ``change_rms[k]`` is the RMS change of frame k -> k+1 (k = 0, 1, ...),
    one value or one per state field (``(K,)`` or ``(K, F)``). A leading transition is an *impulsive start* (a
    solver initialised at rest, developed flow one snapshot later, which no local model can learn) when, for
    any field, it is ``ratio`` times larger than the median of that field's later transitions. Per field, so a
    field with large, oscillating changes (a pressure) cannot hide another field's jump."""
    rms = np.asarray(change_rms, dtype=np.float64)
    rms = rms.reshape(rms.shape[0], -1)
    skip = 0
    while skip < rms.shape[0] - 2:
        rest = np.median(rms[skip + 1:], axis=0)
        if np.any((rest > 0) & (rms[skip] > ratio * rest)):
            skip += 1
        else:
            break
    return skip


def per_field_rms(sumsq, count: float, components: list[int]) -> np.ndarray:
    """``(K, F)`` RMS per row and state field from per-component sums of squares ``sumsq (K, C)`` over ``count``
    nodes (fields' components concatenated as ``components``)."""
    sumsq = np.asarray(sumsq, dtype=np.float64).reshape(-1, sum(components))
    bounds = np.cumsum([0, *components])
    per_field = np.stack([sumsq[:, a:b].sum(1) for a, b in zip(bounds[:-1], bounds[1:])], axis=1)
    return np.sqrt(per_field / (max(count, 1.0) * np.asarray(components, dtype=np.float64)))


def field_change_rms(frames, components: list[int]) -> np.ndarray:
    """``(K, F)`` RMS change per transition and state field of ``K + 1`` consecutive ``(n, C)`` frames (numpy or
    torch); the input of :func:`impulsive_frames`."""
    ys = [np.asarray(y, dtype=np.float64) for y in frames]
    sumsq = [((b - a) ** 2).sum(0) for a, b in zip(ys, ys[1:])]
    return per_field_rms(np.reshape(sumsq, (len(sumsq), sum(components))), ys[0].shape[0], components)


def lr_lambda(schedule: str, steps: int, warmup: int, decay_to: float) -> Callable[[int], float]:
    """Multiplier of the base learning rate at optimizer step ``s``: linear warm-up over ``warmup`` steps (from
    1/warmup), then ``exp`` (geometric to ``decay_to`` at ``steps``), ``cosine`` (to ``decay_to``) or
    ``constant``."""
    span = max(steps - warmup, 1)

    def f(s: int) -> float:
        if warmup > 0 and s < warmup:
            return (s + 1) / warmup
        x = min(max(s - warmup, 0), span) / span
        if schedule == "exp":
            return decay_to ** x
        if schedule == "cosine":
            return decay_to + (1.0 - decay_to) * 0.5 * (1.0 + math.cos(math.pi * x))
        return 1.0

    return f


def unrolled_errors(sim, patch_tensors, y0: torch.Tensor, refs: list[torch.Tensor], static: torch.Tensor,
                    fixed: torch.Tensor, eps: torch.Tensor, gamma: float, std: torch.Tensor,
                    halo_exchange: Optional[Callable] = None, refresh: Optional[Callable] = None,
                    pushforward: bool = False, autocast: Optional[Callable] = None,
                    history: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
    """Normalised errors ``(n, C)`` of an ``len(refs)``-step unroll from ``y0 + eps``; ``refs[k]`` is the data's
    frame ``t + k + 1``; prescribed components take the data's values at every stage and step.

    ``refresh(y)`` makes a state's halo rows current between steps (per-layer halo mode); in L-hop mode the halo
    must hold ``len(refs) x stages x layers`` hops for the core rows to be exact. With ``pushforward`` the first
    ``len(refs) - 1`` steps run without gradient and only the last error is returned. ``history`` (n, H·C): the
    last changes into ``y0 + eps`` for a simulator with history inputs; each step's predicted change joins it.
    """
    y = y0 + eps
    errs = []
    K = len(refs)
    for k, ref in enumerate(refs):
        grad_here = not pushforward or k == K - 1
        with torch.set_grad_enabled(grad_here and torch.is_grad_enabled()), (autocast() if autocast else _null()):
            pred = sim.step(y, static, patch_tensors, y_next_fixed=ref, halo_exchange=halo_exchange, fixed=fixed,
                            history=history)
        pred = pred.to(y0.dtype)
        if grad_here:
            if k == 0:
                target = (ref - y0) - gamma * eps        # MeshGraphNets: the change the step must make from y0+eps
                errs.append(((pred - y) - target) / std)
            else:
                errs.append((pred - ref) / std)
        y_next = refresh(pred) if refresh is not None else pred
        history = sim.next_history(history, y, y_next)
        y = y_next
        if not grad_here:
            y = y.detach()
            history = history.detach() if history is not None else None
    return errs


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
