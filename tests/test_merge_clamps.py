"""merge-clamps: a chain of clamps becomes its shortest form with the part
the producer can fuse first; RELU_0_TO_1 only where the target prefers it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder

from conftest import fuse_and_check, op_counts
from helpers import reasons, run_tflite

PASS = "merge-clamps"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
ONE, ZERO = np.array(1.0, np.float32), np.array(0.0, np.float32)


def _conv_clamped(clamps, head="conv"):
    r = np.random.default_rng(4)
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 4])
    if head == "conv":
        y = b.conv2d(x, r.standard_normal((4, 3, 3, 4)).astype(np.float32), r.standard_normal(4).astype(np.float32))
    else:  # a producer with no fused activation
        y = b.transpose(x, [0, 2, 1, 3])
    for c in clamps:
        y = c(b, y)
    b.output(y)
    return b.to_bytes()


MIN1 = lambda b, y: b.minimum(y, ONE)  # noqa: E731
RELU = lambda b, y: b.relu(y)  # noqa: E731


@pytest.mark.parametrize("target,want", [
    ("xnnpack", {"CONV_2D": 1, "MINIMUM": 1}),      # RELU first, fused into the conv
    ("builtin", {"CONV_2D": 1, "RELU_0_TO_1": 1}),  # one op, faster on the built-in kernels
    ("gpu", {"CONV_2D": 1, "MINIMUM": 1}),          # no RELU_0_TO_1 there
    ("micro", {"CONV_2D": 1, "MINIMUM": 1}),
])
def test_minimum_then_relu_after_a_conv_takes_the_targets_form(target, want, rng):
    data = _conv_clamped([MIN1, RELU])
    r = fuse_and_check(data, target=target)
    assert op_counts(r) == want
    x = (rng.standard_normal((1, 8, 8, 4)) * 3).astype(np.float32)
    np.testing.assert_allclose(run_tflite(r.model_bytes, x, "builtin"), run_tflite(data, x, "builtin"), atol=1e-6)


def test_the_xnnpack_target_says_why_the_pair_is_not_relu_0_to_1():
    r = fuse_and_check(_conv_clamped([RELU, MIN1], head="transpose"))
    assert "RELU_0_TO_1" not in op_counts(r)
    assert any("kept for target xnnpack" in s for s in reasons(r, PASS))


def test_three_clamps_become_the_one_activation_they_are():
    r = fuse_and_check(_conv_clamped([lambda b, y: b.maximum(y, ZERO), lambda b, y: b.minimum(y, np.array(6.0, np.float32)),
                                      RELU], head="transpose"))
    assert op_counts(r) == {"TRANSPOSE": 1, "RELU6": 1}


def test_a_single_clamp_is_no_candidate():
    r = fuse_and_check(_conv_clamped([MIN1], head="transpose"))
    assert r.report["nothing_to_fuse"] and not reasons(r, PASS)


def test_nobucos_squeeze_excite_gates_lose_their_relu():
    r = fuse_and_check((FIXTURES / "nobuco/mobilenetv3.tflite").read_bytes(), runs=1)
    assert "RELU" not in op_counts(r) and op_counts(r)["MINIMUM"] == 5
