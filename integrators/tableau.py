"""Explicit Runge–Kutta methods as data: the Butcher tableau.

A method with ``s`` stages is ``(A, b, c)``::

    c_0 |
    c_1 | a_10
    ... | ...         ...
    c_s | a_s0  ...  a_s,s-1
    ----+-------------------
        | b_0   ...  b_s-1

Explicit means ``A`` is strictly lower-triangular, so stage ``i`` uses only stages ``j < i``.
Entries may be given as numbers or as exact fraction strings (``"1/3"``), which keeps JSON tableaus exact to
the last bit of a float.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from fractions import Fraction

TOLERANCE = 1e-9
"""Absolute tolerance of the consistency and order conditions (entries written with ~10 decimals pass)."""

SPEC_KEYS = ("name", "A", "b", "c", "order")


class TableauError(ValueError):
    """A Butcher tableau that is malformed; the message is one line naming what is wrong."""


def _number(value, where: str) -> float:
    """One tableau entry as a finite float; accepts ints, floats, Fractions and strings such as ``"1/3"``."""
    if isinstance(value, bool):
        raise TableauError(f"{where} = {value!r} is not a number")
    try:
        number = float(Fraction(value)) if isinstance(value, str) else float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        raise TableauError(f"{where} = {value!r} is not a number") from None
    if not math.isfinite(number):
        raise TableauError(f"{where} = {value!r} is not finite")
    return number


def _vector(values, name: str) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TableauError(f"{name} must be a list of numbers, got {values!r}")
    return tuple(_number(v, f"{name}[{i}]") for i, v in enumerate(values))


def _matrix(rows, stages: int) -> tuple[tuple[float, ...], ...]:
    if isinstance(rows, (str, bytes)) or not hasattr(rows, "__len__") or len(rows) != stages:
        got = len(rows) if hasattr(rows, "__len__") else rows
        raise TableauError(f"A must be a square {stages}x{stages} matrix (len(b) = {stages}), got {got!r} rows")
    matrix = []
    for i, row in enumerate(rows):
        if isinstance(row, (str, bytes)) or not hasattr(row, "__len__") or len(row) != stages:
            raise TableauError(f"A must be a square {stages}x{stages} matrix, row {i} is {row!r}")
        matrix.append(tuple(_number(a, f"A[{i}][{j}]") for j, a in enumerate(row)))
    return tuple(matrix)


def _order_conditions(A, b, c):
    """``(order, expression, value, required)`` for the rooted trees up to order 4 (Butcher 2016, §31)."""
    s = len(b)
    Ac = [sum(A[i][j] * c[j] for j in range(s)) for i in range(s)]
    Ac2 = [sum(A[i][j] * c[j] ** 2 for j in range(s)) for i in range(s)]
    AAc = [sum(A[i][j] * Ac[j] for j in range(s)) for i in range(s)]

    def bdot(v):
        return sum(bi * vi for bi, vi in zip(b, v))

    return [
        (2, "sum b_i c_i", bdot(c), 1 / 2),
        (3, "sum b_i c_i^2", bdot([x * x for x in c]), 1 / 3),
        (3, "sum b_i a_ij c_j", bdot(Ac), 1 / 6),
        (4, "sum b_i c_i^3", bdot([x ** 3 for x in c]), 1 / 4),
        (4, "sum b_i c_i a_ij c_j", bdot([ci * x for ci, x in zip(c, Ac)]), 1 / 8),
        (4, "sum b_i a_ij c_j^2", bdot(Ac2), 1 / 12),
        (4, "sum b_i a_ij a_jk c_k", bdot(AAc), 1 / 24),
    ]


@dataclass(frozen=True)
class Tableau:
    """An explicit Runge–Kutta method: ``A`` (s, s) strictly lower-triangular, ``b`` (s,), ``c`` (s,).

    Validated on construction (``TableauError``, a ``ValueError``, with a one-line message): ``A`` square,
    explicit, ``len(b) == len(c) == s``, finite entries, ``c_i == sum_j a_ij`` and ``sum b == 1`` within
    ``TOLERANCE``, and the claimed ``order`` (checked through the order conditions up to 4; higher orders are
    taken on trust beyond 4). Entries are stored as tuples of floats, so tableaus are hashable and compare by value.
    """

    name: str
    A: tuple
    b: tuple
    c: tuple
    order: int

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise TableauError(f"name must be a non-empty string, got {self.name!r}")
        b = _vector(self.b, "b")
        if not b:
            raise TableauError("b is empty: a method needs at least one stage")
        c = _vector(self.c, "c")
        if len(c) != len(b):
            raise TableauError(f"len(c) = {len(c)} but len(b) = {len(b)}: both must equal the number of stages")
        A = _matrix(self.A, len(b))
        if isinstance(self.order, bool) or not isinstance(self.order, int) or self.order < 1:
            raise TableauError(f"order must be a positive integer, got {self.order!r}")
        object.__setattr__(self, "A", A)
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "c", c)
        self._check_explicit()
        self._check_consistent()
        self._check_order()

    def _check_explicit(self):
        for i, row in enumerate(self.A):
            for j in range(i, len(row)):
                if row[j] != 0.0:
                    raise TableauError(
                        f"{self.name}: A[{i}][{j}] = {row[j]!r} is on or above the diagonal; "
                        "only explicit (strictly lower-triangular) methods are supported")

    def _check_consistent(self):
        for i, (row, ci) in enumerate(zip(self.A, self.c)):
            if abs(sum(row) - ci) > TOLERANCE:
                raise TableauError(f"{self.name}: c[{i}] = {ci!r} but row {i} of A sums to {sum(row)!r} "
                                   "(consistency needs c_i = sum_j a_ij)")
        if abs(sum(self.b) - 1.0) > TOLERANCE:
            raise TableauError(f"{self.name}: b sums to {sum(self.b)!r}, must sum to 1")

    def _check_order(self):
        for order, expression, value, required in _order_conditions(self.A, self.b, self.c):
            if order <= self.order and abs(value - required) > TOLERANCE:
                raise TableauError(f"{self.name}: claims order {self.order} but {expression} = {value!r}, "
                                   f"order {order} needs {required!r}")

    @property
    def stages(self) -> int:
        """Number of stages ``s`` (rate evaluations per step, zero-weight ones included)."""
        return len(self.b)

    def needed_stages(self) -> tuple[bool, ...]:
        """Whether stage ``i`` contributes to the step: ``b_i != 0`` or a needed later stage reads it.

        A stage that is not needed is multiplied by exact zeros everywhere, so skipping it changes no bit.
        """
        needed = [False] * self.stages
        for i in reversed(range(self.stages)):
            needed[i] = self.b[i] != 0.0 or any(needed[k] and self.A[k][i] != 0.0
                                                for k in range(i + 1, self.stages))
        return tuple(needed)

    def to_dict(self) -> dict:
        """The JSON-ready spec ``{"name", "A", "b", "c", "order"}`` that :func:`load_tableau` reads back."""
        return {"name": self.name, "A": [list(row) for row in self.A], "b": list(self.b), "c": list(self.c),
                "order": self.order}


def load_tableau(spec) -> Tableau:
    """A user tableau from a dict or a JSON file path holding ``{"name", "A", "b", "c", "order"}``.

    Raises ``TableauError`` (a ``ValueError``) with a one-line ``where: what`` message.
    """
    where = "tableau"
    if isinstance(spec, (str, os.PathLike)):
        where = os.fspath(spec)
        try:
            with open(where, encoding="utf-8") as f:
                spec = json.load(f)
        except OSError as e:
            raise TableauError(f"{where}: cannot read: {e.strerror or e}") from None
        except json.JSONDecodeError as e:
            raise TableauError(f"{where}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(spec, dict):
        raise TableauError(f"{where}: expected an object with keys {', '.join(SPEC_KEYS)}, "
                           f"got {type(spec).__name__}")
    missing = [k for k in SPEC_KEYS if k not in spec]
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if missing or unknown:
        problem = (f"missing {', '.join(missing)}" if missing else "") + \
                  ("; " if missing and unknown else "") + (f"unknown {', '.join(unknown)}" if unknown else "")
        raise TableauError(f"{where}: {problem} (a tableau has exactly {', '.join(SPEC_KEYS)})")
    try:
        return Tableau(spec["name"], spec["A"], spec["b"], spec["c"], spec["order"])
    except TableauError as e:
        raise TableauError(f"{where}: {e}") from None
