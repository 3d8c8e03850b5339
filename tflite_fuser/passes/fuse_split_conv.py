"""Fuse a depthwise or grouped convolution that a converter lowered into
pieces back into one op.

Pattern (found from each ``CONCATENATION``, so the pass is linear)::

    X[N,H,W,C] --SPLIT / SPLIT_V / SLICE+ / STRIDED_SLICE+ on channels-->
        piece_1 .. piece_n --CONV_2D or DEPTHWISE_CONV_2D each-->
        y_1 .. y_n --CONCATENATION(axis=channels)--> Y [--RELU/RELU6/RELU_N1_TO_1-->]

  * pieces of 1 channel (or depthwise branches)  => one ``DEPTHWISE_CONV_2D``,
    ``depth_multiplier`` = outputs per piece, filter ``[1,kh,kw,C*M]``;
  * pieces of Cin/G > 1 channels                   => one grouped ``CONV_2D``,
    filter ``[Cout,kh,kw,Cin/G]`` (op version 6, as the TF converter writes it).

Preconditions (each failure is a ``ctx.skip`` with the reason):

  1. The concatenation is on the channel axis of a rank-4 tensor, has >= 2
     inputs, and every input is written by a CONV_2D (or every input by a
     DEPTHWISE_CONV_2D) that reads one piece.
  2. The pieces, in concatenation order, cut the channel axis of one tensor
     into consecutive ranges that cover it, all from one SPLIT/SPLIT_V (all its
     outputs) or each from its own SLICE/STRIDED_SLICE. A permuted order is not
     a depthwise conv: skipped.
  3. Every piece is read only by its branch, every branch output only by the
     concatenation (once), and none is a model output: they all disappear.
  4. Branches agree on padding, strides, dilation, fused activation, kernel
     size and types, and split into groups of equal width with equal outputs
     per group (so unequal pieces only pass for depthwise branches).
  5. Filters and biases are constants, stored the same way in every branch
     (float32, float16 behind DEQUANTIZE, or quantized integers).
  6. Quantized branches: every piece has its source's parameters (the split
     requantizes nothing), every branch output has the concatenation's, and
     filters merge exactly: identical per-tensor parameters stay per-tensor;
     differing int8 scales with zero points 0 become per-channel scales in
     channel order. Hybrid (float activations, integer filters) and int16
     models are left alone.
  7. Quantized rewrites only where the interpreter gives the very same bytes:
     int8 -> DEPTHWISE_CONV_2D. int8 grouped and all uint8 are left alone (their
     kernels round one step differently, which compounds over layers; see
     ``quantized_rewrite_refused``). Float32 grouped CONV_2D is pinned in
     ``tests/test_grouped_conv_runtime.py``.

A RELU / RELU6 / RELU_N1_TO_1 that alone reads the concatenation is fused
into the new op when it composes with the branches' own activation (the
interpreter's CONCATENATION refuses a fused activation, so converters leave it
on each branch or after the concatenation). Per-branch batch-norm and
activation tails are the job of the affine/activation passes, which run
before this one in the same fixed-point loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..conv_layout import GroupPlan, depthwise_to_ohwi, ohwi_to_depthwise, plan_groups, stack_ohwi
from ..graph import Model, Operator, Subgraph, Tensor
from ..schema import ActivationFunctionType as Act
from ..schema import BuiltinOperator as Op
from ..schema import BuiltinOptions, TensorType, fb, type_name
from .base import FusionPass, PassContext
from .channel_split import (ATTRIBUTE_NAMES, BRANCH_OPS, SLICING_OPS, Partition, Weight,
                            conv_attributes, match_partition, weight)
from .common import same_quantization, signature_outputs, why_not_removable

#: Runtime op versions: what the TF 2.21 converter writes for the same ops.
GROUPED_CONV_VERSION = 6
_POST_ACTIVATIONS = {Op.RELU: Act.RELU, Op.RELU6: Act.RELU6, Op.RELU_N1_TO_1: Act.RELU_N1_TO_1}
_QUANTIZED = (TensorType.INT8, TensorType.UINT8)


def compose_activation(inner: int, outer: int) -> int | None:
    """The one fused activation equal to ``outer(inner(x))``, if there is one."""
    if inner == Act.NONE:
        return outer
    if outer == Act.NONE or inner == outer:
        return inner
    if {inner, outer} == {Act.RELU, Act.RELU6}:
        return Act.RELU6
    return None


@dataclass
class Branch:
    op: Operator
    filter: Weight
    bias: Weight | None
    ohwi: np.ndarray  # filter in OHWI view (stored dtype)
    group_width: int
    out_channels: int


@dataclass
class Match:
    cat: Operator
    partition: Partition
    branches: list[Branch]
    plan: GroupPlan
    activation: int
    post: Operator | None  # a fused RELU-family op after the concatenation
    output: Tensor


class FuseSplitConv(FusionPass):
    name = "fuse-split-conv"
    summary = "SPLIT -> per-group CONV_2D -> CONCATENATION => one DEPTHWISE_CONV_2D or grouped CONV_2D"

    anchors = (Op.CONCATENATION,)

    def rewrite_at(self, model: Model, sg: Subgraph, ctx: PassContext, cat: Operator) -> int:
        m = self.match(model, sg, cat)
        if m is None:
            return 0
        if isinstance(m, str):
            ctx.skip(cat, m)
            return 0
        if not m.plan.is_depthwise and not ctx.options.grouped_conv:
            ctx.skip(cat, "would become a grouped CONV_2D, which --no-grouped-conv turns off")
            return 0
        self.rewrite(model, sg, m, ctx.options.fp16_weights == "float32")
        kind = ("DEPTHWISE_CONV_2D" + (f" (depth multiplier {m.plan.depth_multiplier})"
                                        if m.plan.depth_multiplier > 1 else "")
                if m.plan.is_depthwise else f"grouped CONV_2D ({m.plan.groups} groups)")
        ctx.rewrote(f"merged {m.partition.ops[0].type_name} -> {len(m.branches)} x {m.branches[0].op.type_name} "
                    f"-> CONCATENATION{' -> ' + m.post.type_name if m.post else ''} into {kind} "
                    f"-> {m.output.name!r}")
        return 1

    # ------------------------------------------------------------- matching

    def match(self, model: Model, sg: Subgraph, cat: Operator) -> Match | str | None:
        """The pattern ending at ``cat``; a reason string when it is a candidate
        that must be left alone; ``None`` when it is no candidate at all."""
        ins = cat.inputs
        producers = [sg.producer(t) if t is not None else None for t in ins]
        # A candidate: some input is a conv of a sliced tensor. Anything else
        # (inception-style concatenations, ...) is not ours and stays silent.
        if not any(_conv_of_a_slice(sg, p) for p in producers):
            return None
        out = cat.outputs[0] if len(cat.outputs) == 1 else None
        if out is None or len(out.shape) != 4:
            return "concatenation output is not rank 4"
        axis = getattr(cat.options, "axis", 0) if cat.options is not None else 0
        if axis % 4 != 3:
            return f"concatenation is not on the channel axis (axis {axis})"
        if len(ins) < 2:
            return "concatenation of fewer than two branches"
        for t, p in zip(ins, producers):
            if p is None or p.code not in BRANCH_OPS:
                what = "nothing" if p is None else p.type_name
                return f"branch {t.name if t else '-'!r} is produced by {what}, not a conv"
        if len({p.code for p in producers}) != 1:
            return "branches mix CONV_2D and DEPTHWISE_CONV_2D"
        for t, p in zip(ins, producers):
            why = why_not_removable(model, sg, t, cat)
            if why:
                return f"branch output: {why}"
            if len(p.outputs) != 1 or len(p.inputs) < 2 or p.inputs[0] is None:
                return f"branch {p.type_name} has an unexpected signature"

        attrs = [conv_attributes(p) for p in producers]
        if attrs[0] is None:
            return "branch conv has no options"
        for a in attrs[1:]:
            if a is None:
                return "branch conv has no options"
            if a != attrs[0]:
                diff = next(ATTRIBUTE_NAMES[i] for i in range(len(a)) if a[i] != attrs[0][i])
                return f"branches differ in {diff}"
        is_dw = producers[0].code == Op.DEPTHWISE_CONV_2D
        if is_dw and len({p.options.depthMultiplier for p in producers}) != 1:
            return "branches differ in depth multiplier"

        part = match_partition(sg, [p.inputs[0] for p in producers])
        if isinstance(part, str):
            return part
        for piece, p in zip(part.pieces, producers):
            why = why_not_removable(model, sg, piece.tensor, p)
            if why:
                return f"piece: {why}"

        branches = []
        for piece, p in zip(part.pieces, producers):
            b = self._branch(sg, p, piece.channels, is_dw)
            if isinstance(b, str):
                return b
            branches.append(b)
        if len({b.ohwi.shape[1:3] for b in branches}) != 1:
            return "branches differ in kernel size"
        plan = plan_groups([pc.channels for pc in part.pieces], [b.out_channels for b in branches],
                           [b.group_width for b in branches])
        if isinstance(plan, str):
            return plan
        if out.shape[3] != plan.out_channels or part.source.shape[3] != plan.in_channels:
            return "concatenation shape does not match its branches"

        why = self._types_agree(part, producers, branches, out)
        if why:
            return why
        why = quantized_rewrite_refused(part.source.dtype, plan.is_depthwise)
        if why:
            return why

        # The interpreter's CONCATENATION refuses a fused activation, but the
        # schema allows one: honour it rather than drop it.
        activation = compose_activation(attrs[0][5], getattr(cat.options, "fusedActivationFunction", Act.NONE))
        if activation is None:
            return "the concatenation's fused activation does not compose with the branches'"
        post = None
        output = out
        users = sg.consumers(out)
        if len(users) == 1 and users[0].code in _POST_ACTIVATIONS and len(users[0].outputs) == 1 \
                and not why_not_removable(model, sg, out, users[0]):
            relu = users[0]
            act = compose_activation(activation, _POST_ACTIVATIONS[relu.code])
            if act is not None and same_quantization(relu.outputs[0], out):
                post, activation, output = relu, act, relu.outputs[0]
        return Match(cat, part, branches, plan, activation, post, output)

    def _branch(self, sg: Subgraph, op: Operator, piece_channels: int, is_dw: bool) -> Branch | str:
        f = weight(sg, op.inputs[1])
        if f is None or f.values.ndim != 4:
            return f"filter of {op.type_name} -> {op.outputs[0].name!r} is not a constant"
        b = None
        if len(op.inputs) > 2 and op.inputs[2] is not None:
            b = weight(sg, op.inputs[2])
            if b is None:
                return f"bias of {op.type_name} -> {op.outputs[0].name!r} is not a constant"
        if is_dw:
            m = op.options.depthMultiplier
            if f.values.shape[0] != 1 or f.values.shape[3] != piece_channels * m:
                return f"depthwise branch filter {list(f.values.shape)} does not match its piece"
            ohwi, width = depthwise_to_ohwi(f.values), 1
        else:
            ohwi, width = f.values, int(f.values.shape[3])
        cout = int(ohwi.shape[0])
        if b is not None and b.values.shape != (cout,):
            return f"bias of {op.type_name} -> {op.outputs[0].name!r} has shape {list(b.values.shape)}"
        if op.outputs[0].shape[3:] != [cout]:
            return f"{op.type_name} -> {op.outputs[0].name!r} output does not match its filter"
        return Branch(op, f, b, ohwi, width, cout)

    def _types_agree(self, part: Partition, producers: list[Operator], branches: list[Branch],
                     out: Tensor) -> str | None:
        x = part.source
        if x.dtype not in (TensorType.FLOAT32, TensorType.FLOAT16, *_QUANTIZED):
            return f"{type_name(x.dtype)} activations are not handled"
        kinds = {(b.filter.tensor.dtype, b.filter.dequantize is not None) for b in branches}
        if len(kinds) != 1:
            return "branch filters are stored in different types"
        bias_kinds = {(b.bias.tensor.dtype, b.bias.dequantize is not None) for b in branches if b.bias}
        if len(bias_kinds) > 1:
            return "branch biases are stored in different types"
        (fdtype, _), = kinds
        if any(p.outputs[0].dtype != x.dtype for p in producers) or out.dtype != x.dtype:
            return "branch outputs are not of the input's type"
        if x.dtype == TensorType.FLOAT16:
            if (kinds | bias_kinds) - {(TensorType.FLOAT16, False)}:
                return "float16 activations with weights that are not plain float16 constants"
            return None
        if x.dtype == TensorType.FLOAT32:
            odd = (kinds | bias_kinds) - {(TensorType.FLOAT32, False), (TensorType.FLOAT16, True)}
            if odd:
                return (f"float activations with {type_name(next(iter(odd))[0])} weights "
                        "(a hybrid model, or float16 not behind DEQUANTIZE)")
            return None
        # Quantized: the pattern moves bytes around, so every step it removes
        # must not have requantized anything.
        if fdtype != x.dtype:
            return f"{type_name(x.dtype)} activations with {type_name(fdtype)} filters"
        xq = x.quant_params()
        if xq is None or len(xq[0]) != 1:
            return "quantized input without per-tensor parameters"
        for piece in part.pieces:
            if not same_quantization(piece.tensor, x):
                return "a piece is requantized by the split"
        for p in producers:
            if not same_quantization(p.outputs[0], out):
                return "branch output parameters differ from the concatenation's (it requantizes)"
        for b in branches:
            if b.filter.tensor.quant_params() is None:
                return "quantized branch filter without parameters"
            if b.bias is not None and (b.bias.tensor.dtype != TensorType.INT32
                                       or b.bias.tensor.quant_params() is None):
                return "quantized branch bias is not int32 with parameters"
        rows = [_filter_rows(b, p) for b, p in zip(branches, producers)]
        if any(r is None for r in rows):
            return "branch filter parameters do not match its channels"
        scales = np.concatenate([r[0] for r in rows])
        zps = np.concatenate([r[1] for r in rows])
        if not (np.all(scales == scales[0]) and np.all(zps == zps[0])):
            if x.dtype != TensorType.INT8 or np.any(zps != 0):
                return "per-branch filter parameters cannot be merged exactly (not int8 with zero point 0)"
        return None

    # -------------------------------------------------------------- rewrite

    def rewrite(self, model: Model, sg: Subgraph, m: Match, fp16_as_float32: bool = False) -> None:
        plan, branches, x = m.plan, m.branches, m.partition.source
        first = branches[0].op
        name = m.output.name
        ohwi = stack_ohwi([b.ohwi for b in branches])
        quantized = x.dtype in _QUANTIZED
        per_channel = False
        fq = bq = None
        if quantized:
            rows = [_filter_rows(b, b.op) for b in branches]
            scales = np.concatenate([r[0] for r in rows])
            zps = np.concatenate([r[1] for r in rows])
            per_channel = not (np.all(scales == scales[0]) and np.all(zps == zps[0]))
            qdim = 3 if plan.is_depthwise else 0
            fq = (quantization_params(scales, zps, qdim) if per_channel
                  else quantization_params(scales[:1], zps[:1], 0))
            in_scale = float(x.quant_params()[0][0])
            bscales = np.concatenate([_bias_scales(b, in_scale, r[0]) for b, r in zip(branches, rows)])
            if per_channel or not np.all(bscales == bscales[0]):
                bq = quantization_params(bscales, np.zeros(len(bscales), np.int64), 0)
            else:
                bq = quantization_params(bscales[:1], np.zeros(1, np.int64), 0)

        # ---- filter
        stored = ohwi_to_depthwise(ohwi) if plan.is_depthwise else ohwi
        filt, deq = self._emit(model, sg, f"{name}/filter", stored, branches[0].filter, fq,
                               [b.filter for b in branches], fp16_as_float32)

        # ---- bias (created when absent: the conv kernels require one)
        bias_parts, bias_template = [], next((b.bias for b in branches if b.bias is not None), None)
        for b in branches:
            if b.bias is not None:
                bias_parts.append(b.bias.values)
            elif quantized:
                bias_parts.append(np.zeros(b.out_channels, np.int32))
            else:
                dt = bias_template.values.dtype if bias_template is not None else np.float32
                bias_parts.append(np.zeros(b.out_channels, dt))
        bias_values = np.concatenate(bias_parts)
        if bias_template is None:
            bias_template = Weight(Tensor("bias", [0], TensorType.INT32 if quantized else TensorType.FLOAT32),
                                   bias_values)
        bias, bdeq = self._emit(model, sg, f"{name}/bias", bias_values, bias_template, bq,
                                [b.bias for b in branches if b.bias is not None], fp16_as_float32)

        # ---- the conv
        o = first.options
        if plan.is_depthwise:
            floor = first.opcode.version if first.code == Op.DEPTHWISE_CONV_2D else 1
            code, version = Op.DEPTHWISE_CONV_2D, depthwise_version(x.dtype, o, floor)
            opts = fb.DepthwiseConv2DOptionsT()
            opts.depthMultiplier = plan.depth_multiplier
            opts_type = BuiltinOptions.DepthwiseConv2DOptions
        else:
            code, version = Op.CONV_2D, max(GROUPED_CONV_VERSION, first.opcode.version)
            opts = fb.Conv2DOptionsT()
            if first.code == Op.CONV_2D:
                opts.quantizedBiasType = o.quantizedBiasType
            opts_type = BuiltinOptions.Conv2DOptions
        opts.padding, opts.strideH, opts.strideW = o.padding, o.strideH, o.strideW
        opts.dilationHFactor, opts.dilationWFactor = o.dilationHFactor, o.dilationWFactor
        opts.fusedActivationFunction = m.activation
        conv = Operator(model.opcode(code, version), [x, filt, bias], [m.output],
                        options=opts, options_type=opts_type)

        old = list(m.partition.ops) + [b.op for b in branches] + [m.cat]
        if m.post is not None:
            old.append(m.post)
        # A new DEQUANTIZE (float16 weights) takes the slot of the old ones it
        # replaces, which precede every branch and so the new conv; only when
        # no old one can go (shared with ops outside the pattern) does it ride
        # along with the conv (a slower insert).
        branch_ops = {b.op for b in branches}
        observed = set(sg.outputs) | signature_outputs(model, sg)
        pending = []
        for new_deq, weights in ((deq, [b.filter for b in branches]),
                                 (bdeq, [b.bias for b in branches if b.bias is not None])):
            olds = list(dict.fromkeys(
                w.dequantize for w in weights if w.dequantize is not None
                and all(u in branch_ops for u in sg.consumers(w.dequantize.outputs[0]))
                and w.dequantize.outputs[0] not in observed))
            if new_deq is None:  # float32 storage: the old ones just go
                for d in olds:
                    sg.remove_operator(d)
            elif olds:
                sg.replace(olds, new_deq)
            else:
                pending.append(new_deq)
        sg.replace(old, pending + [conv])

    def _emit(self, model: Model, sg: Subgraph, name: str, values: np.ndarray, like: Weight,
              quantization, sources: list[Weight], fp16_as_float32: bool) -> tuple[Tensor, Operator | None]:
        """A new constant holding ``values`` stored like ``like``: float16
        behind a new DEQUANTIZE when the branches stored it so (merging moves
        values, it never rounds them), unless the user asked for float32."""
        deq_src = next((w.dequantize for w in sources if w.dequantize is not None), None)
        if deq_src is not None and fp16_as_float32:
            return model.new_constant(sg, name, values.astype(np.float32), TensorType.FLOAT32), None
        const = model.new_constant(sg, name, values, like.tensor.dtype, quantization)
        if deq_src is None:
            return const, None
        out = sg.add_tensor(Tensor(name=f"{name}/dequantize", shape=list(values.shape),
                                   dtype=TensorType.FLOAT32))
        op = Operator(model.opcode(Op.DEQUANTIZE, deq_src.opcode.version), [const], [out])
        return out, op


def quantized_rewrite_refused(dtype: int, depthwise: bool) -> str | None:
    """Why a quantized model must keep its convs as they are, or None.

    Integer convs are exact up to the final requantization, and there the
    interpreter's kernels disagree (measured on ai-edge-litert 2.3, see
    ``tests/test_grouped_conv_runtime.py``): an int8 DEPTHWISE_CONV_2D gives
    the very bytes of the per-channel CONV_2D it replaces, but the optimized
    builtin int8 *grouped* CONV_2D rounds some values one step differently from
    per-group (or dense) CONV_2D, and the legacy uint8 kernels do so for
    depthwise too. One step per layer compounds over a network, so only the
    bit-exact rewrite is made.
    """
    if dtype == TensorType.UINT8:
        return "uint8: the interpreter's uint8 CONV_2D and DEPTHWISE_CONV_2D round differently (measured)"
    if dtype == TensorType.INT8 and not depthwise:
        return ("int8 grouped CONV_2D: the interpreter's optimized kernel rounds one step differently "
                "from per-group CONV_2D (measured), and steps compound; left as it is")
    return None


def depthwise_version(dtype: int, options, floor: int = 1) -> int:
    """The DEPTHWISE_CONV_2D op version the TF converter writes: 3 for int8
    (per-channel), 2 with dilation, else 1; never below ``floor``."""
    dilated = max(options.dilationHFactor, options.dilationWFactor) > 1
    v = 3 if dtype == TensorType.INT8 else (2 if dilated else 1)
    return max(v, floor)


def _conv_of_a_slice(sg: Subgraph, op: Operator | None) -> bool:
    if op is None or op.code not in BRANCH_OPS or not op.inputs or op.inputs[0] is None:
        return False
    src = sg.producer(op.inputs[0])
    return src is not None and src.code in SLICING_OPS


# ------------------------------------------------------------ quantization


def _filter_rows(b: Branch, op: Operator) -> tuple[np.ndarray, np.ndarray] | None:
    """The branch filter's (scale, zero point) for each OHWI row (output channel)."""
    q = b.filter.tensor.quant_params()
    if q is None:
        return None
    scale, zp, dim = q
    n = b.out_channels
    if len(scale) == 1:
        return np.full(n, scale[0]), np.full(n, zp[0] if len(zp) else 0)
    # Per-channel: along the output channels (dim 0 of a CONV_2D, 3 of a depthwise filter).
    want = 3 if op.code == Op.DEPTHWISE_CONV_2D else 0
    if dim != want or len(scale) != n or len(zp) not in (0, n):
        return None
    return scale, (zp if len(zp) else np.zeros(n, np.int64))


def _bias_scales(b: Branch, in_scale: float, filter_scales: np.ndarray) -> np.ndarray:
    n = b.out_channels
    if b.bias is None:
        return in_scale * filter_scales
    q = b.bias.tensor.quant_params()
    s = q[0]
    return np.full(n, s[0]) if len(s) == 1 else s


def quantization_params(scales: np.ndarray, zps: np.ndarray, dim: int):
    """New quantization parameters (per-tensor when one scale is given)."""
    q = fb.QuantizationParametersT()
    q.scale = [float(s) for s in scales]
    q.zeroPoint = [int(z) for z in zps]
    q.quantizedDimension = dim
    return q
