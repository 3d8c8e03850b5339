"""Everything a user can ask of a run, as three plain objects built once.

The CLI builds a :class:`FuseOptions` from its arguments and hands it to
:func:`tflite_fuser.fuse`; the pipeline gives :class:`PassOptions` to the
passes and :class:`VerifyOptions` to the verifier (in its child process). The
library's ``fuse(src, dst, runs=1, fp16_weights="keep", ...)`` keyword form
builds the same objects with :meth:`FuseOptions.from_kwargs`, so every option
has one name, one default and one place.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from . import targets
from .targets import DEFAULT_TARGET

FP16_MODES = ("keep", "exact", "float32")
KERNEL_SETS = ("builtin", "xnnpack", "micro", "gpu")

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-4
DEFAULT_RUNS = 3
DEFAULT_INPUT_RANGE = (-1.0, 1.0)
#: Default limit for one verification, generous for big models on small machines.
DEFAULT_TIMEOUT = 900.0


@dataclass(frozen=True)
class PassOptions:
    """What the passes read; every pass reads only what it needs."""

    #: float16 weights behind DEQUANTIZE. "keep": fold in float64 and store the
    #: result back as float16 (same file size; the re-rounding moves outputs by
    #: up to 2^-11 relative, so verification uses float16-grid tolerances);
    #: "exact": keep float16 but fold only where the result is exactly
    #: representable; "float32": store folded weights as float32 (larger file,
    #: no re-rounding).
    fp16_weights: str = "keep"
    #: the runtime the model is fused for (targets.py): which forms it runs,
    #: which it runs faster, which quantized merges it computes exactly
    target: str = DEFAULT_TARGET
    #: False takes grouped CONV_2D away from the target, whatever it is: not
    #: every delegate runs one (older GPU delegates stop at CONV_2D version 1;
    #: converters such as onnx2tflite split them for that reason)
    grouped_conv: bool = True

    def __post_init__(self):
        if self.fp16_weights not in FP16_MODES:
            from .errors import UsageError

            raise UsageError(f"fp16_weights must be one of {', '.join(FP16_MODES)}, not {self.fp16_weights!r}")
        self.resolved  # an unknown target name is a usage error now, not at the first match

    @functools.cached_property
    def resolved(self) -> targets.Target:
        """The target's table entry, with the user's overrides applied."""
        return targets.target(self.target, self.grouped_conv)


@dataclass(frozen=True)
class VerifyOptions:
    """How the original and the fused model are compared (see verifier.py)."""

    enabled: bool = True
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    #: measure atol in units of each output's largest magnitude
    range_atol: bool = False
    runs: int = DEFAULT_RUNS
    seed: int = 0
    #: the user's input arrays (name or SIGNATURE/NAME -> array) instead of random ones
    inputs: Mapping[str, Any] | None = None
    input_range: tuple[float, float] = DEFAULT_INPUT_RANGE
    input_shapes: Mapping[str, Sequence[int]] | None = None
    #: integer outputs may differ by this many quantization steps
    quant_steps: int = 1
    #: the kernels that verify: "builtin", "xnnpack", "micro", "gpu"; None:
    #: the target's (a CPU kernel set that cannot run the original hands over
    #: to the other one)
    kernels: str | None = None
    #: the library's old switch, the same as kernels="xnnpack"
    xnnpack: bool = False
    num_threads: int | None = None
    #: run in a child process (a crash or hang there cannot take the caller down)
    isolate: bool = True
    timeout: float | None = DEFAULT_TIMEOUT
    #: the child's address-space limit in bytes (None: none; "auto":
    #: :data:`MEMORY_FRACTION` of physical memory)
    memory_limit: int | str | None = "auto"
    #: prove every rewrite alone too (regions.py), and revert the ones that
    #: fail; False: the whole-model proof alone decides
    regions: bool = True
    #: the candidate's interface is the original's transposed (``--nhwc-io``;
    #: set by the pipeline for that proof): {"input"/"output": {name: perm}}
    io_perms: Mapping[str, Any] | None = None

    #: fields that say how to run the proof, not how to compare
    _RUN_FIELDS = ("enabled", "isolate", "timeout", "memory_limit", "regions")

    def check_kwargs(self) -> dict[str, Any]:
        """The comparison settings, as :func:`verifier.verify` takes them."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self._RUN_FIELDS}

    @property
    def memory_bytes(self) -> int | None:
        if self.memory_limit == "auto":
            return default_memory_limit()
        return self.memory_limit


#: the share of physical memory the verifier's child may address by default
MEMORY_FRACTION = 0.75


def default_memory_limit() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * MEMORY_FRACTION)
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not a POSIX system
        return None


@dataclass(frozen=True)
class FuseOptions:
    """One run: which passes, how they behave, how the result is proved and written."""

    passes: Sequence[str] | str | None = "all"
    disable: Sequence[str] = ()
    #: passes off by default to run as well
    enable: Sequence[str] = ()
    pass_options: PassOptions = field(default_factory=PassOptions)
    verify: VerifyOptions = field(default_factory=VerifyOptions)
    #: write even when verification fails (the exit code stays 1)
    force: bool = False
    #: any failed proof fails the run (exit 1, nothing written) instead of
    #: reverting the rewrites that failed and writing the rest
    strict: bool = False
    in_place: bool = False
    #: with in_place: keep the original as IN.orig (numbered if one exists)
    backup: bool = True
    #: None keeps the source's buffer form; True/False force external/inline buffers
    external_buffers: bool | None = None
    #: time original and fused model (bench.py): on the target's kernels and
    #: the other CPU kernel set, this many alternating rounds, this many threads
    bench: bool = False
    bench_rounds: int = 7
    bench_threads: int = 1
    #: a directory for Model Explorer node-data files of what the run changed (explorer.py)
    explorer: str | None = None
    #: make the NCHW inputs and outputs a PyTorch converter left NHWC (io_layout.py): changes the interface
    nhwc_io: bool = False

    #: the library's keyword names that are not field names of these classes
    ALIASES = {"verify_output": ("verify", "enabled"), "verify_timeout": ("verify", "timeout")}

    @classmethod
    def from_kwargs(cls, base: "FuseOptions | None" = None, **kwargs: Any) -> "FuseOptions":
        """``base`` (default: the defaults) with keyword overrides, each
        routed to the class whose field it names: ``runs=1`` to
        :class:`VerifyOptions`, ``fp16_weights="float32"`` to
        :class:`PassOptions`, ``force=True`` here. Unknown names raise
        ``TypeError``, as a mistyped keyword argument should."""
        base = base or cls()
        groups: dict[str, dict[str, Any]] = {"self": {}, "verify": {}, "pass_options": {}}
        own = {f.name for f in dataclasses.fields(cls)}
        verify = {f.name for f in dataclasses.fields(VerifyOptions)}
        passes = {f.name for f in dataclasses.fields(PassOptions)}
        for key, value in kwargs.items():
            if key in cls.ALIASES:
                group, name = cls.ALIASES[key]
                groups[group][name] = value
            elif key in own:
                groups["self"][key] = value
            elif key in verify:
                groups["verify"][key] = value
            elif key in passes:
                groups["pass_options"][key] = value
            else:
                raise TypeError(f"fuse() got an unexpected keyword argument {key!r}")
        out = dataclasses.replace(base, **groups["self"])
        return dataclasses.replace(out, verify=dataclasses.replace(out.verify, **groups["verify"]),
                                   pass_options=dataclasses.replace(out.pass_options, **groups["pass_options"]))
