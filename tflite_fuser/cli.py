"""Command line: a thin shell over :func:`tflite_fuser.fuse` and :func:`load`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Sequence

from . import __version__
from .errors import FuseError, UsageError
from .passes import PASS_CLASSES
from .options import (DEFAULT_ATOL, DEFAULT_RTOL, DEFAULT_RUNS, DEFAULT_TIMEOUT, FP16_MODES, KERNEL_SETS,
                      MEMORY_FRACTION, FuseOptions, PassOptions, VerifyOptions)
from .targets import DEFAULT_TARGET, TARGETS
from .pipeline import fuse, load
from .sandbox import gpu_coverage_isolated
from .report import coverage_text, render
from .schema import type_name
from .verifier import load_npz

EXIT_OK, EXIT_VERIFY_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
#: the reader of our output went away (``| head``): what a shell reports for a
#: process that SIGPIPE ended, without the noise of dying by it
EXIT_PIPE_CLOSED = 141

EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}  the model was fused (or left as it was) and verified; rewrites whose proof
     failed, if any, were reverted and named in a warning on stderr
  {EXIT_VERIFY_FAILED}  verification failed and reverting could not fix it (or --strict): nothing
     written (with --force the output is written anyway, and the exit code is still 1)
  {EXIT_BAD_INPUT}  bad usage or bad input: missing/unreadable/corrupt model, unwritable
     output, output == input without --in-place; nothing written
  {EXIT_INTERNAL}  internal error (a bug in tflite-fuse: please report it with the model)
  {EXIT_PIPE_CLOSED}  the program reading our output closed the pipe (e.g. `| head`); quietly
"""


def _pass_list() -> str:
    return "\n".join(f"  {c.name:<24} {c.summary}" + ("" if c.default else " [off by default: --enable]")
                     for c in PASS_CLASSES) or "  (none)"


def _fuse_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tflite-fuse",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Fuse what a converter left apart in a TFLite model: batch-norm MUL/ADD and\n"
            "activations back into their convolution, depthwise and grouped convolutions\n"
            "that were lowered into SPLIT + many CONV_2D + CONCATENATION back into one op.\n"
            "Then two proofs: the TFLite interpreter runs the original and the fused model\n"
            "on the same inputs and every output must match; and every rewrite is cut out\n"
            "and proved alone, its original ops against its new ones, on the original's own\n"
            "values there. A rewrite whose proof fails is reverted and the rest written\n"
            "(--strict: nothing is written). A model the interpreter cannot run whole (a\n"
            "custom op) is proved region by region. With --target gpu (or --verify-on gpu)\n"
            "the fused model then runs on LiteRT's GPU accelerator against the original on\n"
            "the CPU, and the report gives the GPU coverage before and after.\n\n"
            "Other command:  tflite-fuse inspect MODEL [--target gpu]   (op table, inputs,\n"
            "outputs, signatures; with --target gpu the ops the GPU refuses, and why)"),
        epilog=f"passes, in the order they run (repeated until nothing changes):\n{_pass_list()}\n\n"
               f"{EXIT_CODES}\nexamples:\n"
               "  tflite-fuse model.tflite model.fused.tflite\n"
               "  tflite-fuse model.tflite out.tflite -v --report report.json\n"
               "  tflite-fuse model.tflite out.tflite --inputs calib.npz --rtol 1e-4\n"
               "  tflite-fuse model.tflite --in-place\n"
               "  tflite-fuse model.tflite out.tflite --target micro   # for TFLite Micro, proved on it\n")
    p.add_argument("input", metavar="IN", help="the .tflite model to fuse (never modified)")
    p.add_argument("output", metavar="OUT", nargs="?", help="where to write the fused model")
    g = p.add_argument_group("passes")
    g.add_argument("--target", choices=list(TARGETS), default=DEFAULT_TARGET,
                   help="the runtime the model is fused for, and proved on: " + "; ".join(
                       f"{t.name}: {t.summary}" for t in TARGETS.values()) + f" (default {DEFAULT_TARGET})")
    g.add_argument("--passes", default="all", metavar="LIST",
                   help="comma-separated passes to run, 'all' (default) or 'none' (a verified round trip)")
    g.add_argument("--disable", action="append", default=[], metavar="LIST",
                   help="comma-separated passes not to run (repeatable)")
    g.add_argument("--enable", action="append", default=[], metavar="LIST",
                   help="comma-separated passes that are off by default to run too (marked so below; repeatable)")
    g.add_argument("--fp16-weights", choices=FP16_MODES, default="keep",
                   help="float16 weights behind DEQUANTIZE: fold and round back to float16, same file size, "
                        "verified on the float16 grid (keep, default); fold only where float16 holds the "
                        "result exactly (exact); or store folded weights as float32 (float32)")
    g.add_argument("--no-grouped-conv", action="store_true",
                   help="never emit a grouped CONV_2D; leave grouped convolutions in split form (for "
                        "delegates without grouped convs; depthwise merging still happens)")
    v = p.add_argument_group("verification")
    v.add_argument("--no-verify", action="store_true", help="do not run the interpreter (not recommended)")
    v.add_argument("--atol", type=float, default=DEFAULT_ATOL, help=f"absolute tolerance (default {DEFAULT_ATOL:g})")
    v.add_argument("--rtol", type=float, default=DEFAULT_RTOL, help=f"relative tolerance (default {DEFAULT_RTOL:g})")
    v.add_argument("--range-atol", action="store_true",
                   help="measure --atol in units of each output's largest magnitude, for outputs with a "
                        "wide dynamic range (cancellation near zero defeats an elementwise bound)")
    v.add_argument("--runs", type=int, default=DEFAULT_RUNS,
                   help=f"random input sets to try (default {DEFAULT_RUNS})")
    v.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    v.add_argument("--inputs", metavar="FILE.npz",
                   help="use these inputs instead of random ones: one array per input name "
                        "(or SIGNATURE/NAME)")
    v.add_argument("--input-range", default="-1,1", metavar="LO,HI",
                   help="range of random float inputs (default -1,1)")
    v.add_argument("--input-shape", action="append", default=[], metavar="NAME=D,D,...",
                   help="shape for an input with dynamic dimensions (default: -1 becomes 1)")
    v.add_argument("--verify-on", choices=KERNEL_SETS, metavar="KERNELS",
                   help="the kernels that verify: builtin, xnnpack, micro (TFLite Micro) or gpu; default: the "
                        "target's. A CPU kernel set that cannot run the input model hands over to the other")
    v.add_argument("--xnnpack", action="store_true", help="the same as --verify-on xnnpack")
    v.add_argument("--verify-timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"give up verifying after this long (default {DEFAULT_TIMEOUT:g}); the interpreter "
                        "runs in a child process, so a crash or hang there cannot take the tool down")
    v.add_argument("--force", action="store_true",
                   help="write the output even if verification fails (exit code stays 1)")
    v.add_argument("--strict", action="store_true",
                   help="any failed proof fails the run (exit 1, nothing written) instead of reverting the "
                        "rewrites that failed and writing the rest")
    v.add_argument("--verify-memory", default="auto", metavar="SIZE",
                   help="the most memory the verifier's child may address, e.g. 4G or 512M; 'none' for no limit "
                        f"(default: {int(MEMORY_FRACTION * 100)}%% of physical memory). A model that makes the "
                        "interpreter allocate more fails cleanly (exit 2) instead of taking the machine down")
    b = p.add_argument_group("speed")
    b.add_argument("--bench", action="store_true",
                   help="time the original and the fused model, alternating, on the target's kernels and the "
                        "other CPU kernel set; print the speedups (median of per-round ratios)")
    b.add_argument("--bench-rounds", type=int, default=7, metavar="N", help="alternating rounds (default 7)")
    b.add_argument("--bench-threads", type=int, default=1, metavar="N", help="interpreter threads (default 1)")
    o = p.add_argument_group("output")
    o.add_argument("--in-place", action="store_true",
                   help="replace IN with the fused model, keeping the original as IN.orig (or IN.orig.1, "
                        "IN.orig.2 ... when earlier runs left one: a backup is never overwritten) unless "
                        "--no-backup; when nothing is fused, IN is left untouched")
    o.add_argument("--no-backup", action="store_true", help="with --in-place: keep no backup")
    o.add_argument("--report", metavar="FILE.json", help="also write the report as JSON")
    o.add_argument("--nhwc-io", action="store_true",
                   help="make the NCHW inputs and outputs a PyTorch converter kept with boundary TRANSPOSEs (every "
                        "litert-torch vision model) NHWC: the model's interface changes (callers feed NHWC), so it is "
                        "off by default; proved by feeding transposed inputs and comparing transposed outputs")
    o.add_argument("--explorer", metavar="DIR",
                   help="write Model Explorer node-data files for the input and the fused model into DIR: each "
                        "op a rewrite removed or made, coloured by its pass (view with: model-explorer IN "
                        "--node_data_paths=DIR/NAME.original.json)")
    o.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    o.add_argument("-v", "--verbose", action="store_true",
                   help="say why each candidate pattern was left alone, and per-output errors")
    p.add_argument("--version", action="version", version=f"tflite-fuse {__version__}")
    return p


def _inspect_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tflite-fuse inspect",
                                description="Show a model's operators, inputs, outputs and signatures.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--target", choices=["gpu"],
                   help="gpu: also compile the model for LiteRT's GPU accelerator and list the ops it will not "
                        "take, with the delegate's reasons, and whether tflite-fuse --target gpu repairs each")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv or "--verbose" in argv
    try:
        if argv and argv[0] == "inspect":
            return _inspect(_inspect_parser().parse_args(argv[1:]))
        return _fuse(_fuse_parser().parse_args(argv))
    except FuseError as e:
        print(f"tflite-fuse: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MemoryError:
        print("tflite-fuse: error: out of memory (the model or its verification needs more than this "
              "machine has); nothing written", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("tflite-fuse: interrupted; nothing written", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_PIPE_CLOSED
    except Exception as e:  # a bug: say so in one line, show the trace only on -v
        if verbose:
            traceback.print_exc()
        print(f"tflite-fuse: internal error: {type(e).__name__}: {e} (please report; -v shows the trace)",
              file=sys.stderr)
        return EXIT_INTERNAL


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush of
    what is still buffered does not raise a second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a real file (tests, embedding)
        pass


def _csv(s: str | list[str]) -> list[str]:
    """Names from a comma-separated list, or from each of repeated options."""
    parts = s if isinstance(s, list) else [s]
    return [x.strip() for part in parts for x in part.split(",") if x.strip()]


def _parse_range(s: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in s.split(","))
    except ValueError:
        raise UsageError(f"--input-range wants LO,HI, got {s!r}") from None
    if not lo < hi:
        raise UsageError(f"--input-range: {lo} is not below {hi}")
    return lo, hi


def _parse_shapes(items: list[str]) -> dict[str, list[int]]:
    shapes = {}
    for item in items:
        name, _, dims = item.rpartition("=")
        try:
            shapes[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            raise UsageError(f"--input-shape wants NAME=D,D,..., got {item!r}") from None
        if not name:
            raise UsageError(f"--input-shape wants NAME=D,D,..., got {item!r}")
    return shapes


class _Progress:
    """Stage messages on stderr: one overwritten line on a terminal, nothing
    otherwise (logs stay clean), plain lines with -v."""

    def __init__(self, quiet: bool, verbose: bool):
        self.tty = sys.stderr.isatty() and not quiet
        self.verbose = verbose and not quiet
        self.width = 0

    def __call__(self, msg: str) -> None:
        if self.tty:
            line = f"tflite-fuse: {msg}..."
            sys.stderr.write("\r" + line.ljust(self.width))
            sys.stderr.flush()
            self.width = len(line)
        elif self.verbose:
            print(f"tflite-fuse: {msg}", file=sys.stderr)

    def done(self) -> None:
        if self.tty and self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()


def options_from(args: argparse.Namespace) -> FuseOptions:
    """The one options object a run needs, from the command line."""
    if args.runs < 1:
        raise UsageError("--runs must be at least 1")
    if args.atol < 0 or args.rtol < 0:
        raise UsageError("--atol and --rtol must not be negative")
    if args.no_backup and not args.in_place:
        raise UsageError("--no-backup only makes sense with --in-place")
    passes = args.passes if args.passes in ("all", "none") else _csv(args.passes)
    return FuseOptions(
        passes=passes, disable=_csv(args.disable), enable=_csv(args.enable), force=args.force, in_place=args.in_place,
        backup=not args.no_backup, strict=args.strict, bench=args.bench, bench_rounds=args.bench_rounds,
        bench_threads=args.bench_threads, explorer=args.explorer, nhwc_io=args.nhwc_io,
        pass_options=PassOptions(fp16_weights=args.fp16_weights, target=args.target,
                                 grouped_conv=not args.no_grouped_conv),
        verify=VerifyOptions(enabled=not args.no_verify, atol=args.atol, rtol=args.rtol, range_atol=args.range_atol,
                             runs=args.runs, seed=args.seed, inputs=load_npz(args.inputs) if args.inputs else None,
                             input_range=_parse_range(args.input_range),
                             input_shapes=_parse_shapes(args.input_shape),
                             kernels=args.verify_on or ("xnnpack" if args.xnnpack else None),
                             timeout=args.verify_timeout, memory_limit=_parse_size(args.verify_memory)))


def _parse_size(text: str) -> int | str | None:
    """``--verify-memory``: "auto", "none", or bytes with an optional K/M/G/T suffix."""
    t = text.strip().lower()
    if t in ("auto", "none"):
        return None if t == "none" else "auto"
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    mult = units.get(t[-1:], 1)
    try:
        n = float(t[:-1] if t[-1:] in units else t.rstrip("b") or "x")
    except ValueError:
        raise UsageError(f"--verify-memory: {text!r} is not a size (e.g. 4G, 512M, none)") from None
    if n <= 0:
        raise UsageError("--verify-memory must be positive (or 'none')")
    return int(n * mult)


def _fuse(args: argparse.Namespace) -> int:
    if args.in_place:
        if args.output is not None:
            raise UsageError("--in-place takes only IN (the output is IN itself)")
        args.output = args.input
    elif args.output is None:
        raise UsageError("missing OUT (or pass --in-place)")
    options = options_from(args)
    progress = _Progress(args.quiet, args.verbose)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.verbose and not args.quiet else None
    try:
        result = fuse(args.input, args.output, options=options, log=log, progress=progress)
    finally:
        progress.done()
    if args.report:
        _write_report(args.report, result.report)
    if not args.quiet:
        print(render(result.report, verbose=args.verbose))
    for r in result.report["reverted"]:  # a warning: the run passed, but not everything asked for was done
        sys.stdout.flush()
        print(f"tflite-fuse: warning: reverted {r['pass']}: {r['what']} ({r['error']})", file=sys.stderr)
    if not result.ok:  # on stderr too: a script that keeps only stderr must see it
        sys.stdout.flush()
        print(f"tflite-fuse: verification failed: {result.verification.message}"
              + ("; written anyway (--force)" if result.written else "; nothing written"), file=sys.stderr)
    return result.exit_code


def _write_report(path: str, report: dict) -> None:
    try:
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    except OSError as e:
        raise UsageError(f"{path}: cannot write report ({e.strerror or e})") from None


def _inspect(args: argparse.Namespace) -> int:
    model = load(args.model)
    info = describe_model(model)
    if args.target == "gpu":
        info["gpu"] = gpu_coverage_isolated(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    print(f"{args.model}: schema v{model.version}, {len(model.subgraphs)} subgraph(s), "
          f"{model.num_operators()} operators, {model.num_tensors()} tensors, {len(model.buffers)} buffers")
    if model.description:
        print(f"  description: {model.description}")
    if info["metadata"]:
        print("  metadata: " + ", ".join(f"{m['name']} ({m['bytes']} B)" for m in info["metadata"]))
    for sg in info["subgraphs"]:
        print(f"  subgraph {sg['index']} {sg['name'] or ''}".rstrip() + f": {sg['operators']} operators")
        for kind in ("inputs", "outputs"):
            for t in sg[kind]:
                print(f"    {kind[:-1]:<6} {t['name']}: {t['dtype']}{t['shape']}")
        width = max([len(n) for n in sg["op_counts"]] + [8])
        for n, c in sg["op_counts"].items():
            print(f"    {n:<{width}} {c:>6}")
    for sd in info["signatures"]:
        print(f"  signature {sd['key']!r} (subgraph {sd['subgraph']}): "
              f"inputs {', '.join(sd['inputs'])}; outputs {', '.join(sd['outputs'])}")
    g = info.get("gpu")
    if g is not None:
        if not g["available"]:
            print(f"  GPU accelerator: not available here: {g['reason']}")
        else:
            print(f"  GPU accelerator ({g['device'] or 'device unknown'}): {coverage_text(g)}")
            for r in g["refused"]:
                fix = f"tflite-fuse --target gpu rewrites it ({r['repair']})" if r["repair"] else "no rewrite yet"
                print(f"    {r['op']}: {r['reason']}: {fix}")
    return EXIT_OK


def describe_model(model) -> dict:
    def tinfo(t):
        return {"name": t.name, "dtype": type_name(t.dtype), "shape": list(t.shape)}

    subgraphs = [{"index": i, "name": sg.name, "operators": len(sg.operators),
                  "inputs": [tinfo(t) for t in sg.inputs], "outputs": [tinfo(t) for t in sg.outputs],
                  "op_counts": sg.op_counts()} for i, sg in enumerate(model.subgraphs)]
    return {
        "version": model.version,
        "description": model.description,
        "metadata": [{"name": m.name, "bytes": m.buffer.nbytes} for m in model.metadata],
        "subgraphs": subgraphs,
        "signatures": [{"key": sd.key, "subgraph": model.subgraphs.index(sd.subgraph),
                        "inputs": [n for n, _ in sd.inputs], "outputs": [n for n, _ in sd.outputs]}
                       for sd in model.signature_defs],
    }


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
