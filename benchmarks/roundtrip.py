"""Round-trip cost of tflite-fuse next to plainly reading and writing the bytes.

For a large synthetic model (default 10 blocks, 256 MB of weights) this prints,
as medians over ``--repeat`` fresh processes:

- plain:      read the file into memory and write it back out;
- round trip: ``load`` -> ``serialize`` -> write (no pass, no verification);
- fuse:       every pass (10 rewrites) -> write (no verification);
- fuse+verify: the CLI's default job, interpreter verification included;

with time and peak resident memory, and the ratios the core issue targets:
round-trip time <= 2x plain, peak memory <= 2x the model size.

    python -m benchmarks.roundtrip [--mb 256] [--blocks 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from benchmarks.measure import PEAK, median_of, mb, run
from benchmarks.synth import synthetic_model

JOBS = {
    "plain read+write": """
        src, dst = sys.argv_src, sys.argv_dst
        t = time.perf_counter()
        with open(src, "rb") as f:
            data = f.read()
        with open(dst, "wb") as f:
            f.write(data)
            f.flush()
            import os; os.fsync(f.fileno())
        _report(time.perf_counter() - t, peak_bytes=_peak())
    """,
    "tflite-fuse round trip": """
        from tflite_fuser import fuse
        t = time.perf_counter()
        fuse(sys.argv_src, sys.argv_dst, passes="none", verify_output=False)
        _report(time.perf_counter() - t, peak_bytes=_peak())
    """,
    "tflite-fuse all passes": """
        from tflite_fuser import fuse
        t = time.perf_counter()
        r = fuse(sys.argv_src, sys.argv_dst, verify_output=False)
        _report(time.perf_counter() - t, peak_bytes=_peak(), ops=r.report["output"]["operators"])
    """,
    "tflite-fuse all passes + verify": """
        from tflite_fuser import fuse
        t = time.perf_counter()
        r = fuse(sys.argv_src, sys.argv_dst, runs=1)
        assert r.ok, r.verification.message
        _report(time.perf_counter() - t, peak_bytes=_peak(), ops=r.report["output"]["operators"])
    """,
}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=256)
    p.add_argument("--blocks", type=int, default=10)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    from tflite_fuser import save

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        src, dst = os.path.join(tmp, "model.tflite"), os.path.join(tmp, "out.tflite")
        model = synthetic_model(args.blocks, args.mb)
        save(model, src)
        del model
        size = os.path.getsize(src)
        print(f"model: {args.blocks} conv-bn-relu blocks, {mb(size)} on disk; "
              f"medians of {args.repeat} fresh processes")
        rows = {}
        for name, job in JOBS.items():
            snippet = f"sys.argv_src, sys.argv_dst = {src!r}, {dst!r}\n{PEAK}\n{_dedent(job)}"
            rows[name] = median_of([run(snippet) for _ in range(args.repeat)])
        base = rows["plain read+write"]
        print(f"{'job':<34} {'time':>9} {'x plain':>8} {'peak mem':>10} {'x size':>7}")
        for name, s in rows.items():
            print(f"{name:<34} {s.seconds:>8.2f}s {s.seconds / base.seconds:>7.2f}x "
                  f"{mb(s.peak_bytes):>10} {s.peak_bytes / size:>6.2f}x")
        rt = rows["tflite-fuse round trip"]
        verdict = {
            "round trip time / plain": rt.seconds / base.seconds,
            "round trip peak / model size": rt.peak_bytes / size,
        }
        print(f"targets: round-trip time <= 2x plain: {verdict['round trip time / plain']:.2f}x; "
              f"peak memory <= 2x model size: {verdict['round trip peak / model size']:.2f}x")
        figures = {"model_bytes": size, "jobs": {k: {"seconds": v.seconds, "peak_bytes": v.peak_bytes}
                                                 for k, v in rows.items()}, **verdict}
        if args.json:
            with open(args.json, "w") as f:
                json.dump(figures, f, indent=2)
        return figures


def _dedent(s: str) -> str:
    import textwrap
    return textwrap.dedent(s)


if __name__ == "__main__":
    main()
