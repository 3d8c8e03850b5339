"""Synthetic models for scale tests: N repeated blocks with S MB of weights.

Each block is the naive-converter form of ``Conv2d -> BatchNorm2d -> ReLU``:
``CONV_2D -> MUL -> ADD -> RELU`` with per-channel constants, so the fuser has
exactly one rewrite per block to make (4 ops -> 1). Channel count is chosen so
that the conv filters add up to ``total_mb``; spatial size stays tiny so the
interpreter can verify even the largest model in seconds.

    python -m benchmarks.synth --blocks 10 --mb 200 out.tflite
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.graph import Model


def channels_for(blocks: int, total_mb: float, kernel: int = 3) -> int:
    per_block = total_mb * 1e6 / blocks
    return max(1, int(math.sqrt(per_block / (kernel * kernel * 4))))


def synthetic_model(blocks: int, total_mb: float, kernel: int = 3, spatial: int = 4, seed: int = 0,
                    split: bool = False, channels: int | None = None) -> Model:
    """``blocks`` conv-bn-relu blocks whose filters total about ``total_mb`` MB.

    ``channels`` overrides the channel count (and so the weight total).
    With ``split=True`` each block is a depthwise conv lowered to
    SPLIT -> C x CONV_2D -> CONCATENATION instead (the filters are then tiny;
    ``total_mb`` is ignored and the block count drives the op count).
    """
    rng = np.random.default_rng(seed)
    c = channels or (8 if split else channels_for(blocks, total_mb, kernel))
    b = ModelBuilder(description=f"synthetic: {blocks} blocks, C={c}")
    x = b.input("x", [1, spatial, spatial, c])
    std = 1.0 / math.sqrt(kernel * kernel * c)
    for i in range(blocks):
        if split:
            pieces = b.split(x, c)
            outs = [b.conv2d(p, rng.standard_normal((1, kernel, kernel, 1), np.float32),
                             rng.standard_normal(1).astype(np.float32)) for p in pieces]
            y = b.concat(outs)
        else:
            w = rng.standard_normal((c, kernel, kernel, c), dtype=np.float32)
            w *= std
            y = b.conv2d(x, w, np.zeros(c, np.float32), name=f"block{i}/conv")
        y = b.mul(y, rng.uniform(0.5, 1.5, c).astype(np.float32), name=f"block{i}/bn_mul")
        y = b.add(y, rng.uniform(-0.1, 0.1, c).astype(np.float32), name=f"block{i}/bn_add")
        x = b.relu(y, name=f"block{i}/relu")
    b.output(x)
    return b.build()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output")
    p.add_argument("--blocks", type=int, default=10)
    p.add_argument("--mb", type=float, default=10.0)
    p.add_argument("--split", action="store_true", help="depthwise convs in split form")
    args = p.parse_args(argv)
    from tflite_fuser import save

    model = synthetic_model(args.blocks, args.mb, split=args.split)
    save(model, args.output)
    print(f"{args.output}: {model.num_operators()} ops")


if __name__ == "__main__":
    main()
