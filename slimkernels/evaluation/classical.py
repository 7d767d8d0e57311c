"""Classical codecs (JPEG, WebP through Pillow) measured at a quality sweep, for RD plots.

Each image is encoded in memory at every quality setting; the rate is the encoded file's size
(``bytes * 8 / (H * W)``, headers included), the quality PSNR and MS-SSIM of the decoded 8-bit
RGB image against the original. Curves average the per-image values at each setting (like
CompressAI's ``compressai.utils.bench``).

Settings: JPEG with Pillow's defaults (libjpeg(-turbo), 4:2:0 chroma subsampling, standard Huffman
tables) and WebP lossy with ``method=6`` (slowest, best compression).
"""
from __future__ import annotations

import io
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .metrics import ms_ssim, psnr

DEFAULT_QUALITIES = {
    "jpeg": (5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95),
    "webp": (1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95),
}
_FORMATS = {"jpeg": ("JPEG", {}), "webp": ("WEBP", {"method": 6, "lossless": False})}


def _check_codec(codec) -> None:
    if codec not in _FORMATS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {sorted(_FORMATS)}")


def check_qualities(codec: str, qualities, name: str = "qualities") -> List[int]:
    """``qualities`` of ``codec`` (None or empty: :data:`DEFAULT_QUALITIES`) as a list of ints,
    repeats dropped (a repeated quality made two points of one rate: every BD value against the
    codec was then undefined); ValueError naming the argument ``name`` for a single int, or
    values that are not ints in 0..100 (50.5 ran as 50)."""
    from .._checks import is_int

    _check_codec(codec)
    if qualities is None:
        return list(DEFAULT_QUALITIES[codec])
    if is_int(qualities) or isinstance(qualities, (str, bytes)):
        raise ValueError(f"{name} must be a list of ints in 0..100, got {qualities!r}")
    try:
        given = list(qualities)
    except TypeError:
        raise ValueError(f"{name} must be a list of ints in 0..100, got {qualities!r}") from None
    bad = [q for q in given if not (is_int(q) and 0 <= q <= 100)]
    if bad:
        raise ValueError(f"{name} {bad}: {codec} qualities are ints in 0..100")
    return list(dict.fromkeys(int(q) for q in given)) or list(DEFAULT_QUALITIES[codec])


def codec_available(codec: str) -> bool:
    """Whether this Pillow build can write ``codec`` (``"jpeg"`` or ``"webp"``).

    Raises:
        ValueError: another codec name."""
    from PIL import features

    _check_codec(codec)
    return bool(features.check({"jpeg": "jpg", "webp": "webp"}[codec]))


def _to_rgb8(x: torch.Tensor) -> np.ndarray:
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"expected one image [1, 3, H, W], got {tuple(x.shape)}")
        x = x[0]
    if x.dim() != 3 or x.shape[0] != 3:
        raise ValueError(f"expected an RGB image [3, H, W], got {tuple(x.shape)}")
    return x.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def encode_decode(x: torch.Tensor, codec: str, quality: int):
    """Encode ``x`` (``[1, 3, H, W]`` float in [0, 1]) with Pillow and decode it back.

    Returns:
        ``(encoded bytes, decoded [1, 3, H, W] uint8 tensor, encode_ms, decode_ms)``.

    Raises:
        ValueError: unknown codec or quality outside 0..100; RuntimeError if Pillow lacks the codec.
    """
    from PIL import Image

    if codec not in _FORMATS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {sorted(_FORMATS)}")
    if not 0 <= int(quality) <= 100:
        raise ValueError(f"{codec} quality must be in 0..100, got {quality}")
    if not codec_available(codec):
        raise RuntimeError(f"this Pillow build cannot write {codec}; install a Pillow with {codec} "
                           "support or pass --no-classical")
    fmt, opts = _FORMATS[codec]
    img = Image.fromarray(_to_rgb8(x))
    buf = io.BytesIO()
    t0 = time.perf_counter()
    img.save(buf, format=fmt, quality=int(quality), **opts)
    t1 = time.perf_counter()
    data = buf.getvalue()
    dec = Image.open(io.BytesIO(data))
    dec.load()
    t2 = time.perf_counter()
    rgb = np.asarray(dec.convert("RGB"), dtype=np.uint8)
    y = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None]
    return data, y, (t1 - t0) * 1e3, (t2 - t1) * 1e3


def evaluate_codec(images: Sequence[torch.Tensor], codec: str,
                   qualities: Optional[Sequence[int]] = None,
                   with_ms_ssim: bool = True) -> Dict:
    """RD curve of ``codec`` over ``images`` (each ``[1, 3, H, W]`` float in [0, 1]).

    Returns:
        CompressAI results layout: ``{"name", "description", "results": {"quality": [...],
        "bpp": [...], "psnr-rgb": [...], "ms-ssim-rgb": [...], "encoding_time": [...],
        "decoding_time": [...]}}`` (means over images at each quality; times in seconds, medians),
        sorted by quality; ``"per_image"`` holds the per-image values.
    """
    if not images:
        raise ValueError("no images to evaluate")
    qualities = check_qualities(codec, qualities)
    res: Dict[str, List] = {k: [] for k in ("quality", "bpp", "psnr-rgb", "ms-ssim-rgb",
                                            "encoding_time", "decoding_time")}
    per_image = []
    for q in sorted(qualities):
        rows = []
        for i, x in enumerate(images):
            data, y, enc_ms, dec_ms = encode_decode(x, codec, q)
            H, W = x.shape[-2:]
            row = {"image": i, "bpp": len(data) * 8.0 / (H * W), "psnr": float(psnr(x, y)[0]),
                   "enc_ms": enc_ms, "dec_ms": dec_ms}
            row["ms_ssim"] = float(ms_ssim(x, y)[0]) if with_ms_ssim else None
            rows.append(row)
        per_image.append({"quality": q, "images": rows})
        res["quality"].append(q)
        res["bpp"].append(float(np.mean([r["bpp"] for r in rows])))
        res["psnr-rgb"].append(float(np.mean([r["psnr"] for r in rows])))
        res["ms-ssim-rgb"].append(float(np.mean([r["ms_ssim"] for r in rows]))
                                  if with_ms_ssim else None)
        res["encoding_time"].append(float(np.median([r["enc_ms"] for r in rows])) / 1e3)
        res["decoding_time"].append(float(np.median([r["dec_ms"] for r in rows])) / 1e3)
    import PIL

    fmt, opts = _FORMATS[codec]
    return {"name": codec.upper() if codec == "jpeg" else "WebP",
            "description": f"Pillow {PIL.__version__} {fmt} {opts or 'defaults'}, measured in this "
                           f"run on {len(images)} images; bpp from the encoded bytes",
            "results": res, "per_image": per_image}
