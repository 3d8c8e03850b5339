"""merge-parallel-convs: summed convolutions of one input (and the input
itself) become one conv: RepVGG, MobileOne and ACNet training forms, from
builder models that pin each rule and from the real converted fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.graph import quantization
from tflite_fuser.schema import ActivationFunctionType as Act
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.schema import TensorType

from conftest import fuse_and_check, op_counts
from helpers import ops_of, reasons

PASS = "merge-parallel-convs"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
R = np.random.default_rng(7)


def _w(cout, kh, kw, cin):
    return R.standard_normal((cout, kh, kw, cin)).astype(np.float32) * 0.3


def _b(c):
    return R.standard_normal(c).astype(np.float32) * 0.1


def repvgg_block(c=8, hw=8, identity=True, extra=None, act="RELU") -> bytes:
    """3x3 + 1x1 (+ the input through its BN: x * s + t) summed, then RELU."""
    b = ModelBuilder()
    x = b.input("x", [1, hw, hw, c])
    y = b.add(b.conv2d(x, _w(c, 3, 3, c), _b(c)), b.conv2d(x, _w(c, 1, 1, c), _b(c)))
    if extra == "observed":  # the partial sum of the two convs is a model output too
        b.output(y)
    if identity:
        y = b.add(y, b.add(b.mul(x, R.uniform(0.5, 1.5, c).astype(np.float32)), _b(c)))
    b.output(b.relu(y) if act == "RELU" else y)
    return b.to_bytes()


def test_a_repvgg_block_becomes_one_3x3_conv_with_its_relu():
    r = fuse_and_check(repvgg_block())
    assert op_counts(r) == {"CONV_2D": 1}
    (conv,) = ops_of(r, Op.CONV_2D)
    assert conv.inputs[1].shape == [8, 3, 3, 8] and conv.options.fusedActivationFunction == Act.RELU
    assert r.verification.max_abs_error < 1e-5


def test_acnet_3x3_1x3_3x1_become_one_3x3_and_subtracted_branches_enter_with_their_sign():
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 4])
    a = b.conv2d(x, _w(6, 3, 3, 4), _b(6))
    h = b.conv2d(x, _w(6, 1, 3, 4), _b(6))
    v = b.conv2d(x, _w(6, 3, 1, 4), _b(6))
    b.output(b.sub(b.add(a, h), v))
    r = fuse_and_check(b.to_bytes())
    assert op_counts(r) == {"CONV_2D": 1}
    assert r.verification.max_abs_error < 1e-5


def test_a_1x3_and_a_3x1_alone_are_left_since_the_merged_3x3_would_cost_more():
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 4])
    b.output(b.add(b.conv2d(x, _w(6, 1, 3, 4), _b(6)), b.conv2d(x, _w(6, 3, 1, 4), _b(6))))
    r = fuse_and_check(b.to_bytes())
    assert r.report["nothing_to_fuse"]
    assert any("no branch's kernel covers" in s for s in reasons(r, PASS))


def test_same_padding_at_stride_2_on_an_even_size_puts_the_1x1_in_the_corner_and_merges_exactly():
    """TF's SAME pads a stride-2 3x3 (0, 1) on an even size and a 1x1 (0, 0):
    the 1x1 reads the 3x3 window's top-left pixel, so it embeds there."""
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 4])
    b.output(b.add(b.conv2d(x, _w(6, 3, 3, 4), _b(6), stride=2),
                   b.conv2d(x, _w(6, 1, 1, 4), _b(6), stride=2)))
    r = fuse_and_check(b.to_bytes())
    assert op_counts(r) == {"CONV_2D": 1}
    assert r.verification.max_abs_error < 1e-5


def test_windows_that_do_not_align_are_left_with_the_reason():
    """A 3x3 padded 2 rows before (PAD then VALID) and a SAME 3x3 (1 before)
    give outputs of one shape that read windows one row apart."""
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 4])
    shifted = b.conv2d(b.pad(x, [[0, 0], [2, 0], [2, 0], [0, 0]]), _w(6, 3, 3, 4), _b(6), padding="VALID")
    b.output(b.add(shifted, b.conv2d(x, _w(6, 3, 3, 4), _b(6))))
    r = fuse_and_check(b.to_bytes())
    assert r.report["nothing_to_fuse"]
    assert any("does not sit inside" in s for s in reasons(r, PASS))


def test_pytorch_padding_at_stride_2_as_pad_then_valid_aligns_and_merges_keeping_the_pad():
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 4])
    big = b.conv2d(b.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), _w(6, 3, 3, 4), _b(6), stride=2, padding="VALID")
    b.output(b.add(big, b.conv2d(x, _w(6, 1, 1, 4), _b(6), stride=2, padding="VALID")))
    r = fuse_and_check(b.to_bytes())
    assert op_counts(r) == {"PAD": 1, "CONV_2D": 1}
    assert r.verification.max_abs_error < 1e-5


def test_depthwise_branches_and_the_identity_become_one_depthwise_conv():
    b = ModelBuilder()
    c = 8
    x = b.input("x", [1, 8, 8, c])
    ys = [b.depthwise_conv2d(x, R.standard_normal((1, 3, 3, c)).astype(np.float32), _b(c)) for _ in range(4)]
    ys.append(b.depthwise_conv2d(x, R.standard_normal((1, 1, 1, c)).astype(np.float32), _b(c)))
    y = ys[0]
    for t in ys[1:]:
        y = b.add(y, t)
    b.output(b.relu(b.add(y, b.mul(x, R.uniform(0.5, 1.5, c).astype(np.float32)))))
    r = fuse_and_check(b.to_bytes())
    assert op_counts(r) == {"DEPTHWISE_CONV_2D": 1}
    assert r.verification.max_abs_error < 1e-5


def test_a_residual_add_of_a_conv_of_another_tensor_is_no_parallel_sum():
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 4])
    h = b.relu(b.conv2d(x, _w(4, 3, 3, 4), _b(4)))
    b.output(b.add(b.conv2d(h, _w(4, 3, 3, 4), _b(4)), x))
    r = fuse_and_check(b.to_bytes())
    assert op_counts(r).get("ADD") == 1 and op_counts(r)["CONV_2D"] == 2
    assert not reasons(r, PASS)  # not a candidate: nothing said


def test_a_partial_sum_that_is_a_model_output_stays_and_only_the_convs_under_it_merge():
    """The observed sum of the two convs must still be computed: it becomes the
    merged conv's output, and the identity branch stays an ADD after it."""
    r = fuse_and_check(repvgg_block(extra="observed"))
    assert op_counts(r)["CONV_2D"] == 1 and op_counts(r)["ADD"] == 2


def test_int8_branches_are_left_since_one_sum_requantizes_differently():
    b = ModelBuilder()
    q = quantization(0.05, 0)
    x = b.input("x", [1, 8, 8, 4], TensorType.INT8, quantization(1 / 128, 0))

    def conv(k):
        w = b.const(R.integers(-127, 128, (4, k, k, 4)).astype(np.int8), "w", quantization=quantization(0.01, 0))
        bias = b.const(np.zeros(4, np.int32), "b", quantization=quantization(0.01 / 128, 0))
        return b.conv2d(x, w, bias, dtype=TensorType.INT8, quantization=q, version=3)

    b.output(b.add(conv(3), conv(1), quantization=q))
    r = fuse_and_check(b.to_bytes())
    assert op_counts(r)["CONV_2D"] == 2
    assert any("in quantized INT8" in s for s in reasons(r, PASS))


def test_float16_activations_are_left_and_the_reason_says_float16_not_int8():
    """onnx2tf's float16 output computes every activation in float16: each
    branch rounds its own output there, as in int8, but the reason names the
    model's arithmetic."""
    r = fuse_and_check((FIXTURES / "onnx2tf/acnet_fp16.tflite").read_bytes(), runs=1)
    assert op_counts(r)["CONV_2D"] == MANIFEST["onnx2tf/acnet_fp16"]["op_counts"]["CONV_2D"]
    why = reasons(r, PASS)
    assert why and all("in float16:" in s for s in why)


MANIFEST = {e["name"]: e for e in json.loads((FIXTURES / "manifest.json").read_text())["fixtures"]}
#: what a route adds around any model: litert-torch's NCHW input TRANSPOSE (the model's interface)
BOUNDARY = {"litert_torch": "TRANSPOSE"}


#: every training-form fixture with its ideal: our RepBlock networks through four
#: routes (route (a)'s ideal, written fused); timm's own RepVGG and MobileOne and
#: DiverseBranchBlock's depthwise form through two (their ideal: the deploy form,
#: timm's reparameterize_model or the module's own, through the same converter)
TRAINING_FORMS = [f"{route}/{m}" for m in ("repvgg", "acnet", "mobileone", "repconv")
                  for route in ("tf", "naive", "litert_torch", "onnx2tf")
                  if (route, m) != ("onnx2tf", "repconv")] + [
                  f"{route}/{m}" for m in ("timm_repvgg", "timm_mobileone", "dbb_dw")
                  for route in ("litert_torch", "onnx2tf")]


@pytest.mark.parametrize("name", TRAINING_FORMS)
def test_each_training_form_fixture_reaches_its_deploy_forms_op_count(name):
    r = fuse_and_check((FIXTURES / f"{name}.tflite").read_bytes(), runs=1)
    ideal_entry = MANIFEST[MANIFEST[name]["ideal"][:-len(".tflite")]]
    ideal = dict(ideal_entry["op_counts"])
    got = dict(op_counts(r))
    extra = BOUNDARY.get(name.split("/")[0])
    if extra and ideal_entry["route"] == "ideal":  # a deploy twin has the route's boundary op too
        got[extra] = got.get(extra, 0) - 1
        got = {k: v for k, v in got.items() if v}
    # onnx2tf flattens before its classifier with a RESHAPE that FULLY_CONNECTED does itself
    # (drop-reshape-before-fc): the fused model may have one op fewer than its deploy twin
    if ideal_entry["route"] == "onnx2tf" and got.get("RESHAPE", 0) < ideal.get("RESHAPE", 0):
        ideal["RESHAPE"] -= 1
        ideal = {k: v for k, v in ideal.items() if v}
    assert got == ideal


def test_float16_weights_behind_dequantize_merge_and_stay_float16():
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 4])

    def conv(k):
        w = b.dequantize(b.const(_w(4, k, k, 4).astype(np.float16), "w", dtype=TensorType.FLOAT16))
        return b.conv2d(x, w, b.dequantize(b.const(_b(4).astype(np.float16), "b", dtype=TensorType.FLOAT16)))

    b.output(b.relu(b.add(conv(3), conv(1))))
    r = fuse_and_check(b.to_bytes())
    assert op_counts(r)["CONV_2D"] == 1 and "ADD" not in op_counts(r)
    (conv_op,) = ops_of(r, Op.CONV_2D)
    (deq,) = [op for op in r.model.main.operators if op.code == Op.DEQUANTIZE and op.outputs[0] is conv_op.inputs[1]]
    assert deq.inputs[0].dtype == TensorType.FLOAT16


# ------------------------------------------------------------ average-pool branches


def _pool_block(padding="VALID", pad=1, pool_stride=1, depthwise=True, c=8, hw=8) -> bytes:
    """DiverseBranchBlock's depthwise form: 3x3 and 1x1 convs and a 3x3
    average pool (through a zero PAD, PyTorch's count_include_pad), each with
    its BN, summed, then RELU."""
    b = ModelBuilder()
    x = b.input("x", [1, hw, hw, c])
    if depthwise:
        k3 = b.depthwise_conv2d(x, R.standard_normal((1, 3, 3, c)).astype(np.float32), _b(c))
        k1 = b.depthwise_conv2d(x, R.standard_normal((1, 1, 1, c)).astype(np.float32), _b(c))
    else:
        k3, k1 = b.conv2d(x, _w(c, 3, 3, c), _b(c)), b.conv2d(x, _w(c, 1, 1, c), _b(c))
    src = b.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]]) if pad else x
    pool = b.average_pool2d(src, 3, pool_stride, padding)
    bn = b.add(b.mul(pool, R.uniform(0.5, 1.5, c).astype(np.float32)), _b(c))
    b.output(b.relu(b.add(b.add(k3, k1), bn)))
    return b.to_bytes()


@pytest.mark.parametrize("depthwise", [True, False], ids=["depthwise", "dense"])
def test_a_zero_padded_valid_average_pool_branch_becomes_a_uniform_kernel_of_the_merged_conv(depthwise):
    r = fuse_and_check(_pool_block(depthwise=depthwise))
    assert op_counts(r) == {"DEPTHWISE_CONV_2D" if depthwise else "CONV_2D": 1}
    assert r.verification.max_abs_error < 1e-5


def test_a_same_padded_average_pool_is_left_since_its_edge_windows_divide_by_fewer_inputs():
    r = fuse_and_check(_pool_block(padding="SAME", pad=0))
    assert op_counts(r)["AVERAGE_POOL_2D"] == 1
    assert any("divides each edge window by the count of real inputs" in s for s in reasons(r, PASS))


def test_an_average_pool_with_another_stride_than_the_conv_is_left_with_the_reason():
    """A 1x1 pool of stride 2 and a VALID 3x3 conv of stride 1 both map 4x4 to
    2x2, but the pool reads every other pixel: no tap of one stride-1 conv."""
    b = ModelBuilder()
    x = b.input("x", [1, 4, 4, 4])
    b.output(b.add(b.conv2d(x, _w(4, 3, 3, 4), _b(4), padding="VALID"), b.average_pool2d(x, 1, 2)))
    r = fuse_and_check(b.to_bytes())
    assert op_counts(r) == {"ADD": 1, "AVERAGE_POOL_2D": 1, "CONV_2D": 1}
    assert any("the pool strides (2, 2) where the convs stride (1, 1)" in s for s in reasons(r, PASS))
