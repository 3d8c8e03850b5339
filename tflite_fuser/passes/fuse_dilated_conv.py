"""fuse-dilated-conv: a dilated convolution left in its lowered form becomes
one convolution with dilation factors.

Pattern (TF's converter writes a Keras ``Conv2D``/``DepthwiseConv2D`` with
``dilation_rate=d`` so whenever the batch size is not fixed, which is a Keras
``Input``'s default)::

    s = SPACE_TO_BATCH_ND(x, block [dh, dw], paddings P)
    c = CONV_2D | DEPTHWISE_CONV_2D(s, VALID, stride 1, dilation 1)
    y = BATCH_TO_SPACE_ND(c, block [dh, dw], crops C)
                      ->   y = CONV(x, SAME or VALID, dilation (dh, dw))
                      ->   y = CONV(PAD(x, P - C), VALID, dilation (dh, dw))    otherwise

Why it is exact: SPACE_TO_BATCH_ND cuts the padded input into ``dh x dw``
phases (every d-th row and column), a VALID conv of each phase with the
undilated kernel is the dilated conv of the whole at those outputs, and
BATCH_TO_SPACE_ND interleaves the phases back. So ``y`` is the VALID
dilated conv of ``x`` padded by ``P``, cropped by ``C``; cropping ``c0``
outputs at the start is dropping ``c0`` padded rows, so along each axis the
conv sees ``x`` padded by ``(p0 - c0, p1 - c1)``. When that is SAME's
padding for the dilated kernel at stride 1 (which does not depend on the
size), or zero, the conv takes that padding; otherwise an explicit PAD
stays (2 ops instead of 3). The padding value is zero (the zero point, in
a quantized model) in SPACE_TO_BATCH_ND, PAD and a SAME conv alike. A fused
activation is elementwise and moves along.

TFLite Micro computed TF's lowered form of such a model differently from
LiteRT (0.26 abs error on an output of range 0.015, measured by the issue);
the fused form is one conv it runs.

Preconditions: constant block shape (rank 1, two entries, both >= 1) equal
in both ops; constant paddings and crops with ``p - c >= 0`` on both axes and
no crop or padding of the batch; the conv VALID, stride 1, dilation 1; each
intermediate read by the next op alone and no model output; each pair of
tensors around a data-movement op in the same quantization.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import folding
from ..graph import Operator, Subgraph, Tensor
from ..ops import CONV, DEPTHWISE, slot, traits
from ..schema import BuiltinOperator as Op
from ..schema import BuiltinOptions, Padding, TensorType, fb
from .base import FusionPass, Match, PassContext, Skip
from .predicates import same_quantization, why_not_removable
from .rebuild import clone_op, opcode_for


@dataclass
class Dilated(Match):
    s2b: Operator
    conv: Operator
    b2s: Operator
    block: tuple[int, int]
    #: the padding the dilated conv sees, (before, after) on H and W
    pads: tuple[tuple[int, int], tuple[int, int]]
    padding: int | None  # Padding.SAME / VALID, or None: an explicit PAD


def _const(t: Tensor | None) -> np.ndarray | None:
    return None if t is None else t.value()


class FuseDilatedConv(FusionPass):
    name = "fuse-dilated-conv"
    summary = "SPACE_TO_BATCH_ND -> conv (VALID) -> BATCH_TO_SPACE_ND => one dilated conv"
    anchors = (Op.BATCH_TO_SPACE_ND,)

    def match(self, ctx: PassContext, sg: Subgraph, b2s: Operator) -> Dilated | Skip | None:
        c = b2s.inputs[0] if b2s.inputs else None
        conv = sg.producer(c) if c is not None else None
        if conv is None or traits(conv.code).kind not in (CONV, DEPTHWISE):
            return None
        s = slot(conv, "data")
        s2b = sg.producer(s) if s is not None else None
        if s2b is None or s2b.code != Op.SPACE_TO_BATCH_ND or len(s2b.inputs) != 3 or len(b2s.inputs) != 3:
            return None
        x, y = s2b.inputs[0], b2s.outputs[0]
        block, block2 = _const(s2b.inputs[1]), _const(b2s.inputs[1])
        pads, crops = _const(s2b.inputs[2]), _const(b2s.inputs[2])
        if (block is None or block2 is None or block.shape != (2,) or not np.array_equal(block, block2)
                or (block < 1).any()):
            return Skip("the block shapes are not one constant pair shared by both ops", b2s)
        if pads is None or crops is None or pads.shape != (2, 2) or crops.shape != (2, 2):
            return Skip("paddings or crops are not constant [2, 2] tensors", b2s)
        o = conv.options
        if o is None or o.padding != Padding.VALID or (o.strideH, o.strideW) != (1, 1) or (
                max(o.dilationHFactor, 1), max(o.dilationWFactor, 1)) != (1, 1):
            return Skip(f"the {conv.type_name} between them is not VALID with stride 1 and no dilation", b2s)
        for t, reader in ((s, conv), (c, b2s)):
            why = why_not_removable(ctx.model, sg, t, reader)
            if why:
                return Skip(why, b2s)
        if not (same_quantization(x, s) and same_quantization(c, y) and x.dtype == s.dtype and c.dtype == y.dtype):
            return Skip("a data-movement op changes the quantization", b2s)
        seen = tuple((int(pads[i, 0]) - int(crops[i, 0]), int(pads[i, 1]) - int(crops[i, 1])) for i in (0, 1))
        if min(min(p) for p in seen) < 0:
            return Skip(f"the crops {crops.tolist()} cut more than the paddings {pads.tolist()} added", b2s)
        kernel = slot(conv, "filter").shape[1:3]
        d = (int(block[0]), int(block[1]))
        if all(folding.pad_equals_same(None, seen[i], int(kernel[i]), 1, d[i]) for i in (0, 1)):
            padding = Padding.SAME
        elif seen == ((0, 0), (0, 0)):
            padding = Padding.VALID
        else:
            padding = None
        return Dilated(s2b, conv, b2s, d, seen, padding)

    def apply(self, ctx: PassContext, sg: Subgraph, m: Dilated) -> str:
        model = ctx.model
        x, y = m.s2b.inputs[0], m.b2s.outputs[0]
        new_ops = []
        if m.padding is None:
            pads = model.new_constant(sg, f"{y.name}/paddings",
                                      np.array([[0, 0], *m.pads, [0, 0]], np.int32), TensorType.INT32)
            shape = [x.shape[0], x.shape[1] + sum(m.pads[0]), x.shape[2] + sum(m.pads[1]), x.shape[3]]
            sig = None
            if x.shape_signature:
                grow = [0, sum(m.pads[0]), sum(m.pads[1]), 0]
                sig = [d if d < 0 else d + g for d, g in zip(x.shape_signature, grow)]
            padded = sg.add_tensor(x.like(f"{y.name}/padded", shape, sig))
            new_ops.append(Operator(model.opcode(Op.PAD), [x, pads], [padded], options=fb.PadOptionsT(),
                                    options_type=BuiltinOptions.PadOptions))
            x = padded
        data = traits(m.conv.code).data
        ins = list(m.conv.inputs)
        ins[data] = x
        new_ops.append(clone_op(m.conv, inputs=ins, outputs=[y],
                                opcode=opcode_for(model, m.conv, dilation=True),
                                padding=Padding.VALID if m.padding is None else m.padding,
                                dilationHFactor=m.block[0], dilationWFactor=m.block[1]))
        sg.replace([m.s2b, m.conv, m.b2s], new_ops)
        form = {Padding.SAME: "SAME", Padding.VALID: "VALID", None: f"PAD {list(m.pads)} + VALID"}[m.padding]
        return (f"wrote SPACE_TO_BATCH_ND -> {m.conv.type_name} -> BATCH_TO_SPACE_ND -> {y.name!r} as one "
                f"{m.conv.type_name} with dilation {m.block} ({form})")
