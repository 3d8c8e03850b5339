"""Prove the regions (see :mod:`regions`) in the verifier's child process.

Both cut models hold every region side by side; each runs once per input set,
in one interpreter, and each region's outputs are compared at the region's
own tolerance. A region's inputs are the original model's values at its
boundary when the original runs here: the original is run on the
verification inputs with ``experimental_preserve_all_tensors`` (built-in
kernels, no delegate: a delegate keeps its intermediate values to itself) and
each boundary tensor is read by its index in the source file. Otherwise they
are seeded random values: floats uniform in the verification input range,
8- and 16-bit integers over their full range (a quantized tensor's every
value), other integers in ``[0, 10)``.

If the batch cannot load or run as a whole (one region's op may need what a
cut cannot give it), every region is proved alone, so that one bad region
fails alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping

import numpy as np

from .verifier import (OutputCheck, _compare, _first_line, _interpreter, _quiet_stderr, _runnables,
                       make_inputs)

#: the proof of one region
STAGE_REGIONS = "proving the regions"


@dataclass
class RegionCheck:
    index: int
    subgraph: int
    ok: bool
    #: "real": the original's values at the boundary; "random": seeded random
    inputs: str
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    bound_used: float | None = None
    #: its deviation over its noise floor (measured when the fixed tolerance was missed)
    floor_ratio: float | None = None
    tolerance: str = ""
    message: str = ""
    #: False: it could not be run alone (``message`` says why), so nothing was compared
    proved: bool = True
    outputs: list[OutputCheck] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("outputs")
        return d


def capture(original, sig_subgraphs: Mapping[str, int], wanted: Mapping[int, set[int]], *, runs: int, seed: int,
            inputs, input_range, input_shapes, num_threads=None) -> tuple[list[dict], str]:
    """The original's values of the ``wanted`` tensors (subgraph -> source
    indices), one dict ``{(subgraph, index): array}`` per run; or ``([], why)``
    when the original does not run with its intermediate values kept."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from .verifier import _feeds_for

    try:
        with _quiet_stderr():
            kw = {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                  "experimental_preserve_all_tensors": True, "num_threads": num_threads}
            interp = (Interpreter(model_path=str(original), **kw) if not isinstance(original, (bytes, bytearray))
                      else Interpreter(model_content=bytes(original), **kw))
        runnables = _runnables(interp)
    except (ValueError, RuntimeError) as e:
        return [], f"the built-in kernels cannot load it: {_first_line(e)}"
    rng = np.random.default_rng(seed)
    out = []
    n_runs = 1 if inputs is not None else max(1, runs)
    for _ in range(n_runs):
        values: dict = {}
        for r in runnables:
            sgi = sig_subgraphs.get(r.key, 0) if r.key else 0
            feeds = _feeds_for(r, inputs, rng, input_range, input_shapes)
            try:
                r.run(feeds)
            except (ValueError, RuntimeError) as e:
                return [], f"the built-in kernels cannot run it: {_first_line(e)}"
            for idx in wanted.get(sgi, ()):
                try:
                    values[(sgi, idx)] = np.array(interp.get_tensor(idx, sgi))
                except (ValueError, RuntimeError):
                    pass  # not computed (a branch not taken): random for this region
        out.append(values)
    return out, ""


def random_value(shape, dtype: np.dtype, rng: np.random.Generator, input_range) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype == np.int16:
        return rng.integers(-32768, 32768, size=shape).astype(np.int16)
    return make_inputs({"x": {"shape": shape, "dtype": dtype}}, rng, input_range)["x"]


def prove(job, kernels: str, captured: list[dict], *, seed: int, input_range, runs: int, quant_steps: int,
          num_threads=None, progress: Callable[[str], None] | None = None) -> list[RegionCheck]:
    """Run the region pair on each input set; one check per region. Regions
    that miss their fixed tolerance get the whole model's second chance, at
    their own scale: their original ops with every float constant nudged by
    one ulp (noise_floor.py) measure the noise of their own arithmetic."""
    say = progress or (lambda _msg: None)
    say(STAGE_REGIONS)
    run = dict(kernels=kernels, captured=captured, seed=seed, input_range=input_range, runs=runs,
               quant_steps=quant_steps, num_threads=num_threads)
    try:
        checks = _prove_batch(job.before, job.after, job.regions, **run)
        _floor(checks, job.before, job.regions, run, say)
        return list(checks.values())
    except _BatchFailed as e:
        batch_error = e.what
    from .regions import single

    out = []
    for meta in job.regions:
        before, after = single(job.before, meta, "before_ops"), single(job.after, meta, "after_ops")
        try:
            checks = _prove_batch(before, after, [meta], **run)
            _floor(checks, before, [meta], run, say)
            out += checks.values()
        except _BatchFailed as e:
            out.append(RegionCheck(meta["index"], meta["subgraph"], False, "", message=e.what, proved=False))
    for c in out:
        c.message = c.message or f"proved alone (the batch of all regions did not run: {batch_error})"
    return out


def _floor(checks: dict[int, "RegionCheck"], before: bytes, metas: list[dict], run: dict, say) -> None:
    from . import noise_floor

    failing = [m for m in metas if not checks[m["index"]].ok
               and all(c.ok or (c.max_abs_error is not None and c.dtype.startswith("float") and not c.nonfinite_mismatch)
                       for c in checks[m["index"]].outputs)]
    if not failing:
        return
    say("proving the regions: measuring the noise floor of the ones that missed their tolerance")
    floor: dict[tuple[int, str], float] = {}
    for s in range(noise_floor.FLOOR_SEEDS):
        nudged = _prove_batch(before, noise_floor.nudged(before, 1000 + s), failing, **run)
        for i, r in nudged.items():
            for c in r.outputs:
                if c.max_abs_error is not None:
                    floor[(i, c.name)] = max(floor.get((i, c.name), 0.0), c.max_abs_error)
    for m in failing:
        r = checks[m["index"]]
        for c in r.outputs:
            f = floor.get((m["index"], c.name))
            if f is None:
                continue
            c.noise_floor = f
            c.floor_ratio = c.max_abs_error / f if f > 0 else (0.0 if c.max_abs_error == 0 else float("inf"))
            if not c.ok and f > 0 and c.max_abs_error <= noise_floor.FLOOR_MULTIPLE * f:
                c.ok = True
                c.accepted_by_floor = True
                c.tolerance += f", or {noise_floor.FLOOR_MULTIPLE:g}x its noise floor {f:.3g}"
        r.message = ""
        _summarise(r)
        r.floor_ratio = max((c.floor_ratio for c in r.outputs if c.floor_ratio is not None), default=None)


class _BatchFailed(Exception):
    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


def _prove_batch(before: bytes, after: bytes, metas: list[dict], *, kernels: str, captured: list[dict], seed,
                 input_range, runs, quant_steps, num_threads) -> dict[int, RegionCheck]:
    sides = []
    for label, model in (("the original ops", before), ("the rewritten ops", after)):
        try:
            interp = _interpreter(model, kernels, num_threads)
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise _BatchFailed(f"{label} do not load alone: {_first_line(e)}") from None
        sides.append((interp, {d["name"]: d for d in interp.get_input_details()},
                      {d["name"]: d["index"] for d in interp.get_output_details()}))
    rng = np.random.default_rng(seed + 1)
    checks = {m["index"]: RegionCheck(m["index"], m["subgraph"], True, "real" if captured else "random")
              for m in metas}
    worst: dict[tuple[int, str], OutputCheck] = {}
    for run in range(max(1, len(captured) or runs)):
        values = captured[run] if captured else {}
        for m in metas:
            for name, src in m["inputs"]:
                d = sides[0][1][name]
                v = values.get((m["subgraph"], src))
                if v is None or list(v.shape) != list(d["shape"]) or v.dtype != d["dtype"]:
                    if captured:
                        checks[m["index"]].inputs = "random"
                    v = random_value(list(d["shape"]), d["dtype"], rng, input_range)
                for interp, ins, _ in sides:
                    interp.set_tensor(ins[name]["index"], v)
        for interp, label in zip((sides[0][0], sides[1][0]), ("the original ops", "the rewritten ops")):
            try:
                interp.invoke()
            except (ValueError, RuntimeError) as e:
                raise _BatchFailed(f"{label} do not run alone: {_first_line(e)}") from None
        for m in metas:
            for name in m["outputs"]:
                a = np.array(sides[0][0].get_tensor(sides[0][2][name]))
                b = np.array(sides[1][0].get_tensor(sides[1][2][name]))
                c = _compare("", name, a, b, m["atol"], m["rtol"], quant_steps, m["range_atol"])
                prev = worst.get((m["index"], name))
                worst[(m["index"], name)] = c if prev is None else prev.merge(c)
    for (i, _), c in worst.items():
        checks[i].outputs.append(c)
    for r in checks.values():
        _summarise(r)
    return checks


def _summarise(r: RegionCheck) -> None:
    outs = r.outputs
    r.ok = all(c.ok for c in outs)
    r.max_abs_error = max((c.max_abs_error for c in outs if c.max_abs_error is not None), default=None)
    r.max_rel_error = max((c.max_rel_error for c in outs if c.max_rel_error is not None), default=None)
    shares = [c.bound_used for c in outs]
    r.bound_used = None if None in shares else max(shares, default=0.0)
    r.tolerance = outs[0].tolerance if outs else ""
    bad = [c for c in outs if not c.ok]
    if bad:
        c = bad[0]
        r.message = (f"{c.name}: shape {c.tolerance}" if c.max_abs_error is None else
                     f"{c.name}: max |a-b| {c.max_abs_error:.3g} beyond {c.tolerance}")

