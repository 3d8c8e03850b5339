"""fuse-hard-swish: hard-swish written out of elementwise ops becomes HARD_SWISH.

Pattern (any order and form of the gate; ``g`` is a function of ``x`` alone)::

    g = GATE(x)          GATE: scalar MUL/ADD/SUB/DIV, MINIMUM/MAXIMUM, RELU/RELU6/...
    y = MUL(x, g)                      ->   y = HARD_SWISH(x)
   [y = MUL(y, 1/k) or DIV(y, k)]

nobuco writes PyTorch's ``Hardswish`` as ``MUL 1/6, ADD 0.5, MINIMUM 1, RELU,
MUL x`` (5 ops), TF-graph routes as ``ADD 3, RELU6, MUL x, MUL 1/6``. The gate
chain is composed into its normal form ``a * clamp(x, lo, hi) + b``
(:mod:`~tflite_fuser.clamp_algebra`), so every order is one comparison: the
gate is ``k`` times hard-sigmoid ``relu6(x + 3) / 6``, and when ``k != 1`` a
scalar MUL by ``1/k`` (or DIV by ``k``) after the product completes it.
HARD_SWISH runs on every target here (XNNPACK, the built-in kernels, the GPU
accelerator, TFLite Micro); measured on nobuco's MobileNetV3 in the README.

Preconditions (a skip says which failed):

- float32 tensors throughout (the quantized HARD_SWISH kernel has its own
  input and output scales; a written-out int8 chain rounds at every op);
- every tensor of the gate and the product is read only by the next op of
  the pattern and is no model output (they disappear);
- the constants are float32 scalars (FLOAT16 behind DEQUANTIZE too), matching
  hard-sigmoid's to 1e-5 relative (float32 writes 1/6 as 0.16666667; the
  interpreter proves the rewrite like every other);
- the product carries no fused activation (HARD_SWISH has none).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..clamp_algebra import hard_sigmoid_multiple
from ..graph import Operator, Subgraph, Tensor
from ..ops import has_no_activation
from ..schema import BuiltinOperator as Op
from .base import FusionPass, Match, PassContext, Skip
from .predicates import is_float32, why_not_removable
from .rebuild import drop_dead_dequantize
from .scalar_chain import Step, step_of, walk_back


@dataclass
class HardSwish(Match):
    x: Tensor
    removed: list[Operator]
    y: Tensor


class FuseHardSwish(FusionPass):
    name = "fuse-hard-swish"
    summary = "x * relu6(x + 3) / 6 written out of elementwise ops (any order) => HARD_SWISH"
    anchors = (Op.MUL,)

    def match(self, ctx: PassContext, sg: Subgraph, op: Operator) -> HardSwish | Skip | None:
        if len(op.inputs) != 2 or op.inputs[0] is op.inputs[1] or len(op.outputs) != 1:
            return None
        if any(t is None or t.is_constant for t in op.inputs):
            return None  # x * g(x) multiplies two computed tensors
        for i in (0, 1):
            x, g = op.inputs[i], op.inputs[1 - i]
            if not is_float32(x):
                continue
            chain = walk_back(ctx.model, sg, g, x, op)
            if chain is None:
                continue
            if isinstance(chain, str):
                return Skip(f"x * g(x), but {chain}", op)
            steps, gate = chain
            k = hard_sigmoid_multiple(gate)
            if k is None:
                return Skip(f"x * g(x) with g(x) = {gate}, which is no multiple of hard-sigmoid", op)
            if not has_no_activation(op):
                return Skip("x * hard-sigmoid(x), but the product carries a fused activation", op)
            removed = [s.op for s in steps] + [op]
            y = op.outputs[0]
            if abs(k - 1) > 1e-5:
                tail = self._rescale(ctx, sg, y, k)
                if isinstance(tail, str):
                    return Skip(f"x * {k:g} * hard-sigmoid(x), {tail}", op)
                removed.append(tail.op)
                y = tail.op.outputs[0]
            return HardSwish(x, removed, y)
        return None

    @staticmethod
    def _rescale(ctx: PassContext, sg: Subgraph, y: Tensor, k: float) -> Step | str:
        """The scalar MUL by 1/k (or DIV by k) that must follow the product."""
        reader = sg.sole_consumer(y)
        step = step_of(sg, reader) if reader is not None else None
        if step is None or step.data is not y or step.affine is None or step.clamp is not None or step.affine[1] != 0.0:
            return f"and no MUL by 1/{k:g} follows"
        if abs(step.affine[0] * k - 1) > 1e-5:
            return f"and the MUL after it scales by {step.affine[0]:g}, not 1/{k:g}"
        why = why_not_removable(ctx.model, sg, y, step.op)
        return why if why else step

    def apply(self, ctx: PassContext, sg: Subgraph, m: HardSwish) -> str:
        new = Operator(ctx.model.opcode(Op.HARD_SWISH), [m.x], [m.y])
        sg.replace(m.removed, new)
        drop_dead_dequantize(ctx.model, sg, [t for op in m.removed for t in op.inputs])
        return f"wrote {' -> '.join(op.type_name for op in m.removed)} -> {m.y.name!r} as HARD_SWISH"
