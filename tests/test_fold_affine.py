"""fold-affine: constant MUL/ADD/SUB/DIV after a conv/depthwise/FC/transpose
conv fold into its weights; every rewrite is verified by the interpreter.

Models are built op by op (the "naive converter" form: TF's own converter
folds these patterns itself, so it cannot produce them), including from a real
PyTorch Conv2d -> BatchNorm2d -> ReLU whose output the fused model must match.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from torch import nn

from conftest import FIXTURES, fuse_and_check, op_counts
from tflite_fuser import fuse
from tflite_fuser.builder import ModelBuilder
from tflite_fuser.schema import ActivationFunctionType as Act
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.schema import TensorType

from helpers import ops_of, reasons, run_tflite

PASS = "fold-affine"


# ------------------------------------------------------------- from PyTorch


def randomize_bn(bn: nn.Module, gen: torch.Generator) -> None:
    """Non-identity statistics, so that a fold that drops a term shows."""
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
        bn.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
        bn.weight.copy_(torch.rand(c, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=gen) * 0.5)


def bn_scale_shift(bn: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
    shift = (bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
    return scale.astype(np.float32), shift.astype(np.float32)


def naive_conv_bn_act(module: nn.Sequential, act: str, kind: str, in_shape) -> bytes:
    """What a one-op-per-op converter emits for ``module`` (conv/linear, BN,
    activation): the op, MUL, ADD, then the activation as its own op."""
    conv, bn = module[0], module[1]
    b = ModelBuilder()
    x = b.input("x", in_shape)
    w = conv.weight.detach().numpy()
    bias = conv.bias.detach().numpy().astype(np.float32)
    if kind == "conv":  # OIHW -> OHWI
        y = b.conv2d(x, w.transpose(0, 2, 3, 1).copy(), bias, padding="SAME")
    elif kind == "depthwise":  # [C,1,kh,kw] -> [1,kh,kw,C]
        y = b.depthwise_conv2d(x, w[:, 0].transpose(1, 2, 0)[None].copy(), bias, padding="SAME")
    else:
        y = b.fully_connected(x, w.copy(), bias)
    scale, shift = bn_scale_shift(bn)
    y = b.add(b.mul(y, scale), shift)
    y = {"relu": b.relu, "relu6": b.relu6, "max0": lambda t: b.maximum(t, np.float32(0))}[act](y)
    b.output(y)
    return b.to_bytes()


def torch_reference(module: nn.Module, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        if x_nhwc.ndim == 4:
            return module(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
        return module(torch.from_numpy(x_nhwc)).numpy()


NET1 = {  # name: (module factory, kind, input shape NHWC, activation, fused op)
    "relu": (lambda: nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()),
             "conv", [1, 16, 16, 3], "relu", Op.CONV_2D),
    "relu6": (lambda: nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6()),
              "conv", [1, 16, 16, 3], "relu6", Op.CONV_2D),
    "max0": (lambda: nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()),
             "conv", [1, 16, 16, 3], "max0", Op.CONV_2D),
    "depthwise": (lambda: nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU()),
                  "depthwise", [1, 16, 16, 8], "relu", Op.DEPTHWISE_CONV_2D),
    "fully_connected": (lambda: nn.Sequential(nn.Linear(48, 16), nn.BatchNorm1d(16), nn.ReLU()),
                        "fc", [1, 48], "relu", Op.FULLY_CONNECTED),
}
EXPECTED_ACT = {"relu": Act.RELU, "relu6": Act.RELU6, "max0": Act.RELU}


@pytest.mark.parametrize("variant", list(NET1))
def test_pytorch_conv_bn_act_becomes_one_op_matching_pytorch(variant):
    factory, kind, shape, act, code = NET1[variant]
    torch.manual_seed(0)
    module = factory().eval()
    randomize_bn(module[1], torch.Generator().manual_seed(1))
    result = fuse_and_check(naive_conv_bn_act(module, act, kind, shape), rtol=1e-5, atol=1e-5)

    assert op_counts(result) == {ops_of(result, code)[0].type_name: 1}
    (op,) = ops_of(result, code)
    assert op.options.fusedActivationFunction == EXPECTED_ACT[act]
    x = np.random.default_rng(3).uniform(-1, 1, shape).astype(np.float32)
    got, want = run_tflite(result.model_bytes, x), torch_reference(module, x)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.skipif(not (FIXTURES / "naive" / "net1.tflite").exists(), reason="fixture not generated")
@pytest.mark.parametrize("name", ["net1", "net1_relu6", "net1_max0", "net1_textbook", "net1_fc", "net1_fc_textbook"])
def test_naive_converter_fixtures_fuse_to_one_op(name):
    path = FIXTURES / "naive" / f"{name}.tflite"
    if not path.exists():
        pytest.skip("fixture not generated")
    result = fuse_and_check(path.read_bytes(), rtol=1e-5, atol=1e-5)
    assert sum(op_counts(result).values()) == 1


# ---------------------------------------------------------------- pattern forms


@pytest.fixture
def w():
    return np.random.default_rng(0).normal(size=(8, 3, 3, 4)).astype(np.float32)


def conv_model(w, consts, in_shape=(1, 6, 6, 4), bias=True, **conv_kw):
    """x -> CONV_2D -> (op, const) ... -> output."""
    b = ModelBuilder()
    x = b.input("x", list(in_shape))
    y = b.conv2d(x, w, np.linspace(-1, 1, w.shape[0]).astype(np.float32) if bias else None, **conv_kw)
    for op, c, *rest in consts:
        kw = rest[0] if rest else {}
        y = getattr(b, op)(y, np.asarray(c, np.float32), **kw) if not kw.get("const_first") else \
            getattr(b, op)(np.asarray(c, np.float32), y)
    b.output(y)
    return b.to_bytes()


@pytest.mark.parametrize("shape", [(8,), (1, 1, 1, 8), (), (1,)])
def test_per_channel_and_scalar_constants_fold(w, shape):
    r = np.random.default_rng(1)
    c1, c2 = r.uniform(0.5, 2, shape), r.normal(size=shape)
    result = fuse_and_check(conv_model(w, [("mul", c1), ("add", c2)]))
    assert op_counts(result) == {"CONV_2D": 1}


def test_textbook_batch_norm_sub_div_mul_add_folds_into_one_conv(w):
    r = np.random.default_rng(2)
    mean, std, gamma, beta = r.normal(size=8), r.uniform(0.5, 2, 8), r.normal(size=8), r.normal(size=8)
    result = fuse_and_check(conv_model(w, [("sub", mean), ("div", std), ("mul", gamma), ("add", beta)]))
    assert op_counts(result) == {"CONV_2D": 1}
    assert result.report["passes"][[p["name"] for p in result.report["passes"]].index("fold-affine")]["rewrites"] == 1


def test_constant_minus_conv_output_folds(w):
    c = np.arange(8, dtype=np.float32)
    result = fuse_and_check(conv_model(w, [("sub", c, {"const_first": True})]))
    assert op_counts(result) == {"CONV_2D": 1}


def test_add_of_constant_carrying_relu_folds_and_hands_its_activation_to_the_conv(w):
    result = fuse_and_check(conv_model(w, [("mul", np.full(8, 0.5)), ("add", np.ones(8), {"activation": "RELU6"})]))
    assert op_counts(result) == {"CONV_2D": 1}
    assert ops_of(result, Op.CONV_2D)[0].options.fusedActivationFunction == Act.RELU6


def test_add_only_chain_keeps_the_filter_tensor(w):
    result = fuse_and_check(conv_model(w, [("add", np.ones(8))]))
    (conv,) = ops_of(result, Op.CONV_2D)
    np.testing.assert_array_equal(conv.inputs[1].value(), w)
    assert conv.inputs[1].name.startswith("const")  # the original tensor, not a folded copy


def test_depthwise_with_depth_multiplier_folds_per_output_channel():
    r = np.random.default_rng(4)
    b = ModelBuilder()
    x = b.input("x", [1, 7, 7, 3])
    y = b.depthwise_conv2d(x, r.normal(size=(1, 3, 3, 6)).astype(np.float32), depth_multiplier=2)
    y = b.add(b.mul(y, r.uniform(0.5, 2, 6)), r.normal(size=6))
    b.output(y)
    assert op_counts(fuse_and_check(b.to_bytes())) == {"DEPTHWISE_CONV_2D": 1}


def test_fully_connected_without_bias_gets_one():
    r = np.random.default_rng(5)
    b = ModelBuilder()
    x = b.input("x", [2, 12])
    y = b.fully_connected(x, r.normal(size=(5, 12)).astype(np.float32), None)
    y = b.add(b.mul(y, r.uniform(0.5, 2, (1, 5))), r.normal(size=(1, 5)))
    b.output(y)
    result = fuse_and_check(b.to_bytes())
    assert op_counts(result) == {"FULLY_CONNECTED": 1}
    (fc,) = ops_of(result, Op.FULLY_CONNECTED)
    assert fc.inputs[2] is not None and fc.inputs[2].shape == [5]


def test_transpose_conv_without_bias_gets_one_and_a_new_enough_version():
    r = np.random.default_rng(6)
    b = ModelBuilder()
    x = b.input("x", [1, 4, 4, 3])
    y = b.transpose_conv(x, r.normal(size=(5, 3, 3, 3)).astype(np.float32), [1, 8, 8, 5], stride=2, version=1)
    y = b.add(b.mul(y, r.uniform(0.5, 2, 5)), r.normal(size=5), activation="RELU")
    b.output(y)
    result = fuse_and_check(b.to_bytes())
    assert op_counts(result) == {"TRANSPOSE_CONV": 1}
    (tc,) = ops_of(result, Op.TRANSPOSE_CONV)
    assert len(tc.inputs) == 4 and tc.inputs[3] is not None
    assert tc.opcode.version >= 4 and tc.options.fusedActivationFunction == Act.RELU


def test_filter_shared_with_another_conv_is_left_intact_for_it(w):
    b = ModelBuilder()
    x = b.input("x", [1, 6, 6, 4])
    wt = b.const(w, "shared_filter")
    y1 = b.mul(b.conv2d(x, wt), np.linspace(0.5, 2, 8))
    y2 = b.conv2d(x, wt)
    b.output(y1, y2)
    result = fuse_and_check(b.to_bytes())
    assert op_counts(result) == {"CONV_2D": 2}
    filters = [op.inputs[1] for op in ops_of(result, Op.CONV_2D)]
    assert filters[0] is not filters[1]
    assert any(np.array_equal(f.value(), w) for f in filters)


def test_chain_stops_at_the_first_op_that_cannot_fold_and_names_it(w):
    spatial = np.random.default_rng(7).normal(size=(1, 6, 6, 8))
    result = fuse_and_check(conv_model(w, [("mul", np.full(8, 2.0)), ("add", spatial)]))
    assert op_counts(result) == {"ADD": 1, "CONV_2D": 1}
    assert any("varies over more than the channel axis" in r for r in reasons(result, PASS))


# ------------------------------------------------------------------- negatives


def assert_unchanged(result, before: dict):
    assert op_counts(result) == before


def test_second_consumer_of_conv_output_blocks_the_fold(w):
    b = ModelBuilder()
    x = b.input("x", [1, 6, 6, 4])
    y = b.conv2d(x, w)
    b.output(b.mul(y, np.full(8, 2.0, np.float32)), b.relu6(y))
    result = fuse_and_check(b.to_bytes())
    assert op_counts(result)["MUL"] == 1
    assert any("has 2 consumers" in r for r in reasons(result, PASS))


def test_intermediate_that_is_a_model_output_blocks_the_fold(w):
    b = ModelBuilder()
    x = b.input("x", [1, 6, 6, 4])
    y = b.conv2d(x, w)
    b.output(y, b.mul(y, np.full(8, 2.0, np.float32)))
    result = fuse_and_check(b.to_bytes())
    assert op_counts(result) == {"CONV_2D": 1, "MUL": 1}
    assert any("is a model output" in r for r in reasons(result, PASS))


def test_spatially_varying_constant_is_left_alone(w):
    spatial = np.random.default_rng(8).normal(size=(1, 6, 6, 1))
    result = fuse_and_check(conv_model(w, [("mul", spatial)]))
    assert op_counts(result) == {"CONV_2D": 1, "MUL": 1}
    assert any("varies over more than the channel axis" in r for r in reasons(result, PASS))


def test_a_mul_by_a_computed_tensor_is_no_candidate_and_not_reported(w):
    """``conv(x) * s`` with a runtime ``s`` (a gate, a residual) is not a batch
    norm left apart: nothing to fold, and nothing "left alone" to report."""
    b = ModelBuilder()
    x = b.input("x", [1, 6, 6, 4])
    s = b.input("s", [8])
    b.output(b.mul(b.conv2d(x, w), s))
    result = fuse_and_check(b.to_bytes())
    assert op_counts(result) == {"CONV_2D": 1, "MUL": 1}
    assert reasons(result, PASS) == []


def test_conv_with_its_own_activation_does_not_take_a_mul_after_it(w):
    result = fuse_and_check(conv_model(w, [("mul", np.full(8, 2.0))], activation="RELU"))
    assert op_counts(result) == {"CONV_2D": 1, "MUL": 1}
    assert any("already has a fused activation" in r for r in reasons(result, PASS))


def test_division_by_a_constant_with_zeros_is_refused(w):
    c = np.ones(8)
    c[3] = 0
    result = fuse(conv_model(w, [("div", c)]), runs=1, verify_output=False)
    assert op_counts(result) == {"CONV_2D": 1, "DIV": 1}
    assert any("divisor has zeros" in r for r in reasons(result, PASS))


def test_fold_that_would_overflow_float32_is_refused(w):
    result = fuse_and_check(conv_model(w * 1e10, [("mul", np.full(8, 1e30))]), input_range=(0, 0))
    assert op_counts(result) == {"CONV_2D": 1, "MUL": 1}
    assert any("overflow float32" in r for r in reasons(result, PASS))


# ------------------------------------------------------------ float16 weights


def fp16_model(w, scale=None, shift=None, share_dequantize=False):
    """Conv -> MUL -> (ADD) -> RELU with every float constant stored as
    float16 behind DEQUANTIZE, as TF's float16 quantization (and the naive
    fp16 converter) store them."""
    r = np.random.default_rng(9)
    b = ModelBuilder()
    x = b.input("x", [1, 6, 6, 4])
    f16 = lambda a: b.dequantize(b.const(np.asarray(a, np.float16)))  # noqa: E731
    wt = f16(w)
    y = b.conv2d(x, wt, f16(r.normal(size=8)))
    y = b.mul(y, f16(r.uniform(0.5, 2, 8) if scale is None else scale))
    if shift is not False:
        y = b.add(y, f16(r.normal(size=8) if shift is None else shift))
    outs = [b.relu(y)]
    if share_dequantize:
        outs.append(b.conv2d(x, wt, f16(np.zeros(8))))
    b.output(*outs)
    return b.to_bytes()


def fp16_tensors(result):
    return [t for t in result.model.main.tensors if t.dtype == TensorType.FLOAT16 and t.is_constant]


POW2 = np.array([0.5, 2, 4, 0.25, 1, 8, 0.125, 2], np.float32)  # float16 * 2^k is exact


def test_fp16_weights_fold_into_fp16_when_the_result_is_exactly_representable(w):
    result = fuse_and_check(fp16_model(w, POW2, shift=False), rtol=1e-5, atol=1e-5)
    assert op_counts(result) == {"CONV_2D": 1, "DEQUANTIZE": 2}
    (conv,) = ops_of(result, Op.CONV_2D)
    assert conv.options.fusedActivationFunction == Act.RELU
    assert sorted(t.shape[0] for t in fp16_tensors(result)) == [8, 8]  # filter [8,3,3,4] and bias [8]
    assert result.report["output"]["bytes"] <= result.report["input"]["bytes"]
    assert result.verification.max_abs_error == 0


def test_fp16_weights_are_re_rounded_by_default_and_verified_on_the_float16_grid(w):
    data = fp16_model(w)
    result = fuse_and_check(data)
    assert op_counts(result) == {"CONV_2D": 1, "DEQUANTIZE": 2}
    assert result.report["output"]["bytes"] <= result.report["input"]["bytes"]
    assert "rounded back to float16" in result.report["notes"][0]
    assert "(range)" in result.verification.outputs[0].tolerance


def test_fp16_weights_exact_mode_folds_only_what_float16_holds(w):
    result = fuse_and_check(fp16_model(w), fp16_weights="exact")
    assert op_counts(result) == {"ADD": 1, "CONV_2D": 1, "DEQUANTIZE": 4, "MUL": 1}  # RELU went into the ADD
    assert any("not representable in float16" in r and "float32" in r for r in reasons(result, PASS))
    assert result.report["notes"] == []


def test_fp16_weights_become_float32_on_request_and_then_verify_tightly(w):
    result = fuse_and_check(fp16_model(w), fp16_weights="float32", rtol=1e-5, atol=1e-5)
    assert op_counts(result) == {"CONV_2D": 1}
    (conv,) = ops_of(result, Op.CONV_2D)
    assert conv.inputs[1].dtype == TensorType.FLOAT32 and conv.inputs[1].is_constant


def test_fp16_re_rounding_when_allowed_stays_within_the_float16_grid(w):
    """The opt-in a pipeline with a float16-aware tolerance can use: fold,
    store float16 again, and verify within the float16 grid (2^-11)."""
    from tflite_fuser.passes import PassOptions
    from tflite_fuser.pipeline import load, run_passes
    from tflite_fuser.verifier import verify
    from tflite_fuser.writer import write_model

    data = fp16_model(w)
    model = load(data)
    run_passes(model, options=PassOptions(fp16_weights="keep"))
    assert model.op_counts() == {"CONV_2D": 1, "DEQUANTIZE": 2}
    out = write_model(model)
    assert len(out) <= len(data)
    assert verify(data, out, rtol=2e-3, atol=2e-3, runs=2).ok


def test_fp16_dequantize_shared_with_another_conv_stays_for_it(w):
    result = fuse_and_check(fp16_model(w, POW2, shift=False, share_dequantize=True), rtol=1e-5, atol=1e-5)
    # the shared filter DEQUANTIZE stays for the second conv, a new one feeds the first
    assert op_counts(result) == {"CONV_2D": 2, "DEQUANTIZE": 4}
    filters = [op.inputs[1] for op in ops_of(result, Op.CONV_2D)]
    assert filters[0] is not filters[1]


def test_fp16_overflow_is_refused_unless_float32_storage_is_asked_for(w):
    b = ModelBuilder()
    x = b.input("x", [1, 6, 6, 4])
    y = b.conv2d(x, b.dequantize(b.const((w * 100).astype(np.float16))))
    b.output(b.mul(y, np.full(8, 1024.0, np.float32)))
    data = b.to_bytes()
    kept = fuse_and_check(data)
    assert op_counts(kept) == {"CONV_2D": 1, "DEQUANTIZE": 1, "MUL": 1}
    assert any("overflow float16" in r for r in reasons(kept, PASS))
    widened = fuse_and_check(data, fp16_weights="float32")
    assert op_counts(widened) == {"CONV_2D": 1}
