#!/usr/bin/env python
"""Write your own slimmable codec with slimkernels (walkthrough: docs/tutorial_custom_codec.md).

A 4-layer codec (four 5x5 stride-2 convolutions, latent widths 128/64/32, SlimGDN+ between
layers) built from the library's slimmable layers; ``SlimCodec`` adds the entropy coding and the
``.slim`` container. Trains every width jointly for a few steps, then compresses, writes, reads
back and decompresses one image at every width and prints its rate and quality.

    python python/custom_codec.py [--data ../shared/data/train] [--steps 200] [--out DIR]
    python python/custom_codec.py --tiny        # generated images, a few seconds (CI)
"""
import argparse
import os
import re
import sys
import tempfile
import time

import torch

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slimkernels import container  # noqa: E402
from slimkernels.codec import SlimCodec, SlimSequential  # noqa: E402
from slimkernels.evaluation.metrics import psnr  # noqa: E402
from slimkernels.io import read_image  # noqa: E402
from slimkernels.nn import (SlimConv2d, SlimConvTranspose2d, SlimEntropyBottleneck,  # noqa: E402
                            SlimGDNPlus)

SAMPLE = os.path.join(os.path.dirname(container.__file__), "assets", "sample.png")


# -- 1. the architecture ----------------------------------------------------------------------
class FourLayerCodec(SlimCodec):
    """g_a: 4 x (conv 5x5/2), SlimGDN+ between; g_s mirrors it with IGDN. Downsampling 16."""

    downsampling = 16

    def __init__(self, widths=(128, 64, 32)):
        super().__init__(widths)                      # sorts widths widest first
        ws, N = self.widths, self.widths[0]

        def conv(cin, cout, slim=True):               # slim=False: fixed output channels
            return SlimConv2d(cin, cout, 5, stride=2, padding=2, widths=ws if slim else None)

        def tconv(cin, cout, slim=True):
            return SlimConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1,
                                       widths=ws if slim else None)

        self.g_a = SlimSequential(conv(3, N), SlimGDNPlus(ws), conv(N, N), SlimGDNPlus(ws),
                                  conv(N, N), SlimGDNPlus(ws), conv(N, N))
        self.g_s = SlimSequential(tconv(N, N), SlimGDNPlus(ws, inverse=True),
                                  tconv(N, N), SlimGDNPlus(ws, inverse=True),
                                  tconv(N, N), SlimGDNPlus(ws, inverse=True),
                                  tconv(N, 3, slim=False))
        self.entropy_bottleneck = SlimEntropyBottleneck(ws)   # one entropy model per width

    def config(self):                                 # hashed into the .slim model id
        return {"arch": "four-layer-gdn+", "widths": list(self.widths)}


# -- 2. data ----------------------------------------------------------------------------------
def generated_images(n, size, seed=0):
    """Smooth random RGB images ``[n, 3, size, size]`` in [0, 1] (no files needed)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 8, size // 8, generator=g)
    up = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic",
                                         align_corners=False)
    return (up + 0.03 * torch.randn(up.shape, generator=g)).clamp(0, 1)


def folder_crops(folder, n, crop):
    """``n`` random ``crop`` x ``crop`` crops ``[n, 3, crop, crop]`` from the first 16 images of
    ``folder`` (by name): one fixed pool, which the example's training draws from (a few
    minutes' run; ``slimkernels train`` samples fresh crops from every image at every step)."""
    from slimkernels.training.data import CropSampler, list_images, load_rgb
    return CropSampler([load_rgb(p) for p in list_images(folder)[:16]], seed=0).sample(n, crop)


# -- 3. training: every width in every step, rate + lambda * distortion -----------------------
def train(model, crops, steps, lambdas, batch=4, lr=3e-4):
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if "quantiles" not in n], lr)
    aux_opt = torch.optim.Adam([p for n, p in model.named_parameters() if "quantiles" in n], 1e-2)
    model.train()
    for step in range(steps):
        x = crops[torch.randint(len(crops), (batch,))]
        loss = 0.0
        for w, lam in zip(model.widths, lambdas):
            out = model(x, w)
            bpp = -out["likelihoods"]["y"].log2().sum() / (x.shape[0] * x.shape[2] * x.shape[3])
            mse = torch.mean((out["x_hat"] - x) ** 2)
            loss = loss + bpp + lam * 255 ** 2 * mse
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        aux = model.aux_loss()                        # fits the quantiles (coded support)
        aux_opt.zero_grad()
        aux.backward()
        aux_opt.step()
        if step % max(1, steps // 5) == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():8.3f}  aux {aux.item():8.2f}")
    return model.eval()


# -- 4. compress / decompress at every width --------------------------------------------------
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/train",
                   help="folder of training images (the example takes 64 crops of its first 16)")
    p.add_argument("--image", default=SAMPLE, help="image to compress (default: bundled sample)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--widths", default="128,64,32")
    p.add_argument("--out", default=None, help="folder for the .slim files (default: temporary)")
    p.add_argument("--tiny", action="store_true", help="generated 64x64 crops, 5 steps (CI)")
    p.add_argument("-f", "--force", action="store_true", help="replace an earlier run's files")
    args = p.parse_args(argv)
    if not re.fullmatch(r"\d+(,\d+)*", args.widths) or args.steps < 0 or args.crop % 16 or \
            args.crop < 16 or max(map(int, args.widths.split(","))) > 512:   # (RAM: N^2)
        p.error("--widths: comma-separated integers <= 512; --steps >= 0; --crop a multiple of 16")
    widths = [int(w) for w in args.widths.split(",")]
    taken = [t for w in widths if args.out and os.path.lexists(t := os.path.join(   # checked
        args.out, f"image_w{w}.slim")) and not (args.force and os.path.isfile(t))]   # first
    if taken:   # (--force replaces files, not a folder or FIFO of that name)
        p.exit(1, f"custom_codec.py: error: {taken[0]} exists: not replacing it (use --force; "
                  f"it replaces files only)\n")
    torch.manual_seed(0)
    steps = min(args.steps, 5) if args.tiny else args.steps
    try:
        if args.tiny:
            crops, image = generated_images(8, 64), generated_images(1, 80, seed=1)[..., :72]
        else:
            crops, image = folder_crops(args.data, 64, args.crop), read_image(args.image)[0]
        model = FourLayerCodec(widths)
        out = args.out or tempfile.mkdtemp(prefix="custom-codec-")   # (after the checks)
        os.makedirs(out, exist_ok=True)   # (before the training: failures came after it)
        tempfile.TemporaryFile(dir=out).close()   # (can files be made there?)
    except ValueError as e:
        p.exit(1, f"custom_codec.py: error: {e}\n")
    except OSError as e:   # (--out: a file on its path, no permission)
        p.exit(1, f"custom_codec.py: error: --out cannot be made a folder ({e.strerror})\n")
    lambdas = [0.01 * 2 ** -k for k in range(len(model.widths))]   # widest: highest quality
    print(f"FourLayerCodec widths {model.widths}, "
          f"{sum(p.numel() for p in model.parameters())} parameters, {steps} steps")
    t0 = time.perf_counter()
    train(model, crops, steps, lambdas, batch=2 if args.tiny else 8)
    print(f"trained in {time.perf_counter() - t0:.1f} s")
    model.update()                                    # integer CDF tables for the coder
    H, W = image.shape[-2:]
    print(f"\nimage {W}x{H}, files in {out}")
    print(f"{'width':>5} {'bytes':>6} {'bpp':>7} {'PSNR dB':>8}")
    for w in model.widths:
        data = model.compress(image, w, metadata={"codec": b"four-layer-gdn+"})
        path = os.path.join(out, f"image_w{w}.slim")
        container.write(path, container.unpack(data), overwrite=args.force)
        f = container.read(path)                      # checksums verified
        assert f.width == w and f.metadata["codec"] == b"four-layer-gdn+"
        x_hat = model.decompress(container.pack(f))
        q = float(psnr(x_hat, image))                 # dB on 8-bit RGB
        print(f"{w:5d} {len(data):6d} {8 * len(data) / (H * W):7.3f} {q:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
