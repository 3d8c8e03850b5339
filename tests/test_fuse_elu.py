"""fuse-elu: ELU written out (EXP, SUB, a comparison, SELECT) becomes one ELU
where the target's ELU is the faster form, and its NCHW island then goes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tflite_fuser import micro
from tflite_fuser.builder import ModelBuilder
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.schema import BuiltinOptions, TensorType, fb

from conftest import fuse_and_check, op_counts
from helpers import reasons, run_tflite

PASS = "fuse-elu"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
R = np.random.default_rng(21)
C = 8

_COMPARE = {Op.GREATER_EQUAL: (fb.GreaterEqualOptionsT, BuiltinOptions.GreaterEqualOptions),
            Op.GREATER: (fb.GreaterOptionsT, BuiltinOptions.GreaterOptions),
            Op.LESS: (fb.LessOptionsT, BuiltinOptions.LessOptions)}
_SELECT = {Op.SELECT: (fb.SelectOptionsT, BuiltinOptions.SelectOptions),
           Op.SELECT_V2: (fb.SelectV2OptionsT, BuiltinOptions.SelectV2Options)}


def _written_elu(compare=Op.GREATER_EQUAL, select=Op.SELECT, alpha=1.0) -> bytes:
    """conv -> ``SELECT(x >= 0, x, alpha * (EXP(x) - 1))`` (litert-torch's
    form; ``LESS`` swaps the branches) -> conv."""
    b = ModelBuilder()
    x = b.input("x", [1, 6, 6, C])
    h = b.conv2d(x, R.standard_normal((C, 3, 3, C)).astype(np.float32) * 0.5, np.zeros(C, np.float32))
    (e,) = b.op(Op.EXP, [h], [h.shape], fb.ExpOptionsT(), BuiltinOptions.ExpOptions)
    m = b.sub(e, np.float32(1.0))
    if alpha != 1.0:
        m = b.mul(m, np.float32(alpha))
    opts, kind = _COMPARE[compare]
    (cond,) = b.op(compare, [h, np.float32(0.0)], [h.shape], opts(), kind, dtype=TensorType.BOOL)
    branches = [m, h] if compare == Op.LESS else [h, m]
    opts, kind = _SELECT[select]
    (y,) = b.op(select, [cond, *branches], [h.shape], opts(), kind, dtype=TensorType.FLOAT32)
    b.output(b.conv2d(y, R.standard_normal((C, 1, 1, C)).astype(np.float32), np.zeros(C, np.float32)))
    return b.to_bytes()


@pytest.mark.parametrize("compare,select", [(Op.GREATER_EQUAL, Op.SELECT), (Op.GREATER, Op.SELECT_V2),
                                            (Op.LESS, Op.SELECT)])
def test_a_written_out_elu_becomes_one_elu_and_computes_the_same(compare, select):
    model = _written_elu(compare, select)
    r = fuse_and_check(model)
    assert op_counts(r) == {"CONV_2D": 2, "ELU": 1}
    x = R.standard_normal((1, 6, 6, C)).astype(np.float32)
    np.testing.assert_allclose(run_tflite(r.model_bytes, x), run_tflite(model, x), rtol=1e-5, atol=1e-5)


def test_an_elu_with_another_alpha_which_no_elu_computes_stays():
    """``nn.CELU(0.5)``, ``nn.SELU``: alpha * (exp(x) - 1) below 0."""
    r = fuse_and_check(_written_elu(alpha=0.5))
    assert "ELU" not in op_counts(r) and op_counts(r)["SELECT"] == 1
    assert reasons(r, PASS) == []


def test_for_the_builtin_kernels_the_written_form_stays_with_the_reason():
    """The built-in ELU kernel is a scalar expm1 loop: slower than the four ops."""
    r = fuse_and_check(_written_elu(), target="builtin")
    assert "ELU" not in op_counts(r)
    assert any("ELU written as 4 ops; kept for target builtin" in s for s in reasons(r, PASS))


@pytest.mark.parametrize("target,after", [("xnnpack", 10), ("builtin", 19)])
def test_litert_torchs_elu_net_loses_its_written_out_elus_and_their_nchw_islands(target, after):
    """litert-torch writes each ``nn.ELU`` as EXP, SUB, GREATER_EQUAL, SELECT in
    NCHW between two transposes (6 ops). For XNNPACK: one ELU, islands gone;
    for the built-in kernels the four ops stay, in NHWC, islands gone."""
    r = fuse_and_check((FIXTURES / "litert_torch" / "elu_net.tflite").read_bytes(), runs=1, target=target)
    assert r.report["input"]["operators"] == 24 and r.report["output"]["operators"] == after
    assert op_counts(r)["TRANSPOSE"] == 1  # the NCHW model input's
    assert op_counts(r).get("ELU", 0) == (3 if target == "xnnpack" else 0)


def test_fused_for_tflite_micro_an_elu_the_reference_kernels_cannot_load_is_reverted_not_a_crash():
    """TFLM cannot load litert-torch's original, so the rewrite is proved on
    LiteRT's reference kernels, which have no ELU: every ELU (and the island
    around it) is reverted with that reason, and the model stays as it is."""
    if micro.unavailable():
        pytest.skip(micro.unavailable())
    src = (FIXTURES / "litert_torch" / "elu_net.tflite").read_bytes()
    r = fuse_and_check(src, runs=1, target="micro")
    assert r.model_bytes == src
    reverted = r.report["reverted"]
    assert reverted and all("opcode 'ELU'" in x["error"] for x in reverted)
