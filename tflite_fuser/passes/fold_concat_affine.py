"""fold-concat-affine: a per-channel MUL/ADD (and activation) after a
concatenation of convolutions goes into each branch.

Pattern::

    y_k = OP_k(x_k, filter_k, bias_k)     k = 1..n, OP_k a weighted op
    Y   = CONCATENATION(y_1 .. y_n)        on the channel (last) axis
    Z   = Y (*|+|-|/) c ... [activation]   a per-channel affine chain
            ->   y_k' = OP_k(x_k, filter_k', bias_k', activation);  Z = CONCATENATION(y_1' .. y_n')

Channel ``j`` of ``Y`` is channel ``j - offset_k`` of the branch that wrote
it, so the chain's per-channel ``scale, shift`` cut into the branches' slices
folds exactly like fold-affine folds it after one conv, and an activation
applies to each channel alone: ``relu(concat(a, b)) = concat(relu(a),
relu(b))``. This is what a split-form grouped convolution keeps when a target
runs it faster split (``--target builtin``): TF's converter (and onnx2tf's
``tf_converter`` backend with ``-dgc``) leaves the bias ADD, with the fused
RELU, after each CONCATENATION of the branch convs.

Preconditions (each failure is a skip with its reason):

- the concatenation is on the last axis, has no fused activation, and its
  output is read by the chain alone;
- every input is written by a weighted op that can take an output-side affine
  (no activation of its own, float32 output, float constant weights), and is
  read by the concatenation alone, once, and observed by no one outside;
- the chain is as fold-affine's (``affine_chain.walk_chain``): a RELU, RELU6
  or RELU_N1_TO_1 on its last op moves onto every branch;
- every branch's folded weights are finite and fit their storage type.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import folding
from ..folding import FoldError
from ..graph import Operator, Subgraph
from ..ops import WEIGHTED, fused_activation, traits
from ..schema import ActivationFunctionType as Act
from ..schema import BuiltinOperator as Op
from .affine_chain import Chain, Folded, constant_readers, fold_into, folded_inputs, walk_chain
from .base import FusionPass, Match, PassContext, Skip
from .predicates import output_affine_weights, why_not_removable
from .rebuild import clone_op, drop_dead_dequantize, opcode_for, with_inputs
from .weights import WeightStore


@dataclass
class ConcatFold(Match):
    cat: Operator
    chain: Chain
    branches: list[Folded]
    store: WeightStore


class FoldConcatAffine(FusionPass):
    name = "fold-concat-affine"
    summary = "fold a per-channel MUL/ADD (and activation) after a CONCATENATION of convs into each branch"
    anchors = (Op.CONCATENATION,)

    def match(self, ctx: PassContext, sg: Subgraph, cat: Operator) -> ConcatFold | Skip | None:
        if len(cat.outputs) != 1 or cat.outputs[0] is None or len(cat.inputs) < 2:
            return None
        y = cat.outputs[0]
        candidates = constant_readers(sg, y)
        producers = [sg.producer(t) if t is not None else None for t in cat.inputs]
        if not candidates or not any(traits(p.code).kind in WEIGHTED for p in producers if p is not None):
            return None  # no affine after it, or no conv before it: no candidate
        axis = getattr(cat.options, "axis", 0) if cat.options is not None else 0
        if axis % len(y.shape) != len(y.shape) - 1:
            return Skip(f"concatenation is not on the channel axis (axis {axis})", cat)
        if fused_activation(cat) not in (None, Act.NONE):
            return Skip("the concatenation carries an activation of its own", cat)
        weights = []
        for t, p in zip(cat.inputs, producers):
            if p is None or traits(p.code).kind not in WEIGHTED:
                return Skip(f"branch {t.name!r} is written by {p.type_name if p else 'nothing'}, not a conv", cat)
            why = why_not_removable(ctx.model, sg, t, cat)
            if why:
                return Skip(f"branch output: {why}", cat)
            w = output_affine_weights(sg, p)
            if isinstance(w, str):
                return Skip(f"branch {p.type_name} -> {t.name!r}: {w}", cat)
            if folding.out_channels(traits(p.code).kind, w[0].stored.shape) != t.shape[-1]:
                return Skip(f"branch {t.name!r}: its filter does not match its output channels", cat)
            weights.append(w)
        chain = walk_chain(ctx, sg, y, int(y.shape[-1]), candidates)
        if not chain.ops:
            return chain.skips[0] if chain.skips else None
        store = WeightStore(ctx.model, sg, ctx, producers + [cat] + chain.ops)
        folded, start = [], 0
        try:  # every branch rounded before the graph is touched
            for p, w, t in zip(producers, weights, cat.inputs):
                end = start + int(t.shape[-1])
                folded.append(fold_into(store, p, w, chain.scale[start:end], chain.shift[start:end]))
                start = end
        except FoldError as e:
            return Skip(str(e), chain.ops[0])
        return ConcatFold(cat, chain, folded, store, skips=chain.skips)

    def apply(self, ctx: PassContext, sg: Subgraph, m: ConcatFold) -> str:
        act = m.chain.activation
        branches = []
        for f, y in zip(m.branches, m.cat.inputs):
            op = f.op
            branches.append((op, clone_op(op, inputs=with_inputs(op, folded_inputs(m.store, f, y.name)),
                                          opcode=opcode_for(ctx.model, op, bias=True, activation=act != Act.NONE),
                                          fusedActivationFunction=act)))
        out = m.chain.output
        m.store.commit(clone_op(m.cat, outputs=[out]), in_place=branches)
        drop_dead_dequantize(ctx.model, sg, [x for c in m.chain.ops for x in c.inputs])
        return (f"folded {' -> '.join(c.type_name for c in m.chain.ops)} after CONCATENATION -> {out.name!r} "
                f"into its {len(m.branches)} branches")

