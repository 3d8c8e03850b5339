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

Preconditions (each failure is reported with ``ctx.skip``):

- each ``xi`` (i >= 1) is read only by the next op and is neither a graph or
  signature output nor a variable;
- each op has one constant operand (FLOAT32, or FLOAT16 behind DEQUANTIZE)
  that broadcasts along the channel axis only and does not change the shape
  of the other operand, and has no fused activation; a DIV divides by a
  constant without zeros (``c / x`` is not affine);
- filter and bias are float constants and the tensors float32, not quantized
  (in int8 the MUL requantizes its output, and that rounding cannot move into
  the weights exactly);
- the folded weights are finite and fit their storage type (float16 weights
  behind DEQUANTIZE: as for fold-affine, re-rounded to float16 with
  ``fp16_weights="keep"``, only when exact with ``"exact"``, or float32).

When the chain's input ``x0`` is itself the output of a convolution that
fold-affine can extend, the chain is left to fold-affine: folding it into the
producer has no padding restriction.
"""

from __future__ import annotations

import numpy as np

from .. import folding
from ..folding import FoldError
from ..graph import Model, Operator, Subgraph, Tensor
from ..schema import ActivationFunctionType as Act
from ..schema import BuiltinOperator as Op
from ..schema import Padding, TensorType, op_name
from .base import FusionPass, PassContext
from .common import (CONV_KIND, WeightWriter, clone_op, conv_input, conv_slots, drop_dead_dequantize,
                     float_constant, fused_activation, has_no_activation, opcode_at_least, why_not_removable,
                     with_inputs)
from .fold_affine import AFFINE, FoldAffine, transpose_conv_version


class FoldInputAffine(FusionPass):
    name = "fold-input-affine"
    summary = "fold a constant per-channel MUL (any padding) or ADD (VALID only) feeding a conv into its weights"
    anchors = tuple(CONV_KIND)

    def rewrite_at(self, model: Model, sg: Subgraph, ctx: PassContext, op: Operator) -> int:
        di, fi, bi = conv_slots(op)
        x = conv_input(op, di)
        if x is None or not x.shape:
            return 0
        p = sg.producer(x)
        if (p is None or p.code not in AFFINE or _constant_operand(sg, p) is None or p.options is None
                or not has_no_activation(p)):
            return 0  # not a candidate (e.g. a residual ADD of two activations, or an ADD + RELU)
        reason = self._op_reason(sg, op)
        if reason:
            ctx.skip(p, reason)
            return 0

        cin = int(x.shape[-1])
        shift_ok, shift_why = _shift_allowed(op, x)
        comp = (np.ones(cin), np.zeros(cin))
        chain: list[Operator] = []
        cur, reader = x, op
        while True:
            p = sg.producer(cur)
            if p is None or p.code not in AFFINE:
                break
            c_idx = _constant_operand(sg, p)
            if c_idx is None or p.options is None or not has_no_activation(p):
                break  # not affine: an op of two activations, or one with a fused activation
            if _output_side_can_take(model, sg, p.inputs[1 - c_idx], p):
                return 0  # fold-affine folds this chain into the producing conv instead
            try:
                data, step = self._step(model, sg, cur, reader, p, c_idx, cin)
                new = folding.compose_before(comp, step)
                if not shift_ok and np.any(new[1] != 0):
                    raise FoldError(shift_why)
            except FoldError as e:
                ctx.skip(p, str(e))
                break
            comp = new
            chain.append(p)
            cur, reader = data, p
        if not chain:
            return 0
        try:
            return self._rewrite(model, sg, ctx, op, chain, cur, comp)
        except FoldError as e:
            ctx.skip(chain[0], str(e))
            return 0

    @staticmethod
    def _op_reason(sg: Subgraph, op: Operator) -> str | None:
        name = op.type_name
        if op.options is None:
            return f"{name} has no options table"
        di, fi, bi = conv_slots(op)
        x = op.inputs[di]
        if x.is_quantized or x.dtype != TensorType.FLOAT32:
            return (f"{name} input is quantized: the MUL/ADD requantizes its result, which cannot move into "
                    "the weights exactly" if x.is_quantized else f"{name} input is not float32")
        if op.code == Op.FULLY_CONNECTED and getattr(op.options, "weightsFormat", 0) != 0:
            return "FULLY_CONNECTED weights are in a shuffled format"
        w, why = float_constant(sg, conv_input(op, fi))
        if w is None:
            return f"{name} filter {why}"
        b = conv_input(op, bi)
        if b is not None and float_constant(sg, b)[0] is None:
            return f"{name} bias {float_constant(sg, b)[1]}"
        try:
            folding.input_channel_map(CONV_KIND[op.code], w.tensor.shape, int(x.shape[-1]))
        except FoldError as e:
            return str(e)
        return None

    @staticmethod
    def _step(model: Model, sg: Subgraph, cur: Tensor, reader: Operator, p: Operator, c_idx: int,
              cin: int) -> tuple[Tensor, tuple[np.ndarray, np.ndarray]]:
        """(the op's data input, its per-channel map ``(scale, shift)``);
        FoldError with the reason when ``p`` cannot join the chain."""
        name = op_name(p.code)
        why = why_not_removable(model, sg, cur, reader)
        if why:
            raise FoldError(why)
        data = p.inputs[1 - c_idx]
        if data is None or data.is_quantized or data.dtype != TensorType.FLOAT32:
            raise FoldError(f"{name} input is not float32")
        if list(data.shape) != list(cur.shape):
            raise FoldError(f"the constant broadcasts {list(data.shape)} to {list(cur.shape)}")
        const, why = float_constant(sg, p.inputs[c_idx])
        if const is None:
            raise FoldError(f"{name} constant {why}")
        vec = folding.channel_vector(const.values(), cin, len(cur.shape))
        step = folding.compose(np.ones(cin), np.zeros(cin), AFFINE[p.code], vec, const_first=c_idx == 0)
        return data, step

    def _rewrite(self, model: Model, sg: Subgraph, ctx: PassContext, op: Operator, chain: list[Operator],
                 x0: Tensor, comp: tuple[np.ndarray, np.ndarray]) -> int:
        kind = CONV_KIND[op.code]
        di, fi, bi = conv_slots(op)
        cin = int(op.inputs[di].shape[-1])
        w, _ = float_constant(sg, conv_input(op, fi))
        b_t = conv_input(op, bi)
        b = float_constant(sg, b_t)[0] if b_t is not None else None
        scale, shift = comp
        keep_filter, zero_shift = folding.is_identity(scale, shift)
        wv = w.values()
        writer = WeightWriter(model, sg, op, ctx)
        w_arr = None if keep_filter else writer.round(folding.scale_input_channels(kind, wv, scale, cin), w,
                                                      "filter")
        b_arr = None
        if not zero_shift:
            new_b = folding.input_shift_bias(kind, wv, None if b is None else b.values(), shift, cin)
            b_arr = writer.round(new_b, b, "bias")

        changes = {di: x0, **writer.store_conv_weights((fi, bi), (w, b), (w_arr, b_arr), op.outputs[0].name)}
        opcode = op.opcode
        if op.code == Op.TRANSPOSE_CONV:
            has_bias = conv_input(op, bi) is not None or bi in changes
            opcode = opcode_at_least(model, op, transpose_conv_version(has_bias, fused_activation(op) or Act.NONE))
        new_op = clone_op(op, inputs=with_inputs(op, changes), opcode=opcode)
        writer.commit(chain + [op], new_op)
        drop_dead_dequantize(model, sg, [t for c in chain for t in c.inputs])
        ctx.rewrote(f"folded {' -> '.join(c.type_name for c in reversed(chain))} into the input of "
                 f"{op.type_name} -> {op.outputs[0].name!r}")
        return 1


def _constant_operand(sg: Subgraph, p: Operator) -> int | None:
    """Index of the one constant operand of a binary op (a constant tensor,
    quantized or not, or a float16 constant behind DEQUANTIZE); None if there
    is not exactly one."""
    if len(p.inputs) != 2:
        return None
    const = [i for i, t in enumerate(p.inputs)
             if t is not None and (t.is_constant or float_constant(sg, t)[0] is not None)]
    return const[0] if len(const) == 1 else None


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
    w = op.inputs[1]
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


def _output_side_can_take(model: Model, sg: Subgraph, data: Tensor, p: Operator) -> bool:
    """``data`` (the chain's input) comes from a conv that fold-affine can
    extend and that reads it to ``p`` alone: fold-affine will absorb the
    chain there."""
    prod = sg.producer(data)
    if prod is None or prod.code not in CONV_KIND or why_not_removable(model, sg, data, p):
        return False
    return FoldAffine._op_reason(sg, prod) is None
