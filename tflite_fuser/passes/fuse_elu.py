"""fuse-elu: ELU written out of elementwise ops becomes one ELU.

Pattern (litert-torch writes ``nn.ELU()`` so, in NCHW between two
transposes; the comparison and the order vary)::

    e = EXP(x)
    m = SUB(e, 1)                                   ->   y = ELU(x)
    c = GREATER_EQUAL(x, 0)      (or GREATER)
    y = SELECT(c, x, m)          (or SELECT_V2)

The group is found from its SELECT up (``elementwise_group``, as fuse-gelu
finds its ops), evaluated on probe values of ``x`` and compared with
TFLite's ELU, ``x`` above 0 and ``exp(x) - 1`` below (alpha 1: the builtin
has no other). One kernel where the written form is four passes over the
tensor; and ELU is per-element, so the NCHW island around it then runs in
NHWC (drop-layout-island) and both its transposes go (as they do around the
written-out form, its comparison and SELECT being per-element too).
Target-dependent (``targets.ELU_AS_ONE_OP``): XNNPACK's ELU is fast, the
built-in kernels' is a scalar ``expm1`` loop, slower than the four ops. ``nn.SELU`` and
``nn.CELU(alpha)`` compute ``alpha * (exp(x) - 1)`` below 0 with another
alpha, which no ELU computes: their groups stay (the comparison fails, so
there is nothing to report).

Preconditions: float32 throughout (the condition BOOL); constants are
float32 scalars; every tensor of the group except ``x`` is read inside the
group alone and is no model output; ops are per-element ones the evaluator
knows.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..elementwise_eval import PROBE, elu, same_function
from ..graph import Operator, Subgraph, Tensor
from ..schema import BuiltinOperator as Op
from ..targets import ELU_AS_ONE_OP
from .base import FusionPass, Match, PassContext, Skip
from .elementwise_group import scalar_functions
from .predicates import is_float32
from .rebuild import drop_dead_dequantize

#: the fewest ops a written-out ELU takes (an exponential, a shift, a
#: condition and a choice)
_MIN_OPS = 4


@dataclass
class WrittenElu(Match):
    x: Tensor
    ops: list[Operator]


class FuseElu(FusionPass):
    name = "fuse-elu"
    summary = "ELU written out of elementwise ops (EXP, SUB, a comparison, SELECT) => ELU"
    anchors = (Op.SELECT, Op.SELECT_V2)

    def match(self, ctx: PassContext, sg: Subgraph, last: Operator) -> WrittenElu | Skip | None:
        y = last.outputs[0] if last.outputs else None
        if not is_float32(y):
            return None
        for x, ops, got in scalar_functions(ctx, sg, last, _MIN_OPS):
            if list(x.shape) != list(y.shape):
                continue
            if same_function(got, elu(PROBE)):
                why = ctx.target.refuses(ELU_AS_ONE_OP)
                if why:
                    return Skip(f"ELU written as {len(ops)} ops; {why}", last)
                return WrittenElu(x, ops)
        return None

    def apply(self, ctx: PassContext, sg: Subgraph, m: WrittenElu) -> str:
        y = m.ops[-1].outputs[0]
        sg.replace(m.ops, Operator(ctx.model.opcode(Op.ELU), [m.x], [y]))
        drop_dead_dequantize(ctx.model, sg, [t for op in m.ops for t in op.inputs])
        return f"wrote {' -> '.join(op.type_name for op in m.ops)} -> {y.name!r} as ELU"
