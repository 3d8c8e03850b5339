"""merge-layout-pairs: TRANSPOSE pairs compose (inverse ones cancel), RESHAPE
pairs collapse; bit-exact for every type."""

from __future__ import annotations

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.graph import quantization
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.schema import TensorType

from conftest import fuse_and_check, op_counts
from helpers import ops_of, reasons, run_tflite

PASS = "merge-layout-pairs"


def _pair(first, second, dtype=TensorType.FLOAT32, q=None, observe=False, tail=True):
    b = ModelBuilder()
    x = b.input("x", [1, 4, 6, 8], dtype, q)
    t = first(b, x, q)
    z = second(b, t, q)
    if tail:  # something after the pair, so an inverse pair can vanish
        z = b.reshape(b.transpose(z, [0, 1, 3, 2], quantization=q), [1, 4 * 6 * 8], quantization=q)
    b.output(z)
    if observe:
        b.output(t)
    return b.to_bytes()


def T(perm):
    return lambda b, x, q: b.transpose(x, perm, quantization=q)


def R(shape):
    return lambda b, x, q: b.reshape(x, shape, quantization=q)


@pytest.mark.parametrize("dtype,q", [(TensorType.FLOAT32, None), (TensorType.INT8, quantization(0.1, -2))])
def test_two_transposes_compose_into_one_with_the_same_bytes(dtype, q, rng):
    data = _pair(T([0, 3, 1, 2]), T([0, 2, 1, 3]), dtype, q, tail=False)
    r = fuse_and_check(data)
    (t,) = ops_of(r, Op.TRANSPOSE)
    # axis j of the result is axis p1[p2[j]] of x
    assert t.inputs[1].value().tolist() == [0, 1, 3, 2]
    x = (rng.integers(-128, 128, (1, 4, 6, 8)).astype(np.int8) if q is not None
         else rng.standard_normal((1, 4, 6, 8)).astype(np.float32))
    np.testing.assert_array_equal(run_tflite(r.model_bytes, x, "builtin"), run_tflite(data, x, "builtin"))


def test_an_nchw_round_trip_cancels():
    r = fuse_and_check(_pair(T([0, 3, 1, 2]), T([0, 2, 3, 1])))
    assert op_counts(r) == {"TRANSPOSE": 1, "RESHAPE": 1}


def test_two_reshapes_collapse_into_the_last():
    r = fuse_and_check(_pair(R([1, 24, 8]), R([4, 6, 8, 1]), tail=False))
    (rs,) = ops_of(r, Op.RESHAPE)
    assert list(rs.outputs[0].shape) == [4, 6, 8, 1]


def test_a_pair_whose_middle_is_read_elsewhere_stays_with_the_reason():
    r = fuse_and_check(_pair(T([0, 3, 1, 2]), T([0, 2, 3, 1]), observe=True, tail=False), passes=[PASS])
    assert r.report["nothing_to_fuse"]
    assert any("model output" in s for s in reasons(r, PASS))
