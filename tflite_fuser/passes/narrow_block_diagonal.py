"""Narrow a dense CONV_2D whose filter is block diagonal into the depthwise or
grouped convolution it really is.

Some converters (and some hand-written "depthwise as dense conv" layers)
emit a full ``[Cout, kh, kw, Cin]`` filter that is zero except where output
channel block ``g`` meets input channel block ``g``. The interpreter then
multiplies by all those zeros: Cin/G times the work of the grouped conv.

Pattern::

    CONV_2D(x[N,H,W,Cin], w[Cout,kh,kw,Cin] constant, bias)

  * G = Cin blocks (each output reads one input channel, Cout = M*Cin)
        => ``DEPTHWISE_CONV_2D`` with depth_multiplier M, filter ``[1,kh,kw,Cout]``;
  * 1 < G < Cin blocks => grouped ``CONV_2D`` with filter ``[Cout,kh,kw,Cin/G]``
        (op version 6; float32 only: int8 grouped rounds differently, see
        ``Target.quantized_merge_refused`` in targets.py).

Preconditions:

  1. The conv is dense (filter's last axis == input channels) with Cin > 1;
     the filter is a constant (or float16 behind a DEQUANTIZE) and the op has
     a bias (the kernels require one; it is kept as is: output channels do not move).
  2. Exact zeros only: an entry counts as zero when its stored value equals
     the filter's zero point (0 for floats). The largest G that makes the
     filter block diagonal is used.
  3. Float32 activations with float32 (or float16) filters, or int8 with int8
     filters narrowed to a depthwise conv (bit-exact); no hybrid, uint8 or
     int16 models. Per-channel filter parameters must run along the output
     axis, and carry over unchanged (to axis 3 for a depthwise filter).

The pass walks each CONV_2D once and reads each filter once: linear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..conv_layout import block_diagonal_groups, block_nonzero, narrow_filter, ohwi_to_depthwise
from ..graph import Operator, Subgraph, Tensor, quantization
from ..schema import BuiltinOperator as Op
from ..schema import TensorType, type_name
from .base import FusionPass, Match, PassContext, Skip
from .convs import ConvGeometry, grouped_conv
from ..targets import GROUPED_CONV, MERGE_GROUPED
from .weights import Weight, WeightStore, weight_of

_QUANTIZED = (TensorType.INT8, TensorType.UINT8)


@dataclass
class BlockDiagonal(Match):
    op: Operator
    filter: Weight
    groups: int


class NarrowBlockDiagonalConv(FusionPass):
    name = "narrow-block-diagonal"
    summary = "dense CONV_2D with a block-diagonal filter => DEPTHWISE_CONV_2D or grouped CONV_2D"
    anchors = (Op.CONV_2D,)

    def match(self, ctx: PassContext, sg: Subgraph, op: Operator) -> BlockDiagonal | Skip | None:
        if len(op.inputs) < 2 or op.inputs[0] is None or len(op.outputs) != 1 or op.options is None:
            return None
        x, w_t = op.inputs[0], op.inputs[1]
        if len(x.shape) != 4 or w_t is None or len(w_t.shape) != 4:
            return None
        cin = x.shape[3]
        cout, _, _, width = w_t.shape
        if cin <= 1 or width != cin or math.gcd(cin, cout) <= 1:
            return None  # already grouped, or nothing to narrow
        if ctx.memo.get(("block-diagonal groups", w_t)) == 1:
            return None  # a dense filter seen before (the fixed point's next round)
        w = weight_of(sg, w_t)
        if isinstance(w, str):
            return None
        zero = _zero_points(w.stored, cout)
        groups = ctx.remember(("block-diagonal groups", w.stored), lambda: _groups(w.raw, zero))
        if isinstance(zero, str):
            return Skip(zero, op) if groups > 1 else None
        if groups == 1:
            return None

        why = _types_ok(x, w.stored, op)
        if why:
            return Skip(f"block diagonal ({groups} groups) but {why}", op)
        bias = op.inputs[2] if len(op.inputs) > 2 else None
        if bias is None:
            return Skip(f"block diagonal ({groups} groups) but the conv has no bias", op)
        depthwise = groups == cin
        if not depthwise:
            why = ctx.target.lacks(GROUPED_CONV) or ctx.target.refuses(MERGE_GROUPED)
            if why:
                return Skip(f"block diagonal ({groups} groups) but a grouped CONV_2D is {why}", op)
        why = ctx.target.quantized_merge_refused(x.dtype, depthwise)
        if why:
            return Skip(f"block diagonal ({groups} groups) but {why}", op)
        return BlockDiagonal(op, w, groups)

    def apply(self, ctx: PassContext, sg: Subgraph, m: BlockDiagonal) -> str:
        op, w, groups = m.op, m.filter, m.groups
        x, bias, out = op.inputs[0], op.inputs[2], op.outputs[0]
        cin, cout = x.shape[3], w.stored.shape[0]
        narrowed = narrow_filter(w.raw, groups)
        q = w.stored.quant_params()
        depthwise = groups == cin
        # Per-channel parameters run along the output axis and carry over
        # unchanged: to axis 3 of a depthwise filter.
        quant = None if q is None else quantization(q[0], q[1], (3 if depthwise else q[2]) if len(q[0]) > 1 else 0)
        store = WeightStore(ctx.model, sg, ctx, [op])
        filt = store.add(ohwi_to_depthwise(narrowed) if depthwise else narrowed, w, f"{out.name}/narrowed_filter",
                         quant)
        geometry = ConvGeometry.of(op)
        store.commit(grouped_conv(ctx.model, x, filt, bias, out, depthwise=depthwise, depth_multiplier=cout // cin,
                                  geometry=geometry, activation=geometry.activation, like=op))
        what = "DEPTHWISE_CONV_2D" if depthwise else f"grouped CONV_2D ({groups} groups)"
        return f"narrowed block-diagonal CONV_2D -> {out.name!r} to {what}"


def _groups(w: np.ndarray, zero) -> int:
    """The filter's block-diagonal group count (1: dense). A filter without a
    single zero (most real ones) is dense: one pass over it says so."""
    z = 0 if isinstance(zero, str) else zero
    # Asked of every conv of a big model: an isinstance and a count are a few
    # times cheaper than np.ndim and a comparison.
    scalar = not isinstance(z, np.ndarray) or z.ndim == 0
    if scalar and (np.count_nonzero(w) == w.size if z == 0 else (w != z).all()):
        return 1
    return block_diagonal_groups(block_nonzero(w, z))


def _types_ok(x: Tensor, w: Tensor, op: Operator) -> str | None:
    if x.dtype == TensorType.FLOAT32:
        if w.dtype not in (TensorType.FLOAT32, TensorType.FLOAT16):
            return f"hybrid model (float activations, {type_name(w.dtype)} filter)"
        return None
    if x.dtype not in _QUANTIZED:
        return f"{type_name(x.dtype)} activations are not handled"
    if w.dtype != x.dtype or op.outputs[0].dtype != x.dtype:
        return f"{type_name(x.dtype)} activations with a {type_name(w.dtype)} filter"
    if len(w.quant_params()[0]) > 1 and x.dtype != TensorType.INT8:
        return "per-channel parameters on a non-int8 filter"
    return None


def _zero_points(w: Tensor, cout: int) -> np.ndarray | int | str:
    """The stored value that means 0, per output channel or as one number."""
    q = w.quant_params()
    if q is None or w.dtype not in _QUANTIZED:
        return 0
    scale, zp, dim = q
    if len(scale) == 1:
        return int(zp[0]) if len(zp) else 0
    if dim != 0 or len(scale) != cout:
        return "per-channel filter parameters not along the output axis"
    return zp if len(zp) == cout else np.zeros(cout, np.int64)
