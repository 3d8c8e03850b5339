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
        ``fuse_split_conv.quantized_rewrite_refused``).

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

import copy

import numpy as np

from ..conv_layout import block_diagonal_groups, block_nonzero, narrow_filter, ohwi_to_depthwise
from ..graph import Model, Operator, Subgraph, Tensor
from ..schema import BuiltinOperator as Op
from ..schema import BuiltinOptions, TensorType, fb, type_name
from .base import FusionPass, PassContext
from .channel_split import weight
from .fuse_split_conv import (GROUPED_CONV_VERSION, depthwise_version, quantization_params,
                              quantized_rewrite_refused)

_QUANTIZED = (TensorType.INT8, TensorType.UINT8)


class NarrowBlockDiagonalConv(FusionPass):
    name = "narrow-block-diagonal"
    summary = "dense CONV_2D with a block-diagonal filter => DEPTHWISE_CONV_2D or grouped CONV_2D"

    anchors = (Op.CONV_2D,)

    def rewrite_at(self, model: Model, sg: Subgraph, ctx: PassContext, op: Operator) -> int:
        r = self.narrow(model, sg, op, ctx.options.grouped_conv)
        if isinstance(r, str):
            ctx.skip(op, r)
            return 0
        if r:
            new = sg.producer(op.outputs[0])
            what = (f"DEPTHWISE_CONV_2D" if new.code == Op.DEPTHWISE_CONV_2D
                    else f"grouped CONV_2D ({new.inputs[0].shape[3] // new.inputs[1].shape[3]} groups)")
            ctx.rewrote(f"narrowed block-diagonal CONV_2D -> {op.outputs[0].name!r} to {what}")
        return int(bool(r))

    def narrow(self, model: Model, sg: Subgraph, op: Operator, grouped: bool = True) -> bool | str:
        """Rewrite ``op`` if it is block diagonal; False if it is not a
        candidate, a reason string if it is one that must be left alone."""
        if len(op.inputs) < 2 or op.inputs[0] is None or len(op.outputs) != 1 or op.options is None:
            return False
        x, w_t = op.inputs[0], op.inputs[1]
        if len(x.shape) != 4 or w_t is None or len(w_t.shape) != 4:
            return False
        cin = x.shape[3]
        cout, _, _, width = w_t.shape
        if cin <= 1 or width != cin or np.gcd(cin, cout) <= 1:
            return False  # already grouped, or nothing to narrow
        w = weight(sg, w_t)
        if w is None:
            return False
        zero = _zero_points(w.tensor, cout)
        if isinstance(zero, str):
            groups = block_diagonal_groups(block_nonzero(w.values, 0))
            return zero if groups > 1 else False
        groups = block_diagonal_groups(block_nonzero(w.values, zero))
        if groups == 1:
            return False

        why = self._types_ok(x, w.tensor, op)
        if why:
            return f"block diagonal ({groups} groups) but {why}"
        bias = op.inputs[2] if len(op.inputs) > 2 else None
        if bias is None:
            return f"block diagonal ({groups} groups) but the conv has no bias"
        depthwise = groups == cin
        if not depthwise and not grouped:
            return f"block diagonal ({groups} groups) but grouped CONV_2D is turned off (--no-grouped-conv)"
        why = quantized_rewrite_refused(x.dtype, depthwise)
        if why:
            return f"block diagonal ({groups} groups) but {why}"

        o = op.options
        narrowed = narrow_filter(w.values, groups)
        q = w.tensor.quant_params()
        quant = None
        if depthwise:
            stored = ohwi_to_depthwise(narrowed)
            if q is not None:
                per_channel = len(q[0]) > 1
                quant = quantization_params(q[0], q[1], 3 if per_channel else 0)
            opts = fb.DepthwiseConv2DOptionsT()
            opts.depthMultiplier = cout // cin
            opts.padding, opts.strideH, opts.strideW = o.padding, o.strideH, o.strideW
            opts.dilationHFactor, opts.dilationWFactor = o.dilationHFactor, o.dilationWFactor
            opts.fusedActivationFunction = o.fusedActivationFunction
            code, version, opts_type = (Op.DEPTHWISE_CONV_2D, depthwise_version(x.dtype, o),
                                        BuiltinOptions.DepthwiseConv2DOptions)
        else:
            stored = narrowed
            if q is not None:
                quant = quantization_params(q[0], q[1], q[2] if len(q[0]) > 1 else 0)
            opts = copy.copy(o)
            code, version, opts_type = (Op.CONV_2D, max(GROUPED_CONV_VERSION, op.opcode.version),
                                        BuiltinOptions.Conv2DOptions)

        out = op.outputs[0]
        const = model.new_constant(sg, f"{out.name}/narrowed_filter", stored, w.tensor.dtype, quant)
        filt, deq = const, None
        if w.dequantize is not None:
            filt = sg.add_tensor(Tensor(name=f"{const.name}/dequantize", shape=list(stored.shape),
                                        dtype=TensorType.FLOAT32))
            deq = Operator(model.opcode(Op.DEQUANTIZE, w.dequantize.opcode.version), [const], [filt])
        new = Operator(model.opcode(code, version), [x, filt, bias], [out], options=opts,
                       options_type=opts_type)
        if deq is None:
            sg.replace([op], new)
        elif sg.consumers(w_t) == [op] and w_t not in sg.outputs:
            sg.replace([w.dequantize], deq)  # its slot precedes the conv
            sg.replace([op], new)
        else:
            sg.replace([op], [deq, new])  # the old DEQUANTIZE feeds others too
        return True

    @staticmethod
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
