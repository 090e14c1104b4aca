"""The built-in explicit Runge–Kutta methods and :func:`get_method`.

Entries are exact fraction strings, rounded once to the nearest float.
"""
from __future__ import annotations

import os

from .tableau import Tableau, TableauError, load_tableau

EULER = Tableau("euler", A=[["0"]], b=["1"], c=["0"], order=1)

HEUN = Tableau("heun",  # explicit trapezoid
               A=[["0", "0"],
                  ["1", "0"]],
               b=["1/2", "1/2"], c=["0", "1"], order=2)

MIDPOINT = Tableau("midpoint",
                   A=[["0", "0"],
                      ["1/2", "0"]],
                   b=["0", "1"], c=["0", "1/2"], order=2)

HEUN3 = Tableau("heun3",  # Heun's third-order method
                A=[["0", "0", "0"],
                   ["1/3", "0", "0"],
                   ["0", "2/3", "0"]],
                b=["1/4", "0", "3/4"], c=["0", "1/3", "2/3"], order=3)

SSPRK3 = Tableau("ssprk3",  # Shu–Osher strong-stability-preserving RK3
                 A=[["0", "0", "0"],
                    ["1", "0", "0"],
                    ["1/4", "1/4", "0"]],
                 b=["1/6", "1/6", "2/3"], c=["0", "1", "1/2"], order=3)

RK4 = Tableau("rk4",  # the classic Runge–Kutta method
              A=[["0", "0", "0", "0"],
                 ["1/2", "0", "0", "0"],
                 ["0", "1/2", "0", "0"],
                 ["0", "0", "1", "0"]],
              b=["1/6", "1/3", "1/3", "1/6"], c=["0", "1/2", "1/2", "1"], order=4)

METHODS: dict[str, Tableau] = {
    "euler": EULER,
    "heun": HEUN,
    "heun2": HEUN,
    "midpoint": MIDPOINT,
    "heun3": HEUN3,
    "ssprk3": SSPRK3,
    "rk4": RK4,
}
"""Built-in methods by name (``heun2`` is an alias of ``heun``)."""


def get_method(method) -> Tableau:
    """The :class:`Tableau` for ``method``: a built-in name (case-insensitive), a ``Tableau``, or a JSON file path.

    Raises ``TableauError`` (a ``ValueError``) naming the built-ins when the name is unknown.
    """
    if isinstance(method, Tableau):
        return method
    if isinstance(method, os.PathLike):
        return load_tableau(method)
    if isinstance(method, str):
        key = method.strip().lower()
        if key in METHODS:
            return METHODS[key]
        if key.endswith(".json") or os.path.isfile(method):
            return load_tableau(method)
    raise TableauError(f"unknown integrator {method!r}; choose one of {', '.join(METHODS)} "
                       "or give a path to a JSON tableau")


def receptive_field_hops(layers: int, method) -> int:
    """Graph hops one time step of an ``layers``-layer message-passing rate sees: ``layers * stages``.

    Each stage evaluates the rate on the previous stages' outputs, so stage ``i`` widens the ball by
    ``layers`` hops; a patch halo of this depth makes core outputs exact without communication. It is an upper
    bound (tight for every built-in method, whose stages form one chain).
    """
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
        raise ValueError(f"layers must be a non-negative integer, got {layers!r}")
    return layers * get_method(method).stages
