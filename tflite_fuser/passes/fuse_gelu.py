"""fuse-gelu: GELU written out of elementwise ops becomes one GELU.

Pattern (onnx2tf writes PyTorch's ``gelu(x, approximate="tanh")`` so; the
order and grouping vary with the source expression)::

    y = 0.5 * x * (1 + TANH(0.7978846 * (x + 0.044715 * x*x*x)))   ->   y = GELU(x, approximate=True)
    y = 0.5 * x * (1 + erf(x / sqrt(2)))  (any elementwise form)   ->   y = GELU(x, approximate=False)
    y = x * (1 + FlexErf(x * 0.7071068))  (onnx2tf's tf_converter   ->   y = GELU(x) * 2
        backend: the 0.5 went into the next layer's weights)

The group is found from its last op up: each op joins while the tensor it
writes is read by the group alone, until one tensor ``x`` remains that the
group reads (several times: GELU needs ``x`` at both ends). What the group
computes is then evaluated on probe values of ``x`` (:mod:`~tflite_fuser.
elementwise_eval`) and compared with TFLite's two GELU formulas, so every
order and grouping of the expression is one comparison. The tanh form
(GELU's common approximation) and the erf form differ by up to 2e-4 of
``x``: far beyond the 1e-5 the comparison allows, so the variant is never
confused. A group that computes a multiple ``a * GELU(x)`` becomes GELU and
a MUL by ``a`` (which fold-input-affine then folds into the layer after it).
GELU is one kernel where the written form is nine passes over the tensor;
TFLite Micro has no GELU kernel (``targets.GELU``). ``Erf`` kept as a Flex op
(FlexErf) is one the stock interpreter cannot run at all: the rewrite makes
the model runnable, and its region proof computes the original ops in numpy
(``region_proof.ElementwiseReference``).

Preconditions: float32 throughout; constants are float32 scalars; every
tensor of the group except ``x`` is read inside the group alone and is no
model output; ops are per-element ones the evaluator knows, with no fused
activation beyond the RELU family.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..elementwise_eval import PROBE, gelu, same_function
from ..graph import Operator, Subgraph, Tensor
from ..schema import BuiltinOperator as Op
from ..schema import BuiltinOptions, fb
from ..targets import GELU
from .base import FusionPass, Match, PassContext, Skip
from .elementwise_group import scalar_functions
from .predicates import is_float32
from .rebuild import drop_dead_dequantize

#: the fewest ops a written-out GELU takes (x * Phi(x) needs a product, a
#: transcendental, a shift and a scale)
_MIN_OPS = 4


@dataclass
class WrittenGelu(Match):
    x: Tensor
    ops: list[Operator]
    approximate: bool
    #: the group computes ``scale * GELU(x)``
    scale: float = 1.0


class FuseGelu(FusionPass):
    name = "fuse-gelu"
    summary = "GELU written out of elementwise ops (tanh or erf form, any order) => GELU"
    anchors = (Op.MUL, Op.DIV)

    def match(self, ctx: PassContext, sg: Subgraph, last: Operator) -> WrittenGelu | Skip | None:
        y = last.outputs[0] if last.outputs else None
        if not is_float32(y):
            return None
        for x, ops, got in scalar_functions(ctx, sg, last, _MIN_OPS):
            for approximate in (True, False):
                scale = _multiple(got, gelu(PROBE, approximate))
                if scale is None:
                    continue
                why = ctx.target.lacks(GELU)
                if why:
                    form = "tanh" if approximate else "erf"
                    return Skip(f"GELU ({form} form) written as {len(ops)} ops; {why}", last)
                return WrittenGelu(x, ops, approximate, scale) if list(x.shape) == list(y.shape) else None
        return None

    def apply(self, ctx: PassContext, sg: Subgraph, m: WrittenGelu) -> str:
        y = m.ops[-1].outputs[0]
        opts = fb.GeluOptionsT()
        opts.approximate = m.approximate
        if m.scale == 1.0:
            out, tail = y, []
        else:
            out = sg.add_tensor(y.like(f"{y.name}/gelu", quantized=False))
            c = ctx.model.new_constant(sg, f"{y.name}/gelu_scale", np.array(m.scale, np.float32), y.dtype)
            tail = [Operator(ctx.model.opcode(Op.MUL), [out, c], [y], options=fb.MulOptionsT(),
                             options_type=BuiltinOptions.MulOptions)]
        new = Operator(ctx.model.opcode(Op.GELU), [m.x], [out], options=opts,
                       options_type=BuiltinOptions.GeluOptions)
        sg.replace(m.ops, [new] + tail)
        drop_dead_dequantize(ctx.model, sg, [t for op in m.ops for t in op.inputs])
        return (f"wrote {len(m.ops)} elementwise ops -> {y.name!r} as GELU "
                f"({'tanh approximation' if m.approximate else 'erf'})"
                + (f" times {m.scale:.7g}" if tail else ""))


def _multiple(got: np.ndarray, want: np.ndarray) -> float | None:
    """``a`` when ``got`` is ``a * want`` on every probe point (1.0 for
    ``want`` itself, to float32 precision), else None."""
    a = float(np.dot(got, want) / np.dot(want, want)) if np.isfinite(got).all() else 0.0
    if not np.isfinite(a) or a == 0.0:
        return None
    if abs(a - 1.0) <= 1e-6:
        a = 1.0
    return a if same_function(got, a * want) else None
