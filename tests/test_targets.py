"""--target: the table of targets decides which forms a model is fused into,
the report says which target, and a model fused for TFLite Micro is proved on
TFLite Micro."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import FIXTURES, fuse_and_check, op_counts
from helpers import reasons
from tflite_fuser import micro
from tflite_fuser.builder import ModelBuilder
from tflite_fuser.cli import main
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.targets import FORMS, TARGETS


def _fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.tflite").read_bytes()


def test_every_target_says_what_it_runs_and_what_it_prefers():
    for t in TARGETS.values():
        assert t.verify_on in ("builtin", "xnnpack", "micro", "gpu") and t.summary
        assert t.supports <= set(FORMS)
        for rewrite, (make, why) in t.prefers.items():
            assert why, f"{t.name}: the choice on {rewrite} needs its measurement"


def test_the_table_refuses_the_grouped_merge_for_builtin_and_makes_it_for_xnnpack():
    src = _fixture("tf/resnext")
    kept = fuse_and_check(src, target="builtin")
    assert op_counts(kept)["CONCATENATION"] == 3
    assert sum("kept for target builtin" in r for r in reasons(kept, "fuse-split-conv")) == 3
    merged = fuse_and_check(src, target="xnnpack")
    assert "CONCATENATION" not in op_counts(merged) and merged.verification.kernels == "xnnpack"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_target_keeps_the_depthwise_merge(target):
    r = fuse_and_check(_fixture("tf/net3"), target=target)
    assert op_counts(r).get("DEPTHWISE_CONV_2D") == 1 and "SPLIT" not in op_counts(r)


def test_the_report_names_the_target_and_counts_what_it_kept(tmp_path, capsys):
    src = tmp_path / "m.tflite"
    src.write_bytes(_fixture("tf/resnext"))
    assert main([str(src), str(tmp_path / "o.tflite"), "--target", "builtin", "-v",
                 "--report", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["target"]["name"] == "builtin"
    assert "(target builtin)" in out.splitlines()[0]
    assert "kept for target builtin (3):" in out
    assert report["verification"]["kernels"] == "builtin"


def test_the_builtin_target_folds_the_bias_after_a_kept_split_into_its_branches():
    """onnx2tf's tf_converter backend with -dgc leaves SPLIT -> 32 CONV_2D ->
    CONCATENATION -> ADD(+RELU): for the built-in kernels the split stays,
    and the ADD and RELU go into every branch."""
    r = fuse_and_check(_fixture("onnx2tf/resnext_tfc_dgc"), target="builtin")
    before = r.report["input"]["op_counts"]
    assert op_counts(r)["CONCATENATION"] == before["CONCATENATION"] == 3
    assert op_counts(r)["ADD"] == before["ADD"] - 3
    assert {p["name"]: p["rewrites"] for p in r.report["passes"]}["fold-concat-affine"] == 3


def test_an_affine_and_activation_after_a_concatenation_of_different_convs_fold_into_each(rng):
    """An inception-style concatenation (3x3 and 1x1 branches: no split conv)
    followed by a batch norm and a RELU: one CONCATENATION of fused convs."""
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 4])
    a = b.conv2d(x, rng.standard_normal((6, 3, 3, 4)).astype(np.float32))
    c = b.conv2d(x, rng.standard_normal((2, 1, 1, 4)).astype(np.float32))
    y = b.concat([a, c])
    y = b.add(b.mul(y, rng.uniform(0.5, 2, 8).astype(np.float32)), rng.standard_normal(8).astype(np.float32))
    b.output(b.relu(y))
    r = fuse_and_check(b.to_bytes())
    assert op_counts(r) == {"CONV_2D": 2, "CONCATENATION": 1}
    convs = [op for op in r.model.main.operators if op.code == Op.CONV_2D]
    assert all(op.options.fusedActivationFunction == 1 for op in convs)


def test_the_micro_target_proves_on_tflite_micro_a_model_it_could_not_load_before(tmp_path, capsys):
    """naive/mobilenetv2's depthwise convs in split form: CONCATENATIONs of up
    to 192 inputs, which TFLite Micro refuses (at most 10). Fused for micro,
    the model loads there and matches LiteRT's run of it."""
    src = tmp_path / "m.tflite"
    src.write_bytes(_fixture("naive/mobilenetv2"))
    with pytest.raises(RuntimeError, match="kMaxInputNum"):
        micro.runnables(src)
    assert main([str(src), str(tmp_path / "o.tflite"), "--target", "micro", "--report", str(tmp_path / "r.json")]) == 0
    v = json.loads((tmp_path / "r.json").read_text())["verification"]
    assert v["micro"]["original_loads"] is False and v["micro"]["agreement_ok"]
    assert v["micro"]["arena_bytes_after"] > 0
    (runnable,) = micro.runnables(tmp_path / "o.tflite")
    assert runnable.arena_bytes == v["micro"]["arena_bytes_after"]
    assert "TFLite Micro arena: does not load before" in capsys.readouterr().out


def test_the_micro_target_compares_tflite_micro_with_itself_when_the_original_loads():
    r = fuse_and_check(_fixture("naive/net1"), target="micro")
    assert r.verification.kernels == "micro" and r.verification.micro["original_loads"]
    assert r.verification.micro["arena_bytes_before"] > 0


def test_the_micro_target_stores_float16_weights_as_float32_so_tflite_micro_loads_them():
    src = _fixture("quant/net1_fp16")
    with pytest.raises(RuntimeError, match="dequantize"):
        micro.runnables(src)
    r = fuse_and_check(src, target="micro")
    assert "DEQUANTIZE" not in op_counts(r)
    micro.runnables(r.model_bytes)  # loads
    # Elsewhere the float16 weights stay: they halve the file and cost nothing.
    assert "DEQUANTIZE" in op_counts(fuse_and_check(src, target="xnnpack", passes=["dequantize-weights"]))


def _relu_0_to_1_model(rng, after_conv: bool = True) -> bytes:
    b = ModelBuilder()
    x = b.input("x", [1, 4, 4, 3])
    y = (b.conv2d(x, rng.standard_normal((8, 3, 3, 3)).astype(np.float32), activation=None) if after_conv
         else b.transpose(x, [0, 2, 1, 3]))
    b.output(b.op(Op.RELU_0_TO_1, [y], [list(y.shape)])[0])
    return b.to_bytes()


@pytest.mark.parametrize("target,lowered", [("micro", True), ("gpu", True), ("xnnpack", True), ("builtin", False)])
def test_relu_0_to_1_is_written_out_for_targets_without_it_or_faster_without_it(target, lowered, rng):
    """micro and gpu have no kernel; under XNNPACK the pair, its RELU fused
    into the conv, measured 1.03x (onnx2tf's MobileNetV3); the built-in
    kernels run RELU_0_TO_1 faster."""
    r = fuse_and_check(_relu_0_to_1_model(rng), target=target)
    if lowered:
        assert "RELU_0_TO_1" not in op_counts(r) and op_counts(r)["MINIMUM"] == 1
        assert r.model.num_operators() == 2
    else:
        assert r.report["nothing_to_fuse"]


def test_for_xnnpack_relu_0_to_1_stays_where_no_producer_takes_the_relu(rng):
    r = fuse_and_check(_relu_0_to_1_model(rng, after_conv=False), target="xnnpack")
    assert r.report["nothing_to_fuse"]


def test_without_tflite_micro_the_micro_target_says_verification_did_not_run_there(monkeypatch):
    monkeypatch.setattr(micro, "unavailable", lambda: "the tflite-micro package is not installed; "
                                                       + micro.INSTALL_HINT)
    r = fuse_and_check(_fixture("naive/net1"), target="micro")
    assert r.verification.kernels == "builtin"
    assert any("TFLite Micro verification was not run" in n and "tflite-fuse[micro]" in n
               for n in r.verification.notes)


@pytest.mark.parametrize("target,first", [("xnnpack", "xnnpack"), ("builtin", "builtin")])
def test_bench_times_the_targets_kernels_and_the_other_cpu_set(target, first, tmp_path, capsys):
    src = tmp_path / "m.tflite"
    src.write_bytes(_fixture("tf/net3"))
    assert main([str(src), str(tmp_path / "o.tflite"), "--target", target, "--bench", "--bench-rounds", "3",
                 "--report", str(tmp_path / "r.json")]) == 0
    bench = json.loads((tmp_path / "r.json").read_text())["bench"]
    assert bench["target_kernels"] == first and list(bench["kernels"])[0] == first
    assert set(bench["kernels"]) == {"xnnpack", "builtin"} and bench["rounds"] == 3
    for r in bench["kernels"].values():
        assert r["before_ms"] > 0 and r["after_ms"] > 0 and r["speedup"] > 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("speed ("))
    assert "(target)" in line and "x (" in line


def test_folding_into_branches_that_share_a_float16_bias_adds_no_dequantize():
    """TF's float16 ResNeXt: the 32 branch convs of a block share one zero
    bias behind one DEQUANTIZE. Their new biases differ per branch; stored
    float32 (smaller than float16 behind new DEQUANTIZE ops), the model
    shrinks instead of growing 88 DEQUANTIZEs."""
    r = fuse_and_check(_fixture("quant/resnext_fp16"), target="builtin")
    before = r.report["input"]["op_counts"]
    assert op_counts(r)["DEQUANTIZE"] <= before["DEQUANTIZE"]
    assert r.report["output"]["operators"] < r.report["input"]["operators"]
