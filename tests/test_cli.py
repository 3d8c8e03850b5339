"""The command line as a user meets it: summary, report JSON, exit codes,
--force, --in-place, inspect, --help."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import models
from conftest import ROOT
from tflite_fuser import passes as passes_mod
from tflite_fuser.cli import main
from tflite_fuser.passes.base import FusionPass, Match
from tflite_fuser.schema import BuiltinOperator as Op

SCHEMA = json.loads((ROOT / "schemas" / "report.schema.json").read_text())


@dataclass
class _Conv(Match):
    op: object


class _BreakConvWeights(FusionPass):
    """A deliberately wrong pass: doubles every CONV_2D filter (once). Lets
    the tests see what the tool does when a rewrite does not verify."""

    name = "break-conv-weights"
    summary = "test only"
    anchors = (Op.CONV_2D,)

    def match(self, ctx, sg, op):
        return None if op.inputs[1].name.endswith("_x2") else _Conv(op)

    def apply(self, ctx, sg, m):
        w = m.op.inputs[1]
        doubled = ctx.model.new_constant(sg, w.name + "_x2", w.value() * 2, w.dtype)
        sg.replace([m.op], m.op.copy(inputs=[m.op.inputs[0], doubled] + m.op.inputs[2:]))
        return "doubled a CONV_2D filter"


@pytest.fixture
def model_file(tmp_path) -> Path:
    p = tmp_path / "in.tflite"
    p.write_bytes(models.conv_bn_relu().to_bytes())
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
    assert report["input"]["op_counts"] == {"ADD": 1, "CONV_2D": 1, "MUL": 1, "RELU": 1}
    assert report["verification"]["outputs"][0]["ok"]


def test_json_report_says_how_long_each_pass_took(model_file, tmp_path):
    """Per pass, its seconds over all rounds: on a big model, where the time goes."""
    assert main([str(model_file), str(tmp_path / "out.tflite"), "--no-verify", "--report", str(tmp_path / "r.json")]) == 0
    report = _report(tmp_path / "r.json")
    seconds = {p["name"]: p["seconds"] for p in report["passes"]}
    assert set(seconds) == set(passes_mod.pass_names()) - {p.name for p in passes_mod.PASS_CLASSES if not p.default}
    assert all(s >= 0 for s in seconds.values()) and 0 < sum(seconds.values()) <= report["seconds"]["passes"]


def test_failed_verification_exits_1_and_writes_nothing(model_file, tmp_path, capsys, broken_pass):
    out = tmp_path / "out.tflite"
    rc = main([str(model_file), str(out), "--strict", "--report", str(tmp_path / "r.json")])
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
    rc = main([str(model_file), str(out), "--strict", "--force", "-q"])
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


# ------------------------------------------------------------ what a new user trips over


def test_in_place_twice_keeps_the_first_backup_and_numbers_the_next(tmp_path, capsys):
    """A second --in-place run must not replace IN.orig (the only copy of the
    user's original) with the first run's output."""
    src = tmp_path / "m.tflite"
    original = models.conv_bn_relu().to_bytes()
    src.write_bytes(original)
    assert main([str(src), "--in-place", "-q"]) == 0
    first_output = src.read_bytes()
    # The fused model has nothing left to fuse; make it fusable again to force a second rewrite.
    src.write_bytes(models.conv_bn_relu(seed=1).to_bytes())
    second_input = src.read_bytes()
    assert main([str(src), "--in-place"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "m.tflite.orig").read_bytes() == original
    assert (tmp_path / "m.tflite.orig.1").read_bytes() == second_input
    assert "backup" in out and "m.tflite.orig.1" in out
    assert first_output != original


def test_in_place_with_nothing_to_fuse_leaves_the_file_untouched(tmp_path, capsys):
    src = tmp_path / "m.tflite"
    data = models.conv_relu().to_bytes()  # the RELU is already fused: nothing to do
    src.write_bytes(data)
    stat = src.stat()
    rc = main([str(src), "--in-place"])
    out = capsys.readouterr().out
    assert rc == 0 and "nothing to fuse" in out
    assert src.read_bytes() == data and src.stat().st_ino == stat.st_ino and src.stat().st_mtime == stat.st_mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite"]  # no backup


def test_in_out_with_nothing_to_fuse_writes_a_byte_copy_and_says_so(tmp_path, capsys):
    src, dst = tmp_path / "m.tflite", tmp_path / "out.tflite"
    data = models.conv_relu().to_bytes()
    src.write_bytes(data)
    rc = main([str(src), str(dst), "--report", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "nothing to fuse" in out
    assert dst.read_bytes() == data
    report = _report(tmp_path / "r.json")
    assert report["nothing_to_fuse"] and report["written"] and report["verification"] is None


def test_new_outputs_follow_the_umask(tmp_path, capsys):
    import os

    src = tmp_path / "m.tflite"
    src.write_bytes(models.conv_bn_relu().to_bytes())
    old = os.umask(0o027)
    try:
        assert main([str(src), str(tmp_path / "a.tflite"), "-q"]) == 0
        os.umask(0o002)
        assert main([str(src), str(tmp_path / "b.tflite"), "-q"]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "a.tflite").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b.tflite").stat().st_mode & 0o777 == 0o664


def test_in_place_keeps_the_inputs_mode(tmp_path, capsys):
    src = tmp_path / "m.tflite"
    src.write_bytes(models.conv_bn_relu().to_bytes())
    src.chmod(0o644)
    assert main([str(src), "--in-place", "-q"]) == 0
    assert src.stat().st_mode & 0o777 == 0o644
    src.write_bytes(models.conv_bn_relu(seed=2).to_bytes())
    src.chmod(0o604)
    assert main([str(src), "--in-place", "-q", "--no-backup"]) == 0
    assert src.stat().st_mode & 0o777 == 0o604


def test_a_closed_pipe_exits_quietly(tmp_path):
    """`tflite-fuse inspect m.tflite --json | head -2`: no "internal error"."""
    import subprocess
    import sys

    from tflite_fuser.graph import Buffer, Metadata

    b = models.conv_relu()
    for i in range(4000):  # a JSON far larger than a pipe's 64 KiB buffer
        buf = Buffer(np.frombuffer(b"x", np.uint8))
        b.model.buffers.append(buf)
        b.model.metadata.append(Metadata(f"vendor_metadata_entry_{i:05d}", buf))
    src = tmp_path / "m.tflite"
    src.write_bytes(b.to_bytes())
    proc = subprocess.run(f"{sys.executable} -m tflite_fuser inspect {src} --json | head -2; "
                          "echo \"status ${PIPESTATUS[0]}\"", shell=True, executable="/bin/bash",
                          capture_output=True, text=True, timeout=120)
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and lines[0] == "{"
    assert lines[-1] == "status 141"


def test_a_failed_verification_is_reported_on_stderr_too(model_file, tmp_path, capsys, broken_pass):
    rc = main([str(model_file), str(tmp_path / "out.tflite"), "--strict"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "verification: FAIL" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tflite-fuse: verification failed: outputs differ")


def test_verbose_lists_every_rewrite_split_conv_merges_included(tmp_path, capsys):
    src = tmp_path / "m.tflite"
    src.write_bytes((ROOT / "fixtures" / "naive" / "mobilenetv2.tflite").read_bytes())
    rc = main([str(src), str(tmp_path / "out.tflite"), "-v", "--report", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0
    report = _report(tmp_path / "r.json")
    per_pass = {p["name"]: p["rewrites"] for p in report["passes"]}
    listed = [r["pass"] for r in report["rewrites"]]
    assert {name: listed.count(name) for name in per_pass} == per_pass
    assert listed.count("fuse-split-conv") == 17
    listing = out.split(f"rewrites ({sum(per_pass.values())}):")[1].split("\n  verification")[0]
    assert sum(line.startswith("    fuse-split-conv: merged SPLIT -> ") for line in listing.splitlines()) == 17
    assert f"rewrites ({sum(per_pass.values())}):" in out


def test_a_residual_add_of_two_computed_tensors_is_not_left_alone(tmp_path, capsys):
    """ResNet's residual ADDs were never candidates: they are not reported."""
    src = tmp_path / "m.tflite"
    src.write_bytes((ROOT / "fixtures" / "naive" / "resnet18.tflite").read_bytes())
    assert main([str(src), str(tmp_path / "out.tflite"), "-q", "--report", str(tmp_path / "r.json")]) == 0
    skipped = _report(tmp_path / "r.json")["skipped"]
    assert not any("not a constant" in s["reason"] for s in skipped), skipped


def test_the_pass_line_says_how_close_the_worst_element_came_to_its_bound(tmp_path, capsys):
    """An element near zero gives a large relative error that atol carries:
    the summary must not print it beside rtol as if it were the verdict."""
    src = tmp_path / "m.tflite"
    src.write_bytes((ROOT / "fixtures" / "naive" / "mobilenetv2.tflite").read_bytes())
    assert main([str(src), str(tmp_path / "out.tflite"), "--report", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "verification: PASS" in ln)
    assert "max rel error" not in line and "of its bound atol + rtol x |a|" in line
    v = _report(tmp_path / "r.json")["verification"]
    assert 0 < v["bound_used"] <= 1 and v["max_rel_error"] > v["rtol"]  # the misleading figure stays in JSON
    worst = v["outputs"][0]
    assert worst["worst_abs_error"] <= worst["worst_bound"]
    assert worst["worst_abs_error"] / worst["worst_bound"] == pytest.approx(v["bound_used"])


@pytest.mark.parametrize("extra", [[], ["--xnnpack"]])
def test_the_runtime_says_nothing_on_the_users_stderr(tmp_path, extra):
    """The C++ runtime's "INFO: Created TensorFlow Lite XNNPACK delegate for
    CPU." is not ours to print: a successful run leaves stderr empty."""
    import subprocess
    import sys

    src = tmp_path / "m.tflite"
    src.write_bytes(models.conv_bn_relu().to_bytes())
    proc = subprocess.run([sys.executable, "-m", "tflite_fuser", str(src), str(tmp_path / "o.tflite"), *extra],
                          capture_output=True, text=True, timeout=120, env={**__import__("os").environ,
                                                                             "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "verification: PASS" in proc.stdout


def test_repeated_disable_options_add_up(tmp_path):
    """``--disable a --disable b`` leaves out both, as ``--disable a,b`` does
    (the second used to replace the first)."""
    out = tmp_path / "o.tflite"
    from conftest import FIXTURES

    rc = main([str(FIXTURES / "nobuco" / "bnneck.tflite"), str(out), "--report", str(tmp_path / "r.json"),
               "--disable", "drop-reshape-after-reduce", "--disable", "fold-pad"])
    assert rc == 0
    assert json.loads((tmp_path / "r.json").read_text())["nothing_to_fuse"]
