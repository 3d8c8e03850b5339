"""Random TFLite graphs for property-based tests of the passes.

A hypothesis strategy that draws a small NHWC network op by op with
:class:`~tflite_fuser.builder.ModelBuilder`: convolutions of every kind with
random kernels, strides, paddings, dilations and fused activations; constant
MUL/ADD/SUB/DIV with per-channel, scalar and (unfoldable) spatial constants,
including zeros, negatives, tiny and huge magnitudes; activations written as
ops and as MAXIMUM/MINIMUM; zero PADs before VALID convs; channel splits into
per-channel or per-group convs concatenated back (sometimes out of order, or
with one branch different, which must be refused); fully connected heads;
residual ADDs of two activations; and random extra consumers or graph outputs
on intermediates. Every pattern the passes know appears, next to near misses.

The generator tracks a bound on every tensor's magnitude and never lets a value
approach float32's maximum: TFLite's float kernels saturate at +-FLT_MAX, and
a fold legitimately moves where an overflow saturates (x*c*w vs x*(c*w)). Such
a model computes garbage either way and says nothing about fusion.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from tflite_fuser.builder import ModelBuilder, conv_output_size

ACTS = [None, None, "RELU", "RELU6"]
MAGNITUDES = [1.0, 1.0, 1.0, 1e-3, 1e3, 1e-30, 1e30]
LIMIT = 1e34  # largest magnitude any intermediate may reach


@st.composite
def random_model(draw) -> tuple[bytes, list[str]]:
    """Returns (model bytes, list of step names for the failure report)."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    b = ModelBuilder(description="hypothesis graph")
    h = draw(st.integers(3, 9))
    w = draw(st.integers(3, 9))
    c = draw(st.integers(1, 6))
    x = b.input("x", [1, h, w, c])
    pool = [x]  # 4-D float tensors available as inputs
    bound = {x: 1.0}  # upper bound of |value| per tensor
    steps: list[str] = []
    outputs = []

    def weights(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def const_for(t, kind, op="mul"):
        ch = t.shape[-1]
        mag = MAGNITUDES[int(rng.integers(len(MAGNITUDES)))]
        grows = {"mul": mag * 2, "div": 2 / mag if mag else 1.0, "add": 1.0, "sub": 1.0}[op]
        if bound.get(t, 1.0) * max(grows, 1.0) + 2 * mag > LIMIT:
            mag = 1.0
        if kind == "per-channel":
            v = rng.uniform(-2, 2, ch)
        elif kind == "scalar":
            v = rng.uniform(-2, 2, 1)
        elif kind == "nhwc-channel":
            v = rng.uniform(-2, 2, (1, 1, 1, ch))
        elif kind == "zeros":
            v = np.zeros(ch)
        else:  # spatial: must not be folded
            v = rng.uniform(-2, 2, (1, t.shape[1], t.shape[2], 1))
        return (v * mag).astype(np.float32)

    n_steps = draw(st.integers(1, 7))
    for _ in range(n_steps):
        src = pool[draw(st.integers(0, len(pool) - 1))] if draw(st.booleans()) else pool[-1]
        n, hh, ww, cc = src.shape
        kind = draw(st.sampled_from(["conv", "conv", "depthwise", "affine", "affine", "act", "minmax",
                                     "pad_conv", "split", "residual", "transpose_conv"]))
        steps.append(kind)
        if kind in ("conv", "depthwise", "pad_conv"):
            k = draw(st.integers(1, 3))
            s = draw(st.integers(1, 2))
            d = draw(st.integers(1, 2))
            pad = draw(st.sampled_from(["SAME", "VALID"]))
            eff = (k - 1) * d + 1
            if kind == "pad_conv":
                total = max((conv_output_size(hh, k, s, d, "SAME") - 1) * s + eff - hh, 0)
                before = total // 2 if draw(st.booleans()) else total - total // 2
                totw = max((conv_output_size(ww, k, s, d, "SAME") - 1) * s + eff - ww, 0)
                padded = b.pad(src, [[0, 0], [before, total - before], [totw // 2, totw - totw // 2], [0, 0]])
                bound[padded] = bound[src]
                src = padded
                n, hh, ww, cc = src.shape
                pad = "VALID"
            if pad == "VALID" and (hh < eff or ww < eff):
                pad = "SAME"
            act = draw(st.sampled_from(ACTS))
            if kind == "depthwise":
                m = draw(st.integers(1, 2))
                wt, bs = weights(1, k, k, cc * m), weights(cc * m)
                y = b.depthwise_conv2d(src, wt, bs, s, pad, d, m, act)
                grow = float(np.abs(wt).sum(axis=(0, 1, 2)).max())
            else:
                cout = draw(st.integers(1, 6))
                wt, bs = weights(cout, k, k, cc, scale=0.5), weights(cout)
                y = b.conv2d(src, wt, bs, s, pad, d, act)
                grow = float(np.abs(wt).sum(axis=(1, 2, 3)).max())
            bound[y] = bound[src] * grow + float(np.abs(bs).max())
            pool.append(y)
        elif kind == "transpose_conv":
            cout = draw(st.integers(1, 4))
            s = draw(st.integers(1, 2))
            out_shape = [1, hh * s, ww * s, cout]
            wt, bs = weights(cout, 2, 2, cc), weights(cout)
            y = b.transpose_conv(src, wt, out_shape, b=bs, stride=s)
            bound[y] = bound[src] * float(np.abs(wt).sum()) + float(np.abs(bs).max())
            pool.append(y)
        elif kind == "affine":
            op = draw(st.sampled_from(["mul", "add", "sub", "div"]))
            ckind = draw(st.sampled_from(["per-channel", "per-channel", "scalar", "nhwc-channel", "spatial",
                                          "zeros"]))
            cval = const_for(src, ckind, op)
            if op == "div":
                cval = np.where(np.abs(cval) < 1e-30, np.float32(1.0), cval).astype(np.float32)
                if bound[src] / float(np.abs(cval).min()) > LIMIT:
                    cval = np.ones_like(cval)
            y = getattr(b, op)(src, cval, activation=draw(st.sampled_from(ACTS)))
            mx = float(np.abs(cval).max())
            if op == "mul":
                bound[y] = bound[src] * mx
            elif op == "div":
                bound[y] = bound[src] / float(np.abs(cval).min())
            else:
                bound[y] = bound[src] + mx
            steps[-1] = f"{op}({ckind})"
            pool.append(y)
        elif kind == "act":
            fn = draw(st.sampled_from(["relu", "relu6", "relu_n1_to_1"]))
            steps[-1] = fn
            y = getattr(b, fn)(src)
            bound[y] = bound[src]
            pool.append(y)
        elif kind == "minmax":
            form = draw(st.sampled_from(["max0", "min6max0", "max0min6", "n1to1", "max-other"]))
            steps[-1] = form
            if form == "max0":
                y = b.maximum(src, np.float32(0))
            elif form == "min6max0":
                y = b.minimum(b.maximum(src, np.float32(0)), np.float32(6))
            elif form == "max0min6":
                y = b.maximum(b.minimum(src, np.float32(6)), np.float32(0))
            elif form == "n1to1":
                y = b.minimum(b.maximum(src, np.float32(-1)), np.float32(1))
            else:  # a clamp no activation expresses
                y = b.maximum(src, np.float32(0.5))
            bound[y] = bound[src] + 6
            pool.append(y)
        elif kind == "split":
            groups = cc if draw(st.booleans()) else max(1, cc // 2)
            if cc % groups:
                groups = cc
            piece_c = cc // groups
            m = draw(st.integers(1, 2))
            k = draw(st.integers(1, 3))
            s = draw(st.integers(1, 2))
            pad = draw(st.sampled_from(["SAME", "VALID"])) if hh >= k and ww >= k else "SAME"
            act = draw(st.sampled_from(ACTS))
            pieces = b.split(src, groups)
            outs = []
            grow = 0.0
            for p in pieces:
                wt, bs = weights(m * (1 if piece_c == 1 else piece_c), k, k, piece_c), weights(m * (1 if piece_c == 1 else piece_c))
                outs.append(b.conv2d(p, wt, bs, s, pad, 1, act))
                grow = max(grow, bound[src] * float(np.abs(wt).sum(axis=(1, 2, 3)).max()) + float(np.abs(bs).max()))
            variant = draw(st.sampled_from(["ok", "ok", "ok", "shuffled", "odd-branch"]))
            if variant == "shuffled" and len(outs) > 1:
                outs = outs[1:] + outs[:1]
            elif variant == "odd-branch" and len(outs) > 1:
                op = b.sg.operators[-1]  # last branch conv: change its activation
                op.options.fusedActivationFunction = 3 if op.options.fusedActivationFunction != 3 else 1
            steps[-1] = f"split(groups={groups}, m={m}, {variant})"
            y = b.concat(outs)
            bound[y] = grow
            pool.append(y)
        elif kind == "residual":
            same = [t for t in pool if t.shape == src.shape and t is not src]
            if not same:
                continue
            other = same[draw(st.integers(0, len(same) - 1))]
            y = b.add(src, other, activation=draw(st.sampled_from(ACTS)))
            bound[y] = bound[src] + bound[other]
            pool.append(y)
        if draw(st.integers(0, 5)) == 0:
            outputs.append(pool[-1])  # an intermediate someone else reads
            steps.append("extra-output")
    if draw(st.booleans()):
        flat = b.reshape(pool[-1], [1, int(np.prod(pool[-1].shape))])
        units = draw(st.integers(1, 5))
        y = b.fully_connected(flat, weights(units, flat.shape[1], scale=0.1), weights(units))
        bound[y] = bound[pool[-1]] * 0.1 * flat.shape[1] * 4 + 4
        if draw(st.booleans()):
            y = b.add(b.mul(y, const_for(y, "per-channel")), const_for(y, "per-channel", "add"))
            steps.append("fc+affine")
        if draw(st.booleans()):
            y = b.relu(y)
        outputs.append(y)
    else:
        outputs.append(pool[-1])
    b.output(*dict.fromkeys(outputs))
    return b.to_bytes(), steps
