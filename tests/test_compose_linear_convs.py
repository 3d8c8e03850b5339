"""compose-linear-convs: a conv and a 1x1 with nothing between them become
one conv when it costs no more; a biased 1x1 before a SAME conv, a
non-linearity and a bottleneck stay, with the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.reparam import compose_after_pointwise, compose_pointwise_after

from conftest import fuse_and_check, op_counts
from helpers import reasons, run_tflite

PASS = "compose-linear-convs"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
R = np.random.default_rng(12)


def _w(cout, k, cin):
    return (R.standard_normal((cout, k, k, cin)) / np.sqrt(k * k * cin)).astype(np.float32)


def _pair(k1, k2, cin=8, m=16, cout=8, pad2="SAME", bias1=True, act1=None, stride1=1):
    b = ModelBuilder()
    x = b.input("x", [1, 10, 10, cin])
    y = b.conv2d(x, _w(m, k1, cin), R.standard_normal(m).astype(np.float32) if bias1 else None,
                 stride=stride1, activation=act1)
    z = b.conv2d(y, _w(cout, k2, m), R.standard_normal(cout).astype(np.float32), padding=pad2, activation="RELU")
    b.output(z)
    return b.to_bytes()


@pytest.mark.parametrize("kw", [dict(k1=3, k2=1), dict(k1=3, k2=1, stride1=2), dict(k1=1, k2=3, pad2="VALID"),
                                dict(k1=1, k2=3, bias1=False), dict(k1=1, k2=1)])
def test_a_linear_pair_becomes_one_conv_computing_the_same(kw, rng):
    data = _pair(**kw)
    r = fuse_and_check(data)
    assert op_counts(r) == {"CONV_2D": 1}
    x = rng.standard_normal((1, 10, 10, 8)).astype(np.float32)
    np.testing.assert_allclose(run_tflite(r.model_bytes, x, "builtin"), run_tflite(data, x, "builtin"),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kw,why", [
    (dict(k1=1, k2=3), "border taps see zeros"),
    (dict(k1=3, k2=1, m=4, cout=32), "would cost"),
])
def test_what_would_be_wrong_or_costlier_stays_with_the_reason(kw, why):
    r = fuse_and_check(_pair(**kw), passes=[PASS])
    assert r.report["nothing_to_fuse"]
    assert any(why in s for s in reasons(r, PASS))


def test_an_activation_between_is_no_candidate():
    r = fuse_and_check(_pair(3, 1, act1="RELU"), passes=[PASS])
    assert r.report["nothing_to_fuse"] and not reasons(r, PASS)


def test_the_composition_is_the_convolution_of_the_convolution():
    """Pinned in numpy at one interior pixel: a 1x1 then a 3x3 (VALID), and a 3x3 then a 1x1."""
    x = R.standard_normal((3, 3, 5))
    w1, b1 = R.standard_normal((4, 1, 1, 5)), R.standard_normal(4)
    w2, b2 = R.standard_normal((6, 3, 3, 4)), R.standard_normal(6)
    y = np.einsum("hwi,mi->hwm", x, w1[:, 0, 0, :]) + b1
    want = np.einsum("hwm,ohwm->o", y, w2) + b2
    w, b = compose_after_pointwise(w1, b1, w2, b2)
    np.testing.assert_allclose(np.einsum("hwi,ohwi->o", x, w) + b, want)
    v1, c1 = R.standard_normal((4, 3, 3, 5)), R.standard_normal(4)
    v2, c2 = R.standard_normal((6, 1, 1, 4)), R.standard_normal(6)
    want = v2[:, 0, 0, :] @ (np.einsum("hwi,mhwi->m", x, v1) + c1) + c2
    w, b = compose_pointwise_after(v1, c1, v2, c2)
    np.testing.assert_allclose(np.einsum("hwi,ohwi->o", x, w) + b, want)


def test_mobilenetv3s_projection_before_a_wider_1x1_composes():
    r = fuse_and_check((FIXTURES / "nobuco/mobilenetv3.tflite").read_bytes(), runs=1)
    assert any(x["pass"] == PASS for x in r.report["rewrites"])
