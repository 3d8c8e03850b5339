"""fuse-hard-swish: hard-swish written out of elementwise ops, in every order
converters write it, becomes one HARD_SWISH; chains that only look like it
stay, with the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.clamp_algebra import HARD_SIGMOID, Clamped, NotAFunctionOfX, hard_sigmoid_multiple

from conftest import fuse_and_check, op_counts
from helpers import reasons, run_tflite

PASS = "fuse-hard-swish"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SIXTH = np.float32(1 / 6)


def _conv_then(gate, product_scale=None, shape=(1, 8, 8, 4), observe_gate=False, dtype_const=np.float32):
    """conv -> x; y = x * gate(x) [* product_scale]."""
    r = np.random.default_rng(3)
    b = ModelBuilder()
    inp = b.input("in", list(shape))
    c = shape[-1]
    x = b.conv2d(inp, r.standard_normal((c, 3, 3, c)).astype(np.float32) * 2, r.standard_normal(c).astype(np.float32))
    g = gate(b, x, lambda v: np.array(v, dtype_const))
    y = b.mul(x, g)
    if product_scale is not None:
        y = product_scale(b, y)
    b.output(y)
    if observe_gate:
        b.output(g)
    return b.to_bytes()


GATES = {
    # nobuco: MUL 1/6, ADD 0.5, MINIMUM 1, RELU; then MUL x
    "nobuco": (lambda b, x, k: b.relu(b.minimum(b.add(b.mul(x, k(SIXTH)), k(0.5)), k(1.0))), None),
    # relu6(x + 3) / 6, the division inside the gate
    "relu6_div": (lambda b, x, k: b.div(b.relu6(b.add(x, k(3.0))), k(6.0)), None),
    # TF-graph routes: ADD 3 -> RELU6, product, then MUL 1/6
    "relu6_then_product_scale": (lambda b, x, k: b.relu6(b.add(x, k(3.0))), lambda b, y: b.mul(y, np.array(SIXTH))),
    # clip written as MAXIMUM / MINIMUM around ADD 3, product divided by 6
    "max_min_div": (lambda b, x, k: b.minimum(b.maximum(b.add(x, k(3.0)), k(0.0)), k(6.0)),
                    lambda b, y: b.div(y, np.array(6.0, np.float32))),
}


@pytest.mark.parametrize("form", list(GATES))
def test_every_written_out_form_becomes_one_hard_swish_computing_the_same(form, rng):
    gate, scale = GATES[form]
    data = _conv_then(gate, scale)
    r = fuse_and_check(data)
    assert op_counts(r) == {"CONV_2D": 1, "HARD_SWISH": 1}
    x = (rng.standard_normal((1, 8, 8, 4)) * 2).astype(np.float32)
    np.testing.assert_allclose(run_tflite(r.model_bytes, x, "builtin"), run_tflite(data, x, "builtin"),
                               rtol=1e-5, atol=1e-5)


def test_a_gate_that_is_not_hard_sigmoid_stays_with_its_normal_form_in_the_reason():
    r = fuse_and_check(_conv_then(lambda b, x, k: b.relu6(b.add(x, k(2.0))), lambda b, y: b.mul(y, np.array(SIXTH))))
    assert "HARD_SWISH" not in op_counts(r)
    assert any("no multiple of hard-sigmoid" in s for s in reasons(r, PASS))


def test_six_times_hard_sigmoid_without_the_division_after_the_product_stays():
    r = fuse_and_check(_conv_then(lambda b, x, k: b.relu6(b.add(x, k(3.0)))))
    assert "HARD_SWISH" not in op_counts(r)
    assert any("no MUL by 1/6 follows" in s for s in reasons(r, PASS))


def test_a_gate_someone_else_reads_stays():
    r = fuse_and_check(_conv_then(GATES["nobuco"][0], observe_gate=True))
    assert "HARD_SWISH" not in op_counts(r)
    assert any("model output" in s for s in reasons(r, PASS))


def test_a_per_channel_constant_in_the_gate_is_no_scalar_chain():
    r = fuse_and_check(_conv_then(lambda b, x, k: b.div(b.relu6(b.add(x, np.full(4, 3.0, np.float32))), k(6.0))))
    assert "HARD_SWISH" not in op_counts(r)


def test_nobucos_mobilenetv3_loses_its_written_out_hard_swishes():
    """10 hard-swishes of 5 ops each (the SE gates' MINIMUM + RELU are
    merge-clamps' business: tests/test_merge_clamps.py)."""
    r = fuse_and_check((FIXTURES / "nobuco/mobilenetv3.tflite").read_bytes(), runs=1)
    assert r.report["input"]["op_counts"]["MUL"] == 25
    assert op_counts(r)["HARD_SWISH"] == 10 and op_counts(r)["MUL"] == 5
    assert r.report["output"]["operators"] <= r.report["input"]["operators"] - 40


# ------------------------------------------------------------- the algebra


def test_the_normal_form_of_each_hard_sigmoid_order_is_the_same():
    nobuco = Clamped().then_affine(1 / 6).then_affine(1, 0.5).then_clamp(-np.inf, 1).then_clamp(0, np.inf)
    relu6 = Clamped().then_affine(1, 3).then_clamp(0, 6).then_affine(1 / 6)
    assert nobuco.close_to(HARD_SIGMOID) and relu6.close_to(HARD_SIGMOID)
    assert hard_sigmoid_multiple(Clamped().then_affine(1, 3).then_clamp(0, 6)) == pytest.approx(6)


def test_a_negative_scale_swaps_the_bounds_and_the_function_is_kept():
    f = Clamped().then_affine(-2, 1).then_clamp(-3, 5)
    xs = np.linspace(-10, 10, 101)
    np.testing.assert_allclose(f.a * np.clip(xs, f.lo, f.hi) + f.b, np.clip(-2 * xs + 1, -3, 5))


def test_clamps_that_leave_a_constant_are_no_function_of_x():
    with pytest.raises(NotAFunctionOfX):
        Clamped().then_clamp(0, 1).then_clamp(2, 3)
