"""fuse-split-conv: a depthwise or grouped conv lowered to SPLIT -> N x conv ->
CONCATENATION comes back as one op, verified by the interpreter; every unsafe
variant is left byte-for-byte alone with the reason in the report.

Models come from two sources: :class:`ModelBuilder` in the naive-converter
form (exact control over every op), and the real TF 2.21 converter fed
``tf.split`` -> per-piece ``tf.nn.conv2d`` -> ``tf.concat`` graphs, whose op
counts after fusion must equal the converter's own for the network written
fused (Keras ``DepthwiseConv2D`` / ``Conv2D(groups=G)``).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

import tflite_fuser.passes
from tflite_fuser import fuse
from tflite_fuser.builder import ModelBuilder
from tflite_fuser.graph import Model
from tflite_fuser.pipeline import load, run_passes
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.schema import BuiltinOptions, TensorType, fb
from tflite_fuser.validate import unsorted_subgraphs

from conftest import fuse_and_check, op_counts

PASS = "fuse-split-conv"
needs_affine_passes = pytest.mark.skipif(
    not {"fold-affine", "fuse-activation"} <= set(tflite_fuser.passes.pass_names()),
    reason="per-branch / post-concat batch-norm needs the fold-affine and fuse-activation passes")


# ------------------------------------------------------------------ builders


def cut(b: ModelBuilder, x, sizes, form="split", quantization=None):
    """Cut ``x``'s channels into pieces of ``sizes`` the way ``form`` does."""
    kw = {"quantization": quantization} if quantization is not None else {}
    if form == "split":
        return b.split(x, len(sizes), **kw)
    if form == "split_v":
        return b.split_v(x, sizes, **kw)
    pieces, start = [], 0
    n, h, w, _ = x.shape
    for s in sizes:
        if form == "slice":
            pieces.append(b.slice(x, [0, 0, 0, start], [-1, -1, -1, s], **kw))
        else:
            pieces.append(b.strided_slice(x, [0, 0, 0, start], [n, h, w, start + s], **kw))
        start += s
    return pieces


def depthwise_filter(rng, c, m, k=3):
    """TFLite depthwise layout ``[1,k,k,C*M]``."""
    return rng.standard_normal((1, k, k, c * m)).astype(np.float32) * 0.5


def lowered_depthwise(b, x, w_dw, bias, *, stride=1, dilation=1, padding="SAME", activation=None,
                      form="split", branch="conv"):
    """A depthwise conv as a naive converter writes it: one CONV_2D
    ``[M,kh,kw,1]`` (or a DEPTHWISE_CONV_2D) per input channel, concatenated."""
    c = x.shape[3]
    m = w_dw.shape[3] // c
    ys = []
    for i, p in enumerate(cut(b, x, [1] * c, form)):
        w_i, b_i = w_dw[..., i * m:(i + 1) * m], bias[i * m:(i + 1) * m]
        if branch == "conv":
            ys.append(b.conv2d(p, w_i.transpose(3, 1, 2, 0), b_i, stride=stride, dilation=dilation,
                               padding=padding, activation=activation))
        else:
            ys.append(b.depthwise_conv2d(p, w_i, b_i, stride=stride, dilation=dilation, padding=padding,
                                         depth_multiplier=m, activation=activation))
    return b.concat(ys)


def lowered_grouped(b, x, w, bias, groups, *, stride=1, activation=None, form="split"):
    """A grouped conv (OHWI ``[Cout,kh,kw,Cin/G]``) as G CONV_2D on G pieces."""
    opg = w.shape[0] // groups
    pieces = cut(b, x, [x.shape[3] // groups] * groups, form)
    return b.concat([b.conv2d(p, w[g * opg:(g + 1) * opg], bias[g * opg:(g + 1) * opg], stride=stride,
                              activation=activation) for g, p in enumerate(pieces)])


def depthwise_then_pointwise(rng, c=3, m=1, cout=16, hw=16, **kw) -> bytes:
    b = ModelBuilder()
    x = b.input("x", [1, hw, hw, c])
    y = lowered_depthwise(b, x, depthwise_filter(rng, c, m), rng.standard_normal(c * m).astype(np.float32), **kw)
    y = b.conv2d(y, rng.standard_normal((cout, 1, 1, c * m)).astype(np.float32) * 0.3,
                 rng.standard_normal(cout).astype(np.float32))
    b.output(y)
    return b.to_bytes()


def fused_op(result, code=Op.DEPTHWISE_CONV_2D):
    ops = [op for op in result.model.main.operators if op.code == code]
    assert ops, op_counts(result)
    return ops[0]


def assert_sorted(result):
    assert unsorted_subgraphs(result.model) == []


def assert_left_alone(model_bytes: bytes, reason: str, same_bytes: bool = True):
    """Unchanged (to the byte for files our writer made), verified, and the
    report says why."""
    r = fuse_and_check(model_bytes, passes=[PASS])
    assert r.report["passes"] == [{"name": PASS, "rewrites": 0}]
    assert op_counts(r) == r.report["input"]["op_counts"]
    if same_bytes:
        assert r.model_bytes == model_bytes
    reasons = [s["reason"] for s in r.report["skipped"] if s["pass"] == PASS]
    assert any(reason in s for s in reasons), reasons
    return r


# ------------------------------------------------ the problem statement's network


def test_torch_depthwise_plus_pointwise_lowered_to_split_becomes_depthwise_and_matches_pytorch():
    """Conv2d(3,3,3,groups=3,padding=1) + Conv2d(3,16,1), depthwise part
    reaching TFLite as SPLIT + 3 CONV_2D + CONCATENATION."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    dw = torch.nn.Conv2d(3, 3, 3, groups=3, padding=1)
    pw = torch.nn.Conv2d(3, 16, 1)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = pw(dw(x)).numpy().transpose(0, 2, 3, 1)
    w_dw = dw.weight.detach().numpy().transpose(0, 2, 3, 1)  # OIHW -> OHWI [3,3,3,1]
    b = ModelBuilder()
    xt = b.input("x", [1, 32, 32, 3])
    ys = [b.conv2d(p, w_dw[c:c + 1], dw.bias.detach().numpy()[c:c + 1]) for c, p in enumerate(b.split(xt, 3))]
    y = b.conv2d(b.concat(ys), pw.weight.detach().numpy().transpose(0, 2, 3, 1), pw.bias.detach().numpy())
    b.output(y)
    src = b.to_bytes()
    assert load(src).op_counts() == {"CONV_2D": 4, "CONCATENATION": 1, "SPLIT": 1}

    r = fuse_and_check(src)
    assert op_counts(r) == {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1}
    assert r.report["passes"][[p["name"] for p in r.report["passes"]].index(PASS)]["rewrites"] == 1
    it = Interpreter(model_content=r.model_bytes)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x.numpy().transpose(0, 2, 3, 1).copy())
    it.invoke()
    got = it.get_tensor(it.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("c", [32, 256])
@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 2)])
def test_lowered_depthwise_becomes_one_depthwise_conv(c, m, stride, dilation, rng):
    r = fuse_and_check(depthwise_then_pointwise(rng, c, m, stride=stride, dilation=dilation))
    assert op_counts(r) == {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1}
    op = fused_op(r)
    o = op.options
    assert (o.depthMultiplier, o.strideH, o.strideW, o.dilationHFactor) == (m, stride, stride, dilation)
    assert op.inputs[1].shape == [1, 3, 3, c * m]
    assert op.opcode.version == (2 if dilation > 1 else 1)


def test_depthwise_filter_is_in_tflite_channel_order(rng):
    """Output channel c*M+m of the fused filter is branch c's filter row m."""
    c, m = 4, 3
    w = depthwise_filter(rng, c, m)
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, c])
    b.output(lowered_depthwise(b, x, w, np.arange(c * m, dtype=np.float32)))
    r = fuse_and_check(b.to_bytes())
    op = fused_op(r)
    np.testing.assert_array_equal(op.inputs[1].value(), w)
    np.testing.assert_array_equal(op.inputs[2].value(), np.arange(c * m, dtype=np.float32))


@pytest.mark.parametrize("form", ["split_v", "slice", "strided_slice"])
def test_every_way_of_cutting_the_channels_is_recognised(form, rng):
    r = fuse_and_check(depthwise_then_pointwise(rng, 8, 1, form=form))
    assert op_counts(r) == {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1}


def test_per_branch_fused_activation_is_kept(rng):
    r = fuse_and_check(depthwise_then_pointwise(rng, 16, 2, activation="RELU6"))
    assert op_counts(r) == {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1}
    assert fused_op(r).options.fusedActivationFunction == fb.ActivationFunctionType.RELU6


@pytest.mark.parametrize("branch_act,post,want", [
    (None, "relu", fb.ActivationFunctionType.RELU),
    (None, "relu6", fb.ActivationFunctionType.RELU6),
    ("RELU", "relu6", fb.ActivationFunctionType.RELU6),
    ("RELU6", "relu", fb.ActivationFunctionType.RELU6),
])
def test_activation_after_the_concatenation_is_fused(branch_act, post, want, rng):
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 8])
    y = lowered_depthwise(b, x, depthwise_filter(rng, 8, 1), rng.standard_normal(8).astype(np.float32),
                          activation=branch_act)
    b.output(getattr(b, post)(y))
    r = fuse_and_check(b.to_bytes())
    assert op_counts(r) == {"DEPTHWISE_CONV_2D": 1}
    assert fused_op(r).options.fusedActivationFunction == want


def test_activation_that_does_not_compose_stays_a_separate_op(rng):
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 4])
    y = lowered_depthwise(b, x, depthwise_filter(rng, 4, 1), np.zeros(4, np.float32), activation="RELU6")
    b.output(b.relu_n1_to_1(y))
    r = fuse_and_check(b.to_bytes())
    assert op_counts(r) == {"DEPTHWISE_CONV_2D": 1, "RELU_N1_TO_1": 1}


def test_depthwise_branches_per_group_become_one_depthwise_conv(rng):
    """Branches that are themselves DEPTHWISE_CONV_2D on pieces of several
    channels, unequal ones included: still one depthwise conv."""
    c, m, sizes = 8, 2, [1, 3, 4]
    w = depthwise_filter(rng, c, m)
    bias = rng.standard_normal(c * m).astype(np.float32)
    b = ModelBuilder()
    x = b.input("x", [1, 10, 10, c])
    ys, start = [], 0
    for p, s in zip(b.split_v(x, sizes), sizes):
        ys.append(b.depthwise_conv2d(p, w[..., start * m:(start + s) * m], bias[start * m:(start + s) * m],
                                     depth_multiplier=m, dilation=2))
        start += s
    b.output(b.concat(ys))
    r = fuse_and_check(b.to_bytes())
    assert op_counts(r) == {"DEPTHWISE_CONV_2D": 1}
    np.testing.assert_array_equal(fused_op(r).inputs[1].value(), w)


def test_lowered_depthwise_branches_are_recognised(rng):
    r = fuse_and_check(depthwise_then_pointwise(rng, 6, 2, branch="depthwise"))
    assert op_counts(r) == {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1}


def test_missing_branch_biases_are_created_as_zeros(rng):
    """The kernels require a bias, so a model without one cannot be verified:
    check the graph the pass writes."""
    b = ModelBuilder()
    x = b.input("x", [1, 6, 6, 4])
    ys = []
    for p in b.split(x, 4):
        y = b.conv2d(p, rng.standard_normal((2, 3, 3, 1)).astype(np.float32))
        b.sg.operators[-1].inputs[2] = None
        ys.append(y)
    b.output(b.concat(ys))
    model = load(b.to_bytes())
    counts, _ = run_passes(model, [PASS])
    assert counts == {PASS: 1}
    (op,) = model.main.operators
    np.testing.assert_array_equal(op.inputs[2].value(), np.zeros(8, np.float32))


# ------------------------------------------------------------------ grouped


@pytest.mark.parametrize("form", ["split", "slice"])
@pytest.mark.parametrize("cin,cout,groups,stride", [(16, 32, 4, 1), (12, 6, 3, 2), (64, 64, 2, 1)])
def test_lowered_grouped_conv_becomes_one_grouped_conv2d(cin, cout, groups, stride, form, rng):
    w = rng.standard_normal((cout, 3, 3, cin // groups)).astype(np.float32) * 0.3
    b = ModelBuilder()
    x = b.input("x", [1, 9, 9, cin])
    b.output(lowered_grouped(b, x, w, rng.standard_normal(cout).astype(np.float32), groups, stride=stride,
                            form=form))
    r = fuse_and_check(b.to_bytes())
    assert op_counts(r) == {"CONV_2D": 1}
    op = fused_op(r, Op.CONV_2D)
    assert op.opcode.version == 6
    np.testing.assert_array_equal(op.inputs[1].value(), w)


def test_branches_that_are_grouped_themselves_merge_into_one_grouped_conv(rng):
    """Two pieces of 8 channels, each a 2-group conv: one 4-group conv."""
    w = rng.standard_normal((16, 3, 3, 4)).astype(np.float32)
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 16])
    p0, p1 = b.split(x, 2)
    b.output(b.concat([b.conv2d(p0, w[:8], np.zeros(8, np.float32), version=6),
                       b.conv2d(p1, w[8:], np.ones(8, np.float32), version=6)]))
    r = fuse_and_check(b.to_bytes())
    assert op_counts(r) == {"CONV_2D": 1}
    assert fused_op(r, Op.CONV_2D).inputs[1].shape == [16, 3, 3, 4]


def resnext_split(rng, blocks=2, c=64, width=128, groups=32, hw=8) -> bytes:
    b = ModelBuilder()
    x = b.input("x", [1, hw, hw, c])
    h = x
    for _ in range(blocks):
        y = b.conv2d(h, rng.standard_normal((width, 1, 1, c)).astype(np.float32) * 0.15,
                     rng.standard_normal(width).astype(np.float32) * 0.1, activation="RELU")
        y = lowered_grouped(b, y, rng.standard_normal((width, 3, 3, width // groups)).astype(np.float32) * 0.3,
                            rng.standard_normal(width).astype(np.float32) * 0.1, groups, activation="RELU")
        y = b.conv2d(y, rng.standard_normal((c, 1, 1, width)).astype(np.float32) * 0.1,
                     np.zeros(c, np.float32))
        h = b.add(h, y, activation="RELU")
    b.output(h)
    return b.to_bytes()


def test_resnext_blocks_with_32_groups_in_split_form_come_back_as_grouped_conv2d(rng):
    r = fuse_and_check(resnext_split(rng))
    assert r.report["input"]["op_counts"]["CONV_2D"] == 2 * (32 + 2)
    assert op_counts(r) == {"CONV_2D": 6, "ADD": 2}
    grouped = [op for op in r.model.main.operators if op.code == Op.CONV_2D and op.inputs[1].shape[3] == 4]
    assert len(grouped) == 2 and all(op.opcode.version == 6 for op in grouped)


# -------------------------------------------------------- order and topology


def test_branches_in_any_order_with_unrelated_ops_between_them(rng):
    """The op list: SPLIT, branches reversed, unrelated ops interleaved, and
    the concatenation last; the rewrite keeps the list topologically sorted."""
    c = 6
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, c])
    side = b.relu(x)
    y = lowered_depthwise(b, x, depthwise_filter(rng, c, 2), rng.standard_normal(2 * c).astype(np.float32))
    side2 = b.relu6(side)
    b.output(b.add(y, b.conv2d(side2, rng.standard_normal((2 * c, 1, 1, c)).astype(np.float32))))
    ops = b.sg.operators
    split = next(op for op in ops if op.code == Op.SPLIT)
    convs = [op for op in ops if op.code == Op.CONV_2D and op.inputs[0] in split.outputs]
    rest = [op for op in ops if op is not split and op not in convs]
    relu, concat, relu6, pw, add = rest
    order = [split, convs[5], relu, convs[3], convs[4], relu6, convs[0], pw, convs[2], convs[1], concat, add]
    b.sg.operators = order
    src = b.to_bytes()
    assert unsorted_subgraphs(load(src)) == []
    r = fuse_and_check(src)
    assert op_counts(r) == {"ADD": 1, "CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "RELU": 1, "RELU6": 1}
    assert_sorted(r)


def test_two_lowered_convs_in_a_row_both_fuse(rng):
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 4])
    y = lowered_depthwise(b, x, depthwise_filter(rng, 4, 2), np.zeros(8, np.float32), activation="RELU")
    y = lowered_depthwise(b, y, depthwise_filter(rng, 8, 1), np.zeros(8, np.float32), form="slice")
    b.output(y)
    r = fuse_and_check(b.to_bytes())
    assert op_counts(r) == {"DEPTHWISE_CONV_2D": 2}
    assert_sorted(r)


# ------------------------------------------------------------------ quantized


def qparams(scale, zp, dim=0):
    q = fb.QuantizationParametersT()
    q.scale = [float(s) for s in np.atleast_1d(scale)]
    q.zeroPoint = [int(z) for z in np.atleast_1d(zp)]
    q.quantizedDimension = dim
    return q


def quantized_lowered_depthwise(rng, c=8, m=2, filter_scales=None, out_scales=None, post_relu=False,
                                dtype=TensorType.INT8) -> bytes:
    """int8 (or uint8) SPLIT -> per-channel CONV_2D -> CONCATENATION.
    ``filter_scales`` (one per branch) defaults to identical, ``out_scales`` likewise."""
    u8 = dtype == TensorType.UINT8
    in_q, out_s, out_z, w_z = (0.03, 123 if u8 else -5), 0.04, (130 if u8 else 3), (127 if u8 else 0)
    filter_scales = filter_scales or [0.01] * c
    out_scales = out_scales or [out_s] * c
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, c], dtype, qparams(*in_q))
    ys = []
    for i, p in enumerate(b.split(x, c, quantization=qparams(*in_q))):
        wq = (rng.integers(0, 256, (m, 3, 3, 1)).astype(np.uint8) if u8
              else rng.integers(-127, 128, (m, 3, 3, 1)).astype(np.int8))
        w = b.const(wq, "w", dtype, qparams(filter_scales[i], w_z))
        bias = b.const(rng.integers(-300, 300, m).astype(np.int32), "b", TensorType.INT32,
                       qparams(in_q[0] * filter_scales[i], 0))
        ys.append(b.conv2d(p, w, bias, version=1 if u8 else 3, quantization=qparams(out_scales[i], out_z)))
    y = b.concat(ys, quantization=qparams(out_s, out_z))
    if post_relu:
        y = b.relu(y, quantization=qparams(out_s, out_z))
    b.output(y)
    return b.to_bytes()


def test_int8_branches_with_identical_parameters_become_one_int8_depthwise_conv(rng):
    r = fuse_and_check(quantized_lowered_depthwise(rng, post_relu=True))
    assert op_counts(r) == {"DEPTHWISE_CONV_2D": 1}
    op = fused_op(r)
    assert op.opcode.version == 3 and op.inputs[1].dtype == TensorType.INT8
    assert len(op.inputs[1].quant_params()[0]) == 1
    assert op.options.fusedActivationFunction == fb.ActivationFunctionType.RELU
    assert r.verification.max_abs_error == 0


def test_int8_branches_with_different_filter_scales_merge_into_per_channel_scales(rng):
    scales = list(rng.uniform(0.004, 0.02, 8))
    r = fuse_and_check(quantized_lowered_depthwise(rng, filter_scales=scales))
    op = fused_op(r)
    s, zp, dim = op.inputs[1].quant_params()
    np.testing.assert_allclose(s, np.repeat(scales, 2))  # channel c*M+m has branch c's scale
    assert dim == 3 and not zp.any()
    assert r.verification.max_abs_error == 0


def test_int8_lowered_grouped_conv_is_left_alone(rng):
    """The optimized int8 grouped CONV_2D rounds one step apart from per-group
    CONV_2D (tests/test_grouped_conv_runtime.py): the split stays."""
    groups, cin, cout = 4, 16, 16
    in_q, out_q = (0.02, 1), (0.05, -2)
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, cin], TensorType.INT8, qparams(*in_q))
    ys = []
    for p in b.split(x, groups, quantization=qparams(*in_q)):
        w = b.const(rng.integers(-127, 128, (cout // groups, 3, 3, cin // groups)).astype(np.int8), "w",
                    TensorType.INT8, qparams(0.01, 0))
        bias = b.const(rng.integers(-300, 300, cout // groups).astype(np.int32), "b", TensorType.INT32,
                       qparams(0.02 * 0.01, 0))
        ys.append(b.conv2d(p, w, bias, version=3, quantization=qparams(*out_q)))
    b.output(b.concat(ys, quantization=qparams(*out_q)))
    assert_left_alone(b.to_bytes(), "int8 grouped CONV_2D")


def fp16_lowered_depthwise(rng, c=8, m=2):
    """Float16 weights behind one DEQUANTIZE each, as the TF converter's
    float16 quantization stores them."""
    w = depthwise_filter(rng, c, m).astype(np.float16)
    bias = rng.standard_normal(c * m).astype(np.float16)
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, c])
    ys = []
    for i, p in enumerate(b.split(x, c)):
        wf = b.dequantize(b.const(w[..., i * m:(i + 1) * m].transpose(3, 1, 2, 0).copy()), version=3)
        bf = b.dequantize(b.const(bias[i * m:(i + 1) * m].copy()), version=3)
        ys.append(b.conv2d(p, wf, bf))
    b.output(b.concat(ys))
    return b.to_bytes(), w, bias


def test_float16_weights_behind_dequantize_stay_float16(rng):
    src, w, bias = fp16_lowered_depthwise(rng)
    assert load(src).op_counts()["DEQUANTIZE"] == 16
    r = fuse_and_check(src)
    assert op_counts(r) == {"DEQUANTIZE": 2, "DEPTHWISE_CONV_2D": 1}
    op = fused_op(r)
    filt, b_ = (r.model.main.producer(t).inputs[0] for t in op.inputs[1:])
    assert filt.dtype == b_.dtype == TensorType.FLOAT16
    np.testing.assert_array_equal(filt.value(), w)
    np.testing.assert_array_equal(b_.value(), bias)
    assert_sorted(r)


def test_float16_weights_are_stored_as_float32_when_asked(rng):
    src, w, _ = fp16_lowered_depthwise(rng)
    r = fuse_and_check(src, fp16_weights="float32")
    assert op_counts(r) == {"DEPTHWISE_CONV_2D": 1}
    filt = fused_op(r).inputs[1]
    assert filt.dtype == TensorType.FLOAT32
    np.testing.assert_array_equal(filt.value(), w.astype(np.float32))


def test_a_float16_filter_shared_with_another_op_keeps_its_dequantize(rng):
    """One DEQUANTIZE output feeds both branches and a conv outside the
    pattern: it stays for that conv, the fused filter gets its own."""
    w = rng.standard_normal((1, 3, 3, 1)).astype(np.float16)
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 2])
    z = b.input("z", [1, 8, 8, 1])
    wf = b.dequantize(b.const(w), version=3)
    p0, p1 = b.split(x, 2)
    y = b.concat([b.conv2d(p0, wf, np.zeros(1, np.float32)), b.conv2d(p1, wf, np.ones(1, np.float32))])
    b.output(y, b.conv2d(z, wf))
    r = fuse_and_check(b.to_bytes())
    assert op_counts(r) == {"DEQUANTIZE": 2, "CONV_2D": 1, "DEPTHWISE_CONV_2D": 1}
    assert_sorted(r)


# ----------------------------------------------------------- negative cases


def _two_branch_model(rng, *, a=None, b_=None, sizes=(1, 1), c=2, split_axis=3, order=(0, 1), form=None,
                      other=None, hw=(8, 8)):
    """SPLIT x[1,H,W,c] into two pieces, conv each with options ``a``/``b_``,
    concatenate in ``order``. ``other`` names an extra reader to add."""
    a, b_ = dict(a or {}), dict(b_ or {})
    b = ModelBuilder()
    x = b.input("x", [1, *hw, c])
    if split_axis != 3:
        pieces = b.split(x, 2, axis=split_axis)
    elif form or sizes[0] != sizes[1]:
        pieces = cut(b, x, list(sizes), form or "split_v")
    else:
        pieces = b.split(x, 2)
    ys = []
    for p, opts in zip(pieces, (a, b_)):
        k = opts.pop("k", 3)
        if opts.pop("op", "conv") == "pool":
            ys.append(b.op(Op.AVERAGE_POOL_2D, [p], [list(p.shape)],
                           fb.Pool2DOptionsT(padding=0, strideW=1, strideH=1, filterWidth=1, filterHeight=1),
                           BuiltinOptions.Pool2DOptions)[0])
            continue
        ys.append(b.conv2d(p, rng.standard_normal((2, k, k, p.shape[3])).astype(np.float32),
                           rng.standard_normal(2).astype(np.float32), **opts))
    y = b.concat([ys[i] for i in order])
    b.output(y)
    if other == "piece":
        b.output(b.relu(pieces[0]))
    elif other == "branch":
        b.output(b.relu(ys[1]))
    elif other == "branch-output":
        b.output(ys[0])
    return b.to_bytes()


def test_piece_read_by_another_op_is_left_alone(rng):
    assert_left_alone(_two_branch_model(rng, other="piece"), "piece: intermediate")


def test_branch_output_read_by_another_op_is_left_alone(rng):
    assert_left_alone(_two_branch_model(rng, other="branch"), "has 2 consumers")


def test_branch_output_that_is_a_model_output_is_left_alone(rng):
    assert_left_alone(_two_branch_model(rng, other="branch-output"), "is a model output")


@pytest.mark.parametrize("a,b_,reason", [
    # Each pair still yields equal output shapes, so the original model runs.
    ({"stride": (1, 1)}, {"stride": (2, 1)}, "branches differ in stride"),  # along H == 1
    ({"padding": "SAME", "k": 1}, {"padding": "VALID", "k": 1}, "branches differ in padding"),
    ({"dilation": 1}, {"dilation": 2}, "branches differ in dilation"),
    ({"activation": None}, {"activation": "RELU"}, "branches differ in activation"),
    ({"k": 3}, {"k": 5}, "branches differ in kernel size"),
])
def test_branches_that_differ_in_an_attribute_are_left_alone(a, b_, reason, rng):
    assert_left_alone(_two_branch_model(rng, a=a, b_=b_, hw=(1, 8)), reason)


def test_branches_that_differ_in_op_type_are_left_alone(rng):
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 2])
    p0, p1 = b.split(x, 2)
    b.output(b.concat([b.conv2d(p0, np.ones((1, 3, 3, 1), np.float32)),
                       b.depthwise_conv2d(p1, np.ones((1, 3, 3, 1), np.float32))]))
    assert_left_alone(b.to_bytes(), "branches mix CONV_2D and DEPTHWISE_CONV_2D")


def test_concatenation_in_another_order_than_the_split_is_left_alone(rng):
    assert_left_alone(_two_branch_model(rng, order=(1, 0)), "concatenation order does not match the split order")


def test_slices_concatenated_in_another_order_are_left_alone(rng):
    assert_left_alone(_two_branch_model(rng, order=(1, 0), form="slice"),
                      "concatenation order does not match the split order")


def test_split_on_another_axis_than_channels_is_left_alone(rng):
    assert_left_alone(_two_branch_model(rng, c=3, split_axis=1), "not on the channel axis")


def test_pieces_of_unequal_size_are_left_alone(rng):
    assert_left_alone(_two_branch_model(rng, c=4, sizes=(1, 3)), "pieces are of unequal size")


def test_a_branch_that_is_not_a_conv_is_left_alone(rng):
    assert_left_alone(_two_branch_model(rng, b_={"op": "pool"}), "not a conv")


def test_uint8_branches_whose_outputs_have_different_parameters_are_left_alone(rng):
    """The concatenation requantizes one branch (uint8 only: the int8 kernel
    refuses inputs whose parameters differ from its output's)."""
    src = quantized_lowered_depthwise(rng, c=4, m=1, out_scales=[0.04, 0.04, 0.05, 0.04],
                                      dtype=TensorType.UINT8)
    assert_left_alone(src, "branch output parameters differ")


def test_uint8_lowered_depthwise_is_left_alone(rng):
    """Same maths, but the legacy uint8 CONV_2D and DEPTHWISE_CONV_2D kernels
    round their requantization one step apart: not bit-exact, so not done."""
    assert_left_alone(quantized_lowered_depthwise(rng, c=4, m=2, dtype=TensorType.UINT8),
                      "uint8: the interpreter's uint8 CONV_2D and DEPTHWISE_CONV_2D round differently")


def test_int8_pieces_with_their_own_parameters_are_left_alone(rng):
    """A piece whose parameters differ from its source: each branch reads its
    bytes on another scale, which one depthwise conv cannot."""
    in_q, out_q = (0.03, -5), (0.04, 3)
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 2], TensorType.INT8, qparams(*in_q))
    pieces = b.split(x, 2, quantization=qparams(*in_q))
    pieces[1].quantization = qparams(0.06, -5)
    ys = []
    for p in pieces:
        s_in = p.quant_params()[0][0]
        w = b.const(rng.integers(-127, 128, (1, 3, 3, 1)).astype(np.int8), "w", TensorType.INT8, qparams(0.01, 0))
        bias = b.const(np.zeros(1, np.int32), "b", TensorType.INT32, qparams(s_in * 0.01, 0))
        ys.append(b.conv2d(p, w, bias, version=3, quantization=qparams(*out_q)))
    b.output(b.concat(ys, quantization=qparams(*out_q)))
    assert_left_alone(b.to_bytes(), "a piece is requantized by the split")


def test_uint8_branches_with_different_filter_scales_are_left_alone(rng):
    in_q, out_q = (0.03, 128), (0.04, 120)
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 2], TensorType.UINT8, qparams(*in_q))
    ys = []
    for i, p in enumerate(b.split(x, 2, quantization=qparams(*in_q))):
        s = [0.01, 0.02][i]
        w = b.const(rng.integers(0, 256, (1, 3, 3, 1)).astype(np.uint8), "w", TensorType.UINT8, qparams(s, 127))
        bias = b.const(np.zeros(1, np.int32), "b", TensorType.INT32, qparams(in_q[0] * s, 0))
        ys.append(b.conv2d(p, w, bias, quantization=qparams(*out_q)))
    b.output(b.concat(ys, quantization=qparams(*out_q)))
    assert_left_alone(b.to_bytes(), "cannot be merged exactly")


def test_plain_concatenation_of_convs_is_not_a_candidate(rng):
    """Inception-style: convs of the whole tensor, concatenated. Silent."""
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 3])
    b.output(b.concat([b.conv2d(x, np.ones((2, 1, 1, 3), np.float32)),
                       b.conv2d(x, np.ones((2, 3, 3, 3), np.float32))]))
    src = b.to_bytes()
    r = fuse_and_check(src, passes=[PASS])
    assert r.model_bytes == src and r.report["skipped"] == []


# ---------------------------------------------------------------- real converter


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


def convert_fn(tf, fn, shape) -> bytes:
    cf = tf.function(fn).get_concrete_function(tf.TensorSpec(shape, tf.float32))
    return tf.lite.TFLiteConverter.from_concrete_functions([cf]).convert()


def convert_keras(tf, inputs, outputs) -> bytes:
    return tf.lite.TFLiteConverter.from_keras_model(tf.keras.Model(inputs, outputs)).convert()


def run_model(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    it = Interpreter(model_content=model_bytes)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


@pytest.mark.parametrize("m,stride,dilation,slicing", [(1, 1, 1, "split"), (2, 2, 1, "split"),
                                                       (1, 1, 2, "strided_slice")])
def test_tf_converted_split_depthwise_fuses_to_what_the_converter_gives_keras(tf, m, stride, dilation,
                                                                              slicing, rng):
    c, hw = 16, 12
    kernel = rng.standard_normal((3, 3, c, m)).astype(np.float32)
    bias = rng.standard_normal(c * m).astype(np.float32)

    def split_form(x):
        pieces = tf.split(x, c, axis=3) if slicing == "split" else [x[:, :, :, i:i + 1] for i in range(c)]
        ys = [tf.nn.relu6(tf.nn.conv2d(p, kernel[:, :, i:i + 1, :], stride, "SAME", dilations=dilation)
                          + bias[i * m:(i + 1) * m]) for i, p in enumerate(pieces)]
        return tf.concat(ys, 3)

    src = convert_fn(tf, split_form, [1, hw, hw, c])
    assert load(src).op_counts()["CONV_2D"] == c
    inp = tf.keras.Input((hw, hw, c), batch_size=1)
    layer = tf.keras.layers.DepthwiseConv2D(3, stride, "same", depth_multiplier=m, dilation_rate=dilation,
                                            activation="relu6")
    out = layer(inp)
    layer.set_weights([kernel, bias])
    keras = convert_keras(tf, inp, out)

    r = fuse_and_check(src)
    assert op_counts(r) == load(keras).op_counts() == {"DEPTHWISE_CONV_2D": 1}
    xv = rng.uniform(-1, 1, (1, hw, hw, c)).astype(np.float32)
    np.testing.assert_allclose(run_model(r.model_bytes, xv), run_model(keras, xv), rtol=1e-5, atol=1e-5)


def test_tf_converted_split_grouped_conv_fuses_to_what_the_converter_gives_keras(tf, rng):
    cin, cout, groups, hw = 32, 64, 8, 10
    kernel = rng.standard_normal((3, 3, cin // groups, cout)).astype(np.float32) * 0.3
    bias = rng.standard_normal(cout).astype(np.float32)
    opg = cout // groups

    def split_form(x):
        ys = [tf.nn.conv2d(p, kernel[..., g * opg:(g + 1) * opg], 1, "SAME") + bias[g * opg:(g + 1) * opg]
              for g, p in enumerate(tf.split(x, groups, axis=3))]
        return tf.concat(ys, 3)

    src = convert_fn(tf, split_form, [1, hw, hw, cin])
    inp = tf.keras.Input((hw, hw, cin), batch_size=1)
    layer = tf.keras.layers.Conv2D(cout, 3, padding="same", groups=groups)
    out = layer(inp)
    layer.set_weights([kernel, bias])
    keras = convert_keras(tf, inp, out)

    r = fuse_and_check(src)
    assert op_counts(r) == load(keras).op_counts() == {"CONV_2D": 1}
    assert fused_op(r, Op.CONV_2D).opcode.version == 6
    xv = rng.uniform(-1, 1, (1, hw, hw, cin)).astype(np.float32)
    np.testing.assert_allclose(run_model(r.model_bytes, xv), run_model(keras, xv), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("quant", ["int8", "float16"])
@pytest.mark.parametrize("kind", ["depthwise", "grouped"])
def test_tf_quantized_split_conv_fuses(tf, quant, kind, rng):
    """The converter's int8 (per-channel filter scales that differ branch to
    branch) and float16 (a DEQUANTIZE per weight) forms of the split pattern;
    int8 grouped is the one refused (not bit-exact on the interpreter)."""
    c, hw = 16, 8
    per_piece, groups, outs = (1, 16, 2) if kind == "depthwise" else (4, 4, 8)
    kernel = rng.standard_normal((3, 3, per_piece, groups * outs)).astype(np.float32)
    bias = rng.standard_normal(groups * outs).astype(np.float32)

    def split_form(x):
        return tf.concat([tf.nn.relu(tf.nn.conv2d(p, kernel[..., g * outs:(g + 1) * outs], 1, "SAME")
                                     + bias[g * outs:(g + 1) * outs])
                          for g, p in enumerate(tf.split(x, groups, axis=3))], 3)

    cf = tf.function(split_form).get_concrete_function(tf.TensorSpec([1, hw, hw, c], tf.float32))
    conv = tf.lite.TFLiteConverter.from_concrete_functions([cf])
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if quant == "int8":
        data = [rng.uniform(-1, 1, (1, hw, hw, c)).astype(np.float32) for _ in range(16)]
        conv.representative_dataset = lambda: ([d] for d in data)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = conv.inference_output_type = tf.int8
    else:
        conv.target_spec.supported_types = [tf.float16]
    src = conv.convert()
    assert load(src).op_counts()["CONV_2D"] == groups
    if quant == "int8" and kind == "grouped":  # not bit-exact on the interpreter: refused
        assert_left_alone(src, "int8 grouped CONV_2D", same_bytes=False)
        return
    r = fuse_and_check(src)
    fused = "DEPTHWISE_CONV_2D" if kind == "depthwise" else "CONV_2D"
    assert op_counts(r) == ({fused: 1} if quant == "int8" else {fused: 1, "DEQUANTIZE": 2})
    if quant == "int8":
        assert r.verification.max_abs_error == 0


# ------------------------------------------------------------ MobileNetV2-style


#: (expansion t, output channels c, repeats n, first stride s), as in MobileNetV2
#: but narrow, so that the split form of 13 inverted residual blocks converts fast.
SMALL_MBV2 = [(1, 8, 1, 1), (2, 8, 2, 2), (2, 16, 3, 2), (2, 16, 4, 2), (2, 24, 3, 1)]


def _bn(rng, n):
    gamma, beta = rng.uniform(0.7, 1.3, n), rng.uniform(-0.1, 0.1, n)
    mean, var = rng.uniform(-0.1, 0.1, n), rng.uniform(0.7, 1.3, n)
    return [a.astype(np.float32) for a in (gamma, beta, mean, var)]


def _mbv2_weights(rng, blocks, c0=8):
    """Weights of a small MobileNetV2, shared by the fused and the split form."""
    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    layers = [("stem", he((3, 3, 3, c0), 27), _bn(rng, c0))]
    cin = c0
    for t, c, n, s in blocks:
        for i in range(n):
            e = cin * t
            blk = {"stride": s if i == 0 else 1, "cin": cin, "cout": c}
            if t != 1:
                blk["expand"] = (he((1, 1, cin, e), cin), _bn(rng, e))
            blk["dw"] = (he((3, 3, e, 1), 9), _bn(rng, e))
            blk["project"] = (he((1, 1, e, c), e), _bn(rng, c))
            layers.append(("block", blk))
            cin = c
    layers.append(("head", (rng.standard_normal((cin, 10)) * 0.1).astype(np.float32)))
    return layers


def _mbv2_keras(tf, layers, hw):
    L = tf.keras.layers

    def conv_bn(h, layer, w_bn, act):
        w, bn = w_bn
        h = layer(h)
        layer.set_weights([w])
        norm = L.BatchNormalization(epsilon=1e-3)
        h = norm(h)
        norm.set_weights(bn)
        return L.ReLU(6.0)(h) if act else h

    inp = tf.keras.Input((hw, hw, 3), batch_size=1)
    _, w, bn = layers[0]
    h = conv_bn(inp, L.Conv2D(w.shape[3], 3, 2, "same", use_bias=False), (w, bn), True)
    for kind, blk in layers[1:-1]:
        x = h
        if "expand" in blk:
            h = conv_bn(h, L.Conv2D(blk["expand"][0].shape[3], 1, use_bias=False), blk["expand"], True)
        h = conv_bn(h, L.DepthwiseConv2D(3, blk["stride"], "same", use_bias=False), blk["dw"], True)
        h = conv_bn(h, L.Conv2D(blk["cout"], 1, use_bias=False), blk["project"], False)
        if blk["stride"] == 1 and blk["cin"] == blk["cout"]:
            h = L.Add()([x, h])
    h = L.GlobalAveragePooling2D()(h)
    dense = L.Dense(10, use_bias=False)
    out = dense(h)
    dense.set_weights([layers[-1][1]])
    return convert_keras(tf, inp, out)


def _mbv2_split(tf, layers, hw, bn_after_concat):
    """The same network with every depthwise conv as tf.split -> one conv per
    channel -> tf.concat; its BN either per branch (the converter folds it
    there) or after the concatenation (it cannot: MUL + ADD stay)."""
    def affine(bn):
        gamma, beta, mean, var = (a.astype(np.float64) for a in bn)
        scale = gamma / np.sqrt(var + 1e-3)
        return scale.astype(np.float32), (beta - mean * scale).astype(np.float32)

    def conv_bn(h, w, bn, act, stride=1):
        s, t = affine(bn)
        h = tf.nn.conv2d(h, w, stride, "SAME") * s + t
        return tf.nn.relu6(h) if act else h

    def fn(x):
        _, w, bn = layers[0]
        h = conv_bn(x, w, bn, True, 2)
        for kind, blk in layers[1:-1]:
            inp = h
            if "expand" in blk:
                h = conv_bn(h, *blk["expand"], True)
            w, bn = blk["dw"]
            s, t = affine(bn)
            pieces = tf.split(h, w.shape[2], axis=3)
            if bn_after_concat:
                h = tf.concat([tf.nn.conv2d(p, w[:, :, i:i + 1, :], blk["stride"], "SAME")
                               for i, p in enumerate(pieces)], 3)
                h = tf.nn.relu6(h * s + t)
            else:
                h = tf.concat([tf.nn.relu6(tf.nn.conv2d(p, w[:, :, i:i + 1, :], blk["stride"], "SAME")
                                           * s[i] + t[i]) for i, p in enumerate(pieces)], 3)
            h = conv_bn(h, *blk["project"], False)
            if blk["stride"] == 1 and blk["cin"] == blk["cout"]:
                h = h + inp
        h = tf.reduce_mean(h, axis=[1, 2])
        return tf.matmul(h, layers[-1][1])

    return convert_fn(tf, fn, [1, hw, hw, 3])


def _check_mbv2(tf, rng, bn_after_concat):
    hw = 32
    layers = _mbv2_weights(rng, SMALL_MBV2)
    assert len(layers) - 2 >= 10
    keras = _mbv2_keras(tf, layers, hw)
    src = _mbv2_split(tf, layers, hw, bn_after_concat)
    before = load(src).op_counts()
    assert before["SPLIT"] == before["CONCATENATION"] == len(layers) - 2
    r = fuse_and_check(src)
    want = load(keras).op_counts()
    assert want["DEPTHWISE_CONV_2D"] == len(layers) - 2
    assert op_counts(r) == want
    xv = rng.uniform(-1, 1, (1, hw, hw, 3)).astype(np.float32)
    ref = run_model(keras, xv)
    np.testing.assert_allclose(run_model(r.model_bytes, xv), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_mobilenetv2_with_split_depthwise_and_per_branch_bn_fuses_to_the_keras_op_counts(tf, rng):
    _check_mbv2(tf, rng, bn_after_concat=False)


@needs_affine_passes
def test_mobilenetv2_with_split_depthwise_and_unfolded_bn_fuses_to_the_keras_op_counts(tf, rng):
    _check_mbv2(tf, rng, bn_after_concat=True)


@needs_affine_passes
@pytest.mark.parametrize("c,m", [(3, 1), (32, 2), (256, 1)])
def test_per_branch_batchnorm_and_relu_are_folded_then_fused(c, m, rng):
    """Each branch: CONV_2D -> MUL -> ADD -> RELU (a naive converter's BN+ReLU)."""
    w = depthwise_filter(rng, c, m)
    b = ModelBuilder()
    x = b.input("x", [1, 10, 10, c])
    ys = []
    for i, p in enumerate(b.split(x, c)):
        y = b.conv2d(p, w[..., i * m:(i + 1) * m].transpose(3, 1, 2, 0), np.zeros(m, np.float32))
        y = b.add(b.mul(y, rng.uniform(0.5, 1.5, m).astype(np.float32)),
                  rng.uniform(-0.2, 0.2, m).astype(np.float32))
        ys.append(b.relu(y))
    y = b.concat(ys)
    b.output(b.conv2d(y, rng.standard_normal((16, 1, 1, c * m)).astype(np.float32), np.zeros(16, np.float32)))
    r = fuse_and_check(b.to_bytes())
    assert op_counts(r) == {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1}
    assert fused_op(r).options.fusedActivationFunction == fb.ActivationFunctionType.RELU


# --------------------------------------------------------------------- scale


def make_divisible(v, d=8):
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


MBV2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
        (6, 320, 1, 1)]


def mobilenet_v2_split_builder(rng, alpha=0.35, size=96) -> bytes:
    """MobileNetV2 (BN folded, ReLU6 fused, as a converter would leave them)
    with all 17 depthwise convs in split form: one CONV_2D per channel."""
    def w(*shape):
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    def bias(n):
        return rng.uniform(-0.1, 0.1, n).astype(np.float32)

    b = ModelBuilder()
    x = b.input("image", [1, size, size, 3])
    cin = make_divisible(32 * alpha)
    h = b.conv2d(x, w(cin, 3, 3, 3), bias(cin), stride=2, activation="RELU6")
    for t, c, n, s in MBV2:
        cout = make_divisible(c * alpha)
        for i in range(n):
            inp, e, stride = h, cin * t, (s if i == 0 else 1)
            if t != 1:
                h = b.conv2d(h, w(e, 1, 1, cin), bias(e), activation="RELU6")
            h = lowered_depthwise(b, h, w(1, 3, 3, e) * np.sqrt(9 / 2), bias(e), stride=stride,
                                  activation="RELU6")
            h = b.conv2d(h, w(cout, 1, 1, e), bias(cout))
            if stride == 1 and cin == cout:
                h = b.add(inp, h)
            cin = cout
    h = b.conv2d(h, w(1280, 1, 1, cin), bias(1280), activation="RELU6")
    h = b.op(Op.MEAN, [h, np.asarray([1, 2], np.int32)], [[1, 1280]], fb.ReducerOptionsT(keepDims=False),
             BuiltinOptions.ReducerOptions)[0]
    b.output(b.fully_connected(h, w(10, 1280) * 0.1, bias(10)))
    return b.to_bytes()


def test_mobilenetv2_035_96_with_2643_conv2d_fuses_back_to_17_depthwise(rng):
    src = mobilenet_v2_split_builder(rng)
    before = load(src).op_counts()
    assert before["CONV_2D"] == 2643 and sum(before.values()) == 2689
    t0 = time.perf_counter()
    r = fuse_and_check(src, runs=1)
    print(f"\nMobileNetV2 0.35/96 split form: {sum(before.values())} ops -> {r.report['output']['operators']}; "
          f"passes {r.report['seconds']['passes']:.2f} s, total {time.perf_counter() - t0:.2f} s")
    assert op_counts(r) == {"CONV_2D": 35, "DEPTHWISE_CONV_2D": 17, "ADD": 10, "FULLY_CONNECTED": 1,
                            "MEAN": 1}
    assert r.report["passes"][[p["name"] for p in r.report["passes"]].index(PASS)]["rewrites"] == 17


def test_grouped_conv_can_be_turned_off_while_depthwise_still_merges():
    """--no-grouped-conv: the ResNeXt fixture's G=32 convs stay split (with a
    reason), a depthwise split in the same run is still merged."""
    from conftest import FIXTURES

    resnext = FIXTURES / "tf" / "resnext.tflite"
    off = fuse_and_check(resnext.read_bytes(), grouped_conv=False)
    assert op_counts(off)["CONCATENATION"] == 3
    assert any("--no-grouped-conv" in s["reason"] for s in off.report["skipped"])
    on = fuse_and_check(resnext.read_bytes())
    assert "CONCATENATION" not in op_counts(on)
    dw = fuse_and_check((FIXTURES / "tf" / "net3.tflite").read_bytes(), grouped_conv=False)
    assert op_counts(dw).get("DEPTHWISE_CONV_2D") == 1
