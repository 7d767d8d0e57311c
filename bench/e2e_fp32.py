"""End to end in fp32 only, for CPUs without native bf16 (e.g. AMD EPYC with AVX2), where
``precision="auto"`` is fp32 and a bf16 run of ``bench/report.py`` takes an hour (plain
PyTorch's bf16 there is ATen's slow fallback):
``compress`` / ``decompress`` of ours vs plain PyTorch fp32 vs CompressAI, every width, one
interleaved run (``e2e.e2e_timings``), printed as a Markdown table with the issue-8 goals.

    python bench/e2e_fp32.py [--repeats 5] [--threads 2] [--model FILE] [--out FILE.md]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e  # noqa: E402


def table(res, widths) -> str:
    """Markdown: per width and op, ours / plain / CompressAI ms, ratios, entropy share, PSNR."""
    rat = {(r["width"], r["op"]): r for r in e2e.ratios(res, widths) if r["impl"] == "ours"}
    cai = res.get("compressai") or {}
    lines = ["| width | op | ours fp32 ms | plain fp32 ms | vs plain | vs CompressAI | entropy "
             "share | RD loss vs plain dB |", "|---|---|---|---|---|---|---|---|"]
    for w in widths:
        for op in ("compress", "decompress"):
            r = rat[(w, op)]
            vc = f"{r['speedup_vs_compressai']:.1f}x" if "speedup_vs_compressai" in r else "-"
            lines.append(f"| {w} | {op} | {r['ours_ms']:.1f} | {r['plain_ms']:.1f} | "
                         f"{r['speedup_vs_plain']:.2f}x | {vc} | {100 * r['entropy_share']:.1f} % "
                         f"| {r['rd_loss_vs_plain_db']:.4f} |")
    if cai:
        lines.append(f"\nCompressAI factorized q6, same run: compress {cai['compress_ms']:.1f} ms, "
                     f"decompress {cai['decompress_ms']:.1f} ms.")
    for op in ("compress", "decompress"):
        ms = [rat[(w, op)]["ours_ms"] for w in widths]
        lines.append(f"\n{op}: w={widths[-1]} / w={widths[0]} = {ms[-1] / ms[0]:.3f}; strictly "
                     f"decreasing with width: {all(a > b for a, b in zip(ms, ms[1:]))}")
    return "\n".join(lines)


def main(argv=None) -> str:
    # (the first paragraph: its first line alone stops mid-sentence)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    ap.add_argument("--model", default=None, help="model file (default: the bundled model)")
    ap.add_argument("--widths", default="192,144,96,72,48")
    ap.add_argument("--quick", action="store_true", help="tiny image, 1 repeat (tests)")
    ap.add_argument("--no-compressai", action="store_true")
    ap.add_argument("--out", default=None, help="also write the table to this Markdown file")
    ap.add_argument("--force", action="store_true",
                    help="replace the --out file if it exists (refused without it)")
    ap.add_argument("--no-tune-malloc", action="store_true",
                    help="keep glibc's default thresholds (the CLI tunes them: "
                         "slimkernels.allocator)")
    a = ap.parse_args(argv)
    if a.repeats < 1 or a.threads < 0:
        ap.error(f"--repeats must be at least 1 and --threads at least 0 (0: torch's), got "
                 f"{a.repeats} / {a.threads}")
    try:
        widths = tuple(int(w) for w in a.widths.split(","))
    except ValueError:
        ap.error(f"--widths {a.widths!r}: give comma-separated integers, e.g. 192,48")
    # (a missing folder failed only after the run; a file there was replaced)
    e2e.refuse(ap, a.out and e2e.output_file_error(a.out, "--out", a.force),
               e2e.model_error(a.model))
    if not a.no_tune_malloc:
        from slimkernels.allocator import tune_malloc
        tune_malloc()
    if a.threads:
        torch.set_num_threads(a.threads)
    model, _ = e2e.load_model(a.model)
    # (the codec's ValueError traceback in the first timed call before)
    e2e.refuse(ap, e2e.widths_error(widths, model.widths))
    x = e2e.load_image(quick=a.quick)
    cai = None if a.no_compressai else e2e.make_compressai()
    res = e2e.e2e_timings(model, x, widths, repeats=1 if a.quick else a.repeats,
                          precisions=("fp32",), compressai_model=cai, log=lambda *_: None,
                          burst=2)
    md = table(res, widths)
    print(md)
    if a.out:
        with open(a.out, "w") as f:
            f.write(md + "\n")
    return md


if __name__ == "__main__":
    main()
