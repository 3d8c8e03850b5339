"""fold-affine: a constant MUL/ADD/SUB/DIV after a convolution goes into its
weights and bias.

Pattern::

    y = OP(x, filter, bias)           OP in CONV_2D, DEPTHWISE_CONV_2D,
    y1 = y  (*|+|-|/)  c1                   FULLY_CONNECTED, TRANSPOSE_CONV
    ...
    yn = yn-1 (*|+|-|/) cn   ->   yn = OP(x, filter', bias', fused activation of the last op)

which is how a converter that maps one PyTorch op to one TFLite op leaves an
inference-mode batch norm: ``(y - mean) * inv_std * gamma + beta``. The chain,
of any length, is composed into one per-channel ``y*scale + shift`` in float64
and folded once: ``filter' = filter * scale`` (per output channel),
``bias' = bias * scale + shift`` (a missing bias is created). ``c - y`` folds
too (scale negated); ``c / y`` is not affine and stops the chain.

Preconditions (each failure is reported with ``ctx.skip``):

- OP has no fused activation: ``relu(y) * c`` is not ``relu(y * c)``.
- Each intermediate ``y``, ``y1`` ... is read only by the next op of the chain,
  and is neither a graph/signature output nor a variable.
- Each ``ci`` is a constant (FLOAT32, or FLOAT16 behind DEQUANTIZE) that
  broadcasts along the channel axis only (``[]``, ``[1]``, ``[C]``, ``[1,C]``,
  ``[1,1,1,C]``) and leaves the shape of ``y`` unchanged; a DIV's ``c`` has no
  zeros.
- Each op of the chain has no fused activation, except the last, whose
  RELU/RELU6/RELU_N1_TO_1 passes on to OP (an ``ADD`` of a constant that
  already carries RELU folds).
- Filter and bias are float constants (FLOAT32, or FLOAT16 behind DEQUANTIZE),
  and ``y`` is float32. Quantized models are left alone: in int8, each op of
  the chain requantizes its result to its own scale and clamps it to its own
  range, and removing those roundings and clamps moves outputs by more than the
  one step a verified rewrite may move them. (Scaling per-channel int8 filter
  scales by a positive MUL - the exact part of that fold - is not implemented.)
- The folded weights are finite and fit their storage type (float16 tops out
  at 65504); otherwise the fold is refused.

New weights always go into new buffers; the old filter and bias stay for any
other op that shares them, and are pruned when nothing reads them.

Float16 weights (a FLOAT16 constant behind DEQUANTIZE) are folded in float64
from their float16 values. With the default ``fp16_weights="keep"`` the result
is rounded once and stored back as float16 behind a DEQUANTIZE, so the file
keeps its size; the re-rounding moves outputs by up to 2^-11 relative, so the
context counts it and the pipeline verifies on the float16 grid. ``"exact"``
stores float16 only when every folded value is exactly representable and
refuses the fold otherwise; ``"float32"`` stores float32 (the user asked for
the larger file, and the fold then verifies at float32 tolerances).
"""

from __future__ import annotations

import numpy as np

from .. import folding
from ..folding import FoldError
from ..graph import Model, Operator, Subgraph, Tensor
from ..schema import ActivationFunctionType as Act
from ..schema import BuiltinOperator as Op
from ..schema import TensorType, op_name
from .base import FusionPass, PassContext
from .common import (CONV_KIND, WeightWriter, clone_op, conv_input, conv_slots, float_constant,
                     drop_dead_dequantize, fused_activation, opcode_at_least, why_not_removable,
                     with_inputs)

AFFINE = {Op.MUL: "MUL", Op.ADD: "ADD", Op.SUB: "SUB", Op.DIV: "DIV"}
#: activations a chain's last op may carry and OP takes over
PASSABLE = (Act.RELU, Act.RELU6, Act.RELU_N1_TO_1)


def transpose_conv_version(has_bias: bool, activation: int) -> int:
    """TFLite reads a TRANSPOSE_CONV bias from version 3 and its fused
    activation from version 4 (``op_version.cc``)."""
    return 4 if activation != Act.NONE else 3 if has_bias else 1


class FoldAffine(FusionPass):
    name = "fold-affine"
    summary = "fold constant MUL/ADD/SUB/DIV after a conv/depthwise/FC/transpose conv into its weights"
    anchors = tuple(CONV_KIND)

    # ------------------------------------------------------------------ match

    def rewrite_at(self, model: Model, sg: Subgraph, ctx: PassContext, op: Operator) -> int:
        if not op.outputs or op.outputs[0] is None:
            return 0
        y = op.outputs[0]
        first = self._candidates(sg, ctx, y)
        if not first:
            return 0  # nothing with a constant to fold: nothing to say (or said by _candidates)
        head = first[0]
        reason = self._op_reason(sg, op)
        if reason:
            for u in first:
                ctx.skip(u, reason)
            return 0

        kind = CONV_KIND[op.code]
        _, fi, bi = conv_slots(op)
        channels = folding.out_channels(kind, op.inputs[fi].shape)
        scale, shift = np.ones(channels), np.zeros(channels)
        chain: list[Operator] = []
        act = Act.NONE
        cur = y
        while True:
            candidates = self._candidates(sg, ctx, cur)
            if not candidates:
                break
            nxt = candidates[0]
            try:
                step, step_act = self._step(model, sg, cur, nxt, channels)
                scale, shift = folding.compose(scale, shift, *step)
            except FoldError as e:
                for u in candidates:
                    ctx.skip(u, str(e))
                break
            chain.append(nxt)
            cur = nxt.outputs[0]
            if step_act != Act.NONE:
                act = step_act
                break
        if not chain:
            return 0
        try:
            return self._rewrite(model, sg, ctx, op, chain, scale, shift, act)
        except FoldError as e:
            ctx.skip(head, str(e))
            return 0

    @staticmethod
    def _candidates(sg: Subgraph, ctx: PassContext, t: Tensor) -> list[Operator]:
        """The MUL/ADD/SUB/DIV readers of ``t`` whose other operand is a
        constant. A reader whose other operand is computed (a residual ADD, a
        squeeze-excite gate ``x * s``) is no batch norm left apart: it is not
        a candidate, and saying it was "left alone" would be noise."""
        found = []
        for u in sg.consumers(t):
            if u.code not in AFFINE or len(u.inputs) != 2:
                continue
            other = u.inputs[1] if u.inputs[0] is t else u.inputs[0]
            if other is not None and (other.is_constant or float_constant(sg, other)[0] is not None):
                found.append(u)
        return found

    @staticmethod
    def _op_reason(sg: Subgraph, op: Operator) -> str | None:
        """Why nothing after ``op`` can fold into it (None: it can)."""
        name = op.type_name
        if op.options is None:
            return f"{name} has no options table"
        a = fused_activation(op)
        if a not in (None, Act.NONE):
            return f"{name} already has a fused activation; a MUL/ADD after it cannot move before it"
        y = op.outputs[0]
        if y.is_quantized or y.dtype != TensorType.FLOAT32:
            return (f"{name} output is quantized: folding MUL/ADD into int8 weights cannot be made exact "
                    "(the intermediate requantization and clamp would be lost); int8 weight-scale folding "
                    "is not implemented" if y.is_quantized else f"{name} output is not float32")
        if op.code == Op.FULLY_CONNECTED and getattr(op.options, "weightsFormat", 0) != 0:
            return "FULLY_CONNECTED weights are in a shuffled format"
        _, fi, bi = conv_slots(op)
        w, why = float_constant(sg, conv_input(op, fi))
        if w is None:
            return f"filter {why}" + (" (hybrid/int8 weights are not folded)" if "quantized" in why else "")
        b = conv_input(op, bi)
        if b is not None:
            bc, why = float_constant(sg, b)
            if bc is None:
                return f"bias {why}"
        return None

    @staticmethod
    def _step(model: Model, sg: Subgraph, cur: Tensor, nxt: Operator, channels: int):
        """The composed step ``(op, c, const_first)`` for ``nxt`` reading
        ``cur`` and the activation ``nxt`` carries; raises FoldError with the
        reason when ``nxt`` cannot join the chain."""
        why = why_not_removable(model, sg, cur, nxt)
        if why:
            raise FoldError(why)
        out = nxt.outputs[0]
        if out is None or out.is_quantized or out.dtype != TensorType.FLOAT32:
            raise FoldError(f"{op_name(nxt.code)} output is not float32")
        if nxt.options is None:
            raise FoldError(f"{op_name(nxt.code)} has no options table")
        a = fused_activation(nxt)
        a = Act.NONE if a is None else a
        if a != Act.NONE and a not in PASSABLE:
            raise FoldError(f"{op_name(nxt.code)} carries an activation the conv cannot take over")
        if len(nxt.inputs) != 2:
            raise FoldError(f"{op_name(nxt.code)} does not have two inputs")
        other = nxt.inputs[1] if nxt.inputs[0] is cur else nxt.inputs[0]
        const, why = float_constant(sg, other)
        if const is None:
            raise FoldError(f"the constant operand of {op_name(nxt.code)}: {why}")
        if list(out.shape) != list(cur.shape):
            raise FoldError(f"the constant broadcasts {list(cur.shape)} to {list(out.shape)}")
        vec = folding.channel_vector(const.values(), channels, len(cur.shape))
        return (AFFINE[nxt.code], vec, nxt.inputs[0] is not cur), a

    # ---------------------------------------------------------------- rewrite

    def _rewrite(self, model: Model, sg: Subgraph, ctx: PassContext, op: Operator, chain: list[Operator],
                 scale: np.ndarray, shift: np.ndarray, act: int) -> int:
        kind = CONV_KIND[op.code]
        _, fi, bi = conv_slots(op)
        w, _ = float_constant(sg, conv_input(op, fi))
        b_t = conv_input(op, bi)
        b = float_constant(sg, b_t)[0] if b_t is not None else None
        keep_filter, zero_shift = folding.is_identity(scale, shift)
        new_w, new_b = folding.fold_output_affine(kind, w.values(), None if b is None else b.values(),
                                                  scale, shift)
        writer = WeightWriter(model, sg, op, ctx)
        # Round everything before touching the graph: a refusal leaves no trace.
        w_arr = None if keep_filter else writer.round(new_w, w, "filter")
        keep_bias = keep_filter and zero_shift and b is not None
        b_arr = None if keep_bias else writer.round(new_b, b, "bias")

        out = chain[-1].outputs[0]
        changes = writer.store_conv_weights((fi, bi), (w, b), (w_arr, b_arr), out.name)
        opcode = op.opcode
        if op.code == Op.TRANSPOSE_CONV:
            opcode = opcode_at_least(model, op, transpose_conv_version(True, act))
        new_op = clone_op(op, inputs=with_inputs(op, changes), outputs=[out], opcode=opcode,
                          fusedActivationFunction=act)
        writer.commit([op] + chain, new_op)
        drop_dead_dequantize(model, sg, [t for c in chain for t in c.inputs])
        ctx.rewrote(f"folded {' -> '.join(c.type_name for c in chain)} into {op.type_name} -> {out.name!r}")
        return 1
