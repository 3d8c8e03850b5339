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
     (float32, float16 behind DEQUANTIZE, quantized integers, or plain
     float16 in a model whose activations are float16: merging moves values,
     it never rounds them).
  6. Quantized branches: every piece has its source's parameters (the split
     requantizes nothing), every branch output has the concatenation's, and
     filters merge exactly: identical per-tensor parameters stay per-tensor;
     differing int8 scales with zero points 0 become per-channel scales in
     channel order. Hybrid (float activations, integer filters) and int16
     models are left alone.
  7. Quantized rewrites only where the interpreter gives the very same bytes:
     int8 -> DEPTHWISE_CONV_2D. int8 grouped and all uint8 are left alone (their
     kernels round one step differently, which compounds over layers; see
     ``Target.quantized_merge_refused`` in targets.py). Float32 grouped CONV_2D is pinned in
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
from ..graph import Operator, Subgraph, Tensor, quantization
from ..ops import ACTIVATION, CONV, DEPTHWISE, activation_for, codes, compose_activations, traits
from ..schema import ActivationFunctionType as Act
from ..schema import BuiltinOperator as Op
from ..schema import TensorType, type_name
from .base import FusionPass, Match, PassContext, Skip
from .channel_split import SLICING_OPS, Partition, match_partition
from .convs import ConvGeometry, grouped_conv
from .predicates import same_quantization, why_not_removable
from .weights import Weight, WeightStore, weight_of
from ..targets import GROUPED_CONV, MERGE_GROUPED

BRANCH_OPS = codes((CONV, DEPTHWISE))
_QUANTIZED = (TensorType.INT8, TensorType.UINT8)


@dataclass
class Branch:
    op: Operator
    filter: Weight
    bias: Weight | None
    ohwi: np.ndarray  # filter in OHWI view (stored dtype)
    group_width: int
    out_channels: int
    #: quantized: the filter's (scale, zero point) per output channel
    rows: tuple[np.ndarray, np.ndarray] | None = None


@dataclass
class SplitConv(Match):
    cat: Operator
    partition: Partition
    branches: list[Branch]
    plan: GroupPlan
    geometry: ConvGeometry
    activation: int
    post: Operator | None  # a fused RELU-family op after the concatenation
    output: Tensor


class FuseSplitConv(FusionPass):
    name = "fuse-split-conv"
    summary = "SPLIT -> per-group CONV_2D -> CONCATENATION => one DEPTHWISE_CONV_2D or grouped CONV_2D"
    anchors = (Op.CONCATENATION,)

    # ------------------------------------------------------------- matching

    def match(self, ctx: PassContext, sg: Subgraph, cat: Operator) -> SplitConv | Skip | None:
        m = self._match(ctx, sg, cat)
        if isinstance(m, str):
            return Skip(m, cat)
        if m is not None and not m.plan.is_depthwise:
            why = ctx.target.lacks(GROUPED_CONV) or ctx.target.refuses(MERGE_GROUPED)
            if why:
                return Skip(f"would become a grouped CONV_2D: {why}", cat)
        return m

    def _match(self, ctx: PassContext, sg: Subgraph, cat: Operator) -> SplitConv | str | None:
        model = ctx.model
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

        geometry = [ConvGeometry.of(p) for p in producers]
        if any(g is None for g in geometry):
            return "branch conv has no options"
        for g in geometry[1:]:
            diff = geometry[0].difference(g)
            if diff:
                return f"branches differ in {diff}"
        is_dw = producers[0].code == Op.DEPTHWISE_CONV_2D
        if is_dw and len({p.options.depthMultiplier for p in producers}) != 1:
            return "branches differ in depth multiplier"

        part = match_partition(sg, [p.inputs[0] for p in producers])
        if isinstance(part, str):
            return part
        for piece, p in zip(part.pieces, producers):
            # A piece others read too (MobileOne's k branches convolve the one
            # split) is fine: the split stays for them (apply keeps it).
            t = piece.tensor
            if model.is_observed(sg, t) or t.is_variable or p.inputs.count(t) != 1:
                return f"piece: {why_not_removable(model, sg, t, p)}"

        branches = []
        for piece, p in zip(part.pieces, producers):
            b = _branch(sg, p, piece.channels, is_dw)
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

        why = _types_agree(part, producers, branches, out)
        if why:
            return why
        why = ctx.target.quantized_merge_refused(part.source.dtype, plan.is_depthwise)
        if why:
            return why

        # The interpreter's CONCATENATION refuses a fused activation, but the
        # schema allows one: honour it rather than drop it.
        activation = compose_activations(geometry[0].activation,
                                         getattr(cat.options, "fusedActivationFunction", Act.NONE))
        if activation is None:
            return "the concatenation's fused activation does not compose with the branches'"
        post, output = None, out
        users = sg.consumers(out)
        if (len(users) == 1 and traits(users[0].code).kind == ACTIVATION and len(users[0].outputs) == 1
                and not why_not_removable(model, sg, out, users[0])):
            relu = users[0]
            act = compose_activations(activation, _activation_of(relu))
            if act is not None and same_quantization(relu.outputs[0], out):
                post, activation, output = relu, act, relu.outputs[0]
        return SplitConv(cat, part, branches, plan, geometry[0], activation, post, output)

    # -------------------------------------------------------------- rewrite

    def apply(self, ctx: PassContext, sg: Subgraph, m: SplitConv) -> str:
        model = ctx.model
        plan, branches, x = m.plan, m.branches, m.partition.source
        first = branches[0].op
        name = m.output.name
        quantized = x.dtype in _QUANTIZED
        fq = bq = None
        if quantized:
            fq, bq = _merged_quantization(branches, plan, float(x.quant_params()[0][0]))
        convs = {b.op for b in branches}
        private = [op for op in m.partition.ops
                   if all(set(sg.consumers(t)) <= convs for t in op.outputs if t is not None)]
        pattern = private + [b.op for b in branches] + [m.cat] + ([m.post] if m.post else [])
        store = WeightStore(model, sg, ctx, pattern)

        ohwi = stack_ohwi([b.ohwi for b in branches])
        stored = ohwi_to_depthwise(ohwi) if plan.is_depthwise else ohwi
        filt = store.add(stored, [b.filter for b in branches], f"{name}/filter", fq)

        # The bias is created when absent: the conv kernels require one.
        template = next((b.bias for b in branches if b.bias is not None), None)
        zeros = (np.int32 if quantized else template.raw.dtype if template is not None
                 else np.float16 if x.dtype == TensorType.FLOAT16 else np.float32)
        bias_values = np.concatenate([b.bias.raw if b.bias is not None else np.zeros(b.out_channels, zeros)
                                      for b in branches])
        bias = store.add(bias_values, [b.bias for b in branches if b.bias is not None], f"{name}/bias", bq,
                         dtype=TensorType.INT32 if quantized else
                         TensorType.FLOAT16 if x.dtype == TensorType.FLOAT16 else TensorType.FLOAT32)

        conv = grouped_conv(model, x, filt, bias, m.output, depthwise=plan.is_depthwise,
                            depth_multiplier=plan.depth_multiplier, geometry=m.geometry, activation=m.activation,
                            like=first)
        store.commit(conv)
        for op in m.partition.ops:  # a shared split whose last readers these were
            if sg.contains(op) and not any(sg.consumers(t) or model.is_observed(sg, t)
                                           for t in op.outputs if t is not None):
                sg.remove_operator(op)
        kind = ("DEPTHWISE_CONV_2D" + (f" (depth multiplier {plan.depth_multiplier})"
                                       if plan.depth_multiplier > 1 else "")
                if plan.is_depthwise else f"grouped CONV_2D ({plan.groups} groups)")
        return (f"merged {m.partition.ops[0].type_name} -> {len(branches)} x {first.type_name} -> CONCATENATION"
                f"{' -> ' + m.post.type_name if m.post else ''} into {kind} -> {m.output.name!r}")


def _activation_of(op: Operator) -> int:
    """The fused activation a RELU-family op is (ACTIVATION ops only)."""
    return activation_for(traits(op.code).clamp)


def _branch(sg: Subgraph, op: Operator, piece_channels: int, is_dw: bool) -> Branch | str:
    f = weight_of(sg, op.inputs[1])
    if isinstance(f, str) or f.raw.ndim != 4:
        return f"filter of {op.type_name} -> {op.outputs[0].name!r} is not a constant"
    b = None
    if len(op.inputs) > 2 and op.inputs[2] is not None:
        b = weight_of(sg, op.inputs[2])
        if isinstance(b, str):
            return f"bias of {op.type_name} -> {op.outputs[0].name!r} is not a constant"
    if is_dw:
        m = op.options.depthMultiplier
        if f.raw.shape[0] != 1 or f.raw.shape[3] != piece_channels * m:
            return f"depthwise branch filter {list(f.raw.shape)} does not match its piece"
        ohwi, width = depthwise_to_ohwi(f.raw), 1
    else:
        ohwi, width = f.raw, int(f.raw.shape[3])
    cout = int(ohwi.shape[0])
    if b is not None and b.raw.shape != (cout,):
        return f"bias of {op.type_name} -> {op.outputs[0].name!r} has shape {list(b.raw.shape)}"
    if op.outputs[0].shape[3:] != [cout]:
        return f"{op.type_name} -> {op.outputs[0].name!r} output does not match its filter"
    return Branch(op, f, b, ohwi, width, cout)


def _types_agree(part: Partition, producers: list[Operator], branches: list[Branch], out: Tensor) -> str | None:
    x = part.source
    if x.dtype not in (TensorType.FLOAT32, TensorType.FLOAT16, *_QUANTIZED):
        return f"{type_name(x.dtype)} activations are not handled"
    kinds = {b.filter.storage for b in branches}
    if len(kinds) != 1:
        return "branch filters are stored in different types"
    bias_kinds = {b.bias.storage for b in branches if b.bias}
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
        if b.filter.stored.quant_params() is None:
            return "quantized branch filter without parameters"
        if b.bias is not None and (b.bias.stored.dtype != TensorType.INT32
                                   or b.bias.stored.quant_params() is None):
            return "quantized branch bias is not int32 with parameters"
        b.rows = _filter_rows(b)
        if b.rows is None:
            return "branch filter parameters do not match its channels"
    scales = np.concatenate([b.rows[0] for b in branches])
    zps = np.concatenate([b.rows[1] for b in branches])
    if not (np.all(scales == scales[0]) and np.all(zps == zps[0])):
        if x.dtype != TensorType.INT8 or np.any(zps != 0):
            return "per-branch filter parameters cannot be merged exactly (not int8 with zero point 0)"
    return None


def _conv_of_a_slice(sg: Subgraph, op: Operator | None) -> bool:
    if op is None or op.code not in BRANCH_OPS or not op.inputs or op.inputs[0] is None:
        return False
    src = sg.producer(op.inputs[0])
    return src is not None and src.code in SLICING_OPS


# ------------------------------------------------------------ quantization


def _filter_rows(b: Branch) -> tuple[np.ndarray, np.ndarray] | None:
    """The branch filter's (scale, zero point) for each OHWI row (output channel)."""
    q = b.filter.stored.quant_params()
    if q is None:
        return None
    scale, zp, dim = q
    n = b.out_channels
    if len(scale) == 1:
        return np.full(n, scale[0]), np.full(n, zp[0] if len(zp) else 0)
    # Per-channel: along the output channels (dim 0 of a CONV_2D, 3 of a depthwise filter).
    want = 3 if b.op.code == Op.DEPTHWISE_CONV_2D else 0
    if dim != want or len(scale) != n or len(zp) not in (0, n):
        return None
    return scale, (zp if len(zp) else np.zeros(n, np.int64))


def _merged_quantization(branches: list[Branch], plan: GroupPlan, in_scale: float):
    """Quantization of the merged filter and bias: the branches' rows in
    channel order, per-tensor when they are all equal."""
    scales = np.concatenate([b.rows[0] for b in branches])
    zps = np.concatenate([b.rows[1] for b in branches])
    per_channel = not (np.all(scales == scales[0]) and np.all(zps == zps[0]))
    qdim = 3 if plan.is_depthwise else 0
    fq = quantization(scales, zps, qdim) if per_channel else quantization(scales[:1], zps[:1], 0)
    bscales = np.concatenate([_bias_scales(b, in_scale) for b in branches])
    if per_channel or not np.all(bscales == bscales[0]):
        bq = quantization(bscales, 0, 0)
    else:
        bq = quantization(bscales[:1], 0, 0)
    return fq, bq


def _bias_scales(b: Branch, in_scale: float) -> np.ndarray:
    if b.bias is None:
        return in_scale * b.rows[0]
    s = b.bias.stored.quant_params()[0]
    return np.full(b.out_channels, s[0]) if len(s) == 1 else s
