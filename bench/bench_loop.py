"""``compress`` / ``decompress`` in a loop over images, as a batch job runs them, against the same
calls repeated back to back (what ``bench/report.py`` times), side by side, per width.

Why this exists: on the 2-core AMX VM, code and data not touched for ~10 ms fall out of the
caches, and a call then takes 2-4 calls to reach its steady state (docs/performance.md, sitting
43). A loop over images (read one, code it, read the next) pays that on every call; the
narrow widths, whose calls are short, pay the most. In one process, for every image of the set
and every width (widths in a new order per image, fixed seed):

* ``after a read``: the call right after reading the next image from disk
  (:func:`slimkernels.io.read_image`, ~10 ms of other work here) - ``compress`` of that image,
  ``decompress`` of the file the previous round wrote for it;
* ``back to back``: the same call again at once (as ``bench/report.py`` times a call: right
  after one call of the same configuration; on this VM not yet the steady state of a longer
  run of calls).

Medians in ms, and each width's ratio to the widest, per column; every number from this run.

Usage: ``python bench/bench_loop.py [--images DIR] [--limit 24] [--rounds 2] [--threads 2]
[--widths 192,144,96,72,48] [--out bench/results/cpu/loop.md]`` (``--dry-run``: a random tiny
model on two 64x96 images written to a temporary folder, to check that the code runs).
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Sequence

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import e2e  # noqa: E402
from slimkernels.io import read_image  # noqa: E402
from slimkernels.training.data import list_images  # noqa: E402

#: The table's columns: (op, case).
COLUMNS = (("compress", "after a read"), ("compress", "back to back"),
           ("decompress", "after a read"), ("decompress", "back to back"))


def measure(model, paths: Sequence[str], widths: Sequence[int], rounds: int,
            precision: str = "auto", seed: int = 0) -> Dict:
    """``{(width, op, case): [ms per call]}`` (COLUMNS' ops and cases) over ``rounds`` passes
    of ``paths`` (PNG / image files) at every width; the first pass is warm-up (the CPU replay
    records at a key's second call, the caches fill) and not kept when ``rounds > 1``. Also
    ``("read", None, None)``: the image reads' ms."""
    out: Dict = {}
    files: Dict = {}
    rng = random.Random(seed)
    order = list(widths)
    for r in range(rounds):
        keep = rounds == 1 or r > 0
        for p in paths:
            rng.shuffle(order)
            for w in order:
                for op in ("compress", "decompress"):
                    t = time.perf_counter()
                    x, _ = read_image(p)
                    t_read = time.perf_counter() - t
                    call = (lambda: model.compress(x, w, precision=precision)) \
                        if op == "compress" else \
                        (lambda: model.decompress(files[(p, w)], precision=precision))
                    t0 = time.perf_counter()
                    y = call()
                    t1 = time.perf_counter()
                    call()
                    t2 = time.perf_counter()
                    if op == "compress":
                        files[(p, w)] = y
                    if keep:
                        out.setdefault((w, op, "after a read"), []).append((t1 - t0) * 1e3)
                        out.setdefault((w, op, "back to back"), []).append((t2 - t1) * 1e3)
                        out.setdefault(("read", None, None), []).append(t_read * 1e3)
    return out


def table(times: Dict, widths: Sequence[int]) -> str:
    """The Markdown table of :func:`measure`'s times: medians, and each width's ratio to the
    first of ``widths``."""
    head = "| width | " + " | ".join(f"{op} {case} ms" for op, case in COLUMNS) + " | " + \
        " | ".join(f"{op} {case} / w={widths[0]}" for op, case in COLUMNS) + " |"
    lines = [head, "|" + " --- |" * (1 + 2 * len(COLUMNS))]
    med = {k: statistics.median(v) for k, v in times.items()}
    for w in widths:
        ms = [med[(w, op, case)] for op, case in COLUMNS]
        rel = [med[(w, op, case)] / med[(widths[0], op, case)] for op, case in COLUMNS]
        lines.append(f"| {w} | " + " | ".join(f"{v:.2f}" for v in ms) + " | " +
                     " | ".join(f"{v:.3f}" for v in rel) + " |")
    return "\n".join(lines)


def _dry_images(folder: str) -> List[str]:
    from PIL import Image
    paths = []
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        a = (torch.rand(64, 96, 3, generator=g) * 255).to(torch.uint8).numpy()
        paths.append(os.path.join(folder, f"dry{i}.png"))
        Image.fromarray(a).save(paths[-1])
    return paths


def check_args(ap: argparse.ArgumentParser, a) -> List[int]:
    """Refuse bad options with ``ap.error`` (one line, exit status 2) before anything is
    measured: ``--rounds`` / ``--threads`` / ``--limit`` < 1 (``--rounds 0`` was a KeyError after
    the run), ``--widths`` that are not integers, and an ``--out`` file whose folder is missing
    (found only after the whole run) or that exists without ``--force``. Returns the widths."""
    for name, v in (("--rounds", a.rounds), ("--threads", a.threads), ("--limit", a.limit)):
        if v < 1:
            ap.error(f"{name} must be at least 1, got {v}")
    try:
        widths = [int(w) for w in a.widths.split(",")]
    except ValueError:
        ap.error(f"--widths {a.widths!r}: give comma-separated integers, e.g. 192,48")
    e2e.refuse(ap, a.out and e2e.output_file_error(a.out, "--out", a.force),
               not a.dry_run and e2e.model_error(a.model))
    return widths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", default=e2e.KODAK, help="folder of images (default: Kodak)")
    ap.add_argument("--limit", type=int, default=24, help="at most this many images")
    ap.add_argument("--rounds", type=int, default=2, help="passes over the images (the first "
                    "is warm-up when more than one)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--widths", default="192,144,96,72,48")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--model", default=None, help="model file (default: the bundled one)")
    ap.add_argument("--out", default=None, help="also write the table (Markdown) here")
    ap.add_argument("--force", action="store_true",
                    help="replace the --out file if it exists (refused without it)")
    ap.add_argument("--dry-run", action="store_true",
                    help="random tiny model, two 64x96 images in a temporary folder")
    a = ap.parse_args(argv)
    widths = check_args(ap, a)
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if a.dry_run:
            from slimkernels.models import SlimCAE
            torch.manual_seed(0)
            model = SlimCAE(widths=(24, 16)).eval()
            model.update()
            widths = [24, 16]
            paths = _dry_images(tmp)
        else:
            try:   # (the image files of the folder, as the trainer and the evaluation list them)
                paths = list_images(a.images)[:a.limit]
            except ValueError as e:
                print(f"bench_loop: {e}", file=sys.stderr)
                return 2
            model = e2e.load_model(a.model)[0].eval()
            # (the codec's ValueError traceback at the first call before)
            e2e.refuse(ap, e2e.widths_error(widths, model.widths))
        from slimkernels.allocator import tune_malloc
        tune_malloc()   # (as the command-line tools do)
        times = measure(model, paths, widths, a.rounds, a.precision)
    reads = statistics.median(times[("read", None, None)])
    text = (f"`python bench/bench_loop.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
            f": {len(paths)} images, {a.rounds} round(s), {a.threads} thread(s), precision "
            f"{a.precision}, torch {torch.__version__}; an image read took {reads:.1f} ms "
            f"(median)\n\n" + table(times, widths) + "\n")
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
