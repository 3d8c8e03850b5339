"""compose-linear-convs: two convolutions in a row with nothing non-linear
between them are one, when the one costs no more than the two.

Pattern::

    y = CONV_2D(x, W1 [M, kh, kw, Cin], b1)      (no activation)
    z = CONV_2D(y, W2 [Cout, 1, 1, M], b2)       ->   z = CONV_2D(x, W2 . W1, W2 . b1 + b2)
                                                       (W1's kernel, stride, padding; W2's activation)
    y = CONV_2D(x, W1 [M, 1, 1, Cin], b1)        (no activation, stride 1)
    z = CONV_2D(y, W2 [Cout, kh, kw, M], b2)     ->   z = CONV_2D(x, W2 . W1, b2 + sum W2 . b1)
                                                       (W2's kernel, stride, padding, activation)

Convolution is linear, so a conv of a conv is a conv (``reparam.compose_*``;
DiverseBranchBlock's 1x1 -> kxk branch, a linear bottleneck's projection
before a 1x1). A 1x1 after anything mixes each output pixel's channels and is
exact everywhere. A 1x1 *before* a kxk is exact in the weights, but its bias
reaches a SAME kxk's border taps as zeros (the padding), not as ``b1``: only
a VALID kxk, or a zero ``b1``, composes exactly; otherwise it is skipped.

Made only when the composed conv costs no more multiply-adds per output pixel
than the pair (``kh*kw*Cin*Cout <= kh*kw*Cin*M + M*Cout`` for a trailing 1x1,
``kh*kw*Cin*Cout <= Cin*M + kh*kw*M*Cout`` for a leading one): composing a
bottleneck (small ``M``) would multiply the work, and is refused with the
figures.

Preconditions: both dense CONV_2D (no groups) with float32 outputs and float
constant weights (float32, or float16 behind DEQUANTIZE); the first without a
fused activation; ``y`` read by the second alone and no model output; the
1x1 of a leading pair at stride 1 and dilation 1; the folded weights finite.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import reparam
from ..folding import FoldError
from ..graph import Operator, Subgraph
from ..ops import fused_activation, has_no_activation, slot
from ..schema import BuiltinOperator as Op
from ..schema import Padding
from .base import FusionPass, Match, PassContext, Skip
from .predicates import float_weights, is_float32, why_not_removable
from .rebuild import clone_op, drop_dead_dequantize, opcode_for
from .weights import Weight, WeightStore


@dataclass
class LinearPair(Match):
    first: Operator
    second: Operator
    #: the op whose geometry the composed conv takes (kernel, stride, padding)
    shape_of: Operator
    store: WeightStore
    weights: np.ndarray
    bias: np.ndarray
    #: the stored weights the new ones are stored like (float32, or float16 behind DEQUANTIZE)
    filter_like: Weight
    bias_like: Weight | None


def _pointwise(op: Operator) -> bool:
    o = op.options
    return (slot(op, "filter").shape[1:3] == [1, 1] and (o.strideH, o.strideW) == (1, 1)
            and (max(o.dilationHFactor, 1), max(o.dilationWFactor, 1)) == (1, 1))


class ComposeLinearConvs(FusionPass):
    name = "compose-linear-convs"
    summary = "CONV_2D -> 1x1 CONV_2D (or 1x1 -> CONV_2D) with nothing between => one CONV_2D, when no costlier"
    anchors = (Op.CONV_2D,)

    def match(self, ctx: PassContext, sg: Subgraph, second: Operator) -> LinearPair | Skip | None:
        y = slot(second, "data")
        first = sg.producer(y) if y is not None else None
        if first is None or first.code != Op.CONV_2D or first.options is None or second.options is None:
            return None
        if not has_no_activation(first):
            return None  # a non-linearity between them: the usual conv -> conv
        why = why_not_removable(ctx.model, sg, y, second)
        if why:
            return Skip(f"two linear convs, but {why}", second)
        for op in (first, second):
            if not is_float32(op.outputs[0]):
                return Skip("two linear convs, but not float32", second)
        w1b1, w2b2 = float_weights(sg, first), float_weights(sg, second)
        for got in (w1b1, w2b2):
            if isinstance(got, str):
                return Skip(f"two linear convs, but {got}", second)
        (w1, b1), (w2, b2) = w1b1, w2b2
        x = slot(first, "data")
        m, cin, cout = w1.stored.shape[0], w1.stored.shape[3], w2.stored.shape[0]
        if x is None or cin != x.shape[-1] or w2.stored.shape[3] != m:
            return Skip("two linear convs, but one is grouped", second)
        f1, f2 = w1.float64(), w2.float64()
        zero1 = np.zeros(m) if b1 is None else b1.float64().reshape(-1)
        zero2 = np.zeros(cout) if b2 is None else b2.float64().reshape(-1)
        k1, k2 = tuple(w1.stored.shape[1:3]), tuple(w2.stored.shape[1:3])
        if _pointwise(second):
            shape_of, kernel = first, k1
            pair = reparam.macs_per_pixel(k1, cin, m) + reparam.macs_per_pixel((1, 1), m, cout)
            w, b = reparam.compose_pointwise_after(f1, zero1, f2, zero2)
        elif _pointwise(first):
            shape_of, kernel = second, k2
            pair = reparam.macs_per_pixel((1, 1), cin, m) + reparam.macs_per_pixel(k2, m, cout)
            if second.options.padding != Padding.VALID and zero1.any():
                return Skip("a 1x1 with a bias before a SAME conv: the border taps see zeros, not the bias", second)
            w, b = reparam.compose_after_pointwise(f1, zero1, f2, zero2)
        else:
            return None  # neither is a 1x1: the composed kernel would grow
        one = reparam.macs_per_pixel(kernel, cin, cout)
        if one > pair:
            return Skip(f"two linear convs, but one conv would cost {one:,} multiply-adds per pixel against "
                        f"{pair:,} for the pair", second)
        store = WeightStore(ctx.model, sg, ctx, [first, second])
        bias_like = b2 or b1
        try:
            w_arr, b_arr = store.round(w, w1, "filter"), store.round(b, bias_like, "bias")
        except FoldError as e:
            return Skip(str(e), second)
        return LinearPair(first, second, shape_of, store, w_arr, b_arr, w1, bias_like)

    def apply(self, ctx: PassContext, sg: Subgraph, m: LinearPair) -> str:
        z = m.second.outputs[0]
        filt = m.store.add(m.weights, m.filter_like, f"{z.name}/filter")
        bias = m.store.add(m.bias, m.bias_like, f"{z.name}/bias")
        act = fused_activation(m.second)
        new = clone_op(m.shape_of, inputs=[slot(m.first, "data"), filt, bias], outputs=[z],
                       opcode=opcode_for(ctx.model, m.shape_of, bias=True), fusedActivationFunction=act)
        m.store.commit(new)
        drop_dead_dequantize(ctx.model, sg, list(m.first.inputs) + list(m.second.inputs))
        k = list(m.weights.shape[1:3])
        return (f"composed CONV_2D -> CONV_2D -> {z.name!r} into one {k[0]}x{k[1]} CONV_2D "
                f"({m.weights.shape[3]} -> {m.weights.shape[0]} channels)")
