"""densify-constants: a DENSIFY of a sparse constant stored dense, for
targets without DENSIFY (the GPU, TFLite Micro), and the decoding behind it,
checked against the interpreter's own DENSIFY kernel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.schema import fb
from tflite_fuser.sparsity import DENSE, SPARSE_CSR, SparsityError, densify

from conftest import fuse_and_check, op_counts
from helpers import reasons, run_tflite

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _vector(values) -> fb.Int32VectorT:
    v = fb.Int32VectorT()
    v.values = [int(x) for x in values]
    return v


def _dim(fmt: int, dense_size: int = 0, segments=None, indices=None) -> fb.DimensionMetadataT:
    d = fb.DimensionMetadataT()
    d.format, d.denseSize = fmt, dense_size
    if fmt == SPARSE_CSR:
        d.arraySegmentsType = d.arrayIndicesType = fb.SparseIndexVector.Int32Vector
        d.arraySegments, d.arrayIndices = _vector(segments), _vector(indices)
    return d


def block_sparse(dense: np.ndarray, block: int) -> tuple[np.ndarray, fb.SparsityParametersT]:
    """A 2-D array in TFLite's block-sparse form: rows dense, blocks of
    ``block`` columns CSR, each block's columns dense (traversal 0, 1, 2)."""
    rows, cols = dense.shape
    blocks = dense.reshape(rows, cols // block, block)
    keep = np.abs(blocks).sum(-1) != 0
    segments = np.concatenate([[0], np.cumsum(keep.sum(1))])
    indices = np.nonzero(keep)[1]
    sp = fb.SparsityParametersT()
    sp.traversalOrder, sp.blockMap = [0, 1, 2], [1]
    sp.dimMetadata = [_dim(DENSE, rows), _dim(SPARSE_CSR, segments=segments, indices=indices), _dim(DENSE, block)]
    return blocks[keep].reshape(-1), sp


def _densify_model(values: np.ndarray, sp, shape, consumer: str = "fc") -> bytes:
    """A model that reads DENSIFY(the sparse constant): as the weights of a
    FULLY_CONNECTED (``fc``, the usual reader), or added to an input of its
    own shape (``add``: the output is the decoded constant when x is 0)."""
    b = ModelBuilder()
    x = b.input("x", [1, shape[1]] if consumer == "fc" else list(shape))
    w = b.const(values.astype(np.float32), "w_sparse")
    w.shape, w.sparsity = list(shape), sp
    (wd,) = b.op(Op.DENSIFY, [w], [list(shape)], name="w")
    b.output(b.fully_connected(x, wd) if consumer == "fc" else b.add(x, wd))
    return b.to_bytes()


def _pruned(rng, shape, block: int, density: float = 0.3) -> np.ndarray:
    keep = rng.random((shape[0], shape[1] // block)) < density
    return rng.standard_normal(shape).astype(np.float32) * np.repeat(keep, block, axis=1)


@pytest.mark.parametrize("shape,block", [((6, 16), 4), ((5, 8), 1), ((3, 12), 2)])
def test_decoding_a_block_sparse_constant_gives_what_the_densify_kernel_gives(shape, block, rng):
    dense = _pruned(rng, shape, block)
    values, sp = block_sparse(dense, block)
    np.testing.assert_array_equal(densify(values, list(shape), sp), dense)
    zeros = np.zeros(shape, np.float32)
    np.testing.assert_array_equal(run_tflite(_densify_model(values, sp, shape, "add"), zeros, "builtin"), dense)


def test_sparsity_that_does_not_fit_the_shape_is_an_error_not_a_guess(rng):
    values, sp = block_sparse(_pruned(rng, (4, 8), 4), 4)
    with pytest.raises(SparsityError):
        densify(values[:-1], [4, 8], sp)
    sp.dimMetadata[1].arraySegments.values[-1] += 5
    with pytest.raises(SparsityError):
        densify(values, [4, 8], sp)


@pytest.mark.parametrize("target", ["gpu", "micro"])
def test_a_target_without_densify_gets_the_dense_constant_and_the_same_outputs(target, rng):
    dense = _pruned(rng, (6, 16), 4)
    r = fuse_and_check(_densify_model(*block_sparse(dense, 4), (6, 16)), target=target)
    assert "DENSIFY" not in op_counts(r)
    (w,) = [t for t in r.model.main.tensors if t.is_constant and list(t.shape) == [6, 16]]
    assert w.sparsity is None
    np.testing.assert_array_equal(w.value(), dense)


def test_targets_with_densify_keep_the_smaller_sparse_file(rng):
    r = fuse_and_check(_densify_model(*block_sparse(_pruned(rng, (6, 16), 4), 4), (6, 16)), target="xnnpack")
    assert r.report["nothing_to_fuse"]


@pytest.mark.parametrize("name", ["sparse", "sparse_fp16"])
def test_tf_converters_sparse_weights_are_stored_dense_for_the_gpu_and_compute_the_same(name):
    src = (FIXTURES / "special" / f"{name}.tflite").read_bytes()
    r = fuse_and_check(src, target="gpu")
    assert "DENSIFY" not in op_counts(r)
    assert r.verification.max_abs_error == 0
    assert len(r.model_bytes) > len(src)  # the zeros are stored now


def test_undecodable_sparsity_is_left_with_the_reason(rng):
    values, sp = block_sparse(_pruned(rng, (4, 8), 4), 4)
    data = _densify_model(values[:-1], sp, (4, 8))  # one value short of the walk
    r = fuse_and_check(data, target="gpu")
    assert r.report["nothing_to_fuse"]
    assert any("do not decode" in s for s in reasons(r, "densify-constants"))
