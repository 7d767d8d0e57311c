#!/usr/bin/env python
"""Rate control: pick the SlimCAE width (and so the compute cost) for a target bpp or PSNR.

Every image of the folder is compressed and decompressed at every width
(:func:`slimkernels.ratecontrol.rd_table`). For each image the script picks the width the
library's rules pick: for ``--target-bpp`` the widest width whose file fits, for
``--target-psnr`` the narrowest (cheapest) width that reaches it. It then picks one width for the
whole folder by the same rules on the folder means, and prints each width's cost in
multiply-accumulates per pixel (encoder + decoder transforms).

    python python/rate_control.py ../shared/data/kodak --target-bpp 0.5
    python python/rate_control.py IMAGES --target-psnr 30 --model runs/slimcae/checkpoint.pt
    python python/rate_control.py --tiny --target-bpp 2     # random model, generated images (CI)
"""
import argparse
import json
import math
import os
import shutil
import sys
import tempfile

import torch

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slimkernels.ratecontrol import pick_width as pick, rd_table  # noqa: E402


def macs_per_pixel(model, width: int, size: int = 64) -> float:
    """Multiply-accumulates per input pixel of ``model``'s encoder + decoder at ``width``
    (convolutions and GDN channel mixing), counted with forward hooks on a ``size``^2 input."""
    from slimkernels.nn import SlimGDN, SlimGDNPlus, SwitchGDN
    total = [0]
    inside = [0]   # GDN modules being called (a SwitchGDN's own children count once, if called)

    def conv_hook(m, inp, out):
        k = m.kernel_size[0] * m.kernel_size[1]
        if isinstance(m, torch.nn.ConvTranspose2d):    # each input pixel feeds k outputs
            total[0] += inp[0].numel() * out.shape[1] * k
        else:
            total[0] += out.numel() * inp[0].shape[1] * k

    def gdn_pre(m, inp):
        inside[0] += 1

    def gdn_hook(m, inp, out):
        inside[0] -= 1
        if inside[0] == 0:
            total[0] += inp[0].numel() * inp[0].shape[1]

    gdns = (SlimGDN, SlimGDNPlus, SwitchGDN)   # (SwitchGDN runs its width's GDN itself)
    hooks = []
    for m in model.modules():
        if isinstance(m, torch.nn.modules.conv._ConvNd):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, gdns):
            hooks += [m.register_forward_pre_hook(gdn_pre), m.register_forward_hook(gdn_hook)]
    try:
        with torch.no_grad():
            model.decode(model.encode(torch.zeros(1, 3, size, size), width))
    finally:
        for h in hooks:
            h.remove()
    return total[0] / (size * size)


def generate_images(folder: str) -> None:
    """Write three small generated images (smooth random colours) into ``folder``."""
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for i, (h, w) in enumerate([(48, 64), (64, 64), (40, 56)]):
        low = torch.rand(3, h // 8, w // 8, generator=g)[None]
        img = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear")[0]
        arr = img.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(os.path.join(folder, f"gen{i}.png"))


def tiny_model():
    """A random-weight SlimCAE (widths 24, 16, 8, SlimGDN+) with its CDF tables."""
    from slimkernels.models import SlimCAE
    torch.manual_seed(0)
    model = SlimCAE(widths=(24, 16, 8), gdn="slim+").eval()
    model.update()
    return model


def main(argv=None) -> int:
    """The command line (see the module docstring); a folder of generated images (--tiny
    without a folder) is removed at the end (every --tiny run left one in /tmp)."""
    made = []
    try:
        return _main(argv, made)
    finally:
        for d in made:
            shutil.rmtree(d, ignore_errors=True)


def _main(argv, made) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", nargs="?", default=None, help="folder of images")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--target-bpp", type=float, help="largest acceptable bits per pixel")
    goal.add_argument("--target-psnr", type=float, help="smallest acceptable PSNR (dB, RGB)")
    p.add_argument("--model", default=None, help="model file or training checkpoint "
                                                 "(e.g. runs/slimcae/checkpoint.pt); default: "
                                                 "the bundled model")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--limit", "--max-images", dest="limit", type=int, default=0,
                   help="only the first N images (0, the default: every image; eval's "
                        "--limit takes no 0; --max-images: its earlier name)")
    p.add_argument("--json", default=None, help="write the tables and choices to this file")
    p.add_argument("-f", "--force", action="store_true", help="replace an existing --json file")
    p.add_argument("--tiny", action="store_true",
                   help="random-weight model; generated images unless a folder is given (CI)")
    args = p.parse_args(argv)
    if args.target_bpp is not None and not (math.isfinite(args.target_bpp) and
                                            args.target_bpp > 0):
        p.error(f"--target-bpp must be a finite number > 0, got {args.target_bpp}")
    if args.target_psnr is not None and not (math.isfinite(args.target_psnr) and
                                             args.target_psnr > 0):
        p.error(f"--target-psnr must be a finite number > 0, got {args.target_psnr}")
    if args.limit < 0:
        p.error(f"--limit must be >= 1 (or 0: every image), got {args.limit}")
    if args.json is not None and not args.json:
        p.error("--json: give a file path")
    if args.json:   # (checked before the work: it was overwritten, or failed after it)
        if os.path.isdir(args.json):
            p.error(f"--json {args.json} is a folder: give a file path, e.g. "
                    f"{os.path.join(args.json, 'rate_control.json')}")
        # (lexists: a link leading nowhere is refused now, not after the work)
        if os.path.lexists(args.json) and not args.force:
            p.error(f"--json {args.json} exists: not overwriting it (-f replaces a file)")
        if os.path.exists(args.json) and not os.path.isfile(args.json):
            p.error(f"--json {args.json} is not a regular file (a device or a FIFO): -f does "
                    f"not replace those")
        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder):
            p.error(f"--json {args.json}: its folder does not exist")
        if not os.access(folder, os.W_OK):
            p.error(f"--json {args.json}: its folder {folder} is not writable")

    from slimkernels.evaluation.kodak import json_finite
    from slimkernels.io import atomic_write_bytes, read_image
    from slimkernels.training.data import list_images
    if args.tiny and args.model is not None:
        p.error("--tiny uses a random-weight model: leave out --model")
    if args.tiny:
        if args.folder is None:   # generated images in a new temporary folder
            args.folder = tempfile.mkdtemp(prefix="rate-control-")
            made.append(args.folder)
            generate_images(args.folder)
        model = tiny_model()
    else:
        from slimkernels.pretrained import load_model
        if args.folder is None:
            p.error("give a folder of images (or --tiny)")
        try:
            model = load_model(args.model)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        paths = list_images(args.folder)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = paths[:args.limit] if args.limit > 0 else paths
    images = []
    for path in paths:   # (all read first: a bad image last had thrown away the others' work)
        try:
            images.append((path, read_image(path)[0]))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    goal_txt = (f"target {args.target_bpp} bpp" if args.target_bpp is not None
                else f"target {args.target_psnr} dB PSNR")
    cost = {w: macs_per_pixel(model, w) for w in model.widths}
    print(f"{len(paths)} images in {args.folder}, widths {model.widths}, {goal_txt}\n")
    print(f"{'image':<24} {'width':>5} {'bpp':>7} {'PSNR dB':>8} {'kMAC/px':>8}")
    tables, chosen = {}, {}
    for path, x in images:
        # (streams=1: the bytes the CLI's compress --target-bpp writes, whatever the threads)
        rows = rd_table(model, x, precision=args.precision, streams=1)
        w = pick(rows, args.target_bpp, args.target_psnr)
        r = next(r for r in rows if r["width"] == w)
        name = os.path.basename(path)
        tables[name], chosen[name] = rows, w
        print(f"{name:<24} {w:5d} {r['bpp']:7.3f} {r['psnr']:8.2f} {cost[w] / 1e3:8.1f}")

    mean = [{"width": w,
             "bpp": sum(next(r["bpp"] for r in t if r["width"] == w) for t in tables.values())
             / len(tables),
             "psnr": sum(next(r["psnr"] for r in t if r["width"] == w) for t in tables.values())
             / len(tables)} for w in model.widths]
    folder_w = pick(mean, args.target_bpp, args.target_psnr)
    print(f"\nfolder means{'':<12} {'width':>5} {'bpp':>7} {'PSNR dB':>8} {'kMAC/px':>8} "
          f"{'cost':>6}")
    for m in mean:
        mark = "  <- chosen" if m["width"] == folder_w else ""
        c = cost[m["width"]]
        print(f"{'':<24} {m['width']:5d} {m['bpp']:7.3f} {m['psnr']:8.2f} {c / 1e3:8.1f} "
              f"{c / cost[model.widths[0]]:6.2f}{mark}")
    print(f"\nfolder width for {goal_txt}: {folder_w} "
          f"({cost[folder_w] / cost[model.widths[0]]:.2f}x the compute of the full width)")
    m = next(m for m in mean if m["width"] == folder_w)
    if (args.target_bpp is not None and m["bpp"] > args.target_bpp) or \
            (args.target_psnr is not None and m["psnr"] < args.target_psnr):
        print(f"note: no width reaches the {goal_txt} on average; width {folder_w} comes "
              f"closest ({m['bpp']:.3f} bpp, {m['psnr']:.2f} dB)")
    if args.json:   # (a lossless row's inf PSNR: null, strict JSON; a whole file or none)
        text = json.dumps(json_finite({"goal": goal_txt, "widths": model.widths,
                                       "macs_per_pixel": cost, "per_image": tables,
                                       "chosen": chosen, "folder_means": mean,
                                       "folder_width": folder_w}), indent=1, allow_nan=False)
        try:   # (a folder that refuses the write all the same: a read-only file system)
            atomic_write_bytes(args.json, text.encode(), overwrite=args.force)
        except OSError as e:
            print(f"error: --json: {e.strerror or e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
