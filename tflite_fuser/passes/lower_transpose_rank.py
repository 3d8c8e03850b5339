"""lower-transpose-rank: a rank-5 (or more) RESHAPE -> TRANSPOSE -> RESHAPE
becomes the same data movement in rank 4, for a target whose tensors stop at
rank 4.

Pattern (ShuffleNet's channel shuffle, as litert-torch writes it)::

    t = RESHAPE(x, [1, 2, C/2, H, W])        t4 = RESHAPE(x, [1, 2, C/2, H*W])
    y = TRANSPOSE(t, (0, 2, 1, 3, 4))   ->   y4 = TRANSPOSE(t4, (0, 2, 1, 3))
    z = RESHAPE(y, [1, C, H, W])             z  = RESHAPE(y4, [1, C, H, W])

Input axes that stay adjacent and in order through the transpose move as one
block, and size-1 axes move nothing (:mod:`transpose_rank`): merged, the
transpose moves every element to the same place in row-major memory, so the
reshapes around it absorb the change. Exact for every type (data movement
only; quantization rides along unchanged).

LiteRT's GPU delegate refuses any tensor of rank 5 ("Tensor dimensions must
be less than 5"): one shuffle per ShuffleNetV2 unit puts most of the network
back on the CPU, with copies at every boundary. On the CPU the rank-5 form
is measured no slower, so only targets without rank 5 get this.

Preconditions: the transpose's permutation is constant and its input shape
static; its input is a RESHAPE's output read by it alone, of a tensor of rank
at most 4; its output is read only by RESHAPEs (to rank at most 4) and is no
model output; the merged transpose has rank at most 4.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import Operator, Subgraph, Tensor
from ..schema import BuiltinOperator as Op
from ..schema import BuiltinOptions, TensorType, fb
from ..targets import RANK_5
from ..transpose_rank import merged_transpose, padded, transposed_shape
from .base import FusionPass, Match, PassContext, Skip
from .predicates import why_not_removable

MAX_RANK = 4


@dataclass
class Shuffle(Match):
    reshape: Operator
    transpose: Operator
    readers: list[Operator]
    shape4: list[int]
    perm4: list[int]


def _static(t: Tensor) -> bool:
    return all(d > 0 for d in t.shape) and not (t.shape_signature and any(d < 0 for d in t.shape_signature))


class LowerTransposeRank(FusionPass):
    name = "lower-transpose-rank"
    summary = "rank-5 RESHAPE -> TRANSPOSE -> RESHAPE => the same movement in rank 4 (targets without rank 5)"
    anchors = (Op.TRANSPOSE,)

    def match(self, ctx: PassContext, sg: Subgraph, op: Operator) -> Shuffle | Skip | None:
        if RANK_5 in ctx.target.supports:
            return None
        if len(op.inputs) != 2 or len(op.outputs) != 1 or op.inputs[0] is None or op.inputs[1] is None:
            return None
        t, y = op.inputs[0], op.outputs[0]
        if len(t.shape) <= MAX_RANK:
            return None
        lacks = ctx.target.lacks(RANK_5)
        perm = op.inputs[1].value()
        if perm is None or not _static(t) or not _static(y):
            return Skip(f"{lacks}, but the permutation is not constant or a shape is dynamic", op)
        perm = [int(p) % len(t.shape) for p in perm.reshape(-1)]
        shape, mperm = merged_transpose(t.shape, perm)
        if len(shape) > MAX_RANK:
            return Skip(f"{lacks}, but even with adjacent axes merged the transpose has rank {len(shape)}", op)
        reshape = sg.producer(t)
        if reshape is None or reshape.code != Op.RESHAPE:
            return Skip(f"{lacks}, but the transpose's input does not come from a RESHAPE", op)
        why = why_not_removable(ctx.model, sg, t, op)
        if why:
            return Skip(f"{lacks}, but {why}", op)
        if len(reshape.inputs[0].shape) > MAX_RANK:
            return Skip(f"{lacks}, but the RESHAPE before it reads a rank-{len(reshape.inputs[0].shape)} tensor", op)
        if len(reshape.inputs) > 1 and reshape.inputs[1] is not None and reshape.inputs[1].value() is None:
            return Skip(f"{lacks}, but the RESHAPE before it takes its shape at run time", op)
        readers = sg.consumers(y)
        if ctx.model.is_observed(sg, y) or y.is_variable:
            return Skip(f"{lacks}, but its output {y.name!r} is a model output", op)
        if not readers or any(r.code != Op.RESHAPE or r.inputs[0] is not y or y in r.inputs[1:]
                              or len(r.outputs[0].shape) > MAX_RANK for r in readers):
            return Skip(f"{lacks}, but its output is not read by RESHAPEs to rank {MAX_RANK} alone", op)
        shape4, perm4 = padded(shape, mperm, MAX_RANK)
        return Shuffle(reshape, op, readers, shape4, perm4)

    def apply(self, ctx: PassContext, sg: Subgraph, m: Shuffle) -> str:
        model = ctx.model
        t, y = m.transpose.inputs[0], m.transpose.outputs[0]
        t4 = sg.add_tensor(t.like(t.name, list(m.shape4)))
        y4 = sg.add_tensor(y.like(y.name, transposed_shape(m.shape4, m.perm4)))
        inputs = [m.reshape.inputs[0]]
        if len(m.reshape.inputs) > 1 and m.reshape.inputs[1] is not None:
            inputs.append(model.new_constant(sg, f"{t.name}/shape", np.array(m.shape4, np.int32), TensorType.INT32))
        changes = {"inputs": inputs, "outputs": [t4]}
        if m.reshape.options_type == BuiltinOptions.ReshapeOptions:
            changes["options"] = fb.ReshapeOptionsT()
            changes["options"].newShape = list(m.shape4)
        reshape4 = m.reshape.copy(**changes)
        perm = model.new_constant(sg, f"{y.name}/perm", np.array(m.perm4, np.int32), TensorType.INT32)
        transpose4 = m.transpose.copy(inputs=[t4, perm], outputs=[y4])
        sg.replace([m.reshape, m.transpose], [reshape4, transpose4])
        for r in m.readers:
            sg.replace([r], [r.copy(inputs=[y4, *r.inputs[1:]])])
        return (f"wrote the rank-{len(t.shape)} TRANSPOSE -> {y.name!r} ({list(t.shape)}) in rank {MAX_RANK} "
                f"({m.shape4}, perm {m.perm4}) (no rank 5 on target {ctx.target.name})")
