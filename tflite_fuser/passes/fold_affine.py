"""fold-affine: a constant MUL/ADD/SUB/DIV after a convolution goes into its
weights and bias.

Pattern::

    y  = OP(x, filter, bias)          OP in CONV_2D, DEPTHWISE_CONV_2D,
    y1 = y  (*|+|-|/)  c1                   FULLY_CONNECTED, TRANSPOSE_CONV
    ...
    yn = yn-1 (*|+|-|/) cn   ->   yn = OP(x, filter', bias', fused activation of the last op)

which is how a converter that maps one PyTorch op to one TFLite op leaves an
inference-mode batch norm: ``(y - mean) * inv_std * gamma + beta``. The chain,
of any length, is composed into one per-channel ``y*scale + shift`` in float64
and folded once: ``filter' = filter * scale`` (per output channel),
``bias' = bias * scale + shift`` (a missing bias is created). ``c - y`` folds
too (scale negated); ``c / y`` is not affine and stops the chain.

Preconditions (each failure is a skip with its reason):

- OP can take an output-side affine (``predicates.why_no_output_affine``): no
  fused activation of its own (``relu(y) * c`` is not ``relu(y * c)``), a
  float32 output (in int8 each op of the chain requantizes to its own scale
  and clamps to its own range; removing those moves outputs by more than the
  one step a verified rewrite may), float constant filter and bias (FLOAT32,
  or FLOAT16 behind DEQUANTIZE), and FULLY_CONNECTED weights unshuffled.
- Each intermediate ``y``, ``y1`` ... is read only by the next op of the chain,
  and is neither a graph/signature output nor a variable.
- Each ``ci`` is a constant (FLOAT32, or FLOAT16 behind DEQUANTIZE) that
  broadcasts along the channel axis only (``[]``, ``[1]``, ``[C]``, ``[1,C]``,
  ``[1,1,1,C]``) and leaves the shape of ``y`` unchanged; a DIV's ``c`` has no
  zeros.
- Each op of the chain has no fused activation, except the last, whose
  RELU/RELU6/RELU_N1_TO_1 passes on to OP (an ``ADD`` of a constant that
  already carries RELU folds).
- The folded weights are finite and fit their storage type (float16 tops out
  at 65504); otherwise the fold is refused.

A chain is folded up to the first op that cannot join it; that op is reported.
Float16 weights follow the user's policy (``weights.WeightStore``): re-rounded
to float16 (same file size, verified on the float16 grid), folded only where
exact, or stored as float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import folding
from ..folding import FoldError
from ..graph import Operator, Subgraph, Tensor
from ..ops import ACTIVATION_RANGE, WEIGHTED, codes, fused_activation, traits
from ..schema import ActivationFunctionType as Act
from ..schema import TensorType, op_name
from .base import FusionPass, Match, PassContext, Skip
from .predicates import output_affine_weights, why_not_removable
from .rebuild import clone_op, drop_dead_dequantize, opcode_for, with_inputs
from .weights import Weight, WeightStore, float_weight_of, is_constant_operand


@dataclass
class AffineChain(Match):
    op: Operator
    chain: list[Operator]
    filter: Weight
    bias: Weight | None
    #: folded values in their storage dtype; None: the old tensor stays
    new_filter: np.ndarray | None
    new_bias: np.ndarray | None
    activation: int
    store: WeightStore


def constant_readers(sg: Subgraph, t: Tensor) -> list[Operator]:
    """The MUL/ADD/SUB/DIV readers of ``t`` whose other operand is a
    constant. A reader whose other operand is computed (a residual ADD, a
    squeeze-excite gate ``x * s``) is no batch norm left apart: it is not a
    candidate, and saying it was "left alone" would be noise."""
    found = []
    for u in sg.consumers(t):
        if traits(u.code).affine is None or len(u.inputs) != 2:
            continue
        other = u.inputs[1] if u.inputs[0] is t else u.inputs[0]
        if is_constant_operand(sg, other):
            found.append(u)
    return found


class FoldAffine(FusionPass):
    name = "fold-affine"
    summary = "fold constant MUL/ADD/SUB/DIV after a conv/depthwise/FC/transpose conv into its weights"
    anchors = codes(WEIGHTED)

    def match(self, ctx: PassContext, sg: Subgraph, op: Operator) -> AffineChain | Skip | None:
        if not op.outputs or op.outputs[0] is None:
            return None
        candidates = constant_readers(sg, op.outputs[0])
        if not candidates:
            return None  # nothing with a constant to fold: no candidate
        weights = output_affine_weights(sg, op)
        if isinstance(weights, str):
            return Skip(weights, *candidates)

        kind = traits(op.code).kind
        w, b = weights
        channels = folding.out_channels(kind, w.stored.shape)
        scale, shift = np.ones(channels), np.zeros(channels)
        chain: list[Operator] = []
        skips: list[Skip] = []
        act = Act.NONE
        cur = op.outputs[0]
        while candidates:
            nxt = candidates[0]
            try:
                step, step_act = self._step(ctx, sg, cur, nxt, channels)
                scale, shift = folding.compose(scale, shift, *step)
            except FoldError as e:
                skips.append(Skip(str(e), *candidates))
                break
            chain.append(nxt)
            cur = nxt.outputs[0]
            if step_act != Act.NONE:
                act = step_act
                break
            candidates = constant_readers(sg, cur)
        if not chain:
            return skips[0] if skips else None

        store = WeightStore(ctx.model, sg, ctx, [op] + chain)
        keep_filter, zero_shift = folding.is_identity(scale, shift)
        try:
            new_w, new_b = folding.fold_output_affine(kind, w.float64(), None if b is None else b.float64(),
                                                      scale, shift)
            # Round before touching the graph: a refusal leaves no trace.
            w_arr = None if keep_filter else store.round(new_w, w, "filter")
            b_arr = None if keep_filter and zero_shift and b is not None else store.round(new_b, b, "bias")
        except FoldError as e:
            return Skip(str(e), chain[0])
        return AffineChain(op, chain, w, b, w_arr, b_arr, act, store, skips=skips)

    @staticmethod
    def _step(ctx: PassContext, sg: Subgraph, cur: Tensor, nxt: Operator, channels: int):
        """The composed step ``(op, c, const_first)`` for ``nxt`` reading
        ``cur`` and the activation ``nxt`` carries; FoldError with the reason
        when ``nxt`` cannot join the chain."""
        why = why_not_removable(ctx.model, sg, cur, nxt)
        if why:
            raise FoldError(why)
        out = nxt.outputs[0]
        if out is None or out.dtype != TensorType.FLOAT32 or out.is_quantized:
            raise FoldError(f"{op_name(nxt.code)} output is not float32")
        if nxt.options is None:
            raise FoldError(f"{op_name(nxt.code)} has no options table")
        a = fused_activation(nxt)
        a = Act.NONE if a is None else a
        if a not in ACTIVATION_RANGE:
            raise FoldError(f"{op_name(nxt.code)} carries an activation the conv cannot take over")
        other = nxt.inputs[1] if nxt.inputs[0] is cur else nxt.inputs[0]
        const = float_weight_of(sg, other)
        if isinstance(const, str):
            raise FoldError(f"the constant operand of {op_name(nxt.code)}: {const}")
        if out.shape != cur.shape:
            raise FoldError(f"the constant broadcasts {list(cur.shape)} to {list(out.shape)}")
        vec = folding.channel_vector(const.float64(), channels, len(cur.shape))
        return (traits(nxt.code).affine, vec, nxt.inputs[0] is not cur), a

    def apply(self, ctx: PassContext, sg: Subgraph, m: AffineChain) -> str:
        op, out = m.op, m.chain[-1].outputs[0]
        t = traits(op.code)
        changes = {}
        if m.new_filter is not None:
            changes[t.filter] = m.store.add(m.new_filter, m.filter, f"{out.name}/filter")
        if m.new_bias is not None:
            changes[t.bias] = m.store.add(m.new_bias, m.bias, f"{out.name}/bias")
        new_op = clone_op(op, inputs=with_inputs(op, changes), outputs=[out],
                          opcode=opcode_for(ctx.model, op, bias=True, activation=m.activation != Act.NONE),
                          fusedActivationFunction=m.activation)
        m.store.commit(new_op)
        drop_dead_dequantize(ctx.model, sg, [x for c in m.chain for x in c.inputs])
        return f"folded {' -> '.join(c.type_name for c in m.chain)} into {op.type_name} -> {out.name!r}"
