"""The two proofs of a fused model, made together in the verifier's child.

- The **whole-model proof** (:func:`verifier.verify`): original and fused
  model on the same inputs, every output compared. It proves the model end to
  end, but only where the interpreter runs the original (not with a custom op
  it has no kernel for), and a fixed tolerance cannot judge a deep network:
  when it is not met, the original's own float noise is measured
  (:mod:`noise_floor`) and an output within a stated multiple of it passes.
- The **region proofs** (:mod:`regions`, :mod:`region_proof`): every rewrite
  alone, its original ops against its new ones, on the original's real values
  at its boundary (random values when the original does not run), at a tight
  tolerance of its own. They say *which* rewrite is wrong, and they decide
  alone when the whole model cannot run.

The model passes when every region passes and the whole-model proof, if it
could run, passes too.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

from . import noise_floor
from .options import DEFAULT_INPUT_RANGE
from .region_proof import STAGE_CAPTURE, OriginalValues, prove as prove_regions
from .verifier import OriginalDoesNotRun, Verification, _verify_with, verify


def prove(original, candidate, *, regions=None, sig_subgraphs: Mapping[str, int] | None = None,
          floor: bool = True, whole: bool = True, progress: Callable[[str], None] | None = None,
          **check) -> Verification:
    """Both proofs of ``candidate`` against ``original``; ``regions`` is a
    list of :class:`regions.RegionJob` (or None), ``check`` the keyword
    arguments of :func:`verifier.verify`. ``whole=False`` proves the regions
    alone (on the original's own values: it is known to run)."""
    on_gpu = check.get("kernels") == "gpu"
    if on_gpu:  # the rewrite is proved on the CPU (XNNPACK), then the model on the GPU
        check = {**check, "kernels": "xnnpack"}
    result: Verification | None = None
    why_not = ""
    start = time.perf_counter()
    try:
        if whole:
            result = verify(original, candidate, progress=progress, **check)
            result.seconds = time.perf_counter() - start  # with loading both models, as the regions' time is
    except OriginalDoesNotRun as e:
        if regions is None:
            raise
        why_not = e.reason
    if result is not None and not result.ok and floor and _floor_may_help(result):
        _apply_floor(result, original, check, progress)
    if result is None:
        kernels = check.get("kernels") or ("xnnpack" if check.get("xnnpack") else "builtin")
        result = Verification(ok=True, runs=0, atol=check.get("atol", 0.0), rtol=check.get("rtol", 0.0),
                              seed=check.get("seed", 0), kernels=kernels,
                              whole_model=why_not or "ran")  # not asked for: the original runs
    if regions is not None:
        _prove_regions(result, original, regions, sig_subgraphs or {}, check, progress)
    if on_gpu and whole:
        from .gpu_proof import prove_on_gpu

        prove_on_gpu(result, original, candidate, _full({k: v for k, v in check.items() if k not in ("kernels",
                                                                                                   "xnnpack")}),
                     progress)
    return result


def _floor_may_help(v: Verification) -> bool:
    """Some failing output is a float one that was compared (a shape or NaN
    mismatch no noise explains)."""
    bad = [c for c in v.outputs if not c.ok]
    return bool(bad) and all(c.max_abs_error is not None and c.dtype.startswith("float")
                             and not c.nonfinite_mismatch for c in bad)


def _apply_floor(result: Verification, original, check: dict, progress) -> None:
    say = progress or (lambda _msg: None)
    say("verifying: measuring the original's noise floor")
    kw = {k: v for k, v in check.items() if k not in ("kernels", "xnnpack")}
    kw.setdefault("input_range", DEFAULT_INPUT_RANGE)
    floor = noise_floor.measure(original, lambda a, b: _verify_with(result.kernels, a, b, progress=None, **_full(kw)))
    noise_floor.accept(result, floor)


def _full(kw: dict) -> dict:
    """verify()'s defaults for what ``kw`` leaves out (_verify_with takes them all)."""
    from .options import DEFAULT_ATOL, DEFAULT_RTOL, DEFAULT_RUNS

    base = dict(atol=DEFAULT_ATOL, rtol=DEFAULT_RTOL, runs=DEFAULT_RUNS, seed=0, inputs=None,
                input_range=DEFAULT_INPUT_RANGE, input_shapes=None, quant_steps=1, range_atol=False,
                num_threads=None)
    base.update(kw)
    return base


def _prove_regions(result: Verification, original, jobs: list, sig_subgraphs, check: dict, progress) -> None:
    start = time.perf_counter()
    kw = _full({k: v for k, v in check.items() if k not in ("kernels", "xnnpack")})
    values = None
    why_random = result.whole_model if result.whole_model != "ran" else ""
    # TFLite Micro's arithmetic is LiteRT's reference kernels'
    kernels = {"micro": "reference"}.get(result.kernels, result.kernels)
    if result.whole_model == "ran":
        (progress or (lambda _msg: None))(STAGE_CAPTURE)
        wanted: dict[int, set[int]] = {}
        tapped = {0} | set(sig_subgraphs.values())  # others (control-flow bodies) run inside an op: random
        for m in (m for j in jobs for m in j.regions if m["subgraph"] in tapped):
            wanted.setdefault(m["subgraph"], set()).update(src for _, src in m["inputs"])
        values = OriginalValues(original, kernels, sig_subgraphs, wanted, runs=kw["runs"], seed=kw["seed"],
                                inputs=kw["inputs"], input_range=kw["input_range"],
                                input_shapes=kw["input_shapes"], num_threads=kw["num_threads"])
    checks = prove_regions(jobs, kernels, values, seed=kw["seed"], input_range=kw["input_range"], runs=kw["runs"],
                           quant_steps=kw["quant_steps"], num_threads=kw["num_threads"], progress=progress)
    if values is not None and values.error:
        why_random = values.error
    captured = values is not None and not values.error
    result.regions = [c.to_dict() for c in checks]
    failed = [c for c in checks if not c.ok]
    worst = max((c.bound_used for c in checks if c.bound_used is not None), default=0.0)
    result.region_summary = {
        "regions": len(checks), "passed": len(checks) - len(failed), "failed": len(failed),
        "inputs": "real" if captured and all(c.inputs == "real" for c in checks) else
                  ("random" if not captured else "real where the original computed them, random elsewhere"),
        "why_random": why_random, "kernels": kernels, "bound_used": worst,
        "seconds": time.perf_counter() - start,
    }
    if failed:
        result.ok = False
        first = failed[0]
        msg = f"{len(failed)} of {len(checks)} region(s) differ beyond their tolerance (region {first.index}: " \
              f"{first.message})"
        result.message = f"{result.message}; {msg}" if result.message else msg

