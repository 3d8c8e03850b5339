"""Region proofs, the noise floor, reverting what fails, and the verifier's
memory limit (issue 12), through the real CLI where a user would meet them."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import models
from helpers import run_tflite
from tflite_fuser import BadModelError, fuse, load, regions
from tflite_fuser.cli import main
from tflite_fuser.passes import affine_chain, fold_affine
from tflite_fuser.schema import BuiltinOperator as Op

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "schemas" / "report.schema.json").read_text())


def _cli(capsys, tmp_path, model: bytes, *args: str) -> tuple[int, str, str, dict | None]:
    src, out, rep = tmp_path / "in.tflite", tmp_path / "out.tflite", tmp_path / "r.json"
    src.write_bytes(model)
    rc = main([str(src), str(out), "--report", str(rep), *args])
    captured = capsys.readouterr()
    report = json.loads(rep.read_text()) if rep.exists() else None
    if report is not None:
        jsonschema.validate(report, SCHEMA)
    return rc, captured.out, captured.err, report


def _wrong_fold(monkeypatch, conv_output: str, *, scale: float = 1.0, bias_share: float = 0.0) -> None:
    """Make fold-affine fold a wrong scale (times ``scale``) or shift (plus
    ``bias_share`` of its range) into the CONV_2D that writes ``conv_output``,
    and only there: one bad rewrite among many right ones."""
    real = affine_chain.fold_into

    def fold_into(store, op, weights, s, shift):
        if op.outputs[0].name == conv_output:
            s = s * scale
            shift = shift + bias_share * float(np.ptp(shift) or 1.0)
        return real(store, op, weights, s, shift)

    monkeypatch.setattr(fold_affine, "fold_into", fold_into)


def _conv_outputs(model: bytes) -> list[str]:
    return [op.outputs[0].name for op in load(model).main.operators if op.code == Op.CONV_2D]


# ------------------------------------------------------------- custom ops


@pytest.mark.parametrize("layout", ["between", "around", "feeds"])
def test_a_model_with_custom_ops_is_fused_and_verified_region_by_region(tmp_path, capsys, layout):
    model = models.conv_bn_blocks_with_custom_ops(layout)
    rc, out, err, report = _cli(capsys, tmp_path, model)
    assert rc == 0 and err == ""
    v = report["verification"]
    assert v["ok"] and "Encountered unresolved custom op" in v["whole_model"]
    assert v["region_summary"] == {**v["region_summary"], "regions": 3, "passed": 3, "failed": 0, "inputs": "random"}
    assert "verified region by region (3 regions); the whole model could not be run: " in out
    assert report["output"]["op_counts"]["CONV_2D"] == 3 and "MUL" not in report["output"]["op_counts"]
    fused = load((tmp_path / "out.tflite").read_bytes())
    custom = [op for op in fused.main.operators if op.code == Op.CUSTOM]
    assert custom and all(bytes(op.custom_options) == b"\x01\x02opts\x03" for op in custom)


def test_each_region_proof_names_its_rewrites_and_its_error(tmp_path, capsys):
    rc, out, _, report = _cli(capsys, tmp_path, models.conv_bn_blocks_with_custom_ops("between"), "-v")
    assert rc == 0
    for r in report["verification"]["regions"]:
        assert r["ok"] and r["proved"] and r["max_abs_error"] is not None
        assert [w.split(":")[0] for w in r["rewrites"]] == ["fold-affine", "fuse-activation"]
    assert out.count("      ok  fold-affine: folded MUL -> ADD into CONV_2D") == 3


def test_regions_of_a_model_that_runs_are_proved_on_its_own_values(tmp_path, capsys):
    rc, out, _, report = _cli(capsys, tmp_path, models.deep_chain(blocks=6, gain=1.0))
    assert rc == 0
    s = report["verification"]["region_summary"]
    assert (s["regions"], s["failed"], s["inputs"]) == (6, 0, "real")
    assert report["verification"]["whole_model"] == "ran"
    assert "regions: 6 (12 rewrites) proved alone on the original's own values at their edges" in out


# --------------------------------------------------------- revert what fails


def test_a_wrong_fold_in_one_of_many_convs_is_reverted_and_the_rest_written(tmp_path, capsys, monkeypatch):
    model = models.deep_chain(blocks=10, gain=1.0)
    bad = _conv_outputs(model)[4]
    _wrong_fold(monkeypatch, bad, scale=1.01)
    rc, out, err, report = _cli(capsys, tmp_path, model)
    assert rc == 0
    assert err.splitlines() == [line for line in err.splitlines() if line.startswith("tflite-fuse: warning: reverted")]
    assert len(err.splitlines()) == 1 and "fold-affine" in err and "its region proof failed" in err
    (reverted,) = report["reverted"]
    assert reverted["pass"] == "fold-affine" and reverted["key"][2] == f"CONV_2D -> {bad!r}"
    counts = report["output"]["op_counts"]
    assert counts["CONV_2D"] == 10 and counts["MUL"] == 1 and counts["ADD"] == 1  # that block alone stays apart
    assert report["verification"]["ok"] and report["attempts"] == 2
    assert "reverted 1 rewrite(s) whose proof failed" in out
    x = np.random.default_rng(3).uniform(-1, 1, (1, 8, 8, 4)).astype(np.float32)
    np.testing.assert_allclose(run_tflite((tmp_path / "out.tflite").read_bytes(), x), run_tflite(model, x),
                               rtol=1e-4, atol=1e-4)


def test_strict_fails_the_run_on_a_wrong_fold_and_writes_nothing(tmp_path, capsys, monkeypatch):
    model = models.deep_chain(blocks=10, gain=1.0)
    _wrong_fold(monkeypatch, _conv_outputs(model)[4], scale=1.01)
    rc, out, err, report = _cli(capsys, tmp_path, model, "--strict")
    assert rc == 1 and not (tmp_path / "out.tflite").exists()
    assert report["reverted"] == [] and report["exit_code"] == 1
    assert "1 of 10 region(s) differ beyond their tolerance" in err
    assert "verification: FAIL" in out


def test_a_failure_only_the_whole_model_sees_is_found_by_bisection(tmp_path, capsys, monkeypatch):
    """With region tolerances too loose to see a 1% scale (a stand-in for any
    failure that no single region shows), the whole-model proof fails; the
    bisection over the rewrites finds the one to revert."""
    monkeypatch.setattr(regions, "REGION_TOL", 0.5)
    model = models.deep_chain(blocks=12, gain=1.0)
    bad = _conv_outputs(model)[7]
    _wrong_fold(monkeypatch, bad, scale=1.05)
    rc, _, err, report = _cli(capsys, tmp_path, model)
    assert rc == 0, err
    (reverted,) = report["reverted"]
    assert reverted["key"][2] == f"CONV_2D -> {bad!r}" and "found by bisection over 24 rewrites" in reverted["error"]
    assert report["attempts"] > 3  # the first run, the bisection's trials, the run without the culprit
    assert report["output"]["op_counts"]["MUL"] == 1


# ------------------------------------------------------ the deep chain


def test_a_deep_chain_whose_folds_are_right_passes_on_its_noise_floor(tmp_path, capsys):
    rc, out, _, report = _cli(capsys, tmp_path, models.deep_chain())
    assert rc == 0 and report["written"]
    (o,) = report["verification"]["outputs"]
    assert o["accepted_by_floor"] and o["max_abs_error"] > o["worst_bound"]  # the fixed bound alone fails it
    assert 0 < o["floor_ratio"] < 10 and o["noise_floor"] > 0
    assert report["verification"]["noise_floor_multiple"] == 10
    assert "within 10x the model's own float noise" in out


@pytest.mark.parametrize("fault", [{"scale": 1.01}, {"bias_share": 0.01}], ids=["scale-1%", "bias-1%-of-range"])
def test_a_one_percent_fault_in_one_block_of_the_deep_chain_still_fails(tmp_path, capsys, monkeypatch, fault):
    model = models.deep_chain()
    bad = _conv_outputs(model)[50]
    _wrong_fold(monkeypatch, bad, **fault)
    rc, _, _, report = _cli(capsys, tmp_path, model, "--strict")
    assert rc == 1 and not (tmp_path / "out.tflite").exists()
    (o,) = report["verification"]["outputs"]
    assert not o["ok"] and o["floor_ratio"] > 10 and not o["accepted_by_floor"]  # the noise floor does not excuse it
    (region,) = [r for r in report["verification"]["regions"] if not r["ok"]]  # one region names it
    assert region["rewrites"][0].startswith("fold-affine: folded MUL -> ADD into CONV_2D")
    rc, _, err, report = _cli(capsys, tmp_path, model)  # without --strict: that rewrite alone is reverted
    assert rc == 0 and [r["key"][2] for r in report["reverted"]] == [f"CONV_2D -> {bad!r}"]


def test_without_region_proofs_the_whole_model_proof_alone_fails_the_fault(monkeypatch):
    model = models.deep_chain()
    _wrong_fold(monkeypatch, _conv_outputs(model)[50], scale=1.01)
    result = fuse(model, regions=False)
    assert not result.ok and result.report["verification"]["regions"] == [] and result.report["reverted"] == []


# ------------------------------------------------------------ memory


def _big(hw: int = 1024, channels: int = 16) -> bytes:
    from tflite_fuser.builder import ModelBuilder

    r = np.random.default_rng(0)
    b = ModelBuilder()
    x = b.input("x", [1, hw, hw, channels])
    y = b.conv2d(x, r.standard_normal((channels, 1, 1, channels)).astype(np.float32),
                 r.standard_normal(channels).astype(np.float32))
    b.output(b.relu(b.add(b.mul(y, np.float32(2.0)), np.float32(1.0))))
    return b.to_bytes()


def test_a_model_that_needs_more_memory_than_the_verifier_may_use_exits_2_before_trying(tmp_path, capsys):
    rc, _, err, report = _cli(capsys, tmp_path, _big(), "--verify-memory", "256M")
    assert rc == 2 and report is None and not (tmp_path / "out.tflite").exists()
    assert len(err.splitlines()) == 1 and "needs at least" in err and "--verify-memory" in err


@pytest.mark.parametrize("limit", [300 << 20, 600 << 20])
def test_the_verifiers_child_runs_out_of_memory_cleanly(limit):
    """The child's address space is capped for real: past the lower bound the
    parent checks, whatever allocation fails first ends the proof cleanly."""
    from tflite_fuser.options import VerifyOptions
    from tflite_fuser.sandbox import verify_isolated

    m = _big()
    with pytest.raises(BadModelError, match="ran out of memory while .* --verify-memory"):
        verify_isolated(m, m, VerifyOptions(memory_limit=limit, runs=1))


def test_verify_memory_parses_sizes(tmp_path, capsys):
    rc, _, err, _ = _cli(capsys, tmp_path, models.conv_bn_relu().to_bytes(), "--verify-memory", "lots")
    assert rc == 2 and "not a size" in err
    rc, _, _, report = _cli(capsys, tmp_path, models.conv_bn_relu().to_bytes(), "--verify-memory", "none")
    assert rc == 0 and report["verification"]["ok"]
