"""Weight layouts of TFLite convolutions, and the pure maths that merges or
narrows them. No graph access here: arrays in, arrays out.

TFLite stores a ``CONV_2D`` filter as ``[Cout, kh, kw, Cin/G]`` (OHWI; with G
groups, output channel ``o`` reads input channels of group
``o // (Cout/G)``), and a ``DEPTHWISE_CONV_2D`` filter as ``[1, kh, kw, C*M]``
where output channel ``c*M + m`` reads input channel ``c``.

Both are the same thing seen through one lens: a *grouped* convolution whose
filter, in OHWI form, has rows (output channels) ordered group by group and a
last axis of ``group width`` input channels. A depthwise conv is the grouped
conv of group width 1 (``depthwise_to_ohwi`` / ``ohwi_to_depthwise`` switch
views). So merging per-group branches is stacking their OHWI filters along the
output axis, whatever op each branch was, and narrowing a dense conv is
cutting the diagonal blocks out of its filter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def depthwise_to_ohwi(w: np.ndarray) -> np.ndarray:
    """``[1, kh, kw, C*M]`` -> ``[C*M, kh, kw, 1]`` (row ``c*M+m`` reads channel ``c``)."""
    if w.ndim != 4 or w.shape[0] != 1:
        raise ValueError(f"depthwise filter must be [1,kh,kw,C*M], got {list(w.shape)}")
    return np.ascontiguousarray(w.transpose(3, 1, 2, 0))


def ohwi_to_depthwise(w: np.ndarray) -> np.ndarray:
    """``[Cout, kh, kw, 1]`` -> ``[1, kh, kw, Cout]``: the inverse of :func:`depthwise_to_ohwi`."""
    if w.ndim != 4 or w.shape[3] != 1:
        raise ValueError(f"filter must be [Cout,kh,kw,1] to become depthwise, got {list(w.shape)}")
    return np.ascontiguousarray(w.transpose(3, 1, 2, 0))


@dataclass(frozen=True)
class GroupPlan:
    """Shape of the one convolution that replaces per-piece branches."""

    in_channels: int
    out_channels: int
    group_width: int  # input channels each output channel reads
    outputs_per_group: int

    @property
    def groups(self) -> int:
        return self.in_channels // self.group_width

    @property
    def is_depthwise(self) -> bool:
        return self.group_width == 1

    @property
    def depth_multiplier(self) -> int:
        return self.outputs_per_group


def plan_groups(piece_channels: Sequence[int], branch_out_channels: Sequence[int],
                branch_group_widths: Sequence[int]) -> GroupPlan | str:
    """How branches ``i`` -- each a (possibly itself grouped) conv reading
    ``piece_channels[i]`` contiguous input channels with filter group width
    ``branch_group_widths[i]`` and writing ``branch_out_channels[i]`` channels --
    stack into one grouped conv, or a reason why they do not.

    Stacking is exact when every group of every branch has the same width and
    the same number of outputs: then the merged conv's group ``g`` is exactly
    one branch's group, reading the same input channels with the same filter
    rows, and its outputs land where the concatenation put them.
    """
    widths = set(branch_group_widths)
    if len(widths) != 1:
        if len(set(piece_channels)) != 1:
            return f"pieces are of unequal size ({_summary(piece_channels)} channels)"
        return f"branch filters read different numbers of channels ({_summary(branch_group_widths)})"
    g = widths.pop()
    per_group = set()
    for k, o in zip(piece_channels, branch_out_channels):
        if g <= 0 or k % g:
            return f"a branch filter reads {g} channels but its piece has {k}"
        groups = k // g
        if o % groups:
            return f"a branch writes {o} channels, not a multiple of its {groups} groups"
        per_group.add(o // groups)
    if len(per_group) != 1:
        return f"branches write different numbers of channels per group ({_summary(sorted(per_group))})"
    return GroupPlan(in_channels=int(sum(piece_channels)), out_channels=int(sum(branch_out_channels)),
                     group_width=g, outputs_per_group=per_group.pop())


def stack_ohwi(filters: Sequence[np.ndarray]) -> np.ndarray:
    """Branch OHWI filters, in concatenation order, as one grouped OHWI filter."""
    return np.ascontiguousarray(np.concatenate(list(filters), axis=0))


def block_nonzero(w_ohwi: np.ndarray, zero: np.ndarray | int | float = 0) -> np.ndarray:
    """``[Cout, Cin]`` booleans: does output channel ``o`` read input channel
    ``i`` at all? ``zero`` is the stored value meaning 0 (a quantized filter's
    zero point, per output channel or scalar). Exact comparisons only: a
    weight of 1e-30 is a weight."""
    z = np.asarray(zero)
    if z.ndim == 1:
        z = z.reshape(-1, 1, 1, 1)
    return np.any(w_ohwi != z, axis=(1, 2))


def block_diagonal_groups(nonzero: np.ndarray) -> int:
    """The largest G > 1 for which the ``[Cout, Cin]`` read pattern is block
    diagonal with G equal blocks (output block ``g`` reads only input block
    ``g``), or 1 when the conv is dense. Every divisor of gcd(Cout, Cin) is
    tried, largest first: block-diagonality for G does not imply it for
    multiples of G, nor for other divisors, so there is no shortcut."""
    cout, cin = nonzero.shape
    common = int(np.gcd(cout, cin))
    for g in sorted((d for d in range(2, common + 1) if common % d == 0), reverse=True):
        blocks = nonzero.reshape(g, cout // g, g, cin // g).any(axis=(1, 3))
        if not np.any(blocks & ~np.eye(g, dtype=bool)):
            return g
    return 1


def narrow_filter(w_ohwi: np.ndarray, groups: int) -> np.ndarray:
    """The diagonal blocks of a block-diagonal ``[Cout, kh, kw, Cin]`` filter as
    the grouped filter ``[Cout, kh, kw, Cin/G]`` (row ``o`` keeps the columns of
    its own group)."""
    cout, kh, kw, cin = w_ohwi.shape
    if cout % groups or cin % groups:
        raise ValueError(f"{groups} groups do not divide Cout={cout}, Cin={cin}")
    opg, ipg = cout // groups, cin // groups
    blocks = w_ohwi.reshape(groups, opg, kh, kw, groups, ipg)
    idx = np.arange(groups)
    # blocks[g, :, :, :, g, :] for every g -> [G, opg, kh, kw, ipg]
    diag = blocks[idx, :, :, :, idx, :]
    return np.ascontiguousarray(diag.reshape(cout, kh, kw, ipg))


def _summary(values: Sequence[int]) -> str:
    distinct = list(dict.fromkeys(int(v) for v in values))
    return ", ".join(map(str, distinct[:4])) + (", ..." if len(distinct) > 4 else "")
