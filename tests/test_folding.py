"""The folding maths (tflite_fuser.folding) against PyTorch's convolutions.

Each identity a pass relies on is checked numerically in float64 on random
weights: a fold that forgot a term, used the wrong axis or the wrong group
mapping fails here before any graph is involved. PyTorch is the reference:
filters are converted from TFLite's layouts (OHWI, [1,kh,kw,C*M], [units,in])
to PyTorch's (OIHW, [C*M,1,kh,kw], [out,in]) in the helpers below.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tflite_fuser import folding
from tflite_fuser.folding import FoldError



def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(t):
    return t.numpy().transpose(0, 2, 3, 1)


def run(kind, x, w, b, padding=0, groups=1):
    """The op of ``kind`` on NHWC ``x`` with a TFLite-layout filter, float64."""
    bt = None if b is None else torch.from_numpy(np.asarray(b, np.float64))
    if kind == "conv":
        return _nhwc(F.conv2d(_nchw(x), torch.from_numpy(w.transpose(0, 3, 1, 2).copy()), bt,
                              padding=padding, groups=groups))
    if kind == "depthwise":
        c = x.shape[-1]
        return _nhwc(F.conv2d(_nchw(x), torch.from_numpy(w[0].transpose(2, 0, 1)[:, None].copy()), bt,
                              padding=padding, groups=c))
    if kind == "fc":
        return F.linear(torch.from_numpy(x), torch.from_numpy(w), bt).numpy()
    if kind == "transpose_conv":
        # TFLite [Cout, kh, kw, Cin] -> PyTorch conv_transpose weight [Cin, Cout, kh, kw]
        return _nhwc(F.conv_transpose2d(_nchw(x), torch.from_numpy(w.transpose(3, 0, 1, 2).copy()), bt))
    raise AssertionError(kind)


#: (kind, input shape, filter shape, groups) - grouped conv and depth multiplier 2 included
CASES = [
    ("conv", (2, 7, 6, 4), (6, 3, 3, 4), 1),
    ("conv", (1, 6, 6, 8), (6, 3, 3, 4), 2),  # grouped: 2 groups of 4 -> 3
    ("depthwise", (1, 7, 7, 3), (1, 3, 3, 6), 1),  # depth multiplier 2
    ("fc", (5, 12), (7, 12), 1),
    ("transpose_conv", (1, 4, 5, 3), (5, 3, 3, 3), 1),
]


@pytest.fixture
def r():
    return np.random.default_rng(7)


@pytest.mark.parametrize("kind,xs,ws,groups", CASES)
def test_output_affine_fold_equals_op_then_scale_and_shift(kind, xs, ws, groups, r):
    x, w = r.normal(size=xs), r.normal(size=ws)
    cout = folding.out_channels(kind, ws)
    b, s, t = r.normal(size=cout), r.uniform(-2, 2, cout), r.normal(size=cout)
    w2, b2 = folding.fold_output_affine(kind, w, b, s, t)
    np.testing.assert_allclose(run(kind, x, w2, b2, groups=groups), run(kind, x, w, b, groups=groups) * s + t,
                               rtol=1e-12, atol=1e-12)


def test_output_affine_fold_creates_a_missing_bias(r):
    w = r.normal(size=(4, 6))
    w2, b2 = folding.fold_output_affine("fc", w, None, np.full(4, 2.0), np.arange(4.0))
    np.testing.assert_array_equal(b2, np.arange(4.0))
    np.testing.assert_array_equal(w2, 2 * w)


@pytest.mark.parametrize("kind,xs,ws,groups", CASES)
def test_input_scale_fold_is_exact_even_with_zero_padding(kind, xs, ws, groups, r):
    x, w = r.normal(size=xs), r.normal(size=ws)
    cin = xs[-1]
    b, s = r.normal(size=folding.out_channels(kind, ws)), r.uniform(-2, 2, cin)
    pad = 1 if kind in ("conv", "depthwise") else 0
    w2 = folding.scale_input_channels(kind, w, s, cin)
    np.testing.assert_allclose(run(kind, x, w2, b, pad, groups), run(kind, x * s, w, b, pad, groups),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind,xs,ws,groups", [c for c in CASES if c[0] != "transpose_conv"])
def test_input_shift_fold_is_exact_without_padding(kind, xs, ws, groups, r):
    x, w = r.normal(size=xs), r.normal(size=ws)
    cin = xs[-1]
    b, t = r.normal(size=folding.out_channels(kind, ws)), r.normal(size=cin)
    b2 = folding.input_shift_bias(kind, w, b, t, cin)
    np.testing.assert_allclose(run(kind, x, w, b2, 0, groups), run(kind, x + t, w, b, 0, groups),
                               rtol=1e-12, atol=1e-12)


def test_input_shift_fold_is_wrong_with_padding_which_is_why_passes_refuse_it(r):
    x, w = r.normal(size=(1, 5, 5, 3)), r.normal(size=(4, 3, 3, 3))
    t = np.ones(3)
    b2 = folding.input_shift_bias("conv", w, None, t, 3)
    diff = np.abs(run("conv", x, w, b2, 1) - run("conv", x + t, w, None, 1))
    assert diff[:, 1:-1, 1:-1].max() < 1e-12  # interior windows agree
    assert diff.max() > 0.1  # border windows saw padding zeros, not t


def test_input_shift_refuses_transpose_conv():
    with pytest.raises(FoldError, match="position-dependent"):
        folding.input_shift_bias("transpose_conv", np.ones((2, 3, 3, 2)), None, np.ones(2), 2)


def test_input_channel_map_rejects_filters_that_do_not_fit():
    with pytest.raises(FoldError):
        folding.input_channel_map("conv", (6, 3, 3, 5), 8)
    with pytest.raises(FoldError):
        folding.input_channel_map("fc", (6, 16), 4)  # FC over a flattened [.., 2, 2, 4] input


# ------------------------------------------------------------ chains and constants


@pytest.mark.parametrize("shape", [(), (1,), (5,), (1, 5), (1, 1, 1, 5)])
def test_channel_vector_accepts_shapes_that_broadcast_per_channel(shape):
    v = np.arange(1, 1 + int(np.prod(shape, dtype=int))).reshape(shape).astype(np.float32)
    out = folding.channel_vector(v, 5, 4)
    assert out.shape == (5,) and out.dtype == np.float64
    np.testing.assert_array_equal(out, np.broadcast_to(v.reshape(-1), (5,)) if v.size == 5 else np.full(5, v.flat[0]))


@pytest.mark.parametrize("shape,why", [((1, 4, 4, 5), "more than the channel"), ((5, 1), "more than the channel"),
                                       ((3,), "does not match"), ((1, 1, 1, 1, 5), "higher rank")])
def test_channel_vector_rejects_spatial_mismatched_or_higher_rank_constants(shape, why):
    with pytest.raises(FoldError, match=why):
        folding.channel_vector(np.ones(shape, np.float32), 5, 4)


def test_compose_folds_the_textbook_batch_norm_chain(r):
    c = 6
    y = r.normal(size=(3, c))
    mean, std, gamma, beta = r.normal(size=c), r.uniform(0.5, 2, c), r.normal(size=c), r.normal(size=c)
    s, t = np.ones(c), np.zeros(c)
    for op, k in (("SUB", mean), ("DIV", std), ("MUL", gamma), ("ADD", beta)):
        s, t = folding.compose(s, t, op, k)
    np.testing.assert_allclose(y * s + t, (y - mean) / std * gamma + beta, rtol=1e-13)


def test_compose_handles_constant_minus_x_and_rejects_constant_over_x():
    s, t = folding.compose(np.ones(2), np.zeros(2), "SUB", np.array([3.0, 4.0]), const_first=True)
    np.testing.assert_array_equal(s, [-1, -1])
    np.testing.assert_array_equal(t, [3, 4])
    with pytest.raises(FoldError, match="not affine"):
        folding.compose(np.ones(2), np.zeros(2), "DIV", np.ones(2), const_first=True)


def test_compose_refuses_division_by_zero_and_non_finite_constants():
    with pytest.raises(FoldError, match="zeros"):
        folding.compose(np.ones(2), np.zeros(2), "DIV", np.array([1.0, 0.0]))
    with pytest.raises(FoldError, match="not finite"):
        folding.compose(np.ones(2), np.zeros(2), "MUL", np.array([1.0, np.inf]))


def test_compose_before_applies_the_inner_map_first(r):
    x = r.normal(size=4)
    inner, outer = (r.normal(size=4), r.normal(size=4)), (r.normal(size=4), r.normal(size=4))
    s, t = folding.compose_before(outer, inner)
    np.testing.assert_allclose(x * s + t, (x * inner[0] + inner[1]) * outer[0] + outer[1], rtol=1e-13)


# ----------------------------------------------------------------------- padding


@pytest.mark.parametrize("size,k,s,d,want", [
    (32, 3, 1, 1, (1, 1)), (8, 3, 2, 1, (0, 1)), (9, 3, 2, 1, (1, 1)), (32, 3, 1, 2, (2, 2)),
    (10, 1, 1, 1, (0, 0)), (10, 2, 1, 1, (0, 1)), (7, 5, 3, 1, (2, 2)), (9, 4, 3, 1, (0, 1)), (4, 1, 2, 1, (0, 0)),
])
def test_same_padding_matches_tflite(size, k, s, d, want):
    assert folding.same_padding(size, k, s, d) == want


@pytest.mark.parametrize("size", range(5, 14))
@pytest.mark.parametrize("k,s,d", [(3, 1, 1), (3, 2, 1), (5, 2, 1), (3, 1, 2), (2, 2, 1), (4, 3, 1)])
def test_same_padding_then_valid_gives_the_same_output_size(size, k, s, d):
    before, after = folding.same_padding(size, k, s, d)
    eff = (k - 1) * d + 1
    assert (size + before + after - eff) // s + 1 == -(-size // s)


def test_pad_equals_same_for_dynamic_sizes_only_at_stride_one():
    assert folding.pad_equals_same(None, (1, 1), 3, 1, 1)
    assert not folding.pad_equals_same(None, (0, 1), 3, 2, 1)
    assert not folding.pad_equals_same(8, (1, 1), 3, 2, 1)  # PyTorch's padding=1 at stride 2, even size
    assert folding.pad_equals_same(9, (1, 1), 3, 2, 1)


# ---------------------------------------------------------------------- rounding


def test_round_once_refuses_non_finite_and_overflowing_values():
    with pytest.raises(FoldError, match="not be finite"):
        folding.round_once(np.array([1.0, np.nan]), np.float32, "filter")
    with pytest.raises(FoldError, match="overflow float16"):
        folding.round_once(np.array([70000.0]), np.float16, "filter")
    with pytest.raises(FoldError, match="overflow float32"):
        folding.round_once(np.array([1e39]), np.float32, "bias")
    out = folding.round_once(np.array([65504.0, -1.5]), np.float16, "filter")
    assert out.dtype == np.float16 and out.tolist() == [65504.0, -1.5]


@pytest.mark.parametrize("size", [4, folding.SMALL, folding.SMALL + 1, 1000])
@pytest.mark.parametrize("where", [0, -1])
def test_small_and_large_arrays_are_checked_alike(size, where):
    """Small arrays are checked as Python floats, large ones by numpy: a NaN
    or inf anywhere is refused either way, and finite values whose sum
    overflows (so the quick sum says "maybe not finite") still pass."""
    for bad in (np.nan, np.inf, -np.inf):
        v = np.ones(size)
        v[where] = bad
        assert not folding.all_finite(v) and not folding.all_finite(v.reshape(-1, 1))
        with pytest.raises(FoldError, match="not be finite"):
            folding.round_once(v.reshape(1, -1), np.float32, "filter")
    huge = np.full(size, 1.5e308)
    assert folding.all_finite(huge)
    with pytest.raises(FoldError, match="overflow float32"):
        folding.round_once(huge, np.float32, "bias")
    v = np.linspace(-3.0, 2.0, size)
    assert folding.round_once(v.reshape(size, 1), np.float32, "filter").tolist() == v.astype(np.float32).reshape(size, 1).tolist()


def test_a_long_chain_is_rounded_once(r):
    """Composing in float64 and rounding once gives the correctly rounded
    weights; folding op by op in float32 would not (in general)."""
    w = r.normal(size=(64, 3, 3, 8)).astype(np.float32)
    consts = [r.uniform(0.3, 3, 64).astype(np.float32) for _ in range(6)]
    s, t = np.ones(64), np.zeros(64)
    for c in consts:
        s, t = folding.compose(s, t, "MUL", c)
    folded = folding.round_once(folding.scale_output_channels("conv", w, s), np.float32, "filter")
    exact = w.astype(np.float64) * np.prod(np.stack(consts).astype(np.float64), axis=0)[:, None, None, None]
    np.testing.assert_array_equal(folded, exact.astype(np.float32))
    stepwise = w.copy()
    for c in consts:
        stepwise = stepwise * c[:, None, None, None]
    assert np.any(stepwise != folded)
