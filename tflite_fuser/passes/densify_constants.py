"""densify-constants: a DENSIFY of a constant sparse tensor becomes the dense
constant, for a target without DENSIFY.

Pattern (TF's converter with ``Optimize.EXPERIMENTAL_SPARSITY``, mediapipe's
sparse detectors)::

    w = DENSIFY(w_sparse)          ->    (w_dense, a constant)
    y = CONV_2D(x, w, b)                 y = CONV_2D(x, w_dense, b)

DENSIFY's input is a constant, so its output is one: the kernel computes it
once at run time (:mod:`sparsity` does the same walk here). The file grows by
the zeros it now stores. LiteRT's GPU delegate refuses DENSIFY ("Operation is
not supported"), and partly delegated, the sparse detectors come out of the
GPU as garbage that changes from run to run; dense, they run there whole and
right. TFLite Micro has no DENSIFY kernel at all. Elsewhere the sparse form
stays (it is the smaller file).

Preconditions: the input is a constant with sparsity parameters that decode
to its shape; the output is no model output and no variable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import Operator, Subgraph
from ..schema import NUMPY_DTYPES
from ..schema import BuiltinOperator as Op
from ..sparsity import SparsityError, densify
from ..targets import DENSIFY
from .base import FusionPass, Match, PassContext, Skip


@dataclass
class Sparse(Match):
    op: Operator
    dense: np.ndarray
    readers: list[Operator]


class DensifyConstants(FusionPass):
    name = "densify-constants"
    summary = "DENSIFY of a constant => the dense constant (targets without DENSIFY; the file grows)"
    anchors = (Op.DENSIFY,)

    def match(self, ctx: PassContext, sg: Subgraph, op: Operator) -> Sparse | Skip | None:
        if DENSIFY in ctx.target.supports:
            return None
        if len(op.inputs) != 1 or len(op.outputs) != 1 or op.inputs[0] is None:
            return None
        w, y = op.inputs[0], op.outputs[0]
        lacks = ctx.target.lacks(DENSIFY)
        dt = NUMPY_DTYPES.get(w.dtype)
        if w.sparsity is None or w.buffer is None or w.buffer.data is None or dt is None:
            return Skip(f"{lacks}, but its input is not a sparse constant", op)
        if ctx.model.is_observed(sg, y) or y.is_variable:
            return Skip(f"{lacks}, but its output {y.name!r} is a model output", op)
        if y.dtype != w.dtype or list(y.shape) != list(w.shape):
            return Skip(f"{lacks}, but its output's type or shape differs from its input's", op)
        raw = np.asarray(w.buffer.data)
        if raw.nbytes % dt.itemsize:
            return Skip(f"{lacks}, but the sparse buffer is not a whole number of values", op)
        try:
            dense = densify(raw.view(np.uint8).view(dt) if raw.nbytes else np.zeros(0, dt), list(w.shape), w.sparsity)
        except SparsityError as e:
            return Skip(f"{lacks}, but its sparsity parameters do not decode: {e}", op)
        return Sparse(op, dense, sg.consumers(y))

    def apply(self, ctx: PassContext, sg: Subgraph, m: Sparse) -> str:
        y = m.op.outputs[0]
        dense = ctx.model.new_constant(sg, y.name, m.dense, y.dtype, quantization=y.quantization)
        first, *rest = m.readers or [None]
        if first is None:
            sg.remove_operator(m.op)
        else:
            sg.replace([m.op, first], [first.copy(inputs=[dense if t is y else t for t in first.inputs])])
            for r in rest:
                sg.replace([r], [r.copy(inputs=[dense if t is y else t for t in r.inputs])])
        grown = m.dense.nbytes - np.asarray(m.op.inputs[0].buffer.data).nbytes
        return (f"stored the DENSIFY -> {y.name!r} {list(y.shape)} as its dense constant "
                f"({(m.dense != 0).mean():.0%} non-zero; the file grows {grown} B) "
                f"(no DENSIFY on target {ctx.target.name})")
