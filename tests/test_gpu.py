"""The GPU accelerator as a verification runtime (``--target gpu``,
``--verify-on gpu``) and its coverage in ``inspect --target gpu``.

These run LiteRT's real GPU accelerator: on a machine without a GPU, on
SwiftShader (Debian's ``chromium`` and ``libvulkan1``). Without one they skip
with the reason, except under CI, where a skipped GPU test is a failure so the
check cannot silently vanish."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from tflite_fuser import gpu
from tflite_fuser.builder import ModelBuilder
from tflite_fuser.cli import main

from models import conv_relu_0_to_1_conv

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture(scope="module", autouse=True)
def gpu_accelerator():
    why = gpu.unavailable()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the GPU tests: {why}")
        pytest.skip(why)


SCHEMA = json.loads((FIXTURES.parent / "schemas" / "report.schema.json").read_text())


def _fuse(tmp_path, src: Path, *extra: str) -> tuple[int, dict]:
    """Run the CLI; its exit code and its JSON report (checked against the schema)."""
    rc = main([str(src), str(tmp_path / "o.tflite"), "--report", str(tmp_path / "r.json"), *extra])
    report = json.loads((tmp_path / "r.json").read_text())
    jsonschema.validate(report, SCHEMA)
    return rc, report


def test_relu_0_to_1_leaves_ops_on_the_cpu_and_target_gpu_moves_them_all_to_the_gpu(tmp_path):
    src = tmp_path / "m.tflite"
    src.write_bytes(conv_relu_0_to_1_conv())
    rc, report = _fuse(tmp_path, src, "--target", "gpu")
    assert rc == 0
    g = report["verification"]["gpu"]
    assert g["available"] and g["device"]
    before, after = g["coverage_before"], g["coverage_after"]
    assert not before["all_on_gpu"] and before["cpu_ops"] > 0
    assert [r["op"] for r in before["refused"]] == ["RELU_0_TO_1"]
    assert after["all_on_gpu"] and after["cpu_ops"] == 0 and after["refused"] == []
    assert g["fused_vs_cpu"]["ok"] and g["original_vs_cpu"]["ok"]
    assert g["fused_vs_cpu"]["max_abs_error"] < 1e-3 * g["fused_vs_cpu"]["max_abs_reference"]


def test_a_fixture_runs_all_on_the_gpu_before_and_after_and_the_fused_model_matches_the_cpu(tmp_path):
    rc, report = _fuse(tmp_path, FIXTURES / "naive" / "net1_dw.tflite", "--target", "gpu")
    assert rc == 0
    g = report["verification"]["gpu"]
    assert g["coverage_before"]["all_on_gpu"] and g["coverage_after"]["all_on_gpu"]
    assert g["coverage_after"]["gpu_ops"] < g["coverage_before"]["gpu_ops"]
    assert g["fused_vs_cpu"]["ok"]


def test_verify_on_gpu_adds_the_gpu_proof_under_another_target(tmp_path):
    rc, report = _fuse(tmp_path, FIXTURES / "naive" / "net1.tflite", "--target", "builtin", "--verify-on", "gpu")
    assert rc == 0
    v = report["verification"]
    assert v["kernels"] == "xnnpack"  # the rewrite proved on the CPU, then the model on the GPU
    assert v["gpu"]["fused_vs_cpu"]["ok"]
    assert v["gpu"]["coverage_after"]["all_on_gpu"]


def test_inspect_target_gpu_lists_each_refused_op_with_the_delegates_reason_and_its_repair(tmp_path, capsys):
    src = tmp_path / "m.tflite"
    src.write_bytes(conv_relu_0_to_1_conv())
    assert main(["inspect", str(src), "--target", "gpu"]) == 0
    text = capsys.readouterr().out
    assert "1 ops on the GPU, 2 on the CPU (refused: RELU_0_TO_1)" in text
    assert "RELU_0_TO_1: Not supported op" in text and "lower-relu-0-to-1" in text
    assert main(["inspect", str(src), "--target", "gpu", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)["gpu"]
    assert info["refused"] == [{"op": "RELU_0_TO_1", "reason": "Not supported op RELU_0_TO_1",
                                "repair": gpu.repair("RELU_0_TO_1", "")}]


def test_an_op_the_gpu_refuses_with_no_rewrite_is_named_as_such(tmp_path, capsys):
    b = ModelBuilder()
    x = b.input("x", [1, 2, 3, 4, 5])
    b.output(b.add(x, np.ones(5, np.float32)))
    src = tmp_path / "rank5.tflite"
    src.write_bytes(b.to_bytes())
    assert main(["inspect", str(src), "--target", "gpu"]) == 0
    text = capsys.readouterr().out
    assert "refused: ADD" in text and "no rewrite yet" in text


def test_without_a_gpu_accelerator_the_report_says_how_to_get_one_and_verifies_on_the_cpu(tmp_path):
    """A child process sees no Vulkan driver (VK_ICD_FILENAMES at nothing):
    one note with the way to provide one, the CPU proof as before, exit 0."""
    src = tmp_path / "m.tflite"
    src.write_bytes(conv_relu_0_to_1_conv())
    env = {**os.environ, "VK_ICD_FILENAMES": str(tmp_path / "none.json")}
    proc = subprocess.run([sys.executable, "-m", "tflite_fuser", str(src), str(tmp_path / "o.tflite"),
                           "--target", "gpu", "--report", str(tmp_path / "r.json")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    v = json.loads((tmp_path / "r.json").read_text())["verification"]
    assert v["ok"] and v["gpu"]["available"] is False
    assert "apt install chromium libvulkan1" in v["gpu"]["reason"]
    assert any("verified on the CPU only" in n for n in v["notes"])
    assert "the GPU accelerator could not be used here" in proc.stdout


def test_litert_torch_shufflenetv2_runs_mostly_on_the_cpu_until_its_shuffles_are_lowered_to_rank_4(tmp_path):
    """The real converter output: every channel shuffle is a rank-5 RESHAPE ->
    TRANSPOSE -> RESHAPE, which the delegate refuses, so 67 of its 81 ops run
    on the CPU. Fused for the gpu target all 80 run on the GPU (the head's
    TRANSPOSE before its pooling goes too), and match the original on the CPU."""
    rc, report = _fuse(tmp_path, FIXTURES / "litert_torch" / "shufflenetv2.tflite", "--target", "gpu")
    assert rc == 0
    g = report["verification"]["gpu"]
    before, after = g["coverage_before"], g["coverage_after"]
    assert (before["gpu_ops"], before["cpu_ops"]) == (14, 67)
    assert {r["op"] for r in before["refused"]} == {"RESHAPE", "TRANSPOSE"}
    assert after["all_on_gpu"] and after["gpu_ops"] == 80
    assert g["fused_vs_cpu"]["ok"]


def test_the_sparse_float16_model_the_gpu_computes_wrongly_is_right_there_once_its_weights_are_dense(tmp_path):
    """TF's sparse float16 form (DENSIFY -> DEQUANTIZE per weight, as in
    mediapipe's detectors): partly delegated, the GPU's output is wrong (a
    finding about the runtime); dense, the model runs whole on the GPU and
    matches the CPU."""
    rc, report = _fuse(tmp_path, FIXTURES / "special" / "sparse_fp16.tflite", "--target", "gpu")
    assert rc == 0
    g = report["verification"]["gpu"]
    assert not g["coverage_before"]["all_on_gpu"] and g["coverage_after"]["all_on_gpu"]
    assert {r["op"] for r in g["coverage_before"]["refused"]} >= {"DENSIFY"}
    assert not g["original_vs_cpu"]["ok"] and g["fused_vs_cpu"]["ok"]
    assert "fused model fixes it" in g["verdict"]


def test_a_rewrite_the_gpu_computes_wrongly_is_reverted_and_the_rest_kept(tmp_path):
    """The GPU accelerator adds a rank-2 constant of the input's own shape
    wrongly (measured on SwiftShader), so a DENSIFY feeding such an ADD must
    stay: the GPU proof fails, bisection names the rewrite, it is reverted."""
    from test_densify_constants import _densify_model, _pruned, block_sparse

    rng = np.random.default_rng(1234)
    src = tmp_path / "m.tflite"
    src.write_bytes(_densify_model(*block_sparse(_pruned(rng, (6, 16), 4), 4), (6, 16), "add"))
    rc, report = _fuse(tmp_path, src, "--target", "gpu")
    assert rc == 0
    (rev,) = report["reverted"]
    assert rev["pass"] == "densify-constants" and "on the GPU accelerator the fused model differs" in rev["error"]
    assert (tmp_path / "o.tflite").read_bytes() == src.read_bytes()


def test_the_int8_resnet18_the_gpu_computes_wrongly_is_right_there_once_its_strided_pointwise_convs_are_split(tmp_path):
    """TF's int8 ResNet18: all on the GPU, but the delegate ignores the stride
    of its three quantized 1x1 stride-2 shortcut convs (it warns "Shape
    mismatch ... convolution1x1") and the output is far off; with the stride
    taken into a STRIDED_SLICE the GPU matches the CPU."""
    rc, report = _fuse(tmp_path, FIXTURES / "quant" / "resnet18_int8.tflite", "--target", "gpu")
    assert rc == 0
    g = report["verification"]["gpu"]
    assert g["coverage_before"]["all_on_gpu"] and g["coverage_after"]["all_on_gpu"]
    assert any("Shape mismatch" in w and "convolution1x1" in w for w in g["coverage_before"]["warnings"])
    assert not any("Shape mismatch" in w for w in g["coverage_after"]["warnings"])
    assert not g["original_vs_cpu"]["ok"] and g["original_vs_cpu"]["max_abs_error"] > 0.1 * 127
    assert g["fused_vs_cpu"]["ok"]
    assert report["output"]["op_counts"]["STRIDED_SLICE"] == 3


def test_mediapipes_sparse_face_detector_as_shipped_is_wrong_on_the_gpu_until_its_weights_are_dense(tmp_path):
    """mediapipe's own file (0.10.14 wheel): 46 DENSIFY -> DEQUANTIZE weights
    leave 229 of its 388 ops on the CPU, and the partly delegated model's
    outputs are far off (hundreds, on values up to ~185); dense, all of it
    runs on the GPU and matches the CPU."""
    rc, report = _fuse(tmp_path, FIXTURES / "shipped" / "face_detection_full_range_sparse.tflite", "--target", "gpu")
    assert rc == 0
    g = report["verification"]["gpu"]
    assert (g["coverage_before"]["gpu_ops"], g["coverage_before"]["cpu_ops"]) == (159, 229)
    assert g["coverage_after"]["all_on_gpu"]
    assert not g["original_vs_cpu"]["ok"] and g["fused_vs_cpu"]["ok"]
    assert report["input"]["op_counts"]["DENSIFY"] == 46 and "DENSIFY" not in report["output"]["op_counts"]


def test_onnx2tfs_mobilenetv3_runs_on_the_gpu_whole_once_its_hard_sigmoids_are_written_out(tmp_path):
    """onnx2tf writes each squeeze-excite gate's hard-sigmoid as RELU_0_TO_1,
    which the delegate refuses: 69 of its 92 ops run on the CPU. Written as
    MINIMUM(RELU(x), 1), all of them run on the GPU."""
    rc, report = _fuse(tmp_path, FIXTURES / "onnx2tf" / "mobilenetv3.tflite", "--target", "gpu")
    assert rc == 0
    g = report["verification"]["gpu"]
    assert (g["coverage_before"]["gpu_ops"], g["coverage_before"]["cpu_ops"]) == (23, 69)
    assert g["coverage_after"]["all_on_gpu"]
    assert g["coverage_after"]["gpu_ops"] == sum(report["output"]["op_counts"].values())
    assert "RELU_0_TO_1" not in report["output"]["op_counts"]
    assert g["fused_vs_cpu"]["ok"]


def test_nobucos_one_alpha_prelu_the_gpu_refuses_runs_there_as_leaky_relu(tmp_path):
    """nobuco (and onnx2tf) write ``nn.PReLU()`` as a PRELU with a [1, 1, 1]
    alpha; the delegate refuses it ("Linear alpha shape does not match the
    number of input channels"). As LEAKY_RELU the whole model runs on the GPU."""
    rc, report = _fuse(tmp_path, FIXTURES / "nobuco" / "prelu.tflite", "--target", "gpu")
    assert rc == 0
    g = report["verification"]["gpu"]
    assert not g["coverage_before"]["all_on_gpu"]
    assert [r["op"] for r in g["coverage_before"]["refused"]] == ["PRELU"]
    assert g["coverage_after"]["all_on_gpu"] and g["fused_vs_cpu"]["ok"]
    assert report["output"]["op_counts"]["LEAKY_RELU"] == 1


def test_the_gpu_computes_diverse_branch_blocks_wrongly_as_converted_and_right_once_merged(tmp_path):
    rc, report = _fuse(tmp_path, FIXTURES / "litert_torch" / "dbb_dw.tflite", "--target", "gpu")
    assert rc == 0
    g = report["verification"]["gpu"]
    assert g["coverage_before"]["all_on_gpu"] and g["coverage_after"]["all_on_gpu"]
    assert not g["original_vs_cpu"]["ok"] and g["fused_vs_cpu"]["ok"]
    assert "AVERAGE_POOL_2D" not in report["output"]["op_counts"]


def test_a_model_neither_the_cpu_nor_the_gpu_runs_is_checked_on_the_gpu_against_the_fused_model_on_the_cpu(tmp_path):
    """onnx2tf's FlexErf GELU: neither the CPU interpreter nor the GPU runs the
    converted model. The CPU proof computes the original ops in numpy (region
    by region); the GPU's part compares the fused model there with itself on
    the CPU, instead of failing for want of a reference."""
    rc, report = _fuse(tmp_path, FIXTURES / "onnx2tf" / "mlp_gelu_erf_tfc.tflite", "--target", "gpu")
    assert rc == 0 and report["verification"]["ok"]
    g = report["verification"]["gpu"]
    assert g["coverage_before"]["error"] and g["coverage_after"]["all_on_gpu"]
    assert "fused_vs_cpu" not in g and g["fused_vs_fused_on_cpu"]["ok"]
    assert g["fused_vs_fused_on_cpu"]["max_abs_reference"] > 0


def test_the_gpu_computes_nobucos_written_out_normalisation_wrongly_and_right_once_merged(tmp_path):
    """nobuco's ``((x + 1) / 2 - mean) / std`` ahead of a MIRROR_PAD: LiteRT's
    GPU delegate on SwiftShader is off by 2.3 on outputs up to 1.7 (each op
    alone it computes right, measured); the merged MUL and ADD it computes
    right, with only merge-constant-chain run."""
    rc, report = _fuse(tmp_path, FIXTURES / "nobuco" / "reflect_stem.tflite", "--target", "gpu",
                       "--passes", "merge-constant-chain")
    assert rc == 0
    g = report["verification"]["gpu"]
    assert g["coverage_before"]["all_on_gpu"] and g["coverage_after"]["all_on_gpu"]
    assert not g["original_vs_cpu"]["ok"] and g["fused_vs_cpu"]["ok"]


def test_litert_torchs_written_out_elus_run_on_the_gpu_as_elu_and_match(tmp_path):
    """litert-torch's ELU as EXP, SUB, GREATER_EQUAL, SELECT in NCHW islands:
    all on the GPU before, and after --target gpu as 3 ELUs without the
    islands' transposes, matching the original on the CPU."""
    rc, report = _fuse(tmp_path, FIXTURES / "litert_torch" / "elu_net.tflite", "--target", "gpu")
    assert rc == 0
    g = report["verification"]["gpu"]
    assert g["coverage_before"]["all_on_gpu"] and g["coverage_after"]["all_on_gpu"]
    assert g["fused_vs_cpu"]["ok"] and report["output"]["op_counts"]["ELU"] == 3
