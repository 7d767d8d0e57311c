"""slimkernels.training.data.CropSampler: uniform or area-weighted image picks, reproducible from
its state."""
import pytest
import torch

from slimkernels.training.data import CropSampler


def _images():
    small = torch.zeros(3, 32, 32, dtype=torch.uint8)        # 1,024 pixels, value 0
    large = torch.full((3, 64, 64), 255, dtype=torch.uint8)  # 4,096 pixels, value 255
    return [small, large]


@pytest.mark.parametrize("by_area,expected", [(False, 0.5), (True, 0.8)])
def test_picks_follow_image_count_or_area(by_area, expected):
    s = CropSampler(_images(), seed=3, by_area=by_area)
    x = s.sample(2000, 16)
    assert x.shape == (2000, 3, 16, 16) and x.dtype == torch.float32
    frac_large = float((x[:, 0, 0, 0] == 1.0).double().mean())   # crops of the large image
    assert abs(frac_large - expected) < 0.04, frac_large


def test_state_dict_resumes_the_same_crops():
    a = CropSampler(_images(), seed=5, by_area=True)
    a.sample(7, 16)
    st = a.state_dict()
    nxt = a.sample(9, 16)
    b = CropSampler(_images(), seed=99, by_area=True)
    b.load_state_dict(st)
    assert torch.equal(b.sample(9, 16), nxt)


def test_trainer_option_parses():
    from slimkernels.training.cli import build_parser, config_from_args
    assert config_from_args(build_parser().parse_args(["--sample-by-area"])).sample_by_area
    assert not config_from_args(build_parser().parse_args([])).sample_by_area


def test_load_rgb_reads_and_names_bad_files(tmp_path, monkeypatch):
    import numpy as np
    import PIL.Image

    from slimkernels.training.data import load_rgb
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    PIL.Image.fromarray(arr).save(tmp_path / "ok.png")
    x = load_rgb(str(tmp_path / "ok.png"))
    assert x.shape == (3, 5, 7) and x.dtype == torch.uint8
    assert torch.equal(x, torch.from_numpy(arr).permute(2, 0, 1))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"bad\.png: not an image file .* remove or replace"):
        load_rgb(str(tmp_path / "bad.png"))
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 10)   # 35 pixels > 2 x 10
    with pytest.raises(ValueError, match=r"ok\.png: too large to read safely"):
        load_rgb(str(tmp_path / "ok.png"))


def test_sample_refuses_a_crop_no_image_fits():
    s = CropSampler(_images(), seed=0)                 # 32x32 and 64x64
    assert s.sample(3, 64).shape == (3, 3, 64, 64)     # only the large image fits: fine
    with pytest.raises(ValueError, match="no training image is at least 65x65.*64x64"):
        s.sample(1, 65)
    with pytest.raises(ValueError, match="must be >= 1"):
        s.sample(0, 16)


def test_a_16_bit_grayscale_training_image_is_read_as_the_codec_reads_it(tmp_path):
    """(Pillow's convert("RGB") clipped it to white: mean 254.6 for a mid-gray image.)"""
    import numpy as np
    from PIL import Image

    from slimkernels.io import read_image
    from slimkernels.training.data import load_rgb
    g = (np.arange(6 * 8).reshape(6, 8) * 1300).astype(np.uint16)
    Image.fromarray(g).save(tmp_path / "g16.png")
    x = load_rgb(str(tmp_path / "g16.png"))
    assert x.dtype == torch.uint8 and tuple(x.shape) == (3, 6, 8)
    want = torch.from_numpy(np.round(g / 257.0).astype(np.uint8))
    assert torch.equal(x[0], want) and torch.equal(x[1], want)
    assert torch.equal(x[None].float() / 255, read_image(str(tmp_path / "g16.png"))[0])


@pytest.mark.parametrize("image,msg", [
    (torch.rand(3, 32, 32), r"image 0 is \(3, 32, 32\) torch.float32: it takes \[3, H, W\] uint8"),
    (torch.zeros(32, 32, 3, dtype=torch.uint8), r"image 0 is \(32, 32, 3\) torch.uint8"),
    ("a.png", r"image 0 is str"),
])
def test_sampler_refuses_images_it_would_crop_wrong(image, msg):
    """(Float images in [0, 1] were cast into the uint8 batch: all-zero crops, silently; an HWC
    image read as 3 pixels wide: "no training image is at least 16x16 (the largest is
    32x3)".)"""
    with pytest.raises(ValueError, match="CropSampler: " + msg):
        CropSampler([image])


def test_sampler_and_helpers_refuse_bad_numbers():
    """(seed='a', sample(1.5, 16): torch errors; split_train_val(p, 0): "slice step cannot be
    zero"; center_crops of an 8x8 image: torch's interpolate RuntimeError.)"""
    from slimkernels.training.data import center_crops, split_train_val
    with pytest.raises(ValueError, match=r"CropSampler: seed 'a' must be an int"):
        CropSampler(_images(), seed="a")
    s = CropSampler(_images())
    with pytest.raises(ValueError, match=r"sample: batch 1.5 must be >= 1 \(an int\)"):
        s.sample(1.5, 16)
    with pytest.raises(ValueError, match=r"crop 16.0 must be >= 1 \(an int\)"):
        s.sample(1, 16.0)
    with pytest.raises(ValueError, match=r"split_train_val: val_every 0 must be an int >= 1"):
        split_train_val(["a", "b"], 0)
    with pytest.raises(ValueError, match=r"center_crops: image 1 is 8x8 for size 16"):
        center_crops([torch.zeros(3, 16, 16, dtype=torch.uint8),
                      torch.zeros(3, 8, 8, dtype=torch.uint8)], 16)


def test_crop_sampler_takes_gray_uint8_images_as_three_channels():
    """(the input check took [3, H, W] only: [1, H, W] gray images, repeated into the three
    channels before, were refused.)"""
    b = CropSampler([torch.randint(0, 255, (1, 40, 40), dtype=torch.uint8)], seed=0).sample(2, 16)
    assert b.shape == (2, 3, 16, 16) and torch.equal(b[:, 0], b[:, 2])
