"""fold-constants: ops of constants, and the SHAPE of a static tensor, become
constants computed as their kernels compute them; dynamic shapes, model
outputs, quantized arithmetic and file growth stay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.schema import BuiltinOptions, TensorType, fb

from conftest import fuse_and_check, op_counts
from helpers import reasons, run_tflite

PASS = "fold-constants"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _shape_of(b, x):
    return b.op(Op.SHAPE, [x], [[len(x.shape)]], fb.ShapeOptionsT(outType=TensorType.INT32),
                BuiltinOptions.ShapeOptions, dtype=TensorType.INT32)[0]


def _computed_reshape(signature=None):
    """x [2, 3, 4] -> RESHAPE(x, concat(shape(x)[:1], [-1])): onnx2tf's flatten."""
    b = ModelBuilder()
    x = b.input("x", [2, 3, 4])
    if signature:
        x.shape_signature = signature
    head = b.slice(_shape_of(b, x), [0], [1])
    target = b.concat([head, np.array([-1], np.int32)], axis=0)
    (y,) = b.op(Op.RESHAPE, [x, target], [[2, 12]], fb.ReshapeOptionsT(), BuiltinOptions.ReshapeOptions)
    b.output(b.relu(y))
    return b.to_bytes()


def test_a_shape_computed_from_a_static_tensor_is_folded_down_to_the_reshape(rng):
    data = _computed_reshape()
    r = fuse_and_check(data)
    assert op_counts(r) == {"RESHAPE": 1, "RELU": 1}
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(run_tflite(r.model_bytes, x), run_tflite(data, x))


def test_a_dynamic_dimension_keeps_the_shape_computed_at_run_time():
    r = fuse_and_check(_computed_reshape(signature=[-1, 3, 4]), passes=[PASS])
    assert r.report["nothing_to_fuse"]


@pytest.mark.parametrize("build,want", [
    (lambda b: b.add(np.array([1.5, 2.0], np.float32), np.array([0.25, 1e-8], np.float32)),
     np.array([1.75, 2.0], np.float32)),
    (lambda b: b.mul(np.array([2**30, 3], np.int32), np.array([4, 5], np.int32), dtype=TensorType.INT32),
     np.array([0, 15], np.int32)),  # 2^30 * 4 wraps to 0, as int32 does
    (lambda b: b.transpose(b.const(np.arange(6, dtype=np.float32).reshape(2, 3), "c"), [1, 0]),
     np.arange(6, dtype=np.float32).reshape(2, 3).T),
])
def test_an_op_of_constants_becomes_the_constant_its_kernel_computes(build, want):
    b = ModelBuilder()
    x = b.input("x", list(want.shape), TensorType.FLOAT32 if want.dtype == np.float32 else TensorType.INT32)
    c = build(b)
    b.output(b.add(x, c, dtype=x.dtype))
    data = b.to_bytes()
    r = fuse_and_check(data, passes=[PASS])
    assert op_counts(r) == {"ADD": 1}
    zeros = np.zeros(want.shape, want.dtype)
    np.testing.assert_array_equal(run_tflite(r.model_bytes, zeros, "builtin"), run_tflite(data, zeros, "builtin"))


def test_a_constant_that_would_grow_the_file_stays_with_the_reason():
    b = ModelBuilder()
    x = b.input("x", [64, 128])
    # [64, 1] + [1, 128] broadcasts 768 bytes into 32 KiB
    grid = b.add(np.arange(64, dtype=np.float32).reshape(64, 1), np.arange(128, dtype=np.float32).reshape(1, 128))
    b.output(b.add(x, grid))
    r = fuse_and_check(b.to_bytes(), passes=[PASS])
    assert r.report["nothing_to_fuse"]
    assert any("would add 32,768 bytes" in s for s in reasons(r, PASS))


def test_onnx2tfs_computed_reshape_target_disappears():
    r = fuse_and_check((FIXTURES / "onnx2tf/mlp_gelu.tflite").read_bytes(), runs=1)
    for op in ("SHAPE", "EQUAL", "SELECT", "CONCATENATION", "SLICE"):
        assert op not in op_counts(r)


def test_the_square_root_of_a_constant_head_dimension_folds_as_ieee_rounds_it(rng):
    """onnx2tf's attention scaling DIV(x, SQRT(8)): the GPU delegate refuses
    a SQRT of a constant; folded, the DIV reads a constant."""
    b = ModelBuilder()
    x = b.input("x", [1, 4, 8])
    (root,) = b.op(Op.SQRT, [np.array([8.0], np.float32)], [[1]])
    b.output(b.div(x, root))
    data = b.to_bytes()
    r = fuse_and_check(data, passes=[PASS])
    assert op_counts(r) == {"DIV": 1}
    v = rng.standard_normal((1, 4, 8)).astype(np.float32)
    np.testing.assert_array_equal(run_tflite(r.model_bytes, v, "builtin"), run_tflite(data, v, "builtin"))


def test_onnx2tfs_attention_loses_its_constant_square_root():
    """(What moves the block onto the GPU: benchmarks.gpu_corpus, no compile -> all on the GPU.)"""
    r = fuse_and_check((FIXTURES / "onnx2tf/attention.tflite").read_bytes(), runs=1)
    assert r.report["input"]["op_counts"]["SQRT"] == 1 and "SQRT" not in op_counts(r)
