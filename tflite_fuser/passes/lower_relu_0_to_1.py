"""lower-relu-0-to-1: RELU_0_TO_1 becomes MINIMUM(RELU(x), 1), for a target
that has no RELU_0_TO_1 kernel, or one that runs the pair faster once the
RELU is fused into the op before it.

Pattern::

    y = RELU_0_TO_1(x)    ->    t = RELU(x);  y = MINIMUM(t, 1)

Clamping to [0, inf) then to (-inf, 1] is clamping to [0, 1]: exact in float.
onnx2tf writes hard-sigmoid so (MobileNetV3, GhostNet), and neither LiteRT's
GPU accelerator ("Not supported op") nor TFLite Micro (no kernel) runs it;
the written-out form runs on both. XNNPACK has no RELU_0_TO_1 either (LiteRT
runs it on its built-in kernel, between two delegated partitions): where the
target prefers the pair (``targets.CLAMP_AS_RELU_0_TO_1``) and the producer
takes a fused RELU, it is lowered too, at no cost in ops (the RELU fuses).
Elsewhere RELU_0_TO_1 is one op and stays (no candidate is reported).

Preconditions: float32 input and output (a quantized MINIMUM compares raw
integers against a constant of its own quantization: not done here).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import Operator, Subgraph, Tensor
from ..schema import BuiltinOperator as Op
from ..schema import BuiltinOptions, TensorType, fb
from ..ops import fused_activation, traits
from ..schema import ActivationFunctionType as Act
from ..targets import CLAMP_AS_RELU_0_TO_1, RELU_0_TO_1
from .base import FusionPass, Match, PassContext, Skip
from .predicates import is_float32


@dataclass
class Relu01(Match):
    op: Operator


class LowerRelu0To1(FusionPass):
    name = "lower-relu-0-to-1"
    summary = "RELU_0_TO_1 => MINIMUM(RELU(x), 1) (targets without RELU_0_TO_1)"
    anchors = (Op.RELU_0_TO_1,)

    def match(self, ctx: PassContext, sg: Subgraph, op: Operator) -> Relu01 | Skip | None:
        if len(op.inputs) != 1 or len(op.outputs) != 1 or op.inputs[0] is None:
            return None
        why = ctx.target.lacks(RELU_0_TO_1)
        if why is None:
            slower = ctx.target.refuses(CLAMP_AS_RELU_0_TO_1)
            if slower is None or not self._takes_relu(sg, op.inputs[0]):
                return None
            why = slower
        if not (is_float32(op.inputs[0]) and is_float32(op.outputs[0])):
            return Skip(f"{why}, but the tensors are not float32", op)
        return Relu01(op)

    @staticmethod
    def _takes_relu(sg: Subgraph, x: Tensor) -> bool:
        """x's producer can take the RELU as its fused activation."""
        p = sg.producer(x)
        return (p is not None and Act.RELU in traits(p.code).activations and fused_activation(p) == Act.NONE
                and sg.consumer_count(x) == 1)

    def apply(self, ctx: PassContext, sg: Subgraph, m: Relu01) -> str:
        x, y = m.op.inputs[0], m.op.outputs[0]
        model = ctx.model
        t = sg.add_tensor(y.like(f"{y.name}/relu", quantized=False))
        one = model.new_constant(sg, f"{y.name}/one", np.ones([], np.float32), TensorType.FLOAT32)
        relu = Operator(model.opcode(Op.RELU), [x], [t])
        minimum = Operator(model.opcode(Op.MINIMUM), [t, one], [y], options=fb.MaximumMinimumOptionsT(),
                           options_type=BuiltinOptions.MaximumMinimumOptions)
        sg.replace([m.op], [relu, minimum])
        return f"wrote RELU_0_TO_1 -> {y.name!r} as MINIMUM(RELU(x), 1) (for target {ctx.target.name})"
