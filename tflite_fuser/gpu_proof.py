"""The GPU part of a proof (``--target gpu``, ``--verify-on gpu``).

The rewrite itself is proved on the CPU, as for every target (the
whole-model and region proofs, XNNPACK kernels). Then, on LiteRT's GPU
accelerator (:mod:`gpu`):

- the fused model on the GPU against the original on the CPU interpreter:
  what a user deploying it gets, against the reference;
- the original on the GPU against the original on the CPU: where these
  differ, the GPU computes the original wrongly, a finding about the runtime,
  reported with whether the fused model fixes it. A fused model that is
  wrong on the GPU where the original was right, or further off than the
  original there, fails the proof;
- when the CPU interpreter cannot run the original at all (a custom op) and
  the GPU can, original against fused on the GPU is the whole-model proof;
- when neither can (a Flex op the rewrite replaced: the CPU proof then
  computed the original ops in numpy, region by region), the fused model on
  the GPU against the fused model on the CPU: the GPU's own part, checked
  against what the CPU proof proved.

Coverage before and after (ops on the GPU, on the CPU, each op the delegate
refused and why) goes into the report.
"""

from __future__ import annotations

from typing import Callable

from . import gpu
from .verifier import (Verification, _OriginalDoesNotRun, _first_line, _interpreter, _runnables,
                       _verify_runnables)


_NO_REFERENCE = "the reference does not run: "


def prove_on_gpu(result: Verification, original, candidate, check: dict,
                 progress: Callable[[str], None] | None = None) -> None:
    say = progress or (lambda _msg: None)
    why = gpu.unavailable()
    if why:
        result.gpu = {"available": False, "reason": why}
        result.notes.append(f"the GPU accelerator could not be used here, so the model was verified on the CPU "
                            f"only: {why}")
        return
    say("verifying on the GPU accelerator")
    before, after = gpu.coverage(original), gpu.coverage(candidate)
    info: dict = {"available": True, "device": after.device or before.device,
                  "coverage_before": before.to_dict(), "coverage_after": after.to_dict()}
    result.gpu = info
    tol = _gpu_tolerance(check)
    try:
        orig = gpu.runnables(original)
    except RuntimeError as e:
        orig, info["original_error"] = None, str(e)
    try:
        fused = gpu.runnables(candidate)
    except RuntimeError as e:
        if orig is None:  # neither compiles: the runtime's limit, not the rewrite's
            info["verdict"] = f"neither the original nor the fused model compiles for the GPU accelerator ({e})"
            result.notes.append(f"the GPU accelerator cannot compile the original model either ({e}): "
                                f"verified on the CPU only")
        else:
            _fail(result, f"the fused model does not compile for the GPU accelerator, the original does: {e}")
        return
    try:
        reference = _runnables(_interpreter(original, "xnnpack", check.get("num_threads")))
    except (ValueError, RuntimeError) as e:
        reference, info["cpu_error"] = None, _first_line(e)
    fused_vs_cpu = _compare(reference, fused, tol) if reference is not None else None
    if fused_vs_cpu is not None and fused_vs_cpu.message.startswith(_NO_REFERENCE):
        reference, info["cpu_error"] = None, fused_vs_cpu.message[len(_NO_REFERENCE):]  # it loads, but does not run
    if reference is None:  # the CPU cannot run it: the GPU gives the whole-model proof
        if orig is None:
            _fused_against_fused_on_cpu(result, info, candidate, fused, tol, check)
            return
        _prove_against(result, info, "fused_vs_original_on_gpu", orig, fused, tol,
                       "the CPU interpreter cannot run the model, the GPU accelerator can: the whole-model proof was "
                       "made there, original against fused on the GPU",
                       "on the GPU accelerator the fused model differs from the original",
                       ("the whole model was proved on the GPU accelerator (the CPU interpreter cannot run it): ",
                        "the fused model matches the original", "MISMATCH"))
        return
    info["fused_vs_cpu"] = _summary(fused_vs_cpu)
    orig_vs_cpu = _compare(reference, orig, tol) if orig is not None else None
    info["original_vs_cpu"] = _summary(orig_vs_cpu) if orig_vs_cpu is not None else None
    if fused_vs_cpu.ok:
        info["verdict"] = "the fused model on the GPU matches the original on the CPU" + (
            "; the GPU computes the ORIGINAL wrongly (a finding about the runtime), and the fused model fixes it"
            if orig_vs_cpu is not None and not orig_vs_cpu.ok else "")
    elif orig_vs_cpu is not None and not orig_vs_cpu.ok and \
            (fused_vs_cpu.max_abs_error or 0.0) <= (orig_vs_cpu.max_abs_error or 0.0):
        info["verdict"] = ("the GPU computes the original wrongly too (a finding about the runtime, not the "
                           "rewrite); the fused model does not fix it")
        result.notes.append(f"the GPU accelerator computes the original model wrongly ({orig_vs_cpu.message}); "
                            f"so does it the fused model: a finding about the runtime, not a failed rewrite")
    elif orig_vs_cpu is not None and not orig_vs_cpu.ok:  # wrong either way, but the rewrite made it worse
        info["verdict"] = "the fused model on the GPU is further from the CPU than the original on the GPU"
        _fail(result, f"on the GPU accelerator the fused model is further from the original on the CPU "
                      f"(max |a-b| {fused_vs_cpu.max_abs_error:.3g}) than the original on the GPU "
                      f"({orig_vs_cpu.max_abs_error:.3g})")
    else:
        info["verdict"] = "the fused model on the GPU does NOT match the original on the CPU"
        _fail(result, f"on the GPU accelerator the fused model differs from the original on the CPU "
                      f"({fused_vs_cpu.message}), while the original on the GPU matches it")


def _fused_against_fused_on_cpu(result: Verification, info: dict, candidate, fused, tol: dict, check: dict) -> None:
    """Neither the CPU interpreter nor the GPU runs the original: the fused
    model on the GPU against the fused model on the CPU interpreter."""
    try:
        fused_cpu = _runnables(_interpreter(candidate, "xnnpack", check.get("num_threads")))
    except (ValueError, RuntimeError) as e:
        info["verdict"] = (f"neither the CPU interpreter nor the GPU runs the original, nor the CPU the fused model "
                           f"({_first_line(e)}): no GPU proof")
        return
    _prove_against(result, info, "fused_vs_fused_on_cpu", fused_cpu, fused, tol,
                   "neither the CPU interpreter nor the GPU accelerator runs the original: the fused model on the GPU "
                   "was checked against the fused model on the CPU (which the CPU proof proved)",
                   "on the GPU accelerator the fused model differs from itself on the CPU",
                   ("neither the CPU interpreter nor the GPU runs the original: the fused model on the GPU ",
                    "matches the fused model on the CPU", "does NOT match the fused model on the CPU"))


def _prove_against(result: Verification, info: dict, key: str, reference, fused, tol: dict, note: str,
                   differs: str, verdict: tuple[str, str, str]) -> None:
    """The GPU proof against a stand-in reference, where the original cannot
    be run on the CPU: compared, recorded under ``key``, noted, failed if it
    differs; ``verdict`` is (what was proved, if it matches, if not)."""
    v = _compare(reference, fused, tol)
    info[key] = _summary(v)
    result.notes.append(note)
    if not v.ok:
        _fail(result, f"{differs}: {v.message}")
    info["verdict"] = verdict[0] + (verdict[1] if v.ok else verdict[2])


def _gpu_tolerance(check: dict) -> dict:
    """The GPU's own arithmetic, or the CPU proof's tolerance where that is
    wider (float16 re-rounding), in units of each output's range."""
    return {**check, "atol": max(gpu.GPU_TOL, check["atol"]), "rtol": max(gpu.GPU_TOL, check["rtol"]),
            "range_atol": True}


def original_vs_cpu(model, runs: int = 1) -> dict | None:
    """The GPU accelerator's run of ``model`` against the CPU interpreter's, at
    the GPU proof's tolerance (None: one of the two cannot run it). The corpus
    benchmark asks this of models there is nothing to fuse in."""
    from .proof import _full

    tol = _gpu_tolerance(_full({"runs": runs}))
    try:
        on_gpu = gpu.runnables(model)
        reference = _runnables(_interpreter(model, "xnnpack", None))
    except (ValueError, RuntimeError):
        return None
    return _summary(_compare(reference, on_gpu, tol))


def _compare(ref, new, tol: dict) -> Verification:
    blank = Verification(ok=True, runs=0, atol=tol["atol"], rtol=tol["rtol"], seed=tol.get("seed", 0), kernels="gpu")
    kw = {k: tol[k] for k in ("atol", "rtol", "runs", "seed", "inputs", "input_range", "input_shapes", "quant_steps",
                              "range_atol")}
    try:
        return _verify_runnables(ref, new, blank, progress=None, **kw)
    except _OriginalDoesNotRun as e:
        blank.ok, blank.message = False, f"{_NO_REFERENCE}{e.what}"
        return blank


def _summary(v: Verification) -> dict:
    return {"ok": v.ok, "max_abs_error": v.max_abs_error, "bound_used": v.bound_used, "message": v.message,
            "max_abs_reference": max((c.max_abs_reference or 0.0 for c in v.outputs), default=0.0)}


def _fail(result: Verification, message: str) -> None:
    """The fused model is wrong on the GPU (or does not compile there) where
    the original is not: a failed proof, which revert.py bisects like a
    failed whole-model proof."""
    result.ok = False
    if result.gpu is not None:
        result.gpu["failed"] = True
    result.message = f"{result.message}; {message}" if result.message else message
