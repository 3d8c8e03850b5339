"""The arithmetic of lowering a transpose's rank, as pure functions (no graph).

A transpose moves whole runs of axes: input axes that stay next to each other
and in order in the output move as one block, and an axis of size 1 moves
nothing. Merging each such run into one axis and dropping the size-1 axes
gives a transpose of lower rank that moves every element to the very same
place in memory (both layouts are row-major, so a reshape on either side is
free). ShuffleNet's channel shuffle, ``[N, g, C/g, H, W]`` transposed
``(0, 2, 1, 3, 4)``, is ``[g, C/g, H*W]`` transposed ``(1, 0, 2)``: rank 3.

A runtime whose transposes stop at rank 4 (LiteRT's GPU delegate: "Tensor
dimensions must be less than 5") then runs it.
"""

from __future__ import annotations

import math
from typing import Sequence


def merged_transpose(shape: Sequence[int], perm: Sequence[int]) -> tuple[list[int], list[int]]:
    """(input shape, permutation) of the lowest-rank transpose that moves the
    elements of a ``shape`` tensor as ``perm`` does. ``shape`` must be static
    and ``perm`` a permutation of its axes."""
    n = len(shape)
    if sorted(perm) != list(range(n)):
        raise ValueError(f"{list(perm)} is not a permutation of {n} axes")
    kept = [a for a in range(n) if shape[a] != 1]
    rank_in = {a: i for i, a in enumerate(kept)}  # an axis's place among the kept ones
    runs: list[list[int]] = []  # in output order; each a run of consecutive kept input axes
    for a in (a for a in perm if shape[a] != 1):
        if runs and rank_in[a] == rank_in[runs[-1][-1]] + 1:
            runs[-1].append(a)
        else:
            runs.append([a])
    by_input = sorted(range(len(runs)), key=lambda r: runs[r][0])
    merged_shape = [math.prod(shape[a] for a in runs[r]) for r in by_input]
    where = {r: i for i, r in enumerate(by_input)}
    return merged_shape, [where[r] for r in range(len(runs))]


def padded(shape: Sequence[int], perm: Sequence[int], rank: int) -> tuple[list[int], list[int]]:
    """The same transpose with leading size-1 axes up to ``rank`` (runtimes
    are at home in rank 4, and a rank-0 transpose is no tensor)."""
    extra = rank - len(shape)
    if extra < 0:
        raise ValueError(f"rank {len(shape)} is more than {rank}")
    return [1] * extra + list(shape), list(range(extra)) + [extra + p for p in perm]


def transposed_shape(shape: Sequence[int], perm: Sequence[int]) -> list[int]:
    return [shape[p] for p in perm]
