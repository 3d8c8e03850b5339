"""The "how to add a pass" example in docs/CONTRIBUTING.md is real code: it
runs as a pass, its rewrite verifies, and its precondition stops a candidate."""

from __future__ import annotations

import re
import sys
import types

import numpy as np
import pytest

from conftest import ROOT, fuse_and_check, op_counts
from helpers import reasons
from tflite_fuser import passes
from tflite_fuser.builder import ModelBuilder


@pytest.fixture
def example_pass(monkeypatch):
    code = re.search(r"```python\n(.*?)```", (ROOT / "docs" / "CONTRIBUTING.md").read_text(), re.S).group(1)
    mod = types.ModuleType("tflite_fuser.passes.drop_double_clamp")
    mod.__package__ = "tflite_fuser.passes"
    monkeypatch.setitem(sys.modules, mod.__name__, mod)  # dataclasses look the module up
    exec(compile(code, "CONTRIBUTING.md", "exec"), mod.__dict__)
    monkeypatch.setattr(passes, "PASS_CLASSES", passes.PASS_CLASSES + [mod.DropDoubleClamp])
    return "drop-double-clamp"


def test_the_documented_pass_rewrites_and_verifies(example_pass):
    b = ModelBuilder()
    x = b.input("x", [1, 4, 4, 2])
    b.output(b.relu(b.relu6(b.add(x, np.float32([1, 2])))))
    r = fuse_and_check(b.to_bytes(), passes=[example_pass])
    assert op_counts(r) == {"ADD": 1, "RELU6": 1}
    assert [w["pass"] for w in r.report["rewrites"]] == [example_pass]


def test_the_documented_pass_states_why_it_leaves_a_candidate(example_pass):
    b = ModelBuilder()
    x = b.input("x", [1, 4, 4, 2])
    y = b.relu6(b.add(x, np.float32([1, 2])))
    b.output(b.relu(y), y)  # the RELU6's output is a model output: it must stay
    r = fuse_and_check(b.to_bytes(), passes=[example_pass])
    assert op_counts(r) == {"ADD": 1, "RELU": 1, "RELU6": 1}
    assert any("model output" in s for s in reasons(r, example_pass))
