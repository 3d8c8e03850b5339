"""TFLite Micro as a verification runtime (``--target micro``).

The ``tflite-micro`` package (``pip install 'tflite-fuse[micro]'``) ships
TFLM's interpreter: the very kernels a microcontroller runs, built for the
host. A model that TFLM cannot load (its CONCATENATION takes at most 10
inputs, it has no float16 DEQUANTIZE or RELU_0_TO_1 kernel ...) fails here as
it would on the device, so a model fused for the micro target is proved on
TFLM itself. TFLM runs the main subgraph only, inputs in subgraph order.

What the C++ runtime prints (the reason a model does not load, the arena
report) goes to file descriptors 1 and 2; it is captured (:mod:`cstdio`),
never shown raw.
"""

from __future__ import annotations

import os
import re
from typing import Mapping

import numpy as np

from .cstdio import captured, first_line, runtime_errors

#: arena for verification runs: generous (the host has memory), and the
#: arena a model really uses is measured and reported
ARENA_BYTES = 256 << 20
INSTALL_HINT = "pip install 'tflite-fuse[micro]' (the tflite-micro package)"


def unavailable() -> str | None:
    """Why TFLM cannot run here (None: it can)."""
    try:
        from tflite_micro.python.tflite_micro import runtime  # noqa: F401
    except ImportError as e:
        return f"the tflite-micro package is not installed ({e}); {INSTALL_HINT}"
    return None


class MicroRunnable:
    """A model loaded in TFLM, run like :class:`verifier._Runnable`."""

    key = None

    def __init__(self, model, specs: list[tuple[str, list[int], np.dtype]], outputs: list[str]):
        from tflite_micro.python.tflite_micro import runtime

        self.specs, self.outputs = specs, outputs
        with runtime_errors(first_line), captured(1):
            if isinstance(model, (str, os.PathLike)):
                self.interp = runtime.Interpreter.from_file(os.fspath(model), arena_size=ARENA_BYTES)
            else:
                self.interp = runtime.Interpreter.from_bytes(bytes(model), arena_size=ARENA_BYTES)
        self.arena_bytes = self._arena_bytes()

    def _arena_bytes(self) -> int | None:
        with captured(2) as out:  # TFLM reports its arena on stderr
            self.interp.print_allocations()
        m = re.search(r"Arena allocation total (\d+) bytes", "".join(out))
        return int(m.group(1)) if m else None

    def input_specs(self) -> dict[str, dict]:
        return {n: {"shape": np.array(s), "dtype": d} for n, s, d in self.specs}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with runtime_errors(first_line):
            for i, (name, _, dtype) in enumerate(self.specs):
                self.interp.set_input(np.asarray(feeds[name], dtype), i)
            self.interp.invoke()
            outs = {f"{n}#{i}": np.array(self.interp.get_output(i)) for i, n in enumerate(self.outputs)}
        return outs


def runnables(model) -> list[MicroRunnable]:
    """``model`` (path or bytes) loaded in TFLM; RuntimeError with TFLM's own
    reason when it does not load."""
    from .reader import read_model
    from .schema import NUMPY_DTYPES

    graph = read_model(model).main
    specs = [(t.name, list(t.shape), NUMPY_DTYPES[t.dtype]) for t in graph.inputs]
    return [MicroRunnable(model, specs, [t.name for t in graph.outputs])]
