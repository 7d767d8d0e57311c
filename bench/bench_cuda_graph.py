"""compress / decompress with ``cuda_graph=False`` and ``True`` on a GPU, side by side.

    python bench/bench_cuda_graph.py                 # on a GPU: bench/results/cuda-<gpu>/cuda_graph.md
    python bench/bench_cuda_graph.py --dry-run --out /tmp/x   # CPU: exercises the script

The bundled model on a Kodak image (kodim01, or ``--image``), widths 192 and 48 by default, fp32
and bf16; each configuration timed right after an untimed call of the same configuration,
all configurations round-robin (``e2e.interleaved``), medians. Both variants must give the same
bytes (checked before timing). On CPU (``--dry-run``) ``cuda_graph`` is ignored by the library:
the two columns then time the same path and say nothing about a GPU.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402

from e2e_cuda import (add_gpu_script_arguments, device_name, gpu_script_options,  # noqa: E402
                      gpu_script_setup, timed_ms, write_result)


def run(widths: List[int], repeats: int, dry_run: bool, image: str = None,
        on_row=None) -> Dict:
    """The table's dict; ``on_row(res)`` after each row with the rows so far (the caller writes
    them: a run a time limit cuts keeps what it measured)."""
    dev, model, desc, x = gpu_script_setup(widths, dry_run, image)
    rows = []
    res = {"device": device_name(dev), "model": desc, "torch": torch.__version__,
           "repeats": repeats, "image": list(x.shape), "dry_run": dev.type != "cuda",
           "rows": rows}
    for width in widths:
        for precision in ("fp32", "bf16"):
            data = model.compress(x, width, precision=precision, cuda_graph=False)
            if model.compress(x, width, precision=precision, cuda_graph=True) != data:
                raise SystemExit(f"error: cuda_graph=True changed the bytes at w={width} "
                                 f"{precision}")
            fns = {"compress": lambda: model.compress(x, width, precision=precision,
                                                      cuda_graph=False),
                   "compress_graph": lambda: model.compress(x, width, precision=precision,
                                                            cuda_graph=True),
                   "decompress": lambda: model.decompress(data, precision=precision,
                                                          cuda_graph=False),
                   "decompress_graph": lambda: model.decompress(data, precision=precision,
                                                                cuda_graph=True)}
            ms = timed_ms(fns, dev, repeats, warmup=2, burst=2)
            row = {"width": width, "precision": precision, **{f"{k}_ms": v for k, v in ms.items()},
                   "compress_speedup": ms["compress"] / ms["compress_graph"],
                   "decompress_speedup": ms["decompress"] / ms["decompress_graph"]}
            rows.append(row)
            print(f"w={width:3d} {precision}: compress {ms['compress']:.3f} -> "
                  f"{ms['compress_graph']:.3f} ms (x{row['compress_speedup']:.2f}), decompress "
                  f"{ms['decompress']:.3f} -> {ms['decompress_graph']:.3f} ms "
                  f"(x{row['decompress_speedup']:.2f})", flush=True)
            if on_row is not None:
                on_row(res)
    return res


def markdown(res: Dict) -> str:
    L = [f"# compress / decompress with CUDA graphs on {res['device']}", "",
         f"`python bench/bench_cuda_graph.py`, torch {res['torch']}, image "
         f"{res['image'][-2]}x{res['image'][-1]}, {res['model']}; medians of {res['repeats']} "
         "interleaved repeats, each after an untimed call of the same configuration; same bytes "
         "with and without (checked).", ""]
    if res["dry_run"]:
        L += ["**Dry run on CPU**: `cuda_graph` is ignored there; says nothing about a GPU.", ""]
    L += ["| width | precision | compress ms | with graph | x | decompress ms | with graph | x |",
          "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        L.append(f"| {r['width']} | {r['precision']} | {r['compress_ms']:.3f} | "
                 f"{r['compress_graph_ms']:.3f} | {r['compress_speedup']:.2f} | "
                 f"{r['decompress_ms']:.3f} | {r['decompress_graph_ms']:.3f} | "
                 f"{r['decompress_speedup']:.2f} |")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_gpu_script_arguments(ap)
    ap.add_argument("--repeats", type=int, default=20, help="interleaved repeats (default 20)")
    a = ap.parse_args(argv)
    opts = gpu_script_options(a, "--repeats", a.repeats, "table")
    if opts == 2:
        return 2
    widths, out = opts
    res = run(widths, a.repeats, a.dry_run, a.image,
              on_row=lambda r: write_result(out, "cuda_graph", r, markdown(r)))
    write_result(out, "cuda_graph", res, markdown(res))
    print(f"wrote {out}/cuda_graph.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
