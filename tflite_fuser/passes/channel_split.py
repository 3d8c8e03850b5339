"""Matching helpers for the split-conv pass: which channels of which tensor
a piece is.

A converter lowers a depthwise or grouped convolution by cutting the input's
channel axis into pieces (one ``SPLIT``/``SPLIT_V``, or one ``SLICE`` /
``STRIDED_SLICE`` per piece), convolving each piece, and concatenating. To
undo that we need, for each piece, ``(source tensor, first channel, end
channel)``; :func:`match_partition` then checks that the pieces, in the order
the concatenation reads them, cut one tensor's channel axis into consecutive
ranges that cover it. Any other shape of slicing is reported, not guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import Operator, Subgraph, Tensor
from ..ops import SLICING, codes
from ..schema import BuiltinOperator as Op

SLICING_OPS = codes(SLICING)


@dataclass
class Piece:
    tensor: Tensor
    source: Tensor
    start: int
    stop: int
    op: Operator  # the op that cut it out (shared by all pieces of one SPLIT)

    @property
    def channels(self) -> int:
        return self.stop - self.start


@dataclass
class Partition:
    source: Tensor
    pieces: list[Piece]
    #: the slicing ops that disappear with the pattern (one SPLIT, or one SLICE per piece)
    ops: list[Operator]


def _int_const(t: Tensor | None) -> np.ndarray | None:
    v = t.value() if t is not None else None
    if v is None or v.dtype.kind not in "iu":
        return None
    return v.astype(np.int64).reshape(-1)


def _axis(t: Tensor | None, rank: int) -> int | None:
    v = _int_const(t)
    if v is None or v.size != 1:
        return None
    a = int(v[0])
    return a + rank if a < 0 else a


def channel_piece(sg: Subgraph, t: Tensor, cuts: dict) -> Piece | str:
    """The channel range of a rank-4 source that ``t`` is, or why it is not
    one. ``cuts`` remembers each SPLIT's channel ranges for the next of its
    outputs (a depthwise conv split into 960 channels asks 960 times)."""
    op = sg.producer(t)
    if op is None:
        return f"{t.name!r} is not cut from another tensor"
    code = op.code
    if code in (Op.SPLIT, Op.SPLIT_V):
        cut = cuts.get(op)
        if cut is None:
            cut = cuts[op] = _split_cut(op)
        if isinstance(cut, str):
            return cut
        x, where, bounds = cut
        start, stop = bounds[where[t]]
        return Piece(t, x, start, stop, op)
    if code in (Op.SLICE, Op.STRIDED_SLICE):
        return _slice_piece(op, t)
    return f"{t.name!r} is produced by {op.type_name}, not a channel split"


def _split_cut(op: Operator) -> tuple[Tensor, dict[Tensor, int], list[tuple[int, int]]] | str:
    """A SPLIT's or SPLIT_V's input, the index of each of its outputs, and
    the channel range (start, stop) of each; or why it is no channel split."""
    if op.code == Op.SPLIT:
        if len(op.inputs) != 2:
            return f"{op.type_name} with {len(op.inputs)} inputs"
        (axis_t, x), sizes = op.inputs, None
    else:
        if len(op.inputs) != 3:
            return f"{op.type_name} with {len(op.inputs)} inputs"
        x, sizes_t, axis_t = op.inputs
        sizes = _int_const(sizes_t)
        if sizes is None:
            return "SPLIT_V sizes are not constant"
    if x is None or len(x.shape) != 4:
        return f"{op.type_name} input is not rank 4"
    axis = _axis(axis_t, 4)
    if axis is None:
        return f"{op.type_name} axis is not a constant"
    if axis != 3:
        return f"{op.type_name} is not on the channel axis (axis {axis})"
    c = x.shape[3]
    n = len(op.outputs)
    if sizes is None:
        if n == 0 or c % n:
            return f"SPLIT of {c} channels into {n}"
        sizes = np.full(n, c // n, np.int64)
    else:
        sizes = sizes.copy()
        if len(sizes) != n:
            return "SPLIT_V sizes do not match its outputs"
        unknown = np.flatnonzero(sizes == -1)
        if len(unknown) > 1 or np.any(sizes < -1):
            return "SPLIT_V sizes are not resolvable"
        if len(unknown) == 1:
            sizes[unknown[0]] = c - (sizes.sum() + 1)
        if sizes.sum() != c or np.any(sizes < 0):
            return "SPLIT_V sizes do not add up to the channels"
    where: dict[Tensor, int] = {}
    for k, o in enumerate(op.outputs):
        where.setdefault(o, k)
    bounds, start = [], 0
    for size in sizes.tolist():
        bounds.append((start, start + size))
        start += size
    return x, where, bounds


def _slice_piece(op: Operator, t: Tensor) -> Piece | str:
    if len(op.inputs) < 3 or op.inputs[0] is None:
        return f"{op.type_name} with {len(op.inputs)} inputs"
    x = op.inputs[0]
    if len(x.shape) != 4:
        return f"{op.type_name} input is not rank 4"
    dims = x.shape
    begin = _int_const(op.inputs[1])
    if begin is None or len(begin) != 4:
        return f"{op.type_name} begin is not a constant of 4 values"
    if op.code == Op.SLICE:
        size = _int_const(op.inputs[2])
        if size is None or len(size) != 4:
            return "SLICE size is not a constant of 4 values"
        b = [int(v) for v in begin]
        e = [dims[d] if size[d] == -1 else b[d] + int(size[d]) for d in range(4)]
    else:
        if len(op.inputs) != 4:
            return f"STRIDED_SLICE with {len(op.inputs)} inputs"
        end, strides = _int_const(op.inputs[2]), _int_const(op.inputs[3])
        if end is None or strides is None or len(end) != 4 or len(strides) != 4:
            return "STRIDED_SLICE end/strides are not constants of 4 values"
        o = op.options
        if o is not None and (o.ellipsisMask or o.newAxisMask or o.shrinkAxisMask):
            return "STRIDED_SLICE uses ellipsis/new-axis/shrink masks"
        if np.any(strides != 1):
            return "STRIDED_SLICE has strides other than 1"
        bm = o.beginMask if o is not None else 0
        em = o.endMask if o is not None else 0
        offset = bool(getattr(o, "offset", False)) if o is not None else False
        b, e = [], []
        for d in range(4):
            bd = 0 if bm >> d & 1 else _wrap(int(begin[d]), dims[d])
            if em >> d & 1:
                ed = dims[d]
            elif offset:
                ed = bd + int(end[d])
            else:
                ed = _wrap(int(end[d]), dims[d])
            b.append(bd)
            e.append(ed)
    b = [min(max(v, 0), dims[d]) for d, v in enumerate(b)]
    e = [min(max(v, 0), dims[d]) for d, v in enumerate(e)]
    for d in range(3):
        if b[d] != 0 or e[d] != dims[d]:
            return f"{op.type_name} is not on the channel axis only (axis {d} is cut)"
    if e[3] <= b[3]:
        return f"{op.type_name} selects no channel"
    return Piece(t, x, b[3], e[3], op)


def _wrap(v: int, dim: int) -> int:
    return v + dim if v < 0 else v


def match_partition(sg: Subgraph, tensors: list[Tensor]) -> Partition | str:
    """Do ``tensors`` cut one rank-4 tensor's channels into consecutive pieces,
    in this order, covering it? Returns the partition or a reason."""
    pieces = []
    cuts: dict = {}
    for t in tensors:
        p = channel_piece(sg, t, cuts)
        if isinstance(p, str):
            return p
        pieces.append(p)
    source = pieces[0].source
    if any(p.source is not source for p in pieces):
        return "pieces are cut from different tensors"
    splits = {p.op for p in pieces if p.op.code in (Op.SPLIT, Op.SPLIT_V)}
    slices = [p.op for p in pieces if p.op.code not in (Op.SPLIT, Op.SPLIT_V)]
    if splits and slices or len(splits) > 1:
        return "pieces come from more than one split"
    if slices and len(set(slices)) != len(slices):
        return "two pieces come from one slice"
    c = source.shape[3]
    pos = 0
    for p in pieces:
        if p.start != pos:
            covered = sorted((q.start, q.stop) for q in pieces)
            if covered[0][0] == 0 and all(a[1] == b[0] for a, b in zip(covered, covered[1:])) \
                    and covered[-1][1] == c:
                return "the concatenation order does not match the split order"
            return "pieces do not cut the channels into consecutive ranges"
        pos = p.stop
    if pos != c:
        return f"pieces cover channels [0, {pos}) of {c}"
    if splits:
        (split,) = splits
        if len(split.outputs) != len(pieces):
            return "not every output of the split is a piece"
        ops = [split]
    else:
        ops = slices
    return Partition(source, pieces, ops)
