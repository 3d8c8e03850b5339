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

from .verifier import (OutputCheck, _compare, _first_line, _interpreter, _runnables, raise_if_out_of_memory,
                       make_inputs)

#: stage markers (see verifier.py): the original's run that keeps its
#: intermediate values, and the region proofs
STAGE_CAPTURE = "running the input model for the values at the regions' edges"
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


class OriginalValues:
    """The original's values of the ``wanted`` tensors (subgraph -> source
    indices) on the verification inputs, one run at a time (``values(run)``:
    ``{(subgraph, index): array}``), so that only one run's values are held.

    The original runs *tapped*: a copy whose subgraphs also output the wanted
    tensors, so that the interpreter keeps just those alive (keeping every
    tensor, ``experimental_preserve_all_tensors``, costs the sum of all
    activations) and any kernel set, a delegate too, can run it. The inputs
    of run ``r`` are the whole-model proof's: the same seeded generator,
    drawn in the same order. ``error`` says why there are none."""

    def __init__(self, original, kernels: str, sig_subgraphs: Mapping[str, int], wanted: Mapping[int, set[int]], *,
                 runs: int, seed: int, inputs, input_range, input_shapes, num_threads=None):
        self.wanted, self.sig_subgraphs = wanted, sig_subgraphs
        self.seed, self.inputs, self.input_range, self.input_shapes = seed, inputs, input_range, input_shapes
        self.runs = 1 if inputs is not None else max(1, runs)
        self.error = ""
        self._cache: tuple[int, dict] | None = None
        try:
            self.interp = _interpreter(tapped(original, wanted), kernels, num_threads)
            self.runnables = _runnables(self.interp)
        except (ValueError, RuntimeError) as e:
            raise_if_out_of_memory(e)
            self.error = f"the original does not load with its values there as outputs: {_first_line(e)}"

    def __call__(self, run: int) -> dict:
        if self.error:
            return {}
        if self._cache is not None and self._cache[0] == run:
            return self._cache[1]
        from .verifier import _feeds_for

        rng = np.random.default_rng(self.seed)
        values: dict = {}
        try:
            for r_ in range(run + 1):
                for r in self.runnables:
                    feeds = _feeds_for(r, self.inputs, rng, self.input_range, self.input_shapes)
                    if r_ < run:
                        continue  # the draws of earlier runs, to reach this run's inputs
                    r.run(feeds)
                    sgi = self.sig_subgraphs.get(r.key, 0) if r.key else 0
                    for idx in self.wanted.get(sgi, ()):
                        try:
                            values[(sgi, idx)] = np.array(self.interp.get_tensor(idx, sgi))
                        except (ValueError, RuntimeError):
                            pass  # not computed (a branch not taken): random for this region
        except (ValueError, RuntimeError) as e:
            raise_if_out_of_memory(e)
            self.error = f"the original does not run with its values there as outputs: {_first_line(e)}"
            return {}
        self._cache = (run, values)
        return values


def tapped(original, wanted: Mapping[int, set[int]]) -> bytes:
    """``original`` with the ``wanted`` tensors (subgraph -> index) as extra
    subgraph outputs. Tensor indices stay as they were: the writer keeps
    every tensor of a file it read, in order."""
    from .reader import load_bytes, parse
    from .writer import write_model

    buf, label = load_bytes(original)
    model = parse(buf, label)
    for sgi, idxs in wanted.items():
        sg = model.subgraphs[sgi]
        seen = set(sg.inputs) | set(sg.outputs)
        sg.outputs = sg.outputs + [sg.tensors[i] for i in sorted(idxs) if sg.tensors[i] not in seen]
    return write_model(model)


def random_value(shape, dtype: np.dtype, rng: np.random.Generator, input_range) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype == np.int16:
        return rng.integers(-32768, 32768, size=shape).astype(np.int16)
    return make_inputs({"x": {"shape": shape, "dtype": dtype}}, rng, input_range)["x"]


def prove(jobs: list, kernels: str, values: "OriginalValues | None", *, seed: int, input_range, runs: int,
          quant_steps: int, num_threads=None, progress: Callable[[str], None] | None = None) -> list[RegionCheck]:
    """Run each pair of cut models (``regions.RegionJob``) on each input
    set; one check per region.

    Runs are the outer loop: the original's values of one run are computed
    once and fed to every pair (a pair is loaded once when there is one, else
    once per run, so that one pair's tensors are held at a time). A pair that
    cannot load or run is proved again region by region, so that one bad
    region fails alone. Regions that miss their fixed tolerance get the whole
    model's second chance at their own scale: their original ops with every
    float constant nudged by one ulp (noise_floor.py) measure the noise of
    their own arithmetic."""
    say = progress or (lambda _msg: None)
    say(STAGE_REGIONS)
    cfg = _Config(kernels, values if values is not None and not values.error else None, seed, input_range,
                  runs, quant_steps, num_threads)
    pairs = [_Pair(j.before, j.after, j.regions) for j in jobs]
    checks = _compare_pairs(pairs, cfg)
    singles = []
    for p in (p for p in pairs if p.failed):
        from .regions import single

        for meta in p.metas:
            q = _Pair(single(p.before, meta, "before_ops"), single(p.after, meta, "after_ops"), [meta])
            q.note = f"proved alone (its batch of regions did not run: {p.failed})"
            singles.append(q)
    if singles:
        say(STAGE_REGIONS + f": {len(singles)} alone")
        checks.update(_compare_pairs(singles, cfg))
    _floor(checks, [p for p in pairs + singles if not p.failed], cfg, say)
    return [checks[m["index"]] for j in jobs for m in j.regions]


@dataclass
class _Config:
    kernels: str
    values: "OriginalValues | None"
    seed: int
    input_range: tuple
    runs: int
    quant_steps: int
    num_threads: int | None

    @property
    def n_runs(self) -> int:
        return self.values.runs if self.values is not None else max(1, self.runs)


class _BatchFailed(Exception):
    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


class _Pair:
    """One batch of regions: the cut models before and after, their regions,
    and (while loaded) an interpreter for each."""

    def __init__(self, before: bytes, after: bytes, metas: list[dict]):
        self.before, self.after, self.metas = before, after, metas
        self.failed = ""
        self.note = ""
        self.sides: list | None = None

    def load(self, cfg: _Config) -> None:
        """Both interpreters. Tensors are allocated at the first run, for the
        shapes the original really computed: a converter may declare a shape
        it never computes (onnx2tf writes [1, 1, 1] behind a RESHAPE whose
        shape is computed), and a region cut there allocates only so. Original
        ops the stock interpreter cannot run (a Flex op) are computed by
        :class:`ElementwiseReference` when numpy can compute every one."""
        self.sides = []
        for label, model in (("the original ops", self.before), ("the rewritten ops", self.after)):
            try:
                interp = (model is self.before and ElementwiseReference.of(model)) or \
                    _interpreter(model, cfg.kernels, cfg.num_threads)
            except (ValueError, RuntimeError) as e:
                raise_if_out_of_memory(e)
                self.sides = None
                raise _BatchFailed(f"{label} do not load alone: {_first_line(e)}") from None
            self.sides.append((interp, {d["name"]: d for d in interp.get_input_details()},
                               {d["name"]: d["index"] for d in interp.get_output_details()}))
        self.shapes: dict[str, tuple] | None = None

    def _allocate(self, feeds: dict[str, np.ndarray]) -> None:
        """(Re)allocate both sides when the inputs' shapes are new."""
        shapes = {name: v.shape for name, v in feeds.items()}
        if shapes == self.shapes:
            return
        for (interp, ins, _), label in zip(self.sides, ("the original ops", "the rewritten ops")):
            try:
                for name, shape in shapes.items():
                    if list(shape) != list(ins[name]["shape"]) or self.shapes is not None:
                        interp.resize_tensor_input(ins[name]["index"], list(shape), strict=False)
                interp.allocate_tensors()
            except (ValueError, RuntimeError) as e:
                raise_if_out_of_memory(e)
                raise _BatchFailed(f"{label} do not load alone: {_first_line(e)}") from None
        self.shapes = shapes

    def run(self, seen: dict, run: int, cfg: _Config, random_inputs: set):
        """Feed both sides one input set; yield (region, output, a, b)."""
        feeds: dict[str, np.ndarray] = {}
        for m in self.metas:
            rng = np.random.default_rng([cfg.seed, run, m["index"]])  # the same values for every pair it is in
            for name, src in m["inputs"]:
                d = self.sides[0][1][name]
                v = seen.get((m["subgraph"], src))
                if v is None or v.dtype != d["dtype"] or (list(v.shape) != list(d["shape"])
                                                           and len(v.shape) != len(d["shape"])):
                    random_inputs.add(m["index"])
                    v = random_value(list(d["shape"]), d["dtype"], rng, cfg.input_range)
                feeds[name] = v
        self._allocate(feeds)
        for interp, ins, _ in self.sides:
            for name, v in feeds.items():
                interp.set_tensor(ins[name]["index"], v)
        for (interp, _, _), label in zip(self.sides, ("the original ops", "the rewritten ops")):
            try:
                interp.invoke()
            except (ValueError, RuntimeError) as e:
                raise_if_out_of_memory(e)
                raise _BatchFailed(f"{label} do not run alone: {_first_line(e)}") from None
        (a_it, _, a_out), (b_it, _, b_out) = self.sides
        for m in self.metas:
            for name in m["outputs"]:
                yield m, name, np.array(a_it.get_tensor(a_out[name])), np.array(b_it.get_tensor(b_out[name]))


def _run_pairs(pairs: list[_Pair], cfg: _Config, random_inputs: set):
    """Every pair on every run, runs outermost; yield what ``_Pair.run`` does.
    A pair that fails is marked (``failed``) and left out from then on."""
    keep = len(pairs) == 1
    for run in range(cfg.n_runs):
        seen = cfg.values(run) if cfg.values is not None else {}
        for p in pairs:
            if p.failed:
                continue
            try:
                if p.sides is None:
                    p.load(cfg)
                yield from p.run(seen, run, cfg, random_inputs)
            except _BatchFailed as e:
                p.failed = e.what
            if not keep or p.failed:
                p.sides = None
    for p in pairs:
        p.sides = None


def _compare_pairs(pairs: list[_Pair], cfg: _Config) -> dict[int, RegionCheck]:
    worst: dict[tuple[int, str], OutputCheck] = {}
    random_inputs: set[int] = set()
    for m, name, a, b in _run_pairs(pairs, cfg, random_inputs):
        c = _compare("", name, a, b, m["atol"], m["rtol"], cfg.quant_steps, m["range_atol"])
        prev = worst.get((m["index"], name))
        worst[(m["index"], name)] = c if prev is None else prev.merge(c)
    checks: dict[int, RegionCheck] = {}
    for p in pairs:
        for m in p.metas:
            i = m["index"]
            if p.failed:
                checks[i] = RegionCheck(i, m["subgraph"], False, "", message=p.failed, proved=False)
                continue
            r = RegionCheck(i, m["subgraph"], True, "random" if cfg.values is None or i in random_inputs else "real",
                            outputs=[worst[(i, name)] for name in m["outputs"]])
            _summarise(r)
            r.message = r.message or p.note
            checks[i] = r
    return checks


def _floor(checks: dict[int, RegionCheck], pairs: list[_Pair], cfg: _Config, say) -> None:
    from . import noise_floor

    def may_help(r: RegionCheck) -> bool:
        return r.proved and not r.ok and all(c.ok or (c.max_abs_error is not None and c.dtype.startswith("float")
                                                      and not c.nonfinite_mismatch) for c in r.outputs)

    todo = [p for p in pairs if any(may_help(checks[m["index"]]) for m in p.metas)]
    if not todo:
        return
    say("proving the regions: measuring the noise floor of the ones that missed their tolerance")
    floor: dict[tuple[int, str], float] = {}
    for s in range(noise_floor.FLOOR_SEEDS):
        nudged = [_Pair(p.before, noise_floor.nudged(p.before, 1000 + s),
                        [m for m in p.metas if may_help(checks[m["index"]])]) for p in todo]
        for m, name, a, b in _run_pairs(nudged, cfg, set()):
            c = _compare("", name, a, b, 0.0, 0.0, cfg.quant_steps)
            if c.max_abs_error is not None:
                key = (m["index"], name)
                floor[key] = max(floor.get(key, 0.0), c.max_abs_error)
    for p in todo:
        for m in p.metas:
            r = checks[m["index"]]
            if not may_help(r):
                continue
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



class ElementwiseReference:
    """A cut of original ops computed in float64 by numpy, for a region the
    stock interpreter cannot run: per-element ops and FULLY_CONNECTED (a
    rewrite may fold what it wrote into the layer after it) only, at least
    one a custom op numpy knows and the interpreter lacks (onnx2tf's FlexErf:
    ``elementwise_eval.CUSTOM_UNARY``). It answers the few interpreter calls
    a region proof makes; the rewritten side still runs in the interpreter,
    so the proof compares the rewrite with the exact maths of what it
    replaced."""

    def __init__(self, model):
        self.sg = model.main
        self.inputs = list(self.sg.inputs)
        self.outputs = list(self.sg.outputs)
        self.values: dict = {}

    @classmethod
    def of(cls, model_bytes: bytes) -> "ElementwiseReference | None":
        from .elementwise_eval import CUSTOM_UNARY, evaluable
        from .reader import load_bytes, parse
        from .schema import BuiltinOperator as Op

        model = parse(*load_bytes(model_bytes))
        ops = [op for sg in model.subgraphs for op in sg.operators]
        if len(model.subgraphs) != 1 or not any(op.code == Op.CUSTOM and op.opcode.custom_code in CUSTOM_UNARY
                                                 for op in ops):
            return None
        plain_fc = [op for op in ops if op.code == Op.FULLY_CONNECTED]
        if any(getattr(op.options, "weightsFormat", 0) or not all(
                t is None or t.is_constant for t in op.inputs[1:]) for op in plain_fc):
            return None
        return cls(model) if all(evaluable(op) or op in plain_fc for op in ops) else None

    def get_input_details(self) -> list[dict]:
        return [{"name": t.name, "index": i, "shape": np.array(t.shape), "dtype": np.float32}
                for i, t in enumerate(self.inputs)]

    def get_output_details(self) -> list[dict]:
        return [{"name": t.name, "index": i} for i, t in enumerate(self.outputs)]

    def resize_tensor_input(self, index, shape, strict=False) -> None:
        pass  # per-element: any shape

    def allocate_tensors(self) -> None:
        pass

    def set_tensor(self, index: int, value) -> None:
        self.values[self.inputs[index]] = np.asarray(value, np.float64)

    def invoke(self) -> None:
        from .elementwise_eval import run_ops
        from .schema import BuiltinOperator as Op

        values = {t: self.values[t] for t in self.inputs}
        constant = lambda t: np.asarray(t.value(), np.float64)  # noqa: E731
        for op in self.sg.operators:
            if op.code == Op.FULLY_CONNECTED:
                values[op.outputs[0]] = _fully_connected(op, values[op.inputs[0]], constant)
            else:
                run_ops([op], values, constant)
        self.values = values

    def get_tensor(self, index: int) -> np.ndarray:
        return self.values[self.outputs[index]].astype(np.float32)


def _fully_connected(op, x: np.ndarray, constant) -> np.ndarray:
    """TFLite's FULLY_CONNECTED in float64: rows of the filter's input size
    times the filter, plus the bias, clamped, in the output tensor's shape."""
    from .ops import ACTIVATION_RANGE, fused_activation
    from .schema import ActivationFunctionType as Act

    w = constant(op.inputs[1])
    y = x.reshape(-1, w.shape[1]) @ w.T
    if len(op.inputs) > 2 and op.inputs[2] is not None:
        y = y + constant(op.inputs[2])
    act = fused_activation(op)
    if act not in (None, Act.NONE):
        y = np.clip(y, *ACTIVATION_RANGE[act])
    return y.reshape(op.outputs[0].shape)
