#!/usr/bin/env python
"""The AMX-BF16 tile-product rate of this core against the direct conv kernel's, side by side.

Compiles ``bench/amx_tile_rate.cpp`` (standalone C++: the kernel's 2 x 2 register blocking on
synthetic data, from tiles loaded once, from L1, from L2, and the kernel's own loop over a 5x5
conv without its epilogue, plain and K-blocked) with the system's C++ compiler, runs it
``--runs`` times, and times the direct kernel (``slimkernels.ops.conv._conv2d_amx``, one thread,
its padded copy and epilogue included) on the same conv shapes in the same process: every row
in ns per tile product (one TDPBF16PS, 16 x 16 x 32 multiply-adds) and as a ratio to the
products-only rate. It tells how far the kernel is from the tile unit's ceiling and which part
of the gap the memory pattern explains.

    python bench/bench_amx_rate.py                       # print the table
    python bench/bench_amx_rate.py --out bench/results/cpu --force

Needs a CPU with AMX-BF16 (and a Linux that grants it) and a C++17 compiler (``$CXX``, else
``c++``, ``g++``, ``clang++``); exits with status 2 and a one-line reason otherwise.
"""
import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "amx_tile_rate.cpp")

#: The synthetic cases, in the order the program prints them, with what each measures.
CASES = {
    "no_loads": "2x2 tile products on tiles loaded once (the issue rate)",
    "l1_32kb": "2 A + 2 B tile loads per 4 products, a 32 KB set (L1)",
    "l2_128kb": "2 A + 2 B tile loads per 4 products, a 128 KB set (L2)",
    "conv_c64": "the kernel's loop, 5x5/1 conv from 64 channels, no epilogue",
    "conv_c64_kblock10": "the same, K in blocks of 10 chunks shared by 2 block pairs",
    "conv_c48": "the kernel's loop, 5x5/1 conv from 48 channels, no epilogue",
    "conv_c48_kblock10": "the same, K in blocks of 10 chunks shared by 2 block pairs",
}
#: The direct kernel's rows: the conv of the synthetic loop (64 output channels, 64 x 128
#: output pixels, 5x5, stride 1, padding 2) from these input channel counts.
KERNEL_CHANNELS = (64, 48)


def compiler():
    """The C++ compiler command to use, as setup.py picks it: ``$CXX`` (with any arguments it
    holds, its program found on PATH), else the first of ``c++``, ``g++``, ``clang++`` on PATH;
    a list of arguments, or None."""
    env = shlex.split(os.environ.get("CXX", ""))
    if env:
        return env if shutil.which(env[0]) else None
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return [path]
    return None


def build(cxx, folder: str) -> str:
    """Compile the synthetic program with the command ``cxx`` (:func:`compiler`'s) into
    ``folder``; its path. RuntimeError with the compiler's last lines when it fails."""
    exe = os.path.join(folder, "amx_tile_rate")
    r = subprocess.run([*cxx, "-O2", "-std=c++17", SOURCE, "-o", exe], capture_output=True,
                       text=True)
    if r.returncode != 0:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"{' '.join(cxx)} could not compile {SOURCE}:\n{tail}")
    return exe


def parse(text: str) -> dict:
    """``{case: ns per tile product}`` from the program's output lines ``case value``.
    ValueError on a line that is not that, or a case it does not know."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[0] not in CASES:
            raise ValueError(f"unexpected output line from amx_tile_rate: {line!r}")
        out[parts[0]] = float(parts[1])
    return out


def run_synthetic(exe: str, runs: int, scale: float) -> dict:
    """Medians over ``runs`` runs of the program: ``{case: ns per tile product}``.
    RuntimeError when it exits non-zero (its message: no AMX for the process)."""
    got = {k: [] for k in CASES}
    for _ in range(runs):
        r = subprocess.run([exe, repr(scale)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError((r.stderr or r.stdout).strip() or
                               f"amx_tile_rate exited with status {r.returncode}")
        for k, v in parse(r.stdout).items():
            got[k].append(v)
    missing = [k for k, v in got.items() if not v]
    if missing:
        raise RuntimeError(f"amx_tile_rate printed no value for {missing}")
    return {k: statistics.median(v) for k, v in got.items()}


def kernel_products(ci: int, co: int = 64, k: int = 5, ho: int = 64, wo: int = 128) -> int:
    """Tile products of the direct kernel's conv (stride 1): 16-pixel blocks x tap rows x
    32-element K chunks of a tap row x 16-channel output tiles."""
    return ho * -(-wo // 16) * k * -(-(k * ci) // 32) * -(-co // 16)


def time_kernel(ci: int, n: int) -> float:
    """Median ns per tile product of the direct AMX conv (one thread, no grad) of a bf16
    channels_last [1, ci, 64, 128] input with a [64, ci, 5, 5] weight, padding 2: the synthetic
    conv loop's products, with the kernel's padded copy and epilogue."""
    import torch
    from slimkernels.ops import conv as oc
    g = torch.Generator().manual_seed(ci)
    w = torch.randn(64, ci, 5, 5, generator=g) * 0.05
    x = torch.randn(1, ci, 64, 128, generator=g).to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for _ in range(max(3, n // 4)):
                oc._conv2d_amx(x, w, None, 64, 1, 2)
            ts = []
            for _ in range(n):
                t = time.perf_counter()
                oc._conv2d_amx(x, w, None, 64, 1, 2)
                ts.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(saved)
    return statistics.median(ts) / kernel_products(ci) * 1e9


def table(rows: list) -> str:
    """The Markdown table of ``rows`` (dicts: case, what, ns, vs_peak)."""
    lines = ["| case | what | ns per tile product | x the products-only rate |",
             "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['what']} | {r['ns']:.2f} | {r['vs_peak']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs of the program (default 3)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="the program's repetitions (default 1: ~2 s a run)")
    ap.add_argument("--repeats", type=int, default=200,
                    help="timed calls of the direct kernel per shape (default 200)")
    ap.add_argument("--out", default=None, help="folder for amx_rate.md / amx_rate.json")
    ap.add_argument("--force", action="store_true", help="replace those files when they exist")
    a = ap.parse_args(argv)
    for name, v in (("--runs", a.runs), ("--repeats", a.repeats)):
        if v < 1:
            print(f"error: {name} must be at least 1, got {v}", file=sys.stderr)
            return 2
    if not a.scale > 0 or a.scale > 100:
        print(f"error: --scale must be in (0, 100], got {a.scale}", file=sys.stderr)
        return 2
    if a.out is not None:
        if os.path.exists(a.out) and not os.path.isdir(a.out):
            print(f"error: --out {a.out} is a file, not a folder", file=sys.stderr)
            return 2
        have = [f for f in ("amx_rate.md", "amx_rate.json")
                if os.path.exists(os.path.join(a.out, f))]
        if have and not a.force:
            print(f"error: {a.out} already holds {', '.join(have)}: --force to replace",
                  file=sys.stderr)
            return 2
    from slimkernels.ops.conv import amx_conv_available
    if not amx_conv_available():
        print("error: this CPU (or this build) has no AMX-BF16 direct conv to measure: the "
              "benchmark needs an AMX CPU (Sapphire Rapids or later) and the built kernels",
              file=sys.stderr)
        return 2
    cxx = compiler()
    if cxx is None:
        print("error: no C++ compiler found ($CXX, c++, g++, clang++): install one or set CXX",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="amx_rate_") as tmp:
        try:
            synth = run_synthetic(build(cxx, tmp), a.runs, a.scale)
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    kernel = {ci: time_kernel(ci, a.repeats) for ci in KERNEL_CHANNELS}
    peak = synth["no_loads"]
    rows = [dict(case=k, what=CASES[k], ns=v, vs_peak=v / peak) for k, v in synth.items()]
    rows += [dict(case=f"kernel_c{ci}", what=f"the direct kernel (ops.conv._conv2d_amx), 5x5/1 "
                  f"from {ci} channels, 1 thread, padded copy and epilogue included",
                  ns=v, vs_peak=v / peak) for ci, v in kernel.items()]
    import torch
    meta = dict(time_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                torch=torch.__version__, compiler=" ".join(cxx), runs=a.runs, scale=a.scale,
                repeats=a.repeats,
                command="python bench/bench_amx_rate.py " + " ".join(argv or sys.argv[1:]))
    md = table(rows)
    print(md)
    if a.out is not None:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "amx_rate.json"), "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
        with open(os.path.join(a.out, "amx_rate.md"), "w") as f:
            f.write(f"# AMX-BF16 tile-product rate against the direct conv kernel\n\n"
                    f"`{meta['command']}` ({meta['time_utc']}, torch {meta['torch']}; "
                    f"synthetic: medians of {a.runs} runs of bench/amx_tile_rate.cpp; kernel: "
                    f"medians of {a.repeats} calls). One core: nothing else should run.\n\n"
                    f"{md}\n")
        print(f"wrote {os.path.join(a.out, 'amx_rate.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
