"""Structural checks on a parsed model, run before any byte reaches the
TFLite interpreter (a C++ runtime that trusts the file it is given).

The reader already range-checks every index it resolves. Here we check what
only makes sense on the whole graph: constants whose bytes do not match their
shape, tensors written twice, subgraph indices in control-flow options, and so
on. A failure is a :class:`BadModelError` naming the first problem found.
"""

from __future__ import annotations

import functools
import itertools
import math

from .errors import BadModelError
from .graph import Model, Operator
from .schema import NUMPY_DTYPES, TensorType, fb, type_name

#: Options fields that name a subgraph (WHILE, IF, CALL_ONCE, CALL, StableHLO ...).
_SUBGRAPH_FIELDS = ("condSubgraphIndex", "bodySubgraphIndex", "thenSubgraphIndex",
                    "elseSubgraphIndex", "initSubgraphIndex", "subgraph", "decompositionSubgraphIndex",
                    "comparatorSubgraphIndex", "branchSubgraphIndices", "updateComputationSubgraphIndex")
_MAX_RANK = 16
#: TFLite addresses tensors with 32-bit element counts in many kernels.
_MAX_ELEMENTS = 1 << 31


def validate(model: Model, label: str = "<model>") -> None:
    def bad(msg: str) -> BadModelError:
        return BadModelError(f"{label}: {msg}")

    n_sg = len(model.subgraphs)
    calls: dict[int, set[int]] = {}
    for si, sg in enumerate(model.subgraphs):
        where = f"subgraph {si}"
        # Each check of this loop has its column form in _tensors_look_right
        # (a check added here goes there too); the loop only names the problem.
        for t in () if _tensors_look_right(sg.tensors) else sg.tensors:
            shape = t.shape
            if shape:
                if len(shape) > _MAX_RANK:
                    raise bad(f"{where}: tensor {t.name!r} has rank {len(shape)}")
                if min(shape) < 0:
                    raise bad(f"{where}: tensor {t.name!r} has a negative dimension {shape}")
            n = math.prod(shape)  # exact: Python integers do not overflow
            if n > _MAX_ELEMENTS:
                raise bad(f"{where}: tensor {t.name!r} has an impossible shape {shape}")
            buf = t.buffer
            data = buf.data if buf is not None else None
            if data is not None and data.nbytes and t.sparsity is None and t.dtype in NUMPY_DTYPES:
                want = n * NUMPY_DTYPES[t.dtype].itemsize
                if data.nbytes != want:
                    raise bad(f"{where}: constant {t.name!r} ({type_name(t.dtype)}{t.shape}) "
                              f"needs {want} bytes but its buffer has {data.nbytes}")
            if t.dtype not in _KNOWN_TYPES:
                raise bad(f"{where}: tensor {t.name!r} has unknown type {t.dtype}")
        written: set = set()
        calls[si] = set()
        for oi, op in enumerate(sg.operators):
            for t in op.outputs:
                if t is None:
                    continue
                if t in written:
                    raise bad(f"{where}: tensor {t.name!r} is written by two operators")
                if t.is_constant:
                    raise bad(f"{where}: operator {oi} ({op.type_name}) writes constant {t.name!r}")
                written.add(t)
            if _may_call(op):
                calls[si].update(_subgraph_refs(op, n_sg,
                                                lambda msg: bad(f"{where}: operator {oi} ({op.type_name}) {msg}")))
    cycle = _find_cycle(calls)
    if cycle:
        raise bad("control flow calls subgraphs in a cycle (" + " -> ".join(map(str, cycle)) + ")")


def _tensors_look_right(tensors) -> bool:
    """Every tensor passes the checks of :func:`validate`'s tensor loop,
    asked a column at a time (a big model has hundreds of thousands of
    tensors); when one does not, the loop runs to name the first that fails."""
    shapes = [t.shape for t in tensors]
    if max(map(len, shapes), default=0) > _MAX_RANK:
        return False
    if min(itertools.chain.from_iterable(shapes), default=0) < 0:
        return False
    sizes = list(map(math.prod, shapes))
    if max(sizes, default=0) > _MAX_ELEMENTS or not _KNOWN_TYPES.issuperset([t.dtype for t in tensors]):
        return False
    for t, n in zip(tensors, sizes):
        buf = t.buffer
        if buf is not None and buf.data is not None and buf.data.nbytes and t.sparsity is None:
            dt = NUMPY_DTYPES.get(t.dtype)
            if dt is not None and buf.data.nbytes != n * dt.itemsize:
                return False
    return True


_KNOWN_TYPES = frozenset(v for k, v in vars(TensorType).items() if not k.startswith("_") and isinstance(v, int))


@functools.lru_cache(maxsize=None)
def _names_subgraphs(union: str, options_type: int) -> bool:
    """Whether options of this union type have a field that names a subgraph
    (so that only control-flow ops' options are decoded to check them)."""
    creator = getattr(fb, f"{union}Creator")
    names = {v: k for k, v in vars(getattr(fb, union)).items() if isinstance(v, int) and not k.startswith("_")}
    cls = getattr(fb, f"{names.get(options_type, '')}T", None)
    if cls is None:
        return creator is not None  # unknown to this schema: decode and look
    return any(hasattr(cls(), f) for f in _SUBGRAPH_FIELDS)


def _may_call(op: Operator) -> bool:
    """Whether ``op``'s options are of a type that can name a subgraph
    (asked of every op: answered from the two type codes alone)."""
    return bool(op.options_type and _names_subgraphs("BuiltinOptions", op.options_type)
                or op.options2_type and _names_subgraphs("BuiltinOptions2", op.options2_type))


def _subgraph_refs(op: Operator, n_sg: int, bad) -> set[int]:
    """Subgraphs an operator calls (WHILE cond/body, IF branches, ...)."""
    refs: set[int] = set()
    for union, kind, get in (("BuiltinOptions", op.options_type, lambda: op.options),
                             ("BuiltinOptions2", op.options2_type, lambda: op.options2)):
        if not kind or not _names_subgraphs(union, kind):
            continue
        opts = get()
        if opts is None:
            continue
        for name in _SUBGRAPH_FIELDS:
            v = getattr(opts, name, None)
            if v is None:
                continue
            values = [int(x) for x in v] if hasattr(v, "__len__") else [int(v)]
            for x in values:
                if not 0 <= x < n_sg:
                    raise bad(f"names subgraph {x}, but the model has {n_sg}")
            refs.update(values)
    return refs


def _find_cycle(calls: dict[int, set[int]]) -> list[int] | None:
    """A call cycle among subgraphs (the interpreter would recurse forever)."""
    state: dict[int, int] = {}  # 1 = on the stack, 2 = done

    for root in calls:
        if state.get(root):
            continue
        stack = [(root, iter(sorted(calls.get(root, ()))))]
        path = [root]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, iter(sorted(calls.get(nxt, ())))))
                path.append(nxt)
    return None


def unsorted_subgraphs(model: Model) -> list[int]:
    """Indices of subgraphs where an operator reads a tensor that a later
    operator writes. Passes leave such subgraphs alone."""
    unsorted = []
    for si, sg in enumerate(model.subgraphs):
        produced_later = {t for op in sg.operators for t in op.outputs if t is not None}
        for op in sg.operators:
            if any(t in produced_later for t in op.inputs if t is not None):
                unsorted.append(si)
                break
            produced_later.difference_update(op.outputs)
    return unsorted
