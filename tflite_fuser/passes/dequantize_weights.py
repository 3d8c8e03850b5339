"""dequantize-weights: float16 weights behind a DEQUANTIZE become float32
constants, for a target that has no float16 DEQUANTIZE kernel.

Pattern::

    w16 (FLOAT16 constant) -> DEQUANTIZE -> w (FLOAT32)   ->   w (FLOAT32 constant)

TFLite Micro's DEQUANTIZE takes int8, uint8 and int16 only, so a model with
float16 weights (TF's ``supported_types=[tf.float16]``, onnx2tf's float16
weights) does not load there at all. Every float16 value is a float32 value:
the rewrite is exact, and the file grows by half the weights' size again.
Only for targets that lack the form (``targets.FLOAT16_DEQUANTIZE``): elsewhere
the DEQUANTIZE costs nothing at run time and halves the file (measured:
removing them gained 0-3%), and no candidate is reported.

Preconditions: the input is a plain FLOAT16 constant (not sparse, not
quantized) and the output FLOAT32; the output is no subgraph or signature
output (a constant there would change the model's interface).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import Operator, Subgraph, Tensor
from ..schema import BuiltinOperator as Op
from ..schema import TensorType
from ..targets import FLOAT16_DEQUANTIZE
from .base import FusionPass, Match, PassContext, Skip


@dataclass
class Float16Weight(Match):
    dequantize: Operator
    values: np.ndarray


class DequantizeWeights(FusionPass):
    name = "dequantize-weights"
    summary = "float16 weights behind DEQUANTIZE => float32 constants (targets without a float16 DEQUANTIZE)"
    anchors = (Op.DEQUANTIZE,)

    def match(self, ctx: PassContext, sg: Subgraph, op: Operator) -> Float16Weight | Skip | None:
        if FLOAT16_DEQUANTIZE in ctx.target.supports:
            return None
        src = op.inputs[0] if len(op.inputs) == 1 else None
        out = op.outputs[0] if len(op.outputs) == 1 else None
        if src is None or out is None or not src.is_constant or src.dtype != TensorType.FLOAT16:
            return None  # an int8/int16 DEQUANTIZE (the target runs it) or of a computed tensor
        if src.sparsity is not None or src.is_quantized or out.dtype != TensorType.FLOAT32 or src.value() is None:
            return Skip("the float16 constant is sparse or quantized, or the output is not float32", op)
        if ctx.model.is_observed(sg, out):
            return Skip(f"{out.name!r} is a model output", op)
        return Float16Weight(op, src.value())

    def apply(self, ctx: PassContext, sg: Subgraph, m: Float16Weight) -> str:
        out: Tensor = m.dequantize.outputs[0]
        # A new constant, and its readers rewired to it: the old tensor stays
        # what it was (the original's graph is proved against, unchanged).
        const = ctx.model.new_constant(sg, out.name, m.values.astype(np.float32), TensorType.FLOAT32,
                                       out.quantization)
        for reader in sg.consumers(out):
            sg.replace([reader], reader.copy(inputs=[const if t is out else t for t in reader.inputs]))
        sg.remove_operator(m.dequantize)
        return f"stored float16 weights {out.name!r} as float32 (no float16 DEQUANTIZE on target {ctx.target.name})"
