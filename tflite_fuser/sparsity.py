"""TFLite's sparse tensor format, decoded to the dense array (pure numpy).

A sparse constant stores only its non-zero values, in *traversal order*: the
tensor's dimensions (and, for block sparsity, each block's inner dimensions)
are walked in ``traversal_order``, each level either DENSE (every index,
``dense_size`` of them) or SPARSE_CSR (for each position of the level above,
the indices ``array_indices[array_segments[p]:array_segments[p + 1]]``).
The n-th stored value belongs at the n-th index tuple of that walk. This is
what the DENSIFY kernel does at run time (TFLite's ``FormatConverter``); it
is done here once, level by level on whole index arrays rather than one
element at a time, so it costs one pass over the tensor.
"""

from __future__ import annotations

import math

import numpy as np

DENSE, SPARSE_CSR = 0, 1


class SparsityError(ValueError):
    """The sparsity parameters do not describe a tensor of this shape."""


def _vector(union) -> np.ndarray:
    values = getattr(union, "values", None)
    if values is None:
        raise SparsityError("a sparse dimension without its segments or indices")
    return np.asarray(values, dtype=np.int64)


def densify(values: np.ndarray, shape: list[int], sparsity) -> np.ndarray:
    """The dense ``shape`` array whose non-zero entries ``values`` (1-D, in
    traversal order) and ``sparsity`` (``fb.SparsityParametersT``) describe."""
    order = [int(d) for d in (sparsity.traversalOrder if sparsity.traversalOrder is not None else [])]
    block_map = [int(d) for d in (sparsity.blockMap if sparsity.blockMap is not None else [])]
    dims = sparsity.dimMetadata or []
    rank = len(shape)
    if len(order) != rank + len(block_map) or len(dims) != len(order) or sorted(order) != list(range(len(order))):
        raise SparsityError(f"traversal order {order} does not cover a rank-{rank} tensor with "
                            f"{len(block_map)} block dimension(s)")
    block_size = [int(dims[order.index(rank + k)].denseSize) for k in range(len(block_map))]
    prev = np.zeros(1, np.int64)  # each walked path's position at the level above
    walked: list[np.ndarray] = []  # the index of each path, per level
    for level, dm in enumerate(dims):
        if dm.format == DENSE:
            d = int(dm.denseSize)
            walked = [np.repeat(ix, d) for ix in walked]
            here = np.tile(np.arange(d, dtype=np.int64), len(prev))
            prev = np.repeat(prev, d) * d + here
        elif dm.format == SPARSE_CSR:
            segments, indices = _vector(dm.arraySegments), _vector(dm.arrayIndices)
            if prev.size and (prev.max() + 1 >= len(segments) or segments[-1] > len(indices)):
                raise SparsityError(f"level {level}: segments do not fit the indices")
            starts, ends = segments[prev], segments[prev + 1]
            counts = ends - starts
            if (counts < 0).any():
                raise SparsityError(f"level {level}: segments are not ascending")
            walked = [np.repeat(ix, counts) for ix in walked]
            # every j in [start, end) for each path, in order
            offsets = np.arange(counts.sum(), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
            prev = np.repeat(starts, counts) + offsets
            here = indices[prev]
        else:
            raise SparsityError(f"level {level}: unknown dimension format {dm.format}")
        walked.append(here)
    index = [np.zeros(len(prev), np.int64) for _ in range(rank)]
    for level in range(rank):
        index[order[level]] = walked[level]
    for level in range(rank, len(order)):
        k = order[level] - rank
        index[block_map[k]] = index[block_map[k]] * block_size[k] + walked[level]
    flat_values = np.asarray(values).reshape(-1)
    n = len(prev)
    if n != flat_values.size:
        raise SparsityError(f"the walk visits {n} entries, the buffer holds {flat_values.size} values")
    if any((ix >= s).any() or (ix < 0).any() for ix, s in zip(index, shape)):
        raise SparsityError("an index falls outside the tensor's shape")
    dense = np.zeros(math.prod(shape), dtype=flat_values.dtype)
    dense[np.ravel_multi_index(index, shape) if rank else 0] = flat_values
    return dense.reshape(shape)
