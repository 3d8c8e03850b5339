"""drop-identities: an op that hands its input on unchanged goes; its readers
read the input.

Pattern::

    y = MUL(x, 1) | DIV(x, 1) | ADD(x, 0) | SUB(x, 0)      (float32, no activation)
    y = TRANSPOSE(x, [0, 1, ..., n-1])                      (any type)
    y = RESHAPE(x, shape of x)                              (any type)
    z = READER(y, ...)                 ->   z = READER(x, ...)

Converters leave these where a PyTorch op had nothing to do in the exported
shape (``x.view(x.shape)``, a permute that came out as the identity, a
batch-norm with unit scale), and other rewrites leave them too (two
TRANSPOSEs composed by merge-layout-pairs). Removing them is exact.

Preconditions:

- ``y`` is no model output and no variable (it would vanish from the
  interface), and its shape, type and quantization are ``x``'s, dynamic
  dimensions included (``shape_signature``); a RESHAPE's constant target is
  ``x``'s shape itself (declarations alone are not trusted);
- for MUL/DIV/ADD/SUB: float32, every element of the constant is exactly 1
  (or 0), and it broadcasts into ``x`` without growing it; an int8 MUL by 1
  still requantizes to its output's scale, so quantized ops stay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import Operator, Subgraph, Tensor
from ..ops import has_no_activation, layout_constant, traits
from ..schema import BuiltinOperator as Op
from .base import FusionPass, Match, PassContext, Skip
from .predicates import is_float32, same_quantization
from .rebuild import bypass
from .weights import Weight, float_weight_of

#: the constant that makes each affine op the identity, and on which side it may stand
_NEUTRAL = {"MUL": (1.0, (0, 1)), "DIV": (1.0, (1,)), "ADD": (0.0, (0, 1)), "SUB": (0.0, (1,))}


@dataclass
class Identity(Match):
    op: Operator
    x: Tensor


def _same_tensor_type(x: Tensor, y: Tensor) -> bool:
    return (x.dtype == y.dtype and list(x.shape) == list(y.shape) and same_quantization(x, y)
            and list(x.shape_signature or x.shape) == list(y.shape_signature or y.shape))


class DropIdentities(FusionPass):
    name = "drop-identities"
    summary = "MUL by 1, ADD of 0, identity TRANSPOSE, RESHAPE to the same shape => gone (exact)"
    anchors = (Op.MUL, Op.DIV, Op.ADD, Op.SUB, Op.TRANSPOSE, Op.RESHAPE)

    def match(self, ctx: PassContext, sg: Subgraph, op: Operator) -> Identity | Skip | None:
        if len(op.outputs) != 1 or not op.inputs or op.inputs[0] is None:
            return None
        x, y = self._identity_input(sg, op), op.outputs[0]
        if x is None or not _same_tensor_type(x, y):
            return None
        if ctx.model.is_observed(sg, y) or y.is_variable:
            return Skip(f"the identity's output {y.name!r} is a model output", op)
        return Identity(op, x)

    @staticmethod
    def _identity_input(sg: Subgraph, op: Operator) -> Tensor | None:
        """The input ``op`` hands on unchanged, if it is an identity."""
        x = op.inputs[0]
        if op.code == Op.TRANSPOSE:
            return x if layout_constant(op) == list(range(len(x.shape))) else None
        if op.code == Op.RESHAPE:
            # The target itself must be x's shape: a converter may declare
            # shapes it never computes (onnx2tf's [1, 1, 1] behind a computed
            # RESHAPE), so equal declarations alone prove nothing.
            return x if layout_constant(op) == list(x.shape) else None
        neutral = _NEUTRAL.get(traits(op.code).affine or "")
        if neutral is None or len(op.inputs) != 2 or not has_no_activation(op):
            return None
        value, const_sides = neutral
        for side in const_sides:
            c = float_weight_of(sg, op.inputs[side])
            data = op.inputs[1 - side]
            if isinstance(c, Weight) and is_float32(data) and c.raw.ndim <= len(data.shape) and (
                    np.broadcast_shapes(c.raw.shape, tuple(data.shape)) == tuple(data.shape)) and (
                    c.raw == value).all():
                return data
        return None

    def apply(self, ctx: PassContext, sg: Subgraph, m: Identity) -> str:
        y = m.op.outputs[0]
        bypass(ctx.model, sg, m.op, m.x)
        return f"dropped the identity {m.op.type_name} -> {y.name!r}"
