"""Constants the passes read and the new ones they write: one abstraction for both.

A weight an op reads is stored one of three ways in a TFLite file: a constant
tensor (float32, or integer with quantization parameters, or float16 in a
model whose activations are float16), or a float16 constant behind a
``DEQUANTIZE`` that turns it into float32 at run time (how TF's converter
stores float16-quantized weights). :func:`weight_of` reads any of them as a
:class:`Weight`; :class:`WeightStore` writes a rewrite's new constants *the
way the old ones were stored*, under the user's float16 policy, and places
their ``DEQUANTIZE`` ops so the operator list stays topologically sorted.

New constants always get new buffers: an old buffer may be shared by ops the
rewrite does not touch, and is pruned when nothing reads it any more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..folding import round_once
from ..graph import Model, Operator, Subgraph, Tensor
from ..schema import BuiltinOperator as Op
from ..schema import TensorType

_F16, _F32 = np.dtype(np.float16), np.dtype(np.float32)
from .rebuild import clone_op


@dataclass(eq=False)
class Weight:
    """A constant an op reads.

    ``tensor`` is what the op reads; ``stored`` is the constant in the file
    (``tensor`` itself, or the float16 input of ``dequantize``).
    """

    tensor: Tensor
    stored: Tensor
    dequantize: Operator | None = None
    _raw: np.ndarray | None = field(default=None, repr=False)

    @property
    def raw(self) -> np.ndarray:
        """The stored values, zero-copy, in the stored dtype."""
        if self._raw is None:
            self._raw = self.stored.value()
        return self._raw

    def float64(self) -> np.ndarray:
        return np.asarray(self.raw, np.float64)

    @property
    def behind_dequantize(self) -> bool:
        return self.dequantize is not None

    @property
    def storage(self) -> tuple[int, bool]:
        """(stored tensor type, behind a DEQUANTIZE): two weights stored alike agree."""
        return self.stored.dtype, self.dequantize is not None


def weight_of(sg: Subgraph, t: Tensor | None) -> Weight | str:
    """``t`` as a :class:`Weight`, or why it is not a constant we can read."""
    if t is None:
        return "is absent"
    if t.sparsity is not None:
        return f"{t.name!r} is sparse"
    if t.is_constant:
        v = t.value()
        if v is None:
            return f"constant {t.name!r} has no readable value"
        return Weight(t, t, None, v)
    p = sg.producer(t)
    if p is None or p.code != Op.DEQUANTIZE:
        return f"{t.name!r} is not a constant"
    src = p.inputs[0] if len(p.inputs) == 1 else None
    if (src is None or not src.is_constant or src.dtype != TensorType.FLOAT16 or src.is_quantized
            or src.sparsity is not None or t.dtype != TensorType.FLOAT32 or src.value() is None):
        what = "constant" if src is not None and src.is_constant else "tensor"
        return f"{t.name!r} is a DEQUANTIZE of a {what} that is not plain float16"
    return Weight(t, src, p)


def float_weight_of(sg: Subgraph, t: Tensor | None) -> Weight | str:
    """A float32 weight (a FLOAT32 constant, or float16 behind DEQUANTIZE), or why not."""
    if t is not None and t.is_quantized:
        return f"{t.name!r} is quantized"
    w = weight_of(sg, t)
    if isinstance(w, str):
        return w
    if w.dequantize is None and w.stored.dtype != TensorType.FLOAT32:
        return f"constant {t.name!r} is not float32"
    return w


def scalar_of(sg: Subgraph, t: Tensor | None) -> float | None:
    """The value of ``t`` when it is a float constant of one element (float32,
    or float16 behind DEQUANTIZE), else None. Asked of every operand of every
    elementwise op by the activation passes: the shape is looked at first."""
    if t is None or math.prod(t.shape) != 1:
        return None
    w = float_weight_of(sg, t)
    return float(w.float64().reshape(-1)[0]) if isinstance(w, Weight) and w.raw.size == 1 else None


def is_constant_operand(sg: Subgraph, t: Tensor | None) -> bool:
    """A constant (any type), or a float16 constant behind DEQUANTIZE."""
    return t is not None and (t.is_constant or isinstance(float_weight_of(sg, t), Weight))


# ------------------------------------------------------------------- writing


class WeightStore:
    """Writes the new constants of one rewrite, then applies the rewrite.

    A constant stored as float32 (or integers) becomes a new such constant.
    A float16 weight behind DEQUANTIZE becomes a new float16 constant behind a
    DEQUANTIZE, so the model keeps its size, unless ``fp16_weights`` is
    "float32" (the user asked for the larger, exactly folded file). Folded
    float16 values are re-rounded with "keep" (counted, so the pipeline
    verifies on the float16 grid) and refused unless exact with "exact";
    values that are only moved (a merge) are never rounded.

    ``pattern`` is the set of ops the rewrite replaces. A DEQUANTIZE only they
    read is private to the rewrite: the new DEQUANTIZE takes its slot (it
    precedes the pattern, so the list stays sorted) and, for a fold of one
    weight, its output tensor too; one that others read stays for them, and
    the new DEQUANTIZE goes just before the new op.
    """

    def __init__(self, model: Model, sg: Subgraph, ctx, pattern: list[Operator]):
        self.model, self.sg, self.ctx = model, sg, ctx
        self.pattern = set(pattern)
        self.fp16_as_float32 = ctx.options.fp16_weights == "float32"
        self.fp16_reround = ctx.options.fp16_weights == "keep"
        self._slot: list[tuple[list[Operator], Operator]] = []  # (private old DEQUANTIZEs, new one)
        self._before: list[Operator] = []
        self._drop: list[Operator] = []
        self._claimed: set[Operator] = set()  # old DEQUANTIZEs an earlier add already replaces or drops

    def storage_dtype(self, like: Weight | None, ndim: int = 4) -> np.dtype:
        if like is not None:
            if like.dequantize is not None:
                if self.fp16_as_float32:
                    return _F32
                # A new vector of a float16 weight that several ops share (one
                # bias for 32 branches, say): each reader gets its own, and a
                # float32 constant is smaller than a float16 one behind a
                # DEQUANTIZE op of its own.
                if ndim <= 1 and self.sg.consumer_count(like.tensor) > 1:
                    return _F32
                return _F16
            if like.stored.dtype == TensorType.FLOAT16:
                return _F16  # a float16-activation model: float16 constants, read directly
        return _F32

    def round(self, values: np.ndarray, like: Weight | None, what: str) -> np.ndarray:
        """Folded ``values`` (float64) rounded once for storage where ``like``
        was stored; FoldError when not finite, too large, or (float16 without
        re-rounding allowed) not exactly representable."""
        dt = self.storage_dtype(like, np.ndim(values))
        if dt is _F32:
            return round_once(values, dt, what)
        out = round_once(values, dt, what, exact=not self.fp16_reround)
        if (out.astype(np.float64) != values).any():
            self.ctx.fp16_rerounded += 1
        return out

    def add(self, values: np.ndarray, like: Weight | list[Weight] | None, name: str,
            quantization=None, dtype: int | None = None) -> Tensor:
        """A tensor the new op reads for ``values`` (already in the storage
        dtype), stored like ``like`` (one weight, or the weights a merge
        gathers). ``dtype`` names the tensor type when ``like`` is None."""
        sg, model = self.sg, self.model
        if isinstance(like, Weight) and like.dequantize is None:  # the common case: a constant like the old one
            dt = like.stored.dtype if dtype is None else dtype
            return model.new_constant(sg, name, np.asarray(values, np.float32) if dt == TensorType.FLOAT32
                                      else np.asarray(values), dt, quantization)
        likes = like if isinstance(like, list) else [like] if like is not None else []
        behind = [w for w in likes if w.behind_dequantize]
        private = self._private(behind)
        if behind and not self.fp16_as_float32 and np.asarray(values).dtype == np.float16:
            src = model.new_constant(sg, f"{name}_fp16", np.asarray(values, np.float16), TensorType.FLOAT16)
            first = behind[0]
            if len(likes) == 1 and private and list(first.tensor.shape) == list(values.shape):
                out = first.tensor  # the fold of one weight: its DEQUANTIZE is replaced in place
            else:
                out = sg.add_tensor(Tensor(name=name, shape=list(values.shape), dtype=TensorType.FLOAT32))
            deq = clone_op(first.dequantize, inputs=[src], outputs=[out])
            if private:
                self._slot.append((private, deq))
            else:
                self._before.append(deq)
            self._claimed.update(private)
            return out
        self._drop.extend(private)  # stored as float32 now: nothing reads them any more
        self._claimed.update(private)
        if dtype is None:
            dtype = likes[0].stored.dtype if likes and not likes[0].behind_dequantize else TensorType.FLOAT32
        arr = np.asarray(values, np.float32) if dtype == TensorType.FLOAT32 else np.asarray(values)
        return model.new_constant(sg, name, arr, dtype, quantization)

    def commit(self, new_ops: Operator | list[Operator], in_place: list[tuple[Operator, Operator]] = ()) -> None:
        """Replace the pattern by ``new_ops``, DEQUANTIZE ops placed as the
        class docstring says. ``in_place`` pairs ``(old op, new op)`` of the
        pattern swap one op for another in its own slot (linear: no list
        insertion), when no new DEQUANTIZE must come before them."""
        sg = self.sg
        news = [new_ops] if isinstance(new_ops, Operator) else list(new_ops)
        for olds, deq in self._slot:
            sg.replace(olds, deq)
        if self._before and in_place:  # a DEQUANTIZE they read must come first: all in one slot
            news = [new for _, new in in_place] + news
            in_place = ()
        for old, new in in_place:
            sg.replace([old], new)
        sg.replace(self.pattern - {old for old, _ in in_place}, self._before + news)
        for d in dict.fromkeys(self._drop):
            if sg.contains(d):
                sg.remove_operator(d)

    def _private(self, weights: list[Weight]) -> list[Operator]:
        """The distinct DEQUANTIZE ops of ``weights`` that only the pattern
        reads and no one outside the graph observes."""
        found: list[Operator] = []
        # Each DEQUANTIZE once: 960 weights of a split depthwise conv may
        # share one, read by all 960 of its convs (asking per weight was quadratic).
        for d in dict.fromkeys(w.dequantize for w in weights):
            out = d.outputs[0]
            if d not in self._claimed and not self.model.is_observed(self.sg, out) \
                    and all(u in self.pattern for u in self.sg.consumers(out)):
                found.append(d)
        return found
