"""Chains of scalar affine steps and clamps, composed into one normal form.

Converters write activations out of elementwise ops against scalar
constants: hard-sigmoid as ``MUL 1/6, ADD 0.5, MINIMUM 1, RELU`` or as
``ADD 3, RELU6, MUL 1/6``; a clamp to [0, 1] as ``MINIMUM 1, RELU``. Any such
chain, whatever its order, is one function of its input::

    f(x) = a * clamp(x, lo, hi) + b        (a != 0, lo <= hi)

because an affine step after it only changes ``a`` and ``b``, and a clamp
after it narrows ``[lo, hi]`` (for ``a > 0``, ``clamp(a*u + b, c, d)`` is
``a * clamp(u, (c-b)/a, (d-b)/a) + b``; ``a < 0`` swaps the bounds). So two
chains compute the same function exactly when their normal forms agree, and a
pass recognises hard-sigmoid, or a clamp pair, by comparing four numbers
instead of listing op orders. Pure functions, float64; no graph here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

INF = math.inf


class NotAFunctionOfX(ValueError):
    """The chain collapses to a constant (an empty clamp, a zero scale): no
    activation, and nothing a pass rewrites."""


@dataclass(frozen=True)
class Clamped:
    """``a * clamp(x, lo, hi) + b``; the identity is ``Clamped()``."""

    a: float = 1.0
    b: float = 0.0
    lo: float = -INF
    hi: float = INF

    def then_affine(self, mul: float, add: float = 0.0) -> "Clamped":
        """``mul * f(x) + add``."""
        if mul == 0 or not (math.isfinite(mul) and math.isfinite(add)):
            raise NotAFunctionOfX(f"a step scales by {mul:g} or adds {add:g}")
        return Clamped(self.a * mul, self.b * mul + add, self.lo, self.hi)

    def then_clamp(self, lo: float, hi: float) -> "Clamped":
        """``clamp(f(x), lo, hi)``."""
        lo_x, hi_x = (lo - self.b) / self.a, (hi - self.b) / self.a
        if self.a < 0:
            lo_x, hi_x = hi_x, lo_x
        new_lo, new_hi = max(self.lo, lo_x), min(self.hi, hi_x)
        if not new_lo < new_hi:
            raise NotAFunctionOfX(f"the clamps leave [{new_lo:g}, {new_hi:g}]: a constant")
        return Clamped(self.a, self.b, new_lo, new_hi)

    @property
    def is_clamp(self) -> bool:
        """A pure clamp of x (no scale, no shift)."""
        return self.a == 1.0 and self.b == 0.0

    def close_to(self, other: "Clamped", rtol: float = 1e-5) -> bool:
        """Equal up to ``rtol`` in each number (float32 constants such as
        0.16666667 stand for 1/6; the interpreter proves the rewrite anyway)."""
        return all(_close(x, y, rtol) for x, y in
                   ((self.a, other.a), (self.b, other.b), (self.lo, other.lo), (self.hi, other.hi)))

    def __str__(self) -> str:
        inner = f"clamp(x, {self.lo:g}, {self.hi:g})" if (self.lo, self.hi) != (-INF, INF) else "x"
        return f"{self.a:g} * {inner} + {self.b:g}"


def _close(x: float, y: float, rtol: float) -> bool:
    if math.isinf(x) or math.isinf(y):
        return x == y
    return abs(x - y) <= rtol * max(1.0, abs(x), abs(y))


#: hard-sigmoid, ``relu6(x + 3) / 6`` (PyTorch's ``Hardsigmoid``): the gate
#: of ``HARD_SWISH(x) = x * relu6(x + 3) / 6``
HARD_SIGMOID = Clamped(1 / 6, 0.5, -3.0, 3.0)


def hard_sigmoid_multiple(f: Clamped, rtol: float = 1e-5) -> float | None:
    """``k`` when ``f`` is ``k * hard_sigmoid`` for some ``k > 0`` (the
    ``x * relu6(x + 3)`` of a hard-swish whose ``/ 6`` comes after the
    product has k = 6); None otherwise."""
    if f.a <= 0:
        return None
    k = f.a / HARD_SIGMOID.a
    return k if f.close_to(Clamped(HARD_SIGMOID.a * k, HARD_SIGMOID.b * k, -3.0, 3.0), rtol) else None
