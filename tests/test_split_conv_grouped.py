"""fuse-split-conv, grouped: G convs on G channel groups come back as one
grouped CONV_2D, whatever the order of the ops around them; and the user can
keep grouped convs split while depthwise ones still merge."""

from __future__ import annotations

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.pipeline import load
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.validate import unsorted_subgraphs

from conftest import fuse_and_check, op_counts
from split_conv_models import assert_sorted, depthwise_filter, fused_op, lowered_depthwise, lowered_grouped


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
    # the unrelated RELU -> RELU6 is one RELU6 (merge-clamps)
    assert op_counts(r) == {"ADD": 1, "CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "RELU6": 1}
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
