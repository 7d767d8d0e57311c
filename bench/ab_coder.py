#!/usr/bin/env python
"""Interleaved A/B of the entropy coder of two builds of ``slimkernels._coder``.

Timings of two builds taken one after the other mislead on this VM (its speed drifts by up to 2x
within minutes); this loads another build's extension file next to the installed one
(:func:`ab_builds.load`) and times both on the same arrays, in alternation
(:func:`bench_conv.interleaved_medians`). Workloads: the Kodak-like synthetic latent of
``bench/bench_coder.py`` and the bundled model's own symbols of a Kodak image at each of
``--widths`` (what ``compress`` codes: per-channel indexes, its default substream count). With
``--after-transform`` the model's analysis (for encode) or synthesis (for decode) transform runs,
untimed, before every timed call, so that the coder meets the caches as ``compress`` and
``decompress`` leave them. Build the other version in a git worktree, then:

    git worktree add /tmp/base <commit> && (cd /tmp/base && python setup.py build_ext --inplace)
    python bench/ab_coder.py /tmp/base/slimkernels/_coder*.so [--rounds 40] [--widths 192,72,48]
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab_builds import load_for  # noqa: E402
from bench_coder import kodak_like_workload  # noqa: E402
from bench_conv import interleaved_medians  # noqa: E402
from e2e import image_error, load_image, refuse  # noqa: E402

from slimkernels import codec, coding  # noqa: E402


def _latent_workload(model, image, width: int, precision: str):
    """The symbols ``compress`` codes for ``image`` at ``width``, its tables and the latent (for
    the synthesis transform): ``(sym int32 [1, C, h, w], compact indexes, cdfs, lengths,
    offsets, y_hat)``."""
    eb = model.entropy_bottleneck.for_width(width)
    with torch.no_grad():
        x = model._image_input(image, precision)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            y = model.encode(x, width)
        sym = codec._quantize(eb, y).contiguous()
    cdfs, lengths, offsets = codec._tables(eb)
    return (sym.numpy(), codec.channel_indexes(width), cdfs, lengths, offsets,
            codec._dequantize(eb, sym, True))


def compare(exts, work, streams: int, threads: int, rounds: int, before_enc=None,
            before_dec=None, precision: int = 16):
    """``(encode ms, decode ms)`` medians per extension in ``exts`` (same order), the calls
    interleaved, the substreams on the pool ``compress`` uses (:func:`codec.coder_pool`); every
    extension's bytes must be the same (ValueError otherwise: the two builds write different
    formats, whose speeds are not comparable here)."""
    sym, idx, cdfs, lengths, offsets = work[:5]
    flat, run = coding._index_run(sym.shape, np.ascontiguousarray(idx, np.int32))
    args = (cdfs, lengths, offsets, precision)
    ex = coding._executor(codec.coder_pool())
    datas = [e.encode(sym.reshape(-1), flat, *args, streams, threads, run, executor=ex)
             for e in exts]
    if any(d != datas[0] for d in datas):
        raise ValueError("the builds write different bytes for the same symbols")
    enc = interleaved_medians(
        {i: (lambda e=e: e.encode(sym.reshape(-1), flat, *args, streams, threads, run,
                                  executor=ex)) for i, e in enumerate(exts)},
        rounds, warmup=2, before=before_enc)
    dec = interleaved_medians(
        {i: (lambda e=e: e.decode(datas[0], flat, *args, threads, shape=sym.shape, run=run,
                                  executor=ex)) for i, e in enumerate(exts)},
        rounds, warmup=2, before=before_dec)
    return [(enc[i], dec[i]) for i in range(len(exts))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("other", help="the other build's _coder extension file")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--widths", default="192,72,48",
                    help="widths of the bundled model's latents ('' for the synthetic one only)")
    ap.add_argument("--image", default=None,
                    help="image (default: kodim01 of $SLIMKERNELS_KODAK, see bench/e2e.py)")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--after-transform", action="store_true",
                    help="run the model's transform, untimed, before every timed coder call")
    a = ap.parse_args(argv)
    if a.rounds < 1 or a.threads < 1:
        ap.error(f"--rounds and --threads must be at least 1, got {a.rounds} / {a.threads}")
    refuse(ap, image_error(a.image))   # (noise was timed instead)
    torch.set_num_threads(a.threads)
    this, other = coding._ext(), load_for(ap, a.other)
    rows = [("Kodak-like synthetic", kodak_like_workload(), None)]   # 16-bit CDFs
    widths = [int(w) for w in a.widths.split(",") if w.strip()]
    model = None
    if widths:
        from slimkernels.pretrained import load_model
        model = load_model()
        image = load_image(a.image)
        precision = codec.resolve_precision(a.precision, torch.device("cpu"))
        rows += [(f"model latent w={w}", _latent_workload(model, image, w, precision), w)
                 for w in widths]
    print(f"`python bench/ab_coder.py <other> --rounds {a.rounds} --threads {a.threads} "
          f"--widths {a.widths}{' --after-transform' if a.after_transform else ''}`\n")
    print("| workload | substreams | encode other / this ms | this speed-up | "
          "decode other / this ms | this speed-up |\n|---|---|---|---|---|---|")
    for name, work, width in rows:
        streams = codec.auto_streams(work[0].size)
        before_enc = before_dec = None
        if a.after_transform and width is not None:
            x = model._image_input(image, precision)
            y_hat = work[5]

            def before_enc(x=x, width=width):
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                     enabled=precision == "bf16"):
                    model.encode(x, width)

            def before_dec(y_hat=y_hat):
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                     enabled=precision == "bf16"):
                    model.decode(y_hat)
        bits = 16 if width is None else model.entropy_bottleneck.for_width(width).precision
        (eo, do), (et, dt) = compare([other, this], work, streams, a.threads, a.rounds,
                                     before_enc, before_dec, bits)
        print(f"| {name} | {streams} | {eo:.3f} / {et:.3f} | {eo / et:.3f}x | "
              f"{do:.3f} / {dt:.3f} | {do / dt:.3f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
