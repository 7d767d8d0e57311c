"""GDN / IGDN benchmark: static H100 table, CUDA timings (when a GPU is present), CPU timings.

    python bench/bench_gdn.py                 # static table + CPU timings (+ CUDA if available)
    python bench/bench_gdn.py --dry-run       # tiny shapes, every section exercised, quick
    python bench/bench_gdn.py --no-cpu        # skip the CPU timings

Every speed result is a ratio against the alternative measured in the same run:
* CPU: ``slimkernels.ops.gdn`` (the fused AMX-BF16 C++ kernel where the CPU has AMX, the fp32
  AVX2 kernel for fp32 channels_last on CPUs without AMX, else the PyTorch path) vs the eager composition (x^2 -> F.conv2d 1x1 on the sliced gamma -> rsqrt ->
  mul) and vs the PyTorch path ``gdn_torch``, medians of interleaved repeats, with the max
  relative errors vs float64.
* CUDA: the fused Triton kernels vs eager and ``torch.compile`` of eager, forward and
  forward+backward, ``triton.testing.do_bench`` medians, next to the memory floor.
Writes ``bench/results/cpu/gdn.json`` and ``gdn.md`` (CPU + static), and
``bench/results/cuda/gdn.json`` / ``.md`` when a GPU ran.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_conv import interleaved_medians  # noqa: E402
from slimkernels.ops import gdn  # noqa: E402
from slimkernels.ops.gdn import gdn_torch  # noqa: E402

_gdn_mod = sys.modules["slimkernels.ops.gdn"]  # the module (slimkernels.ops.gdn is the function)

WIDTHS = [192, 144, 96, 72, 48]
C_MAX = 192
GPU_SHAPES = [(1, 256, 384), (8, 128, 128)]  # (N, H, W); C = width
CPU_SHAPES = [(1, 128, 192)]  # the first GDN of the encoder on a 768x512 image
H100_BW = 3.0e12  # bytes/s, copy bandwidth
H100_TF32 = 400e12  # FLOP/s, dense TF32 tensor cores (usable)
H100_BF16 = 800e12  # FLOP/s, dense BF16 tensor cores (usable)
# ANCHORS.md, GDN eager / torch.compile on one H100, fp32 (TF32 allowed), ms
ANCHOR_MS = {((1, 256, 384), 192): (0.314, 0.199), ((1, 256, 384), 48): (0.079, 0.179),
             ((8, 128, 128), 192): (0.421, 0.421)}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def eager_gdn(x, beta, gamma, inverse=False):
    """The composition users write (CompressAI's GDN): 4 kernels, sliced gamma as conv weight."""
    C = x.shape[1]
    n = F.conv2d(x * x, gamma[:C, :C, None, None].to(x.dtype), beta[:C].to(x.dtype))
    return x * torch.sqrt(n) if inverse else x * torch.rsqrt(n)


def make_params(device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    beta = torch.rand(C_MAX, generator=g) + 0.5
    gamma = torch.rand(C_MAX, C_MAX, generator=g) * 0.1
    return beta.to(device), gamma.to(device)


# ----------------------------------------------------------------------------------- static
def static_row(N, H, W, C, esize=4, peak=H100_TF32):
    """Bytes, FLOPs and H100 floor for one GDN layer (forward, and forward+backward)."""
    P = N * H * W
    act = P * C * esize
    params = (C * C + C) * 4
    fwd_bytes = 2 * act + params  # read x, write y
    fwd_flops = 2 * C * C * P + 4 * C * P  # GEMM + square, bias, rsqrt, mul
    bwd_bytes = fwd_bytes + 3 * act + params  # + read x, dy; write dx (scratch not counted)
    bwd_flops = fwd_flops + 3 * 2 * C * C * P + 8 * C * P  # recompute n, dx GEMM, dgamma GEMM
    floor = lambda b, f: max(b / H100_BW, f / peak) * 1e3  # noqa: E731
    return {"shape": f"{N}x{C}x{H}x{W}", "N": N, "C": C, "H": H, "W": W,
            "fwd_MB": fwd_bytes / 1e6, "fwd_GFLOP": fwd_flops / 1e9,
            "fwd_floor_ms": floor(fwd_bytes, fwd_flops),
            "fwdbwd_MB": bwd_bytes / 1e6, "fwdbwd_GFLOP": bwd_flops / 1e9,
            "fwdbwd_floor_ms": floor(bwd_bytes, bwd_flops),
            "anchor_eager_ms": ANCHOR_MS.get(((N, H, W), C), (None, None))[0],
            "anchor_compile_ms": ANCHOR_MS.get(((N, H, W), C), (None, None))[1]}


def static_table(shapes=GPU_SHAPES, widths=WIDTHS):
    rows = []
    for (N, H, W) in shapes:
        for C in widths:
            for dt, es, peak in (("fp32", 4, H100_TF32), ("bf16", 2, H100_BF16)):
                r = static_row(N, H, W, C, es, peak)
                r["dtype"] = dt
                rows.append(r)
    return rows


# ------------------------------------------------------------------------------------- CPU
def _rel_err(y, ref):
    return ((y.double() - ref).abs().max() / ref.abs().max()).item()


def _elem_err(y, ref):
    """max elementwise relative error (NaN counts as infinite)."""
    e = ((y.double() - ref).abs() / ref.abs()).max().item()
    return float("inf") if e != e else e


def cpu_timings(shapes=CPU_SHAPES, widths=WIDTHS, reps=9, backward=False):
    """Forward (inference, no_grad) on CPU: slimkernels.ops.gdn vs eager, same run."""
    beta, gamma = make_params()
    rows = []
    # machine warm-up (~0.5 s: clocks, the allocator, oneDNN's and AMX's first use); without it
    # the first rows of a run measured up to 2x slower for every variant
    N, H, W = shapes[0]
    xw = torch.randn(N, max(widths), H, W)
    t_end = time.perf_counter() + 0.5
    with torch.no_grad():
        while time.perf_counter() < t_end:
            eager_gdn(xw, beta, gamma), gdn(xw, beta, gamma), gdn(xw.bfloat16(), beta, gamma)
    del xw
    for (N, H, W) in shapes:
        for C in widths:
            for dt in (torch.float32, torch.bfloat16):
                for layout in ("nchw", "channels_last"):
                    x = torch.randn(N, C, H, W, generator=torch.Generator().manual_seed(C))
                    x = x.to(dt)
                    if layout == "channels_last":
                        x = x.contiguous(memory_format=torch.channels_last)
                    ref = eager_gdn(x.double(), beta.double(), gamma.double())
                    with torch.no_grad():
                        y_ours, y_eager = gdn(x, beta, gamma), eager_gdn(x, beta, gamma)
                        path = {"fused": "fused-amx", "avx512-bf16": "avx512-bf16",
                                "avx2": "avx2-bf16" if dt == torch.bfloat16 else "avx2-fp32"}.get(
                            _gdn_mod.last_cpu_path, "torch")
                        y_torch = gdn_torch(x, beta, gamma)
                        errs = {k: (_rel_err(v, ref), _elem_err(v, ref)) for k, v in
                                (("ours", y_ours), ("eager", y_eager), ("torch", y_torch))}
                        del y_ours, y_eager, y_torch
                        # (the contenders in a new order every round: a fixed order biased a
                        # null A/B by 1.04-1.15x on this project's 2-core VM)
                        tmin = {}
                        t = interleaved_medians({"eager": lambda: eager_gdn(x, beta, gamma),
                                                 "ours": lambda: gdn(x, beta, gamma),
                                                 "torch": lambda: gdn_torch(x, beta, gamma)},
                                                reps, warmup=2, mins=tmin)
                    row = {"shape": f"{N}x{C}x{H}x{W}", "C": C, "dtype": str(dt)[6:],
                           "layout": layout, "pass": "fwd", "eager_ms": t["eager"],
                           "ours_ms": t["ours"], "speedup": t["eager"] / t["ours"],
                           "torch_ms": t["torch"],
                           "speedup_vs_torch": t["torch"] / t["ours"],
                           "path": path,
                           "eager_min_ms": tmin["eager"], "ours_min_ms": tmin["ours"],
                           "speedup_min": tmin["eager"] / tmin["ours"], "reps": reps,
                           "err_ours": errs["ours"][0], "err_eager": errs["eager"][0],
                           "err_torch": errs["torch"][0], "err_ours_elem": errs["ours"][1],
                           "err_eager_elem": errs["eager"][1], "err_torch_elem": errs["torch"][1]}
                    rows.append(row)
                    print(f"cpu {row['shape']:>14} {row['dtype']:>8} {layout:>13} fwd  "
                          f"eager {row['eager_ms']:8.2f} ms  ours {row['ours_ms']:8.2f} ms  "
                          f"x{row['speedup']:.2f} (min: x{row['speedup_min']:.2f})  "
                          f"torch path {row['torch_ms']:8.2f} ms  "
                          f"err {row['err_ours_elem']:.1e} (eager {row['err_eager_elem']:.1e})",
                          flush=True)
    return rows


def cpu_train_timings(shapes=((8, 32, 32),), widths=WIDTHS, reps=9):
    """Forward + backward on CPU (fp32, and fp32 x under bf16 autocast as in training):
    slimkernels.ops.gdn vs the eager composition through autograd, same run."""
    beta0, gamma0 = make_params()
    rows = []
    for (N, H, W) in shapes:
        for C in widths:
            for mode in ("fp32", "autocast-bf16"):
                for layout in ("nchw", "channels_last"):
                    x = torch.randn(N, C, H, W, generator=torch.Generator().manual_seed(C))
                    if layout == "channels_last":
                        x = x.contiguous(memory_format=torch.channels_last)
                    x.requires_grad_(True)
                    beta = beta0.clone().requires_grad_(True)
                    gamma = gamma0.clone().requires_grad_(True)
                    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))

                    def step(f):
                        with torch.autocast("cpu", dtype=torch.bfloat16,
                                            enabled=mode != "fp32"):
                            y = f(x, beta, gamma)
                        torch.autograd.grad(y, (x, beta, gamma), dy.to(y.dtype))
                    t = interleaved_medians({"eager": lambda: step(eager_gdn),
                                             "ours": lambda: step(gdn)}, reps, warmup=2)
                    row = {"shape": f"{N}x{C}x{H}x{W}", "C": C, "dtype": mode, "layout": layout,
                           "pass": "fwd+bwd", "eager_ms": t["eager"],
                           "ours_ms": t["ours"], "speedup": t["eager"] / t["ours"]}
                    rows.append(row)
                    print(f"cpu {row['shape']:>12} {mode:>13} {layout:>13} fwd+bwd eager "
                          f"{row['eager_ms']:8.2f} ms  ours {row['ours_ms']:8.2f} ms  "
                          f"x{row['speedup']:.2f}", flush=True)
    return rows


def cpu_train_md(rows):
    out = ["| shape | mode | layout | eager ms | slimkernels ms | speedup (medians) |",
           "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r['shape']} | {r['dtype']} | {r['layout']} | {r['eager_ms']:.2f} | "
                   f"{r['ours_ms']:.2f} | **x{r['speedup']:.2f}** |")
    return "\n".join(out)


# ------------------------------------------------------------------------------------ CUDA
def cuda_timings(shapes=GPU_SHAPES, widths=WIDTHS, device="cuda", timer=None,
                 use_compile=True, on_row=None):
    """Forward and forward+backward: fused Triton vs eager vs torch.compile(eager), + floor.

    ``timer(fn) -> ms``; defaults to ``triton.testing.do_bench`` (median). ``device="cpu"``
    with a CPU timer is the dry run that exercises this code without a GPU. ``on_row(rows)``:
    called with the rows so far after each one (the caller writes them: a cut run keeps them).
    """
    if timer is None:
        from triton.testing import do_bench

        def timer(fn):
            return do_bench(fn, warmup=25, rep=100, return_mode="median")
    beta, gamma = make_params(device)
    compiled = torch.compile(eager_gdn) if use_compile else None
    rows = []
    for (N, H, W) in shapes:
        for C in widths:
            for dt in (torch.float32, torch.bfloat16):
                x = torch.randn(N, C, H, W, device=device, dtype=dt)
                st = static_row(N, H, W, C, x.element_size(),
                                H100_TF32 if dt == torch.float32 else H100_BF16)
                impls = {"fused": lambda x, b, g: gdn(x, b, g), "eager": eager_gdn}
                if compiled is not None:
                    impls["compile"] = compiled
                res = {}
                for name, f in impls.items():
                    with torch.no_grad():
                        res[f"{name}_fwd_ms"] = timer(lambda: f(x, beta, gamma))
                    xg = x.detach().clone().requires_grad_(True)
                    bg = beta.detach().clone().requires_grad_(True)
                    gg = gamma.detach().clone().requires_grad_(True)
                    dy = torch.randn_like(x)

                    def step():
                        y = f(xg, bg, gg)
                        torch.autograd.grad(y, (xg, bg, gg), dy)
                    res[f"{name}_fwdbwd_ms"] = timer(step)
                row = {"shape": f"{N}x{C}x{H}x{W}", "C": C, "dtype": str(dt)[6:], **res,
                       "fwd_floor_ms": st["fwd_floor_ms"],
                       "fwdbwd_floor_ms": st["fwdbwd_floor_ms"],
                       "fwd_speedup_vs_eager": res["eager_fwd_ms"] / res["fused_fwd_ms"],
                       "fwdbwd_speedup_vs_eager": res["eager_fwdbwd_ms"] / res["fused_fwdbwd_ms"],
                       "fwd_vs_floor": res["fused_fwd_ms"] / st["fwd_floor_ms"]}
                rows.append(row)
                if on_row is not None:
                    on_row(rows)
                print(f"{device} {row['shape']:>14} {row['dtype']:>8} fwd fused "
                      f"{res['fused_fwd_ms']:.3f} eager {res['eager_fwd_ms']:.3f} ms "
                      f"(x{row['fwd_speedup_vs_eager']:.2f}, {row['fwd_vs_floor']:.1f}x floor) "
                      f"fwd+bwd x{row['fwdbwd_speedup_vs_eager']:.2f}", flush=True)
    return rows


def write_cuda(folder: str, device_name: str, rows, partial: bool = False) -> None:
    """``<folder>/gdn.json`` and ``gdn.md`` of the CUDA rows, each replaced in one step (written
    again after every row: a run cut by its time limit keeps complete files, marked PARTIAL)."""
    from slimkernels.io import atomic_write_bytes
    os.makedirs(folder, exist_ok=True)
    atomic_write_bytes(os.path.join(folder, "gdn.json"), json.dumps(
        {"env": env_info(), "rows": rows, "partial": partial}, indent=1).encode(), overwrite=True)
    cut = (f"PARTIAL: the run ended (its time limit) after these {len(rows)} rows.\n\n"
           if partial else "")
    atomic_write_bytes(os.path.join(folder, "gdn.md"), (
        f"# GDN on {device_name}\n\n" + cut + cuda_md(rows) + "\n").encode(), overwrite=True)


# ------------------------------------------------------------------------------------- AOT
def aot_table(dtypes=("float32", "bfloat16"), layouts=("nchw", "channels_last"), archs=(90, 80)):
    """Compile every GDN kernel x autotune config for sm_90 / sm_80 (no GPU needed).

    Runs in a subprocess with TRITON_INTERPRET=0. Returns rows with registers, spills, shared
    memory and tensor-core instruction counts (see slimkernels/kernels/aot.py).
    """
    import json as _json
    import textwrap

    from slimkernels.kernels.aot import run_in_subprocess
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {os.path.abspath(root)!r})
        import torch
        from slimkernels.kernels.gdn import aot_specs
        from slimkernels.kernels.aot import compile_for_target, tensor_core_ops
        out = []
        for dt in {list(dtypes)!r}:
            for layout in {list(layouts)!r}:
                for sp in aot_specs(getattr(torch, dt), layout=layout):
                    for arch in {list(archs)!r}:
                        r = compile_for_target(sp["kernel"], sp["signature"], sp["constexprs"],
                                               arch, num_warps=sp["num_warps"],
                                               num_stages=sp["num_stages"],
                                               divisible_by_16=sp["divisible_by_16"])
                        out.append(dict(kernel=sp["name"], dtype=dt, layout=layout, arch=arch,
                                        config=sp["config"], n_regs=r["n_regs"],
                                        n_spills=r["n_spills"], spill_ops=r["spill_ops"],
                                        shared=r["shared"],
                                        **tensor_core_ops(r["sass"])))
        print(json.dumps(out))
    """)
    rows = run_in_subprocess(code, timeout=6000)
    _json.dumps(rows)
    return rows


def aot_md(rows):
    out = ["| kernel | config (BLOCK_*, warps, stages) | dtype | layout | sm | regs | spills (B) | "
           "spill instructions | shared (KB) | HMMA | HGMMA |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        c = r["config"]
        cfg = ",".join(f"{k[6:]}={v}" for k, v in c["kwargs"].items())
        out.append(f"| {r['kernel']} | {cfg}, w{c['num_warps']}, s{c['num_stages']} | "
                   f"{r['dtype']} | {r['layout']} | {r['arch']} | {r['n_regs']} | {r['n_spills']} | "
                   f"{r.get('spill_ops', '-')} | "
                   f"{r['shared'] / 1024:.0f} | {r['HMMA']} | {r['HGMMA']} |")
    return "\n".join(out)


# ---------------------------------------------------------------------------------- output
def _fmt(v, nd=3):
    return "-" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def static_md(rows):
    out = ["| shape | dtype | fwd MB | fwd GFLOP | fwd floor ms | fwd+bwd MB | fwd+bwd GFLOP | "
           "fwd+bwd floor ms | eager ms (ANCHORS) | torch.compile ms (ANCHORS) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        anchor = r["dtype"] == "fp32"
        out.append(f"| {r['shape']} | {r['dtype']} | {r['fwd_MB']:.1f} | {r['fwd_GFLOP']:.2f} | "
                   f"{r['fwd_floor_ms']:.4f} | {r['fwdbwd_MB']:.1f} | {r['fwdbwd_GFLOP']:.2f} | "
                   f"{r['fwdbwd_floor_ms']:.4f} | "
                   f"{_fmt(r['anchor_eager_ms'] if anchor else None)} | "
                   f"{_fmt(r['anchor_compile_ms'] if anchor else None)} |")
    return "\n".join(out)


def cpu_md(rows):
    out = ["| shape | dtype | layout | path | eager ms (median) | ops.gdn ms (median) | speedup vs "
           "eager (medians) | speedup (best of each) | torch-path ms | ops.gdn vs torch path | "
           "max elementwise rel err vs float64 (ops.gdn / eager / torch path) | max err / max|ref| "
           "(ops.gdn / eager) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r['shape']} | {r['dtype']} | {r['layout']} | {r.get('path', '-')} | "
                   f"{r['eager_ms']:.2f} | {r['ours_ms']:.2f} | **x{r['speedup']:.2f}** | "
                   f"x{r['speedup_min']:.2f} | {_fmt(r.get('torch_ms'), 2)} | "
                   f"x{r.get('speedup_vs_torch', float('nan')):.2f} | "
                   f"{r.get('err_ours_elem', float('nan')):.1e} / "
                   f"{r.get('err_eager_elem', float('nan')):.1e} / "
                   f"{r.get('err_torch_elem', float('nan')):.1e} | "
                   f"{r['err_ours']:.1e} / {r['err_eager']:.1e} |")
    return "\n".join(out)


def cuda_md(rows):
    out = ["| shape | dtype | fused fwd ms | eager fwd ms | compile fwd ms | H100 floor ms "
           "| fwd x eager | fwd / H100 floor | fused fwd+bwd ms | eager fwd+bwd ms "
           "| fwd+bwd x eager |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r['shape']} | {r['dtype']} | {r['fused_fwd_ms']:.3f} | "
                   f"{r['eager_fwd_ms']:.3f} | {_fmt(r.get('compile_fwd_ms'))} | "
                   f"{r['fwd_floor_ms']:.4f} | x{r['fwd_speedup_vs_eager']:.2f} | "
                   f"{r['fwd_vs_floor']:.2f} | {r['fused_fwdbwd_ms']:.3f} | "
                   f"{r['eager_fwdbwd_ms']:.3f} | x{r['fwdbwd_speedup_vs_eager']:.2f} |")
    return "\n".join(out)


def env_info():
    return {"torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny shapes, CPU stand-in for the CUDA section; writes to --out")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU timings")
    ap.add_argument("--no-train", action="store_true",
                    help="skip the CPU forward+backward (training step) timings")
    ap.add_argument("--widths", default=None,
                    help="comma-separated widths (default 192,144,96,72,48)")
    ap.add_argument("--md-name", default="gdn",
                    help="basename of the CPU result files (cpu/<name>.json, .md)")
    ap.add_argument("--reps", type=int, default=9, help="CPU repeats per variant (median)")
    ap.add_argument("--force-avx2-bf16", action="store_true",
                    help="send every bf16 call the AVX2 kernel covers to it (raises "
                         "AVX2_BF16_MAX_C): measures where its thresholds should be")
    ap.add_argument("--cpu-shapes", default=None,
                    help="comma-separated NxHxW for the CPU section (default 1x128x192, the "
                         "encoder's first GDN on a 768x512 image)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads for the CPU section (default: torch's); 1 gives "
                         "steadier ratios on a machine shared with other jobs")
    ap.add_argument("--out", default=RESULTS, help="results root (cpu/ and cuda/ below)")
    ap.add_argument("--cuda-dir", default=None,
                    help="folder of the CUDA table gdn.{json,md} (default <out>/cuda; "
                         "bench/gpu_session.sh: the GPU's own bench/results/cuda-<gpu>/)")
    ap.add_argument("--aot", action="store_true",
                    help="only compile every kernel/config for sm_90 and sm_80 and write "
                         "cpu/<md-name>_aot.{json,md} (registers, spills, shared memory, "
                         "tensor cores)")
    args = ap.parse_args(argv)
    if args.aot:
        import triton
        rows = aot_table()
        os.makedirs(os.path.join(args.out, "cpu"), exist_ok=True)
        name = f"{args.md_name}_aot"
        with open(os.path.join(args.out, "cpu", name + ".json"), "w") as f:
            json.dump({"env": env_info(), "triton": triton.__version__, "rows": rows}, f, indent=1)
        md = aot_md(rows)
        with open(os.path.join(args.out, "cpu", name + ".md"), "w") as f:
            f.write("# GDN kernels compiled ahead of time (no GPU): sm_90 and sm_80\n\n"
                    f"`python bench/bench_gdn.py --aot` with triton {triton.__version__}; SlimGDN+ "
                    "scalars on, pointers 16-byte aligned, unit strides specialised per layout as "
                    "the JIT launcher does.\n\n" + md + "\n")
        print(md)
        return {"aot": rows}

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.force_avx2_bf16:
        _gdn_mod.AVX2_BF16_MAX_C = 1 << 30
    widths = [48, 17] if args.dry_run else (
        [int(w) for w in args.widths.split(",")] if args.widths else WIDTHS)
    cpu_shapes = [(1, 9, 11)] if args.dry_run else CPU_SHAPES
    if args.cpu_shapes and not args.dry_run:
        try:
            cpu_shapes = [tuple(int(v) for v in sh.split("x")) for sh in args.cpu_shapes.split(",")]
        except ValueError:
            cpu_shapes = []
        if not cpu_shapes or any(len(sh) != 3 or min(sh) < 1 for sh in cpu_shapes):
            raise SystemExit(f"error: --cpu-shapes takes NxHxW,... with positive sizes, got "
                             f"{args.cpu_shapes!r}")
    st = static_table(GPU_SHAPES, WIDTHS)
    print("Static H100 table (floor = max(bytes / 3.0 TB/s, FLOPs / peak); fp32 peak "
          "400 TFLOP/s TF32, bf16 800):")
    print(static_md(st))
    report = {"env": env_info(), "static_h100": st}

    if not args.no_cpu:
        report["cpu"] = cpu_timings(cpu_shapes, widths, reps=2 if args.dry_run else args.reps)
        if not args.no_train:
            report["cpu_train"] = cpu_train_timings(
                [(2, 5, 7)] if args.dry_run else [(8, 32, 32)], widths,
                reps=2 if args.dry_run else args.reps)
    cuda_rows = None
    if torch.cuda.is_available() and not args.dry_run:
        name = torch.cuda.get_device_name()
        cuda_dir = args.cuda_dir or os.path.join(args.out, "cuda")
        cuda_rows = cuda_timings(GPU_SHAPES, widths, on_row=lambda rows: write_cuda(
            cuda_dir, name, rows, partial=True))
    elif args.dry_run:  # exercise the CUDA section's code on CPU with a wall-clock timer
        def cpu_timer(fn):
            return interleaved_medians({"f": fn}, 2, warmup=1)["f"]
        report["cuda_dry_run"] = cuda_timings(
            [(1, 5, 7)], widths, device="cpu", timer=cpu_timer, use_compile=False,
            on_row=lambda rows: write_cuda(args.cuda_dir or os.path.join(args.out, "cuda_dry_run"),
                                           "cpu dry run", rows, partial=True))
        print(cuda_md(report["cuda_dry_run"]))

    # the CPU file (static table, CPU timings): not written by a --no-cpu run on a GPU, whose
    # results go to cuda/gdn.* below (it would only repeat the static table)
    if not args.no_cpu or args.dry_run or cuda_rows is None:
        os.makedirs(os.path.join(args.out, "cpu"), exist_ok=True)
        with open(os.path.join(args.out, "cpu", f"{args.md_name}.json"), "w") as f:
            json.dump(report, f, indent=1)
        dry = ", DRY RUN (tiny shapes)" if args.dry_run else ""
        md = [f"# GDN benchmark ({report['env']['date_utc']} UTC, torch {torch.__version__}, "
              f"{report['env']['threads']} threads{dry})",
              "", "## Static table: one GDN layer on an H100 (floor = max(bytes / 3.0 TB/s, "
              "FLOPs / peak), peak 400 TFLOP/s TF32 for fp32, 800 for bf16)", "",
              "Bytes: read x + write y (+ parameters); fwd+bwd adds read x, dy and write dx "
              "(scratch not counted). FLOPs: the C x C GEMM per pixel (x3 more in backward: "
              "recompute n, dx, dgamma) plus elementwise work.", "", static_md(st), ""]
        if "cpu" in report:
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            md += ["## CPU: slimkernels.ops.gdn vs eager composition (and vs the PyTorch path "
                   "gdn_torch), forward, no_grad, same run, medians of interleaved repeats", "",
                   f"Path: `fused-amx` = the fused C++ kernel (slimkernels._cpu_kernels, AMX-BF16; "
                   "fp32 channel mixing as bf16x3, see docs/kernels_gdn.md), `torch` = gdn_torch. "
                   f"{args.reps} repeats each, round-robin. Load average at the end of the run: "
                   f"{load:.1f} on {os.cpu_count()} cores (other jobs share this machine: compare "
                   "ratios, not absolute times; single runs are bimodal when a thread is "
                   "descheduled).", "", cpu_md(report["cpu"]), ""]
            if "cpu_train" in report:
                md += ["## CPU training step: forward + backward (gradients of x, beta, gamma), fp32 "
                       "and fp32 x under bf16 autocast, same run, medians (PyTorch path: autograd "
                       "keeps it)", "", cpu_train_md(report["cpu_train"]), ""]
        if cuda_rows is None:
            md += ["## CUDA timings: OWED", "",
                   "No GPU was available when this file was written. Run `python bench/bench_gdn.py` "
                   "on a CUDA machine: it times the fused Triton kernels vs eager and torch.compile, "
                   "forward and forward+backward, at widths 192/144/96/72/48 on 1xCx256x384 and "
                   "8xCx128x128 (fp32, bf16), and writes bench/results/cuda/gdn.{json,md}.", ""]
        with open(os.path.join(args.out, "cpu", f"{args.md_name}.md"), "w") as f:
            f.write("\n".join(md))
    if cuda_rows is not None:
        write_cuda(cuda_dir, torch.cuda.get_device_name(), cuda_rows)
    elif args.dry_run:
        write_cuda(args.cuda_dir or os.path.join(args.out, "cuda_dry_run"), "cpu dry run",
                   report["cuda_dry_run"])
    if "cpu" in report:
        print(cpu_md(report["cpu"]))
    return report


if __name__ == "__main__":
    main()
