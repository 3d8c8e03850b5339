"""Prove a rewrite: run original and rewritten model in the TFLite interpreter
on the same inputs and compare every output of every signature.

An output passes when ``|a - b| <= atol + rtol * |a|`` elementwise, ``a`` being
the original's value. Integer outputs of quantized models pass within
``quant_steps`` steps (default one: a requantised clamp may round the other
way). The defaults (``atol=1e-4``, ``rtol=1e-4``) are what float32 folding can
promise on deep networks: each fold re-associates a multiply and an add per
output, and the rounding differences compound layer after layer (measured: a
MobileNetV2 with 52 folded batch-norms and 17 re-assembled depthwise convs
differs by up to 1.2e-5 absolute on outputs of magnitude ~0.02). A wrong fold
is off by orders of magnitude more; single-layer tests pin 1e-5.

Outputs with a wide dynamic range meet cancellation: where a sum of large
terms comes out near zero, the float32 rounding of the terms (1e-7 of each)
dominates the result, and no elementwise bound holds. ``range_atol=True``
measures ``atol`` in units of each output's largest magnitude,
``|a - b| <= atol * max(1, max|a|) + rtol * |a|``, which is what "equal up to
float rounding" means for such outputs; the report always gives ``max|a|``.

Models are loaded from a file path when we have one (the interpreter mmaps it,
no copy) and from bytes otherwise. Inputs are seeded random unless the user
gives an ``.npz``: floats uniform in ``input_range``, 8-bit integers over their
full range, other integers in ``[0, 10)``; dynamic dimensions (``-1`` in the
shape signature) become 1 unless ``input_shapes`` says otherwise.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import BadModelError, UsageError
from .options import DEFAULT_ATOL, DEFAULT_INPUT_RANGE, DEFAULT_RTOL, DEFAULT_RUNS

# Stage markers: the sandbox uses the last one seen to tell whether a crash
# happened in the input model (bad input) or in the rewritten one (our bug).
STAGE_LOAD_ORIGINAL = "loading the input model"
STAGE_LOAD_CANDIDATE = "loading the rewritten model"
STAGE_RUN_ORIGINAL = "running the input model"
STAGE_RUN_CANDIDATE = "running the rewritten model"


@dataclass
class OutputCheck:
    signature: str
    name: str
    dtype: str
    shape: list[int]
    max_abs_error: float | None  # None: not comparable (shapes differ)
    max_rel_error: float | None
    tolerance: str
    ok: bool
    max_abs_reference: float | None = None  # largest finite |a|: the output's scale
    nonfinite_reference: int = 0  # NaN/inf values in the original's output (it overflowed)
    #: the largest share of its own bound any element used: ``|a-b| / (atol +
    #: rtol*|a|)`` (or ``/ steps`` for integers); above 1 fails. This, not the
    #: max relative error (which an element near zero inflates while atol
    #: carries it), says how close the output came to failing.
    bound_used: float | None = None
    #: that element: its ``|a-b|``, its bound, and its reference value ``a``
    worst_abs_error: float | None = None
    worst_bound: float | None = None
    worst_reference: float | None = None
    #: the original's values held NaN/inf where the rewritten model's did not (or the reverse)
    nonfinite_mismatch: bool = False
    #: how far the original's own outputs move when its float constants are
    #: nudged by one ulp (noise_floor.py), and this output's deviation over it;
    #: measured only when the fixed tolerance was not met
    noise_floor: float | None = None
    floor_ratio: float | None = None
    accepted_by_floor: bool = False

    def merge(self, other: "OutputCheck") -> "OutputCheck":
        """This check and ``other`` (the same output on another input set)."""
        if self.max_abs_error is None:
            return self
        if other.max_abs_error is None:
            return other
        self.max_abs_error = max(self.max_abs_error, other.max_abs_error)
        self.max_rel_error = max(self.max_rel_error, other.max_rel_error)
        self.max_abs_reference = max(self.max_abs_reference or 0.0, other.max_abs_reference or 0.0)
        self.nonfinite_reference += other.nonfinite_reference
        self.nonfinite_mismatch = self.nonfinite_mismatch or other.nonfinite_mismatch
        self.ok = self.ok and other.ok
        if self.bound_used is not None and (other.bound_used is None or other.bound_used > self.bound_used):
            self.bound_used, self.worst_abs_error = other.bound_used, other.worst_abs_error
            self.worst_bound, self.worst_reference = other.worst_bound, other.worst_reference
        return self


@dataclass
class Verification:
    ok: bool
    runs: int
    atol: float
    rtol: float
    seed: int
    kernels: str
    outputs: list[OutputCheck] = field(default_factory=list)
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    #: the largest share of its bound any output element used (see OutputCheck)
    bound_used: float | None = 0.0
    seconds: float = 0.0
    message: str = ""
    #: why ``kernels`` is not the kernel set asked for (it could not run the input)
    kernels_note: str = ""
    #: what the user should know about how it was proved (cross-runtime checks ...)
    notes: list[str] = field(default_factory=list)
    #: TFLite Micro runs (``--target micro``): whether the original loads, the
    #: arena each model uses, and how the fused model in TFLM agrees with LiteRT
    micro: dict | None = None
    micro_arena: int | None = field(default=None, repr=False)
    #: "ran": the whole-model proof ran; else why the original could not run
    #: here (the region proofs alone decided)
    whole_model: str = "ran"
    #: the multiple of its noise floor an output may deviate (when measured)
    noise_floor_multiple: float | None = None
    #: one entry per region (region_proof.RegionCheck.to_dict) and a summary
    regions: list[dict] = field(default_factory=list)
    region_summary: dict | None = None
    #: the GPU accelerator's part (gpu_proof.py): device, coverage before and
    #: after, the fused and the original model on the GPU against the CPU
    gpu: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("micro_arena")
        return d


ModelRef = "str | os.PathLike | bytes"


def _interpreter(model, kernels: str, num_threads: int | None):
    """LiteRT's interpreter with the ``kernels`` asked for: "xnnpack" (the
    delegate, built-in kernels for what it does not take), "builtin" (the
    optimized built-in kernels alone) or "reference" (the reference kernels,
    whose arithmetic TFLite Micro's kernels share)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = {"xnnpack": OpResolverType.AUTO, "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                "reference": OpResolverType.BUILTIN_REF}[kernels]
    kwargs: dict[str, Any] = {"experimental_op_resolver_type": resolver, "num_threads": num_threads}
    with _quiet_stderr():
        if isinstance(model, (str, os.PathLike)):
            return Interpreter(model_path=os.fspath(model), **kwargs)
        return Interpreter(model_content=bytes(model), **kwargs)


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the C++ runtime's "Created TensorFlow Lite XNNPACK delegate" line
    (written to fd 2 directly), which would otherwise break our one-line output."""
    try:
        fd = os.dup(2)
    except OSError:  # pragma: no cover
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)
        os.close(devnull)


# ------------------------------------------------------------------ entry points


class _Runnable:
    """One signature (or the main subgraph of a model without signatures)."""

    def __init__(self, interp, key: str | None):
        self.interp = interp
        self.key = key
        if key is None:
            interp.allocate_tensors()
            self.inputs = {d["name"]: d for d in interp.get_input_details()}
            self.outputs = [d["name"] for d in interp.get_output_details()]
        else:
            self.runner = interp.get_signature_runner(key)
            self.inputs = self.runner.get_input_details()
            self.outputs = list(self.runner.get_output_details())

    def input_specs(self) -> dict[str, dict]:
        return self.inputs

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.key is not None:
            return {k: np.array(v) for k, v in self.runner(**feeds).items()}
        it = self.interp
        resized = False
        for name, d in self.inputs.items():
            if tuple(d["shape"]) != feeds[name].shape:
                it.resize_tensor_input(d["index"], feeds[name].shape, strict=False)
                resized = True
        if resized:
            it.allocate_tensors()
        for name, d in self.inputs.items():
            it.set_tensor(d["index"], feeds[name])
        it.invoke()
        return {d["name"] + f"#{i}": np.array(it.get_tensor(d["index"]))
                for i, d in enumerate(it.get_output_details())}


def _runnables(interp) -> list[_Runnable]:
    sigs = interp.get_signature_list()
    if sigs:
        return [_Runnable(interp, key) for key in sigs]
    return [_Runnable(interp, None)]


def make_inputs(spec: Mapping[str, dict], rng: np.random.Generator, input_range=DEFAULT_INPUT_RANGE,
                input_shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, np.ndarray]:
    feeds = {}
    for name, d in spec.items():
        shape = list(d.get("shape_signature", d["shape"]))
        if input_shapes and name in input_shapes:
            shape = list(input_shapes[name])
        shape = [1 if s < 0 else int(s) for s in shape]
        dt = np.dtype(d["dtype"])
        if dt.kind == "f":
            arr = rng.uniform(input_range[0], input_range[1], size=shape).astype(dt)
        elif dt in (np.int8, np.uint8):
            info = np.iinfo(dt)
            arr = rng.integers(info.min, info.max + 1, size=shape, dtype=dt)
        elif dt.kind in "iu":
            arr = rng.integers(0, 10, size=shape).astype(dt)
        elif dt.kind == "b":
            arr = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise UsageError(f"cannot make random data for input {name!r} of type {dt}; pass --inputs")
        feeds[name] = arr
    return feeds


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise UsageError(f"{path}: no such inputs file") from None
    except Exception as e:  # zipfile / format errors
        raise UsageError(f"{path}: not a readable .npz of input arrays ({e})") from None


CPU_KERNELS = ("builtin", "xnnpack")
KERNEL_NAMES = {"builtin": "built-in kernels", "xnnpack": "XNNPACK kernels", "micro": "TFLite Micro kernels",
                "reference": "LiteRT reference kernels"}


class _OriginalDoesNotRun(Exception):
    """The input model fails in this kernel set; another may run it."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


class OriginalDoesNotRun(BadModelError):
    """No kernel set here runs the input model: the whole-model proof cannot
    be made (the region proofs still can). ``reason`` says why, per kernel set."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # it crosses the sandbox's pipe
        return (OriginalDoesNotRun, (str(self), self.reason))


def verify(original, candidate, *, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
           runs: int = DEFAULT_RUNS, seed: int = 0, inputs: Mapping[str, np.ndarray] | None = None,
           input_range=DEFAULT_INPUT_RANGE, input_shapes=None, quant_steps: int = 1, range_atol: bool = False,
           kernels: str | None = None, xnnpack: bool = False, num_threads: int | None = None,
           progress: Callable[[str], None] | None = None, io_perms: Mapping | None = None) -> Verification:
    """Compare ``candidate`` against ``original`` (paths or bytes).

    ``kernels`` (or ``xnnpack``) names the kernels asked for, built-in by
    default. When a CPU kernel set cannot load or run the *original* (the
    built-in kernels reject float16 activations that XNNPACK runs, for
    instance), the other is tried, and the result says which ran and why;
    only when neither runs the original is the input reported as
    unverifiable. ``kernels="micro"`` proves the model on TFLite Micro (see
    :func:`_verify_micro`). ``io_perms`` (``{"input": {name: perm}, "output":
    {name: perm}}``) says which of the candidate's inputs and outputs are the
    original's transposed by ``perm`` (``--nhwc-io``): its inputs are fed so,
    and its outputs transposed back before they are compared.
    """
    check = dict(atol=atol, rtol=rtol, runs=runs, seed=seed, inputs=inputs, input_range=input_range,
                 input_shapes=input_shapes, quant_steps=quant_steps, range_atol=range_atol,
                 num_threads=num_threads, progress=progress, io_perms=io_perms)
    kernels = kernels or ("xnnpack" if xnnpack else "builtin")
    if kernels == "gpu":  # the CPU part of a GPU proof: proof.prove adds the GPU's (gpu_proof.py)
        kernels = "xnnpack"
    if kernels == "micro":
        return _verify_micro(original, candidate, check)
    return _verify_cpu(original, candidate, kernels, check)


def _verify_cpu(original, candidate, kernels: str, check: dict) -> Verification:
    order = [kernels] + [k for k in CPU_KERNELS if k != kernels]
    if kernels == "reference":
        order = ["reference", "builtin"]
    refused: list[tuple[str, str]] = []
    for k in order:
        try:
            result = _verify_with(k, original, candidate, **check)
        except _OriginalDoesNotRun as e:
            refused.append((k, e.what))
            continue
        if refused:
            result.kernels_note = "; ".join(f"the {KERNEL_NAMES[k]} cannot run the input model ({why})"
                                            for k, why in refused)
        return result
    reason = "; ".join(f"{KERNEL_NAMES[k]}: {why}" for k, why in refused)
    raise OriginalDoesNotRun("the TFLite interpreter cannot run the input model, so the rewrite cannot be verified ("
                             f"{reason}); pass --no-verify to skip verification", reason)


def _verify_micro(original, candidate, check: dict) -> Verification:
    """Prove a model fused for TFLite Micro on TFLite Micro.

    When TFLM loads the original and computes it as LiteRT does, the proof is
    TFLM against TFLM. When it does not load it (the usual reason to fuse for
    it: a split form's CONCATENATION of more than 10 inputs), or computes it
    differently from LiteRT's reference kernels (measured: TF's lowered
    dilated convs, SPACE_TO_BATCH_ND -> conv -> BATCH_TO_SPACE_ND with an
    open batch size, off by 3.1 on outputs up to 0.44), the rewrite is proved
    in LiteRT, original against fused, and the fused model then runs in TFLM
    and is compared with LiteRT's run of it: a cross-runtime check, reported
    as such. TFLM and LiteRT do not always agree on a model (int8 rounding,
    for one); a disagreement there is a finding about the runtimes, reported,
    not a failed rewrite, unless the fused model is further off in TFLM than
    the original was.
    """
    from . import micro

    why = micro.unavailable()
    if why:
        result = _verify_cpu(original, candidate, "builtin", check)
        result.notes.append(f"TFLite Micro verification was not run: {why}")
        return result
    say = check["progress"] or (lambda _msg: None)
    say(STAGE_LOAD_CANDIDATE)
    try:
        fused = micro.runnables(candidate)
    except RuntimeError as e:
        return Verification(ok=False, runs=0, atol=check["atol"], rtol=check["rtol"], seed=check["seed"],
                            kernels="micro", message=f"the rewritten model does not load in TFLite Micro: {e}")
    try:
        result = _verify_with("micro", original, candidate, **check)
    except _OriginalDoesNotRun as e:
        return _verify_beside_micro(original, candidate, fused, check, f"TFLite Micro cannot load the input "
                                    f"model ({e.what})", original_error=e.what)
    if not result.ok:
        before = micro.runnables(original)
        baseline = _micro_agreement(original, before, "reference", check)
        if not baseline.ok:
            return _verify_beside_micro(
                original, candidate, fused, check,
                f"TFLite Micro computes the input model differently from LiteRT's reference kernels (max |a-b| "
                f"{baseline.max_abs_error:.3g}: a finding about the runtime, not the rewrite)",
                original_error="", original_off=baseline.max_abs_error, arena_before=before[0].arena_bytes)
    result.micro = {"original_loads": True, "original_error": "", "arena_bytes_before": result.micro_arena,
                    "arena_bytes_after": fused[0].arena_bytes}
    return result


def _micro_agreement(model, tflm, kernels: str, check: dict) -> Verification:
    """``model`` in TFLM (``tflm``, its runnables) against LiteRT's ``kernels``,
    main subgraph in both (TFLM has no signature runner): inputs and outputs
    by position."""
    template = Verification(ok=True, runs=0, atol=check["atol"], rtol=check["rtol"], seed=check["seed"],
                            kernels=kernels)
    try:
        litert = [_Runnable(_interpreter(model, kernels, check["num_threads"]), None)]
    except (ValueError, RuntimeError) as e:
        raise_if_out_of_memory(e)
        template.ok, template.message = False, f"the {KERNEL_NAMES[kernels]} do not load it: {_first_line(e)}"
        return template
    return _verify_runnables(litert, tflm, template, by_position=True, **check)


def _verify_beside_micro(original, candidate, fused, check: dict, why: str, original_error: str,
                         original_off: float | None = None, arena_before: int | None = None) -> Verification:
    """The rewrite proved with LiteRT's reference kernels (TFLM's kernels come
    from them: the closest stand-in for TFLM running the original), and the
    fused model in TFLM compared with LiteRT's run of it."""
    result = _verify_cpu(original, candidate, "reference", check)
    if not result.ok:  # not proved (the rewritten model may not even load there): nothing to compare TFLM with
        result.notes.append(f"{why}; the rewrite was to be proved with the {KERNEL_NAMES[result.kernels]}")
        return result
    agree = _micro_agreement(candidate, fused, result.kernels, check)
    result.micro = {"original_loads": not original_error, "original_error": original_error,
                    "arena_bytes_before": arena_before, "arena_bytes_after": fused[0].arena_bytes,
                    "agreement_max_abs_error": agree.max_abs_error, "agreement_ok": agree.ok,
                    "original_max_abs_error_vs_litert": original_off}
    result.notes.append(
        f"{why}; the rewrite was proved with the {KERNEL_NAMES[result.kernels]}, and the fused model runs in "
        f"TFLite Micro " + ("matching" if agree.ok else "NOT matching") + f" LiteRT's run of it (max |a-b| "
        f"{agree.max_abs_error:.3g}){'' if agree.ok else ': a difference between the runtimes'}")
    if original_off is not None and not agree.ok and agree.max_abs_error > original_off:
        result.ok = False
        result.message = (f"the fused model is further off in TFLite Micro (max |a-b| {agree.max_abs_error:.3g} "
                          f"from LiteRT) than the input model was ({original_off:.3g})")
    return result


def _load(model, kernels: str, num_threads: int | None) -> list:
    if kernels == "micro":
        from . import micro

        return micro.runnables(model)
    return _runnables(_interpreter(model, kernels, num_threads))


def _verify_with(kernels: str, original, candidate, *, num_threads, progress, **check) -> Verification:
    result = Verification(ok=True, runs=0, atol=check["atol"], rtol=check["rtol"], seed=check["seed"],
                          kernels=kernels)
    say = progress or (lambda _msg: None)
    say(STAGE_LOAD_ORIGINAL)
    try:
        ref_r = _load(original, kernels, num_threads)
    except (ValueError, RuntimeError) as e:
        raise_if_out_of_memory(e)
        raise _OriginalDoesNotRun(f"it does not load: {_first_line(e)}") from None
    if kernels == "micro":
        result.micro_arena = ref_r[0].arena_bytes
    say(STAGE_LOAD_CANDIDATE)
    try:
        new_r = _load(candidate, kernels, num_threads)
    except (ValueError, RuntimeError) as e:
        raise_if_out_of_memory(e)
        result.ok = False
        result.message = f"the rewritten model does not load: {_first_line(e)}"
        return result
    if [r.key for r in ref_r] != [r.key for r in new_r]:
        result.ok = False
        result.message = "signature lists differ"
        return result
    return _verify_runnables(ref_r, new_r, result, progress=progress, **check)


def _verify_runnables(ref_r, new_r, result: Verification, *, atol, rtol, runs, seed, inputs, input_range,
                      input_shapes, quant_steps, range_atol, progress, by_position: bool = False,
                      num_threads=None, io_perms: Mapping | None = None) -> Verification:
    """Run both sides on the same inputs and compare every output (by name,
    or by position across runtimes whose outputs are named differently)."""
    start = time.perf_counter()
    say = progress or (lambda _msg: None)
    rng = np.random.default_rng(seed)
    worst: dict[tuple[str, str], OutputCheck] = {}
    n_runs = 1 if inputs is not None else max(1, runs)
    for run in range(n_runs):
        say(f"verifying: run {run + 1}/{n_runs}")
        for ref, new in zip(ref_r, new_r):
            sig = ref.key or ""
            feeds = _feeds_for(ref, inputs, rng, input_range, input_shapes)
            say(STAGE_RUN_ORIGINAL)
            try:
                a = ref.run(feeds)
            except (ValueError, RuntimeError) as e:
                raise_if_out_of_memory(e)
                raise _OriginalDoesNotRun(f"it fails to run: {_first_line(e)}") from None
            if io_perms:  # the candidate's NHWC interface: the same values, transposed
                feeds = {n: np.ascontiguousarray(np.transpose(v, io_perms["input"][n])) if n in io_perms["input"]
                         else v for n, v in feeds.items()}
            say(STAGE_RUN_CANDIDATE)
            try:
                b = new.run(feeds if not by_position else dict(zip(new.input_specs(), feeds.values())))
            except (ValueError, RuntimeError) as e:
                raise_if_out_of_memory(e)
                result.ok = False
                result.message = f"the rewritten model fails to run: {_first_line(e)}"
                return result
            if io_perms:
                b = {n: np.transpose(v, np.argsort(io_perms["output"][n])) if n in io_perms["output"] else v
                     for n, v in b.items()}
            if list(a) != list(b) and sig and not by_position:
                result.ok = False
                result.message = f"signature {sig!r} outputs differ: {sorted(a)} vs {sorted(b)}"
                return result
            for (name, x), y in zip(a.items(), b.values()):
                check = _compare(sig, name, x, y, atol, rtol, quant_steps, range_atol)
                prev = worst.get((sig, name))
                worst[(sig, name)] = check if prev is None else prev.merge(check)
        result.runs += 1

    result.outputs = list(worst.values())
    result.ok = all(c.ok for c in result.outputs)
    result.max_abs_error = max((c.max_abs_error for c in result.outputs if c.max_abs_error is not None),
                               default=0.0)
    result.max_rel_error = max((c.max_rel_error for c in result.outputs if c.max_rel_error is not None),
                               default=0.0)
    shares = [c.bound_used for c in result.outputs if c.max_abs_error is not None]
    result.bound_used = None if None in shares else max(shares, default=0.0)
    if not result.ok:
        bad = [f"{c.signature + '/' if c.signature else ''}{c.name}" for c in result.outputs if not c.ok]
        result.message = f"outputs differ beyond tolerance: {', '.join(bad)}"
    result.seconds = time.perf_counter() - start
    return result


def _feeds_for(runnable: _Runnable, user: Mapping[str, np.ndarray] | None, rng, input_range, input_shapes):
    spec = runnable.input_specs()
    if user is None:
        return make_inputs(spec, rng, input_range, input_shapes)
    feeds = {}
    for name, d in spec.items():
        for key in (f"{runnable.key}/{name}" if runnable.key else None, name):
            if key is not None and key in user:
                feeds[name] = np.asarray(user[key], dtype=np.dtype(d["dtype"]))
                break
        else:
            raise UsageError(f"--inputs has no array for input {name!r}"
                             + (f" of signature {runnable.key!r}" if runnable.key else "")
                             + f" (it has: {', '.join(sorted(user)) or 'nothing'})")
    return feeds


def _compare(sig: str, name: str, a: np.ndarray, b: np.ndarray, atol: float, rtol: float,
             quant_steps: int, range_atol: bool = False) -> OutputCheck:
    dtype = str(a.dtype)
    if a.shape != b.shape:
        return OutputCheck(sig, name, dtype, list(a.shape), None, None,
                           f"shape {list(a.shape)} vs {list(b.shape)}", False)
    if a.dtype.kind in "iub" and a.dtype.kind == b.dtype.kind:
        diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
        max_abs = float(diff.max(initial=0))
        scale = np.maximum(np.abs(a.astype(np.float64)), 1.0)
        max_rel = float((diff / scale).max(initial=0.0))
        steps = quant_steps if a.dtype.kind in "iu" and a.dtype.itemsize <= 2 else 0
        check = OutputCheck(sig, name, dtype, list(a.shape), max_abs, max_rel, f"±{steps} step",
                            bool(max_abs <= steps), float(np.abs(a.astype(np.float64)).max(initial=0.0)))
        return _with_worst(check, diff.astype(np.float64), np.full(diff.shape, float(steps)), a)
    return _compare_float(sig, name, dtype, a, b, atol, rtol, range_atol)


#: elements compared at a time: float64 temporaries of a chunk stay in cache,
#: and a large output costs no more memory than a small one
_CHUNK = 1 << 16


def _compare_float(sig: str, name: str, dtype: str, a: np.ndarray, b: np.ndarray, atol: float, rtol: float,
                   range_atol: bool) -> OutputCheck:
    """Floats, chunk by chunk, in the outputs' own precision (float32 for
    float16 and float32: ``|a-b|`` is then exact to a relative 6e-8 of
    itself, far below any tolerance; float64 stays float64)."""
    work = np.float64 if a.dtype == np.float64 or b.dtype == np.float64 else np.float32
    af, bf = a.reshape(-1), b.reshape(-1)
    n = af.size
    scale, nonfinite_ref = 0.0, 0
    for i in range(0, n, _CHUNK):  # the output's scale first: a range atol depends on it
        x = np.abs(af[i:i + _CHUNK].astype(work, copy=False))
        fin = np.isfinite(x)
        if not fin.all():
            nonfinite_ref += int(x.size - fin.sum())
            x = x[fin]
        scale = max(scale, float(x.max(initial=0.0)))
    eff_atol = atol * max(1.0, scale) if range_atol else atol
    max_abs = max_rel = 0.0
    ok = same_nonfinite = True
    worst = (-1.0, 0.0, 0.0, 0.0)  # (share of its bound, |a-b|, bound, a) of the closest element
    for i in range(0, n, _CHUNK):
        x, y = af[i:i + _CHUNK].astype(work), bf[i:i + _CHUNK].astype(work)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            diff = np.subtract(x, y)
            np.abs(diff, out=diff)
            abs_a = np.abs(x)
            finite = np.isfinite(diff)
            if not finite.all():  # non-finite values must agree exactly (same inf, both nan)
                same_nonfinite &= bool(np.all((x == y) | (np.isnan(x) & np.isnan(y)) | finite))
                diff[~finite] = 0
                abs_a[~finite] = 0
            bound = abs_a * work(rtol)
            bound += work(eff_atol)
            max_abs = max(max_abs, float(diff.max(initial=0.0)))
            rel = np.divide(diff, abs_a, out=np.zeros_like(diff), where=abs_a != 0)
            max_rel = max(max_rel, float(rel.max(initial=0.0)))
            ok &= bool(np.all(diff <= bound))
            if eff_atol > 0:
                used = np.divide(diff, bound, out=rel)
            else:
                used = np.where(bound > 0, diff / np.where(bound > 0, bound, 1), np.where(diff > 0, np.inf, 0))
        j = int(np.argmax(used)) if used.size else 0
        if used.size and used[j] > worst[0]:
            worst = (float(used[j]), float(diff[j]), float(bound[j]), float(x[j]))
    tol = f"atol={eff_atol:g}{' (range)' if range_atol else ''} rtol={rtol:g}"
    check = OutputCheck(sig, name, dtype, list(a.shape), max_abs, max_rel, tol, ok and same_nonfinite, scale,
                        nonfinite_ref, nonfinite_mismatch=not same_nonfinite)
    if n == 0:
        check.bound_used = 0.0
        return check
    share = worst[0]
    check.bound_used = share if np.isfinite(share) else None  # None: an exact match (bound 0) was missed
    check.worst_abs_error, check.worst_bound, check.worst_reference = worst[1], worst[2], worst[3]
    return check


def _with_worst(check: OutputCheck, diff: np.ndarray, bound: np.ndarray, ref: np.ndarray) -> OutputCheck:
    """Fill in the element that used the largest share of its own bound."""
    if diff.size == 0:
        check.bound_used = 0.0
        return check
    with np.errstate(divide="ignore", invalid="ignore"):
        used = np.where(bound > 0, diff / bound, np.where(diff > 0, np.inf, 0.0))
    i = int(np.argmax(used))
    share = float(used.reshape(-1)[i])
    check.bound_used = share if np.isfinite(share) else None  # None: an exact match (bound 0) was missed
    check.worst_abs_error = float(diff.reshape(-1)[i])
    check.worst_bound = float(bound.reshape(-1)[i])
    check.worst_reference = float(ref.reshape(-1)[i])
    return check


#: set in the verifier's child when its address space is limited (sandbox_child.limit_memory)
MEMORY_LIMITED = False


def raise_if_out_of_memory(e: BaseException) -> None:
    """Under a memory limit, an interpreter error that is an allocation
    failure (LiteRT raises it with no message, or names the allocation)
    becomes MemoryError: the proof did not fit, which no kernel set and no
    revert fixes (the child reports it as such, exit 2)."""
    text = str(e).strip().lower()
    if MEMORY_LIMITED and (not text or "bad_alloc" in text or "allocate" in text or "out of memory" in text):
        raise MemoryError(str(e)) from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
