"""JPEG / WebP sweeps through Pillow: rate from the bytes, quality of the decoded image."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from slimkernels.evaluation.classical import codec_available, encode_decode, evaluate_codec

from .conftest import make_image


def _img(seed=1, h=176, w=200):
    a = make_image(seed, h, w)
    return a, torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255


@pytest.mark.parametrize("codec", ["jpeg", "webp"])
def test_encode_decode_round_trip(codec):
    if not codec_available(codec):
        pytest.skip(f"Pillow has no {codec}")
    a, x = _img()
    data, y, enc_ms, dec_ms = encode_decode(x, codec, 75)
    assert data[:3] == b"\xff\xd8\xff" if codec == "jpeg" else data[8:12] == b"WEBP"
    # the decoded image is what Pillow decodes from those bytes, independently
    ref = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    assert torch.equal(y[0].permute(1, 2, 0), torch.from_numpy(ref))
    assert y.dtype == torch.uint8 and y.shape == x.shape
    assert enc_ms > 0 and dec_ms > 0


@pytest.mark.parametrize("codec", ["jpeg", "webp"])
def test_evaluate_codec_curve(codec):
    if not codec_available(codec):
        pytest.skip(f"Pillow has no {codec}")
    imgs = [_img(1), _img(2, 168, 192)]
    xs = [x for _, x in imgs]
    curve = evaluate_codec(xs, codec, qualities=[80, 20])
    r = curve["results"]
    assert r["quality"] == [20, 80]
    assert r["bpp"][0] < r["bpp"][1] and r["psnr-rgb"][0] < r["psnr-rgb"][1]
    assert r["ms-ssim-rgb"][0] < r["ms-ssim-rgb"][1] <= 1
    # recompute one point independently: bytes -> bpp; decoded pixels -> PSNR in NumPy float64
    bpps, psnrs = [], []
    for a, x in imgs:
        data, y, _, _ = encode_decode(x, codec, 20)
        bpps.append(len(data) * 8 / (a.shape[0] * a.shape[1]))
        mse = np.mean((a.astype(np.float64) - y[0].permute(1, 2, 0).numpy().astype(np.float64)) ** 2)
        psnrs.append(10 * np.log10(255.0 ** 2 / mse))
    assert r["bpp"][0] == pytest.approx(np.mean(bpps), rel=1e-12)
    assert r["psnr-rgb"][0] == pytest.approx(np.mean(psnrs), rel=1e-12)
    assert len(curve["per_image"]) == 2 and len(curve["per_image"][0]["images"]) == 2


def test_bad_arguments():
    _, x = _img()
    with pytest.raises(ValueError, match="unknown codec"):
        encode_decode(x, "bpg", 50)
    with pytest.raises(ValueError, match="0..100"):
        encode_decode(x, "jpeg", 101)
    with pytest.raises(ValueError, match="no images"):
        evaluate_codec([], "jpeg")
    with pytest.raises(ValueError, match="RGB"):
        encode_decode(torch.rand(1, 1, 8, 8), "jpeg", 50)


def test_unknown_codec_is_a_value_error():
    """(a KeyError from the default-quality table before the name was checked.)"""
    import torch

    from slimkernels.evaluation.classical import codec_available, evaluate_codec
    with pytest.raises(ValueError, match="unknown codec 'png'"):
        evaluate_codec([torch.zeros(1, 3, 8, 8)], "png")
    with pytest.raises(ValueError, match="unknown codec 'avif'"):
        codec_available("avif")


def test_qualities_that_are_not_ints_in_range_are_refused():
    """(50.5 ran as quality 50; a single int 50 was "'int' object is not iterable"; evaluate_all
    checked the qualities only after the whole SlimCAE run.)"""
    from slimkernels.evaluation.classical import DEFAULT_QUALITIES, check_qualities
    with pytest.raises(ValueError, match=r"qualities \[50.5, 101\]: jpeg qualities are ints in "
                                         r"0..100"):
        check_qualities("jpeg", [80, 50.5, 101])
    with pytest.raises(ValueError, match="webp_qualities must be a list of ints in 0..100, got 50"):
        check_qualities("webp", 50, "webp_qualities")
    with pytest.raises(ValueError, match=r"qualities \[50.5\]"):
        evaluate_codec([torch.rand(1, 3, 8, 8)], "jpeg", [50.5])
    assert check_qualities("jpeg", None) == list(DEFAULT_QUALITIES["jpeg"])
    assert check_qualities("webp", [90, 10]) == [90, 10]


def test_repeated_qualities_run_once():
    """(A repeated quality made two points of one rate: every BD value against the codec was
    then None.)"""
    from slimkernels.evaluation.classical import check_qualities
    assert check_qualities("jpeg", [50, 10, 50, 90, 10]) == [50, 10, 90]
