"""Rate-distortion evaluation of a SlimCAE on an image folder (Kodak), with reference curves.

Per width and image: the image is compressed to a ``.slim`` file that is written to disk, the
file is read back and decoded; the rate is the file size (``bytes * 8 / (H * W)`` of the unpadded
image, container header included), quality PSNR and MS-SSIM of the decoded 8-bit RGB against the
original (the SlimCAE paper's conventions). The estimated rate is
``-sum log2 p(y_hat) / (H * W)`` from ``model.forward`` on the same edge-padded input that
``compress`` codes, divided by the unpadded pixel count. RD values are means over images, times medians over images.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..io import (IMAGE_EXTENSIONS, MissingFileError, image_names, missing_folders,
                  remove_empty_folders)
from .bdrate import (MIN_OVERLAP, NonMonotoneCurveWarning, SmallOverlapWarning, bd_psnr, bd_rate,
                     overlap, quality_at_rate)
from .metrics import MS_SSIM_ROUNDING, ms_ssim, ms_ssim_db, psnr


#: Published Kodak RD points (bpp, RGB PSNR dB), the SlimCAE paper (Yang et al. 2021).
BALLE2017 = {
    "name": "Balle 2017 (factorized, published)",
    "description": "Balle, Laparra, Simoncelli, ICLR 2017, factorized prior, MSE, Kodak RGB PSNR; "
                   "published numbers (Yang et al. 2021), not measured here",
    "results": {"bpp": [0.120, 0.195, 0.316, 0.481, 0.721, 1.061],
                "psnr-rgb": [26.78, 28.35, 30.02, 31.73, 33.69, 35.82]},
}
COMPRESSAI_BMSHJ2018_FACTORIZED = {
    "name": "CompressAI bmshj2018-factorized (published)",
    "description": "CompressAI's re-trained bmshj2018-factorized, Kodak RGB PSNR; published numbers "
                   "(Yang et al. 2021), not measured here",
    "results": {"bpp": [0.123, 0.189, 0.288, 0.440, 0.648, 0.967],
                "psnr-rgb": [26.91, 28.22, 29.62, 31.28, 32.96, 35.38]},
}


def list_images(folder: str, limit: Optional[int] = None) -> List[str]:
    """Sorted image files in ``folder`` (first ``limit`` of them; a subfolder named like an
    image, ``x.png/``, is not one).

    Raises:
        MissingFileError: ``folder`` does not exist (a FileNotFoundError and a ValueError).
        ValueError: ``folder`` is not a directory, holds no images, or ``limit`` is not an
            int >= 1.
    """
    _check_folder(folder)
    _check_limit(limit)
    files = image_names(folder)
    if not files:
        raise ValueError(f"{folder} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    if limit is not None:
        files = files[: int(limit)]
    seen: Dict[str, str] = {}
    for f in files:   # (the results and bitstreams are named by the stem: one overwrote the other)
        other = seen.setdefault(os.path.splitext(f)[0], f)
        if other != f:
            raise ValueError(f"{folder} holds {other} and {f}, which share a name: the results "
                             f"and bitstreams are named by it; rename or remove one")
    return [os.path.join(folder, f) for f in files]


def _check_folder(folder: str) -> None:
    if not os.path.isdir(folder):
        if not os.path.exists(folder):
            raise MissingFileError(f"{folder} does not exist: pass a folder of images (e.g. "
                                   f"Kodak PNGs)")
        raise ValueError(f"{folder} is not a directory: pass a folder of images (e.g. Kodak PNGs)")


def _check_limit(limit) -> None:
    from .._checks import is_int
    if limit is not None and not (is_int(limit) and limit >= 1):   # (1.7 ran 1 image, '2' 2)
        raise ValueError(f"limit must be an int >= 1 (or None: every image), got {limit!r}")


def ms_ssim_size_problem(paths: Sequence[str]) -> Optional[str]:
    """The error message for the first image of ``paths`` whose smaller side is at most
    MS-SSIM's limit (read from the file header only: an unreadable file is reported when it is
    read), else None."""
    from PIL import Image

    from .metrics import MS_SSIM_MIN_SIDE
    for p in paths:
        try:
            with Image.open(p) as im:
                w, h = im.size
        except Exception:  # noqa: BLE001 - unreadable: reported by the evaluation itself
            continue
        if min(w, h) <= MS_SSIM_MIN_SIDE:
            return (f"{p}: {w}x{h} pixels; MS-SSIM (part of every evaluation) needs both sides "
                    f"> {MS_SSIM_MIN_SIDE}")
    return None


def check_out_dir(out_dir: str, what: str = "out_dir") -> None:
    """ValueError when ``out_dir``, or the nearest of its folders that exists, is not a folder
    (os.makedirs' FileExistsError / NotADirectoryError had come after the work)."""
    p = os.path.abspath(out_dir)
    while not os.path.lexists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    if os.path.isdir(p):
        return
    if p == os.path.abspath(out_dir):
        raise ValueError(f"{what} {out_dir} exists and is not a folder: pass a folder (a "
                         f"missing one is made)")
    raise ValueError(f"{what} {out_dir} cannot be made: {p} is not a folder")


def padded_input(x: torch.Tensor) -> torch.Tensor:
    """``[1, 3, H, W]`` -> edge-replicated to multiples of 16 (what ``SlimCAE.compress`` codes)."""
    H, W = x.shape[-2:]
    ph, pw = (-H) % 16, (-W) % 16
    if ph or pw:
        return torch.nn.functional.pad(x.float(), (0, pw, 0, ph), mode="replicate")
    return x.float()


@torch.no_grad()
def estimated_bpp(model, x: torch.Tensor, width: int, precision: str = "auto") -> float:
    """Model-estimated rate of ``x`` (``[1, 3, H, W]`` in [0, 1]) at ``width``, bits per pixel.

    ``-sum log2 likelihoods`` of ``model.forward`` in eval mode (median rounding, as coded) on the
    padded input, divided by the UNPADDED pixel count ``H * W``. ``precision``: ``"auto"``
    (default), ``"fp32"`` or ``"bf16"``, as for ``compress`` (see
    :func:`slimkernels.codec.resolve_precision`).

    For a :class:`~slimkernels.codec.SlimCodec` whose call is its class's ``forward`` (no hooks,
    no override of ``forward`` or its second half) the likelihoods come from ``encode`` and the
    entropy model alone, the values ``forward`` returns without its synthesis transform (half of
    its time: the evaluation calls this for every image and width).
    """
    from .._hooks import runs_more_than_forward
    from ..codec import SlimCodec, resolve_precision

    H, W = x.shape[-2:]
    dev = next(model.parameters()).device
    precision = resolve_precision(precision, dev)
    xp = padded_input(x).to(dev)
    cls = type(model)
    encoder_only = isinstance(model, SlimCodec) and cls.forward is SlimCodec.forward and \
        cls._quantize_and_decode is SlimCodec._quantize_and_decode and \
        not runs_more_than_forward(model)
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        if encoder_only:
            model._check_sides(xp)
            _, lik = model.entropy_bottleneck(model.encode(xp, width))   # (forward's first half)
        else:
            lik = model(xp, width)["likelihoods"]["y"]
    return float(-torch.log2(lik.double()).sum() / (H * W))


def _folder_title(folder: str) -> str:
    """The plot's name of an image folder: "Kodak" for a folder named kodak, else its name."""
    name = os.path.basename(os.path.normpath(os.path.abspath(folder)))
    return "Kodak" if name.lower() == "kodak" else name


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def check_widths(model, widths: Optional[Sequence[int]]) -> List[int]:
    """``widths`` (None: all of the model's) sorted, without repeats; ValueError naming those
    the model does not have, or that are not ints (96.7 ran as 96), and for a single int or
    an empty list (an int was "'int' object is not iterable", [] ran every width)."""
    from .._checks import is_int
    if widths is None:
        given = list(model.widths)
    elif is_int(widths):
        raise ValueError(f"widths must be a list of widths, got the int {widths}: pass "
                         f"[{widths}]")
    else:
        try:
            given = list(widths) if not isinstance(widths, (str, bytes)) else None
        except TypeError:
            given = None
        if given is None:
            raise ValueError(f"widths must be a list of ints, got {widths!r}")
        if not given:
            raise ValueError(f"widths is empty: pass some of the model's widths "
                             f"{list(model.widths)}, or None for all of them")
    odd = [w for w in given if not is_int(w)]
    if odd:
        raise ValueError(f"widths must be ints, got {odd}")
    widths = sorted({int(w) for w in given})
    bad = [w for w in widths if w not in model.widths]
    if bad:
        raise ValueError(f"widths {bad} are not widths of this model {list(model.widths)}")
    return widths


def evaluate(model, folder: str, widths: Optional[Sequence[int]] = None, precision: str = "auto",
             limit: Optional[int] = None, out_dir: Optional[str] = None, streams: int = 1,
             warmup: bool = True, progress: Optional[Callable[[str], None]] = None) -> Dict:
    """Evaluate ``model`` (a SlimCAE with CDF tables) on the images of ``folder``.

    Args:
        model: :class:`slimkernels.models.SlimCAE` (``update()`` done; eval mode is set here).
        folder: directory of images (Kodak: 24 PNGs, 768x512).
        widths: widths to evaluate (default: all of the model's).
        precision: ``"auto"`` (default: what ``compress`` / ``decompress`` use by default on the
            model's device, see :func:`slimkernels.codec.resolve_precision`), ``"fp32"`` or
            ``"bf16"`` (for compress, decompress and the estimate). The result records the
            resolved one under ``"precision"`` and the argument under ``"precision_requested"``.
        limit: only the first ``limit`` images (sorted by name).
        out_dir: where the ``.slim`` files go (``out_dir/bitstreams/w{width}/{image}.slim``); a
            temporary folder (deleted afterwards) when None.
        streams: coder substreams (None: compress's automatic count).
        warmup: one untimed compress/decompress per width before timing.
        progress: called with a line of text after every image and width.

    Returns:
        CompressAI results layout, one entry per width in increasing width order:
        ``{"name", "description", "results": {"width", "bpp", "bpp-estimated", "psnr-rgb",
        "ms-ssim-rgb", "ms-ssim-db", "encoding_time", "decoding_time", "encode_ms",
        "decode_ms"}, "per_image": [...], "images": [...], ...}``; bpp/PSNR/MS-SSIM are means over
        images, times medians over images (``*_time`` in seconds, ``*_ms`` in ms).

    Raises:
        ValueError: bad folder, width, precision, limit, streams or ``out_dir`` (a file), an
            image too small for MS-SSIM (named): all checked before any image is coded.
    """
    from ..io import atomic_write_bytes, read_image

    from ..codec import resolve_precision

    requested = precision
    precision = resolve_precision(precision, next(model.parameters()).device)
    widths = check_widths(model, widths)
    _check_streams(streams)
    if out_dir is not None:
        check_out_dir(out_dir)
    paths = list_images(folder, limit)
    small = ms_ssim_size_problem(paths)   # (failed after coding, the image not named)
    if small:
        raise ValueError(small)
    model.eval()
    if not all(b.has_tables() for b in model.entropy_bottleneck.bottlenecks):
        model.update()
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="slimkernels-eval-")
        out_dir = tmp.name
    try:
        images = []
        for p in paths:
            x, _ = read_image(p)
            images.append(x)
        per_image = []
        for w in widths:
            wdir = os.path.join(out_dir, "bitstreams", f"w{w}")
            os.makedirs(wdir, exist_ok=True)
            if warmup:
                model.decompress(model.compress(images[0], w, precision=precision, streams=streams),
                                 precision=precision)
            for p, x in zip(paths, images):
                H, W = x.shape[-2:]
                t0 = time.perf_counter()
                data = model.compress(x, w, precision=precision, streams=streams)
                t1 = time.perf_counter()
                fpath = os.path.join(wdir, _stem(p) + ".slim")
                atomic_write_bytes(fpath, data, overwrite=True)
                size = os.path.getsize(fpath)
                with open(fpath, "rb") as f:
                    stored = f.read()
                t2 = time.perf_counter()
                x_hat = model.decompress(stored, precision=precision)
                t3 = time.perf_counter()
                row = {"image": _stem(p), "width": w, "height": int(H), "img_width": int(W),
                       "bytes": int(size), "bpp": size * 8.0 / (H * W),
                       "bpp_estimated": estimated_bpp(model, x, w, precision),
                       "psnr": float(psnr(x, x_hat)[0]), "ms_ssim": float(ms_ssim(x, x_hat)[0]),
                       "encode_ms": (t1 - t0) * 1e3, "decode_ms": (t3 - t2) * 1e3}
                per_image.append(row)
                if progress:
                    progress(f"w{w:<4d} {row['image']}: {row['bpp']:.4f} bpp (est "
                             f"{row['bpp_estimated']:.4f}), {row['psnr']:.2f} dB, MS-SSIM "
                             f"{row['ms_ssim']:.4f}, enc {row['encode_ms']:.0f} ms, dec "
                             f"{row['decode_ms']:.0f} ms")
    finally:
        if tmp is not None:
            tmp.cleanup()
    keys = ("width", "bpp", "bpp-estimated", "psnr-rgb", "ms-ssim-rgb", "ms-ssim-db",
            "encoding_time", "decoding_time", "encode_ms", "decode_ms")
    res: Dict[str, List] = {k: [] for k in keys}
    for w in widths:
        rows = [r for r in per_image if r["width"] == w]
        msv = float(np.mean([r["ms_ssim"] for r in rows]))
        res["width"].append(w)
        res["bpp"].append(float(np.mean([r["bpp"] for r in rows])))
        res["bpp-estimated"].append(float(np.mean([r["bpp_estimated"] for r in rows])))
        res["psnr-rgb"].append(float(np.mean([r["psnr"] for r in rows])))
        res["ms-ssim-rgb"].append(msv)
        res["ms-ssim-db"].append(ms_ssim_db(msv) if msv < 1 else float("inf"))
        enc = float(np.median([r["encode_ms"] for r in rows]))
        dec = float(np.median([r["decode_ms"] for r in rows]))
        res["encode_ms"].append(enc)
        res["decode_ms"].append(dec)
        res["encoding_time"].append(enc / 1e3)
        res["decoding_time"].append(dec / 1e3)
    per_width = {str(w): {k: res[k][i] for k in keys if k != "width"} for i, w in enumerate(widths)}
    return {"name": "SlimCAE",
            "description": f"SlimCAE widths {widths}, {precision}, {streams} coder stream(s), "
                           f"{len(paths)} images of {folder}; bpp from the written .slim files; "
                           "estimated bpp on the padded input over unpadded pixels; RD values "
                           "averaged per image, times medians (s)",
            "precision": precision, "precision_requested": requested,
            "model_id": model.model_id().hex(),
            "images": [_stem(p) for p in paths], "results": res, "per_width": per_width,
            "per_image": per_image}


def _check_streams(streams) -> None:
    from .._checks import is_int
    # (None passes through: compress's automatic count)
    if streams is not None and not (is_int(streams) and 1 <= streams <= 255):
        raise ValueError(f"streams must be an int in 1..255 (or None: compress's choice), "
                         f"got {streams!r}")


def _finite_curve(curve: Dict):
    """``(bpp, psnr, ms_ssim or None, dropped)`` of a CompressAI-layout ``curve`` without the
    points whose rate, PSNR or MS-SSIM (in dB) is not finite or missing; ``dropped``: how many."""
    res = curve["results"]
    r, q, m = res["bpp"], res["psnr-rgb"], res.get("ms-ssim-rgb")
    if m is not None and len(m) != len(r):
        m = None

    def finite(v):
        return v is not None and math.isfinite(v)
    keep = [i for i in range(len(r)) if finite(r[i]) and r[i] > 0 and finite(q[i]) and
            (m is None or (finite(m[i]) and m[i] <= 1 + MS_SSIM_ROUNDING and
                            finite(ms_ssim_db(m[i]))))]
    pick = (lambda v: [v[i] for i in keep])
    return pick(r), pick(q), None if m is None else pick(m), len(r) - len(keep)


def bd_summary(test: Dict, anchors: Dict[str, Dict], methods: Sequence[str] = ("pchip", "akima")
               ) -> Dict[str, Dict]:
    """BD-rate (%) and BD-PSNR (dB) of ``test`` against each anchor (CompressAI layout dicts).

    Returns ``{anchor: {"bd_rate_pchip": ..., "bd_rate_akima": ..., "bd_psnr_pchip": ...,
    "bd_rate_ms_ssim_pchip": ... (when both have MS-SSIM), "overlap_psnr": fraction,
    "overlap_log_rate": ..., "overlap_ms_ssim": ...}}``; a value the curves cannot give (no
    overlap, too few points) is None with the reason under ``"errors"``; a value computed over
    less than :data:`MIN_OVERLAP` of the union range, or over a curve whose quality does not rise
    with its rate, gets a line under ``"warnings"`` (and its key under ``"folded"``, the cells
    :func:`markdown_table` marks). Points that are not finite (a lossless
    point's infinite PSNR, or null for it read back from a results file) are left out of the
    BD values, with a warning saying so (one such point had made every BD value None).
    """
    out: Dict[str, Dict] = {}
    rt, qt, mt, dropped_t = _finite_curve(test)
    for name, ref in anchors.items():
        ra, qa, ma, dropped_a = _finite_curve(ref)
        row: Dict = {"errors": {}, "warnings": []}
        for n, whose in ((dropped_t, "the test curve"), (dropped_a, f"{name}'s curve")):
            if n:
                row["warnings"].append(f"{n} point(s) of {whose} left out: their PSNR or "
                                       f"MS-SSIM is not finite (lossless)")
        try:
            row["overlap_psnr"] = overlap(qa, qt)
            row["overlap_log_rate"] = overlap(np.log10(ra), np.log10(rt))
        except ValueError as e:   # (no finite point left in a curve)
            row["overlap_psnr"] = row["overlap_log_rate"] = None
            row["errors"]["overlap"] = str(e)
            out[name] = row
            continue
        has_ms = bool(mt and ma)   # (_finite_curve: no None left in them)
        if has_ms:
            dba, dbt = [ms_ssim_db(v) for v in ma], [ms_ssim_db(v) for v in mt]
            row["overlap_ms_ssim"] = overlap(dba, dbt)
        jobs = []
        for m in methods:
            jobs.append((f"bd_rate_{m}", bd_rate, (ra, qa, rt, qt, m)))
            jobs.append((f"bd_psnr_{m}", bd_psnr, (ra, qa, rt, qt, m)))
            if has_ms:
                jobs.append((f"bd_rate_ms_ssim_{m}", bd_rate, (ra, dba, rt, dbt, m)))
        for key, fn, a in jobs:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", NonMonotoneCurveWarning)
                warnings.simplefilter("ignore", SmallOverlapWarning)   # (said below)
                try:
                    row[key] = fn(*a)
                except ValueError as e:
                    row[key] = None
                    row["errors"][key] = str(e)
            for w in caught:   # a curve that folds back: said once per anchor, in the summary
                if issubclass(w.category, NonMonotoneCurveWarning):
                    row.setdefault("folded", []).append(key)   # (the table marks these cells)
                    line = f"{key}: {w.message}"
                    if not any(x.split(": ", 1)[1] == str(w.message) for x in row["warnings"]):
                        row["warnings"].append(line)
                else:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        axis = {"bd_rate": "overlap_psnr", "bd_psnr": "overlap_log_rate",
                "bd_rate_ms_ssim": "overlap_ms_ssim"}
        for key, _, _ in jobs:
            ov = row[axis[key.rsplit("_", 1)[0]]]
            if row[key] is not None and ov < MIN_OVERLAP:
                row["warnings"].append(f"{key}: the curves share only {ov:.0%} of their range on "
                                       f"the integration axis (< {MIN_OVERLAP:.0%}); the value "
                                       "averages over that part only")
        for k in ("errors", "warnings"):
            if not row[k]:
                del row[k]
        out[name] = row
    return out


def goal_check(slim: Dict, bd: Dict[str, Dict], balle: Dict = BALLE2017) -> Dict:
    """The issue's Kodak goals, evaluated on measured curves (values and pass/fail; None read
    back from a results file is taken as NaN)."""
    r = none_as_nan(slim)["results"]
    order = np.argsort(r["width"])
    bpp = np.asarray(r["bpp"])[order]
    q = np.asarray(r["psnr-rgb"])[order]
    widest_bpp, widest_psnr = float(bpp[-1]), float(q[-1])
    ref = quality_at_rate(balle["results"]["bpp"], balle["results"]["psnr-rgb"], widest_bpp) \
        if math.isfinite(widest_bpp) and widest_bpp > 0 else math.nan   # (raises on those)
    gap = None if math.isnan(ref) else ref - widest_psnr
    jpeg = bd.get("JPEG", {}).get("bd_rate_pchip")
    return {
        "monotone": bool(np.all(np.diff(bpp) > 0) and np.all(np.diff(q) > 0)),
        "bpp_span": [float(bpp.min()), float(bpp.max())],
        "bd_rate_vs_jpeg_pchip": jpeg,
        "bd_rate_vs_jpeg_below_-30": None if jpeg is None else bool(jpeg < -30),
        "widest_bpp": widest_bpp, "widest_psnr": widest_psnr,
        "balle2017_psnr_at_widest_bpp": None if math.isnan(ref) else ref,
        "gap_to_balle2017_db": gap,
        "within_1.5dB_of_balle2017": None if gap is None else bool(gap <= 1.5),
    }


def _fmt(v, spec):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def markdown_table(slim: Dict, bd: Dict[str, Dict]) -> str:
    """Markdown tables: per width RD values and times; BD-rates against each anchor (a value
    that is None or NaN, e.g. read back from a results file: n/a)."""
    r = none_as_nan(slim)["results"]
    lines = ["| width | bpp (file) | bpp (estimated) | PSNR dB | MS-SSIM | MS-SSIM dB | "
             "encode ms | decode ms |", "|---|---|---|---|---|---|---|---|"]
    for i, w in enumerate(r["width"]):
        cells = [_fmt(r[k][i], s) for k, s in (("bpp", ".4f"), ("bpp-estimated", ".4f"),
                                               ("psnr-rgb", ".2f"), ("ms-ssim-rgb", ".4f"),
                                               ("ms-ssim-db", ".2f"), ("encode_ms", ".0f"),
                                               ("decode_ms", ".0f"))]
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    lines += ["", "| anchor | BD-rate PSNR (PCHIP) | BD-rate PSNR (Akima) | BD-PSNR dB (PCHIP) | "
              "BD-rate MS-SSIM (PCHIP) | PSNR overlap |", "|---|---|---|---|---|---|"]
    low = folds = False
    for name, b in bd.items():
        small = " ".join(w for w in b.get("warnings", []) if "share only" in w)
        # the cells computed over a curve that folds back ("folded": their keys; a summary
        # without it, from before: every cell of the row; the mark went on all of them, also
        # when only the MS-SSIM curve folded)
        folded_keys = b.get("folded")
        row_folded = folded_keys is None and any("the quality falls" in w
                                                 for w in b.get("warnings", []))

        def cell(key, spec, unit=""):
            nonlocal low, folds
            v = _fmt(b.get(key), spec)
            if v == "n/a":
                return v
            mark = "*" if key + ":" in small else ""
            low = low or bool(mark)
            fold = row_folded or key in (folded_keys or ())
            folds = folds or fold
            return v + unit + mark + ("^" if fold else "")

        lines.append(f"| {name} | {cell('bd_rate_pchip', '+.1f', ' %')} | "
                     f"{cell('bd_rate_akima', '+.1f', ' %')} | {cell('bd_psnr_pchip', '+.2f')} | "
                     f"{cell('bd_rate_ms_ssim_pchip', '+.1f', ' %')} | "
                     f"{_fmt(b.get('overlap_psnr'), '.0%')} |")
    if low:
        lines.append(f"\n\\* the shared part of the two curves' ranges on the integration axis "
                     f"is less than {MIN_OVERLAP:.0%} of their union (one curve reaches well past "
                     "the other): the value averages over the shared part only (see summary.json)")
    if folds:
        lines.append("\n^ a curve's quality falls somewhere as its rate rises: the value averages "
                     "over a curve that folds back (see summary.json)")
    return "\n".join(lines) + "\n"


def none_as_nan(curve: Dict) -> Dict:
    """``curve`` (CompressAI layout) with the None entries of its ``results`` lists as NaN: a
    results file read back holds null where :func:`json_finite` wrote a lossless point's inf
    (the table, the goal check and the plot failed on it with TypeErrors)."""
    res = {k: [math.nan if v is None else v for v in vals] if isinstance(vals, list) else vals
           for k, vals in curve.get("results", {}).items()}
    return {**curve, "results": res}


def json_finite(obj):
    """``obj`` (nested dicts / lists / tuples) with its NaN / inf floats replaced by None, for
    strict JSON (``json.dumps(..., allow_nan=False)``: a lossless PSNR of inf becomes null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_finite(v) for v in obj]
    return obj


def _write_json(path: str, obj) -> None:
    from ..io import atomic_write_bytes

    text = json.dumps(json_finite(obj), indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode(), overwrite=True)


#: What :func:`evaluate_all` writes into its folder (``slimkernels eval`` refuses a folder that
#: holds any of them unless ``--force``).
OUTPUTS = ("summary.json", "slimcae.json", "table.md", "rd.png", "jpeg.json", "webp.json",
           "balle2017.json", "bitstreams")


def earlier_outputs(out_dir: str) -> List[str]:
    """The names of :data:`OUTPUTS` in ``out_dir`` (links too, dangling ones included)."""
    return [n for n in OUTPUTS if os.path.lexists(os.path.join(out_dir, n))]


class EvaluationBusyError(RuntimeError):
    """Another evaluation is running into the same folder (:func:`folder_lock`)."""


@contextlib.contextmanager
def folder_lock(out_dir: str):
    """Hold an exclusive lock on the folder ``out_dir`` (which must exist) while the body runs:
    one evaluation into a folder at a time (two had written the same files, and the second's
    :func:`recover_interrupted` took the first's set-aside results for a killed run's). A
    ``flock`` on the folder itself: no lock file, released by the system when the process
    ends, even when killed. Where the file system has no such locks, the body runs unlocked.

    Raises:
        EvaluationBusyError: another process, or another open of this lock, holds it."""
    try:
        import fcntl
    except ImportError:   # (no flock on this system)
        yield
        return
    fd = os.open(out_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:   # (another errno: a file system without flock, unlocked)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise EvaluationBusyError(
                    f"{out_dir}: another evaluation is running into this folder; wait for it "
                    f"to finish, or choose another folder") from None
        yield
    finally:
        os.close(fd)


def recover_interrupted(out_dir: str) -> Optional[str]:
    """Put back the earlier evaluation that a run killed in ``out_dir`` left set aside (a
    hidden ``.earlier-*`` folder: SIGKILL, an out-of-memory kill, or ``python/evaluate.py``'s
    default SIGTERM ended the run before it could): that run's own outputs, which are partial,
    are removed first. With several such folders (killed again while one was left) the oldest
    holds the evaluation from before them and comes back; the others hold partial runs and go.
    Returns a note saying what was done, or None when there was nothing to recover.

    Raises:
        EvaluationBusyError: an evaluation is running into ``out_dir`` (its ``.earlier-*`` is
            its own, not a killed run's; :func:`folder_lock`)."""
    if not os.path.isdir(out_dir):
        return None
    with folder_lock(out_dir):
        return _recover_interrupted(out_dir)


def _recover_interrupted(out_dir: str) -> Optional[str]:
    """:func:`recover_interrupted`, with ``out_dir`` (a folder) locked by the caller."""
    left = [p for p in (os.path.join(out_dir, n) for n in os.listdir(out_dir)
                        if n.startswith(".earlier-"))
            if os.path.isdir(p) and not os.path.islink(p)]
    if not left:
        return None
    left.sort(key=lambda d: os.stat(d).st_mtime)
    remove_outputs(out_dir, OUTPUTS)
    for extra in left[1:]:
        shutil.rmtree(extra)
    kept = sorted(os.listdir(left[0]))
    _put_back(out_dir, left[0])
    return (f"{out_dir}: an evaluation killed before it finished had set the earlier results "
            f"aside in {os.path.basename(left[0])}: put back ({', '.join(kept) or 'nothing'}), "
            f"the killed run's partial outputs removed")


def remove_outputs(out_dir: str, names) -> None:
    """Remove ``names`` (of :data:`OUTPUTS`) from ``out_dir``: folders with what they hold, a
    link itself (not its target); missing ones are skipped."""
    for n in names:
        p = os.path.join(out_dir, n)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        elif os.path.lexists(p):
            os.remove(p)


def evaluate_all(model, folder: str, out_dir: str, widths: Optional[Sequence[int]] = None,
                 precision: str = "auto", limit: Optional[int] = None, classical: bool = True,
                 jpeg_qualities: Optional[Sequence[int]] = None,
                 webp_qualities: Optional[Sequence[int]] = None, streams: int = 1,
                 plot: bool = True, progress: Optional[Callable[[str], None]] = None,
                 overwrite: bool = False) -> Dict:
    """Full evaluation: SlimCAE per width, JPEG and WebP on the same images, the published
    Balle 2017 curve, BD-rates, the goal check; writes into ``out_dir``:

    ``slimcae.json``, ``jpeg.json``, ``webp.json``, ``balle2017.json`` (CompressAI results
    layout), ``summary.json`` (all of it plus BD-rates and goals), ``table.md``, ``rd.png`` and the
    ``.slim`` files under ``bitstreams/``.

    An earlier evaluation in ``out_dir`` (any of :data:`OUTPUTS`) is a FileExistsError, or with
    ``overwrite`` replaced: its JPEG / WebP results, plot and other widths' bitstreams had
    stayed beside the new ones. The arguments are checked first (folder, widths, precision,
    limit, streams, qualities, ``out_dir``); the earlier evaluation is then set aside, put back
    when this run fails (a bad image, Ctrl-C: it had been deleted first), and removed when it
    succeeds. A failed run leaves none of its own outputs (nor the ``out_dir`` it made). What a
    run killed without cleanup left set aside is put back first (:func:`recover_interrupted`,
    with a RuntimeWarning saying so). The folder is locked while the run goes on
    (:func:`folder_lock`).

    Returns:
        ``{"slimcae": ..., "references": {name: curve}, "bd": {...}, "goals": {...},
        "files": {...}}``.

    Raises:
        ValueError: a bad argument (as :func:`evaluate`; JPEG / WebP qualities not ints in
            0..100, ``out_dir`` a file), before anything is run or set aside.
        FileExistsError: an earlier evaluation in ``out_dir`` and not ``overwrite``.
        EvaluationBusyError: another evaluation is running into ``out_dir``.
    """
    from ..codec import resolve_precision
    from .classical import check_qualities

    check_out_dir(out_dir)
    # (a first recovery and look, before the arguments' checks; again under the folder's lock
    # for the run below, where another run may have come and gone meanwhile)
    note = recover_interrupted(out_dir)
    if note is not None:
        warnings.warn(note, RuntimeWarning, stacklevel=2)
    earlier = earlier_outputs(out_dir) if os.path.isdir(out_dir) else []
    if earlier and not overwrite:
        raise _exists_error(out_dir, earlier)
    # what would fail late, checked before the earlier evaluation is touched (a typo in the
    # folder's name, a width the model lacks, a JPEG quality of 200 had removed it)
    resolve_precision(precision, next(model.parameters()).device)
    check_widths(model, widths)
    _check_streams(streams)
    _check_folder(folder)
    _check_limit(limit)
    if classical:
        jpeg_qualities = check_qualities("jpeg", jpeg_qualities, "jpeg_qualities")
        webp_qualities = check_qualities("webp", webp_qualities, "webp_qualities")
    made = missing_folders(out_dir)   # (out/ and its missing parents: removed on failure)
    os.makedirs(out_dir, exist_ok=True)
    try:
        with folder_lock(out_dir):   # (one evaluation into a folder at a time)
            note = _recover_interrupted(out_dir)
            if note is not None:
                warnings.warn(note, RuntimeWarning, stacklevel=2)
            earlier = earlier_outputs(out_dir)
            if earlier and not overwrite:
                raise _exists_error(out_dir, earlier)
            aside = _set_aside(out_dir, earlier)
            try:
                summary = _evaluate_all(model, folder, out_dir, widths, precision, limit,
                                        classical, jpeg_qualities, webp_qualities, streams, plot,
                                        progress)
            except BaseException:
                _restore(out_dir, OUTPUTS, aside)   # (this run's outputs go: a rerun needs no
                raise                               # overwrite)
            _discard(aside)
    except BaseException:
        remove_empty_folders(made)   # (the parents it made too: --out new/sub left new/)
        raise
    return summary


def _exists_error(out_dir: str, earlier: List[str]) -> FileExistsError:
    return FileExistsError(f"{out_dir} already holds an evaluation ({', '.join(earlier)}): "
                           f"choose another out_dir, or pass overwrite=True to replace it")


def _set_aside(out: str, names: List[str]) -> Optional[str]:
    """Move ``names`` of folder ``out`` into a new hidden folder inside it; returns that folder
    (None when there is nothing to move). Interrupted (Ctrl-C, an entry that cannot move), it
    moves back what it had moved and raises (they had stayed hidden in the folder)."""
    if not names:
        return None
    aside = tempfile.mkdtemp(prefix=".earlier-", dir=out)
    try:
        for n in names:
            os.replace(os.path.join(out, n), os.path.join(aside, n))
    except BaseException:
        _put_back(out, aside)
        raise
    return aside


def _put_back(out: str, aside: str) -> None:
    """Move everything in ``aside`` back into ``out`` (replacing what this run left under the
    same names) and remove ``aside``."""
    for n in os.listdir(aside):
        dst = os.path.join(out, n)
        if os.path.isdir(dst) and not os.path.islink(dst):
            shutil.rmtree(dst)
        os.replace(os.path.join(aside, n), dst)
    os.rmdir(aside)


def _restore(out: str, names, aside: Optional[str]) -> None:
    """After a failed run: its outputs named in ``names`` go, and what :func:`_set_aside` moved
    to ``aside`` (None: nothing) comes back (also when the removal is interrupted)."""
    try:
        remove_outputs(out, names)
    finally:
        if aside is not None:
            _put_back(out, aside)


def _discard(aside: Optional[str]) -> None:
    if aside is not None:
        shutil.rmtree(aside)


def _evaluate_all(model, folder, out_dir, widths, precision, limit, classical, jpeg_qualities,
                  webp_qualities, streams, plot, progress) -> Dict:
    """:func:`evaluate_all`'s run, into ``out_dir`` (made, and without earlier outputs)."""
    from ..io import read_image
    from .classical import codec_available, evaluate_codec

    slim = evaluate(model, folder, widths, precision, limit, out_dir, streams, progress=progress)
    refs: Dict[str, Dict] = {}
    files = {"slimcae": os.path.join(out_dir, "slimcae.json")}
    _write_json(files["slimcae"], slim)
    if classical:
        images = [read_image(p)[0] for p in list_images(folder, limit)]
        for codec, qs in (("jpeg", jpeg_qualities), ("webp", webp_qualities)):
            if not codec_available(codec):
                if progress:
                    progress(f"{codec}: not available in this Pillow build, skipped")
                continue
            t0 = time.perf_counter()
            curve = evaluate_codec(images, codec, qs)
            refs[curve["name"]] = curve
            files[codec] = os.path.join(out_dir, f"{codec}.json")
            _write_json(files[codec], curve)
            if progress:
                progress(f"{curve['name']}: {len(curve['results']['bpp'])} qualities in "
                         f"{time.perf_counter() - t0:.1f} s")
    refs["Balle2017"] = BALLE2017
    files["balle2017"] = os.path.join(out_dir, "balle2017.json")
    _write_json(files["balle2017"], BALLE2017)
    bd = bd_summary(slim, refs)
    goals = goal_check(slim, bd)
    files["table"] = os.path.join(out_dir, "table.md")
    from ..io import atomic_write_bytes

    atomic_write_bytes(files["table"], markdown_table(slim, bd).encode(), overwrite=True)
    if plot:
        from .plot import rd_plot

        files["plot"] = os.path.join(out_dir, "rd.png")
        rd_plot(slim, refs, files["plot"],
                title=f"{_folder_title(folder)} ({len(slim['images'])} images), "
                      f"{slim['precision']}")
    summary = {"slimcae": slim, "references": refs, "bd": bd, "goals": goals, "files": files}
    files["summary"] = os.path.join(out_dir, "summary.json")
    _write_json(files["summary"], {k: v for k, v in summary.items()})
    return summary
