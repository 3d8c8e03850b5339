"""collapse-layout-chain: TRANSPOSE/RESHAPE chains that leave every element
in memory order become one RESHAPE (or go); chains that move elements stay."""

from __future__ import annotations

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.graph import quantization
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.schema import TensorType

from conftest import fuse_and_check, op_counts
from helpers import ops_of, run_tflite

PASS = "collapse-layout-chain"


def _chain(steps, shape=(1, 8, 8, 32), dtype=TensorType.FLOAT32, q=None, then_relu=False):
    b = ModelBuilder()
    y = b.input("x", list(shape), dtype, q)
    for kind, arg in steps:
        y = b.transpose(y, arg, quantization=q) if kind == "T" else b.reshape(y, arg, quantization=q)
    b.output(b.relu(y) if then_relu else y)
    return b.to_bytes()


# PyTorch's flatten(2).transpose(1, 2) of an NCHW view of an NHWC tensor: no element moves
TOKENS = [("T", [0, 3, 1, 2]), ("R", [1, 32, 64]), ("T", [0, 2, 1])]


@pytest.mark.parametrize("dtype,q", [(TensorType.FLOAT32, None), (TensorType.INT8, quantization(0.1, 0))])
def test_an_order_keeping_chain_becomes_one_reshape_with_the_same_bytes(dtype, q, rng):
    data = _chain(TOKENS, dtype=dtype, q=q)
    r = fuse_and_check(data, passes=[PASS])
    (rs,) = ops_of(r, Op.RESHAPE)
    assert op_counts(r) == {"RESHAPE": 1} and list(rs.outputs[0].shape) == [1, 64, 32]
    x = (rng.integers(-128, 128, (1, 8, 8, 32)).astype(np.int8) if q is not None
         else rng.standard_normal((1, 8, 8, 32)).astype(np.float32))
    np.testing.assert_array_equal(run_tflite(r.model_bytes, x, "builtin"), run_tflite(data, x, "builtin"))


def test_a_chain_back_to_the_input_shape_goes_entirely():
    r = fuse_and_check(_chain(TOKENS + [("R", [1, 8, 8, 32])], then_relu=True), passes=[PASS])
    assert op_counts(r) == {"RELU": 1}


def test_a_chain_that_moves_elements_stays():
    r = fuse_and_check(_chain([("T", [0, 3, 1, 2]), ("R", [1, 32, 64])]), passes=[PASS])
    assert r.report["nothing_to_fuse"]


def test_a_dynamic_input_is_left_alone():
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 32])
    x.shape_signature = [-1, 8, 8, 32]
    b.output(b.transpose(b.reshape(b.transpose(x, [0, 3, 1, 2]), [1, 32, 64]), [0, 2, 1]))
    assert fuse_and_check(b.to_bytes(), passes=[PASS]).report["nothing_to_fuse"]
