"""The whole chain is right, not only fused-vs-unfused: every float fixture,
after fusion, matches the eval-mode PyTorch module it came from.

The modules are rebuilt from ``fixtures/torch_modules.py`` with the seeds the
fixture script used, run on the same seeded inputs, and compared with the
fused TFLite model as ``max |tflite - torch| / max |torch| <= 1e-4`` (the
fixture corpus' own parity measure; see ``fixtures/check.py``).
"""

from __future__ import annotations

import json
import sys

import pytest

from conftest import FIXTURES

torch = pytest.importorskip("torch")
sys.path.insert(0, str(FIXTURES))
import check  # noqa: E402  (fixtures/check.py)
import torch_modules  # noqa: E402

from tflite_fuser import fuse  # noqa: E402

MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
CASES = [e for e in MANIFEST["fixtures"]
         if e.get("parity_required") and e.get("committed", True) and e["module"] in torch_modules.MODULES
         and e["route"] in ("tf", "naive", "litert_torch", "onnx2tf", "nobuco") and (FIXTURES / e["file"]).exists()]


@pytest.mark.parametrize("entry", CASES, ids=lambda e: e["name"])
def test_fused_model_matches_the_pytorch_module(entry):
    result = fuse(FIXTURES / entry["file"], runs=1, isolate=False)
    assert result.ok, result.verification.message
    module = torch_modules.build(entry["module"])
    worst = 0.0
    for seed in range(check.PARITY_INPUTS):
        x = torch_modules.example_input(entry["module"], seed)
        with torch.no_grad():
            ref = module(x).numpy()
        nhwc = entry["input_layout"] == "NHWC"
        y = check.run_tflite(result.model_bytes, check.nhwc(x.numpy()) if nhwc else x.numpy())
        y = check.nchw(y) if nhwc else y  # (by layout: H == C would make shapes agree either way)
        worst = max(worst, check.rel_error(y, ref))
    assert worst <= 1e-4, f"fused {entry['name']} differs from PyTorch by {worst:.2e} of the output scale"


def test_onnx2tfs_flex_erf_mlp_the_interpreter_cannot_run_runs_once_fused_and_matches_pytorch():
    """onnx2tf's tf_converter backend writes PyTorch's exact GELU with Erf as a
    Flex op (FlexErf), and drops its 0.5 into the next layer: the stock
    interpreter cannot run the model at all. Fused, each GELU is one GELU op
    (its factor 2 folded into the next FULLY_CONNECTED), proved region by
    region against the original ops computed in numpy, and the model runs
    and matches the PyTorch module."""
    entry = next(e for e in MANIFEST["fixtures"] if e["name"] == "onnx2tf/mlp_gelu_erf_tfc")
    src = FIXTURES / entry["file"]
    assert not entry["runs_in_litert"] and entry["op_counts"]["CUSTOM(FlexErf)"] == 2
    with pytest.raises(RuntimeError, match="FlexErf"):
        check.run_tflite(src.read_bytes(), torch_modules.example_input(entry["module"]).numpy())
    result = fuse(src, runs=1, isolate=False)
    assert result.ok, result.verification.message
    assert result.report["output"]["op_counts"] == {"FULLY_CONNECTED": 3, "GELU": 2}
    module = torch_modules.build(entry["module"])
    for seed in range(check.PARITY_INPUTS):
        x = torch_modules.example_input(entry["module"], seed)
        with torch.no_grad():
            ref = module(x).numpy()
        assert check.rel_error(check.run_tflite(result.model_bytes, x.numpy()), ref) <= 1e-4
