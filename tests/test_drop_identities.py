"""drop-identities: ops that hand their input on unchanged go, their readers
read the input; near-identities and model outputs stay."""

from __future__ import annotations

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.graph import quantization
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.schema import BuiltinOptions, TensorType, fb

from tflite_fuser import fuse

from conftest import fuse_and_check, op_counts
from helpers import reasons, run_tflite

PASS = "drop-identities"
F32 = np.float32


def _between(identity, dtype=TensorType.FLOAT32, q=None, observe=False):
    """x -> identity -> TANH (float) or TRANSPOSE (int8); the identity's output
    also a model output with ``observe``."""
    b = ModelBuilder()
    x = b.input("x", [1, 4, 4, 8], dtype, q)
    y = identity(b, x)
    if dtype == TensorType.FLOAT32:
        (z,) = b.op(Op.TANH, [y], [[1, 4, 4, 8]])
    else:
        z = b.transpose(y, [0, 2, 1, 3], quantization=q)
    b.output(z)
    if observe:
        b.output(y)
    return b.to_bytes()


IDENTITIES = {
    "mul_1": lambda b, x: b.mul(x, np.ones(8, F32)),
    "one_times": lambda b, x: b.mul(np.array(1.0, F32), x),
    "add_0": lambda b, x: b.add(x, np.zeros([1, 1, 1, 8], F32)),
    "sub_0": lambda b, x: b.sub(x, np.array(0.0, F32)),
    "div_1": lambda b, x: b.div(x, np.array(1.0, F32)),
    "transpose": lambda b, x: b.transpose(x, [0, 1, 2, 3]),
    "reshape": lambda b, x: b.reshape(x, [1, 4, 4, 8]),
}


@pytest.mark.parametrize("name", list(IDENTITIES))
def test_an_identity_goes_and_the_output_is_bit_identical(name, rng):
    data = _between(IDENTITIES[name])
    r = fuse_and_check(data)
    assert op_counts(r) == {"TANH": 1}
    x = rng.standard_normal((1, 4, 4, 8)).astype(F32)
    np.testing.assert_array_equal(run_tflite(r.model_bytes, x), run_tflite(data, x))


def test_an_int8_identity_transpose_goes_too():
    q = quantization(0.05, 3)
    r = fuse_and_check(_between(lambda b, x: b.transpose(x, [0, 1, 2, 3], quantization=q), TensorType.INT8, q))
    assert op_counts(r) == {"TRANSPOSE": 1}


@pytest.mark.parametrize("near", [lambda b, x: b.mul(x, np.full(8, 1.0001, F32)),
                                  lambda b, x: b.add(x, np.zeros([2, 1, 1, 8], F32)[:1] + 1e-7),
                                  lambda b, x: b.mul(x, np.ones(8, F32), activation="RELU"),
                                  lambda b, x: b.sub(np.array(0.0, F32), x)])
def test_what_only_looks_like_an_identity_stays(near):
    r = fuse_and_check(_between(near), passes=[PASS])
    assert r.report["nothing_to_fuse"]


def test_an_identity_whose_output_is_a_model_output_stays_with_the_reason():
    r = fuse_and_check(_between(IDENTITIES["mul_1"], observe=True), passes=[PASS])
    assert r.report["nothing_to_fuse"]
    assert any("model output" in s for s in reasons(r, PASS))


def test_a_reshape_whose_declared_shapes_agree_but_whose_target_differs_stays():
    """onnx2tf declares shapes it never computes: the target decides, not the declarations."""
    b = ModelBuilder()
    x = b.input("x", [1, 4, 4, 8])
    (y,) = b.op(Op.RESHAPE, [x, np.array([1, 16, 8, 1], np.int32)], [[1, 4, 4, 8]], fb.ReshapeOptionsT(),
                BuiltinOptions.ReshapeOptions)
    b.output(b.op(Op.TANH, [y], [[1, 4, 4, 8]])[0])
    r = fuse(b.to_bytes(), passes=[PASS], verify_output=False)
    assert r.report["nothing_to_fuse"]
