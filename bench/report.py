"""Run the end-to-end benchmark set on this machine and write the report.

    python bench/report.py                          # full run: Kodak 768x512, every width
    python bench/report.py --quick                  # tiny image, 1 repeat (smoke test, temp folder)
    python bench/report.py --model runs/slimcae/checkpoint.pt --repeats 7 --threads 2
    python bench/report.py --cuda-dry-run           # also exercise the CUDA section on CPU

Writes into ``bench/results/<machine>/`` (``--out`` overrides; ``--quick``, a smoke test and not
a measurement, into a new folder under the system's temporary folder unless ``--out`` is given,
so that it never lands beside the tracked reports), where ``<machine>`` is
``cpu-<cpu-model-slug>-<isa>-<cores>c``; on a CUDA machine the CUDA section goes to
``bench/results/cuda-<gpu-name-slug>/`` (``<out>/cuda-<gpu-name-slug>/`` with ``--out``; with
``--cuda-only``, to ``--out`` itself when given). A folder that already holds a report (its
``README.md``, ``e2e.json`` or ``cuda.json``) is not replaced unless ``--force`` is given: the
run stops before measuring anything (exit status 2); the folders under ``bench/results/`` are
the tracked numbers the README quotes.

    python bench/report.py --threads 2 --repeats 11 --force   # re-measure this machine's report
    python bench/report.py --quick --out /tmp/report          # anywhere else

* ``e2e.json``: every configuration (ours fp32/bf16, plain PyTorch, CompressAI), medians, the
  transform / entropy / container split, bytes, PSNR, the same-run ratios and the fidelity
  checks; ``memory.json``: peak RSS per configuration (``layer_rows``: per layer);
  ``layers.json``: per-layer times;
  ``goals.json``: issue 8's goals, met or not, with the numbers; ``cuda.json`` when the CUDA
  section ran (for real or dry);
* ``e2e_time.png``, ``e2e_memory.png``, ``layers_time.png``, ``layers_memory.png``: time and
  memory against width, end to end and per layer;
* ``README.md``: the tables (included / linked from the project README).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402

import e2e  # noqa: E402


def _slug(s: str) -> str:
    s = re.sub(r"\((r|tm|R|TM)\)", "", s)
    s = re.sub(r"\b(cpu|processor)\b", "", s, flags=re.I) if "@" in s else s
    s = s.split("@")[0]
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") or "unknown"


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa_tag(flags=None) -> str:
    """The instruction-set tier that picks this library's CPU code paths: ``amx`` (AMX-BF16),
    ``avx512bf16``, ``avx512``, ``avx2`` or ``""`` (from /proc/cpuinfo's flags, or ``flags``)."""
    if flags is None:
        from slimkernels.codec import _cpu_flags
        flags = _cpu_flags()
    for flag, tag in (("amx_bf16", "amx"), ("avx512_bf16", "avx512bf16"), ("avx512f", "avx512"),
                      ("avx2", "avx2")):
        if flag in flags:
            return tag
    return ""


def machine_name(device: str = None) -> str:
    """``cuda-<gpu-name>`` when running the CUDA report, else ``cpu-<model-name>-<isa>-<ncores>c``:
    virtual machines often report a bare model name ("AMD EPYC" for both a Zen 3 with AVX2 and a
    Zen 4 with AVX512-BF16), so the name carries :func:`cpu_isa_tag` too."""
    if device == "cuda" or (device is None and torch.cuda.is_available()):
        return "cuda-" + _slug(torch.cuda.get_device_name(0))
    tag = cpu_isa_tag()
    return f"cpu-{_slug(cpu_model_name())}{'-' + tag if tag else ''}-{os.cpu_count()}c"


def env_info(threads: int) -> Dict:
    return {"machine": machine_name("cpu"), "cpu": cpu_model_name(), "cores": os.cpu_count(),
            "torch_threads": threads, "torch": torch.__version__, "python": platform.python_version(),
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


# ------------------------------------------------------------------------------------ goals
def _strictly_decreasing(vals: List[float]) -> bool:
    return all(a > b for a, b in zip(vals, vals[1:]))


def goals(res: Dict, ratios: List[Dict], mem: List[Dict], widths, default: str = "fp32",
          impl: str = "ours") -> Dict:
    """Issue 8's CPU goals: ``{name: {"value", "goal", "met", "detail"}}``, names ending in
    ``_<precision>``.

    ``widths`` largest first. Evaluated per precision for ``impl`` (``ours``: the API as
    shipped; ``ours+cl``: the proposal); ``default`` is the precision ``compress`` /
    ``decompress`` use by default here (``auto`` resolved), whose goals are the issue's. Speed
    is against plain PyTorch fp32 (the issue's baseline) in every precision, and in bf16 also
    against plain bf16 (``vs_plain_same_precision_bf16``)."""
    out: Dict[str, Dict] = {}
    rows = {(r["impl"], r["precision"], r["width"], r["op"]): r for r in res["rows"]
            if r["impl"] == impl}
    rat = {(r["precision"], r["width"], r["op"]): r for r in ratios
           if r.get("impl", "ours") == impl}
    precs = sorted({r["precision"] for r in ratios})
    hi, lo = widths[0], widths[-1]
    for p in precs:
        sp = {f"{op} w={w}": rat[(p, w, op)]["speedup_vs_plain"] for w in widths
              for op in ("compress", "decompress") if (p, w, op) in rat}
        cr = [rat[(p, w, "compress")] for w in widths if (p, w, "compress") in rat]
        dps = [r["dpsnr_vs_plain_db"] for r in cr]
        loss = [r["rd_loss_vs_plain_db"] for r in cr if "rd_loss_vs_plain_db" in r]
        if sp:
            v = min(sp.values())
            # RD loss at equal rate when known (the issue: "no loss of RD beyond 0.05 dB"),
            # else the PSNR difference at each width
            rd_ok = all(d <= 0.05 for d in loss) if loss else all(abs(d) <= 0.05 for d in dps)
            out[f"vs_plain_{p}"] = {
                "value": v, "goal": ">= 1.5x plain fp32 at every width, RD loss <= 0.05 dB",
                "met": v >= 1.5 and rd_ok,
                "detail": {**{k: round(x, 3) for k, x in sp.items()},
                           "max_rd_loss_db": round(max(loss), 4) if loss else None,
                           "max_abs_dpsnr_db": round(max(abs(d) for d in dps), 4) if dps else None,
                           "max_abs_dbpp": round(max(abs(r.get("dbpp_vs_plain", 0.0)) for r in cr),
                                                 5) if cr else None}}
        same = {f"{op} w={w}": rat[(p, w, op)]["speedup_vs_plain_same_precision"]
                for w in widths for op in ("compress", "decompress")
                if (p, w, op) in rat and "speedup_vs_plain_same_precision" in rat[(p, w, op)]}
        if p != "fp32" and same:
            v = min(same.values())
            out[f"vs_plain_same_precision_{p}"] = {
                "value": v, "goal": f">= 1.5x plain {p} (autocast) at every width",
                "met": v >= 1.5, "detail": {k: round(x, 3) for k, x in same.items()}}
        cai = res.get("compressai")
        if cai:
            for w, g in ((192, 5.0), (48, 30.0)):   # the widths (only where measured)
                vs = {op: rat[(p, w, op)]["speedup_vs_compressai"] for op in ("compress", "decompress")
                      if (p, w, op) in rat}
                if vs:
                    out[f"vs_compressai_w{w}_{p}"] = {"value": min(vs.values()), "goal": f">= {g:g}x",
                                                      "met": min(vs.values()) >= g, "detail": vs}
        for op in ("compress", "decompress"):
            ts = [rows[(impl, p, w, op)]["ms"] for w in widths if (impl, p, w, op) in rows]
            if len(ts) == len(widths) and len(ts) > 1:
                out[f"decreasing_{op}_{p}"] = {"value": [round(t, 2) for t in ts],
                                               "goal": "strictly decreasing with width",
                                               "met": _strictly_decreasing(ts)}
                f = ts[-1] / ts[0]
                out[f"w{lo}_over_w{hi}_{op}_{p}"] = {"value": f, "goal": "<= 0.15", "met": f <= 0.15}
        shares = {w: rat[(p, w, "compress")]["entropy_share"] for w in widths
                  if (p, w, "compress") in rat}
        if shares:
            out[f"entropy_share_compress_{p}"] = {"value": max(shares.values()), "goal": "<= 0.10",
                                                  "met": max(shares.values()) <= 0.10,
                                                  "detail": {str(k): round(v, 4)
                                                             for k, v in shares.items()}}
    for p in precs:
        for op in ("compress", "decompress"):
            ms = {m["width"]: m["peak_mib"] for m in mem
                  if m["impl"] == impl and m["precision"] == p and m["op"] == op}
            vals = [ms[w] for w in widths if w in ms]
            if len(vals) == len(widths) and len(vals) > 1:
                out[f"memory_falling_{op}_{p}"] = {"value": [round(v, 1) for v in vals],
                                                   "goal": "peak MiB strictly decreasing with width",
                                                   "met": _strictly_decreasing(vals)}
    return out


# ------------------------------------------------------------------------------------ plots
def plot_all(out: str, res: Dict, mem: List[Dict], layers: List[Dict], widths,
             default_precision: str = "fp32", layer_mem: List[Dict] = ()) -> List[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    ws = list(widths)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, op in zip(axes, ("compress", "decompress")):
        for impl, p, style in (("ours", "fp32", "o-"), ("ours", "bf16", "s-"),
                               ("plain", "fp32", "x--"), ("plain", "bf16", "+--")):
            pts = [(r["width"], r["ms"]) for r in res["rows"]
                   if r["impl"] == impl and r["precision"] == p and r["op"] == op]
            if pts:
                pts.sort()
                ax.plot(*zip(*pts), style, label=f"{impl} {p}")
            if impl == "ours" and p == default_precision:
                en = sorted((r["width"], r["split_ms"]["entropy"]) for r in res["rows"]
                            if r["impl"] == impl and r["precision"] == p and r["op"] == op)
                if en:
                    ax.plot(*zip(*en), ":", color="gray",
                            label=f"ours {default_precision}: entropy coding")
        cai = res.get("compressai")
        if cai:
            ax.axhline(cai[f"{op}_ms"], color="r", ls="-.", label="CompressAI factorized q6")
        ax.set_xlabel("width")
        ax.set_ylabel("ms (median)")
        ax.set_yscale("log")
        ax.set_xticks(ws)
        ax.set_title(op)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fn = os.path.join(out, "e2e_time.png")
    fig.savefig(fn, dpi=110)
    plt.close(fig)
    files.append(fn)

    if mem:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, op in zip(axes, ("compress", "decompress")):
            for impl, p, style in (("ours", "fp32", "o-"), ("ours", "bf16", "s-"),
                                   ("plain", "fp32", "x--")):
                pts = sorted((m["width"], m["peak_mib"]) for m in mem
                             if m["impl"] == impl and m["precision"] == p and m["op"] == op)
                if pts:
                    ax.plot(*zip(*pts), style, label=f"{impl} {p}")
            cai = [m["peak_mib"] for m in mem if m["impl"] == "compressai" and m["op"] == op]
            if cai:
                ax.axhline(cai[0], color="r", ls="-.", label="CompressAI factorized q6")
            ax.set_xlabel("width")
            ax.set_ylabel("peak RSS above baseline, MiB")
            ax.set_xticks(ws)
            ax.set_title(f"{op}: peak memory")
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        fig.tight_layout()
        fn = os.path.join(out, "e2e_memory.png")
        fig.savefig(fn, dpi=110)
        plt.close(fig)
        files.append(fn)

    # per layer: time (layer_timings' rows) and peak memory (the memory children's layer rows),
    # one panel per layer
    series = (
        ("layers_time.png", "ms", [(name, f"{impl} {p}", style, sorted(
            (r["width"], r[key]) for r in layers if r["layer"] == name and r["precision"] == p))
            for name in dict.fromkeys(r["layer"] for r in layers)
            for key, impl, p, style in (("ours_ms", "ours", "fp32", "o-"),
                                        ("ours_ms", "ours", "bf16", "s-"),
                                        ("plain_ms", "plain", "fp32", "x--"))]),
        ("layers_memory.png", "peak MiB", [(name, f"{impl} {p}", style, sorted(
            (m["width"], m["peak_mib"]) for m in layer_mem
            if m["layer"] == name and m["impl"] == impl and m["precision"] == p))
            for name in dict.fromkeys(m["layer"] for m in layer_mem)
            for impl, p, style in (("ours", "fp32", "o-"), ("ours", "bf16", "s-"),
                                   ("plain", "fp32", "x--"))]))
    for fname, ylabel, lines in series:
        if not lines:
            continue
        names = list(dict.fromkeys(ln[0] for ln in lines))
        fig, axes = plt.subplots(2, 6, figsize=(18, 6), sharex=True)
        for ax, name in zip(axes.flat, names):
            for _, label, style, pts in (ln for ln in lines if ln[0] == name):
                if pts:
                    ax.plot(*zip(*pts), style, label=label)
            ax.set_title(name, fontsize=9)
            ax.set_xticks(ws)
            ax.grid(True, alpha=0.3)
        axes.flat[0].set_ylabel(ylabel)
        axes.flat[6].set_ylabel(ylabel)
        axes.flat[0].legend(fontsize=6)
        fig.tight_layout()
        fn = os.path.join(out, fname)
        fig.savefig(fn, dpi=100)
        plt.close(fig)
        files.append(fn)
    return files


# --------------------------------------------------------------------------------- markdown
def _f(v, nd=1):
    return "-" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def _memory_table(mem: List[Dict], field: str, widths) -> List[str]:
    """Markdown rows of the memory children's ``field`` per width and op: ours fp32 / bf16
    and plain fp32 (header included)."""
    v = {(m["impl"], m["precision"], m["width"], m["op"]): m[field] for m in mem if field in m}
    rows = ["| width | op | ours fp32 | ours bf16 | plain fp32 |", "|---|---|---|---|---|"]
    for op in ("compress", "decompress"):
        for w in widths:
            rows.append(f"| {w} | {op} | {_f(v.get(('ours', 'fp32', w, op)))} | "
                        f"{_f(v.get(('ours', 'bf16', w, op)))} | "
                        f"{_f(v.get(('plain', 'fp32', w, op)))} |")
    return rows


def markdown(meta: Dict, res: Dict, ratios: List[Dict], mem: List[Dict], layers: List[Dict],
             gl: Dict, cuda_md: str, ext_layers: Dict, gl_prop: Dict = None,
             layer_mem: List[Dict] = ()) -> str:
    L = [f"# Benchmarks on `{meta['machine']}`", "",
         f"{meta['cpu']}, {meta['cores']} cores, {meta['torch_threads']} torch threads, "
         f"torch {meta['torch']}; {meta['time_utc']}; load average at start "
         f"{_f(meta['load_avg'][0] if meta.get('load_avg') else None, 2)}.", "",
         f"Command: `{meta['command']}`", ""] + ([meta["note"], ""] if meta.get("note") else []) + (
         ["glibc malloc thresholds tuned for the timings (`slimkernels.allocator.tune_malloc`, as "
          "the command-line tools do); the memory children do not tune them: they serve every "
          "block >= 64 KiB by mmap (`MALLOC_MMAP_THRESHOLD_=65536`), so that RSS follows the "
          "live tensors.", ""]
         if meta.get("malloc_tuned") else []) + [
         f"Image: {meta['image']} ({res['image']['width']}x{res['image']['height']}); model: "
         f"{meta['model']}. Medians of {meta['repeats']} interleaved repeats (all "
         "configurations round-robin in one run, so load hits all alike"
         + (f"; end to end, each timed call right after {meta['burst'] - 1} untimed call(s) of "
            "the same configuration: its steady state, as when coding many images with one "
            "setting" if meta.get("burst", 1) > 1 else "") + "); every ratio is from "
         "this run. `plain` = the same SlimCAE in plain PyTorch (`bench/plain_slimcae.py`: "
         "F.conv2d on sliced weights, eager GDN, NCHW) in fp32 (the issue's baseline: what a user "
         "would write without this library) and under bf16 autocast; same weights, same coder "
         "and container, so its ratio isolates the transforms. NCHW is PyTorch's default "
         "layout; in channels_last plain PyTorch's decoder runs faster (its transposed convs), "
         "so the decompress ratios against a plain model converted to channels_last are "
         "lower: `python bench/plain_layouts.py` measures both layouts side by side. "
         "CompressAI = "
         "`bmshj2018-factorized` quality 6 (N=192, M=320, random weights: the same transform "
         "cost, while its coder codes a larger payload than a trained model's would, so its "
         "coding time is over-counted), its own compress/decompress.", ""]
    if meta.get("quick"):
        L += ["**Quick mode** (tiny image, 1 repeat): a smoke test, not a measurement.", ""]
    dp = meta.get("default_precision", "fp32")
    others = [p for p in ("fp32", "bf16") if p != dp]

    def count(gs, p):
        sel = [g["met"] for k, g in gs.items()
               if k.endswith("_" + p) and "same_precision" not in k]
        return f"{sum(sel)} of {len(sel)}"

    def extra(gs, p):   # (the check against plain under bf16 autocast is not one of the ten)
        g = gs.get(f"vs_plain_same_precision_{p}")
        return "" if g is None else (f" (not counted, an extra check: >= 1.5x plain {p} "
                                     f"autocast {'met' if g['met'] else '**not met**'}, "
                                     f"{g['value']:.2f}x)")
    L += [f"**Goals met** by `compress`/`decompress` as shipped, in the default precision "
          f"(`precision=\"auto\"` = **{dp}** on this machine) against plain PyTorch fp32: "
          f"**{count(gl, dp)}**{extra(gl, dp)}; "
          + "; ".join(f"{p} (explicit `precision=\"{p}\"`): {count(gl, p)}" for p in others)
          + (f"; with the proposed channels_last change (time goals only): fp32 "
             f"{count(gl_prop, 'fp32')}, bf16 {count(gl_prop, 'bf16')}" if gl_prop else "")
          + ". Details below.", ""]
    L += ["## End to end (ms)", "",
          f"`ours <p>` = `compress(..., precision=\"<p>\")`; the default (`auto`) is {dp} here. "
          "`vs plain` = plain fp32 time / ours (the issue's baseline); `bf16 vs plain bf16` = "
          "plain under bf16 autocast / ours bf16.", "",
          "| width | op | ours fp32 | ours bf16 | plain fp32 | plain bf16 | fp32 vs plain | "
          "bf16 vs plain | bf16 vs plain bf16 | fp32 vs CompressAI | bf16 vs CompressAI | "
          f"{dp} transform / entropy / container | entropy share {dp} | bpp {dp} | "
          "PSNR fp32 / bf16 / plain fp32 / plain bf16 |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = {(r["impl"], r["precision"], r["width"], r["op"]): r for r in res["rows"]}
    rat = {(r["precision"], r["width"], r["op"]): r for r in ratios if r["impl"] == "ours"}
    for w in meta["widths"]:
        for op in ("compress", "decompress"):
            o32, o16 = rows.get(("ours", "fp32", w, op)), rows.get(("ours", "bf16", w, op))
            pl, pl16 = rows.get(("plain", "fp32", w, op)), rows.get(("plain", "bf16", w, op))
            r32, r16 = rat.get(("fp32", w, op), {}), rat.get(("bf16", w, op), {})
            od, rd = rows.get(("ours", dp, w, op)), rat.get((dp, w, op), {})
            s = od["split_ms"] if od else {}
            L.append("| " + " | ".join([
                str(w), op, _f(o32 and o32["ms"]), _f(o16 and o16["ms"]), _f(pl and pl["ms"]),
                _f(pl16 and pl16["ms"]),
                _f(r32.get("speedup_vs_plain"), 2) + "x", _f(r16.get("speedup_vs_plain"), 2) + "x",
                _f(r16.get("speedup_vs_plain_same_precision"), 2) + "x",
                _f(r32.get("speedup_vs_compressai"), 1) + "x",
                _f(r16.get("speedup_vs_compressai"), 1) + "x",
                " / ".join(_f(s.get(k)) for k in ("transform", "entropy", "container")),
                _f(rd.get("entropy_share") and 100 * rd["entropy_share"]) + " %",
                _f(od and od["bpp"], 3),
                " / ".join(_f(r and r["psnr"], 2) for r in (o32, o16, pl, pl16))]) + " |")
    cai = res.get("compressai")
    if cai:
        L += ["", f"CompressAI factorized q6, same image, same run: compress "
              f"{cai['compress_ms']:.1f} ms, decompress {cai['decompress_ms']:.1f} ms "
              f"({cai['bytes']} bytes, random weights)."]
    L += ["", "Fidelity: " + ", ".join(f"{k}={v}" for k, v in res["checks"].items()), ""]
    if mem:
        L += ["## Peak memory (MiB above the RSS before the call)", "",
              "One fresh process per implementation; each call warmed up three times, then the "
              "RSS high-water mark reset (`/proc/self/clear_refs`) and the call run again, with "
              "glibc returning every block >= 64 KiB to the OS on free (a CPU replay, "
              "`slimkernels.cpu_replay`, holds no activations between calls: the measured call "
              "is one, bf16 w=48 / 72 here). Buffers ours keeps between calls are left out of "
              "these peaks, as they were allocated by the warm-up (they are in the retained "
              "memory below): the per-thread Winograd workspace and GDN x^2 scratch, e.g. "
              "~32 MiB of workspace for fp32 w=192 `compress`, which a one-off call's peak "
              "includes.", "",
              *_memory_table(mem, "peak_mib", meta["widths"])]
        c = [(m["op"], m["peak_mib"]) for m in mem if m["impl"] == "compressai"]
        if c:
            L += ["", "CompressAI factorized q6: " + ", ".join(f"{op} {v:.1f} MiB" for op, v in c)]
        first = [m for m in mem if "first_call_ms" in m]
        if first:
            L += ["", "The first call of each configuration (ms; in the memory processes, after "
                  "the configurations measured before it in the same process, in this order: "
                  "the first row of each implementation is its first call in a fresh process, "
                  "oneDNN's primitives and the weight caches built in it; the tables above are "
                  "the steady state). The command line codes one image per process: its "
                  "`compress` pays roughly the first row's cost:", "",
                  "| implementation | precision | width | op | first call ms |",
                  "|---|---|---|---|---|"]
            L += [f"| {m['impl']} | {m['precision']} | {m['width']} | {m['op']} | "
                  f"{m['first_call_ms']:.1f} |" for m in first]
        if any("retained_mib" in m for m in mem):
            L += ["", "Memory a configuration keeps resident between calls (MiB: the RSS after "
                  "its three warm-up calls above the RSS before its first call, in the same "
                  "process after the configurations measured before it: the weight "
                  "caches, prepacked and cast weights and CPU replays ours keeps, which the "
                  "peaks above exclude; `model.clear_caches()` frees them):", "",
                  *_memory_table(mem, "retained_mib", meta["widths"])]
        L.append("")
    def goal_table(gs):
        out = ["| goal | target | value | met |", "|---|---|---|---|"]
        for k, g in gs.items():
            v = g["value"]
            vs = (f"{v:.3f}" if isinstance(v, float) else str(v))
            if g.get("detail"):
                vs += f" ({json.dumps(g['detail'])})"
            out.append(f"| {k} | {g['goal']} | {vs} | {'yes' if g['met'] else '**no**'} |")
        return out

    L += [f"## Goals (issue 8, CPU): `compress`/`decompress` as shipped, default precision "
          f"(`auto` = {dp} here) vs plain PyTorch fp32", "",
          "Each flag is this run's medians: a value within the machine's spread of its target "
          "can flip from run to run (a shared 2-core VM: ~5-10 % between repeats; `compress` "
          "and `compress_split` in e2e.json do the same work and show that run's own spread).",
          ""]
    L += goal_table({k: g for k, g in gl.items() if k.endswith("_" + dp)}) + [""]
    for p in others:
        sel = {k: g for k, g in gl.items() if k.endswith("_" + p)}
        if not sel:   # not measured (--precisions)
            L += [f"`precision=\"{p}\"` was not measured in this run (`--precisions`).", ""]
            continue
        L += [f"### The same goals with explicit `precision=\"{p}\"`", ""]
        L += goal_table(sel) + [""]
    prop = [r for r in ratios if r["impl"] == "ours+cl"]
    if prop:
        L += ["## Candidate model-level change: transforms on channels_last inputs", "",
              "`ours+cl` = the same pipeline step by step with the image / latent converted to "
              "channels_last by the caller before the transforms, whatever the parameters' layout "
              "(`input_channels_last=True`); same run, same repeats. `vs ours` = time of the "
              "shipped API / time of ours+cl: worth adopting only where it is clearly above 1.", "",
              "| width | op | ours+cl fp32 ms | vs ours | vs plain | vs CompressAI | "
              "ours+cl bf16 ms | vs ours | vs plain | vs CompressAI |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        pr = {(r["precision"], r["width"], r["op"]): r for r in prop}
        for w in meta["widths"]:
            for op in ("compress", "decompress"):
                cells = []
                for p in ("fp32", "bf16"):
                    r, o = pr.get((p, w, op)), rows.get(("ours", p, w, op))
                    cells += [_f(r and r["ours_ms"]),
                              _f(r and o and o["ms"] / r["ours_ms"], 2) + "x",
                              _f(r and r["speedup_vs_plain"], 2) + "x",
                              _f(r and r.get("speedup_vs_compressai"), 1) + "x"]
                L.append(f"| {w} | {op} | " + " | ".join(cells) + " |")
        if gl_prop:
            L += ["", "Goals with the proposal (`ours+cl`):", ""] + goal_table(gl_prop)
        L.append("")
    if layers:
        L += ["## Per layer (ms; each layer on its real input in this image)", "",
              "Layer by layer: each SlimCAE layer called on its own (conv and GDN separately; "
              "the model's `encode`/`decode` may fuse them, so the end-to-end table is the "
              "reference), ours on our chain's activations, plain on the plain chain's.", "",
              "| layer | " + " | ".join(f"w={w} fp32 / bf16 / plain" for w in meta["widths"]) + " |",
              "|---|" + "---|" * len(meta["widths"])]
        lk = {(r["layer"], r["width"], r["precision"]): r for r in layers}
        for name in dict.fromkeys(r["layer"] for r in layers):
            cells = []
            for w in meta["widths"]:
                a, b = lk.get((name, w, "fp32")), lk.get((name, w, "bf16"))
                cells.append(f"{_f(a and a['ours_ms'], 2)} / {_f(b and b['ours_ms'], 2)} / "
                             f"{_f(a and a['plain_ms'], 2)}")
            L.append(f"| {name} | " + " | ".join(cells) + " |")
        L.append("")
    if ext_layers:
        L += ["Per-op microbenchmarks (kernel engineers' files): " + ", ".join(
            f"[{k}]({os.path.relpath(v, meta['out'])})" for k, v in ext_layers.items()), ""]
    if layer_mem:
        L += ["## Per layer peak memory (MiB above the RSS before the call)", "",
              "Each layer on its real input, as timed above, in the memory children (warmed up "
              "three times, then the high-water mark reset and the layer called again): its "
              "output and its working buffers (a conv's padded input or windows where it "
              "builds them per call; buffers it keeps between calls count as RSS before the "
              "call).", "",
              "| layer | " + " | ".join(f"w={w} fp32 / bf16 / plain" for w in meta["widths"]) + " |",
              "|---|" + "---|" * len(meta["widths"])]
        mk = {(m["layer"], m["width"], m["impl"], m["precision"]): m["peak_mib"]
              for m in layer_mem}
        for name in dict.fromkeys(m["layer"] for m in layer_mem):
            L.append(f"| {name} | " + " | ".join(
                " / ".join(_f(mk.get((name, w, impl, p)), 2)
                           for impl, p in (("ours", "fp32"), ("ours", "bf16"), ("plain", "fp32")))
                for w in meta["widths"]) + " |")
        L.append("")
    plots = ["e2e_time.png", "e2e_memory.png", "layers_time.png"] + \
        (["layers_memory.png"] if layer_mem else [])
    L += ["Plots: " + ", ".join(f"`{p}`" for p in plots) + ".", "",
          "## CUDA", "", cuda_md, ""]
    return "\n".join(L)


def cuda_elsewhere(out: str) -> str:
    """The CUDA section of a report written without a GPU: links to the CUDA reports already in
    ``bench/results/cuda-*/`` (relative to ``out``), or says that the table is owed."""
    import glob
    found = sorted(glob.glob(os.path.join(HERE, "results", "cuda-*", "cuda.json")))
    text = ("No GPU on this machine. The CUDA table (encoder / decoder transforms, compress, "
            "decompress: Triton kernels and CUDA graphs vs eager and torch.compile, every width, "
            "fp32 and bf16; goals: transforms >= 3x eager, w=48 <= 30 % of w=192, compress and "
            "decompress <= 10 ms at w=192) is written by `python bench/report.py` (or "
            "`bash bench/gpu_session.sh`) on a CUDA machine into `bench/results/cuda-<gpu>/` "
            "(`--force` to replace a report already there). Its code runs in CI on CPU "
            "(`--cuda-dry-run`, tests/bench/test_report.py).")
    if not found:
        return "**Owed**: " + text
    links = ", ".join(f"[{os.path.basename(os.path.dirname(p))}]"
                      f"({os.path.relpath(os.path.join(os.path.dirname(p), 'README.md'), out)})"
                      for p in found)
    return text + " Measured so far: " + links + "."


def write_cuda(cdir: str, meta: Dict, cres: Dict) -> str:
    """Write the CUDA section's ``cuda.json`` and ``README.md`` into ``cdir``; returns its table."""
    import e2e_cuda
    os.makedirs(cdir, exist_ok=True)   # (each file replaced in one step: the run may be cut)
    e2e_cuda.write_text(os.path.join(cdir, "cuda.json"),
                        json.dumps({"meta": meta, **cres}, indent=1))
    cuda_md = e2e_cuda.cuda_markdown(cres)
    e2e_cuda.write_text(os.path.join(cdir, "README.md"),
                        f"# CUDA end-to-end on {cres['device']}\n\nCommand: `{meta['command']}`"
                        "\n\n" + cuda_md + "\n")
    return cuda_md


# ------------------------------------------------------------------------------------- main

def _goal_value(g: dict) -> str:
    """A goal's value for the console: ``-`` when it was not measured (e.g. the w=48 / w=192
    ratio of a run without one of those widths: ``{"value": None, "missing": ...}``)."""
    v = g.get("value")
    if v is None:
        return "-" + (f" (missing: {g['missing']})" if g.get("missing") else "")
    return f"{v:.3f}" if isinstance(v, (int, float)) else str(v)


REPORT_FILES = ("README.md", "e2e.json", "cuda.json")


def existing_report(folder: str):
    """The first of :data:`REPORT_FILES` in ``folder`` (a report a run would replace), or
    ``None``."""
    for name in REPORT_FILES:
        p = os.path.join(folder, name)
        if os.path.exists(p):
            return p
    return None


def _folder_error(folder: str):
    """Why ``folder`` cannot be the output folder (``os.makedirs`` would fail on it), or
    ``None``: checked before anything is measured or created."""
    if os.path.exists(folder):
        return None if os.path.isdir(folder) else f"{folder} is a file, not a folder"
    from slimkernels.io import missing_folders
    made = missing_folders(folder)   # the nearest existing folder above: where makedirs starts
    up = os.path.dirname(made[-1]) if made else os.path.abspath(folder)
    if not os.path.isdir(up):
        return f"{folder}: {up} is a file, not a folder"
    if not os.access(up, os.W_OK):
        return f"{folder}: cannot create it in {up} (not writable)"
    return None


def quick_folder(machine: str) -> str:
    """The output folder of a ``--quick`` run without ``--out``: a path under the system's
    temporary folder (``tempfile.gettempdir()``, ``$TMPDIR``) that does not exist yet, named after
    the machine, the time and the process (created only once the run's checks have passed)."""
    import tempfile
    stem = os.path.join(tempfile.gettempdir(), f"slimkernels-report-quick-{machine}-"
                        f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    path, n = stem, 1
    while os.path.exists(path):
        n += 1
        path = f"{stem}-{n}"
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="tiny image, 1 repeat, widths 192/48: a smoke test, written to a new "
                         "temporary folder unless --out is given")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 7; quick 1)")
    ap.add_argument("--burst", type=int, default=None,
                    help="end to end: calls of a configuration back to back per round, the last "
                         "one timed (default 2: steady state per configuration; quick 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=None, help="output folder (default bench/results/<machine>)")
    ap.add_argument("--force", action="store_true",
                    help="replace the report already in the output folder (its README.md, "
                         "e2e.json or cuda.json; the CUDA folder too on a GPU): without it such a "
                         "folder is refused before anything is measured")
    ap.add_argument("--model", default=None, help="model file or trainer checkpoint "
                    "(default: bundled model, else random weights)")
    ap.add_argument("--image", default=None, help="image (default Kodak kodim01)")
    ap.add_argument("--widths", default=None, help="comma-separated widths (default all)")
    ap.add_argument("--note", default="", help="free text for the README (conditions of the run)")
    ap.add_argument("--precisions", default="fp32,bf16",
                    help="comma-separated precisions of ours (and plain) to time (default "
                         "fp32,bf16; on a CPU without AVX-512 ours computes bf16 in fp32, "
                         "while plain PyTorch's bf16 is ATen's slow fallback, ~100x slower: "
                         "fp32 alone keeps the report to minutes)")
    ap.add_argument("--no-tune-malloc", action="store_true",
                    help="keep glibc's default thresholds for the timings (the CLI tunes them: "
                         "slimkernels.allocator; the memory children never do: they map every block >= 64 KiB)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-layers", action="store_true")
    ap.add_argument("--no-compressai", action="store_true")
    ap.add_argument("--proposals", action="store_true",
                    help="also time the candidate model-level variant ours+cl (transforms on "
                         "channels_last inputs; compress does this on CPU by default now)")
    ap.add_argument("--cuda-dry-run", action="store_true",
                    help="without a GPU: run the CUDA section's code on CPU on a tiny image")
    ap.add_argument("--cuda-only", action="store_true",
                    help="only the CUDA section (no CPU timings): for a short GPU lease; widths "
                         "run in the order given and the table is rewritten after each row")
    ap.add_argument("--compile-widths", default=None,
                    help="CUDA: comma-separated widths that get a torch.compile column (default "
                         "all; each width and dtype is a fresh compile)")
    a = ap.parse_args(argv)
    # (None is the documented default; an explicit 0 was silently the default and a negative
    # count an IndexError, a negative --threads torch's RuntimeError)
    for name, v in (("--repeats", a.repeats), ("--burst", a.burst), ("--threads", a.threads)):
        if v is not None and v < 1:
            print(f"error: {name} must be at least 1, got {v} (leave it out for the default)",
                  file=sys.stderr)
            return 2
    tuned = False
    if not a.no_tune_malloc:
        from slimkernels.allocator import tune_malloc
        tuned = tune_malloc()
    if a.threads:
        torch.set_num_threads(a.threads)
    threads = torch.get_num_threads()
    repeats = a.repeats or (1 if a.quick else 7)
    burst = a.burst or (1 if a.quick else 2)
    try:
        given = None if a.widths is None else [int(w) for w in a.widths.split(",") if w.strip()]
        compile_widths = (None if a.compile_widths is None else
                          [int(w) for w in a.compile_widths.split(",") if w.strip()])
    except ValueError:
        print(f"error: --widths and --compile-widths take comma-separated integers, got "
              f"{a.widths!r} / {a.compile_widths!r}", file=sys.stderr)
        return 2
    if given:
        widths = list(dict.fromkeys(given))
        if not a.cuda_only:
            widths.sort(reverse=True)
    else:
        widths = [192, 48] if a.quick else list(e2e.WIDTHS)
    precisions = tuple(dict.fromkeys(p.strip() for p in a.precisions.split(",") if p.strip()))
    if not precisions or any(p not in ("fp32", "bf16") for p in precisions):
        print(f"error: --precisions takes fp32 and/or bf16 (comma-separated), got "
              f"{a.precisions!r}", file=sys.stderr)
        return 2
    machine = machine_name("cpu")
    if a.quick and not a.out:   # (a smoke test: never into bench/results/, whose reports are tracked)
        a.out = quick_folder(machine)
    out = a.out or os.path.join(HERE, "results", machine)
    # where the CUDA section goes on a GPU (a dry run writes into out): bench/results/cuda-<gpu>/,
    # with --out <out>/cuda-<gpu>/ (--cuda-only: out itself)
    cdir = None
    if torch.cuda.is_available():
        gpu = machine_name("cuda")
        cdir = (a.out if a.cuda_only else os.path.join(a.out, gpu)) if a.out else \
            os.path.join(HERE, "results", gpu)
    if a.cuda_only and not (cdir or a.cuda_dry_run):
        print("error: --cuda-only needs a CUDA GPU (or --cuda-dry-run to exercise the code on "
              "CPU)", file=sys.stderr)
        return 2
    targets = [cdir or out] if a.cuda_only else [out] + ([cdir] if cdir else [])
    for folder in targets:   # (a file there was os.makedirs' FileExistsError traceback)
        bad_out = _folder_error(folder)
        if bad_out:
            print(f"error: --out {bad_out}", file=sys.stderr)
            return 2
    if not a.force:   # a report already there (tracked numbers under bench/results/) stays
        for folder in targets:
            have = existing_report(folder)
            if have:
                print(f"error: {folder} already holds a report ({os.path.basename(have)}); "
                      "--force to replace it, or --out DIR", file=sys.stderr)
                return 2
    image_bad = e2e.image_error(a.image)   # (a missing --image was silently noise before)
    if image_bad:
        print(f"error: {image_bad}", file=sys.stderr)
        return 2
    # the model before any folder is made: a bad --model was a traceback after makedirs
    t_start = time.time()
    model_bad = e2e.model_error(a.model)
    if model_bad:
        print(f"error: {model_bad}", file=sys.stderr)
        return 2
    try:
        model, model_desc = e2e.load_model(a.model)
    except Exception as e:   # (torch.load's errors are many: a one-line reason for each)
        why = (str(e).splitlines() or [""])[0]
        print(f"error: --model {a.model}: {type(e).__name__}: {why}", file=sys.stderr)
        return 2
    bad = e2e.widths_error(widths, model.widths, "widths")
    if bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    if not a.cuda_only:
        os.makedirs(out, exist_ok=True)

    x = e2e.load_image(a.image, a.quick)
    import shlex
    meta = {**env_info(threads), "command": "python bench/report.py " + shlex.join(
                argv if argv is not None else sys.argv[1:]),
            "quick": a.quick, "repeats": repeats, "widths": widths, "model": model_desc,
            "default_precision": e2e.default_precision("cpu"), "burst": burst,
            "note": a.note, "malloc_tuned": tuned,
            "image": e2e.image_source(a.image) + (" (64x96 crop)" if a.quick else ""), "out": out}
    print(f"report on {machine}: {model_desc}, image {tuple(x.shape)}, {threads} threads")

    import e2e_cuda
    cuda_repeats = max(repeats, 10 if not a.quick else 1)
    if a.cuda_only:
        cdir = cdir or out
        cres = e2e_cuda.cuda_section(
            model, x, widths, repeats=cuda_repeats,
            dry_run=not torch.cuda.is_available(), compile_widths=compile_widths,
            on_row=lambda r: write_cuda(cdir, meta, r))
        write_cuda(cdir, meta, cres)
        print(f"wrote {cdir} in {time.time() - t_start:.0f} s")
        for k, g in ({} if cres["dry_run"] else cres["goals"]).items():
            print(f"  cuda goal {k}: {'met' if g['met'] else 'NOT met'} ({_goal_value(g)})")
        return 0

    cai = None if a.no_compressai else e2e.make_compressai()

    warmup = 0 if a.quick else 1
    res = e2e.e2e_timings(model, x, widths, repeats=repeats, warmup=warmup, compressai_model=cai,
                          proposals=a.proposals, burst=burst, precisions=precisions)
    rat = e2e.ratios(res, widths)
    mem = []
    if not a.no_memory:
        cfgs = (e2e.memory_configs(widths, precisions=("fp32",), plain=False, compressai=False,
                                   ops=("compress",)) if a.quick else
                e2e.memory_configs(widths, precisions=precisions, compressai=cai is not None))
        mem = e2e.peak_memory(cfgs, {"image": a.image, "quick": a.quick, "model": a.model,
                                     "threads": threads})
    layers = [] if a.no_layers else e2e.layer_timings(model, x, widths, repeats=repeats,
                                                      warmup=warmup, precisions=precisions)
    layer_mem = []
    if not (a.no_memory or a.no_layers):   # (quick: the default precision and plain only)
        layer_mem = e2e.peak_memory(
            e2e.layer_memory_configs(widths, precisions=(meta["default_precision"],)
                                     if a.quick else precisions),
            {"image": a.image, "quick": a.quick, "model": a.model, "threads": threads})
    gl = goals(res, rat, mem, widths, default=meta["default_precision"])
    gl_prop = goals(res, rat, [], widths, impl="ours+cl") if a.proposals else {}
    ext_layers = {}
    for sub in (machine, "cpu"):
        for name in ("conv", "gdn", "coder"):
            p = os.path.join(HERE, "results", sub, name + ".md")
            if os.path.exists(p) and name not in ext_layers:
                ext_layers[name] = p

    if torch.cuda.is_available():
        cres = e2e_cuda.cuda_section(model, e2e.load_image(a.image, a.quick), widths,
                                     repeats=cuda_repeats,
                                     compile_widths=compile_widths)
        cuda_md = write_cuda(cdir, meta, cres)
    elif a.cuda_dry_run:
        cres = e2e_cuda.cuda_section(model, e2e.load_image(a.image, True), widths[:2],
                                     repeats=1, dry_run=True)
        with open(os.path.join(out, "cuda_dry_run.json"), "w") as f:
            json.dump(cres, f, indent=1)
        cuda_md = e2e_cuda.cuda_markdown(cres)
    else:
        cuda_md = cuda_elsewhere(out)

    meta["seconds"] = time.time() - t_start
    # Everything rendered, and the plots drawn, before a table is written; each file then
    # replaced whole (a failure in the plots or the Markdown had left new JSON beside the old
    # README.md, which --force could mix into a tracked folder).
    from slimkernels.io import atomic_write_bytes
    md = markdown(meta, res, rat, mem, layers, gl, cuda_md, ext_layers, gl_prop, layer_mem)
    tables = {"e2e.json": {"meta": meta, **res, "ratios": rat},
              "memory.json": {"meta": meta, "rows": mem, "layer_rows": layer_mem},
              "layers.json": {"meta": meta, "rows": layers},
              "goals.json": {"meta": meta, "goals": gl, "goals_proposal_ours_cl": gl_prop}}
    texts = {name: json.dumps(obj, indent=1) for name, obj in tables.items()}
    plot_all(out, res, mem, layers, widths, meta["default_precision"], layer_mem)
    for name, text in [*texts.items(), ("README.md", md)]:
        atomic_write_bytes(os.path.join(out, name), text.encode(), overwrite=True)
    print(f"wrote {out} in {meta['seconds']:.0f} s")
    for k, g in gl.items():
        print(f"  goal {k}: {'met' if g['met'] else 'NOT met'} ({g['value']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
