"""Command line of the evaluation: ``slimkernels eval DIR`` and ``python python/evaluate.py DIR``."""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from .._device import cli_device
from .._argparse import split_list


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``eval`` arguments to ``parser`` (a subcommand parser or a fresh one)."""
    parser.add_argument("folder", metavar="DIR", help="folder of images (e.g. Kodak PNGs)")
    parser.add_argument("--model", default=None,
                        help="model file or training checkpoint (default: the bundled model)")
    parser.add_argument("--widths", nargs="+", action=split_list(int), default=None,
                        help="widths to evaluate, e.g. 192 48 or 192,48 (default: all of the "
                             "model's)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="transform precision: auto (default: bf16 autocast where the device "
                             "has native bf16, e.g. AMX / AVX512-BF16 CPUs, else fp32), fp32, bf16")
    parser.add_argument("--out", default="results", help="output folder (default: results/)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--no-classical", action="store_true",
                        help="skip the JPEG/WebP sweeps (the Balle 2017 curve is still plotted)")
    from .classical import DEFAULT_QUALITIES
    for codec in ("jpeg", "webp"):
        parser.add_argument(f"--{codec}-qualities", nargs="+", action=split_list(int),
                            default=None,
                            help=f"Pillow {codec.upper()} qualities of the sweep (default: "
                                 + " ".join(map(str, DEFAULT_QUALITIES[codec])) + ")")
    parser.add_argument("--streams", type=int, default=1, help="coder substreams")
    parser.add_argument("--device", default="cpu", type=cli_device,
                        help="device of the transforms: cpu, cuda, "
                        "cuda:N (default: cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default or 0: torch's choice, as for "
                             "compress; 1 is much faster on a machine busy with other work)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-image lines")
    parser.add_argument("-f", "--force", action="store_true",
                        help="replace the results of an earlier evaluation in --out")
    return parser


def run_eval(args: argparse.Namespace, prog: str = "slimkernels eval") -> int:
    """Run the evaluation for parsed ``args``; print the table; return the exit code.

    Exit codes: 0 done, 2 bad input (missing folder/model, bad width, an earlier evaluation in
    ``--out`` without ``--force``, another evaluation running into ``--out``), 1 the range coder
    extension is missing. With ``--force`` the earlier evaluation in ``--out`` is set aside and
    put back when this one fails (a bad image, Ctrl-C), removed when it succeeds. ``prog``: the
    name the errors show.
    """
    from ..pretrained import load_model
    from .kodak import (EvaluationBusyError, check_widths, earlier_outputs, evaluate_all,
                        list_images, ms_ssim_size_problem, recover_interrupted)

    def err(msg: str) -> int:
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2

    if args.threads:   # (None or 0: torch's choice, as compress / decompress / train take 0)
        if args.threads < 0:
            return err(f"--threads must be >= 0 (0: torch's choice), got {args.threads}")
        from .._checks import too_many_threads
        if too_many_threads(args.threads):
            return err(too_many_threads(args.threads))
        import torch

        torch.set_num_threads(args.threads)
    if args.limit is not None and args.limit < 1:   # (list_images' message names no option)
        return err(f"--limit must be >= 1 (leave it out for every image), got {args.limit}")
    try:
        images = list_images(args.folder, args.limit)
    except ValueError as e:
        return err(str(e))
    # what would fail late, checked before any work (a failed run left partial outputs that
    # then needed --force)
    if os.path.realpath(args.out) == os.path.realpath(args.folder):
        return err(f"--out {args.out} is the image folder: its rd.png would be read as a test "
                   f"image next time; choose another folder")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        return err(f"--out {args.out} exists and is not a folder")
    for name in ("jpeg_qualities", "webp_qualities"):
        bad = [q for q in getattr(args, name, None) or [] if not 0 <= q <= 100]
        if bad:
            return err(f"--{name.replace('_', '-')} {bad}: qualities are 0..100")
    if not 1 <= args.streams <= 255:
        return err(f"--streams {args.streams}: must be 1..255")
    if args.no_classical:
        given = [n for n in ("jpeg_qualities", "webp_qualities") if getattr(args, n, None)]
        if given:
            return err(f"--{given[0].replace('_', '-')} has no effect with --no-classical: "
                       f"leave one of them out")
    small = ms_ssim_size_problem(images)
    if small:
        return err(small)
    try:
        note = recover_interrupted(args.out)   # (a killed run's leftovers: before the check)
    except EvaluationBusyError as e:
        return err(str(e))
    if note is not None:
        print(f"{prog}: note: {note}", file=sys.stderr)
    earlier = earlier_outputs(args.out)
    if earlier and not args.force:
        return err(f"{args.out} already holds an evaluation ({', '.join(earlier)}): choose "
                   f"another --out, or pass --force to replace it")
    try:
        model = load_model(args.model, device=args.device)
        check_widths(model, args.widths)
    except (FileNotFoundError, ValueError) as e:
        return err(str(e))
    try:
        import importlib
        importlib.import_module("slimkernels._coder")  # compress needs the compiled coder
    except ImportError as e:
        print(f"{prog}: error: the range coder is not available ({e}); build it with "
              "`pip install --no-build-isolation -e .`", file=sys.stderr)
        return 1
    log = None if args.quiet else (lambda s: print(s, flush=True))
    # --force: evaluate_all sets the earlier evaluation aside (its JPEG / WebP results and other
    # widths' bitstreams stayed beside a new summary), puts it back if this run fails (and
    # removes this run's outputs and the folder it made), removes it if it succeeds
    try:
        summary = evaluate_all(model, args.folder, args.out, widths=args.widths,
                               precision=args.precision, limit=args.limit,
                               classical=not args.no_classical, jpeg_qualities=args.jpeg_qualities,
                               webp_qualities=args.webp_qualities, streams=args.streams,
                               progress=log, overwrite=args.force)
    except (ValueError, EvaluationBusyError) as e:
        return err(str(e))
    with open(summary["files"]["table"]) as f:
        print(f.read(), end="")
    g = summary["goals"]
    bd, gap = g["bd_rate_vs_jpeg_pchip"], g["gap_to_balle2017_db"]
    vs = "n/a" if gap is None else f"{abs(gap):.2f} dB {'below' if gap >= 0 else 'above'}"
    print(f"goals: monotone={g['monotone']} bpp span={g['bpp_span'][0]:.3f}-{g['bpp_span'][1]:.3f} "
          f"BD-rate vs JPEG={'n/a' if bd is None else f'{bd:.1f} %'} widest width vs "
          f"Balle2017={vs}")
    print("wrote " + ", ".join(sorted(v for k, v in summary["files"].items())))
    return 0


def main(argv: Optional[List[str]] = None, prog: str = "slimkernels eval") -> int:
    """The evaluation's command line (``prog``: the name its usage and errors show)."""
    p = argparse.ArgumentParser(prog=prog,
                                description="Rate-distortion evaluation of a SlimCAE on an image "
                                            "folder, with JPEG/WebP and Balle 2017 references.")
    args = add_eval_arguments(p).parse_args(argv)
    from ..allocator import tune_from_env
    tune_from_env()
    try:
        return run_eval(args, prog)
    except KeyboardInterrupt:   # (128 + SIGINT, as the slimkernels command and train)
        print(f"{prog}: error: interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, OSError, MemoryError) as e:   # (as the slimkernels command)
        print(f"{prog}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
