"""merge-clamps: a chain of clamps becomes its shortest form, the part a
producer can fuse first.

Pattern::

    y = P(...)                       P: any op; CLAMPi: RELU, RELU6, RELU_N1_TO_1,
    z = CLAMP1(y) ... CLAMPk(..)         RELU_0_TO_1, MAXIMUM/MINIMUM with a scalar
                       ->   z = RELU_0_TO_1(y)            [0, 1], where the target prefers it
                       ->   t = RELU(y); z = MINIMUM(t, hi)   [0, hi] (RELU then fuses into P)
                       ->   z = RELU / RELU6 / RELU_N1_TO_1   (one op)
                       ->   t = MAXIMUM(y, lo); z = MINIMUM(t, hi)

Clamps compose to one interval (:mod:`~tflite_fuser.clamp_algebra`), and
clamping to [lo, hi] is the same whichever bound goes first. nobuco writes
hard-sigmoid's clamp as ``MINIMUM 1`` then ``RELU``: after a CONV_2D, neither
fuses (``MINIMUM`` comes first and no fused activation is [0, 1]). Written
RELU-first, fuse-activation takes the RELU into the conv: one op fewer on
every target. ``RELU_0_TO_1`` is one op, faster than the pair on the
built-in kernels and slower under XNNPACK, and missing on the GPU and TFLite
Micro (``targets.RELU_0_TO_1_FORM``): the target decides.

The chain is rewritten only when the new form has fewer ops, or as many
with a head the producer can fuse that the old one lacked.

Preconditions: float32 tensors (a quantized MINIMUM compares raw integers);
every tensor between the clamps is read only by the next one and is no model
output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..clamp_algebra import Clamped, NotAFunctionOfX
from ..graph import Operator, Subgraph, Tensor
from ..ops import CLAMP_OPS, INF, activation_for, fused_activation, traits
from ..schema import ActivationFunctionType as Act
from ..schema import BuiltinOperator as Op
from ..schema import BuiltinOptions, TensorType, fb, op_name
from ..targets import CLAMP_AS_RELU_0_TO_1, RELU_0_TO_1
from .base import FusionPass, Match, PassContext, Skip
from .predicates import why_not_removable
from .rebuild import drop_dead_dequantize
from .scalar_chain import Step, step_of

_RELU_OP = {Act.RELU: Op.RELU, Act.RELU6: Op.RELU6, Act.RELU_N1_TO_1: Op.RELU_N1_TO_1}


@dataclass
class ClampForm(Match):
    x: Tensor
    chain: list[Operator]
    #: the new ops: (code, scalar constant or None), in order
    form: list[tuple[int, float | None]]
    interval: tuple[float, float]


def _pure_clamp(sg: Subgraph, op: Operator | None) -> Step | None:
    s = None if op is None else step_of(sg, op)
    return s if s is not None and s.affine is None and s.clamp is not None else None


def _fusable_head(sg: Subgraph, y: Tensor) -> bool:
    """y's producer takes a fused activation it has not got yet."""
    p = sg.producer(y)
    return (p is not None and bool(traits(p.code).activations) and fused_activation(p) == Act.NONE
            and sg.consumer_count(y) == 1)


class MergeClamps(FusionPass):
    name = "merge-clamps"
    summary = "a chain of clamps (MINIMUM/MAXIMUM/RELU...) => its shortest form, the fusable part first"
    anchors = CLAMP_OPS

    def match(self, ctx: PassContext, sg: Subgraph, op: Operator) -> ClampForm | Skip | None:
        reader = sg.sole_consumer(op.outputs[0]) if op.outputs and op.outputs[0] is not None else None
        if reader is None or reader.code not in CLAMP_OPS:
            return None  # one clamp is as short as it gets (fuse-activation fuses the fusable ones)
        head = _pure_clamp(sg, op)
        if head is None:
            return None
        y = head.data
        if _pure_clamp(sg, sg.producer(y)) is not None and sg.consumer_count(y) == 1:
            return None  # the chain starts further up
        chain, f, cur = [op], Clamped().then_clamp(*head.clamp), op.outputs[0]
        while True:
            nxt = _pure_clamp(sg, sg.sole_consumer(cur))
            if nxt is None or nxt.data is not cur or why_not_removable(ctx.model, sg, cur, nxt.op):
                break
            try:
                f = f.then_clamp(*nxt.clamp)
            except NotAFunctionOfX as e:
                return Skip(str(e), op)
            chain.append(nxt.op)
            cur = nxt.op.outputs[0]
        interval = (f.lo, f.hi)
        form = self._form(ctx, interval)
        fusable = _fusable_head(sg, y)
        # As many ops, but a head fuse-activation can take where it could take none.
        newly_fusable = fusable and form[0][0] == Op.RELU and activation_for(head.clamp) is None
        gains = len(form) < len(chain) or (len(form) == len(chain) and newly_fusable)
        if not gains:
            kept = ctx.target.lacks(RELU_0_TO_1) or ctx.target.refuses(CLAMP_AS_RELU_0_TO_1)
            if len(chain) > 1 and interval == (0.0, 1.0) and kept:
                return Skip(f"{' then '.join(c.type_name for c in chain)} clamps to [0, 1], not RELU_0_TO_1: {kept}",
                            op)
            return None
        return ClampForm(y, chain, form, interval)

    @staticmethod
    def _form(ctx: PassContext, interval: tuple[float, float]) -> list[tuple[int, float | None]]:
        lo, hi = interval
        act = activation_for(interval)
        if act is not None:
            return [] if act == Act.NONE else [(_RELU_OP[act], None)]
        if (interval == (0.0, 1.0) and RELU_0_TO_1 in ctx.target.supports
                and not ctx.target.refuses(CLAMP_AS_RELU_0_TO_1)):
            return [(Op.RELU_0_TO_1, None)]
        head = [(Op.RELU, None)] if lo == 0.0 else [] if lo == -INF else [(Op.MAXIMUM, lo)]
        return head + ([] if hi == INF else [(Op.MINIMUM, hi)])

    def apply(self, ctx: PassContext, sg: Subgraph, m: ClampForm) -> str:
        model = ctx.model
        z = m.chain[-1].outputs[0]
        new, cur = [], m.x
        for i, (code, c) in enumerate(m.form):
            out = z if i == len(m.form) - 1 else sg.add_tensor(z.like(f"{z.name}/clamp{i}", quantized=False))
            if c is None:
                new.append(Operator(model.opcode(code), [cur], [out]))
            else:
                k = model.new_constant(sg, f"{z.name}/bound{i}", np.array(c, np.float32), TensorType.FLOAT32)
                new.append(Operator(model.opcode(code), [cur, k], [out], options=fb.MaximumMinimumOptionsT(),
                                    options_type=BuiltinOptions.MaximumMinimumOptions))
            cur = out
        sg.replace(m.chain, new)
        drop_dead_dequantize(model, sg, [t for op in m.chain for t in op.inputs])
        lo, hi = m.interval
        return (f"wrote {' -> '.join(op.type_name for op in m.chain)} -> {z.name!r} (clamp to [{lo:g}, {hi:g}]) "
                f"as {' -> '.join(op_name(code) for code, _ in m.form)}")
