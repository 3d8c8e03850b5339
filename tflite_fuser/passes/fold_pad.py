"""fold-pad: an explicit zero PAD before a VALID convolution becomes a SAME
convolution, when SAME would pad exactly that much.

Pattern::

    p = PAD(x, [[0,0],[t,b],[l,r],[0,0]])     (or PADV2 with a zero constant)
    y = OP(p, filter, bias, padding=VALID)     OP in CONV_2D, DEPTHWISE_CONV_2D
                       ->   y = OP(x, filter, bias, padding=SAME)

This is how PyTorch's symmetric ``padding=k//2`` reaches TFLite through a
converter that keeps the padding explicit (Keras ``ZeroPadding2D`` + VALID
too). TFLite's SAME adds ``total = max((ceil(n/s) - 1)*s + (k-1)*d + 1 - n, 0)``
on an axis of size ``n``, ``total // 2`` before and the rest after
(:func:`tflite_fuser.folding.same_padding`); for a stride-1 conv with an odd
kernel that is PyTorch's ``(k-1)/2`` on both sides, for stride 2 it depends
on the parity of ``n``.

Preconditions (each failure is reported with ``ctx.skip``):

- paddings and (PADV2) the pad value are constants; nothing is padded on the
  batch and channel axes; the pad value is 0 (in a quantized model: the zero
  point, i.e. real 0, which is what SAME pads with too);
- the PAD output is read only by the convolution, as its data input, and is
  neither a graph or signature output nor a variable;
- input and output of PAD have the same type and quantization;
- the pad amounts equal SAME's for the conv's kernel, stride and dilation on
  both H and W; a dynamic H or W qualifies only at stride 1, where SAME's
  amounts do not depend on the size.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import folding
from ..graph import Model, Operator, Subgraph
from ..ops import CONV, DEPTHWISE, PAD, codes
from ..schema import Padding
from .base import FusionPass, Match, PassContext, Skip
from .predicates import same_quantization, spatial_zero_pad, why_not_removable
from .rebuild import clone_op

CONVS = codes((CONV, DEPTHWISE))


@dataclass
class PadConv(Match):
    pad: Operator
    conv: Operator


class FoldPadIntoConv(FusionPass):
    name = "fold-pad"
    summary = "turn a zero PAD + VALID CONV_2D/DEPTHWISE_CONV_2D into a SAME conv when the amounts match"
    anchors = codes(PAD)

    def match(self, ctx: PassContext, sg: Subgraph, pad: Operator) -> PadConv | Skip | None:
        if len(pad.inputs) < 2 or not pad.outputs or pad.outputs[0] is None:
            return None
        convs = [u for u in sg.consumers(pad.outputs[0]) if u.code in CONVS]
        if not convs:
            return None  # not a candidate
        reason = self._reason(ctx.model, sg, pad, convs[0])
        return Skip(reason, pad) if reason else PadConv(pad, convs[0])

    def apply(self, ctx: PassContext, sg: Subgraph, m: PadConv) -> str:
        pad, conv = m.pad, m.conv
        sg.replace([pad, conv], clone_op(conv, inputs=[pad.inputs[0]] + conv.inputs[1:], padding=Padding.SAME))
        return f"folded {pad.type_name} into {conv.type_name} -> {conv.outputs[0].name!r} as SAME padding"

    @staticmethod
    def _reason(model: Model, sg: Subgraph, pad: Operator, conv: Operator) -> str | None:
        x, p_out = pad.inputs[0], pad.outputs[0]
        why = why_not_removable(model, sg, p_out, conv)
        if why:
            return why
        if conv.inputs[0] is not p_out:
            return f"the padded tensor is not the data input of {conv.type_name}"
        opts = conv.options
        if opts is None:
            return f"{conv.type_name} has no options table"
        if opts.padding != Padding.VALID:
            return f"{conv.type_name} already pads (SAME); padding twice is not SAME"
        if x is None or len(x.shape) != 4 or len(p_out.shape) != 4:
            return "the padded tensor is not 4-D"
        if x.dtype != p_out.dtype or not same_quantization(x, p_out):
            return "PAD changes the type or quantization"
        amounts = spatial_zero_pad(pad)
        if isinstance(amounts, str):
            return amounts
        w = conv.inputs[1]
        if w is None or len(w.shape) != 4:
            return f"{conv.type_name} filter is not 4-D"
        sig = x.shape_signature or x.shape
        kernel = (int(w.shape[1]), int(w.shape[2]))
        strides = (max(opts.strideH, 1), max(opts.strideW, 1))
        dilations = (max(opts.dilationHFactor, 1), max(opts.dilationWFactor, 1))
        for i, axis in enumerate((1, 2)):
            size = int(x.shape[axis]) if sig[axis] >= 0 else None
            got = (int(amounts[axis][0]), int(amounts[axis][1]))
            if not folding.pad_equals_same(size, got, kernel[i], strides[i], dilations[i]):
                want = (folding.same_padding(size, kernel[i], strides[i], dilations[i]) if size is not None
                        else folding.same_padding_unknown_size(kernel[i], strides[i], dilations[i]))
                axis_name = "HW"[i]
                if want is None:
                    return (f"{axis_name} is dynamic and the stride is {strides[i]}: SAME padding depends on "
                            "the size")
                return (f"PAD on {axis_name} is {got}, SAME would pad {want} for kernel {kernel[i]}, "
                        f"stride {strides[i]}, dilation {dilations[i]} and size {size}")
        y = conv.outputs[0]
        for i, axis in enumerate((1, 2)):
            if sig[axis] >= 0 and y.shape[axis] != -(-int(x.shape[axis]) // strides[i]):
                return "the conv output shape does not match a SAME conv"
        return None
