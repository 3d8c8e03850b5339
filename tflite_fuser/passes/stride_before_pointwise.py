"""stride-before-pointwise: a quantized 1x1 CONV_2D with stride > 1 becomes
STRIDED_SLICE (keep every stride-th row and column) + the same 1x1 conv at
stride 1, for a target that computes the strided form wrongly.

Pattern (the downsample shortcut of every ResNet)::

    y = CONV_2D(x, w 1x1, b, stride s)   ->   t = STRIDED_SLICE(x, ::s, ::s)
                                              y = CONV_2D(t, w 1x1, b, stride 1)

A 1x1 filter reads one pixel per output pixel, and at stride s it reads
pixels 0, s, 2s, ... (SAME pads nothing here: ceil(H/s) outputs need
(ceil(H/s) - 1) s + 1 <= H rows; VALID gives the same count), so taking those
pixels first and convolving at stride 1 computes the very same sums: exact,
bit for bit, int8 included (the slice keeps the input's quantization).

LiteRT's GPU delegate ignores the stride of a quantized 1x1 conv ("Shape
mismatch in GpuModelBuilder::UpdateOutputTensors(output of convolution1x1)"):
TF's and onnx2tf's int8 ResNet18 come out of the GPU 0.19 of their output
range off, while the CPU is 0.013-0.022 off the float model. Written so, the
GPU is right (float models are computed right there and are left alone, as
are all other targets: one op is faster than two).

Preconditions: a CONV_2D with a 1x1 filter, stride > 1, quantized input and
output (int8 or uint8).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import Operator, Subgraph
from ..schema import BuiltinOperator as Op
from ..schema import BuiltinOptions, Padding, TensorType, fb
from ..targets import QUANTIZED_STRIDED_POINTWISE
from .base import FusionPass, Match, PassContext, Skip
from .rebuild import clone_op


@dataclass
class StridedPointwise(Match):
    op: Operator
    strides: tuple[int, int]


class StrideBeforePointwise(FusionPass):
    name = "stride-before-pointwise"
    summary = ("quantized 1x1 CONV_2D with stride > 1 => STRIDED_SLICE + stride-1 conv (targets that compute "
               "the strided form wrongly)")
    anchors = (Op.CONV_2D,)

    def match(self, ctx: PassContext, sg: Subgraph, op: Operator) -> StridedPointwise | Skip | None:
        if QUANTIZED_STRIDED_POINTWISE in ctx.target.supports:
            return None
        if len(op.inputs) < 2 or op.inputs[0] is None or op.inputs[1] is None or len(op.inputs[1].shape) != 4:
            return None
        o = op.options
        if o is None or op.inputs[1].shape[1:3] != [1, 1] or (o.strideH, o.strideW) == (1, 1):
            return None
        x, y = op.inputs[0], op.outputs[0]
        if not (x.is_quantized and y.is_quantized and x.dtype in (TensorType.INT8, TensorType.UINT8)):
            return None  # float: the GPU computes it right
        if len(x.shape) != 4:
            return Skip(f"{ctx.target.lacks(QUANTIZED_STRIDED_POINTWISE)}, but its input is not rank 4", op)
        return StridedPointwise(op, (o.strideH, o.strideW))

    def apply(self, ctx: PassContext, sg: Subgraph, m: StridedPointwise) -> str:
        model, op = ctx.model, m.op
        x, y = op.inputs[0], op.outputs[0]
        sh, sw = m.strides
        shape = [x.shape[0], -(-x.shape[1] // sh), -(-x.shape[2] // sw), x.shape[3]]
        signature = None
        if x.shape_signature:
            signature = [x.shape_signature[0], *(-1 if d < 0 else -(-d // s) for d, s in
                                                 zip(x.shape_signature[1:3], m.strides)), x.shape_signature[3]]
        t = sg.add_tensor(x.like(f"{y.name}/strided", shape, signature))
        consts = [model.new_constant(sg, f"{y.name}/strided/{what}", np.array(v, np.int32), TensorType.INT32)
                  for what, v in (("begin", [0, 0, 0, 0]), ("end", [0, 0, 0, 0]), ("strides", [1, sh, sw, 1]))]
        opts = fb.StridedSliceOptionsT()
        opts.beginMask = opts.endMask = 0b1111  # every axis from its start to its end: no sizes to go stale
        strided = Operator(model.opcode(Op.STRIDED_SLICE), [x, *consts], [t], options=opts,
                           options_type=BuiltinOptions.StridedSliceOptions)
        conv = clone_op(op, inputs=[t, *op.inputs[1:]], strideH=1, strideW=1, padding=Padding.VALID)
        sg.replace([op], [strided, conv])
        return (f"took the stride {sh}x{sw} of the quantized 1x1 CONV_2D -> {y.name!r} into a STRIDED_SLICE "
                f"before it (target {ctx.target.name} computes the strided form wrongly)")
