"""Where the time goes on a GPU: the kernels of one transform or one GDN step, from torch.profiler.

The first GPU run (bench/results/cuda-nvidia-h200) left two questions that medians alone cannot
answer: which of our Triton convolutions make the w=192 transforms slower than cuDNN's, and why a
GDN forward + backward costs ~0.9 ms at every width (ours and eager alike) when its forward costs
0.05-0.09 ms. This script profiles, at each width asked for and in fp32 and bf16:

* ``enc`` / ``dec``: the encoder / decoder transform, ours (Triton) and plain PyTorch (cuDNN);
* ``gdn_fwdbwd``: one GDN layer's forward + backward (``torch.autograd.grad``), ours and eager,

and writes, per case, the kernels sorted by their total device time (with calls and the share of
the case's device time) and the case's wall time per call, so that launch overhead (wall >>
device) and a slow kernel (one row) tell themselves apart.

    python bench/gpu_profile.py                     # CUDA: bench/results/cuda-<gpu>/profile.md
    python bench/gpu_profile.py --dry-run --out D   # CPU, tiny shapes: exercises every path
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402

import e2e  # noqa: E402
from bench_gdn import eager_gdn  # noqa: E402
from e2e_cuda import (add_gpu_script_arguments, autocast, device_name,  # noqa: E402
                      gpu_script_options, gpu_script_setup, write_result)
from plain_slimcae import PlainSlimCAE  # noqa: E402


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def profile_case(fn: Callable[[], object], dev: torch.device, calls: int = 5,
                 top: int = 8) -> Dict:
    """Run ``fn`` twice (warm-up: autotuning, compiles), then ``calls`` times under the profiler.

    Returns ``{"wall_ms": per call, "device_ms": per call (sum of kernel times), "kernels":
    [{"name", "calls", "ms" (per fn call), "share"}...]}`` with the ``top`` kernels by time.
    """
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        fn()
    _sync(dev)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        _sync(dev)
        wall = (time.perf_counter() - t0) / calls * 1e3
    rows = []
    for ev in prof.key_averages():
        if dev.type == "cuda":
            us = getattr(ev, "self_device_time_total", None)
            if us is None:  # older torch
                us = getattr(ev, "self_cuda_time_total", 0.0)
            if getattr(ev, "device_type", None) is not None and "CUDA" not in str(ev.device_type):
                continue
        else:  # dry run: CPU operators stand in for kernels
            us = ev.self_cpu_time_total
            if ev.key.startswith(("ProfilerStep", "<built-in", "cudaDeviceSynchronize")):
                continue
        if us and us > 0:
            rows.append({"name": ev.key[:90], "calls": ev.count // calls,
                         "ms": us / 1e3 / calls})
    rows.sort(key=lambda r: -r["ms"])
    total = sum(r["ms"] for r in rows)
    for r in rows:
        r["share"] = r["ms"] / total if total else 0.0
    return {"wall_ms": wall, "device_ms": total, "kernels": rows[:top]}


@torch.no_grad()
def _transform_cases(ours, plain, x, width, dt, dev) -> Dict[str, Callable]:
    eb = ours.entropy_bottleneck.for_width(width)
    y_hat = eb.dequantize_symbols(eb.quantize_symbols(ours.encode(x, width)))

    def ac(f):
        return torch.no_grad()(autocast(f, dev.type, dt))
    return {"enc_ours": ac(lambda: ours.encode(x, width)),
            "enc_eager": ac(lambda: plain.encode(x, width)),
            "dec_ours": ac(lambda: ours.decode(y_hat)),
            "dec_eager": ac(lambda: plain.decode(y_hat))}


def _gdn_cases(C, H, W, dt, dev) -> Dict[str, Callable]:
    from slimkernels.ops import gdn

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, C, H, W, generator=g).to(dev, dt)
    beta = (torch.rand(C, generator=g) + 0.5).to(dev).requires_grad_(True)
    gamma = (torch.rand(C, C, generator=g) * 0.1).to(dev).requires_grad_(True)
    xg = x.clone().requires_grad_(True)
    dy = torch.randn_like(x)

    def step(f):
        return lambda: torch.autograd.grad(f(xg, beta, gamma), (xg, beta, gamma), dy)
    backend = "triton" if dev.type == "cuda" else None
    return {"gdn_fwdbwd_ours": step(lambda a, b, c: gdn(a, b, c, backend=backend)),
            "gdn_fwdbwd_eager": step(eager_gdn)}


def run(widths: List[int], dry_run: bool, image: str = None, calls: int = 5,
        dtypes=(torch.float32, torch.bfloat16), on_case=None) -> Dict:
    """Profile each case; ``on_case(result_so_far)`` after each (a time-limited run keeps what
    it measured)."""
    dev, model, desc, x = gpu_script_setup(widths, dry_run, image)
    plain = PlainSlimCAE.from_model(model).to(dev).eval()
    H, W = (x.shape[-2] // 16) * 16, (x.shape[-1] // 16) * 16
    x = x[..., :H, :W].to(dev).contiguous()
    gdn_hw = (8, 12) if dry_run else (256, 384)  # the first GDN of the encoder at 768x512
    cases = []
    res = {"device": device_name(dev), "model": desc, "image": [H, W], "torch": torch.__version__,
           "dry_run": dev.type != "cuda", "cases": cases}
    for width in widths:
        for dt in dtypes:
            fns = {**_transform_cases(model, plain, x, width, dt, dev),
                   **_gdn_cases(width, *gdn_hw, dt, dev)}
            for name, fn in fns.items():
                r = profile_case(fn, dev, calls=1 if dry_run else calls)
                cases.append({"case": name, "width": width, "dtype": str(dt)[6:], **r})
                print(f"{name:>18} w={width:3d} {str(dt)[6:]:>8}: wall {r['wall_ms']:.3f} ms, "
                      f"device {r['device_ms']:.3f} ms", flush=True)
                if on_case is not None:
                    on_case(res)
    return res


def markdown(res: Dict) -> str:
    L = [f"# Kernel profile on {res['device']}", "",
         f"`python bench/gpu_profile.py`, torch {res['torch']}, image {res['image'][0]}x"
         f"{res['image'][1]}, {res['model']}. Per case: wall time per call (host clock, "
         "synchronised) and device time (sum of the kernels' times); then the kernels by total "
         "time per call. Wall >> device: launch-bound.", ""]
    if res["dry_run"]:
        L += ["**Dry run on CPU** (tiny shapes, CPU operators in place of kernels): says nothing "
              "about GPU speed.", ""]
    for c in res["cases"]:
        L += [f"## {c['case']} w={c['width']} {c['dtype']}: wall {c['wall_ms']:.3f} ms, device "
              f"{c['device_ms']:.3f} ms", "", "| kernel | calls | ms | share |", "|---|---|---|---|"]
        L += [f"| `{k['name']}` | {k['calls']} | {k['ms']:.4f} | {100 * k['share']:.0f} % |"
              for k in c["kernels"]]
        L.append("")
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_gpu_script_arguments(ap)
    ap.add_argument("--calls", type=int, default=5, help="profiled calls per case (default 5)")
    ap.add_argument("--dtypes", default="fp32,bf16", help="fp32 and/or bf16 (default both)")
    a = ap.parse_args(argv)
    opts = gpu_script_options(a, "--calls", a.calls, "profile")
    if opts == 2:
        return 2
    widths, out = opts
    known = {"fp32": torch.float32, "bf16": torch.bfloat16}
    dtypes = [known.get(d.strip()) for d in a.dtypes.split(",") if d.strip()]
    if not dtypes or None in dtypes:
        print(f"error: --dtypes takes fp32 and/or bf16, got {a.dtypes!r}", file=sys.stderr)
        return 2

    def write(res):  # after every case: a run cut by a time limit keeps its cases
        write_result(out, "profile", res, markdown(res) + "\n")

    write(run(widths, a.dry_run, a.image, a.calls, dtypes, on_case=write))
    print(f"wrote {out}/profile.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
