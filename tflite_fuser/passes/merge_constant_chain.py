"""merge-constant-chain: a run of constant MUL/ADD/SUB/DIV ops that no
weighted op can take is written as one MUL and one ADD (or just one of them).

Pattern (what is left where nothing precedes or follows to fold into: a
normalisation of a model input read by a pooling or a PAD, a scale after
a MEAN, a written-out ``(x - mean) / std * gamma + beta``)::

    y1 = x (*|+|-|/) c1
    ...                               ->   y = ADD(MUL(x, s), t)
    yn = yn-1 (*|+|-|/) cn                 s, t: per channel, composed in float64, rounded once

"Per channel" is along the one axis the constants vary on: the last (NHWC),
or axis 1 where a converter computes in NCHW before its first TRANSPOSE
(litert-torch's ``[1, 3, 1, 1]`` mean and std).

The chain is composed into one per-channel ``x*s + t`` (``affine_chain``, the
same walk fold-affine makes, from the chain's input instead of a weighted
op's output); the MUL goes when ``s`` is all ones, the ADD when ``t`` is all
zeros; the last op's fused activation goes onto the last op written. Not
bit-exact: the original rounds after every op, the merged chain once (within
the verifier's tolerance, and proved like every rewrite).

Preconditions (each failure ends the chain there, with its reason):

- the first op's data input ``x`` is float32, not itself the output of an op
  that would join (the chain is taken whole, from its first op);
- each intermediate ``y1`` ... is read by the next op alone and is no model
  output; each ``ci`` is a float constant (FLOAT32, or FLOAT16 behind
  DEQUANTIZE) broadcasting along one axis only, the same for all, and
  leaving the shape unchanged; a DIV's has no zeros and divides ``y``, not the other way round;
- only the last op carries a fused activation (RELU, RELU6, RELU_N1_TO_1);
- the merged form has fewer ops than the chain (a MUL then an ADD stays).

Runs after the folds: a chain a convolution can take (before or after it)
goes into its weights instead, which leaves no op at all.

Measured on the ``reflect_stem`` fixtures (25 alternating rounds, one
thread): 1.00-1.01x under XNNPACK and 1.01-1.02x on the built-in kernels (a
3-channel input is little work next to the convs); LiteRT's GPU delegate
computes nobuco's original chain wrongly and the merged one right
(``tests/test_gpu.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import folding
from ..graph import Operator, Subgraph, Tensor
from ..ops import has_no_activation, traits
from ..schema import ActivationFunctionType as Act
from ..schema import BuiltinOperator as Op
from ..schema import BuiltinOptions, TensorType, fb, op_name
from .affine_chain import Chain, walk_chain
from .base import FusionPass, Match, PassContext, Skip
from .predicates import is_float32, why_not_removable
from .rebuild import drop_dead_dequantize
from .weights import is_constant_operand

AFFINE_OPS = (Op.MUL, Op.ADD, Op.SUB, Op.DIV)
#: ops looked along for the axis a chain broadcasts on
MAX_LOOKAHEAD = 16


@dataclass
class ConstantChain(Match):
    x: Tensor
    chain: Chain
    #: (op code, per-channel constant) to write, in order
    form: list[tuple[int, np.ndarray]]


def _data_input(sg: Subgraph, op: Operator) -> Tensor | None:
    """The operand of a constant MUL/ADD/SUB/DIV that is not the constant."""
    if len(op.inputs) != 2 or traits(op.code).affine is None:
        return None
    a, b = op.inputs
    if a is None or b is None:
        return None
    if is_constant_operand(sg, b) and not is_constant_operand(sg, a):
        return a
    if is_constant_operand(sg, a) and not is_constant_operand(sg, b):
        return b
    return None


def _broadcast_axis(sg: Subgraph, op: Operator, rank: int) -> int:
    """The axis the chain from ``op`` varies along: that of the first of its
    constants with more than one element (NCHW converters broadcast along
    axis 1), the last axis when all are scalars or none tells."""
    for _ in range(MAX_LOOKAHEAD):
        x = _data_input(sg, op)
        if x is None:
            break
        k = op.inputs[1] if op.inputs[0] is x else op.inputs[0]
        shape = [int(d) for d in k.shape]  # a DEQUANTIZE's output has its constant's shape
        padded = [1] * (rank - len(shape)) + shape
        varying = [i for i, d in enumerate(padded) if d != 1]
        if len(padded) == rank and len(varying) == 1:
            return varying[0]
        if varying:
            break
        users = sg.consumers(op.outputs[0]) if op.outputs and op.outputs[0] is not None else []
        if len(users) != 1:
            break
        op = users[0]
    return rank - 1


class MergeConstantChain(FusionPass):
    name = "merge-constant-chain"
    summary = "a chain of constant MUL/ADD/SUB/DIV no conv can take => one MUL and one ADD (per channel)"
    anchors = AFFINE_OPS

    def match(self, ctx: PassContext, sg: Subgraph, op: Operator) -> ConstantChain | Skip | None:
        x = _data_input(sg, op)
        if x is None or not is_float32(x) or not x.shape:
            return None
        before = sg.producer(x)
        if (before is not None and _data_input(sg, before) is not None and has_no_activation(before)
                and why_not_removable(ctx.model, sg, x, op) is None):
            return None  # the middle of a chain: it is taken from its first op
        axis = _broadcast_axis(sg, op, len(x.shape))
        chain = walk_chain(ctx, sg, x, int(x.shape[axis]), candidates=[op], axis=axis, keeps_input=True)
        if len(chain.ops) < 2:
            return None  # no step, or one op: nothing to merge
        keep_scale, zero_shift = folding.is_identity(chain.scale, chain.shift)
        form = ([] if keep_scale else [(Op.MUL, chain.scale)]) + ([] if zero_shift else [(Op.ADD, chain.shift)])
        # An identity (with its activation) is an ADD of zeros: drop-identities takes it from there.
        form = form or [(Op.ADD, chain.shift)]
        if len(form) >= len(chain.ops):
            return None  # as short as it gets already
        for _, v in form:
            if not np.isfinite(v.astype(np.float32)).all():
                return Skip("the merged constant is not finite in float32", op)
        shape = [1] * len(x.shape)
        shape[axis] = int(x.shape[axis])
        if axis == len(x.shape) - 1:
            shape = shape[-1:]  # the usual per-channel vector
        return ConstantChain(x, chain, [(code, v.reshape(shape)) for code, v in form], skips=chain.skips)

    def apply(self, ctx: PassContext, sg: Subgraph, m: ConstantChain) -> str:
        model, z = ctx.model, m.chain.output
        new, cur = [], m.x
        for i, (code, v) in enumerate(m.form):
            last = i == len(m.form) - 1
            out = z if last else sg.add_tensor(z.like(f"{z.name}/scaled", quantized=False))
            k = model.new_constant(sg, f"{z.name}/{'scale' if code == Op.MUL else 'shift'}",
                                   v.astype(np.float32), TensorType.FLOAT32)
            act = m.chain.activation if last else Act.NONE
            if code == Op.MUL:
                opts, kind = fb.MulOptionsT(), BuiltinOptions.MulOptions
            else:
                opts, kind = fb.AddOptionsT(), BuiltinOptions.AddOptions
            opts.fusedActivationFunction = act
            new.append(Operator(model.opcode(code), [cur, k], [out], options=opts, options_type=kind))
            cur = out
        sg.replace(m.chain.ops, new)
        drop_dead_dequantize(model, sg, [t for op in m.chain.ops for t in op.inputs])
        return (f"merged {' -> '.join(op.type_name for op in m.chain.ops)} -> {z.name!r} into "
                f"{' -> '.join(op_name(code) for code, _ in m.form)}")
