"""batch-matmul-to-fc: a BATCH_MATMUL by a constant matrix is a FULLY_CONNECTED.

Pattern (onnx2tf writes ``nn.Linear`` on a token tensor ``[N, T, C]`` so, its
bias as an ADD after it)::

    y = BATCH_MATMUL(x [..., K], W [K, U])             ->   y = FULLY_CONNECTED(x, W^T [U, K], keep_num_dims)
    y = BATCH_MATMUL(x [..., K], W [U, K], adj_y)      ->   y = FULLY_CONNECTED(x, W, keep_num_dims)

A rank-2 right operand is broadcast over every batch axis, so each row of
``x`` is multiplied by the same matrix: what FULLY_CONNECTED does with
``keep_num_dims`` (the output keeps ``x``'s leading axes). The bias ADD
after it then folds into the FULLY_CONNECTED (fold-affine), and its kernel
takes a fused activation, which BATCH_MATMUL has none of. The weights are
transposed once (a copy of the bytes, no arithmetic; float16 weights behind
DEQUANTIZE stay float16).

Preconditions: float32 ``x`` and output (an int8 BATCH_MATMUL's quantization
is per tensor, FULLY_CONNECTED's bias and rounding differ: not done); no
``adj_x``; the right operand a constant matrix (float32, or float16 behind
DEQUANTIZE); for a target whose FULLY_CONNECTED mishandles a multi-row input
(``targets.FLATTENING_FC``), only a rank-2 ``x``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import Operator, Subgraph
from ..ops import version_for
from ..schema import BuiltinOperator as Op
from ..schema import BuiltinOptions, fb
from ..targets import FLATTENING_FC
from .base import FusionPass, Match, PassContext, Skip
from .predicates import is_float32
from .rebuild import drop_dead_dequantize
from .weights import Weight, WeightStore, float_weight_of


@dataclass
class ConstantMatmul(Match):
    op: Operator
    weight: Weight
    transpose: bool


class BatchMatmulToFc(FusionPass):
    name = "batch-matmul-to-fc"
    summary = "BATCH_MATMUL by a constant matrix => FULLY_CONNECTED (keep_num_dims); its bias then folds"
    anchors = (Op.BATCH_MATMUL,)

    def match(self, ctx: PassContext, sg: Subgraph, op: Operator) -> ConstantMatmul | Skip | None:
        if len(op.inputs) != 2 or len(op.outputs) != 1 or op.inputs[0] is None:
            return None
        x, w_t = op.inputs
        w = float_weight_of(sg, w_t)
        if not isinstance(w, Weight):
            return None  # two activations multiplied (attention): no weights
        if w.raw.ndim != 2:
            return Skip(f"the constant operand has rank {w.raw.ndim}, not a matrix broadcast over the batch", op)
        if not (is_float32(x) and is_float32(op.outputs[0])):
            return Skip("not float32 (a quantized BATCH_MATMUL rounds differently from FULLY_CONNECTED)", op)
        o = op.options
        if o is None or o.adjX:
            return Skip("the left operand is transposed (adj_x)", op)
        if len(x.shape) > 2 and ctx.target.lacks(FLATTENING_FC):
            return Skip(f"x has rank {len(x.shape)}; {ctx.target.lacks(FLATTENING_FC)}", op)
        return ConstantMatmul(op, w, transpose=not o.adjY)

    def apply(self, ctx: PassContext, sg: Subgraph, m: ConstantMatmul) -> str:
        y = m.op.outputs[0]
        store = WeightStore(ctx.model, sg, ctx, [m.op])
        values = np.ascontiguousarray(m.weight.raw.T if m.transpose else m.weight.raw)
        weights = store.add(values, m.weight, f"{y.name}/weights")
        opts = fb.FullyConnectedOptionsT()
        opts.keepNumDims = True
        version = version_for(Op.FULLY_CONNECTED, keep_num_dims=True)
        new = Operator(ctx.model.opcode(Op.FULLY_CONNECTED, version), [m.op.inputs[0], weights, None], [y], options=opts,
                       options_type=BuiltinOptions.FullyConnectedOptions)
        store.commit(new)
        drop_dead_dequantize(ctx.model, sg, m.op.inputs)
        return (f"wrote BATCH_MATMUL -> {y.name!r} by a constant {list(m.weight.raw.shape)} matrix as "
                f"FULLY_CONNECTED (keep_num_dims)")
