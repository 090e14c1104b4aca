"""One generic explicit Runge–Kutta stepper for any ``rate(y) -> dy/dt`` callable.

For a tableau ``(A, b, c)`` with ``s`` stages, one step of size ``dt`` is::

    k_i    = rate(constrain(y + dt * sum_{j<i} a_ij k_j))        i = 0 .. s-1
    y_next = constrain(y + dt * sum_i b_i k_i)

``constrain`` (optional) re-imposes boundary / prescribed values (e.g. Dirichlet nodes) on every stage input
and on the output, with the same callable. The meshgnn model absorbs ``dt`` into its learned rate and steps
with ``dt = 1``: ``y_next = y + sum_i b_i k_i``.

Nothing is updated in place: ``y``, the stage inputs and the stage rates are never written to, so autograd
sees every stage and a rollout's state is never corrupted (the seed's low-memory Heun updated in place).
States may be torch tensors (any shape, any float dtype, autograd-aware) or numpy arrays (computed with numpy).
"""
from __future__ import annotations

import numbers
import sys
from typing import Callable, Iterator

import numpy as np

from .methods import get_method

Rate = Callable[[object], object]
"""``rate(y) -> dy/dt``, same shape and kind (torch / numpy) as ``y``."""

Constrain = Callable[[object], object]
"""``constrain(y) -> y'``: a NEW array with prescribed entries re-imposed (e.g. ``torch.where(mask, g, y)``).

It must not modify its input (raises ``ValueError`` for torch tensors, and numpy inputs are read-only). It is
applied to every stage input and to the step's output, so it should be idempotent.
"""


def _torch_tensor_type():
    """``torch.Tensor`` if torch is already imported, else ``None`` (keeps numpy-only users free of torch)."""
    torch = sys.modules.get("torch")
    return torch.Tensor if torch is not None else None


def _is_torch(x) -> bool:
    tensor = _torch_tensor_type()
    return tensor is not None and isinstance(x, tensor)


def _check_state(y):
    if not (_is_torch(y) or isinstance(y, np.ndarray)):
        raise TypeError(f"the state y must be a torch.Tensor or a numpy.ndarray, got {type(y).__name__}")


def _version(x):
    """The autograd version counter of a torch tensor (bumped by every in-place write); ``None`` otherwise."""
    if _is_torch(x) and not x.is_inference():
        return x._version
    return None


def _read_only(x):
    """A numpy input as a read-only view, so an in-place write by a callback fails loudly; torch as is."""
    if isinstance(x, np.ndarray) and x.flags.writeable:
        x = x.view()
        x.flags.writeable = False
    return x


def _call_pure(fn, x, role: str):
    """``fn(x)``, raising ``ValueError`` if ``fn`` wrote into ``x`` in place."""
    before = _version(x)
    view = _read_only(x)
    out = fn(view)
    if out is view:  # an identity callback hands back the caller's (writable) array, not our read-only view
        out = x
    if before is not None and _version(x) != before:
        raise ValueError(f"{role} modified its input in place; it must return a new tensor "
                         "(e.g. torch.where(mask, value, y) instead of y[mask] = value)")
    return out


def _checked_rate(rate: Rate, z):
    """``rate(z)``, checked to be pure and to return an array of ``z``'s kind and shape."""
    k = _call_pure(rate, z, "rate")
    if _is_torch(z) != _is_torch(k) or not hasattr(k, "shape"):
        raise ValueError(f"rate returned {type(k).__name__} for a {type(z).__name__} state; "
                         "it must return the same kind of array")
    if tuple(k.shape) != tuple(z.shape):
        raise ValueError(f"rate returned shape {tuple(k.shape)} for a state of shape {tuple(z.shape)}")
    return k


def _apply_constrain(constrain: Constrain | None, z):
    return z if constrain is None else _call_pure(constrain, z, "constrain")


def _combine(y, dt, weights, ks):
    """``y + dt * sum_j weights[j] * ks[j]`` out of place, skipping exact-zero weights (and ``dt`` when 1)."""
    terms = [(w, k) for w, k in zip(weights, ks) if w != 0.0]
    if not terms:
        return y
    increment = None
    for w, k in terms:
        term = k if w == 1.0 else w * k
        increment = term if increment is None else increment + term
    if not (isinstance(dt, numbers.Real) and dt == 1):
        increment = dt * increment
    return y + increment


def _evaluate_stage(rate: Rate, z, constrain: Constrain | None, checkpoint_stages: bool):
    """``k = rate(constrain(z))``; with ``checkpoint_stages`` the rate's activations are recomputed in backward."""
    z = _apply_constrain(constrain, z)
    if checkpoint_stages and _is_torch(z):
        import torch
        if torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint
            return checkpoint(_checked_rate, rate, z, use_reentrant=False)
    return _checked_rate(rate, z)


def rk_stages(rate: Rate, y, method="rk4", dt=1.0, constrain: Constrain | None = None,
              checkpoint_stages: bool = False) -> list:
    """The stage rates ``[k_0, ..., k_{s-1}]`` of one step from ``y`` (each shaped like ``y``).

    ``k_i = rate(constrain(y + dt * sum_{j<i} a_ij k_j))``. A stage that no weight reads (``b_i = 0`` and no
    later needed stage uses it) is not evaluated and is ``None``: skipping it is exact. See :func:`rk_step`.
    """
    _check_state(y)
    if checkpoint_stages and not _is_torch(y):
        raise ValueError("checkpoint_stages needs a torch.Tensor state (numpy states have no autograd)")
    tableau = get_method(method)
    ks = []
    for i, needed in enumerate(tableau.needed_stages()):
        if not needed:
            ks.append(None)
            continue
        z = _combine(y, dt, tableau.A[i][:i], ks)
        ks.append(_evaluate_stage(rate, z, constrain, checkpoint_stages))
    return ks


def rk_step(rate: Rate, y, method="rk4", dt=1.0, constrain: Constrain | None = None,
            checkpoint_stages: bool = False):
    """One explicit Runge–Kutta step: ``constrain(y + dt * sum_i b_i k_i)``.

    Args:
        rate: ``rate(y) -> dy/dt`` of ``y``'s shape and kind; must not modify its input.
        y: state, a torch tensor of any shape (autograd flows through every stage) or a numpy array.
            Never modified.
        method: a built-in name (``euler``, ``heun``/``heun2``, ``midpoint``, ``heun3``, ``ssprk3``, ``rk4``),
            a :class:`~integrators.tableau.Tableau`, or a JSON tableau path.
        dt: step size, a number or a tensor broadcastable against ``y``; ``1.0`` when the rate absorbs it.
        constrain: optional ``constrain(y) -> new y`` re-imposing prescribed values. Applied to every stage
            input (including the first, ``y`` itself) and to the returned state, so the output satisfies
            the constraint and so does everything the rate sees. Must return a new array, never write in place.
        checkpoint_stages: wrap each stage's rate evaluation in ``torch.utils.checkpoint`` (non-reentrant):
            its activations are recomputed in backward instead of stored. Same values and gradients.

    Returns:
        The next state, shaped like ``y``.
    """
    tableau = get_method(method)
    ks = rk_stages(rate, y, tableau, dt, constrain, checkpoint_stages)
    return _apply_constrain(constrain, _combine(y, dt, tableau.b, ks))


def integrate(rate: Rate, y0, num_steps: int, method="rk4", dt=1.0, constrain: Constrain | None = None,
              checkpoint_stages: bool = False) -> Iterator:
    """Roll out ``num_steps`` steps from ``y0``; yields ``y_1, ..., y_num_steps`` (not ``y0``), lazily.

    The same ``constrain`` is used at every step; for prescribed values that change in time, loop over
    :func:`rk_step` with a per-step ``constrain`` instead. Wrap the loop in ``torch.no_grad()`` (or
    ``torch.inference_mode()``) for long rollouts that need no gradients.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 0:
        raise ValueError(f"num_steps must be a non-negative integer, got {num_steps!r}")
    _check_state(y0)
    return _rollout(rate, y0, int(num_steps), get_method(method), dt, constrain, checkpoint_stages)


def _rollout(rate, y, num_steps, tableau, dt, constrain, checkpoint_stages):
    for _ in range(num_steps):
        y = rk_step(rate, y, tableau, dt, constrain, checkpoint_stages)
        yield y
