"""Shared test helpers.

``fuse_and_check`` is the one assertion most pass tests need: run the real
pipeline (passes + interpreter verification) on model bytes and return the
result, failing the test if verification failed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tflite_fuser import fuse  # noqa: E402
from tflite_fuser.builder import ModelBuilder  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


def runs_in_litert(path: Path) -> bool:
    """Whether the LiteRT interpreter runs this fixture (the manifest says; a
    few real converter outputs are kept although it does not)."""
    import json

    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    rel = str(path.relative_to(FIXTURES))
    return next((e["runs_in_litert"] for e in manifest["fixtures"] if e["file"] == rel), True)


def fuse_and_check(model_bytes: bytes, **kw):
    """Fuse ``model_bytes`` and assert the interpreter verified the result, or,
    when nothing was rewritten, that the output is the input byte for byte."""
    kw.setdefault("runs", 2)
    kw.setdefault("isolate", False)  # our own test models: skip the child process start-up
    result = fuse(model_bytes, **kw)
    if result.report["nothing_to_fuse"]:
        assert result.verification is None and result.model_bytes == bytes(model_bytes)
        return result
    v = result.verification
    assert v is not None and v.ok, f"verification failed: {v.message if v else 'not run'}"
    return result


def op_counts(result) -> dict[str, int]:
    return result.report["output"]["op_counts"]


@pytest.fixture(scope="module")
def tf():
    """TensorFlow, for tests that convert with its TFLite converter."""
    return pytest.importorskip("tensorflow")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def builder():
    return ModelBuilder()
