"""The command line as a user meets it: summary, report JSON, exit codes,
--force, --in-place, inspect, --help."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import models
from conftest import ROOT
from tflite_fuser import passes as passes_mod
from tflite_fuser.cli import main
from tflite_fuser.passes.base import FusionPass
from tflite_fuser.schema import BuiltinOperator as Op

SCHEMA = json.loads((ROOT / "schemas" / "report.schema.json").read_text())


class _BreakConvWeights(FusionPass):
    """A deliberately wrong pass: doubles every CONV_2D filter. Lets the tests
    see what the tool does when a rewrite does not verify."""

    name = "break-conv-weights"
    summary = "test only"

    def run_subgraph(self, model, sg, ctx):
        n = 0
        for op in list(sg.live_operators()):
            if op.code == Op.CONV_2D:
                w = op.inputs[1]
                op.inputs[1] = model.new_constant(sg, w.name + "_x2", w.value() * 2, w.dtype)
                n += 1
        return n


@pytest.fixture
def model_file(tmp_path) -> Path:
    p = tmp_path / "in.tflite"
    p.write_bytes(models.conv_relu().to_bytes())
    return p


@pytest.fixture
def broken_pass(monkeypatch):
    monkeypatch.setattr(passes_mod, "PASS_CLASSES", [_BreakConvWeights])


def _report(path: Path) -> dict:
    data = json.loads(path.read_text())
    jsonschema.validate(data, SCHEMA)
    return data


def test_summary_shows_counts_passes_and_verification(model_file, tmp_path, capsys):
    rc = main([str(model_file), str(tmp_path / "out.tflite"), "--report", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "CONV_2D" in out and "verification: PASS" in out and "wrote" in out
    report = _report(tmp_path / "r.json")
    assert report["written"] and report["exit_code"] == 0
    assert report["input"]["op_counts"] == {"CONV_2D": 1}
    assert report["verification"]["outputs"][0]["ok"]


def test_failed_verification_exits_1_and_writes_nothing(model_file, tmp_path, capsys, broken_pass):
    out = tmp_path / "out.tflite"
    rc = main([str(model_file), str(out), "--report", str(tmp_path / "r.json")])
    text = capsys.readouterr().out
    assert rc == 1
    assert "verification: FAIL" in text and "nothing written" in text
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tflite", "r.json"]
    report = _report(tmp_path / "r.json")
    assert report["exit_code"] == 1 and not report["written"]
    assert report["verification"]["max_abs_error"] > 1e-3


def test_force_writes_a_failing_model_but_still_exits_1(model_file, tmp_path, capsys, broken_pass):
    out = tmp_path / "out.tflite"
    rc = main([str(model_file), str(out), "--force", "-q"])
    err = capsys.readouterr().err
    assert rc == 1 and out.exists()
    assert "verification failed" in err


def test_no_verify_skips_the_interpreter(model_file, tmp_path, capsys, broken_pass):
    rc = main([str(model_file), str(tmp_path / "out.tflite"), "--no-verify"])
    assert rc == 0 and "verification: skipped" in capsys.readouterr().out


def test_in_place_replaces_the_file_and_keeps_a_backup(model_file, capsys):
    before = model_file.read_bytes()
    rc = main([str(model_file), "--in-place", "-q"])
    assert rc == 0
    backup = model_file.with_name("in.tflite.orig")
    assert backup.read_bytes() == before
    assert model_file.exists()


def test_in_place_without_backup(model_file, capsys):
    rc = main([str(model_file), "--in-place", "--no-backup", "-q"])
    assert rc == 0
    assert sorted(p.name for p in model_file.parent.iterdir()) == ["in.tflite"]


def test_user_inputs_from_npz(model_file, tmp_path, capsys):
    np.savez(tmp_path / "x.npz", x=np.ones((1, 8, 8, 3), np.float32))
    rc = main([str(model_file), str(tmp_path / "out.tflite"), "--inputs", str(tmp_path / "x.npz"),
               "--report", str(tmp_path / "r.json")])
    assert rc == 0
    assert _report(tmp_path / "r.json")["verification"]["runs"] == 1


def test_npz_missing_an_input_is_a_usage_error(model_file, tmp_path, capsys):
    np.savez(tmp_path / "x.npz", wrong=np.ones((1, 8, 8, 3), np.float32))
    rc = main([str(model_file), str(tmp_path / "out.tflite"), "--inputs", str(tmp_path / "x.npz")])
    assert rc == 2 and "no array for input 'x'" in capsys.readouterr().err


def test_unknown_pass_is_a_usage_error(model_file, tmp_path, capsys):
    rc = main([str(model_file), str(tmp_path / "out.tflite"), "--passes", "no-such-pass"])
    assert rc == 2 and "unknown pass 'no-such-pass'" in capsys.readouterr().err


def test_passes_none_is_a_verified_round_trip(model_file, tmp_path, capsys):
    rc = main([str(model_file), str(tmp_path / "out.tflite"), "--passes", "none"])
    assert rc == 0 and "passes: none" in capsys.readouterr().out


def test_inspect_lists_ops_inputs_and_signatures(tmp_path, capsys):
    p = tmp_path / "m.tflite"
    p.write_bytes(models.rich_metadata())
    assert main(["inspect", str(p)]) == 0
    out = capsys.readouterr().out
    assert "GELU" in out and "signature 'serving_default'" in out and "custom_vendor_blob" in out
    assert main(["inspect", str(p), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["signatures"][0]["inputs"] == ["image"]


def test_help_explains_passes_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out and "--no-verify" in out and "inspect" in out
    for cls in passes_mod.PASS_CLASSES:
        assert cls.name in out
