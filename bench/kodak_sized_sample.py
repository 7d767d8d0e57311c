"""The bundled sample image (256x192) tiled and cropped to Kodak's 768x512: the GPU session's
benchmark image where Kodak's kodim01 was not carried to the machine (bench/gpu_session.sh), so
that the transforms are timed on a Kodak-sized image of natural content.

    python bench/kodak_sized_sample.py OUT.png
"""
from __future__ import annotations

import os
import sys

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "slimkernels", "assets", "sample.png")
#: Kodak's landscape size (width, height)
SIZE = (768, 512)


def kodak_sized_sample(path: str, sample: str = SAMPLE, size=SIZE) -> None:
    """Write ``sample`` (RGB) repeated from the top-left corner over a ``size`` (width, height)
    canvas, cropped at its right and bottom edges, as a PNG at ``path``."""
    s = Image.open(sample).convert("RGB")
    t = Image.new("RGB", size)
    for y in range(0, size[1], s.height):
        for x in range(0, size[0], s.width):
            t.paste(s, (x, y))
    t.save(path, format="PNG")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python bench/kodak_sized_sample.py OUT.png", file=sys.stderr)
        return 2
    kodak_sized_sample(argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
