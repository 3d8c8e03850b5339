"""The verifier's comparison rule and input generation, pinned on small arrays,
plus end-to-end: it must catch a model that computes something else."""

from __future__ import annotations

import numpy as np
import pytest

import models
from tflite_fuser.verifier import _compare, make_inputs, verify


def test_float_outputs_pass_within_atol_plus_rtol_times_reference():
    a = np.array([1.0, 100.0, 0.0], np.float32)
    ok = _compare("", "y", a, a + np.array([1e-6, 1e-3, 1e-5], np.float32), 1e-5, 1e-5, 1)
    bad = _compare("", "y", a, a + np.array([0, 2e-3, 0], np.float32), 1e-5, 1e-5, 1)
    assert ok.ok and not bad.ok
    assert bad.max_abs_error == pytest.approx(2e-3, rel=1e-2)


def test_nan_and_inf_must_match_exactly():
    a = np.array([np.nan, np.inf, 1.0], np.float32)
    assert _compare("", "y", a, a.copy(), 1e-5, 1e-5, 1).ok
    assert not _compare("", "y", a, np.array([0.0, np.inf, 1.0], np.float32), 1e-5, 1e-5, 1).ok
    assert not _compare("", "y", a, np.array([np.nan, -np.inf, 1.0], np.float32), 1e-5, 1e-5, 1).ok


def test_quantized_outputs_allow_one_step_and_no_more():
    a = np.array([-128, 0, 127], np.int8)
    assert _compare("", "q", a, np.array([-127, 1, 126], np.int8), 0, 0, 1).ok
    assert not _compare("", "q", a, np.array([-126, 0, 127], np.int8), 0, 0, 1).ok


def test_int32_outputs_must_be_exact():
    a = np.array([5, 6], np.int32)
    assert not _compare("", "i", a, np.array([5, 7], np.int32), 1e-5, 1e-5, 1).ok


def test_shape_mismatch_fails_and_is_not_comparable():
    c = _compare("", "y", np.zeros((2, 2), np.float32), np.zeros(4, np.float32), 1, 1, 1)
    assert not c.ok and c.max_abs_error is None


def test_random_inputs_are_dtype_aware_and_resolve_dynamic_dims():
    rng = np.random.default_rng(0)
    spec = {"f": {"shape": np.array([1, 4]), "shape_signature": np.array([-1, 4]), "dtype": np.float32},
            "q": {"shape": np.array([64]), "dtype": np.int8}}
    feeds = make_inputs(spec, rng, (-2.0, 3.0), {"f": [5, 4]})
    assert feeds["f"].shape == (5, 4) and feeds["f"].min() >= -2 and feeds["f"].max() <= 3
    assert feeds["q"].dtype == np.int8 and feeds["q"].min() < -64 and feeds["q"].max() > 64


def test_verify_catches_a_model_that_computes_something_else():
    a = models.conv_relu(seed=0).to_bytes()
    b = models.conv_relu(seed=1).to_bytes()
    result = verify(a, b, runs=1)
    assert not result.ok and "outputs differ" in result.message
    assert verify(a, a, runs=2).ok


def test_verify_runs_every_signature():
    data = models.rich_metadata()
    result = verify(data, data, runs=1)
    assert result.ok and [(o.signature, o.name) for o in result.outputs] == [("serving_default", "probs")]


def test_range_atol_scales_the_absolute_tolerance_by_the_output_magnitude():
    """Cancellation: an element near zero in an output of magnitude 1e3 is off
    by float rounding of the large terms; elementwise it fails, by range it passes."""
    a = np.array([1000.0, 1e-6, -800.0], np.float32)
    b = a + np.array([0.0, 5e-3, 0.0], np.float32)
    assert not _compare("", "y", a, b, 1e-4, 1e-4, 1).ok
    check = _compare("", "y", a, b, 1e-4, 1e-4, 1, range_atol=True)
    assert check.ok and check.max_abs_reference == pytest.approx(1000.0)
    assert not _compare("", "y", a, a + np.array([0, 0.2, 0], np.float32), 1e-4, 1e-4, 1, range_atol=True).ok


def test_a_model_only_xnnpack_can_run_is_verified_with_xnnpack(tmp_path, capsys):
    """onnx2tf's float16 output keeps activations in float16: the built-in
    kernels refuse it (conv.cc wants float32), XNNPACK runs it. The tool must
    verify with XNNPACK, say so, and not call the input unrunnable."""
    import json

    from conftest import FIXTURES
    from tflite_fuser.cli import main

    report = tmp_path / "r.json"
    rc = main([str(FIXTURES / "onnx2tf" / "groups4_dgc_fp16.tflite"), str(tmp_path / "out.tflite"),
               "--verify-on", "builtin", "--report", str(report)])
    out = capsys.readouterr().out
    assert rc == 0
    v = json.loads(report.read_text())["verification"]
    assert v["ok"] and v["kernels"] == "xnnpack"
    assert "built-in kernels cannot run the input model" in v["kernels_note"]
    assert "XNNPACK kernels" in out and "verified with the XNNPACK kernels instead" in out
    assert json.loads(report.read_text())["output"]["op_counts"].get("SPLIT", 0) == 0


def test_a_model_no_kernel_set_runs_is_left_as_it_is_naming_why(tmp_path, capsys):
    """onnx2tf's float16 ResNeXt in split form: 32-way float16 SPLITs, which
    XNNPACK does not take and the built-in kernels refuse. Neither the whole
    model nor the regions run, so no rewrite is proved: each is reverted
    with the reason, and the output is the input."""
    from conftest import FIXTURES
    from tflite_fuser.cli import main

    src = FIXTURES / "onnx2tf" / "resnext_dgc_fp16.tflite"
    # The classifier head's RESHAPE after MEAN, before FULLY_CONNECTED goes by a rewrite whose ops do run
    # alone (so its region proves it); this test is about the rewrites no kernel set can prove.
    rc = main([str(src), str(tmp_path / "out.tflite"), "--disable", "drop-reshape-before-fc,drop-reshape-after-reduce"])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert rc == 0 and len(err) == 3 and all(line.startswith("tflite-fuse: warning: reverted") for line in err)
    assert all("unproved" in line and "built-in kernels:" in line and "XNNPACK kernels:" in line for line in err)
    assert "nothing left to fuse: every rewrite was reverted" in captured.out
    assert (tmp_path / "out.tflite").read_bytes() == src.read_bytes()


def test_without_region_proofs_a_model_no_kernel_set_runs_is_bad_input():
    """The library's regions=False: the whole-model proof alone, which cannot be made."""
    from conftest import FIXTURES
    from tflite_fuser import BadModelError, fuse

    with pytest.raises(BadModelError, match="XNNPACK kernels:.*built-in kernels:.*--no-verify"):
        fuse(str(FIXTURES / "onnx2tf" / "resnext_dgc_fp16.tflite"), regions=False)
