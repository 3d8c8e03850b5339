"""fuse-prelu: PReLU and leaky ReLU written out of elementwise ops, in the
converters' forms and any other, become PRELU or LEAKY_RELU; a one-alpha
PRELU becomes LEAKY_RELU; look-alikes stay."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.schema import TensorType

from conftest import fuse_and_check, op_counts
from helpers import ops_of

PASS = "fuse-prelu"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MANIFEST = {e["name"]: e for e in json.loads((FIXTURES / "manifest.json").read_text())["fixtures"]}
R = np.random.default_rng(11)
C = 6


def k(v):
    return np.array(v, np.float32)


def alphas(c=C):
    return R.uniform(0.05, 0.5, c).astype(np.float32)


def litert_form(b, x, alpha):
    """litert-torch's nn.PReLU: RELU(x) - alpha * RELU(x * -1)."""
    neg = b.mul(x, k(-1.0), activation="RELU")
    return b.sub(b.relu(x), b.mul(neg, alpha.reshape(1, 1, 1, -1)))


def tf_form(b, x, alpha):
    """TF's (onnx2tf's tf_converter backend): RELU(x) + alpha/2 * (x - ABS(x))."""
    ax = b.op(Op.ABS, [x], [list(x.shape)])[0]
    return b.add(b.relu(x), b.mul(b.sub(x, ax), (alpha / 2).reshape(1, 1, -1)))


def model(form, alpha, c=C, observe_relu=False) -> bytes:
    b = ModelBuilder()
    x = b.conv2d(b.input("x", [1, 8, 8, 3]), R.standard_normal((c, 3, 3, 3)).astype(np.float32), k(np.zeros(c)))
    y = form(b, x, alpha)
    b.output(b.conv2d(y, R.standard_normal((4, 1, 1, c)).astype(np.float32), k(np.zeros(4))))
    if observe_relu:  # the RELU's output is also a model output: it cannot disappear
        b.output(next(op.outputs[0] for op in b.sg.operators if op.code == Op.RELU))
    return b.to_bytes()


@pytest.mark.parametrize("form", [litert_form, tf_form], ids=["litert-torch", "tf"])
def test_each_converters_written_prelu_becomes_one_prelu_with_its_per_channel_alpha(form):
    alpha = alphas()
    r = fuse_and_check(model(form, alpha))
    assert op_counts(r) == {"CONV_2D": 2, "PRELU": 1}
    (prelu,) = ops_of(r, Op.PRELU)
    a = prelu.inputs[1]
    assert a.shape == [1, 1, C] and np.allclose(a.value().reshape(-1), alpha, rtol=1e-6)
    assert r.verification.max_abs_error < 1e-5


def test_one_alpha_for_every_channel_becomes_leaky_relu():
    r = fuse_and_check(model(litert_form, np.full(C, 0.25, np.float32)))
    assert op_counts(r) == {"CONV_2D": 2, "LEAKY_RELU": 1}
    (leaky,) = ops_of(r, Op.LEAKY_RELU)
    assert leaky.options.alpha == pytest.approx(0.25)


def test_maximum_of_x_and_a_small_multiple_is_leaky_relu_and_of_a_large_one_is_not():
    def maximum_form(a):
        return lambda b, x, _: b.maximum(x, b.mul(x, k(a)))

    r = fuse_and_check(model(maximum_form(0.1), None))
    assert op_counts(r) == {"CONV_2D": 2, "LEAKY_RELU": 1}
    r = fuse_and_check(model(maximum_form(1.5), None))  # max(x, 1.5x): slope 1.5 above zero, 1 below
    assert "LEAKY_RELU" not in op_counts(r) and "PRELU" not in op_counts(r)


def test_a_one_alpha_prelu_becomes_leaky_relu_and_a_per_channel_one_stays():
    for alpha, want in ((np.full((1, 1, 1), 0.3, np.float32), "LEAKY_RELU"), (alphas().reshape(1, 1, C), "PRELU")):
        b = ModelBuilder()
        x = b.input("x", [1, 8, 8, C])
        b.output(b.op(Op.PRELU, [x, alpha], [[1, 8, 8, C]])[0])
        r = fuse_and_check(b.to_bytes())
        assert op_counts(r) == {want: 1}


def test_a_written_prelu_whose_relu_is_a_model_output_is_left():
    r = fuse_and_check(model(litert_form, alphas(), observe_relu=True))
    assert "PRELU" not in op_counts(r) and op_counts(r)["SUB"] == 1


def test_float16_alpha_behind_dequantize_stays_float16():
    alpha = alphas()

    def fp16_form(b, x, _):
        a = b.dequantize(b.const(alpha.astype(np.float16).reshape(1, 1, 1, -1), "alpha", dtype=TensorType.FLOAT16))
        return b.sub(b.relu(x), b.mul(b.mul(x, k(-1.0), activation="RELU"), a))

    r = fuse_and_check(model(fp16_form, None))
    assert op_counts(r) == {"CONV_2D": 2, "DEQUANTIZE": 1, "PRELU": 1}
    (prelu,) = ops_of(r, Op.PRELU)
    deq = r.model.main.producer(prelu.inputs[1])
    assert deq.code == Op.DEQUANTIZE and deq.inputs[0].dtype == TensorType.FLOAT16


def test_the_converters_prelu_networks_fuse_to_what_nobuco_writes_natively():
    """MTCNN-style network (PReLU per channel and one with one alpha): litert-torch
    writes each PReLU as 4 ops, onnx2tf's tf_converter backend as 5; nobuco writes
    PRELU itself. Fused, all three have the same ops (less litert-torch's NCHW
    input TRANSPOSE), all on LiteRT's GPU delegate (benchmarks.gpu_corpus)."""
    fused = {}
    for name in ("litert_torch/prelu", "onnx2tf/prelu_tfc", "nobuco/prelu"):
        counts = dict(op_counts(fuse_and_check((FIXTURES / f"{name}.tflite").read_bytes(), runs=1)))
        if name.startswith("litert_torch"):
            counts.pop("TRANSPOSE")
        fused[name] = counts
    assert fused["litert_torch/prelu"] == fused["onnx2tf/prelu_tfc"] == fused["nobuco/prelu"]
    assert fused["nobuco/prelu"]["PRELU"] == 3 and fused["nobuco/prelu"]["LEAKY_RELU"] == 1
    assert MANIFEST["litert_torch/prelu"]["num_operators"] == 24 and MANIFEST["onnx2tf/prelu_tfc"]["num_operators"] == 23
