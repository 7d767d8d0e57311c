#!/usr/bin/env python
"""Interleaved A/B of ``compress`` / ``decompress`` between two checkouts of slimkernels.

Python-level changes (dispatch, caches, checks) cannot be loaded side by side in one process as
an extension file can (``bench/ab_builds.py``), and this VM's speed drifts by up to 2x within
minutes. So each round runs one child process per checkout (the order alternates between
rounds); a child imports slimkernels from its checkout, loads that checkout's bundled model,
and times ``compress`` and ``decompress`` of the top-left ``size x size`` crop of the image
(size 0: the whole image) at each width: medians of repeated calls after warm-up calls. The
table reports the median over rounds of each checkout's medians and the speed-up of this
checkout (``--new``, default: the one this script is in) over ``--base``.

Make the base checkout with its extensions built, e.g.::

    git worktree add /tmp/base <commit> && cp slimkernels/*.so /tmp/base/slimkernels/
    python bench/ab_checkouts.py --base /tmp/base --sizes 64,128,256,0 --widths 48,192

(copying the ``.so`` files is right when csrc/ did not change between the two; else build the
base: ``cd /tmp/base && python setup.py build_ext --inplace``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _child(repo: str, sizes: List[int], widths: List[int], precision: str, threads: int,
           image: str, calls: int) -> Dict[str, Tuple[float, float]]:
    """In a child process: ``{"size,width": (compress ms, decompress ms)}`` for the checkout at
    ``repo`` (medians of ``calls`` calls each; a Kodak-size image gets at most 8)."""
    sys.path.insert(0, repo)
    import torch

    import slimkernels
    if not os.path.abspath(slimkernels.__file__).startswith(os.path.abspath(repo) + os.sep):
        raise SystemExit(f"ab_checkouts: imported slimkernels from {slimkernels.__file__}, not "
                         f"from {repo}: is the checkout complete?")
    from slimkernels import allocator
    from slimkernels.pretrained import load_model
    sys.path.insert(0, HERE)
    from e2e import load_image, widths_error

    allocator.tune_malloc()
    torch.set_num_threads(threads)
    model = load_model()
    bad = widths_error(widths, model.widths, whose=f"the model of {repo}")
    if bad:   # (the parent checks the model files first; this is for one it could not read)
        raise SystemExit(f"ab_checkouts: {bad}")
    img = load_image(image)
    out = {}
    for s in sizes:
        x = img if s == 0 else img[..., :s, :s].contiguous()
        n = min(calls, 8) if x.shape[-1] * x.shape[-2] > 256 * 256 else calls
        for w in widths:
            data = model.compress(x, width=w, precision=precision)
            for _ in range(3):
                model.compress(x, width=w, precision=precision)
                model.decompress(data, precision=precision)
            tc, td = [], []
            for _ in range(n):
                t = time.perf_counter()
                model.compress(x, width=w, precision=precision)
                tc.append(time.perf_counter() - t)
                t = time.perf_counter()
                model.decompress(data, precision=precision)
                td.append(time.perf_counter() - t)
            out[f"{s},{w}"] = (statistics.median(tc) * 1e3, statistics.median(td) * 1e3)
    return out


def model_widths(repo: str):
    """The widths of the bundled model of the checkout at ``repo`` (read from its model file,
    without importing that checkout), or None where the file is not there or not readable (the
    child then checks them itself)."""
    path = os.path.join(repo, "slimkernels", "pretrained", "slimcae.pt")
    try:
        import torch
        obj = torch.load(path, map_location="cpu", weights_only=True)
        return [int(w) for w in obj["config"]["widths"]]
    except Exception:   # (an older or newer file layout: no up-front check for it)
        return None


def _run_child(repo: str, a) -> Dict[str, Tuple[float, float]]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", repo, "--sizes", a.sizes,
           "--widths", a.widths, "--precision", a.precision, "--threads", str(a.threads),
           "--calls", str(a.calls)] + (["--image", a.image] if a.image else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"ab_checkouts: the child for {repo} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def table(res: Dict[str, Dict[str, Tuple[List[float], List[float]]]], keys: List[str]) -> str:
    """Markdown rows: per ``size,width``, the median over rounds of each checkout's medians and
    the speed-up of ``new`` over ``base`` (base time / new time)."""
    lines = ["| image | width | compress new / base ms | speed-up | decompress new / base ms "
             "| speed-up |", "|---|---|---|---|---|---|"]
    for k in keys:
        s, w = k.split(",")
        (cn, dn), (cb, db) = ((statistics.median(res[r][k][0]), statistics.median(res[r][k][1]))
                              for r in ("new", "base"))
        img = "whole" if s == "0" else f"{s}x{s}"
        lines.append(f"| {img} | {w} | {cn:.3f} / {cb:.3f} | {cb / cn:.3f}x | "
                     f"{dn:.3f} / {db:.3f} | {db / dn:.3f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", help="the other checkout (its extensions built)")
    ap.add_argument("--new", default=ROOT, help="this checkout (default: the one of this script)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--sizes", default="64,128,256,0",
                    help="comma-separated crop sizes (0: the whole image)")
    ap.add_argument("--widths", default="48,192")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=60, help="timed calls per configuration")
    ap.add_argument("--image", default=None, help="image (default Kodak kodim01)")
    ap.add_argument("--md", default=None, help="also write the table to this Markdown file")
    ap.add_argument("--force", action="store_true",
                    help="replace the --md file if it exists (refused without it)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    sizes = [int(v) for v in a.sizes.split(",")]
    widths = [int(v) for v in a.widths.split(",")]
    if min(sizes) < 0 or min(widths) < 1 or a.rounds < 1 or a.calls < 1:
        ap.error("sizes must be >= 0 and widths, --rounds and --calls >= 1")
    if a.child is not None:
        print(json.dumps(_child(a.child, sizes, widths, a.precision, a.threads, a.image,
                                a.calls)))
        return 0
    if a.base is None:
        ap.error("--base is required: the checkout to compare with")
    for p in (a.base, a.new):
        if not os.path.isdir(os.path.join(p, "slimkernels")):
            ap.error(f"{p} is not a slimkernels checkout (no slimkernels/ in it)")
    sys.path.insert(0, HERE)
    from e2e import image_error, output_file_error, refuse, widths_error
    # (before the rounds: a missing --image was timed as noise, an existing --md table was
    # replaced, a missing folder failed late)
    refuse(ap, image_error(a.image), a.md and output_file_error(a.md, "--md", a.force))
    for p in (a.new, a.base):   # (the codec's ValueError in a child, as a traceback, before)
        have = model_widths(p)
        refuse(ap, have is not None and widths_error(widths, have, whose=f"the model of {p}"))
    keys = [f"{s},{w}" for s in sizes for w in widths]
    res = {r: {k: ([], []) for k in keys} for r in ("new", "base")}
    for i in range(a.rounds):
        order = ("new", "base") if i % 2 == 0 else ("base", "new")
        for r in order:
            for k, (c, d) in _run_child(a.new if r == "new" else a.base, a).items():
                res[r][k][0].append(c)
                res[r][k][1].append(d)
    md = table(res, keys)
    cmd = "python bench/ab_checkouts.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = (f"`{cmd}`: {a.rounds} rounds, precision {a.precision}, {a.threads} threads; new = "
            f"{os.path.abspath(a.new)}, base = {os.path.abspath(a.base)}\n\n{md}\n")
    print(text)
    if a.md:
        with open(a.md, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
