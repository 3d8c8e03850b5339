"""The run report: one dict (the JSON written by ``--report``, described by
``schemas/report.schema.json``) and its human rendering."""

from __future__ import annotations

from typing import Any

from .graph import Model

REPORT_VERSION = 1


def model_stats(model: Model, nbytes: int, path: str | None) -> dict[str, Any]:
    return {
        "path": path,
        "bytes": int(nbytes),
        "subgraphs": len(model.subgraphs),
        "operators": model.num_operators(),
        "tensors": model.num_tensors(),
        "buffers": len(model.buffers),
        "op_counts": model.op_counts(),
    }


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def render(report: dict[str, Any], verbose: bool = False) -> str:
    """A summary a person can read at a glance."""
    a, b = report["input"], report["output"]
    lines = [f"tflite-fuse {report['tool_version']}: {a['path'] or '<bytes>'} -> {b['path'] or '<bytes>'}"]
    names = list(dict.fromkeys(list(a["op_counts"]) + list(b["op_counts"])))
    width = max([len(n) for n in names] + [8])
    lines.append(f"  {'operator':<{width}} {'before':>7} {'after':>7}")
    for n in names:
        x, y = a["op_counts"].get(n, 0), b["op_counts"].get(n, 0)
        mark = "" if x == y else f"  ({y - x:+d})"
        lines.append(f"  {n:<{width}} {x:>7} {y:>7}{mark}")
    lines.append(f"  {'total ops':<{width}} {a['operators']:>7} {b['operators']:>7}")
    lines.append(f"  {'tensors':<{width}} {a['tensors']:>7} {b['tensors']:>7}")
    lines.append(f"  {'size':<{width}} {_size(a['bytes']):>7} {_size(b['bytes']):>7}")
    if report["passes"]:
        lines.append("  passes: " + ", ".join(f"{p['name']} {p['rewrites']}" for p in report["passes"]))
    else:
        lines.append("  passes: none (verified round trip)")
    if report["skipped"]:
        if verbose:
            lines.append(f"  left alone ({len(report['skipped'])}):")
            lines.extend(f"    {s['pass']}: {s['op']}: {s['reason']}" for s in report["skipped"])
        else:
            lines.append(f"  left alone: {len(report['skipped'])} candidate(s) (-v says why)")
    for note in report.get("notes", []):
        lines.append(f"  note: {note}")
    v = report["verification"]
    if v is None:
        lines.append("  verification: skipped (--no-verify)")
    else:
        status = "PASS" if v["ok"] else "FAIL"
        lines.append(f"  verification: {status} on {v['runs']} run(s), {len(v['outputs'])} output(s), "
                     f"{v['kernels']} kernels: max abs error {v['max_abs_error']:.3g}, "
                     f"max rel error {v['max_rel_error']:.3g} (atol {v['atol']:g}, rtol {v['rtol']:g})")
        if verbose or not v["ok"]:
            for o in v["outputs"]:
                sig = f"{o['signature']}/" if o["signature"] else ""
                err = ("not comparable" if o["max_abs_error"] is None
                       else f"abs {o['max_abs_error']:.3g} rel {o['max_rel_error']:.3g} "
                            f"on values up to {o['max_abs_reference']:.3g}")
                overflow = (f"; the original itself gives {o['nonfinite_reference']} NaN/inf values"
                            if o["nonfinite_reference"] else "")
                lines.append(f"    {'ok ' if o['ok'] else 'BAD'} {sig}{o['name']} {o['dtype']}{o['shape']}: "
                             f"{err} ({o['tolerance']}){overflow}")
        if v["message"]:
            lines.append(f"  {v['message']}")
    if report["written"]:
        lines.append(f"  wrote {b['path']}" + (f" (backup {report['backup']})" if report.get("backup") else ""))
    elif b["path"]:
        lines.append(f"  nothing written to {b['path']}")
    lines.append(f"  time: {report['seconds']['total']:.2f} s "
                 f"(read {report['seconds']['read']:.2f}, passes {report['seconds']['passes']:.2f}, "
                 f"write {report['seconds']['write']:.2f}, verify {report['seconds']['verify']:.2f})")
    return "\n".join(lines)
