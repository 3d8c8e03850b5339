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
    lines = [f"tflite-fuse {report['tool_version']}: {a['path'] or '<bytes>'} -> {b['path'] or '<bytes>'} "
             f"(target {report['target']['name']})"]
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
        made = [f"{p['name']} {p['rewrites']}" for p in report["passes"] if p["rewrites"]]
        idle = len(report["passes"]) - len(made)
        lines.append("  passes: " + ", ".join(made or ["nothing rewritten"])
                     + (f" ({idle} other{'s' if idle != 1 else ''} found nothing)" if idle and made
                        else f" ({idle} ran)" if idle else ""))
    else:
        lines.append("  passes: none (verified round trip)")
    if verbose and report["rewrites"]:
        lines.append(f"  rewrites ({len(report['rewrites'])}):")
        lines.extend(f"    {r['pass']}: {_where(r)}{r['what']}" for r in report["rewrites"])
    kept = [s for s in report["skipped"] if "kept for target" in s["reason"]]
    alone = [s for s in report["skipped"] if "kept for target" not in s["reason"]]
    for title, items in ((f"kept for target {report['target']['name']}", kept), ("left alone", alone)):
        if not items:
            continue
        if verbose:
            lines.append(f"  {title} ({len(items)}):")
            lines.extend(f"    {s['pass']}: {_where(s)}{s['op']}: {s['reason']}" for s in items)
        else:
            lines.append(f"  {title}: {len(items)} candidate(s) (-v says why)")
    for note in report.get("notes", []):
        lines.append(f"  note: {note}")
    v = report["verification"]
    if report["nothing_to_fuse"]:
        what = ("nothing left to fuse: every rewrite was reverted" if report.get("reverted") else
                "nothing to fuse: no pass found anything to rewrite")
        lines.append(f"  {what}" + ("" if b["path"] is None or report["written"] else f"; {a['path']} left as it is"))
    elif v is None:
        lines.append("  verification: skipped (--no-verify)")
    else:
        lines.extend(verification_lines(v, verbose))
    lines.extend(reverted_lines(report.get("reverted", [])))
    lines.extend(bench_lines(report.get("bench")))
    lines.extend(explorer_lines(report.get("explorer")))
    lines.extend(interface_lines(report.get("interface")))
    if report["written"]:
        copy = " (a byte-for-byte copy of the input)" if report["nothing_to_fuse"] else ""
        lines.append(f"  wrote {b['path']}{copy}" + (f" (backup {report['backup']})" if report.get("backup") else ""))
    elif b["path"] and not report["nothing_to_fuse"]:
        lines.append(f"  nothing written to {b['path']}")
    lines.append(f"  time: {report['seconds']['total']:.2f} s "
                 f"(read {report['seconds']['read']:.2f}, passes {report['seconds']['passes']:.2f}, "
                 f"write {report['seconds']['write']:.2f}, verify {report['seconds']['verify']:.2f})")
    return "\n".join(lines)


def _where(entry: dict[str, Any]) -> str:
    return f"subgraph {entry['subgraph']}: " if entry.get("subgraph") else ""


def verification_lines(v: dict[str, Any], verbose: bool) -> list[str]:
    """The verification verdict: the largest error, and how much of its own
    bound the closest element used (the max relative error alone misleads:
    an element near zero inflates it while atol carries it)."""
    status = "PASS" if v["ok"] else "FAIL"
    kernels = {"builtin": "built-in", "xnnpack": "XNNPACK", "micro": "TFLite Micro",
               "reference": "LiteRT reference"}.get(v["kernels"], v["kernels"])
    regions = v.get("region_summary")
    if v.get("whole_model", "ran") != "ran":
        lines = [f"  verification: {status}, verified region by region ({regions['regions'] if regions else 0} "
                 f"regions); the whole model could not be run: {v['whole_model']}"]
    else:
        floored = any(o.get("accepted_by_floor") for o in v["outputs"])
        closest = (f"beyond the fixed bound atol + rtol x |a| (atol {v['atol']:g}, rtol {v['rtol']:g}) but within "
                   f"{v['noise_floor_multiple']:g}x the model's own float noise" if floored and v["ok"] else
                   f"the closest element at {_share(v['bound_used'])} of its bound atol + rtol x |a| "
                   f"(atol {v['atol']:g}, rtol {v['rtol']:g})")
        lines = [f"  verification: {status} on {v['runs']} run(s), {len(v['outputs'])} output(s), {kernels} kernels: "
                 f"max |a-b| {v['max_abs_error']:.3g}, {closest}"]
    for o in v["outputs"]:
        if o.get("noise_floor") is not None:
            lines.append(f"    {o['name']}: max |a-b| {o['max_abs_error']:.3g}, its noise floor {o['noise_floor']:.3g} "
                         f"(the original's own output with its float constants nudged one ulp): "
                         f"{o['floor_ratio']:.2g}x, {'within' if o['ok'] else 'BEYOND'} "
                         f"{v['noise_floor_multiple']:g}x")
    if regions:
        lines.extend(region_lines(v, regions, verbose))
    if v.get("gpu") and v["gpu"].get("available"):
        lines.extend(gpu_lines(v["gpu"], verbose))
    if v.get("kernels_note"):
        lines.append(f"    ({v['kernels_note']}; verified with the {kernels} kernels instead)")
    for note in v.get("notes", []):
        lines.append(f"    note: {note}")
    micro = v.get("micro")
    if micro:
        before = micro["arena_bytes_before"]
        lines.append(f"    TFLite Micro arena: {'does not load' if before is None else _size(before)} before, "
                     f"{_size(micro['arena_bytes_after']) if micro['arena_bytes_after'] else '?'} after")
    if verbose or not v["ok"]:
        for o in v["outputs"]:
            sig = f"{o['signature']}/" if o["signature"] else ""
            if o["max_abs_error"] is None:
                err = "not comparable"
            else:
                err = (f"max |a-b| {o['max_abs_error']:.3g} on values up to {o['max_abs_reference']:.3g}; "
                       f"closest element |a-b| {o['worst_abs_error']:.3g} vs its bound {o['worst_bound']:.3g} "
                       f"(a = {o['worst_reference']:.3g})")
            overflow = (f"; the original itself gives {o['nonfinite_reference']} NaN/inf values"
                        if o["nonfinite_reference"] else "")
            lines.append(f"    {'ok ' if o['ok'] else 'BAD'} {sig}{o['name']} {o['dtype']}{o['shape']}: "
                         f"{err} ({o['tolerance']}){overflow}")
    if v["message"]:
        lines.append(f"  {v['message']}")
    return lines


def region_lines(v: dict[str, Any], s: dict[str, Any], verbose: bool) -> list[str]:
    """What the region proofs found: one line, and each failing region."""
    why = "the whole model does not run" if s["why_random"] == v.get("whole_model") else s["why_random"]
    inputs = {"real": "on the original's own values at their edges",
              "random": f"on random values at their edges ({why})" if why
              else "on random values at their edges"}.get(s["inputs"], s["inputs"])
    alone = f"; {s['unprovable']} proved by the whole model only" if s.get("unprovable") else ""
    verdict = (f"all within their tolerance (the closest at {_share(s['bound_used'])} of its bound)" if not s["failed"]
               else f"{s['failed']} FAILED")
    rewrites = sum(len(r.get("rewrites", [])) for r in v["regions"])
    lines = [f"    regions: {s['regions']} ({rewrites} rewrites) proved alone {inputs}, {verdict}{alone} "
             f"({s['seconds']:.2f} s)"]
    for r in v["regions"]:
        if verbose or not r["ok"]:
            what = "; ".join(r.get("rewrites", [])) or f"region {r['index']}"
            err = f"max |a-b| {r['max_abs_error']:.3g}" if r["max_abs_error"] is not None else "not compared"
            floor = f", {r['floor_ratio']:.2g}x its noise floor" if r.get("floor_ratio") is not None else ""
            lines.append(f"      {'ok ' if r['ok'] else 'BAD'} {what}: {err}{floor} ({r['tolerance']})"
                         + (f": {r['message']}" if r["message"] and not r["ok"] else ""))
    return lines


def coverage_text(c: dict[str, Any]) -> str:
    """Where a model's ops run under the GPU accelerator, in a few words."""
    if c["error"]:
        return f"does not compile ({c['error']})"
    if c["all_on_gpu"]:
        return f"all {c['gpu_ops']} ops on the GPU"
    refused = ", ".join(sorted({r["op"] for r in c["refused"]})) or "?"
    if c["gpu_ops"] is None:
        return f"not all on the GPU (refused: {refused})"
    return f"{c['gpu_ops']} ops on the GPU, {c['cpu_ops']} on the CPU (refused: {refused})"


def gpu_lines(g: dict[str, Any], verbose: bool) -> list[str]:
    lines = [f"    GPU accelerator ({g['device'] or 'device unknown'}): before {coverage_text(g['coverage_before'])}; "
             f"after {coverage_text(g['coverage_after'])}"]
    for what, key in (("fused on the GPU vs original on the CPU", "fused_vs_cpu"),
                      ("original on the GPU vs original on the CPU", "original_vs_cpu"),
                      ("fused vs original, both on the GPU", "fused_vs_original_on_gpu"),
                      ("fused on the GPU vs fused on the CPU", "fused_vs_fused_on_cpu")):
        c = g.get(key)
        if c:
            lines.append(f"      {what}: {'ok ' if c['ok'] else 'BAD'} max |a-b| {c['max_abs_error']:.3g} on values "
                         f"up to {c['max_abs_reference']:.3g}" + (f" ({c['message']})" if c["message"] else ""))
    if g.get("verdict"):
        lines.append(f"      {g['verdict']}")
    if verbose:
        for side in ("coverage_before", "coverage_after"):
            for r in g[side]["refused"]:
                lines.append(f"      {side.split('_')[1]}: the GPU refuses {r['op']}: {r['reason']}")
            for w in g[side].get("warnings", []):
                lines.append(f"      {side.split('_')[1]}: the delegate warns: {w}")
    return lines


def reverted_lines(reverted: list[dict[str, Any]]) -> list[str]:
    if not reverted:
        return []
    lines = [f"  reverted {len(reverted)} rewrite(s) whose proof failed (the rest are kept):"]
    lines.extend(f"    {r['pass']}: {_where(r)}{r['what']}: {r['error']}" for r in reverted)
    return lines


def interface_lines(interface: dict | None) -> list[str]:
    if interface is None:
        return []
    changes = interface["changes"]
    if not changes:
        return ["  interface: no NCHW input or output behind a boundary TRANSPOSE; left as it was"]
    what = ", ".join(f"{c['side']} {c['name']!r} {c['shape_before']} -> {c['shape_after']}" for c in changes)
    v = interface.get("verification")
    proof = "" if v is None else (f"; proved with transposed inputs (max |a-b| {v['max_abs_error']:.3g})" if v["ok"]
                                  else f"; NOT applied: its proof failed ({v['message']})")
    return [f"  interface (--nhwc-io): {'now NHWC' if interface['applied'] else 'kept'}: {what}{proof}"]


def explorer_lines(files: dict | None) -> list[str]:
    if not files:
        return []
    legend = ", ".join(f"{v['value']} {p} ({v['color']})" for p, v in files["legend"].items()) or "no rewrites"
    return [f"  Model Explorer node data: {files['original']} (input), {files['fused']} (fused); "
            f"values by pass: {legend}"]


def bench_lines(bench: dict | None) -> list[str]:
    if not bench:
        return []
    if "error" in bench:
        return [f"  speed: not measured ({bench['error']})"]
    names = {"builtin": "built-in", "xnnpack": "XNNPACK", "micro": "TFLite Micro"}
    parts = []
    for k, r in bench["kernels"].items():
        who = names.get(k, k) + (" (target)" if k == bench["target_kernels"] else "")
        parts.append(f"{who} not timed ({r['error']})" if "error" in r else
                     f"{who} {r['speedup']:.2f}x ({r['before_ms']:.3g} -> {r['after_ms']:.3g} ms)")
    lines = [f"  speed ({bench['threads']} thread(s), median of {bench['rounds']} alternating rounds): "
             + "; ".join(parts)]
    if bench.get("note"):
        lines.append(f"    note: {bench['note']}")
    return lines


def _share(x: float | None) -> str:
    if x is None:
        return "more than all"
    return f"{100 * x:.0f}%" if x >= 0.01 else f"{100 * x:.2g}%"
