"""LiteRT's GPU accelerator as a verification runtime (``--target gpu``,
``--verify-on gpu``).

``ai_edge_litert.compiled_model.CompiledModel`` with
``HardwareAccelerator.GPU`` runs a model on the GPU through WebGPU (Dawn on
Vulkan). A machine without a GPU can still run it on SwiftShader, a Vulkan
GPU written for the CPU that Debian's ``chromium`` package ships: when the
machine has no GPU device and that one is installed, :func:`environment`
points the Vulkan loader at it (``VK_ICD_FILENAMES``) and gives it the private runtime
directory it wants (``XDG_RUNTIME_DIR``). SwiftShader's timings say nothing of
a phone's GPU; its results and its coverage are the delegate's own.

Coverage is measured two ways that agree: compiling with the GPU alone
succeeds exactly when every op goes to the GPU (``is_fully_accelerated()``
counts XNNPACK as an accelerator, so it cannot tell), and the delegate's log
names each op it refuses, with its reason, and counts the ops on each side.
"""

from __future__ import annotations

import functools
import glob
import importlib
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Mapping

import numpy as np

from .cstdio import captured, runtime_errors

SWIFTSHADER_ICD = "/usr/lib/chromium/vk_swiftshader_icd.json"
INSTALL_HINT = ("a GPU with a Vulkan driver, or on a machine without one SwiftShader: apt install chromium "
                "libvulkan1 (tflite-fuse then finds /usr/lib/chromium/vk_swiftshader_icd.json by itself)")
#: GPU against CPU: the GPU's arithmetic differs from the CPU's (other
#: summation orders, fused multiply-adds); a float model matches within
#: 5.4e-5 of its output range here (median 9e-7). atol is in units of each
#: output's range.
GPU_TOL = 1e-3

_PLACEHOLDER = "<placeholder signature>"


def environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """What to add to ``env`` (default: ours) so that a child process finds
    a Vulkan GPU: SwiftShader when no driver is installed, and a private
    runtime directory. Nothing when the user set them or has a driver."""
    env = dict(os.environ if env is None else env)
    extra: dict[str, str] = {}
    if "VK_ICD_FILENAMES" not in env and "VK_DRIVER_FILES" not in env and not has_gpu_device() \
            and os.path.exists(SWIFTSHADER_ICD):
        extra["VK_ICD_FILENAMES"] = SWIFTSHADER_ICD
    if "XDG_RUNTIME_DIR" not in env:
        extra["XDG_RUNTIME_DIR"] = _runtime_dir()
    return extra


def has_gpu_device() -> bool:
    """A GPU's device node is there (a DRM render node, or NVIDIA's). Without
    one, the Vulkan drivers a system may list (Mesa's, say) have no hardware
    to drive, and Dawn rejects Mesa's software one (llvmpipe)."""
    return bool(glob.glob("/dev/dri/renderD*") or glob.glob("/dev/nvidia[0-9]*"))


def use_environment() -> None:
    """Apply :func:`environment` to this process (before its first GPU use:
    the Vulkan loader reads it once)."""
    for k, v in environment().items():
        os.environ.setdefault(k, v)


@functools.lru_cache(maxsize=1)
def _runtime_dir() -> str:
    return tempfile.mkdtemp(prefix="tflite-fuse-xdg-")  # mkdtemp makes it 0700, as the spec asks


@dataclass
class Coverage:
    """Where a model's ops run under the GPU accelerator."""

    #: compiling with the GPU alone succeeded: every op is on the GPU
    all_on_gpu: bool
    gpu_ops: int | None = None
    cpu_ops: int | None = None
    #: (op, the delegate's reason) for each kind of op it refused
    refused: list[tuple[str, str]] = field(default_factory=list)
    #: why the model could not be compiled at all (GPU + CPU), if it could not
    error: str = ""
    device: str = ""
    #: what the delegate warned of while building its graph: "Shape mismatch
    #: ... output of convolution1x1" means it computes that op wrongly
    warnings: list[str] = field(default_factory=list)

    def to_dict(self, repairs: bool = False) -> dict:
        """As JSON; ``repairs`` adds to each refused op the pass that moves it to the GPU (or None)."""
        d = asdict(self)
        d["refused"] = [{"op": op, "reason": why, **({"repair": repair(op, why)} if repairs else {})}
                        for op, why in self.refused]
        return d


#: the passes that rewrite an op the GPU refuses into ones it runs (under
#: --target gpu): (op, the start of the delegate's reason or "") -> the pass
REPAIRS = {
    ("RELU_0_TO_1", ""): "lower-relu-0-to-1: MINIMUM(RELU(x), 1)",
    ("RESHAPE", "Tensor dimensions must be less than 5"):
        "lower-transpose-rank: a rank-5 RESHAPE -> TRANSPOSE -> RESHAPE as the same movement in rank 4",
    ("TRANSPOSE", "Tensor dimensions must be less than 5"):
        "lower-transpose-rank: a rank-5 RESHAPE -> TRANSPOSE -> RESHAPE as the same movement in rank 4",
    ("DENSIFY", ""): "densify-constants: the sparse constant stored dense (the file grows)",
    ("TRANSPOSE", "Permutation for transpose is invalid"):
        "lower-transpose-rank (where the permutation is rank 5): the same movement in rank 4",
}


def repair(op: str, reason: str) -> str | None:
    """The pass that moves ``op`` (refused for ``reason``) onto the GPU, or None."""
    return next((fix for (o, why), fix in REPAIRS.items() if o == op and reason.startswith(why)), None)


_COUNTS = re.compile(r"(\d+) operations will run on the GPU, and the remaining (\d+) operations will run on the CPU")
_DEVICE = re.compile(r"Selected adapter: ([^,\n]+)")


def unavailable() -> str | None:
    """Why the GPU accelerator cannot run here (None: it can)."""
    return _probe()


@functools.lru_cache(maxsize=1)
def _probe() -> str | None:
    try:
        importlib.import_module("ai_edge_litert.compiled_model")
    except ImportError as e:
        return f"ai_edge_litert has no compiled-model API here ({e})"
    from .builder import ModelBuilder

    use_environment()
    b = ModelBuilder()
    x = b.input("x", [1, 4])
    b.output(b.add(x, np.ones(4, np.float32)))
    try:
        _compile(b.to_bytes(), gpu_only=True)
    except RuntimeError as e:
        return f"the GPU accelerator does not start ({e}); it needs {INSTALL_HINT}"
    return None


def _compile(model, gpu_only: bool):
    """(the compiled model, what the delegate said)."""
    from ai_edge_litert.compiled_model import CompiledModel, HardwareAccelerator

    use_environment()
    accel = HardwareAccelerator.GPU if gpu_only else HardwareAccelerator.GPU | HardwareAccelerator.CPU
    with runtime_errors(_explain) as err, captured(1):
        if isinstance(model, (str, os.PathLike)):
            compiled = CompiledModel.from_file(os.fspath(model), hardware_accel=accel)
        else:
            compiled = CompiledModel.from_buffer(bytes(model), hardware_accel=accel)
    return compiled, "".join(err)


def coverage(model) -> Coverage:
    """Which ops of ``model`` (path or bytes) the GPU takes, and why not the others."""
    try:
        _, said = _compile(model, gpu_only=True)
        all_on_gpu = True
    except RuntimeError:
        all_on_gpu = False
        said = ""
    error = ""
    if not all_on_gpu:
        try:
            _, said = _compile(model, gpu_only=False)
        except RuntimeError as e:
            error = str(e)
            said = ""
    cov = Coverage(all_on_gpu, error=error)
    m = _COUNTS.search(said)
    if m:
        cov.gpu_ops, cov.cpu_ops = int(m.group(1)), int(m.group(2))
    elif all_on_gpu:  # the delegate counts only when it leaves some
        from .reader import read_model

        cov.gpu_ops, cov.cpu_ops = read_model(model).num_operators(), 0
    cov.refused = _refused(said)
    cov.warnings = _warnings(said)
    d = _DEVICE.search(said)
    cov.device = d.group(1).strip() if d else ""
    return cov


def _refused(said: str) -> list[tuple[str, str]]:
    lines = said.splitlines()
    out = []
    for i, line in enumerate(lines):
        if "Following operations are not supported by GPU delegate" in line:
            for nxt in lines[i + 1:]:
                if _COUNTS.search(nxt) or ":" not in nxt:
                    break
                op, _, why = nxt.partition(":")
                entry = (op.strip(), _without_tensor_name(why.strip()))
                if entry not in out:
                    out.append(entry)
    return out


_WARNING = re.compile(r"gpu_model_builder\.cc:\d+\] (.*)")


def _warnings(said: str) -> list[str]:
    out: list[str] = []
    for m in _WARNING.finditer(said):
        text = m.group(1).strip()
        if text not in out:
            out.append(text)
    return out


def _without_tensor_name(reason: str) -> str:
    """"Tensor dimensions must be less than 5. conv;7" names the tensor; one
    line per kind of refusal is what a reader wants."""
    head, sep, tail = reason.partition(". ")
    return head + "." if sep and tail and " " not in tail else reason


def _explain(said: str, failure: Exception) -> str:
    """The delegate's own ERROR line, else the binding's last line."""
    return _reason(said) or _last_line(str(failure))


def _reason(said: str) -> str:
    for line in said.splitlines():
        line = line.strip()
        if line.startswith("ERROR:") and "Following operations" not in line:
            return line[len("ERROR:"):].strip()
    return ""


def _last_line(text: str) -> str:
    lines = [ln.strip(" └") for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "RuntimeError"


class GpuRunnable:
    """One signature of a model compiled for the GPU (its CPU fallback for
    what the GPU refuses), run like :class:`verifier._Runnable`: a model
    without signatures has key None and outputs named ``name#i``."""

    def __init__(self, compiled, index: int, key: str):
        self.compiled, self.index = compiled, index
        self.key = None if key == _PLACEHOLDER else key
        self._sig = key
        self.inputs = compiled.get_input_tensor_details(key)
        self.outputs = compiled.get_output_tensor_details(key)
        self._in = compiled.create_input_buffers(index)
        self._out = compiled.create_output_buffers(index)

    def input_specs(self) -> dict[str, dict]:
        return {n: {"shape": np.array(d["shape"]), "dtype": np.dtype(d["dtype"])} for n, d in self.inputs.items()}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with runtime_errors(_explain):
            for buf, (name, d) in zip(self._in, self.inputs.items()):
                buf.write(np.ascontiguousarray(feeds[name], dtype=d["dtype"]))
            self.compiled.run_by_index(self.index, self._in, self._out)
            out = {}
            for i, (buf, (name, d)) in enumerate(zip(self._out, self.outputs.items())):
                shape = [int(s) for s in d["shape"]]
                value = buf.read(int(np.prod(shape)), d["dtype"]).reshape(shape)
                out[name if self.key is not None else f"{d['name']}#{i}"] = value
        return out


def runnables(model) -> list[GpuRunnable]:
    """``model`` (path or bytes) compiled for the GPU with the CPU as fallback;
    RuntimeError with the delegate's reason when it cannot be compiled."""
    compiled, _ = _compile(model, gpu_only=False)
    return [GpuRunnable(compiled, i, key) for i, key in enumerate(compiled.get_signature_list())]
