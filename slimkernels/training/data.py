"""Training data: PNG/JPEG folders held in memory as uint8, sampled as random crops."""
from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import numpy as np
import torch

from .._checks import is_int
from ..io import IMAGE_EXTENSIONS, MissingFileError, image_names, read_image_uint8

IMAGE_EXTS = IMAGE_EXTENSIONS   # (the name this module had for it)


def list_images(folder: str) -> List[str]:
    """Sorted paths of the image files directly in ``folder`` (ValueError if there are none,
    or the folder cannot be listed, e.g. without read permission: a raw PermissionError
    before; a subfolder named like an image, ``x.png/``, is not one)."""
    if not os.path.isdir(folder):
        if not os.path.exists(folder):
            raise MissingFileError(f"image folder {folder!r} does not exist")
        raise ValueError(f"image folder {folder!r} is a file, not a folder")
    try:
        names = image_names(folder)
    except OSError as e:
        raise ValueError(f"image folder {folder!r} cannot be read ({e.strerror or e})") from None
    paths = [os.path.join(folder, f) for f in names]
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTS)}) in {folder!r}")
    return paths


def load_rgb(path: str) -> torch.Tensor:
    """Read an image as a ``[3, H, W]`` uint8 tensor, converted to 8-bit RGB as the codec
    reads images (:func:`slimkernels.io.read_image_uint8`: a 16-bit grayscale image used to
    turn white here through Pillow's own conversion).

    Raises:
        ValueError: see :func:`slimkernels.io.read_image_uint8` (the message names the file:
            remove or replace it in the training folder).
    """
    arr, _ = read_image_uint8(path, todo="remove or replace it in the image folder")
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def split_train_val(paths: Sequence[str], val_every: int = 20) -> Tuple[List[str], List[str]]:
    """Deterministic hold-out: every ``val_every``-th path (sorted order) is validation
    (``val_every``: an int >= 1; 0 was "slice step cannot be zero")."""
    if not is_int(val_every) or val_every < 1:
        raise ValueError(f"split_train_val: val_every {val_every!r} must be an int >= 1")
    paths = list(paths)
    val = paths[val_every // 2::val_every]
    train = [p for p in paths if p not in set(val)]
    return train, val


def check_seed(seed, where: str) -> None:
    """ValueError naming ``where`` unless ``seed`` is an int that torch's generators take
    (``-2^63 .. 2^64-1``)."""
    if not is_int(seed) or not -2 ** 63 <= seed < 2 ** 64:
        raise ValueError(f"{where} {seed!r} must be an int in -2^63 .. 2^64-1 (torch's seeds)")


class CropSampler:
    """Random crops with random horizontal flips from images kept in memory.

    Args:
        images: list of ``[3, H, W]`` uint8 tensors (each at least ``crop`` on both sides).
        seed: RNG seed (the sampler state is saved in checkpoints through :meth:`state_dict`).
        by_area: pick each crop's image with probability proportional to its pixel count (every
            pixel equally likely to be in a crop) instead of uniformly over images. With
            ../shared/data/train (220 photos of 512x512, 23 of about 2048x1400) uniform picks
            give the large photos ~10 % of the crops for ~half of the pixels.
    """

    def __init__(self, images: Sequence[torch.Tensor], seed: int = 0, by_area: bool = False):
        if not images:
            raise ValueError("CropSampler needs at least one image")
        self.images = list(images)
        for i, im in enumerate(self.images):
            # (float images in [0, 1] were cast into the uint8 batch: all-zero crops; HWC ones
            # read as 3 pixels wide)
            if not (isinstance(im, torch.Tensor) and im.dtype == torch.uint8 and im.dim() == 3
                    and im.shape[0] in (1, 3)):
                got = (f"{tuple(im.shape)} {im.dtype}" if isinstance(im, torch.Tensor)
                       else type(im).__name__)
                raise ValueError(f"CropSampler: image {i} is {got}: it takes [3, H, W] uint8 "
                                 f"tensors (as load_rgb reads them; [1, H, W] gray ones are "
                                 f"repeated into the 3 channels)")
        check_seed(seed, "CropSampler: seed")
        self.gen = torch.Generator().manual_seed(seed)
        self.weights = (torch.tensor([float(im.shape[-2] * im.shape[-1]) for im in self.images],
                                     dtype=torch.float64) if by_area else None)

    def _pick(self) -> int:
        if self.weights is None:
            return int(torch.randint(len(self.images), (1,), generator=self.gen))
        return int(torch.multinomial(self.weights, 1, generator=self.gen))

    def sample(self, batch: int, crop: int) -> torch.Tensor:
        """A ``[batch, 3, crop, crop]`` float32 batch in [0, 1] (crops of the images at least
        ``crop`` on both sides; ValueError if there is none)."""
        if not is_int(batch) or batch < 1:
            raise ValueError(f"sample: batch {batch!r} must be >= 1 (an int)")
        self.check_crop(crop)
        out = torch.empty(batch, 3, crop, crop, dtype=torch.uint8)
        g = self.gen
        for b in range(batch):
            while True:
                img = self.images[self._pick()]
                _, H, W = img.shape
                if H >= crop and W >= crop:
                    break
            i = int(torch.randint(H - crop + 1, (1,), generator=g))
            j = int(torch.randint(W - crop + 1, (1,), generator=g))
            patch = img[:, i:i + crop, j:j + crop]
            if bool(torch.randint(2, (1,), generator=g)):
                patch = patch.flip(-1)
            out[b] = patch
        return out.float().div_(255.0)

    def check_crop(self, crop: int) -> None:
        """ValueError unless ``crop >= 1`` and some image is at least ``crop`` on both sides."""
        if not is_int(crop) or crop < 1:
            raise ValueError(f"crop {crop!r} must be >= 1 (an int)")
        if not any(im.shape[-2] >= crop and im.shape[-1] >= crop for im in self.images):
            big = max(self.images, key=lambda im: min(im.shape[-2:]))
            raise ValueError(f"no training image is at least {crop}x{crop} (the largest is "
                             f"{big.shape[-2]}x{big.shape[-1]}): use a smaller crop or larger images")

    def state_dict(self) -> dict:
        """``{"gen": uint8 tensor}``: the crop RNG's state (saved in training checkpoints)."""
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (the next crops are those the saved sampler would have
        drawn)."""
        self.gen.set_state(state["gen"])


def center_crops(images: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """Center crops ``[len(images), 3, size, size]`` float32 in [0, 1] (for validation)."""
    out = []
    for k, img in enumerate(images):
        _, H, W = img.shape
        s = min(size, H, W) // 16 * 16
        if s == 0:   # (torch's interpolate error on the empty crop)
            raise ValueError(f"center_crops: image {k} is {H}x{W} for size {size}: both (and "
                             f"size) must be at least 16")
        i, j = (H - s) // 2, (W - s) // 2
        crop = img[:, i:i + s, j:j + s]
        if s != size:
            crop = torch.nn.functional.interpolate(crop[None].float(), size=(size, size),
                                                   mode="bilinear", align_corners=False)[0]
        out.append(crop.float())
    return torch.stack(out).div_(255.0)
