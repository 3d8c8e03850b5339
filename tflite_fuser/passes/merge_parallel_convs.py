"""merge-parallel-convs: convolutions of one input that are summed become one
convolution (structural re-parameterization, after conversion).

Pattern (RepVGG, MobileOne, ACNet, YOLO's RepConv exported in training form;
each branch's batch-norm already folded into its conv by the converter or by
fold-affine)::

    a = CONV(X, Wa, ba)           3x3
    b = CONV(X, Wb, bb)           1x1 (or 1x3, 3x1 ...)         y = CONV(X, W, b, act)
    c = X * s + t                 the identity branch's BN  ->  W = Wa + embed(Wb) + delta(s)
    y = ADD(ADD(a, b), c), act                                  b = ba + bb + t

Any tree of ADD/SUB (a subtracted branch enters with its sign) and per-channel
constant MUL/DIV/ADD/SUB over branches that are each a CONV_2D (or each a
DEPTHWISE_CONV_2D) of the same tensor X, possibly through a zero PAD, an
AVERAGE_POOL_2D of X (DiverseBranchBlock's average branch: a uniform
``1/(kh*kw)`` kernel on each channel), or X itself (through per-channel
constants): the whole tree is linear in X, so it
is the one conv whose filter is the sum of the branch filters (each scaled
per output channel) and whose bias is the sum of the biases and constants.
The root's fused activation moves onto the conv (:mod:`reparam` has the
arithmetic).

Preconditions (each failure a skip with its reason):

- every intermediate tensor is read by the tree alone (``HasOneUse``) and is
  no model output; every op of the tree but the root carries no activation;
- float32 tensors throughout, float filters (FLOAT32, or FLOAT16 behind
  DEQUANTIZE; int8 sums would requantize once instead of per branch: not
  exact, not done); constants broadcast per channel;
- all branch convs are the same op with the same stride, no dilation, and the
  same groups (a depthwise conv's multiplier 1);
- one branch's kernel covers every other's (then the merged conv costs
  exactly that branch's multiply-adds, never more than the sum: a 1x3 and a
  3x1 alone would become a dearer 3x3 and are left), and every window sits
  at an offset inside it (``reparam.embed_offset``: SAME with odd kernels
  always does, centred at stride 1, in the corner at stride 2 on an even size;
  PyTorch's symmetric padding written as PAD + VALID does too; a window padded
  more than the largest one is not, and is left);
- an identity branch needs stride 1 and as many output channels as input;
- an average-pool branch needs as many output channels as input, the convs'
  stride, a window the largest kernel covers (placed like a conv's), and edges
  that are a convolution's: VALID, or a zero PAD then VALID (PyTorch's
  ``count_include_pad``), or SAME where SAME pads nothing. SAME that pads
  divides each edge window by the count of real inputs in it, which no
  convolution does, and is left.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import folding, reparam
from ..folding import FoldError
from ..graph import Operator, Subgraph, Tensor
from ..ops import ACTIVATION_RANGE, CONV, DEPTHWISE, PAD, codes, fused_activation, traits
from ..schema import ActivationFunctionType as Act
from ..schema import BuiltinOperator as Op
from ..schema import Padding, TensorType
from .base import FusionPass, Match, PassContext, Skip
from .predicates import arithmetic_of, float_weights, is_float32, spatial_zero_pad, why_not_removable
from .rebuild import clone_op, drop_dead_dequantize, opcode_for
from .weights import Weight, WeightStore, float_weight_of

_TREE = (Op.ADD, Op.SUB)
_CONVS = codes((CONV, DEPTHWISE))
_PADS = codes(PAD)


@dataclass
class Branch:
    """One conv of the sum: ``scale`` per output channel (signs, MULs after it)."""

    conv: Operator
    scale: np.ndarray
    pad_op: Operator | None = None
    source: Tensor | None = None  # X: the conv's input, before the PAD
    pad: tuple[int, int] = (0, 0)  # rows, columns padded before the window, in all
    kernel: tuple[int, int] = (1, 1)
    #: an average pool whose edge windows are no convolution's: why
    inexact: str | None = None


@dataclass
class Linear:
    """A tensor as a linear map of X: its conv branches, ``x * identity[t]``
    for each leaf tensor t (checked to be X), and a per-channel constant."""

    branches: list[Branch] = field(default_factory=list)
    identity: dict = field(default_factory=dict)  # Tensor -> per-channel scale
    bias: np.ndarray | None = None
    ops: list[Operator] = field(default_factory=list)
    #: AVERAGE_POOL_2D branches (``Branch.conv`` is the pool)
    pools: list[Branch] = field(default_factory=list)

    def scaled(self, s: np.ndarray) -> "Linear":
        for b in self.branches + self.pools:
            b.scale = b.scale * s
        self.identity = {t: v * s for t, v in self.identity.items()}
        self.bias = self.bias * s
        return self

    def plus(self, other: "Linear", sign: float) -> "Linear":
        self.branches += other.scaled(np.full_like(other.bias, sign)).branches
        self.pools += other.pools
        for t, v in other.identity.items():
            self.identity[t] = self.identity.get(t, 0.0) + v
        self.bias = self.bias + other.bias
        self.ops += other.ops
        return self


class _NotLinear(Exception):
    """Why a tensor of the tree is not a linear map of one input."""


@dataclass
class ParallelSum(Match):
    root: Operator
    anchor: Branch
    filter: np.ndarray
    bias: np.ndarray
    ops: list[Operator]
    weights: list[Weight]
    biases: list[Weight]
    activation: int
    store: WeightStore
    n_branches: int
    identity: bool
    n_pools: int = 0


class MergeParallelConvs(FusionPass):
    name = "merge-parallel-convs"
    summary = "summed convs of one input (+ identity) => one conv (RepVGG, MobileOne, ACNet training forms)"
    anchors = _TREE

    def match(self, ctx: PassContext, sg: Subgraph, op: Operator) -> ParallelSum | Skip | None:
        y = op.outputs[0] if op.outputs else None
        if y is None or len(op.inputs) != 2 or len(y.shape) != 4:
            return None
        if not is_float32(y):
            if _convs_of_one_input(sg, op):
                return Skip(f"parallel convs summed, but in {arithmetic_of(y)}: one conv rounds the sum once "
                            f"where each branch rounded its own output (not exact)", op)
            return None
        act = fused_activation(op)
        users = sg.consumers(y)
        if (act in (None, Act.NONE) and len(users) == 1 and not ctx.model.is_observed(sg, y)
                and traits(users[0].code).affine is not None):
            return None  # not the root: the op that reads it is (or ends) the tree
        channels = y.shape[-1]
        try:
            form = _linear(ctx, sg, y, None, op, channels)
        except _NotLinear:
            return None
        if not form.branches:
            return None
        sources = {id(b.source) for b in form.branches + form.pools}
        x = form.branches[0].source
        if len(sources) != 1 or any(t is not x for t in form.identity):
            return None  # branches of different inputs (a residual ADD): not a parallel sum
        if len(form.branches) == 1 and not form.identity and not form.pools:
            return None  # one conv and constants: fold-affine's
        if act not in ACTIVATION_RANGE:
            return Skip("the sum carries an activation no conv fuses", op)
        why = _why_not(form, x, y)
        if why:
            return Skip(f"{len(form.branches)} parallel convs summed, but {why}", op)
        anchor = max(form.branches, key=lambda b: b.kernel[0] * b.kernel[1])
        kernel = anchor.kernel
        if any(b.kernel[0] > kernel[0] or b.kernel[1] > kernel[1] for b in form.branches + form.pools):
            return Skip(f"{len(form.branches)} parallel convs summed, but no branch's kernel covers all the "
                        f"others' ({', '.join(f'{b.kernel[0]}x{b.kernel[1]}' for b in form.branches)}"
                        + "".join(f", {b.kernel[0]}x{b.kernel[1]} average pool" for b in form.pools)
                        + "): the merged conv would cost more than the branches", op)
        why = _why_not_pools(form, anchor, x, channels)
        if why:
            return Skip(f"{len(form.branches)} parallel convs summed with an average pool, but {why}", op)
        depthwise = anchor.conv.code == Op.DEPTHWISE_CONV_2D
        weights: list[tuple[Weight, Weight | None]] = []
        for b in form.branches:
            w = float_weights(sg, b.conv)
            if isinstance(w, str):
                return Skip(f"parallel convs summed, but a branch's {w}", op)
            weights.append(w)
        total = np.zeros((1 if depthwise else channels, *kernel, weights[0][0].stored.shape[3]), np.float64)
        bias = np.array(form.bias, np.float64)
        for b, (w, bw) in zip(form.branches, weights):
            offset = _offset_in(anchor, b.pad, b.kernel)
            if None in offset:
                return Skip(f"parallel convs summed, but the {b.kernel[0]}x{b.kernel[1]} branch's window (padded "
                            f"{b.pad} before) does not sit inside the {kernel[0]}x{kernel[1]}'s (padded "
                            f"{anchor.pad}): their outputs are not aligned", op)
            total += reparam.embed(reparam.scale_out(w.float64(), b.scale, depthwise), kernel, offset)
            if bw is not None:
                bias += b.scale * bw.float64().reshape(-1)
        if form.identity:
            s = anchor.conv.options
            if (s.strideH, s.strideW) != (1, 1) or x.shape[-1] != channels:
                return Skip("parallel convs summed with their input, but the conv strides or changes the "
                            "channel count, so the input is no branch of it", op)
            offset = _offset_in(anchor, (0, 0), (1, 1))
            if None in offset:
                return Skip(f"the identity branch does not sit inside the {kernel[0]}x{kernel[1]} window", op)
            total += reparam.identity_filter(form.identity[x], kernel, offset, int(total.shape[3]), depthwise)
        for b in form.pools:
            offset = _offset_in(anchor, b.pad, b.kernel)
            if None in offset:
                return Skip(f"parallel convs summed, but the {b.kernel[0]}x{b.kernel[1]} average pool's window "
                            f"(padded {b.pad} before) does not sit inside the {kernel[0]}x{kernel[1]}'s (padded "
                            f"{anchor.pad}): their outputs are not aligned", op)
            total += reparam.average_filter(b.scale, b.kernel, kernel, offset, int(total.shape[3]), depthwise)
        ops = [o for o in dict.fromkeys(form.ops) if o is not anchor.pad_op]  # the merged conv reads through it
        store = WeightStore(ctx.model, sg, ctx, ops)
        try:  # rounded before the graph is touched: a refusal leaves no trace
            w_arr = store.round(total, weights[0][0], "filter")
            biases = [bw for _, bw in weights if bw is not None]
            b_arr = store.round(bias, biases[0] if biases else None, "bias")
        except FoldError as e:
            return Skip(str(e), op)
        return ParallelSum(op, anchor, w_arr, b_arr, ops, [w for w, _ in weights], biases,
                           Act.NONE if act is None else act, store, len(form.branches), bool(form.identity),
                           len(form.pools))

    def apply(self, ctx: PassContext, sg: Subgraph, m: ParallelSum) -> str:
        y = m.root.outputs[0]
        conv = m.anchor.conv
        filt = m.store.add(m.filter, m.weights, f"{y.name}/filter")
        bias = m.store.add(m.bias, m.biases or None, f"{y.name}/bias")
        new = clone_op(conv, inputs=[conv.inputs[0], filt, bias], outputs=[y],
                       opcode=opcode_for(ctx.model, conv, bias=True, activation=m.activation != Act.NONE),
                       fusedActivationFunction=m.activation)
        m.store.commit(new)
        drop_dead_dequantize(ctx.model, sg, [t for op in m.ops for t in op.inputs])
        kernel = f"{m.anchor.kernel[0]}x{m.anchor.kernel[1]}"
        extra = [what for what, n in (("the identity", m.identity), (f"{m.n_pools} average pool(s)", m.n_pools)) if n]
        return (f"merged {m.n_branches} parallel {conv.type_name}s" + "".join(f" and {e}" for e in extra)
                + f" summed into {y.name!r} into one {kernel} {conv.type_name}")


def _convs_of_one_input(sg: Subgraph, op: Operator) -> bool:
    producers = [sg.producer(t) for t in op.inputs]
    return all(p is not None and p.code in _CONVS for p in producers) and \
        len({id(p.inputs[0]) for p in producers}) == 1


def _linear(ctx: PassContext, sg: Subgraph, t: Tensor, reader: Operator | None, root: Operator,
            channels: int) -> Linear:
    """``t`` as a linear map of one input; a tensor the tree cannot see
    through is a leaf (the identity, if it turns out to be X)."""
    zero = np.zeros(channels)
    inner = reader is None or why_not_removable(ctx.model, sg, t, reader) is None
    p = sg.producer(t) if inner else None
    if p is not None and traits(p.code).affine is not None and len(p.inputs) == 2:
        act = fused_activation(p)
        if p is not root and act not in (None, Act.NONE):
            raise _NotLinear(f"{p.type_name} -> {t.name!r} carries an activation")
        if not is_float32(p.outputs[0]) or list(p.outputs[0].shape) != list(t.shape):
            raise _NotLinear("not float32, or broadcast")
        a, b = p.inputs
        wa, wb = float_weight_of(sg, a), float_weight_of(sg, b)
        const_a, const_b = isinstance(wa, Weight), isinstance(wb, Weight)
        kind = traits(p.code).affine
        if not const_a and not const_b:
            if kind not in ("ADD", "SUB"):
                raise _NotLinear("a product of two tensors")
            form = _linear(ctx, sg, a, p, root, channels)
            form.plus(_linear(ctx, sg, b, p, root, channels), -1.0 if kind == "SUB" else 1.0)
        elif const_a and const_b:
            raise _NotLinear("two constants")
        else:
            other, w = (b, wa) if const_a else (a, wb)
            try:
                c = folding.channel_vector(w.float64(), channels, len(t.shape))
            except FoldError as e:
                raise _NotLinear(str(e)) from None
            form = _linear(ctx, sg, other, p, root, channels)
            if kind == "MUL":
                form.scaled(c)
            elif kind == "DIV":
                if const_a or (c == 0).any():
                    raise _NotLinear("a division by the tensor, or by zero")
                form.scaled(1.0 / c)
            elif kind == "ADD":
                form.bias = form.bias + c
            else:  # SUB: x - c, or c - x
                if const_a:
                    form.scaled(np.full(channels, -1.0))
                    form.bias = form.bias + c
                else:
                    form.bias = form.bias - c
        form.ops.append(p)
        return form
    if p is not None and p.code in _CONVS and fused_activation(p) in (None, Act.NONE):
        return Linear([_branch(ctx, sg, p, channels)], {}, zero, [p] + _private_pad(sg, p))
    if p is not None and p.code == Op.AVERAGE_POOL_2D and fused_activation(p) in (None, Act.NONE) \
            and is_float32(p.outputs[0]) and p.inputs and is_float32(p.inputs[0]):
        return Linear([], {}, zero, [p] + _private_pad(sg, p), pools=[_branch(ctx, sg, p, channels)])
    return Linear([], {t: np.ones(channels)}, zero, [])


def _branch(ctx: PassContext, sg: Subgraph, conv: Operator, channels: int) -> Branch:
    """One conv (or average pool) branch: the tensor it reads (before a zero
    PAD of H and W only), its kernel and how many rows and columns its window
    is padded before."""
    src = conv.inputs[0]
    o = conv.options
    pool = conv.code == Op.AVERAGE_POOL_2D
    w = None if pool else conv.inputs[1]
    if src is None or (not pool and (w is None or len(w.shape) != 4)) or o is None or len(src.shape) != 4:
        raise _NotLinear("not a 4-D conv")
    pad_op = sg.producer(src)
    before = [0, 0]
    if pad_op is not None and pad_op.code in _PADS and _zero_spatial_pad(pad_op) is not None:
        amounts = _zero_spatial_pad(pad_op)
        before = [int(amounts[1][0]), int(amounts[2][0])]
        x = pad_op.inputs[0]
    else:
        pad_op, x = None, src
    kernel = (int(o.filterHeight), int(o.filterWidth)) if pool else (int(w.shape[1]), int(w.shape[2]))
    strides = (max(o.strideH, 1), max(o.strideW, 1))
    edge = None
    if o.padding == Padding.SAME:
        for i, axis in enumerate((1, 2)):
            size = src.shape[axis]
            if size <= 0 or (src.shape_signature and src.shape_signature[axis] < 0 and strides[i] > 1):
                raise _NotLinear("SAME padding of a dynamic size")
            same = folding.same_padding(int(size), kernel[i], strides[i], 1)
            before[i] += same[0]
            if pool and any(same):
                edge = (f"its SAME padding pads {list(same)} on axis {axis}, and SAME average pooling divides "
                        f"each edge window by the count of real inputs in it: no convolution")
    return Branch(conv, np.ones(channels), pad_op, x, (before[0], before[1]), kernel, edge)


def _offset_in(anchor: Branch, pad: tuple[int, int], kernel: tuple[int, int]) -> tuple[int | None, int | None]:
    """Where a window of ``kernel`` padded ``pad`` before sits in the anchor's, per axis (None: outside)."""
    return tuple(reparam.embed_offset(anchor.pad[i], anchor.kernel[i], pad[i], kernel[i]) for i in range(2))


def _why_not_pools(form: Linear, anchor: Branch, x: Tensor, channels: int) -> str | None:
    """Why an average-pool branch cannot join the convs (None: they can)."""
    s = anchor.conv.options
    for b in form.pools:
        o = b.conv.options
        if b.inexact:
            return b.inexact
        if (o.strideH, o.strideW) != (s.strideH, s.strideW):
            return f"the pool strides ({o.strideH}, {o.strideW}) where the convs stride ({s.strideH}, {s.strideW})"
        if x.shape[-1] != channels:
            return "the convs change the channel count, and a pool keeps it"
    return None


def _zero_spatial_pad(pad: Operator) -> np.ndarray | None:
    """A float32 PAD's amounts when it pads H and W only, with zeros."""
    amounts = spatial_zero_pad(pad)
    if isinstance(amounts, str) or pad.outputs[0].is_quantized or pad.outputs[0].dtype != TensorType.FLOAT32:
        return None
    return amounts


def _private_pad(sg: Subgraph, conv: Operator) -> list[Operator]:
    """The PAD before ``conv`` when only ``conv`` reads it (it goes with it)."""
    p = sg.producer(conv.inputs[0])
    if p is not None and p.code in _PADS and sg.consumer_count(p.outputs[0]) == 1 \
            and _zero_spatial_pad(p) is not None:
        return [p]
    return []


def _why_not(form: Linear, x: Tensor, y: Tensor) -> str | None:
    first = form.branches[0].conv
    for b in form.branches:
        c, o = b.conv, b.conv.options
        if c.code != first.code:
            return f"they mix {first.type_name} and {c.type_name}"
        if (o.strideH, o.strideW) != (first.options.strideH, first.options.strideW):
            return "their strides differ"
        if max(o.dilationHFactor, o.dilationWFactor) > 1:
            return "a branch is dilated"
        if c.code == Op.DEPTHWISE_CONV_2D and o.depthMultiplier not in (0, 1):
            return "a depthwise branch has a depth multiplier"
        if c.inputs[1].shape[3] != first.inputs[1].shape[3]:
            return "their groups differ"
        if not (is_float32(c.inputs[0]) and is_float32(c.outputs[0])):
            return (f"a branch computes in {arithmetic_of(c.outputs[0])}, not float32 (a merged conv rounds "
                    f"the sum once where each branch rounded its own output: not exact)")
        if list(c.outputs[0].shape) != list(y.shape):
            return "a branch's output is broadcast"
    if not is_float32(x):
        return "their input is not float32"
    return None
