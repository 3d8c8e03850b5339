"""``--bench``: how much faster the fused model runs, on the target's kernels
and on the other CPU kernel set.

Both models are loaded side by side and timed in alternation, round after
round: a batch of invokes of one, then of the other (the order flipping each
round), and the speedup is the median of the per-round ratios. On a shared
machine a single timing swings by 2x; alternating puts both models under the
same weather, and the median of ratios is what stays put. Runs in the
verifier's child process (a crash there cannot take the caller down).

The GPU accelerator is not timed: on a machine without a GPU it runs on
SwiftShader, whose timings say nothing of a phone's GPU.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

#: a timed batch lasts at least this long (short ones measure the timer)
MIN_BATCH_SECONDS = 0.02


def kernels_for(target_kernels: str) -> list[str]:
    """What ``--bench`` times for a target: its own kernels first, then the
    other CPU kernel set (TFLite Micro's target is timed on TFLM and both)."""
    if target_kernels == "micro":
        return ["micro", "builtin", "xnnpack"]
    first = "xnnpack" if target_kernels in ("xnnpack", "gpu") else "builtin"
    return [first, "builtin" if first == "xnnpack" else "xnnpack"]


def measure(original, candidate, kernels: list[str], rounds: int = 7, threads: int = 1, seed: int = 0,
            progress=None) -> dict:
    """Per kernel set: before/after milliseconds per invoke and the median
    speedup, or why it could not be timed."""
    out = {"rounds": rounds, "threads": threads, "kernels": {}}
    for k in kernels:
        if progress:
            progress(f"benchmarking on {k}")
        try:
            a, b = _invoker(original, k, threads, seed), _invoker(candidate, k, threads, seed)
        except (RuntimeError, ValueError) as e:
            out["kernels"][k] = {"error": str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}
            continue
        out["kernels"][k] = _alternate(a, b, rounds)
    return out


def _alternate(a, b, rounds: int) -> dict:
    for f in (a, b):  # warm up: first invokes allocate and pack weights
        f()
        f()
    t0 = time.perf_counter()
    a()
    n = max(1, int(MIN_BATCH_SECONDS / max(time.perf_counter() - t0, 1e-6)))
    before, after, ratios = [], [], []
    for r in range(rounds):
        pair = (a, b) if r % 2 == 0 else (b, a)
        times = []
        for f in pair:
            t = time.perf_counter()
            for _ in range(n):
                f()
            times.append((time.perf_counter() - t) / n)
        ta, tb = (times[0], times[1]) if r % 2 == 0 else (times[1], times[0])
        before.append(ta)
        after.append(tb)
        ratios.append(ta / tb)
    return {"before_ms": statistics.median(before) * 1e3, "after_ms": statistics.median(after) * 1e3,
            "speedup": statistics.median(ratios), "invokes_per_round": n}


def _invoker(model, kernels: str, threads: int, seed: int):
    """A function that runs one invoke of ``model`` on ``kernels``, inputs set once."""
    rng = np.random.default_rng(seed)
    if kernels == "micro":
        from .micro import runnables

        (r,) = runnables(model)
        for i, (_, shape, dtype) in enumerate(r.specs):
            r.interp.set_input(_random(rng, shape, dtype), i)
        return r.interp.invoke
    from .verifier import _interpreter

    it = _interpreter(model, kernels, threads)
    it.allocate_tensors()
    for d in it.get_input_details():
        shape = [1 if s < 0 else int(s) for s in d.get("shape_signature", d["shape"])]
        if list(d["shape"]) != shape:
            it.resize_tensor_input(d["index"], shape, strict=False)
            it.allocate_tensors()
        it.set_tensor(d["index"], _random(rng, shape, np.dtype(d["dtype"])))
    return it.invoke


def _random(rng, shape, dtype) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.uniform(-1, 1, shape).astype(dt)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(max(info.min, -128), min(info.max, 127) + 1, shape).astype(dt)
    return np.zeros(shape, dt)
