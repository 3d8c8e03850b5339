"""Helpers the test files share: what a run reported, which ops it left, and
running a model in the interpreter. (Model builders live in ``models.py`` and
``split_conv_models.py``; ``conftest.py`` has the one assertion most pass tests
need, ``fuse_and_check``.)"""

from __future__ import annotations

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from tflite_fuser.graph import quantization  # noqa: F401 (tests build parameters with it)

#: the interpreter's kernel sets by name
RESOLVERS = {"builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
             "xnnpack": OpResolverType.AUTO,
             "reference": OpResolverType.BUILTIN_REF}


def reasons(result, pass_name: str | None = None) -> list[str]:
    """Why candidates were left alone (by ``pass_name``, or by any pass)."""
    return [s["reason"] for s in result.report["skipped"] if pass_name is None or s["pass"] == pass_name]


def rewrites_per_pass(result) -> dict[str, int]:
    """Each pass that ran, with the rewrites it made (its seconds left out)."""
    return {p["name"]: p["rewrites"] for p in result.report["passes"]}


def ops_of(result, code) -> list:
    """The fused model's operators of one type, in order."""
    return [op for op in result.model.main.operators if op.code == code]


def run_tflite(model_bytes: bytes, x: np.ndarray, kernels: str = "xnnpack") -> np.ndarray:
    """Run a single-input model on ``x``; its first output."""
    it = Interpreter(model_content=bytes(model_bytes), experimental_op_resolver_type=RESOLVERS[kernels])
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])
