"""What fusion gives back on the fixture corpus, per target, and a check of the
target table against it.

For each fixture (``fixtures/manifest.json``) the fuser runs in a fresh
process once per CPU target (``--target xnnpack`` and ``--target builtin``:
tool time, peak memory, verification). Then, on each kernel set (the built-in
kernels, no delegate; the XNNPACK delegate), the original, both fused models
and the ideal (the same network written fused for TF's converter, where there
is one) are timed in alternation, round after round, single-threaded; each
figure is the median of per-round ratios against the original (a single
timing on this shared machine swings 2x; alternating puts every model under
the same weather).

The target table (``tflite_fuser/targets.py``) is checked against what is
measured: on each target's own kernels its fused model must be no more than
2% slower than the other target's (where the two differ), and no more than 2%
slower than the original (where it changed anything), each plus the noise of
the measurement (the original timed against itself in the same rounds). A
violation prints ``TABLE CHECK FAILED`` and the script exits with status 1.

    python -m benchmarks.fixtures_bench [--only naive/mobilenetv2 ...] [--rounds 9]
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
TARGETS = ("xnnpack", "builtin")
#: slower than this on a target's own kernels fails the check
TOLERANCE = 1.02


def speedups(paths: list[Path], kernels: str, rounds: int) -> tuple[list[float], list[float]]:
    """(ms per invoke, median per-round speedup over ``paths[0]``) for each model,
    timed in alternation on ``kernels``."""
    from tflite_fuser.bench import MIN_BATCH_SECONDS, _invoker

    invoke = [_invoker(p, kernels, 1, 0) for p in paths]
    for f in invoke:
        f()
        f()
    t0 = time.perf_counter()
    invoke[0]()
    n = max(1, int(MIN_BATCH_SECONDS / max(time.perf_counter() - t0, 1e-6)))
    per_round: list[list[float]] = []
    for r in range(rounds):
        order = list(range(len(paths)))
        order = order[r % len(order):] + order[:r % len(order)]
        times = [0.0] * len(paths)
        for i in order:
            t = time.perf_counter()
            for _ in range(n):
                invoke[i]()
            times[i] = (time.perf_counter() - t) / n
        per_round.append(times)
    ms = [statistics.median(t[i] for t in per_round) * 1e3 for i in range(len(paths))]
    ratio = [statistics.median(t[0] / t[i] for t in per_round) for i in range(len(paths))]
    return ms, ratio


FUSE_JOB = """
from tflite_fuser import fuse
t = time.perf_counter()
r = fuse({src!r}, {dst!r}, runs=2, target={target!r})
v = r.verification
_report(time.perf_counter() - t, peak_bytes=_peak(), ok=r.ok, ops=r.report["output"]["operators"],
        max_abs=v.max_abs_error if v else 0.0, kernels=v.kernels if v else None,
        op_counts=r.report["output"]["op_counts"], nothing=r.report["nothing_to_fuse"])
"""


def bench_fixture(entry: dict, tmp: Path, rounds: int) -> dict:
    src = FIXTURES / entry["file"]
    row = {"fixture": entry["name"], "route": entry["route"], "ops_before": entry["num_operators"]}
    paths = [src]
    for target in TARGETS:
        dst = tmp / f"{entry['name'].replace('/', '_')}.{target}.tflite"
        job = run(PEAK + FUSE_JOB.format(src=str(src), dst=str(dst), target=target))
        row[target] = {"ops_after": job.extra["ops"], "op_types_after": job.extra["op_counts"],
                       "verified": job.extra["ok"], "verified_on": job.extra["kernels"],
                       "max_abs_error": job.extra["max_abs"], "tool_seconds": job.seconds,
                       "tool_peak_mb": job.peak_bytes / 1e6}
        paths.append(dst)
    row["same_for_both_targets"] = paths[1].read_bytes() == paths[2].read_bytes()
    original = src.read_bytes()
    for i, target in enumerate(TARGETS):
        row[target]["unchanged"] = paths[1 + i].read_bytes() == original
    # The original a second time: what it "gains" over itself is the noise of
    # this measurement (the check allows that much on top of its tolerance).
    paths.append(src)
    if entry.get("ideal"):
        from tflite_fuser import load

        row["ops_ideal"] = load(FIXTURES / entry["ideal"]).num_operators()
        paths.append(FIXTURES / entry["ideal"])
    for kernels in TARGETS:
        ms, ratio = speedups(paths, kernels, rounds)
        row[f"on_{kernels}"] = {"before_ms": ms[0],
                                **{f"{t}_ms": ms[1 + i] for i, t in enumerate(TARGETS)},
                                **{f"{t}_speedup": ratio[1 + i] for i, t in enumerate(TARGETS)},
                                "noise": abs(1 - ratio[1 + len(TARGETS)])}
        if entry.get("ideal"):
            row[f"on_{kernels}"].update(ideal_ms=ms[-1], ideal_speedup=ratio[-1])
    return row


def check_table(rows: list[dict]) -> list[str]:
    """What the measurements say against the target table (empty: it holds)."""
    failures = []
    for r in rows:
        for target in TARGETS:
            m = r[f"on_{target}"]
            other = next(t for t in TARGETS if t != target)
            mine, theirs = m[f"{target}_speedup"], m[f"{other}_speedup"]
            allowed = TOLERANCE + m.get("noise", 0.0)
            if r[target].get("unchanged"):
                continue  # nothing fused for this target: the same file, nothing to hold it to
            if mine < 1 / allowed:
                failures.append(f"{r['fixture']}: fused for {target}, it is {1 / mine:.3f}x slower than the original "
                                f"on the {target} kernels")
            if not r["same_for_both_targets"] and mine * allowed < theirs:
                failures.append(f"{r['fixture']}: on the {target} kernels the {target} target's choice runs "
                                f"{theirs / mine:.3f}x slower than the {other} target's")
    return failures


def print_table(rows: list[dict]) -> None:
    w = max(len(r["fixture"]) for r in rows)
    print(f"{'fixture':<{w}} {'ops before/xnnpack/builtin/ideal':>32}  "
          f"{'on XNNPACK: speedup xnnpack/builtin/ideal':>42}  {'on built-in: speedup xnnpack/builtin/ideal':>43}")
    for r in rows:
        ideal = r.get("ops_ideal", "-")
        ops = f"{r['ops_before']}/{r['xnnpack']['ops_after']}/{r['builtin']['ops_after']}/{ideal}"
        cells = []
        for k in TARGETS:
            m = r[f"on_{k}"]
            ideal_s = f"{m['ideal_speedup']:.2f}x" if "ideal_speedup" in m else "-"
            cells.append(f"{m['xnnpack_speedup']:.2f}x / {m['builtin_speedup']:.2f}x / {ideal_s}"
                         f" ({m['before_ms']:.3g} ms)")
        print(f"{r['fixture']:<{w}} {ops:>32}  {cells[0]:>42}  {cells[1]:>43}")


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["fixture"] for r in rows]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.5))
    ax.barh(y - 0.2, [r["on_builtin"]["builtin_speedup"] for r in rows], 0.4,
            label="--target builtin, on the built-in kernels")
    ax.barh(y + 0.2, [r["on_xnnpack"]["xnnpack_speedup"] for r in rows], 0.4,
            label="--target xnnpack, on XNNPACK")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(y, names, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("interpreter latency before / after fusion (log scale; >1 = faster)")
    ax.set_title("tflite-fuse speedup per fixture and target (single thread, median of alternating rounds)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", help="fixture names (as in the manifest)")
    p.add_argument("--routes", default="tf,naive,litert_torch,onnx2tf,nobuco,quant",
                   help="comma-separated routes to include")
    p.add_argument("--rounds", type=int, default=9, help="alternating timing rounds per kernel set")
    p.add_argument("--out", default=str(OUT), help="where the JSON and the chart go")
    args = p.parse_args(argv)
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    routes = set(args.routes.split(","))
    entries = [e for e in manifest["fixtures"]
               if e.get("committed", True) and e.get("runs_in_litert", True) and e["route"] in routes
               and "float16 activations" not in e.get("note", "")  # the built-in kernels do not run them
               and (not args.only or e["name"] in args.only)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, e in enumerate(entries, 1):
            print(f"[{n}/{len(entries)}] {e['name']}", file=sys.stderr)
            rows.append(bench_fixture(e, Path(tmp), args.rounds))
    print_table(rows)
    failures = check_table(rows)
    (out / "fixtures_bench.json").write_text(json.dumps({"rows": rows, "table_check": failures}, indent=2))
    try:
        chart(rows, out / "fixtures_speedup.png")
        print(f"wrote {out / 'fixtures_bench.json'} and {out / 'fixtures_speedup.png'}")
    except ImportError:
        print(f"wrote {out / 'fixtures_bench.json'} (no chart: matplotlib is in the 'fixtures' extra)")
    for f in failures:
        print(f"TABLE CHECK FAILED: {f}")
    if failures:
        sys.exit(1)
    print(f"target table holds on {len(rows)} fixtures (tolerance {TOLERANCE:.2f}x)")
    return rows


if __name__ == "__main__":
    main()
