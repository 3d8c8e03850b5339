"""merge-sibling-fcs (off by default: ``--enable merge-sibling-fcs``): the
FULLY_CONNECTEDs that read one tensor become one, split after.

Pattern (separate Q, K, V projections of an attention block)::

    q = FULLY_CONNECTED(x, Wq, bq)
    k = FULLY_CONNECTED(x, Wk, bk)    ->   t = FULLY_CONNECTED(x, [Wq; Wk; Wv], [bq; bk; bv])
    v = FULLY_CONNECTED(x, Wv, bv)         q, k, v = SPLIT_V(t, [Uq, Uk, Uv], axis -1)

Each output unit of a FULLY_CONNECTED is one row of its weights against the
same input row: stacking the rows computes every unit exactly as before, and
SPLIT_V hands each consumer its units. One GEMM of N*U columns instead of N
of U.

Off by default because it measured slower here: on the attention fixtures
(separate Q/K/V Linear layers, dim 32, 64 tokens; litert-torch's and
onnx2tf's) the merged form ran 0.94-0.95x under XNNPACK and 1.00x on the
built-in kernels (the SPLIT_V costs more than the one larger GEMM saves at
these sizes; the issue's measurement of a fused QKV through three converters
agrees: 0.97-1.00x). It is there for runtimes where dispatches dominate (a
GPU, an NPU), to be measured there.

Preconditions: at least two FULLY_CONNECTEDs read ``x`` as their data input,
with float32 output, the same ``keep_num_dims``, the same fused activation,
default weights format, and float32 constant weights of the same input size
(a missing bias becomes zeros); their outputs are not model outputs of a
signature we would have to keep in place (they stay: SPLIT_V writes them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import Operator, Subgraph, Tensor
from ..ops import fused_activation, slot
from ..schema import BuiltinOperator as Op
from ..schema import BuiltinOptions, TensorType, fb
from .base import FusionPass, Match, PassContext, Skip
from .predicates import is_float32
from .rebuild import clone_op
from .weights import Weight, float_weight_of


@dataclass
class Siblings(Match):
    x: Tensor
    fcs: list[Operator]
    weights: list[np.ndarray]
    biases: list[np.ndarray]


def _signature(op: Operator):
    o = op.options
    return (bool(getattr(o, "keepNumDims", False)), fused_activation(op), getattr(o, "weightsFormat", 0))


class MergeSiblingFcs(FusionPass):
    name = "merge-sibling-fcs"
    summary = "FULLY_CONNECTEDs reading one tensor => one, then SPLIT_V (0.94x XNNPACK, 1.00x built-in measured)"
    anchors = (Op.FULLY_CONNECTED,)
    default = False

    def match(self, ctx: PassContext, sg: Subgraph, op: Operator) -> Siblings | Skip | None:
        x = slot(op, "data")
        if x is None:
            return None
        fcs = [u for u in sg.consumers(x) if u.code == Op.FULLY_CONNECTED and slot(u, "data") is x]
        if len(fcs) < 2 or fcs[0] is not op:
            return None  # one FULLY_CONNECTED, or not the first of its siblings (that one matches)
        position = sg.uses.position
        fcs.sort(key=lambda u: position[u])
        if fcs[0] is not op:
            return None
        if len({_signature(u) for u in fcs}) != 1 or _signature(op)[2] != 0:
            return Skip("sibling FULLY_CONNECTEDs differ in keep_num_dims, activation or weights format", op)
        weights, biases = [], []
        for u in fcs:
            w = float_weight_of(sg, slot(u, "filter"))
            b = slot(u, "bias")
            bw = None if b is None else float_weight_of(sg, b)
            if not isinstance(w, Weight) or w.behind_dequantize or (b is not None and not isinstance(bw, Weight)):
                return Skip("a sibling's weights are not float32 constants", op)
            if not is_float32(u.outputs[0]) or w.raw.ndim != 2 or (weights and w.raw.shape[1] != weights[0].shape[1]):
                return Skip("siblings of different input sizes or types", op)
            weights.append(np.asarray(w.raw, np.float32))
            biases.append(np.zeros(w.raw.shape[0], np.float32) if bw is None else np.asarray(bw.raw, np.float32))
        return Siblings(x, fcs, weights, biases)

    def apply(self, ctx: PassContext, sg: Subgraph, m: Siblings) -> str:
        model, first = ctx.model, m.fcs[0]
        units = [w.shape[0] for w in m.weights]
        y0 = first.outputs[0]
        w = model.new_constant(sg, f"{y0.name}/merged_weights", np.concatenate(m.weights), TensorType.FLOAT32)
        b = model.new_constant(sg, f"{y0.name}/merged_bias", np.concatenate(m.biases), TensorType.FLOAT32)
        shape = list(y0.shape[:-1]) + [sum(units)]
        sig = list(y0.shape_signature[:-1]) + [sum(units)] if y0.shape_signature else None
        merged = sg.add_tensor(y0.like(f"{y0.name}/merged", shape, sig, quantized=False))
        fc = clone_op(first, inputs=[m.x, w, b], outputs=[merged])
        sizes = model.new_constant(sg, f"{y0.name}/split_sizes", np.array(units, np.int32), TensorType.INT32)
        axis = model.new_constant(sg, f"{y0.name}/split_axis", np.array(len(shape) - 1, np.int32), TensorType.INT32)
        split = Operator(model.opcode(Op.SPLIT_V), [merged, sizes, axis], [u.outputs[0] for u in m.fcs],
                         options=fb.SplitVOptionsT(numSplits=len(units)), options_type=BuiltinOptions.SplitVOptions)
        for u in m.fcs[1:]:  # the merged op goes where the first sibling was: before every sibling's readers
            sg.remove_operator(u)
        sg.replace([first], [fc, split])
        return f"merged {len(m.fcs)} FULLY_CONNECTEDs reading {m.x.name!r} into one ({'+'.join(map(str, units))} units) + SPLIT_V"
