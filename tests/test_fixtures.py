"""The committed fixture corpus agrees with its manifest.

Cheap checks only (no torch, no TensorFlow): every listed file exists, parses
with ``tflite_fuser.load``, has the op counts and patterns the manifest says,
and runs in the LiteRT interpreter. ``fixtures/make_fixtures.py`` regenerates
both the files and the manifest; a failure here means one was changed without
the other.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import tflite_fuser
from conftest import FIXTURES

MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
ENTRIES = MANIFEST["fixtures"]
BY_NAME = {e["name"]: e for e in ENTRIES}


def _patterns():
    sys.path.insert(0, str(FIXTURES))
    try:
        import patterns
    finally:
        sys.path.remove(str(FIXTURES))
    return patterns


def _present(entry) -> bool:
    path = FIXTURES / entry["file"]
    if not path.exists():
        if entry["committed"]:
            pytest.fail(f"{entry['file']} is listed as committed but missing")
        pytest.skip(f"{entry['file']} is not committed (regenerate with fixtures/make_fixtures.py)")
    return True


def _ids(entries):
    return [e["name"] for e in entries]


@pytest.mark.parametrize("entry", ENTRIES, ids=_ids(ENTRIES))
def test_fixture_matches_manifest(entry):
    _present(entry)
    model = tflite_fuser.load(FIXTURES / entry["file"])
    assert model.op_counts() == entry["op_counts"]
    assert model.num_operators() == entry["num_operators"]
    assert [s.key for s in model.signature_defs] == entry["signatures"]
    assert _patterns().detect(model) == entry["patterns"]
    assert (FIXTURES / entry["file"]).stat().st_size == entry["size_bytes"]


@pytest.mark.parametrize("entry", ENTRIES, ids=_ids(ENTRIES))
def test_fixture_runs_in_interpreter(entry):
    from ai_edge_litert.interpreter import Interpreter

    _present(entry)
    interp = Interpreter(model_path=str(FIXTURES / entry["file"]))
    if not entry["runs_in_litert"]:  # kept for what it shows; pin that it still does not run
        with pytest.raises(RuntimeError):  # at allocation, or at its first invoke (a kernel's own type check)
            interp.allocate_tensors()
            for d in interp.get_input_details():
                interp.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
            interp.invoke()
        return
    interp.allocate_tensors()
    details = interp.get_input_details()
    assert [(d["name"], [int(v) for v in d["shape"]], np.dtype(d["dtype"]).name) for d in details] == \
        [(i["name"], i["shape"], i["dtype"]) for i in entry["inputs"]]
    rng = np.random.default_rng(0)
    for d in details:
        if np.issubdtype(d["dtype"], np.floating):
            x = rng.uniform(-1, 1, d["shape"]).astype(d["dtype"])
        else:
            x = rng.integers(-128, 128, d["shape"]).astype(d["dtype"])
        interp.set_tensor(d["index"], x)
    interp.invoke()
    for d in interp.get_output_details():
        y = interp.get_tensor(d["index"])
        if np.issubdtype(y.dtype, np.floating):
            assert np.isfinite(y).all()


def test_every_ideal_counterpart_is_a_listed_fixture():
    for e in ENTRIES:
        if e["ideal"] is not None:
            ideal = e["ideal"][:-len(".tflite")]
            assert ideal in BY_NAME, f"{e['name']}: ideal {e['ideal']} not in the manifest"
            # route (a)'s fused counterpart, or (timm's networks) the deploy-form twin through
            # the same converter
            assert BY_NAME[ideal]["route"] in ("ideal", e["route"])
            if BY_NAME[ideal]["route"] == e["route"]:
                assert BY_NAME[ideal]["module"] == f"{e['module']}_deploy"


#: modules made for some routes' own problems (ShuffleNetV2: litert-torch's rank-5 shuffle on the GPU;
#: ConvNeXt and the GELU MLP: what onnx2tf writes of transformer-style layers), as
#: fixtures/make_fixtures.py ONLY_ROUTES lists them; timm's own networks (two real converters, their
#: deploy forms as their ideals), DiverseBranchBlock's depthwise form and the PReLU network
ONE_ROUTE = {"groups4", "regnetx", "shufflenetv2", "mobilenetv3", "convnext", "mlp_gelu", "attention", "ghostnet",
             "timm_repvgg", "timm_repvgg_deploy", "timm_mobileone", "timm_mobileone_deploy", "dbb_dw", "dbb_dw_deploy", "prelu",
             "timm_efficientnet", "mlp_gelu_erf", "bnneck", "reflect_stem", "elu_net"}


def test_every_module_has_each_route():
    by_route: dict[str, set] = {}
    for e in ENTRIES:
        if e["route"] in ("tf", "naive", "ideal", "litert_torch") and e["module"] not in ONE_ROUTE:
            by_route.setdefault(e["route"], set()).add(e["module"])
    assert by_route["tf"] == by_route["naive"] == by_route["ideal"] == by_route["litert_torch"]
    assert {"net1", "net2", "net3", "resnet18", "mobilenetv2", "resnext", "fc_head"} <= by_route["tf"]


def test_pytorch_parity_was_within_tolerance_where_required():
    rtol = MANIFEST["parity_rtol"]
    for e in ENTRIES:
        if e["parity_required"]:
            assert e["max_rel_error_vs_torch"] is not None and e["max_rel_error_vs_torch"] <= rtol, e["name"]
    assert all(e["parity_required"] for e in ENTRIES if e["route"] in ("tf", "naive"))


def test_uncommitted_fixtures_are_ignored_by_git():
    ignored = set((FIXTURES / ".gitignore").read_text().split())
    for e in ENTRIES:
        assert (f"/{e['file']}" in ignored) == (not e["committed"]), e["name"]


def test_committed_corpus_stays_small():
    """Clones and CI stay quick: 23.6 MiB before the training-form networks
    (RepVGG, ACNet, MobileOne in four routes each) and the GPU fixtures, 30.2
    after, with those networks narrowed to keep it so; 32.1 with nobuco's route, 34.3 with
    ConvNeXt and GhostNet (three converters each), the attention block and the GELU MLP, 36.5
    with onnx2tf's RepVGG, ACNet and MobileOne, 39.5 with timm's own RepVGG and MobileOne
    (training and deploy forms, through litert-torch and onnx2tf), 39.8 with DiverseBranchBlock's
    depthwise form and the PReLU network, 40.6 with onnx2tf's timm EfficientNet-B0, 40.9 with the
    BNNeck embedder and the normalising image front, 41.0 with the ELU network."""
    total = sum(e["size_bytes"] for e in ENTRIES if e["committed"])
    assert total < 42 * 2**20, f"committed fixtures take {total / 2**20:.1f} MiB"
