"""--nhwc-io: litert-torch's NCHW interface becomes NHWC (opt-in, reported),
the interface keeps its names, and the change is proved with transposed
inputs and outputs."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from tflite_fuser import fuse
from tflite_fuser.cli import main

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SCHEMA = json.loads((FIXTURES.parent / "schemas/report.schema.json").read_text())


def _run(model, x: np.ndarray) -> tuple[list[str], np.ndarray]:
    runner = Interpreter(model_content=bytes(model)).get_signature_runner()
    (name,) = runner.get_input_details()
    (y,) = runner(**{name: x}).values()
    return list(runner.get_input_details()), y


@pytest.mark.parametrize("name,output_nchw", [("litert_torch/net1", True), ("litert_torch/shufflenetv2", False)])
def test_the_interface_becomes_nhwc_under_its_own_names_and_computes_the_same(name, output_nchw, rng):
    src = (FIXTURES / f"{name}.tflite").read_bytes()
    r = fuse(src, nhwc_io=True, runs=1)
    interface = r.report["interface"]
    assert interface["applied"] and interface["verification"]["ok"]
    sides = sorted(c["side"] for c in interface["changes"])
    assert sides == (["input", "output"] if output_nchw else ["input"])
    assert "TRANSPOSE" not in r.report["output"]["op_counts"] or not output_nchw
    shape = interface["changes"][0]["shape_before"]
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    names_a, a = _run(src, x)
    names_b, b = _run(r.model_bytes, np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    assert names_a == names_b  # the caller keeps its names
    if output_nchw:
        b = b.transpose(0, 3, 1, 2)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    jsonschema.validate(r.report, SCHEMA)


def test_without_the_flag_the_interface_is_kept_and_not_reported():
    r = fuse(FIXTURES / "litert_torch/net1.tflite", runs=1)
    assert r.report["interface"] is None
    assert r.report["input"]["op_counts"].get("TRANSPOSE") == r.report["output"]["op_counts"].get("TRANSPOSE")


def test_an_nhwc_model_is_left_as_it_was_and_says_so(capsys, tmp_path):
    assert main([str(FIXTURES / "naive/net1.tflite"), str(tmp_path / "o.tflite"), "--nhwc-io"]) == 0
    assert "no NCHW input or output behind a boundary TRANSPOSE" in capsys.readouterr().out


def test_the_gpu_and_micro_targets_refuse_it_with_one_line(capsys, tmp_path):
    for target in ("gpu", "micro"):
        assert main([str(FIXTURES / "litert_torch/net1.tflite"), str(tmp_path / "o.tflite"), "--nhwc-io",
                     "--target", target]) == 2
        assert "--nhwc-io is proved on LiteRT's CPU kernels" in capsys.readouterr().err
    assert not (tmp_path / "o.tflite").exists()
