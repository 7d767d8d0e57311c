#!/usr/bin/env python
"""A/B of the CPU conv kernels (AVX2, AVX-512, AVX512-BF16) against oneDNN's prepacked convs,
per SlimCAE layer.

For each layer at a Kodak image's sizes (768x512) and each width, interleaved, medians: the
no-grad conv op with its kernel switches off (``CPU_WINOGRAD``, ``CPU_WINOGRAD_AVX512``,
``CPU_IMAGE_CONV``, ``CPU_IMAGE_CONV_T_AVX512``, ``CPU_IMAGE_CONV_AVX512``,
``CPU_IMAGE_CONV_BF16``: oneDNN prepacked,
sub-pixel for the output layer) and on (what ships on this CPU: Winograd F(4x4, 3x3) for the
5x5/2 layers where its rule admits them, in bf16 on AVX512-BF16 CPUs from 144 channels, the
direct image-layer kernels for enc1 and dec3);
prints a Markdown table. ``--precision bf16`` runs the layers on bf16 inputs under CPU bf16
autocast (the model's default on AMX / AVX512-BF16 CPUs).

    python bench/bench_conv_avx2.py [--threads 2] [--repeats 7] [--widths 192,144,96,72,48]
                                    [--precision fp32|bf16]

``--round-mb 2,4,8,32`` instead times the Winograd layers with their transform -> GEMM ->
transform rounds capped at each size (``winograd.CHUNK_*``), against the shipped rule.
``--gemm`` instead times the rounds' batched GEMM alone, at each Winograd layer's round shape
([36 x tiles x K] x [36 x K x N], the tiles of one round as ``winograd._run`` sizes them):
``torch.bmm`` against the kernel the Winograd convs use here (``csrc/cpu/batched_gemm.cpp``:
AVX-512, else AVX2), with the max error of each against float64; with ``--precision bf16`` the bf16
kernel (AVX512-BF16) against ``torch.bmm`` in bf16 and the fp32 kernel.
``--opt-in`` adds the opt-in bf16 Winograd transposed convs (``CPU_WINOGRAD_BF16_TRANSPOSED``)
to what "ours" runs.
"""
import argparse
import os
import sys

import torch

import slimkernels.ops.conv as C
import slimkernels.ops.winograd as Wg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_conv import interleaved_medians  # noqa: E402

# name, transposed, C_in (None: width), C_out (None: width), H, W of the input, k, s, p, op
LAYERS = [("enc1 9x9/4", False, 3, None, 512, 768, 9, 4, 4, 0),
          ("enc2 5x5/2", False, None, None, 128, 192, 5, 2, 2, 0),
          ("enc3 5x5/2", False, None, None, 64, 96, 5, 2, 2, 0),
          ("dec1 5x5/2T", True, None, None, 32, 48, 5, 2, 2, 1),
          ("dec2 5x5/2T", True, None, None, 64, 96, 5, 2, 2, 1),
          ("dec3 9x9/4T", True, None, 3, 128, 192, 9, 4, 4, 3)]


def interleaved_ms(fns, repeats):
    """Medians (ms) of ``fns`` timed in alternation, ``repeats`` rounds after two warm-up calls
    each, in a new order every round (:func:`bench_conv.interleaved_medians`): drifts of the
    machine hit all alike, and no fn always runs right after the same neighbour (a fixed order
    put ~10 % between two identical configurations on this VM)."""
    t = interleaved_medians({i: f for i, f in enumerate(fns)}, repeats, warmup=2)
    return [t[i] for i in range(len(fns))]


def _layer_fn(layer, width, scale, precision="fp32"):
    name, transposed, ci, co, H, W, k, s, p, op = layer
    ci, co = ci or width, co or width
    H, W = max(1, H // scale), max(1, W // scale)
    g = torch.Generator().manual_seed(0)
    bf16 = precision == "bf16"
    x = torch.randn(1, ci, H, W, generator=g).to(torch.bfloat16 if bf16 else torch.float32,
                                                   memory_format=torch.channels_last)
    if transposed:
        w = torch.randn(ci, co, k, k, generator=g) / (ci * k * k) ** 0.5
        b = torch.randn(co, generator=g)

        def run():
            return C.slim_conv_transpose2d(x, w, b, stride=s, padding=p, output_padding=op)
    else:
        w = torch.randn(co, ci, k, k, generator=g) / (ci * k * k) ** 0.5
        b = torch.randn(co, generator=g)

        def run():
            return C.slim_conv2d(x, w, b, stride=s, padding=p)

    def autocast_run():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return run()
    return autocast_run


def _with(fn, module, **values):
    """``fn`` run with ``module``'s attributes set to ``values`` (restored afterwards)."""
    def run():
        was = {k: getattr(module, k) for k in values}
        for k, v in values.items():
            setattr(module, k, v)
        try:
            return fn()
        finally:
            for k, v in was.items():
                setattr(module, k, v)
    return run


def _switched(fn, on, opt_in=False):
    """``fn`` with every kernel switch off (oneDNN), or as shipped (``opt_in``: also the bf16
    Winograd transposed convs, ``CPU_WINOGRAD_BF16_TRANSPOSED``)."""
    return _with(fn, C, CPU_WINOGRAD=on, CPU_WINOGRAD_AVX512=on, CPU_IMAGE_CONV=on,
                 CPU_IMAGE_CONV_T_AVX512=on, CPU_IMAGE_CONV_AVX512=on, CPU_IMAGE_CONV_BF16=on,
                 CPU_WINOGRAD_BF16=on,
                 CPU_WINOGRAD_BF16_TRANSPOSED=on and (opt_in or C.CPU_WINOGRAD_BF16_TRANSPOSED))


def _rounds_capped(fn, nbytes):
    """``fn`` with every Winograd round sized ``nbytes`` (None: the shipped rule)."""
    return fn if nbytes is None else _with(fn, Wg, CHUNK_BYTES=nbytes, CHUNK_MIN_BYTES=nbytes)


def round_sweep(widths, sizes_mb, repeats, scale):
    """Markdown rows: each Winograd layer's ms with rounds of each size, and the shipped rule."""
    print("| layer | width | " + " | ".join(f"{m:g} MB" for m in sizes_mb) + " | shipped |")
    print("|---|---|" + "---|" * (len(sizes_mb) + 1))
    for width in widths:
        for layer in LAYERS:
            name, tr, ci, co, H, W, k, s, p, _ = layer
            ci_, co_ = ci or width, co or width
            x = torch.empty(1, ci_, max(1, H // scale), max(1, W // scale))
            if not C._use_winograd(x, ci_, co_, k, s, p, tr) or \
                    C._image_kernels_apply(x, torch.empty(1, 1, k, k), co_ if tr else ci_,
                                           3 if tr else 8, tr):
                continue
            fn = _switched(_layer_fn(layer, width, scale), True)
            ts = interleaved_ms([_rounds_capped(fn, int(m * (1 << 20))) for m in sizes_mb] +
                                [_rounds_capped(fn, None)], repeats)
            print(f"| {name} | {width} | " + " | ".join(f"{t:.2f}" for t in ts) + " |",
                  flush=True)


def gemm_shapes(width, scale):
    """``(layer name, T, K, N)`` of each 5x5/2 layer's Winograd GEMM at this width: the tiles of
    one round (``winograd.round_tiles``; conv: of the output grid, K = 4 C_in, N = C_out;
    transposed: of the input grid, K = C_in, N = 4 C_out)."""
    out = []
    for name, tr, ci, co, H, W, k, s, p, _ in LAYERS:
        if k != 5:
            continue
        ci, co = ci or width, co or width
        H, W = max(1, H // scale), max(1, W // scale)
        if not tr:
            H, W = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
        kd, n = (ci, s * s * co) if tr else (s * s * ci, co)
        out.append((name, Wg.round_tiles(-(-H // 4) * -(-W // 4), kd, n), kd, n))
    return out


def gemm_cases(widths, scale):
    """``(layer name, width, T, K, N, V, U)`` per 5x5/2 layer and width (:func:`gemm_shapes`):
    random fp32 ``V [36, T, K]`` and ``U [36, K, N]``, seeded by the shape."""
    for width in widths:
        for name, T, Kd, N in gemm_shapes(width, scale):
            g = torch.Generator().manual_seed(T + Kd + N)
            yield (name, width, T, Kd, N, torch.randn(36, T, Kd, generator=g),
                   torch.randn(36, Kd, N, generator=g))


def gemm_table_bf16(widths, repeats, scale):
    """Markdown rows: the bf16 batched GEMM of each Winograd layer (bf16 V, U; fp32 M) against
    ``torch.bmm`` in bf16 (bf16 out) and our fp32 AVX-512 GEMM; its error against float64 of
    the bf16 operands."""
    K = Wg._kernels()
    if not Wg.gemm_bf16_available():
        print("no bf16 batched GEMM here (it needs AVX512-BF16 and the built kernels)")
        return
    fp32 = Wg._gemm_avx512()
    print("| layer | width | T x K x N | bmm bf16 ms | fp32 GEMM ms | bf16 GEMM ms | vs bmm | vs "
          "fp32 | GFLOP/s | max rel. error |\n|---|---|---|---|---|---|---|---|---|---|")
    nt = torch.get_num_threads()
    for name, width, T, Kd, N, V, U in gemm_cases(widths, scale):
        Vb, Ub, Up = V.to(torch.bfloat16), U.to(torch.bfloat16), Wg.pack_bf16_pairs(U)
        M0, M1 = torch.empty(36, T, N), torch.empty(36, T, N)

        def ours():
            K.batched_gemm_bf16(Vb.data_ptr(), Up.data_ptr(), M1.data_ptr(), 36, T, Kd, N, nt)

        def ours32():
            K.batched_gemm_avx512(V.data_ptr(), U.data_ptr(), M0.data_ptr(), 36, T, Kd, N, nt)
        ref = torch.bmm(Vb.double(), Ub.double())
        ours()
        err = ((M1.double() - ref).abs().max() / ref.abs().max()).item()
        fns = [lambda: torch.bmm(Vb, Ub), ours] + ([ours32] if fp32 else [])
        ts = interleaved_ms(fns, repeats)
        t32 = f"{ts[2]:.3f}" if fp32 else "-"
        r32 = f"{ts[2] / ts[1]:.2f}x" if fp32 else "-"
        print(f"| {name} | {width} | {T} x {Kd} x {N} | {ts[0]:.3f} | {t32} | {ts[1]:.3f} | "
              f"{ts[0] / ts[1]:.2f}x | {r32} | {2 * 36 * T * Kd * N / ts[1] / 1e6:.0f} | "
              f"{err:.1e} |", flush=True)


def gemm_table(widths, repeats, scale):
    """Markdown rows: the batched GEMM of each Winograd layer, torch.bmm vs the kernel the
    rounds run here (``winograd.round_gemm()``: AVX-512 or AVX2)."""
    K = Wg._kernels()
    which = Wg.round_gemm()
    if which == "bmm":
        print("the Winograd convs use torch.bmm here (our batched GEMMs need AVX2 + FMA, the "
              "built kernels and winograd.GEMM_AVX512 / GEMM_AVX2 on)")
        return
    kernel = getattr(K, "batched_gemm_" + which)
    print(f"GEMM: batched_gemm_{which}\n\n| layer | width | T x K x N | bmm ms | ours ms | "
          "speed-up | ours GFLOP/s | max rel. error bmm / ours |\n"
          "|---|---|---|---|---|---|---|---|")
    nt = torch.get_num_threads()
    for name, width, T, Kd, N, V, U in gemm_cases(widths, scale):
        M0, M1 = torch.empty(36, T, N), torch.empty(36, T, N)

        def ours():
            kernel(V.data_ptr(), U.data_ptr(), M1.data_ptr(), 36, T, Kd, N, nt)
        ref = torch.bmm(V.double(), U.double())
        ours()
        torch.bmm(V, U, out=M0)
        err = [((m.double() - ref).abs().max() / ref.abs().max()).item() for m in (M0, M1)]
        t0, t1 = interleaved_ms([lambda: torch.bmm(V, U, out=M0), ours], repeats)
        gf = 2 * 36 * T * Kd * N / t1 / 1e6
        print(f"| {name} | {width} | {T} x {Kd} x {N} | {t0:.3f} | {t1:.3f} | {t0 / t1:.2f}x "
              f"| {gf:.0f} | {err[0]:.1e} / {err[1]:.1e} |", flush=True)


def main(argv=None) -> int:
    # (the first paragraph: its first line alone stops mid-sentence)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--widths", default="192,144,96,72,48")
    ap.add_argument("--scale", type=int, default=1, help="divide the image sizes (quick runs)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--round-mb", default=None,
                    help="comma-separated Winograd round sizes (MB) to sweep instead")
    ap.add_argument("--gemm", action="store_true",
                    help="time the Winograd rounds' batched GEMM alone (bmm vs our AVX-512 / "
                         "AVX2 kernel; "
                         "with --precision bf16 the bf16 kernel)")
    ap.add_argument("--opt-in", action="store_true",
                    help="'ours' also with the opt-in bf16 Winograd transposed convs "
                         "(CPU_WINOGRAD_BF16_TRANSPOSED)")
    a = ap.parse_args(argv)
    # (--repeats 0 was a StatisticsError at the first median, after the table's header)
    for name, v in (("--repeats", a.repeats), ("--threads", a.threads), ("--scale", a.scale)):
        if v < 1:
            ap.error(f"{name} must be at least 1, got {v}")
    torch.set_num_threads(a.threads)
    print(f"threads {a.threads}, medians of {a.repeats}, image /{a.scale}, CPU "
          f"{C._cpu_capability()}, {a.precision}\n")
    widths = [int(v) for v in a.widths.split(",")]
    if a.gemm:
        (gemm_table_bf16 if a.precision == "bf16" else gemm_table)(widths, a.repeats, a.scale)
        return 0
    if a.round_mb:
        with torch.no_grad():
            round_sweep(widths, [float(v) for v in a.round_mb.split(",")], a.repeats, a.scale)
        return 0
    print("| layer | width | oneDNN ms | ours ms | speed-up |\n|---|---|---|---|---|")
    with torch.no_grad():
        for width in widths:
            for layer in LAYERS:
                fn = _layer_fn(layer, width, a.scale, a.precision)
                t0, t1 = interleaved_ms([_switched(fn, False), _switched(fn, True, a.opt_in)],
                                        a.repeats)
                print(f"| {layer[0]} | {width} | {t0:.2f} | {t1:.2f} | {t0 / t1:.2f}x |",
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
