"""merge-layout-pairs: two TRANSPOSEs in a row are one (or none); two RESHAPEs
in a row are one.

Pattern::

    t = TRANSPOSE(x, p1); z = TRANSPOSE(t, p2)   ->   z = TRANSPOSE(x, q), q[j] = p1[p2[j]]
                                                      (nothing when q is the identity)
    t = RESHAPE(x, s1);   z = RESHAPE(t, s2)     ->   z = RESHAPE(x, s2)

An output axis ``j`` of the second TRANSPOSE is its input's axis ``p2[j]``,
which is ``x``'s axis ``p1[p2[j]]``: composing permutations. A RESHAPE only
reinterprets the elements in memory order, so the first one of a pair
changes nothing the second sees. Converters leave such pairs at layout
boundaries (an NCHW model's ``permute`` next to the converter's own
transpose; ``view`` after ``flatten``). Both rewrites move no arithmetic:
exact for every type.

Preconditions: the permutations are constant; ``t`` is read by the second
op alone and is no model output; the three tensors share type and
quantization.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import Operator, Subgraph, Tensor
from ..ops import layout_constant
from ..schema import BuiltinOperator as Op
from ..schema import TensorType
from .base import FusionPass, Match, PassContext, Skip
from .predicates import same_quantization, why_not_removable
from .rebuild import bypass, clone_op


@dataclass
class LayoutPair(Match):
    first: Operator
    second: Operator
    #: the composed permutation (TRANSPOSE pairs), None for RESHAPE pairs
    perm: list[int] | None


class MergeLayoutPairs(FusionPass):
    name = "merge-layout-pairs"
    summary = "TRANSPOSE -> TRANSPOSE => one TRANSPOSE (or none); RESHAPE -> RESHAPE => one RESHAPE (exact)"
    anchors = (Op.TRANSPOSE, Op.RESHAPE)

    def match(self, ctx: PassContext, sg: Subgraph, second: Operator) -> LayoutPair | Skip | None:
        t = second.inputs[0] if second.inputs else None
        first = sg.producer(t) if t is not None else None
        if first is None or first.code != second.code or not first.inputs or first.inputs[0] is None:
            return None
        x, z = first.inputs[0], second.outputs[0]
        if not (x.dtype == t.dtype == z.dtype and same_quantization(x, t) and same_quantization(t, z)):
            return Skip("the pair changes type or quantization", second)
        why = why_not_removable(ctx.model, sg, t, second)
        if why:
            return Skip(why, first)
        if second.code == Op.RESHAPE:
            return LayoutPair(first, second, None)
        p1, p2 = layout_constant(first), layout_constant(second)
        if p1 is None or p2 is None or len(p1) != len(p2):
            return Skip("a permutation is not constant", second)
        return LayoutPair(first, second, [p1[j] for j in p2])

    def apply(self, ctx: PassContext, sg: Subgraph, m: LayoutPair) -> str:
        x, z = m.first.inputs[0], m.second.outputs[0]
        what = f"{m.first.type_name} -> {m.second.type_name} -> {z.name!r}"
        if m.perm is not None and m.perm == list(range(len(m.perm))) and self._may_vanish(ctx, sg, x, z):
            bypass(ctx.model, sg, m.second, x)
            sg.remove_operator(m.first)
            return f"cancelled {what} (the permutations are inverse)"
        if m.perm is None:
            new = clone_op(m.second, inputs=[x] + list(m.second.inputs[1:]))
        else:
            perm = ctx.model.new_constant(sg, f"{z.name}/perm", np.array(m.perm, np.int32), TensorType.INT32)
            new = clone_op(m.second, inputs=[x, perm])
        sg.replace([m.first, m.second], new)
        return f"merged {what} into one {m.second.type_name}" + (f" (perm {m.perm})" if m.perm else "")

    @staticmethod
    def _may_vanish(ctx: PassContext, sg: Subgraph, x: Tensor, z: Tensor) -> bool:
        """An inverse pair can go entirely unless its output is seen from outside."""
        return not ctx.model.is_observed(sg, z) and not z.is_variable and list(x.shape) == list(z.shape)
