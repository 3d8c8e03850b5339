"""Elementwise ops against scalar constants, read as steps of one function.

``MUL``/``ADD``/``SUB``/``DIV`` by a scalar constant is an affine step (with
its fused activation, a clamp after it); ``MAXIMUM``/``MINIMUM`` with a scalar
constant and the RELU family are clamps. :func:`step_of` reads one op so,
:func:`walk_back` follows such ops up from a tensor to the tensor they are a
function of, composing them into a :class:`~tflite_fuser.clamp_algebra.Clamped`
normal form. Passes that recognise written-out activations (hard-swish,
clamp pairs) use these and compare normal forms.

Only float32 tensors qualify: a quantized MINIMUM compares raw integers in
its own scale, and a scalar constant's meaning depends on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..clamp_algebra import Clamped, NotAFunctionOfX
from ..graph import Model, Operator, Subgraph, Tensor
from ..ops import ACTIVATION_RANGE, INF, fused_activation, traits
from ..schema import ActivationFunctionType as Act
from .predicates import is_float32, why_not_removable
from .weights import scalar_of


@dataclass(frozen=True)
class Step:
    """What one op does to its data input ``data``: ``affine`` (mul, add)
    then ``clamp`` (lo, hi), either absent."""

    op: Operator
    data: Tensor
    affine: tuple[float, float] | None = None
    clamp: tuple[float, float] | None = None

    def after(self, f: Clamped) -> Clamped:
        if self.affine is not None:
            f = f.then_affine(*self.affine)
        if self.clamp is not None:
            f = f.then_clamp(*self.clamp)
        return f


def step_of(sg: Subgraph, op: Operator) -> Step | None:
    """``op`` as a step of a scalar chain, or None when it is not one (a
    tensor operand, a constant that is not one float32 scalar, a broadcast, a
    quantized or non-float32 tensor, an activation that is no clamp)."""
    t = traits(op.code)
    if not op.outputs or not is_float32(op.outputs[0]):
        return None
    if t.clamp is not None:
        x = op.inputs[0] if len(op.inputs) == 1 else None
        return Step(op, x, clamp=t.clamp) if is_float32(x) else None
    if len(op.inputs) != 2 or (t.affine is None and t.clamp_side is None):
        return None
    for i in (0, 1):
        c = scalar_of(sg, op.inputs[1 - i])
        x = op.inputs[i]
        if c is None or not is_float32(x) or list(x.shape) != list(op.outputs[0].shape):
            continue
        if t.clamp_side is not None:
            return Step(op, x, clamp=(c, INF) if t.clamp_side == "lower" else (-INF, c))
        act = fused_activation(op)
        act = Act.NONE if act is None else act
        if act not in ACTIVATION_RANGE:
            return None
        clamp = None if act == Act.NONE else ACTIVATION_RANGE[act]
        first = i == 1  # the constant comes first: c - x, c / x
        if t.affine == "MUL":
            affine = (c, 0.0)
        elif t.affine == "ADD":
            affine = (1.0, c)
        elif t.affine == "SUB":
            affine = (-1.0, c) if first else (1.0, -c)
        elif t.affine == "DIV" and not first and c != 0:
            affine = (1.0 / c, 0.0)
        else:
            return None
        return Step(op, x, affine=affine, clamp=clamp)
    return None


def walk_back(model: Model, sg: Subgraph, g: Tensor, root: Tensor, reader: Operator
              ) -> tuple[list[Step], Clamped] | str | None:
    """The scalar steps from ``root`` up to ``g`` (``g`` read by ``reader``),
    in order, and the function of ``root`` they compute.

    None when ``g`` is not such a function of ``root``; the reason when it is
    but the ops cannot be removed (an intermediate read elsewhere or seen
    from outside) or they collapse to a constant.
    """
    steps: list[Step] = []
    cur, nxt = g, reader
    while cur is not root:
        p = sg.producer(cur)
        step = None if p is None else step_of(sg, p)
        if step is None:
            return None
        why = why_not_removable(model, sg, cur, nxt)
        if why:
            return why
        steps.append(step)
        cur, nxt = step.data, p
    if not steps:
        return None
    steps.reverse()
    f = Clamped()
    try:
        for s in steps:
            f = s.after(f)
    except NotAFunctionOfX as e:
        return str(e)
    return steps, f
