"""What fusion gives back on the fixture corpus: ops and interpreter latency
before / after / ideal, for every fixture that has an ideal counterpart.

For each fixture (``fixtures/manifest.json``) this runs the fuser in a fresh
process (tool time, peak memory, max verifier error), then times the
interpreter on the original, the fused model and the ideal one (the same
network written fused for the TF converter): medians over ``--invokes``
invokes after warm-up, single-threaded, round-robin across the three models so
that machine noise hits all three alike; with the built-in kernels (no delegate) and with
the XNNPACK delegate. It prints a table, writes it as JSON and renders a bar
chart of the speedups (matplotlib, from the ``fixtures`` extra).

    python -m benchmarks.fixtures_bench [--only naive/mobilenetv2 ...] [--invokes 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.measure import PEAK, run

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
OUT = ROOT / "bench-out"


def latency_ms(paths: list[Path], xnnpack: bool, invokes: int, rounds: int = 5) -> list[float]:
    """Median ms per invoke for each model, measured round-robin."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    rng = np.random.default_rng(0)
    interps = []
    for p in paths:
        it = Interpreter(model_path=str(p), num_threads=1, experimental_op_resolver_type=resolver)
        it.allocate_tensors()
        for d in it.get_input_details():
            dt = np.dtype(d["dtype"])
            x = (rng.uniform(-1, 1, d["shape"]).astype(dt) if dt.kind == "f"
                 else rng.integers(-128, 127, d["shape"]).astype(dt))
            it.set_tensor(d["index"], x)
        for _ in range(5):  # warm-up
            it.invoke()
        interps.append(it)
    samples: list[list[float]] = [[] for _ in paths]
    per_round = max(1, invokes // rounds)
    for _ in range(rounds):
        for i, it in enumerate(interps):
            for _ in range(per_round):
                t = time.perf_counter()
                it.invoke()
                samples[i].append((time.perf_counter() - t) * 1e3)
    return [statistics.median(s) for s in samples]


FUSE_JOB = """
from tflite_fuser import fuse
t = time.perf_counter()
r = fuse({src!r}, {dst!r}, runs=2)
_report(time.perf_counter() - t, peak_bytes=_peak(), ok=r.ok, ops=r.report["output"]["operators"],
        max_abs=r.verification.max_abs_error, max_rel=r.verification.max_rel_error,
        op_counts=r.report["output"]["op_counts"])
"""


def bench_fixture(entry: dict, tmp: Path, invokes: int) -> dict:
    src = FIXTURES / entry["file"]
    ideal = FIXTURES / entry["ideal"]
    dst = tmp / (entry["name"].replace("/", "_") + ".fused.tflite")
    job = run(PEAK + FUSE_JOB.format(src=str(src), dst=str(dst)))
    from tflite_fuser import load

    ideal_model = load(ideal)
    row = {
        "fixture": entry["name"],
        "route": entry["route"],
        "ops_before": entry["num_operators"],
        "ops_after": job.extra["ops"],
        "ops_ideal": ideal_model.num_operators(),
        "op_types_after": job.extra["op_counts"],
        "op_types_ideal": ideal_model.op_counts(),
        "verified": job.extra["ok"],
        "max_abs_error": job.extra["max_abs"],
        "max_rel_error": job.extra["max_rel"],
        "tool_seconds": job.seconds,
        "tool_peak_mb": job.peak_bytes / 1e6,
    }
    for kernels, xnn in (("builtin", False), ("xnnpack", True)):
        b, a, i = latency_ms([src, dst, ideal], xnn, invokes)
        row[kernels] = {"before_ms": b, "after_ms": a, "ideal_ms": i,
                        "speedup": b / a, "after_over_ideal": a / i}
    return row


def print_table(rows: list[dict]) -> None:
    w = max(len(r["fixture"]) for r in rows)
    print(f"{'fixture':<{w}} {'ops before/after/ideal':>22}  {'builtin ms before/after/ideal':>30} "
          f"{'speedup':>7} {'a/ideal':>7}  {'xnnpack ms before/after/ideal':>30} {'speedup':>7} "
          f"{'a/ideal':>7}  {'tool s':>6} {'peak MB':>7} {'max abs err':>11}")
    for r in rows:
        ops = f"{r['ops_before']}/{r['ops_after']}/{r['ops_ideal']}"
        cells = []
        for k in ("builtin", "xnnpack"):
            x = r[k]
            ms = f"{x['before_ms']:.3f}/{x['after_ms']:.3f}/{x['ideal_ms']:.3f}"
            cells.append(f"{ms:>30} {x['speedup']:>6.2f}x {x['after_over_ideal']:>6.2f}x")
        flag = "" if r["ops_after"] == r["ops_ideal"] else "  (op count != ideal)"
        print(f"{r['fixture']:<{w}} {ops:>22}  {cells[0]}  {cells[1]}  {r['tool_seconds']:>6.2f} "
              f"{r['tool_peak_mb']:>7.0f} {r['max_abs_error']:>11.2e}{flag}")


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["fixture"] for r in rows]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.5))
    ax.barh(y - 0.2, [r["builtin"]["speedup"] for r in rows], 0.4, label="built-in kernels (no delegate)")
    ax.barh(y + 0.2, [r["xnnpack"]["speedup"] for r in rows], 0.4, label="XNNPACK")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(y, names, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("interpreter latency before / after fusion (log scale; >1 = faster)")
    ax.set_title("tflite-fuse speedup per fixture (single thread, medians)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", help="fixture names (as in the manifest)")
    p.add_argument("--routes", default="tf,naive,litert_torch,quant",
                   help="comma-separated routes to include (default: all with an ideal)")
    p.add_argument("--invokes", type=int, default=50, help="timed invokes per model and kernel set")
    p.add_argument("--out", default=str(OUT), help="where the JSON and the chart go")
    args = p.parse_args(argv)
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    routes = set(args.routes.split(","))
    entries = [e for e in manifest["fixtures"]
               if e.get("ideal") and e.get("committed", True) and e["route"] in routes
               and (not args.only or e["name"] in args.only)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, e in enumerate(entries, 1):
            print(f"[{n}/{len(entries)}] {e['name']}", file=sys.stderr)
            rows.append(bench_fixture(e, Path(tmp), args.invokes))
    print_table(rows)
    (out / "fixtures_bench.json").write_text(json.dumps(rows, indent=2))
    try:
        chart(rows, out / "fixtures_speedup.png")
        print(f"wrote {out / 'fixtures_bench.json'} and {out / 'fixtures_speedup.png'}")
    except ImportError:
        print(f"wrote {out / 'fixtures_bench.json'} (no chart: matplotlib is in the 'fixtures' extra)")
    return rows


if __name__ == "__main__":
    main()
