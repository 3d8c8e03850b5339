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

from .. import folding
from ..folding import FoldError
from ..graph import Operator, Subgraph
from ..ops import WEIGHTED, codes, traits
from ..schema import ActivationFunctionType as Act
from .affine_chain import Chain, Folded, constant_readers, fold_into, folded_inputs, walk_chain
from .base import FusionPass, Match, PassContext, Skip
from .predicates import output_affine_weights
from .rebuild import clone_op, drop_dead_dequantize, opcode_for, with_inputs
from .weights import WeightStore


@dataclass
class AffineFold(Match):
    chain: Chain
    folded: Folded
    store: WeightStore


class FoldAffine(FusionPass):
    name = "fold-affine"
    summary = "fold constant MUL/ADD/SUB/DIV after a conv/depthwise/FC/transpose conv into its weights"
    anchors = codes(WEIGHTED)

    def match(self, ctx: PassContext, sg: Subgraph, op: Operator) -> AffineFold | Skip | None:
        if not op.outputs or op.outputs[0] is None:
            return None
        candidates = constant_readers(sg, op.outputs[0])
        if not candidates:
            return None  # nothing with a constant to fold: no candidate
        weights = output_affine_weights(sg, op)
        if isinstance(weights, str):
            return Skip(weights, *candidates)
        channels = folding.out_channels(traits(op.code).kind, weights[0].stored.shape)
        chain = walk_chain(ctx, sg, op.outputs[0], channels, candidates)
        if not chain.ops:
            return chain.skips[0] if chain.skips else None
        store = WeightStore(ctx.model, sg, ctx, [op] + chain.ops)
        try:  # rounded before the graph is touched: a refusal leaves no trace
            folded = fold_into(store, op, weights, chain.scale, chain.shift)
        except FoldError as e:
            return Skip(str(e), chain.ops[0])
        return AffineFold(chain, folded, store, skips=chain.skips)

    def apply(self, ctx: PassContext, sg: Subgraph, m: AffineFold) -> str:
        op, out = m.folded.op, m.chain.output
        act = m.chain.activation
        new_op = clone_op(op, inputs=with_inputs(op, folded_inputs(m.store, m.folded, out.name)), outputs=[out],
                          opcode=opcode_for(ctx.model, op, bias=True, activation=act != Act.NONE),
                          fusedActivationFunction=act)
        m.store.commit(new_op)
        drop_dead_dequantize(ctx.model, sg, [x for c in m.chain.ops for x in c.inputs])
        return f"folded {' -> '.join(c.type_name for c in m.chain.ops)} into {op.type_name} -> {out.name!r}"
