"""fuse-prelu: PReLU and leaky ReLU written out of elementwise ops become one op.

Pattern (what converters write for PyTorch's ``nn.PReLU``; any order and
grouping)::

    litert-torch:           RELU(x) - alpha * RELU(x * -1)
    onnx2tf (tf_converter): RELU(x) + (alpha/2) * (x - ABS(x))         ->   y = PRELU(x, alpha)   [1, 1, C]
    written by hand:        MAXIMUM(x, a * x)  (0 <= a <= 1)           ->   y = LEAKY_RELU(x, a)  (one a)
    onnx2tf, nobuco:        PRELU(x, [a])  (one alpha for all channels) ->   y = LEAKY_RELU(x, a)

As for GELU (:mod:`fuse_gelu`), the group is found from its last op up
(:mod:`elementwise_group`) and recognised by what it computes: evaluated on
probe values of ``x`` in every channel at once, it must be
``max(x, 0) + alpha_c * min(x, 0)`` with ``alpha_c = -f_c(-1)``, on every
probe point. A single ``alpha`` for all channels (``nn.PReLU()``'s default,
``nn.LeakyReLU``) becomes LEAKY_RELU, the op TF's converter writes for it;
one per channel becomes PRELU with an ``alpha`` of shape ``[1, ..., 1, C]``
(the shape TF's converter gives it). Four or five passes over the tensor
become one. A PRELU that converters wrote for ``nn.PReLU()`` (one ``alpha``,
of shape ``[1, 1, 1]``) becomes LEAKY_RELU too: LiteRT's GPU delegate refuses
that PRELU ("Linear alpha shape does not match the number of input
channels") and runs LEAKY_RELU.

Preconditions: float32 throughout; every constant the group reads is a
float constant (FLOAT32, or FLOAT16 behind DEQUANTIZE) that varies along the
channel axis alone; every tensor of the group except ``x`` is read inside the
group alone and is no model output; ``alpha`` is finite; the group's output
has ``x``'s shape. PReLU needs no activation of its own, so a group that is
a plain RELU (``alpha`` 0) is left to the RELU passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import folding
from ..elementwise_eval import evaluate, same_function
from ..folding import FoldError
from ..graph import Operator, Subgraph, Tensor
from ..schema import BuiltinOperator as Op
from ..schema import BuiltinOptions, fb
from .base import FusionPass, Match, PassContext, Skip
from .elementwise_group import functions_of_one_tensor
from .predicates import is_float32
from .rebuild import drop_dead_dequantize
from .weights import Weight, WeightStore, float_weight_of

#: MAXIMUM(x, a * x) is the shortest written form: two ops
_MIN_OPS = 2
#: PReLU is piecewise linear: a coarse probe settles it (every channel is
#: evaluated at once, so the probe's size multiplies the channel count)
_PROBE = np.concatenate([[-1.0], np.linspace(-8.0, 8.0, 401), [-30.0, 30.0]])
_AT_MINUS_ONE = 0


@dataclass
class WrittenPrelu(Match):
    x: Tensor
    ops: list[Operator]
    alpha: np.ndarray  # per channel, float64
    like: Weight | None  # the constant the group read alpha from (its storage is kept)


def _is_channel_constant(sg: Subgraph, t: Tensor) -> bool:
    """A float constant that varies along the last axis alone (a scalar too)."""
    if len(t.shape) > 0 and any(d != 1 for d in t.shape[:-1]):
        return False
    return isinstance(float_weight_of(sg, t), Weight)


class FusePrelu(FusionPass):
    name = "fuse-prelu"
    summary = "PReLU / leaky ReLU written out of elementwise ops (any order), one-alpha PRELU => PRELU or LEAKY_RELU"
    anchors = (Op.ADD, Op.SUB, Op.MAXIMUM, Op.PRELU)

    def match(self, ctx: PassContext, sg: Subgraph, last: Operator) -> WrittenPrelu | Skip | None:
        if last.code != Op.PRELU and (len(last.inputs) != 2 or any(t is None or t.is_constant for t in last.inputs)):
            return None  # PReLU's last op joins its two slopes' paths: a constant operand ends no PReLU
        y = last.outputs[0] if last.outputs else None
        if not is_float32(y) or not y.shape or int(y.shape[-1]) <= 0:
            return None
        if last.code == Op.PRELU:
            return _one_alpha_prelu(sg, last)
        if any(_is_channel_constant(sg, t) for t in last.inputs):
            return None  # a float16 constant behind DEQUANTIZE: a constant operand too
        channels = int(y.shape[-1])

        def constant(t: Tensor) -> np.ndarray:
            return folding.channel_vector(float_weight_of(sg, t).float64(), channels, len(y.shape))

        for x, ops in functions_of_one_tensor(ctx, sg, last, _is_channel_constant, _MIN_OPS):
            # Two non-zero slopes need x on two paths: one path of RELUs and
            # affine maps has a flat piece (c * relu(a*x + b) + d) at most.
            if list(x.shape) != list(y.shape) or sum(t is x for op in ops for t in op.inputs) < 2:
                continue
            xs = np.repeat(_PROBE[:, None], channels, axis=1)
            try:
                got = evaluate(ops, x, xs, constant)
            except FoldError:
                continue
            alpha = -got[_AT_MINUS_ONE]
            want = np.maximum(xs, 0.0) + alpha * np.minimum(xs, 0.0)
            if not (np.isfinite(alpha).all() and same_function(got, want)):
                continue
            if not alpha.any():
                return None  # a RELU written out: the RELU passes' business
            like = next((w for op in ops for t in op.inputs if t is not x
                         for w in [float_weight_of(sg, t)] if isinstance(w, Weight) and w.raw.size > 1), None)
            return WrittenPrelu(x, ops, alpha, like)
        return None

    def apply(self, ctx: PassContext, sg: Subgraph, m: WrittenPrelu) -> str:
        y = m.ops[-1].outputs[0]
        store = WeightStore(ctx.model, sg, ctx, m.ops)
        if np.all(m.alpha == m.alpha[0]):
            opts = fb.LeakyReluOptionsT()
            opts.alpha = float(np.float32(m.alpha[0]))
            new = Operator(ctx.model.opcode(Op.LEAKY_RELU), [m.x], [y], options=opts,
                           options_type=BuiltinOptions.LeakyReluOptions)
            what = f"LEAKY_RELU (alpha {opts.alpha:.6g})"
        else:
            shape = [1] * (len(y.shape) - 2) + [len(m.alpha)]
            values = store.round(m.alpha.reshape(shape), m.like, "alpha")
            alpha = store.add(values, m.like, f"{y.name}/alpha")
            new = Operator(ctx.model.opcode(Op.PRELU), [m.x, alpha], [y])
            what = f"PRELU ({len(m.alpha)} channels)"
        store.commit(new)
        drop_dead_dequantize(ctx.model, sg, [t for op in m.ops for t in op.inputs])
        if m.ops[0].code == Op.PRELU:
            return f"wrote the one-alpha PRELU -> {y.name!r} as {what}"
        return f"wrote {len(m.ops)} elementwise ops -> {y.name!r} as {what}"


def _one_alpha_prelu(sg: Subgraph, op: Operator) -> WrittenPrelu | None:
    """A PRELU whose alpha is one value for every channel: a LEAKY_RELU."""
    x, y = op.inputs[0] if op.inputs else None, op.outputs[0]
    a = op.inputs[1] if len(op.inputs) == 2 else None
    w = float_weight_of(sg, a) if a is not None else None
    if x is None or not is_float32(x) or list(x.shape) != list(y.shape) or not isinstance(w, Weight):
        return None
    v = w.float64().reshape(-1)
    if not v.size or not np.isfinite(v).all() or np.any(v != v[0]):
        return None  # one alpha per channel: PRELU is the op
    return WrittenPrelu(x, [op], np.full(int(y.shape[-1]), v[0]), None)
