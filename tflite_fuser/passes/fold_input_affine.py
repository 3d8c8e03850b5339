"""fold-input-affine: a constant per-channel MUL/ADD/SUB/DIV that feeds a
convolution goes into the convolution's filter (and bias).

Pattern::

    x1 = x0 (*|+|-|/) c1
    ...
    xn = xn-1 (*|+|-|/) cn
    y  = OP(xn, filter, bias)    ->   y = OP(x0, filter', bias')

the form input normalisation (``(x - mean) / std``) and a batch norm placed
*before* a convolution take. The chain is composed into ``x0*s + t`` per input
channel (float64, rounded once), and then

- ``filter'[.., i] = filter[.., i] * s[i]`` along the input-channel axis: exact
  whatever the padding, since zero padding of ``x*s`` is zero padding of ``x``;
- ``bias' = bias + sum over the window of filter * t``: exact only where every
  window lies inside the input, i.e. VALID padding or a SAME padding that pads
  nothing (1x1 kernels at stride 1). With real SAME padding the border would
  see 0 where the original saw ``t``, so the shift is refused there; a
  TRANSPOSE_CONV sums a position-dependent number of taps and never takes one.
  FULLY_CONNECTED has no padding and always can.

Preconditions (each failure is a skip with its reason):

- OP can take an input-side affine (``predicates.why_no_input_affine``):
  float32 input (in int8 the MUL requantizes its output, and that rounding
  cannot move into the weights exactly), float constant filter and bias whose
  input-channel layout fits the tensor;
- each ``xi`` (i >= 1) is read only by the next op and is neither a graph or
  signature output nor a variable;
- each op has one constant operand (FLOAT32, or FLOAT16 behind DEQUANTIZE)
  that broadcasts along the channel axis only and does not change the shape
  of the other operand, and has no fused activation; a DIV divides by a
  constant without zeros (``c / x`` is not affine);
- the folded weights are finite and fit their storage type (float16 weights
  behind DEQUANTIZE follow the user's float16 policy, as for fold-affine).

When the chain's input ``x0`` is itself the output of a convolution that can
take an output-side affine, the chain is left to fold-affine: folding it into
the producer has no padding restriction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import folding
from ..folding import FoldError
from ..graph import Operator, Subgraph, Tensor
from ..ops import WEIGHTED, codes, fused_activation, has_no_activation, is_weighted, slot, traits
from ..schema import ActivationFunctionType as Act
from ..schema import BuiltinOperator as Op
from ..schema import Padding, TensorType, op_name
from .base import FusionPass, Match, PassContext, Skip
from .predicates import constant_operand, input_affine_weights, why_no_output_affine, why_not_removable
from .rebuild import clone_op, drop_dead_dequantize, opcode_for, with_inputs
from .weights import Weight, WeightStore, float_weight_of


@dataclass
class InputChain(Match):
    op: Operator
    chain: list[Operator]  # from the conv upwards
    x0: Tensor
    new_filter: np.ndarray | None
    new_bias: np.ndarray | None
    store: WeightStore
    filter: Weight
    bias: Weight | None


def _affine_producer(sg: Subgraph, t: Tensor) -> tuple[Operator, int] | None:
    """The MUL/ADD/SUB/DIV with one constant operand and no activation that
    writes ``t``, and the index of that constant; None if ``t`` has none (a
    residual ADD of two activations, or an ADD + RELU, is no candidate)."""
    p = sg.producer(t)
    if p is None or traits(p.code).affine is None or p.options is None or not has_no_activation(p):
        return None
    c = constant_operand(sg, p)
    return None if c is None else (p, c)


class FoldInputAffine(FusionPass):
    name = "fold-input-affine"
    summary = "fold a constant per-channel MUL (any padding) or ADD (VALID only) feeding a conv into its weights"
    anchors = codes(WEIGHTED)

    def match(self, ctx: PassContext, sg: Subgraph, op: Operator) -> InputChain | Skip | None:
        x = slot(op, "data")
        if x is None or not x.shape:
            return None
        head = _affine_producer(sg, x)
        if head is None:
            return None
        weights = input_affine_weights(sg, op)
        if isinstance(weights, str):
            return Skip(weights, head[0])

        cin = int(x.shape[-1])
        shift_ok, shift_why = _shift_allowed(op, x)
        comp = (np.ones(cin), np.zeros(cin))
        chain: list[Operator] = []
        skips: list[Skip] = []
        cur, reader = x, op
        while True:
            found = _affine_producer(sg, cur)
            if found is None:
                break
            p, c_idx = found
            if _output_side_can_take(ctx, sg, p.inputs[1 - c_idx], p):
                return None  # fold-affine folds this chain into the producing conv instead
            try:
                data, step = self._step(ctx, sg, cur, reader, p, c_idx, cin)
                new = folding.compose_before(comp, step)
                if not shift_ok and (new[1] != 0).any():
                    raise FoldError(shift_why)
            except FoldError as e:
                skips.append(Skip(str(e), p))
                break
            comp = new
            chain.append(p)
            cur, reader = data, p
        if not chain:
            return skips[0] if skips else None

        kind = traits(op.code).kind
        w, b = weights
        scale, shift = comp
        keep_filter, zero_shift = folding.is_identity(scale, shift)
        store = WeightStore(ctx.model, sg, ctx, chain + [op])
        try:
            wv = w.float64()
            w_arr = None if keep_filter else store.round(folding.scale_input_channels(kind, wv, scale, cin), w,
                                                         "filter")
            b_arr = None
            if not zero_shift:
                new_b = folding.input_shift_bias(kind, wv, None if b is None else b.float64(), shift, cin)
                b_arr = store.round(new_b, b, "bias")
        except FoldError as e:
            return Skip(str(e), chain[0])
        return InputChain(op, chain, cur, w_arr, b_arr, store, w, b, skips=skips)

    @staticmethod
    def _step(ctx: PassContext, sg: Subgraph, cur: Tensor, reader: Operator, p: Operator, c_idx: int,
              cin: int) -> tuple[Tensor, tuple[np.ndarray, np.ndarray]]:
        """(the op's data input, its per-channel map ``(scale, shift)``);
        FoldError with the reason when ``p`` cannot join the chain."""
        name = op_name(p.code)
        why = why_not_removable(ctx.model, sg, cur, reader)
        if why:
            raise FoldError(why)
        data = p.inputs[1 - c_idx]
        if data is None or data.is_quantized or data.dtype != TensorType.FLOAT32:
            raise FoldError(f"{name} input is not float32")
        if list(data.shape) != list(cur.shape):
            raise FoldError(f"the constant broadcasts {list(data.shape)} to {list(cur.shape)}")
        const = float_weight_of(sg, p.inputs[c_idx])
        if isinstance(const, str):
            raise FoldError(f"{name} constant {const}")
        vec = folding.channel_vector(const.float64(), cin, len(cur.shape))
        step = folding.compose(*folding.identity(cin), traits(p.code).affine, vec, const_first=c_idx == 0)
        return data, step

    def apply(self, ctx: PassContext, sg: Subgraph, m: InputChain) -> str:
        op = m.op
        t = traits(op.code)
        name = op.outputs[0].name
        changes = {t.data: m.x0}
        if m.new_filter is not None:
            changes[t.filter] = m.store.add(m.new_filter, m.filter, f"{name}/filter")
        if m.new_bias is not None:
            changes[t.bias] = m.store.add(m.new_bias, m.bias, f"{name}/bias")
        has_bias = slot(op, "bias") is not None or t.bias in changes
        new_op = clone_op(op, inputs=with_inputs(op, changes),
                          opcode=opcode_for(ctx.model, op, bias=has_bias,
                                            activation=(fused_activation(op) or Act.NONE) != Act.NONE))
        m.store.commit(new_op)
        drop_dead_dequantize(ctx.model, sg, [x for c in m.chain for x in c.inputs])
        return (f"folded {' -> '.join(c.type_name for c in reversed(m.chain))} into the input of "
                f"{op.type_name} -> {name!r}")


def _shift_allowed(op: Operator, x: Tensor) -> tuple[bool, str]:
    """Whether an additive constant on the input of ``op`` can move into its
    bias (every window inside the input), and if not, why."""
    name = op.type_name
    if op.code == Op.FULLY_CONNECTED:
        return True, ""
    if op.code == Op.TRANSPOSE_CONV:
        return False, ("an ADD/SUB before a TRANSPOSE_CONV cannot fold: each output sums a "
                       "position-dependent number of taps")
    opts = op.options
    if opts.padding == Padding.VALID:
        return True, ""
    w = slot(op, "filter")
    kh, kw = int(w.shape[1]), int(w.shape[2])
    sig = x.shape_signature or x.shape
    pads = []
    for axis, k, s, d in ((1, kh, opts.strideH, opts.dilationHFactor), (2, kw, opts.strideW, opts.dilationWFactor)):
        size = int(x.shape[axis]) if sig[axis] >= 0 else None
        p = (folding.same_padding(size, k, max(s, 1), max(d, 1)) if size is not None
             else folding.same_padding_unknown_size(k, max(s, 1), max(d, 1)))
        pads.append(p)
    if all(p == (0, 0) for p in pads):
        return True, ""
    return False, (f"an ADD/SUB before a SAME-padded {name} cannot fold: the padded border would see 0 "
                   "instead of the added constant (only VALID padding, or SAME that pads nothing, allows it)")


def _output_side_can_take(ctx: PassContext, sg: Subgraph, data: Tensor, p: Operator) -> bool:
    """``data`` (the chain's input) comes from a conv that can take an
    output-side affine and that reads it to ``p`` alone: fold-affine will
    absorb the chain there."""
    prod = sg.producer(data)
    return (is_weighted(prod) and not why_not_removable(ctx.model, sg, data, p)
            and why_no_output_affine(sg, prod) is None)
