"""A model's own float noise, measured: how far its outputs move when every
float constant is nudged by one unit in the last place.

A fixed tolerance cannot judge a deep network. Folding a batch-norm into a
convolution re-associates one multiply-add per output, which is as exact as
float32 gets; but 100 such folds in a chain differ from the original by more
than any fixed ``atol`` a single layer would need (measured: 1.9e-4 on values
up to 3.3 for a 100-block CONV_2D -> MUL -> ADD -> RELU chain). Nudging the
*original's own* weights by one float32 ulp moves its output by 0.4e-4 to
1.5e-4 on the same chain: the deviation is the model's rounding noise, not a
bug. The floor is the largest such move over a few seeds (each seed nudges
every element up or down at random); an output whose deviation stays within
:data:`FLOOR_MULTIPLE` times its floor is accepted. A wrong fold moves
outputs by orders of magnitude more (a 1% scale in one block: about 100x the
floor) and still fails.

Runs in the verifier's child, on the same inputs and kernels as the
whole-model proof, only when the fixed tolerance was not met.
"""

from __future__ import annotations

import numpy as np

from .schema import TensorType

#: how many times its noise floor an output may deviate
FLOOR_MULTIPLE = 10.0
#: how many nudged copies of the original measure the floor
FLOOR_SEEDS = 3

_FLOAT = {TensorType.FLOAT32: np.float32, TensorType.FLOAT16: np.float16}


def nudged(original, seed: int) -> bytes:
    """The original with every float constant moved one ulp up or down (seeded)."""
    from .reader import load_bytes, parse
    from .writer import write_model

    buf, label = load_bytes(original)
    model = parse(buf, label)
    rng = np.random.default_rng(seed)
    done = set()
    for sg in model.subgraphs:
        for t in sg.tensors:
            dt = _FLOAT.get(t.dtype)
            if dt is None or t.buffer is None or t.buffer in done:
                continue
            v = t.value()
            if v is None or not v.size:
                continue
            done.add(t.buffer)
            direction = np.where(rng.random(v.shape) < 0.5, -np.inf, np.inf).astype(dt)
            t.buffer.data = np.nextafter(v, direction).astype(dt).reshape(-1).view(np.uint8)
            t.buffer.backing = None
    return write_model(model)


def measure(original, verify_with, seeds: int = FLOOR_SEEDS) -> dict[tuple[str, str], float]:
    """``(signature, output) -> floor``: the largest deviation any nudged copy
    showed. ``verify_with(a, b)`` compares two models as the whole-model proof
    did (same inputs, same kernels)."""
    floor: dict[tuple[str, str], float] = {}
    for s in range(seeds):
        v = verify_with(original, nudged(original, 1000 + s))
        for c in v.outputs:
            if c.max_abs_error is not None:
                key = (c.signature, c.name)
                floor[key] = max(floor.get(key, 0.0), c.max_abs_error)
    return floor


def accept(verification, floor: dict[tuple[str, str], float]) -> None:
    """Report each output's floor and ratio; pass the float outputs that
    failed the fixed tolerance but stay within FLOOR_MULTIPLE times their floor."""
    for c in verification.outputs:
        f = floor.get((c.signature, c.name))
        if f is None or c.max_abs_error is None:
            continue
        c.noise_floor = f
        c.floor_ratio = c.max_abs_error / f if f > 0 else (0.0 if c.max_abs_error == 0 else float("inf"))
        if not c.ok and c.dtype.startswith("float") and not c.nonfinite_mismatch and f > 0 \
                and c.max_abs_error <= FLOOR_MULTIPLE * f:
            c.ok = True
            c.tolerance += f", or {FLOOR_MULTIPLE:g}x its noise floor {f:.3g}"
            c.accepted_by_floor = True
    verification.noise_floor_multiple = FLOOR_MULTIPLE
    verification.ok = all(c.ok for c in verification.outputs)
    if verification.ok:
        verification.message = ""
    else:
        bad = [f"{c.signature + '/' if c.signature else ''}{c.name}" for c in verification.outputs if not c.ok]
        verification.message = f"outputs differ beyond tolerance and {FLOOR_MULTIPLE:g}x the noise floor: {', '.join(bad)}"
