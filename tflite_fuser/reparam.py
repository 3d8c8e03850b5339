"""The arithmetic of structural re-parameterization, as pure functions (no graph).

Convolution is linear in its filter: branches that convolve the same input
with the same stride and are summed are one convolution whose filter is the
sum of theirs, *provided each branch's window sits at the same place in the
input*. A branch with a ``k``-row kernel that pads ``p`` rows before reads,
for output row ``i``, input rows ``i*s - p ... i*s - p + k - 1``. Inside a
``K``-row window padded ``P`` before, those are rows ``P - p ... P - p + k -
1``: the smaller kernel embeds at offset ``P - p``, which must lie in ``[0, K -
k]``. (With SAME at stride 1 and odd kernels that is the centre; SAME at
k]``. (With SAME at stride 1 and odd kernels that is the centre; SAME at
stride 2 on an even size pads a 3x3 ``(0, 1)`` and a 1x1 ``(0, 0)``: offset 0,
the top-left corner, still exact. A branch padded more than the largest one
falls outside, and the pass says so.) Input positions outside the tensor are
zero in every branch, so the sum is exact.

An identity branch (the input itself, or a per-channel ``x*a + b`` of it: an
identity batch-norm) is a 1x1 kernel that is a delta on its own channel.

Filters are TFLite's: ``CONV_2D`` ``[Cout, kh, kw, Cin/groups]``,
``DEPTHWISE_CONV_2D`` ``[1, kh, kw, C]`` (multiplier 1).
"""

from __future__ import annotations

import numpy as np


def embed_offset(big_pad: int, big_k: int, pad: int, k: int) -> int | None:
    """Where a kernel of ``k`` padded ``pad`` sits in one of ``big_k`` padded
    ``big_pad`` (None: its window falls outside)."""
    o = big_pad - pad
    return o if 0 <= o <= big_k - k else None


def embed(w: np.ndarray, kernel: tuple[int, int], offset: tuple[int, int]) -> np.ndarray:
    """Filter ``w`` (axes 1, 2 spatial) zero-padded to ``kernel`` with its
    top-left corner at ``offset``."""
    out = np.zeros((w.shape[0], kernel[0], kernel[1], w.shape[3]), np.float64)
    oh, ow = offset
    out[:, oh:oh + w.shape[1], ow:ow + w.shape[2], :] = w
    return out


def identity_filter(scale: np.ndarray, kernel: tuple[int, int], offset: tuple[int, int], in_per_group: int,
                    depthwise: bool) -> np.ndarray:
    """The filter of ``x * scale`` (per channel): a delta on each channel's own
    input at ``offset``, for a conv with ``in_per_group`` input channels per
    group (or a depthwise one)."""
    c = len(scale)
    oh, ow = offset
    if depthwise:
        w = np.zeros((1, kernel[0], kernel[1], c), np.float64)
        w[0, oh, ow, :] = scale
        return w
    w = np.zeros((c, kernel[0], kernel[1], in_per_group), np.float64)
    w[np.arange(c), oh, ow, np.arange(c) % in_per_group] = scale
    return w


def average_filter(scale: np.ndarray, window: tuple[int, int], kernel: tuple[int, int], offset: tuple[int, int],
                   in_per_group: int, depthwise: bool) -> np.ndarray:
    """The filter of ``average_pool(x) * scale``: on each channel's own input,
    ``scale / (wh*ww)`` at every tap of the pool's ``window``, the window's
    top-left corner at ``offset`` in ``kernel`` (the edge divisor of a
    zero-padded VALID pool, PyTorch's ``count_include_pad``, is the window's
    size too: the same convolution)."""
    v = np.asarray(scale, np.float64) / (window[0] * window[1])
    c = len(v)
    rows, cols = slice(offset[0], offset[0] + window[0]), slice(offset[1], offset[1] + window[1])
    if depthwise:
        w = np.zeros((1, kernel[0], kernel[1], c), np.float64)
        w[0, rows, cols, :] = v
        return w
    w = np.zeros((c, kernel[0], kernel[1], in_per_group), np.float64)
    w[np.arange(c), rows, cols, np.arange(c) % in_per_group] = v[:, None, None]
    return w


def scale_out(w: np.ndarray, scale: np.ndarray, depthwise: bool) -> np.ndarray:
    """``w`` with output channel ``c`` multiplied by ``scale[c]``."""
    return w * (scale.reshape(1, 1, 1, -1) if depthwise else scale.reshape(-1, 1, 1, 1))


# ------------------------------------------------------ sequential composition


def compose_after_pointwise(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray]:
    """``conv2(conv1x1(x))`` as one conv, ``w1`` ``[M, 1, 1, Cin]`` then
    ``w2`` ``[Cout, kh, kw, M]``: each tap of ``w2`` reads ``w1``'s mixture of
    the input channels, so ``W[o, h, w, i] = sum_m w2[o, h, w, m] w1[m, i]``,
    and ``b1`` reaches the output through every tap: ``b2 + sum w2 . b1``.
    That bias term is exact only where every tap lands inside the input (a
    VALID ``conv2``), or when ``b1`` is zero (a SAME ``conv2`` pads ``conv1``'s
    output with zeros, not with ``b1``): the caller checks."""
    w = np.einsum("ohwm,mi->ohwi", np.asarray(w2, np.float64), np.asarray(w1, np.float64)[:, 0, 0, :])
    b = np.asarray(b2, np.float64) + np.einsum("ohwm,m->o", np.asarray(w2, np.float64), np.asarray(b1, np.float64))
    return w, b


def compose_pointwise_after(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray]:
    """``conv1x1(conv1(x))`` as one conv, ``w1`` ``[M, kh, kw, Cin]`` then
    ``w2`` ``[Cout, 1, 1, M]``: a 1x1 mixes the output channels of each
    pixel, padding and stride included, so it is exact everywhere:
    ``W[o] = sum_m w2[o, m] w1[m]``, ``b = w2 . b1 + b2``."""
    m2 = np.asarray(w2, np.float64)[:, 0, 0, :]
    return np.einsum("om,mhwi->ohwi", m2, np.asarray(w1, np.float64)), m2 @ np.asarray(b1, np.float64) + b2


def macs_per_pixel(kernel: tuple[int, int], cin: int, cout: int) -> int:
    """Multiply-adds of one output pixel of a dense conv."""
    return kernel[0] * kernel[1] * cin * cout
