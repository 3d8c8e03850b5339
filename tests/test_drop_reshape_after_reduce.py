"""drop-reshape-after-reduce: a reduction with keep_dims whose RESHAPE only
squeezes the reduced axes out becomes the reduction without keep_dims."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tflite_fuser import micro
from tflite_fuser.builder import ModelBuilder
from tflite_fuser.graph import quantization
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.schema import BuiltinOptions, TensorType, fb

from conftest import fuse_and_check, op_counts
from helpers import ops_of, reasons

PASS = "drop-reshape-after-reduce"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MANIFEST = {e["name"]: e for e in json.loads((FIXTURES / "manifest.json").read_text())["fixtures"]}


def _pool_flatten(code=Op.MEAN, shape=(1, 4, 4, 8), axes=(1, 2), target=(1, 8), dtype=TensorType.FLOAT32, q=None,
                  keep=True, observed=False, signature=None, target_signature=None):
    """x -> conv 1x1 (so there is something before) -> REDUCE(axes, keep_dims) -> RESHAPE(target)."""
    b = ModelBuilder()
    x = b.input("x", list(shape), dtype, q)
    if signature:
        x.shape_signature = list(signature)
    kept = [1 if i in axes else d for i, d in enumerate(shape)] if keep else [d for i, d in enumerate(shape)
                                                                           if i not in axes]
    (m,) = b.op(code, [x, np.asarray(axes, np.int32)], [kept], fb.ReducerOptionsT(keepDims=keep),
                BuiltinOptions.ReducerOptions, quantization=q)
    y = b.reshape(m, list(target), quantization=q)
    if target_signature:
        y.shape_signature = list(target_signature)
    b.output(y)
    if observed:
        b.output(m)
    return b.to_bytes()


@pytest.mark.parametrize("code", [Op.MEAN, Op.SUM, Op.REDUCE_MAX, Op.REDUCE_MIN])
def test_global_pooling_then_flatten_becomes_one_reduction_without_keep_dims_and_the_output_is_the_same(code):
    r = fuse_and_check(_pool_flatten(code))
    (op,) = r.model.main.operators
    assert op.code == code and not op.options.keepDims
    assert op.outputs[0].shape == [1, 8]
    assert r.verification.max_abs_error == 0


def test_an_int8_mean_keeps_its_quantization_and_is_exact():
    q = quantization(0.05, -3)
    r = fuse_and_check(_pool_flatten(dtype=TensorType.INT8, q=q))
    assert op_counts(r) == {"MEAN": 1}
    assert r.verification.max_abs_error == 0
    assert ops_of(r, Op.MEAN)[0].outputs[0].quant_params() is not None


def test_a_dynamic_batch_is_squeezed_in_the_shape_signature_too():
    r = fuse_and_check(_pool_flatten(signature=(-1, 4, 4, 8), target_signature=(-1, 8)))
    (op,) = r.model.main.operators
    assert op.outputs[0].shape_signature == [-1, 8]


@pytest.mark.parametrize("kw,why", [
    ({"axes": (2,), "target": (1, 32)}, "is not the MEAN's output with axes [2] dropped"),
    ({"target": (2, 4)}, "is not the MEAN's output"),
    ({"observed": True}, "model output"),
    ({"signature": (-1, 4, 4, 8), "target_signature": (1, 8)}, "shape signature"),
])
def test_a_reshape_that_does_more_than_squeeze_stays_with_the_reason(kw, why):
    r = fuse_and_check(_pool_flatten(**kw))
    assert "RESHAPE" in op_counts(r)
    assert any(why in s for s in reasons(r, PASS)), reasons(r)


def test_a_reduction_without_keep_dims_is_no_candidate():
    r = fuse_and_check(_pool_flatten(keep=False, target=(8, 1)))
    assert "RESHAPE" in op_counts(r) and reasons(r, PASS) == []


def test_tflite_micro_proves_the_squeezed_mean():
    if micro.unavailable():
        pytest.skip(micro.unavailable())
    r = fuse_and_check(_pool_flatten(), target="micro")
    assert op_counts(r) == {"MEAN": 1}
    assert r.verification.kernels == "micro" and r.verification.micro["original_loads"]


def _pool_bn_flatten(gamma_shape=(8,), dtype=TensorType.FLOAT32):
    """TF's converter's order: MEAN(keep_dims) -> MUL -> ADD (a BatchNorm1d on
    the pooled features) -> RESHAPE."""
    rng = np.random.default_rng(3)
    b = ModelBuilder()
    x = b.input("x", [1, 4, 4, 8])
    (m,) = b.op(Op.MEAN, [x, np.asarray([1, 2], np.int32)], [[1, 1, 1, 8]], fb.ReducerOptionsT(keepDims=True),
                BuiltinOptions.ReducerOptions)
    m = b.mul(m, rng.uniform(0.5, 2, gamma_shape).astype(np.float32))
    m = b.relu(b.add(m, rng.standard_normal(8).astype(np.float32)))
    b.output(b.reshape(m, [1, 8]))
    return b.to_bytes()


@pytest.mark.parametrize("gamma_shape", [(8,), (1, 1, 1, 8)])
def test_the_per_channel_ops_between_the_pooling_and_the_squeeze_run_on_the_squeezed_tensor(gamma_shape):
    r = fuse_and_check(_pool_bn_flatten(gamma_shape))
    assert op_counts(r) == {"MEAN": 1, "MUL": 1, "ADD": 1}
    assert all(op.outputs[0].shape == [1, 8] for op in r.model.main.operators)
    assert all(len(t.shape) <= 2 for op in r.model.main.operators for t in op.inputs[1:] if t.is_constant
               and op.code != Op.MEAN)
    assert r.verification.max_abs_error == 0


def test_nobucos_bnneck_embedder_loses_the_reshape_after_its_pooled_batch_norm():
    """nobuco (TF 2.15's converter) writes the re-ID BNNeck as MEAN(keep_dims)
    -> MUL -> ADD -> RESHAPE, onnx2tf as MEAN(keep_dims) -> RESHAPE -> MUL ->
    ADD: both lose the RESHAPE, litert-torch already writes MEAN without it."""
    for route in ("nobuco", "onnx2tf"):
        r = fuse_and_check((FIXTURES / route / "bnneck.tflite").read_bytes(), runs=1)
        assert "RESHAPE" not in op_counts(r), route
        assert op_counts(r) == {k: v for k, v in MANIFEST["litert_torch/bnneck"]["op_counts"].items()
                                if k != "TRANSPOSE"}, route
