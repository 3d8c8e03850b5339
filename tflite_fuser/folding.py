"""The arithmetic of folding, as pure functions on numpy arrays (no graph).

Every fold here is an identity of linear algebra: a convolution is linear in
its input and in its filter, so a per-channel affine map ``y*s + t`` applied
after it (output side) or ``x*s + t`` applied before it (input side) can be
moved into the filter and the bias. The passes decide *whether* a pattern may
be folded; these functions compute *what* the new weights are.

Numerics: every function works in float64 on whatever it is given, and
:func:`round_once` is the single place a result is rounded to its storage
type. A chain such as ``(x - mean) * inv_std * gamma + beta`` is first
composed into one ``(scale, shift)`` pair (:func:`compose`), so the weights are
rounded once however long the chain is. A fold whose result is not finite or
does not fit the storage type raises :class:`FoldError`, and the pass refuses
it with that message: a model that computed finite numbers must not start
computing ``inf``.

Layouts (TFLite's): ``conv`` filter ``[Cout, kh, kw, Cin/groups]``;
``depthwise`` filter ``[1, kh, kw, Cin*M]`` (output channel ``c`` reads input
channel ``c // M``); ``fc`` filter ``[units, in]``; ``transpose_conv`` filter
``[Cout, kh, kw, Cin]``.
"""

from __future__ import annotations

import functools
import math

import numpy as np

_SUM, _MAX, _ABS = np.add.reduce, np.maximum.reduce, np.abs

CONV, DEPTHWISE, FC, TRANSPOSE_CONV = "conv", "depthwise", "fc", "transpose_conv"
KINDS = (CONV, DEPTHWISE, FC, TRANSPOSE_CONV)

#: filter axis that indexes output channels, per kind
OUT_AXIS = {CONV: 0, DEPTHWISE: 3, FC: 0, TRANSPOSE_CONV: 0}


class FoldError(ValueError):
    """A fold that is mathematically defined but must not be made; the message
    is the reason the pass reports."""


# ------------------------------------------------------------ per-channel constants


def channel_vector(value: np.ndarray, channels: int, rank: int, axis: int = -1) -> np.ndarray:
    """``value`` (a constant operand next to a tensor of rank ``rank`` whose
    axis ``axis``, the last by default, has ``channels`` entries) as a float64
    vector of ``channels``.

    Only shapes that broadcast along that axis alone qualify: for the last
    axis ``[]``, ``[1]``, ``[C]``, ``[1, C]``, ``[1, 1, 1, C]`` ... of rank
    <= ``rank``; for axis 1 of rank 4, ``[1, C, 1, 1]`` or ``[C, 1, 1]``.
    A constant that varies over batch or space cannot move into weights, and
    one of higher rank would change the result's shape.
    """
    v = np.asarray(value)
    if rank and v.shape == (channels,) and axis % rank == rank - 1:
        return v.astype(np.float64)  # the common case, a batch norm's [C] vector: nothing to look at
    if v.ndim > rank:
        raise FoldError(f"constant of shape {list(v.shape)} has higher rank than the tensor (rank {rank})")
    axis = axis % rank if rank else 0
    padded = (1,) * (rank - v.ndim) + v.shape
    others = padded[:axis] + padded[axis + 1:]
    if others.count(1) != len(others):
        raise FoldError(f"constant of shape {list(v.shape)} varies over more than the channel axis")
    if v.size == 1:
        return np.full(channels, float(v.reshape(-1)[0]), np.float64)
    if padded[axis] != channels:
        raise FoldError(f"constant of shape {list(v.shape)} does not match {channels} channels")
    return np.asarray(v.reshape(-1), np.float64)


def compose(scale: np.ndarray, shift: np.ndarray, op: str, c: np.ndarray,
            const_first: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Compose ``y = x*scale + shift`` with one more elementwise op against the
    per-channel constant ``c``: ``y op c`` (or ``c op y`` when ``const_first``).

    ``op`` is "MUL", "ADD", "SUB" or "DIV". ``c - y`` is affine too (scale
    negated); ``c / y`` is not, and neither is a division by zero.
    """
    c = np.asarray(c, np.float64)
    if not all_finite(c):
        raise FoldError("constant is not finite")
    if op == "MUL":
        return scale * c, shift * c
    if op == "ADD":
        return scale, shift + c
    if op == "SUB":
        return (-scale, c - shift) if const_first else (scale, shift - c)
    if op == "DIV":
        if const_first:
            raise FoldError("c / x is not affine in x")
        if (c == 0).any():
            raise FoldError("divisor has zeros")
        return scale / c, shift / c
    raise FoldError(f"{op} is not an affine op")


@functools.lru_cache(maxsize=64)
def identity(channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel affine map that changes nothing, ``(ones, zeros)``:
    where a chain's composition starts. Shared and read-only (every function
    here returns new arrays), so a chain of a width seen before allocates
    nothing to start."""
    scale, shift = np.ones(channels), np.zeros(channels)
    scale.flags.writeable = shift.flags.writeable = False
    return scale, shift


#: arrays up to this many values are summed and scanned as Python floats: a
#: numpy reduction costs microseconds even on four values (a batch norm's
#: vectors, folded tens of thousands of times in a big model), ``tolist`` a
#: fraction of that; larger arrays go to numpy
SMALL = 64


def _values(v: np.ndarray) -> list[float]:
    return (v if v.ndim == 1 else v.reshape(-1)).tolist()


def _finite_sum(v: np.ndarray) -> bool:
    """The sum of ``v`` in float64 is finite, which it is when every value
    is finite unless huge finite values overflow it (either inf or NaN would
    make it inf or NaN)."""
    if v.size <= SMALL:
        return math.isfinite(sum(_values(v)))
    with np.errstate(over="ignore"):  # an overflow is an answer here, not a warning for the user
        return math.isfinite(_SUM(v, None, np.float64))


def all_finite(v: np.ndarray) -> bool:
    """Every value of the float array ``v`` is finite, in one sum where it
    can (:func:`_finite_sum`). Only a sum that is not finite, an overflow of
    huge finite values or a real inf/NaN, looks value by value."""
    return _finite_sum(v) or bool(np.isfinite(v).all())


def compose_before(outer: tuple[np.ndarray, np.ndarray],
                   inner: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``outer(inner(x))`` for two per-channel affine maps ``(scale, shift)``;
    used when walking *up* a chain that feeds a convolution."""
    so, to = outer
    si, ti = inner
    return so * si, so * ti + to


def is_identity(scale: np.ndarray | None, shift: np.ndarray | None) -> tuple[bool, bool]:
    """(scale is all ones, shift is all zeros): lets a pass keep a tensor it
    does not need to rewrite (an ADD-only chain leaves the filter alone)."""
    # The first element settles it almost always (a batch norm scales by 1
    # nowhere): look at it before scanning the whole vector.
    return (scale is None or (scale[0] == 1.0 and bool((scale == 1.0).all())),
            shift is None or (shift[0] == 0.0 and bool((shift == 0.0).all())))


# ------------------------------------------------------------ output-side folding


def out_channels(kind: str, filter_shape) -> int:
    return int(filter_shape[OUT_AXIS[kind]])


def _along(kind_axis: int, ndim: int, v: np.ndarray) -> np.ndarray:
    shape = [1] * ndim
    shape[kind_axis] = -1
    return v.reshape(shape)


def scale_output_channels(kind: str, w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The filter of ``op(x) * scale`` (per output channel), in float64."""
    w64 = np.asarray(w, np.float64)
    return w64 * _along(OUT_AXIS[kind], w64.ndim, np.asarray(scale, np.float64))


def fold_output_affine(kind: str, w: np.ndarray, b: np.ndarray | None, scale: np.ndarray,
                       shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New (filter, bias) of ``op(x) * scale + shift``, in float64.

    ``op(x) = conv_w(x) + b``, so ``op(x)*s + t = conv_{w*s}(x) + (b*s + t)``.
    A missing bias is zero.
    """
    cout = out_channels(kind, np.shape(w))
    b64 = np.zeros(cout) if b is None else np.asarray(b, np.float64).reshape(-1)
    return scale_output_channels(kind, w, scale), b64 * scale + shift


# ------------------------------------------------------------- input-side folding


def input_channel_map(kind: str, filter_shape, in_channels: int) -> np.ndarray:
    """For every filter element along its input-channel dimension, which input
    channel of ``x`` it multiplies, as an index array broadcastable against the
    filter. Raises FoldError when the filter does not fit ``in_channels``."""
    fs = [int(d) for d in filter_shape]
    if kind == CONV:
        cout, cg = fs[0], fs[3]
        if cg <= 0 or in_channels % cg:
            raise FoldError(f"filter with {cg} input channels per group does not fit {in_channels} input channels")
        groups = in_channels // cg
        if cout % groups:
            raise FoldError(f"{cout} output channels do not split into {groups} groups")
        group = np.arange(cout) // (cout // groups)
        return (group[:, None] * cg + np.arange(cg)[None, :])[:, None, None, :]
    if kind == DEPTHWISE:
        c = fs[3]
        if c % in_channels:
            raise FoldError(f"depthwise filter with {c} channels does not fit {in_channels} input channels")
        m = c // in_channels
        return (np.arange(c) // m).reshape(1, 1, 1, c)
    if kind == FC:
        if fs[1] != in_channels:
            raise FoldError(f"fully connected input has {fs[1]} features but the tensor's last axis "
                            f"has {in_channels}")
        return np.arange(in_channels).reshape(1, in_channels)
    if kind == TRANSPOSE_CONV:
        if fs[3] != in_channels:
            raise FoldError(f"filter with {fs[3]} input channels does not fit {in_channels}")
        return np.arange(in_channels).reshape(1, 1, 1, in_channels)
    raise FoldError(f"unknown kind {kind!r}")


def scale_input_channels(kind: str, w: np.ndarray, scale: np.ndarray, in_channels: int) -> np.ndarray:
    """The filter of ``op(x * scale)`` (``scale`` per input channel), in float64.

    Exact whatever the padding: zero padding of ``x*s`` is zero padding of
    ``x`` times ``s``.
    """
    idx = input_channel_map(kind, np.shape(w), in_channels)
    return np.asarray(w, np.float64) * np.asarray(scale, np.float64)[idx]


def input_shift_bias(kind: str, w: np.ndarray, b: np.ndarray | None, shift: np.ndarray,
                     in_channels: int) -> np.ndarray:
    """The bias of ``op(x + shift)`` (``shift`` per input channel), in float64.

    ``conv_w(x + t) = conv_w(x) + sum over the window of w * t``. This holds
    only where the whole window lies inside ``x`` (VALID padding, or SAME that
    pads nothing): a padded border adds zeros, not ``t``. The caller checks
    that. A transposed convolution sums a position-dependent number of taps,
    so it never qualifies.
    """
    if kind == TRANSPOSE_CONV:
        raise FoldError("a transposed convolution adds a position-dependent number of taps")
    cout = out_channels(kind, np.shape(w))
    b64 = np.zeros(cout) if b is None else np.asarray(b, np.float64).reshape(-1)
    idx = input_channel_map(kind, np.shape(w), in_channels)
    t = np.asarray(shift, np.float64)[idx]
    contrib = np.asarray(w, np.float64) * t
    axes = tuple(a for a in range(contrib.ndim) if a != OUT_AXIS[kind])
    return b64 + contrib.sum(axis=axes)


# ------------------------------------------------------------------- padding


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """(before, after) that TFLite's SAME padding adds along one axis of
    ``size`` (``ComputePaddingHeightWidth``: the odd unit goes after)."""
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def same_padding_unknown_size(kernel: int, stride: int, dilation: int) -> tuple[int, int] | None:
    """SAME padding when the size is not known (a dynamic dimension): it does
    not depend on the size when ``stride == 1``; otherwise None."""
    if stride != 1:
        return None
    total = (kernel - 1) * dilation
    return total // 2, total - total // 2


def pad_equals_same(size: int | None, pads: tuple[int, int], kernel: int, stride: int,
                    dilation: int) -> bool:
    """Whether explicit zero ``pads`` on an axis of ``size`` (None: dynamic)
    followed by a VALID convolution is exactly a SAME convolution."""
    want = (same_padding(size, kernel, stride, dilation) if size is not None
            else same_padding_unknown_size(kernel, stride, dilation))
    return want is not None and tuple(int(p) for p in pads) == want


# ------------------------------------------------------------------- rounding


_FLOAT_MAX = {np.dtype(t): float(np.finfo(t).max) for t in (np.float16, np.float32, np.float64)}


def round_once(values: np.ndarray, dtype, what: str, exact: bool = False) -> np.ndarray:
    """``values`` (float64) rounded once to ``dtype`` for storage.

    Raises FoldError when a value is not finite or does not fit ``dtype``
    (float16 tops out at 65504): the fold would make the model compute
    ``inf`` where it computed a number. With ``exact``, also when rounding
    would change a value (used for float16 weights, whose re-rounding moves
    outputs by up to 2^-11 relative, far beyond a float32 fold's error).
    """
    v = np.asarray(values, np.float64)
    dt = np.dtype(dtype)
    if not v.size:
        return v.astype(dt)
    if v.size <= SMALL and _finite_sum(v):  # all finite: Python's max is safe (it would not propagate a NaN)
        big = max(map(abs, _values(v)))
    else:
        big = float(_MAX(_ABS(v), None))
    if not math.isfinite(big):  # max of |v| is finite iff every value is (NaN propagates)
        raise FoldError(f"folded {what} would not be finite")
    limit = _FLOAT_MAX[dt]
    if big > limit:
        raise FoldError(f"folded {what} would overflow {dt.name} (|value| up to {big:.3g} > {limit:.3g})")
    out = v.astype(dt)
    if big > limit / 2 and not np.isfinite(out).all():  # rounding up to the next binade past max
        raise FoldError(f"folded {what} would overflow {dt.name}")
    if exact and (out.astype(np.float64) != v).any():
        raise FoldError(f"folded {what} is not representable in {dt.name} and --fp16-weights exact forbids "
                        f"re-rounding it (up to 2^-{np.finfo(dt).nmant + 1} relative); 'keep' re-rounds, "
                        f"'float32' stores float32")
    return out
