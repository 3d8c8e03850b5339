"""reader -> graph -> passes -> writer -> verifier, as one library call.

:func:`fuse` is what the CLI runs; deployment scripts call it directly::

    result = tflite_fuser.fuse("model.tflite", "model.fused.tflite")
    assert result.ok, result.report["verification"]["message"]
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from . import __version__, explorer, io_layout, proof, regions
from .atomic import check_destination, commit, discard, free_backup_name, write_temp
from .errors import UsageError
from .graph import Model
from .options import FuseOptions, PassOptions, VerifyOptions
from .targets import Target
from .pagecache import WeightPages
from .passes import PassContext, pass_names, select
from .regions import Region
from .revert import Reverted, recover
from .reader import Source, load_bytes, parse
from .report import REPORT_VERSION, model_stats
from .bench import kernels_for, measure
from .sandbox import bench_isolated, check_memory, memory_needed, verify_isolated
from .validate import unsorted_subgraphs, validate
from .verifier import Verification
from .writer import Chunks, serialize

#: Verification tolerance (rtol, and atol in units of each output's range)
#: after folds re-rounded float16 weights: the re-rounding is a fresh float16
#: quantization of the folded weights, and its noise compounds with depth like
#: the model's own float16 noise (measured: 1.4e-2 of the output range on
#: quant/mobilenetv2_fp16 after 17 re-rounded folds; 2e-4 on single-layer nets).
FP16_GRID_TOL = 2e-2

#: A fixed point is normally reached in two or three rounds; this bounds a
#: (buggy) pair of passes that would undo each other.
MAX_ROUNDS = 8


@dataclass
class FuseResult:
    """What :func:`fuse` did. ``ok`` is False only when verification failed."""

    model: Model
    report: dict[str, Any]
    verification: Verification | None
    written: Path | None
    _chunks: Any = field(repr=False, default=None)

    @property
    def ok(self) -> bool:
        return self.verification is None or self.verification.ok

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    @property
    def model_bytes(self) -> bytes:
        """The rewritten model (joined on demand; large models are better
        written with ``dst=`` which streams the chunks)."""
        return self._chunks.tobytes()


@contextlib.contextmanager
def building_a_model():
    """Pause Python's cyclic garbage collector while a model's objects are
    made and rewritten. A model is a large graph of objects with no cycles
    (hundreds of thousands for a big network), and the collector would walk
    all of them again every few thousand allocations for nothing: reading a
    100,000-op model took twice as long with it on. The caller's setting is
    restored on the way out."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load(source: Source) -> Model:
    """Read and structurally validate a model (path or bytes)."""
    with building_a_model():
        buf, label = load_bytes(source)
        model = parse(buf, label)
        validate(model, label)
    return model


def save(model: Model, dst: str | os.PathLike, external: bool | None = None) -> Path:
    """Write ``model`` to ``dst`` atomically (no verification)."""
    dst_path = check_destination(None, dst, in_place=True)
    tmp = write_temp(dst_path, serialize(model, external))
    commit(tmp, dst_path)
    return dst_path


def run_passes(model: Model, passes: Sequence[str] | str | None = None, disable: Sequence[str] = (),
               options: PassOptions | None = None, log: Callable[[str], None] | None = None,
               progress: Callable[[str], None] | None = None, forbidden: dict | None = None,
               allowed: frozenset | None = None, enable: Sequence[str] = ()) -> tuple[dict[str, int], PassContext]:
    """Run the selected passes to a fixed point; return rewrites per pass.

    ``forbidden`` (``Rewrite.key`` -> why) names rewrites not to make,
    ``allowed`` the only ones to make (see :mod:`revert`)."""
    try:
        chosen = select(passes, list(disable), list(enable))
    except ValueError as e:
        raise UsageError(str(e)) from None
    ctx = PassContext(model, options or PassOptions(), log, forbidden=forbidden or {}, allowed=allowed)
    ctx.original_ops = {sg: list(sg.operators) for sg in model.subgraphs}
    pages = WeightPages.install(model)
    counts = {p.name: 0 for p in chosen}
    # Passes assume producers come before consumers: leave other subgraphs alone.
    for si in unsorted_subgraphs(model) if chosen else ():
        ctx.frozen.add(model.subgraphs[si])
        ctx.current_pass, ctx.subgraph_index = "pipeline", si
        ctx.skip(f"subgraph {si}", "operators are not in topological order; no pass touches it")
    # A pass that found nothing on the graph as it is now would find nothing
    # again (passes are deterministic): it is not run again until a rewrite
    # changes the graph. So the fixed point's last round stops at the last
    # pass that rewrote in the round before, instead of running them all.
    version = 0  # rewrites made so far: the only way the graph changes
    found_nothing_at: dict[str, int] = {}
    for round_ in range(1, MAX_ROUNDS + 1):
        changed = 0
        for p in chosen:
            if found_nothing_at.get(p.name) == version:
                continue
            if progress:
                progress(f"running passes: {p.name}" + (f" (round {round_})" if round_ > 1 else ""))
            t = time.perf_counter()
            n = p.run(model, ctx)
            ctx.pass_seconds[p.name] = ctx.pass_seconds.get(p.name, 0.0) + time.perf_counter() - t
            counts[p.name] += n
            changed += n
            version += n
            if not n:
                found_nothing_at[p.name] = version
            pages.release()
        if not changed:
            break
    return counts, ctx


def fuse(src: Source, dst: str | os.PathLike | None = None, *, options: FuseOptions | None = None,
         log: Callable[[str], None] | None = None, progress: Callable[[str], None] | None = None,
         **kwargs: Any) -> FuseResult:
    """Fuse ``src`` (path or bytes); write to ``dst`` if given.

    ``options`` says everything about the run (:class:`~tflite_fuser.options.FuseOptions`);
    keyword arguments override its fields by name (``runs=1``,
    ``fp16_weights="float32"``, ``verify_output=False``, ``isolate=False`` ...).
    Every rewrite is proved twice (:mod:`proof`): the whole model against the
    original, and each rewrite alone. A rewrite whose proof fails is reverted
    and the rest written (``result.report["reverted"]`` names it), unless
    ``strict``: then nothing is written. Nothing is written when verification
    fails, unless ``force``. Errors the user can fix raise
    :class:`~tflite_fuser.errors.FuseError` subclasses. Verification runs in
    a child process (``isolate``) so that a crash or a hang of the C++
    interpreter cannot take the caller down; ``isolate=False`` saves the
    child's start-up (~0.3 s) for trusted models.
    """
    opts = FuseOptions.from_kwargs(options, **kwargs)
    t0 = time.perf_counter()
    say = progress or (lambda _msg: None)
    is_path = not isinstance(src, (bytes, bytearray, memoryview))
    dst_path = check_destination(src if is_path else None, dst, opts.in_place) if dst is not None else None

    if opts.nhwc_io and (opts.verify.kernels or opts.pass_options.resolved.verify_on) in ("gpu", "micro"):
        raise UsageError("--nhwc-io is proved on LiteRT's CPU kernels; it is not available with the gpu or micro "
                         "target (or --verify-on gpu/micro)")
    if opts.explorer:  # before any work: a directory we cannot write is the user's to fix
        try:
            Path(opts.explorer).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--explorer {opts.explorer}: cannot create the directory ({e.strerror or e})") from None
    with building_a_model():
        return _fuse(src, dst_path, is_path, opts, log, say, progress, t0)


@dataclass
class _Attempt:
    """One run of the passes on the original, written and proved."""

    model: Model
    counts: dict[str, int]
    ctx: PassContext
    regions: list[Region]
    chunks: Any
    tmp: Path | None
    verification: Verification | None
    nothing_to_fuse: bool
    check: VerifyOptions
    notes: list[str]
    seconds: dict[str, float]
    #: how to prove again (pinpoint): the original, and a signature's subgraph by key
    original: Any = field(default=None, repr=False)
    sig_subgraphs: dict = field(default_factory=dict, repr=False)
    say: Callable[[str], None] = field(default=lambda _msg: None, repr=False)

    def discard(self) -> None:
        discard(self.tmp)
        self.tmp = None

    def pinpoint(self, failing: list[Region]) -> dict[int, Any]:
        """The rewrite at fault in each failing region of several rewrites
        (``regions.steps``): region index -> its first rewrite whose own step
        fails. Regions whose steps cannot be cut, or all pass, are left out."""
        n = 1 + max((r.index for r in self.regions), default=0)
        step_of: dict[int, tuple[Region, Any]] = {}
        subs = []
        made: dict[int, dict] = {}
        for region in failing:
            if region.subgraph not in made:
                made[region.subgraph] = regions.producers(
                    self.ctx.original_ops.get(self.model.subgraphs[region.subgraph], []))
            for sub in regions.steps(region, made[region.subgraph], n):
                step_of[sub.index] = (region, sub.rewrites[0])
                subs.append(sub)
            n += len(region.rewrites)
        if not subs:
            return {}
        self.say("verifying: proving the failing regions rewrite by rewrite")
        v = _verify(self.original, self.original, self.check, regions.jobs(subs), self.sig_subgraphs,
                    self.say, whole=False)
        found: dict[int, Any] = {}
        for c in sorted(v.regions, key=lambda c: c["index"]):
            region, rewrite = step_of[c["index"]]
            if not c["ok"] and region.index not in found:
                found[region.index] = rewrite
        return found


def _fuse(src, dst_path, is_path: bool, opts: FuseOptions, log, say, progress, t0: float) -> FuseResult:
    say("reading")
    buf, label = load_bytes(src)
    model = parse(buf, label)
    validate(model, label)
    before = model_stats(model, len(buf), label if is_path else None)
    original = src if is_path else bytes(buf)
    t_read = time.perf_counter()
    target = opts.pass_options.resolved

    spent = {"passes": 0.0, "write": 0.0, "verify": 0.0}
    attempts = 0

    def attempt(forbidden: dict, allowed: frozenset | None, regions: bool, first: Model | None = None) -> _Attempt:
        nonlocal attempts
        attempts += 1
        t = time.perf_counter()
        m = first if first is not None else parse(buf, label)
        spent["passes"] += time.perf_counter() - t
        a = _attempt(m, buf, original, dst_path, opts, target, forbidden, allowed, regions,
                     log if first is not None else None, progress if first is not None else None, say)
        for k, v in a.seconds.items():
            spent[k] += v
        return a

    limit = opts.verify.memory_bytes if opts.verify.enabled and opts.verify.isolate else None
    need = memory_needed(model, len(buf)) if limit else 0
    check_memory(need, limit)  # before any work: a run bound to fail
    run = attempt({}, None, opts.verify.regions, model)
    reverted: list[Reverted] = []
    try:
        if run.verification is not None and run.verification.whole_model != "ran":
            check_memory(need, limit, run.verification.whole_model)
        if run.verification is not None and not run.verification.ok and not opts.strict and opts.verify.regions:
            run, reverted = recover(run, attempt, say)
        ok = run.verification is None or run.verification.ok
        interface = _nhwc_io(run, dst_path, opts, say) if opts.nhwc_io and ok else None
        verification, tmp = run.verification, run.tmp
        bench = None
        if opts.bench and ok and not run.nothing_to_fuse:
            say("benchmarking")
            bench = _bench(original, tmp if tmp is not None else run.chunks.tobytes(), opts, target, run.check, say)
        written = backup_path = None
        if tmp is not None and (ok or opts.force):
            if opts.in_place and opts.backup:
                backup_path = free_backup_name(dst_path)
            commit(tmp, dst_path, backup_path)
            run.tmp = None
            written = dst_path
    finally:
        run.discard()
    model, ctx = run.model, run.ctx
    after = model_stats(model, run.chunks.nbytes, str(dst_path) if dst_path else None)
    notes = run.notes
    explorer_files = None
    if opts.explorer:
        stem = Path(str(src)).stem if is_path else "model"
        explorer_files = explorer.write(opts.explorer, stem, model, ctx.original_ops, ctx.rewrites, pass_names())

    report = {
        "report_version": REPORT_VERSION,
        "tool_version": __version__,
        "target": {"name": target.name, "summary": target.summary},
        "input": before,
        "output": after,
        "passes": [{"name": k, "rewrites": v, "seconds": round(ctx.pass_seconds.get(k, 0.0), 6)}
                   for k, v in run.counts.items()],
        "rewrites": [{"pass": r.pass_name, "subgraph": r.subgraph, "what": r.what} for r in ctx.rewrites],
        "skipped": [{"pass": s.pass_name, "subgraph": s.subgraph, "op": s.op, "reason": s.reason}
                    for s in ctx.standing_skips()],
        "verification": verification.to_dict() if verification is not None else None,
        "reverted": [r.to_dict() for r in reverted],
        "bench": bench,
        "explorer": explorer_files,
        "interface": interface,
        "notes": notes,
        "nothing_to_fuse": run.nothing_to_fuse,
        "written": written is not None,
        "backup": str(backup_path) if backup_path else None,
        "exit_code": 0 if ok else 1,
        "attempts": attempts,
        "seconds": {"read": t_read - t0, **spent, "total": time.perf_counter() - t0},
    }
    return FuseResult(model=model, report=report, verification=verification, written=written, _chunks=run.chunks)


def _nhwc_io(run: _Attempt, dst_path: Path | None, opts: FuseOptions, say) -> dict:
    """``--nhwc-io`` on the proved, fused model (io_layout.py), proved in its
    turn: the model before and after the change, fed the same inputs
    transposed, must give the same outputs transposed. When that fails the
    interface stays NCHW and the report says why."""
    before = run.chunks.tobytes()
    model = parse(memoryview(before), "the fused model")
    changes = io_layout.to_nhwc_io(model)
    out: dict = {"changes": [c.to_dict() for c in changes], "applied": False, "verification": None}
    if not changes:
        return out
    say("writing the NHWC interface")
    chunks = serialize(model, opts.external_buffers)
    if run.check.enabled:
        perms = {side: {c.name: c.perm for c in changes if c.side == side} for side in ("input", "output")}
        proof = _verify(before, chunks.tobytes(), dataclasses.replace(run.check, io_perms=perms), None, {}, say)
        out["verification"] = {"ok": proof.ok, "max_abs_error": proof.max_abs_error, "kernels": proof.kernels,
                               "message": proof.message}
        if not proof.ok:
            return out
        if run.verification is None:  # nothing else was rewritten: this is the model's proof
            run.verification = proof
    tmp = write_temp(dst_path, chunks) if dst_path is not None else None
    run.discard()
    run.tmp, run.chunks, run.model, run.nothing_to_fuse = tmp, chunks, model, False
    out["applied"] = True
    return out


def _attempt(model: Model, buf, original, dst_path: Path | None, opts: FuseOptions, target: Target, forbidden: dict,
             allowed: frozenset | None, prove_regions: bool, log, progress, say) -> _Attempt:
    """Passes, regions, write, proofs: one attempt (see :mod:`revert`)."""
    t0 = time.perf_counter()
    counts, ctx = run_passes(model, opts.passes, opts.disable, opts.pass_options, log, progress, forbidden, allowed,
                             opts.enable)
    t_passes = time.perf_counter()
    check, notes = _verification_for(opts.verify, target)
    if ctx.fp16_rerounded:
        check = dataclasses.replace(check, atol=max(check.atol, FP16_GRID_TOL), rtol=max(check.rtol, FP16_GRID_TOL),
                                    range_atol=True)
        notes.append(f"{ctx.fp16_rerounded} folded float16 weight tensor(s) were rounded back to float16, so "
                     f"verification uses the float16 grid: atol {check.atol:g} x each output's range, rtol "
                     f"{check.rtol:g} (--fp16-weights float32 folds exactly and verifies at the normal tolerance; "
                     f"--fp16-weights exact folds only where float16 holds the result exactly)")
    found = regions.find(model, ctx.original_ops, ctx.rewrites) if check.enabled and prove_regions else []
    jobs = regions.jobs(found) or None

    # Nothing rewritten: the output is the input, byte for byte. Nothing to
    # prove, and --in-place leaves the file (and its backups) alone.
    nothing_to_fuse = bool(counts) and not any(counts.values())
    if nothing_to_fuse:
        chunks = Chunks([buf])
        tmp = write_temp(dst_path, buf) if dst_path is not None and not opts.in_place else None
    else:
        say("writing")
        chunks = serialize(model, opts.external_buffers)
        tmp = write_temp(dst_path, chunks) if dst_path is not None else None
    t_write = time.perf_counter()
    verification = None
    sig_subgraphs = {sd.key: model.subgraphs.index(sd.subgraph) for sd in model.signature_defs}
    try:
        if check.enabled and not nothing_to_fuse:
            say("verifying")
            verification = _verify(original, tmp if tmp is not None else chunks.tobytes(), check, jobs,
                                   sig_subgraphs, say)
            _judge_unprovable(verification, found)
            _name_regions(verification, found)
    except BaseException:
        discard(tmp)
        raise
    seconds = {"passes": t_passes - t0, "write": t_write - t_passes, "verify": time.perf_counter() - t_write}
    return _Attempt(model, counts, ctx, found, chunks, tmp, verification, nothing_to_fuse, check, notes, seconds,
                    original, sig_subgraphs, say)


def _name_regions(v: Verification, found: list[Region]) -> None:
    """Each region check, with the rewrites it proved (for the report)."""
    by_index = {r.index: r for r in found}
    for check in v.regions:
        check["rewrites"] = [str(r) for r in by_index[check["index"]].rewrites]


def _judge_unprovable(v: Verification, found: list[Region]) -> None:
    """Rewrites that cannot be proved alone are proved by the whole-model
    proof, or not at all when it could not run."""
    unprovable = [r for r in found if r.problem is not None]
    if v.region_summary is not None:
        v.region_summary["unprovable"] = len(unprovable)
    if unprovable and v.whole_model != "ran":
        v.ok = False
        msg = (f"{len(unprovable)} rewrite(s) cannot be proved alone and the whole model could not be run "
               f"({v.whole_model})")
        v.message = f"{v.message}; {msg}" if v.message else msg


def _bench(original, candidate, opts: FuseOptions, target: Target, check: VerifyOptions, say) -> dict:
    kwargs = {"kernels": kernels_for(target.verify_on), "rounds": opts.bench_rounds,
              "threads": opts.bench_threads, "seed": check.seed}
    result = (bench_isolated(original, candidate, kwargs, check.timeout, say) if check.isolate
              else measure(original, candidate, progress=say, **kwargs))
    result["target_kernels"] = kwargs["kernels"][0]
    if target.verify_on == "gpu":
        result["note"] = ("the GPU accelerator is not timed: without a GPU it runs on SwiftShader, whose timings "
                          "say nothing of a phone's GPU")
    return result


def _verification_for(check: VerifyOptions, target: Target) -> tuple[VerifyOptions, list[str]]:
    """The kernels that prove a model for ``target`` (unless the user chose),
    and what to say when they cannot run here."""
    notes: list[str] = []
    kernels = check.kernels or ("xnnpack" if check.xnnpack else target.verify_on)
    return dataclasses.replace(check, kernels=kernels, xnnpack=False), notes


def _verify(original, candidate, check: VerifyOptions, jobs, sig_subgraphs: dict,
            say: Callable[[str], None], whole: bool = True) -> Verification:
    if check.isolate:
        return verify_isolated(original, candidate, check, regions=jobs, sig_subgraphs=sig_subgraphs, whole=whole,
                               progress=say)
    return proof.prove(original, candidate, regions=jobs, sig_subgraphs=sig_subgraphs, whole=whole, progress=say,
                       **check.check_kwargs())
