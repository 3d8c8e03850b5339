"""collapse-layout-chain: TRANSPOSEs and RESHAPEs in a row that leave the
elements in memory order are one RESHAPE (or nothing).

Pattern (PyTorch's NCHW ``flatten(2).transpose(1, 2)`` of an NHWC tensor,
as onnx2tf writes it: the two transposes undo each other around the
flatten)::

    t1 = TRANSPOSE(x [1, 8, 8, 32], [0, 3, 1, 2])
    t2 = RESHAPE(t1, [1, 32, 64])              ->   z = RESHAPE(x, [1, 64, 32])
    z  = TRANSPOSE(t2, [0, 2, 1])

Each TRANSPOSE and RESHAPE only moves elements, so the chain is fully
described by where each element of ``x`` ends up: the chain is applied to
the index array ``arange(numel).reshape(x.shape)`` in numpy, and when the
result, flattened, is ``arange(numel)`` again the chain moves nothing and a
RESHAPE to its final shape does the same (nothing at all when that is
``x``'s shape). Exact for every type.

Shapes are computed from ``x``'s static shape and the constant permutations
and target shapes, not read from the intermediate tensors: onnx2tf declares
``[1, 1, 1]`` for tensors behind a RESHAPE whose target it computes at run
time (after fold-constants the target is constant, the declaration still
wrong), and the runtime, like this pass, computes them. The last tensor keeps
its declaration as the converter wrote it (the ops that read it are
untouched, and so is everything they read).

Preconditions: ``x`` static (no dynamic dimension); each permutation and
target shape constant; each intermediate read by the next op alone and no
model output; one type and quantization throughout; at most 16M elements
(the index array); at least two ops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import Operator, Subgraph, Tensor
from ..ops import layout_constant
from ..schema import BuiltinOperator as Op
from ..schema import BuiltinOptions, TensorType, fb
from .base import FusionPass, Match, PassContext, Skip
from .predicates import same_quantization, why_not_removable
from .rebuild import bypass

MAX_ELEMENTS = 16 << 20
_LAYOUT = (Op.TRANSPOSE, Op.RESHAPE)


@dataclass
class OrderKept(Match):
    x: Tensor
    chain: list[Operator]
    shape: list[int]


def _step(idx: np.ndarray, op: Operator) -> np.ndarray | None:
    """The index array after ``op``; None when its constant is missing or wrong."""
    c = layout_constant(op)
    if c is None:
        return None
    try:
        return np.transpose(idx, c) if op.code == Op.TRANSPOSE else idx.reshape(c)
    except ValueError:
        return None


class CollapseLayoutChain(FusionPass):
    name = "collapse-layout-chain"
    summary = "TRANSPOSE/RESHAPE chains that keep the elements in order => one RESHAPE or nothing (exact)"
    anchors = _LAYOUT

    def match(self, ctx: PassContext, sg: Subgraph, first: Operator) -> OrderKept | Skip | None:
        x = first.inputs[0] if first.inputs else None
        if x is None or (sg.producer(x) is not None and sg.producer(x).code in _LAYOUT
                         and sg.consumer_count(x) == 1):
            return None  # the chain starts further up
        if any(d < 0 for d in x.shape) or any(d < 0 for d in (x.shape_signature or [])):
            return None
        n = int(np.prod(x.shape))
        if n > MAX_ELEMENTS:
            return None
        idx = np.arange(n).reshape(x.shape)
        chain, best = [], None
        op = first
        while op is not None and op.code in _LAYOUT:
            out = op.outputs[0]
            if out.dtype != x.dtype or not same_quantization(x, out):
                break
            idx = _step(idx, op)
            if idx is None:
                break
            chain.append(op)
            if len(chain) > 1 and np.array_equal(idx.reshape(-1), np.arange(n)):
                best = (list(chain), list(idx.shape))
            nxt = sg.sole_consumer(out)
            if nxt is None or why_not_removable(ctx.model, sg, out, nxt) or not nxt.inputs or nxt.inputs[0] is not out:
                break
            op = nxt
        if best is None:
            return None
        return OrderKept(x, *best)

    def apply(self, ctx: PassContext, sg: Subgraph, m: OrderKept) -> str:
        z = m.chain[-1].outputs[0]
        what = " -> ".join(op.type_name for op in m.chain)
        if m.shape == list(m.x.shape) and not ctx.model.is_observed(sg, z) and not z.is_variable:
            for op in m.chain[:-1]:
                sg.remove_operator(op)
            bypass(ctx.model, sg, m.chain[-1], m.x)
            return f"dropped {what} -> {z.name!r}: it moves no element"
        shape = ctx.model.new_constant(sg, f"{z.name}/shape", np.array(m.shape, np.int32), TensorType.INT32)
        new = Operator(ctx.model.opcode(Op.RESHAPE), [m.x, shape], [z], options=fb.ReshapeOptionsT(newShape=m.shape),
                       options_type=BuiltinOptions.ReshapeOptions)
        sg.replace(m.chain, new)
        return f"wrote {what} -> {z.name!r} as one RESHAPE to {m.shape}: the elements stay in order"
