"""drop-layout-island: an NCHW island (onnx2tf's squeeze-excite) runs in
NHWC, its transposes and size-1 reshapes gone, on builder models that pin
the rules and on onnx2tf's MobileNetV3."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.schema import BuiltinOptions, fb

from conftest import fuse_and_check, op_counts
from helpers import reasons

PASS = "drop-layout-island"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
R = np.random.default_rng(11)


def _mean(b, x, axes):
    out = [1 if i in axes else d for i, d in enumerate(x.shape)]
    return b.op(Op.MEAN, [x, np.array(axes, np.int32)], [out], fb.ReducerOptionsT(keepDims=True),
                BuiltinOptions.ReducerOptions)[0]


def squeeze_excite(c=8, hw=4, inside=None) -> bytes:
    """onnx2tf's form: conv (NHWC) -> TRANSPOSE to NCHW -> HARD_SWISH -> MEAN
    (2, 3) -> RESHAPE to NHWC -> 1x1 conv -> RESHAPE to NCHW -> MUL 1/6, ADD
    0.5 (per-channel constant too) -> RELU_0_TO_1 -> MUL with the NCHW tensor
    -> TRANSPOSE back -> conv."""
    b = ModelBuilder()
    x = b.input("x", [1, hw, hw, c])
    y = b.conv2d(x, R.standard_normal((c, 3, 3, c)).astype(np.float32))
    t = b.transpose(y, [0, 3, 1, 2])
    h = b.op(Op.HARD_SWISH, [t], [t.shape])[0]
    if inside == "conv":  # an op that is layout-bound sits in the island
        h = b.op(Op.L2_NORMALIZATION, [h], [h.shape], fb.L2NormOptionsT(), BuiltinOptions.L2NormOptions)[0]
    m = _mean(b, h, [2, 3])
    g = b.conv2d(b.reshape(m, [1, 1, 1, c]), R.standard_normal((c, 1, 1, c)).astype(np.float32))
    g = b.reshape(g, [1, c, 1, 1])
    g = b.add(b.mul(g, np.float32(1 / 6)), R.uniform(0.4, 0.6, (1, c, 1, 1)).astype(np.float32))
    g = b.op(Op.RELU_0_TO_1, [g], [g.shape])[0]
    z = b.mul(h, g)
    if inside == "observed":
        b.output(z)
    out = b.conv2d(b.transpose(z, [0, 2, 3, 1]), R.standard_normal((c, 1, 1, c)).astype(np.float32))
    b.output(out)
    return b.to_bytes()


def test_a_squeeze_excite_island_runs_in_nhwc_without_its_transposes_and_reshapes():
    r = fuse_and_check(squeeze_excite())
    counts = op_counts(r)
    assert "TRANSPOSE" not in counts and "RESHAPE" not in counts
    assert r.verification.max_abs_error < 1e-5
    (mean,) = [op for op in r.model.main.operators if op.code == Op.MEAN]
    assert mean.inputs[1].value().tolist() == [1, 2] and mean.outputs[0].shape == [1, 1, 1, 8]


@pytest.mark.parametrize("inside,why", [("conv", "not an op that runs the same in NHWC"),
                                        ("observed", "is a model output")])
def test_an_island_that_cannot_move_is_left_with_the_reason(inside, why):
    r = fuse_and_check(squeeze_excite(inside=inside))
    assert op_counts(r)["TRANSPOSE"] == 2
    assert any(why in s for s in reasons(r, PASS))


def test_onnx2tfs_mobilenetv3_loses_every_transpose_and_reshape():
    # (compose-linear-convs merges one linear projection more: 66; the islands' count is 67)
    r = fuse_and_check((FIXTURES / "onnx2tf" / "mobilenetv3.tflite").read_bytes(), runs=1,
                       disable=["compose-linear-convs"])
    counts = op_counts(r)
    assert "TRANSPOSE" not in counts and "RESHAPE" not in counts
    assert r.model.num_operators() == 67


def test_onnx2tfs_default_backend_reaches_its_tf_converter_twin():
    """The issue's target: onnx2tf's default (flatbuffer_direct) MobileNetV3,
    92 ops, fused to no more ops than the same ONNX through onnx2tf's
    tf_converter backend (67 as written, 66 fused)."""
    default = fuse_and_check((FIXTURES / "onnx2tf" / "mobilenetv3.tflite").read_bytes(), runs=1)
    twin = fuse_and_check((FIXTURES / "onnx2tf" / "mobilenetv3_tfc.tflite").read_bytes(), runs=1)
    assert default.report["input"]["operators"] > twin.report["input"]["operators"]
    assert default.model.num_operators() <= twin.report["input"]["operators"]
    assert default.model.num_operators() == twin.model.num_operators()


def _head(exit_kind: str, c=8, hw=4) -> bytes:
    """onnx2tf's classifier head: conv (NHWC) -> TRANSPOSE to NCHW -> an
    activation -> then ``exit_kind``: MEAN(2, 3, keep_dims) -> FULLY_CONNECTED
    ("fc"), MEAN(2, 3) without keep_dims ("mean"), a flattening RESHAPE of the
    pooled tensor ("reshape"), or a flattening FULLY_CONNECTED of the whole
    NCHW map, whose memory order the layout changes ("fc-map")."""
    b = ModelBuilder()
    x = b.input("x", [1, hw, hw, c])
    y = b.conv2d(x, R.standard_normal((c, 3, 3, c)).astype(np.float32))
    t = b.transpose(y, [0, 3, 1, 2])
    h = b.op(Op.LEAKY_RELU, [t], [t.shape], fb.LeakyReluOptionsT(alpha=0.1), BuiltinOptions.LeakyReluOptions)[0]
    w = R.standard_normal((3, c)).astype(np.float32)
    if exit_kind == "fc":
        out = b.fully_connected(_mean(b, h, [2, 3]), w, np.zeros(3, np.float32))
    elif exit_kind == "mean":
        out = b.op(Op.MEAN, [h, np.array([2, 3], np.int32)], [[1, c]], fb.ReducerOptionsT(keepDims=False),
                   BuiltinOptions.ReducerOptions)[0]
    elif exit_kind == "reshape":
        out = b.reshape(_mean(b, h, [2, 3]), [1, c])
    else:
        out = b.fully_connected(h, R.standard_normal((3, c * hw * hw)).astype(np.float32), np.zeros(3, np.float32))
    b.output(out)
    return b.to_bytes()


@pytest.mark.parametrize("exit_kind", ["fc", "mean", "reshape"])
def test_a_head_whose_pooled_output_has_no_layout_runs_in_nhwc_without_its_transpose(exit_kind):
    r = fuse_and_check(_head(exit_kind))
    assert "TRANSPOSE" not in op_counts(r)
    assert r.verification.max_abs_error < 1e-5
    (mean,) = [op for op in r.model.main.operators if op.code == Op.MEAN]
    assert mean.inputs[1].value().tolist() == [1, 2]


def test_a_flattening_reader_of_a_map_whose_memory_order_the_layout_changes_keeps_the_transpose():
    r = fuse_and_check(_head("fc-map"))
    assert op_counts(r)["TRANSPOSE"] == 1
    assert any("FULLY_CONNECTED is not an op that runs the same in NHWC" in s for s in reasons(r, PASS))


@pytest.mark.parametrize("name,before", [("onnx2tf/prelu", 13), ("onnx2tf/timm_efficientnet", 156)])
def test_onnx2tfs_classifier_heads_lose_their_last_transpose(name, before):
    """conv -> TRANSPOSE to NCHW -> activation -> MEAN(keep_dims) [1, C, 1, 1]
    -> FULLY_CONNECTED: the FULLY_CONNECTED reads the same bytes either way."""
    r = fuse_and_check((FIXTURES / f"{name}.tflite").read_bytes(), runs=1)
    assert r.report["input"]["operators"] == before
    assert "TRANSPOSE" not in op_counts(r)
