"""How tool time grows with the width of one split convolution.

``benchmarks.scale`` grows a model in length (more blocks); this grows it in
width, where a pass can turn quadratic unseen: a depthwise conv of W channels
lowered as ``SPLIT`` into W one-channel ``CONV_2D`` ops and a
``CONCATENATION`` (the "excessive CONV_2D" of converted models; MobileNetV2's
widest is 960). Each width is fused without verification in a fresh process,
and the script prints the seconds per width and the fitted exponent k of
time ~ W^k (k = 1 is linear; two loops that each looked their item up in a
W-long list made it 2 before they were fixed).

    python -m benchmarks.wide_split [--widths 240 960 3840]
"""

from __future__ import annotations

import argparse
import os
import tempfile

from benchmarks.measure import PEAK, run
from benchmarks.scale import slope

MAKE = """
import numpy as np
from tflite_fuser.builder import ModelBuilder
r = np.random.default_rng(0)
b = ModelBuilder()
x = b.input("x", [1, 8, 8, {width}])
pieces = b.split(x, {width})
y = b.concat([b.conv2d(p, r.normal(size=(1, 3, 3, 1)).astype(np.float32),
                       r.normal(size=1).astype(np.float32)) for p in pieces])
b.output(y)
open({path!r}, "wb").write(b.to_bytes())
_report(0.0, peak_bytes=_peak())
"""

FUSE = """
from tflite_fuser import fuse
t = time.perf_counter()
r = fuse({src!r}, {dst!r}, verify_output=False)
_report(time.perf_counter() - t, peak_bytes=_peak(), ops_before=r.report["input"]["operators"],
        ops_after=r.report["output"]["operators"])
"""


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", type=int, nargs="+", default=[240, 960, 3840])
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        src, dst = os.path.join(tmp, "m.tflite"), os.path.join(tmp, "o.tflite")
        for w in args.widths:
            run(PEAK + MAKE.format(width=w, path=src))
            f = run(PEAK + FUSE.format(src=src, dst=dst))
            rows.append({"width": w, "seconds": f.seconds, **f.extra})
            print(f"W={w:>6}: {f.extra['ops_before']:>6} -> {f.extra['ops_after']} ops in {f.seconds:.2f} s "
                  f"({f.seconds / w * 1e6:.0f} us per channel)", flush=True)
    if len(rows) > 1:
        k = slope([r["width"] for r in rows], [r["seconds"] for r in rows])
        print(f"time ~ width^{k:.2f} (1 is linear)")
    return rows


if __name__ == "__main__":
    main()
