"""drop-reshape-before-fc: a RESHAPE that flattens a FULLY_CONNECTED's input
goes: the FULLY_CONNECTED flattens it by itself.

Pattern (a classifier head after global pooling, as converters that map
``torch.flatten`` to its own op write it)::

    t = RESHAPE(x, [N, K])                 ->   y = FULLY_CONNECTED(x, W [U, K], b)
    y = FULLY_CONNECTED(t, W [U, K], b)

Without ``keep_num_dims`` the kernel reads any input as ``[numel / K, K]``
rows of K in memory order: the very reshape it is given. Exact for every
type (a RESHAPE keeps its input's quantization).

LiteRT's GPU delegate gets the flattening of a rank-4 input wrong (a
``[1, 8, 8, 16]`` input, measured); for a target without that form only a
RESHAPE of ``[1, 1, 1, C]`` (nothing to flatten) goes.

Preconditions: the FULLY_CONNECTED does not keep its input's dimensions; the
RESHAPE's output is 2-D ``[numel / K, K]`` with K the weights' input size,
read by the FULLY_CONNECTED alone (as its data input) and no model output;
input and output share type and quantization.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..graph import Operator, Subgraph
from ..schema import BuiltinOperator as Op
from ..targets import FLATTENING_FC
from .base import FusionPass, Match, PassContext, Skip
from .predicates import same_quantization, why_not_removable
from .rebuild import clone_op


@dataclass
class FlattenFc(Match):
    reshape: Operator
    fc: Operator


class DropReshapeBeforeFc(FusionPass):
    name = "drop-reshape-before-fc"
    summary = "RESHAPE flattening a FULLY_CONNECTED's input => gone (the FULLY_CONNECTED flattens it)"
    anchors = (Op.FULLY_CONNECTED,)

    def match(self, ctx: PassContext, sg: Subgraph, fc: Operator) -> FlattenFc | Skip | None:
        t = fc.inputs[0] if fc.inputs else None
        reshape = sg.producer(t) if t is not None else None
        if reshape is None or reshape.code != Op.RESHAPE or fc.inputs[1] is None or len(fc.inputs[1].shape) != 2:
            return None
        x = reshape.inputs[0]
        k = int(fc.inputs[1].shape[1])
        if fc.options is None or fc.options.keepNumDims:
            return Skip("the FULLY_CONNECTED keeps its input's dimensions: the RESHAPE sets them", reshape)
        why = why_not_removable(ctx.model, sg, t, fc)
        if why:
            return Skip(why, reshape)
        if x is None or any(d <= 0 for d in x.shape) or (x.shape_signature and min(x.shape_signature) < 0):
            return Skip("the RESHAPE's input shape is dynamic", reshape)
        n = math.prod(int(d) for d in x.shape)
        if list(t.shape) != [n // k, k] or n % k:
            return Skip(f"the RESHAPE to {list(t.shape)} is not the [numel / {k}, {k}] the FULLY_CONNECTED reads",
                        reshape)
        if t.dtype != x.dtype or not same_quantization(t, x):
            return Skip("the RESHAPE changes the type or quantization", reshape)
        if FLATTENING_FC not in ctx.target.supports and any(d != 1 for d in x.shape[:-1]):
            return Skip(f"{ctx.target.lacks(FLATTENING_FC)}: the RESHAPE stays", reshape)
        return FlattenFc(reshape, fc)

    def apply(self, ctx: PassContext, sg: Subgraph, m: FlattenFc) -> str:
        x = m.reshape.inputs[0]
        sg.replace([m.reshape, m.fc], clone_op(m.fc, inputs=[x, *m.fc.inputs[1:]]))
        return (f"dropped the RESHAPE {list(x.shape)} -> {list(m.reshape.outputs[0].shape)} before "
                f"FULLY_CONNECTED -> {m.fc.outputs[0].name!r} (it flattens its input itself)")
