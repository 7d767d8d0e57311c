"""slimkernels.io: atomic writes (permissions, no clobbering) and image reading."""
import io
import os
import stat
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from slimkernels import io as sio
from slimkernels.io import read_image_uint8


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture
def umask():
    """Set the process umask for a test, restoring it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda m: os.umask(m)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_new_file_gets_umask_permissions(tmp_path, umask, mask):
    umask(mask)
    p = tmp_path / "a.slim"
    sio.atomic_write_bytes(str(p), b"abc")
    assert p.read_bytes() == b"abc"
    assert _mode(p) == 0o666 & ~mask
    assert [q.name for q in tmp_path.iterdir()] == ["a.slim"]   # no temp file left


def test_overwrite_keeps_the_replaced_files_permissions(tmp_path, umask):
    umask(0o022)
    p = tmp_path / "a.png"
    p.write_bytes(b"old")
    os.chmod(p, 0o640)
    sio.atomic_write_bytes(str(p), b"new", overwrite=True)
    assert p.read_bytes() == b"new"
    assert _mode(p) == 0o640


def test_refuses_a_file_that_appears_after_the_check(tmp_path, monkeypatch):
    p = tmp_path / "a.slim"
    p.write_bytes(b"someone else's")
    real_exists = os.path.exists
    # the first existence check misses the file (another process creates it right after)
    monkeypatch.setattr(sio.os.path, "exists", lambda q: False if q == str(p) else real_exists(q))
    with pytest.raises(FileExistsError, match="--force"):
        sio.atomic_write_bytes(str(p), b"ours")
    assert p.read_bytes() == b"someone else's"
    assert [q.name for q in tmp_path.iterdir()] == ["a.slim"]


def test_without_hard_links_falls_back_to_check_and_rename(tmp_path, monkeypatch):
    def no_link(src, dst):
        raise PermissionError("hard links not supported here")
    monkeypatch.setattr(sio.os, "link", no_link)
    p = tmp_path / "a.slim"
    sio.atomic_write_bytes(str(p), b"one")
    assert p.read_bytes() == b"one"
    with pytest.raises(FileExistsError):
        sio.atomic_write_bytes(str(p), b"two")
    assert p.read_bytes() == b"one"
    sio.atomic_write_bytes(str(p), b"two", overwrite=True)
    assert p.read_bytes() == b"two"
    assert [q.name for q in tmp_path.iterdir()] == ["a.slim"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(fd):
        raise OSError("disk full")
    monkeypatch.setattr(sio.os, "fsync", boom)
    p = tmp_path / "a.slim"
    with pytest.raises(OSError, match="disk full"):
        sio.atomic_write_bytes(str(p), b"abc")
    assert list(tmp_path.iterdir()) == []


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        sio.atomic_write_bytes(str(tmp_path / "no" / "a.slim"), b"abc")


def test_atomic_torch_save_round_trips_and_spares_side_files(tmp_path):
    import torch
    p = tmp_path / "model.pt"
    side = tmp_path / "model.pt.tmp"
    side.write_bytes(b"a user's file")
    sio.atomic_torch_save({"w": torch.arange(5)}, str(p))
    sio.atomic_torch_save({"w": torch.arange(3)}, str(p))      # replaces
    assert torch.equal(torch.load(str(p))["w"], torch.arange(3))
    assert side.read_bytes() == b"a user's file"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["model.pt", "model.pt.tmp"]


def test_atomic_torch_save_names_a_full_disk(tmp_path, monkeypatch):
    """(A full disk made torch.save raise "RuntimeError: [enforce fail at inline_container.cc]
    unexpected pos 594176 vs 594064": no word of the disk or of the file; the trainer printed
    it, export_model.py a traceback.) Checked on a real 600 KB tmpfs too (root only, so not
    here): the same OSError."""
    import errno
    import shutil
    from collections import namedtuple

    import torch
    p = tmp_path / "checkpoint.pt"
    sio.atomic_torch_save({"w": torch.arange(3)}, str(p))
    before = p.read_bytes()
    usage = namedtuple("usage", "total used free")

    def torn(obj, f):   # (what torch's zip writer raises after a short write)
        f.write(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    monkeypatch.setattr(torch, "save", torn)
    for free, code, what in ((0, errno.ENOSPC, "no space left on the device to write"),
                             (10 << 30, errno.EIO, "could not write")):
        monkeypatch.setattr(shutil, "disk_usage", lambda _, f=free: usage(1, 1, f))
        with pytest.raises(OSError, match=what) as e:
            sio.atomic_torch_save({"w": torch.arange(5)}, str(p))
        assert e.value.errno == code and str(p) in str(e.value)
        assert p.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]


@pytest.mark.parametrize("orientation,rot90", [(1, 0), (3, 2), (6, -1), (8, 1)])
def test_read_image_applies_the_exif_orientation(tmp_path, orientation, rot90):
    # a camera JPEG stores its pixels unrotated plus an orientation tag: code what viewers show
    import numpy as np
    from PIL import Image

    from slimkernels.io import read_image
    arr = np.zeros((24, 40, 3), np.uint8)
    arr[:6] = 255                                     # a white band along the stored top edge
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"
    im.save(path, exif=exif.tobytes())
    x, note = read_image(str(path))
    want = np.rot90(arr, rot90).astype(np.float32) / 255.0   # rot90(k=-1): 90 degrees clockwise
    assert x.shape == (1, 3) + want.shape[:2]
    assert np.array_equal(x[0].permute(1, 2, 0).numpy(), want)
    assert ("EXIF orientation" in note) == (orientation != 1)


def test_read_image_names_a_multi_frame_file(tmp_path):
    import numpy as np
    from PIL import Image

    from slimkernels.io import read_image
    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (10, 200, 90)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    x, note = read_image(str(path))
    assert "used the first of 3 frames" in note
    assert abs(float(x.mean()) * 255 - 10) < 2          # the first frame's value


def test_read_image_keeps_every_note(tmp_path):
    # a 16-bit image with an EXIF orientation: both conversions are reported
    import numpy as np
    from PIL import Image

    from slimkernels.io import read_image
    im = Image.fromarray(np.full((6, 9), 30000, np.uint16))
    exif = im.getexif()
    exif[0x0112] = 6
    path = tmp_path / "g16.png"
    im.save(path, exif=exif.tobytes())
    x, note = read_image(str(path))
    assert x.shape == (1, 3, 9, 6)
    assert "EXIF orientation" in note and "16-bit" in note, note


def test_an_unwritable_folder_is_named_after_the_file_asked_for(tmp_path, monkeypatch):
    """(The error named the hidden temp file '.slim-xxxx.tmp'.)"""
    import tempfile

    from slimkernels.io import atomic_write_bytes

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    target = tmp_path / "out.slim"
    with pytest.raises(PermissionError, match=f"cannot write {target}: Permission denied"):
        atomic_write_bytes(str(target), b"x")


def test_a_missing_image_is_said_to_not_exist(tmp_path):
    from slimkernels.io import read_image
    with pytest.raises(ValueError, match=r"nope.png does not exist$"):
        read_image(str(tmp_path / "nope.png"))


def test_an_image_given_as_bytes_or_a_file_object_is_a_type_error_not_a_missing_file(tmp_path):
    """(The PNG's bytes were taken for a path: "MissingFileError: b'\\x89PNG...' does not
    exist"; a BytesIO was os.stat's raw TypeError.)"""
    path = tmp_path / "a.png"
    Image.new("RGB", (5, 3), (10, 20, 30)).save(path)
    data = path.read_bytes()
    for bad in (data, bytearray(data), io.BytesIO(data), 3, None):
        for read in (sio.read_image, sio.read_image_uint8, sio.open_image):
            with pytest.raises(TypeError, match=rf"an image file's path \(str, os.PathLike or "
                                                rf"bytes\) is needed, got {type(bad).__name__}"
                                                rf"( holding NUL bytes)?; for an image in memory"):
                read(bad)
    for good in (str(path), path, os.fsencode(path)):   # (str, pathlib and bytes paths)
        assert sio.read_image_uint8(good)[0][0, 0].tolist() == [10, 20, 30]


def _png(path, w, h, bit_depth, color_type, raw_rows, extra=b""):
    """A PNG written by hand (Pillow cannot write 16-bit RGB): ``raw_rows`` the unfiltered
    scanlines' bytes; ``extra`` chunks (bytes) before IDAT."""
    import struct
    import zlib

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    raw = b"".join(b"\0" + r for r in raw_rows)
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra +
                chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return chunk


def test_a_16_bit_rgb_png_is_read_and_its_8_bit_reading_noted(tmp_path):
    import numpy as np

    from slimkernels.io import read_image
    a = (np.arange(4 * 5 * 3).reshape(4, 5, 3) * 997 % 65536).astype(">u2")
    _png(tmp_path / "rgb16.png", 5, 4, 16, 2, [a[y].tobytes() for y in range(4)])
    x, note = read_image(str(tmp_path / "rgb16.png"))
    assert note == "read 16-bit RGB as 8-bit (the high byte of each sample)"
    assert torch.equal((x[0].permute(1, 2, 0) * 255).round().to(torch.int64),
                       torch.from_numpy((a >> 8).astype(np.int64)))
    _png(tmp_path / "rgb8.png", 5, 4, 8, 2, [bytes(15)] * 4)
    assert read_image(str(tmp_path / "rgb8.png"))[1] == ""


def test_a_png_text_chunk_too_large_to_inflate_names_the_file(tmp_path):
    import zlib

    from slimkernels.io import read_image
    chunk = _png(tmp_path / "plain.png", 2, 2, 8, 2, [bytes(6)] * 2)
    ztxt = chunk(b"zTXt", b"Comment\0\0" + zlib.compress(bytes(8 << 20)))
    _png(tmp_path / "bomb.png", 2, 2, 8, 2, [bytes(6)] * 2, extra=ztxt)
    with pytest.raises(ValueError, match=r"bomb.png: not an image file Pillow can read \("):
        read_image(str(tmp_path / "bomb.png"))


def test_an_invalid_exif_orientation_is_not_reported_as_applied(tmp_path):
    import numpy as np
    from PIL import Image

    from slimkernels.io import read_image
    im = Image.fromarray(np.arange(72, dtype=np.uint8).reshape(4, 6, 3))
    exif = im.getexif()
    exif[0x0112] = 99
    im.save(tmp_path / "o.png", exif=exif)
    x, note = read_image(str(tmp_path / "o.png"))
    assert note == "ignored an invalid EXIF orientation (99)" and tuple(x.shape) == (1, 3, 4, 6)


def test_pillows_decompression_bomb_warning_becomes_a_note(tmp_path, monkeypatch):
    """(It printed as a raw Python warning.)"""
    import warnings

    import numpy as np
    from PIL import Image

    from slimkernels.io import read_image
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)    # warns over 100, refuses over 200
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # none may escape
        x, note = read_image(str(tmp_path / "big.png"))
    assert tuple(x.shape) == (1, 3, 10, 12)
    assert note == "a large image (12x10, over Pillow's decompression-bomb warning size)"


@pytest.mark.parametrize("fmt", ["tif", "png", "pgm"])
def test_32_bit_integer_pixels_with_small_values_are_refused_16_bit_read(tmp_path, fmt):
    """A 32-bit integer TIFF whose values fit 8 bits (0..200) was read as 16-bit (v / 257): a
    nearly black image, noted "converted 16-bit". 16-bit files keep their rounding."""
    import numpy as np
    from PIL import Image

    vals = np.arange(12 * 10).reshape(12, 10) * 2 % 201
    if fmt == "tif":
        p = tmp_path / "i32.tif"
        Image.fromarray(vals.astype(np.int32)).save(p)
        with pytest.raises(ValueError, match="32-bit integer pixels"):
            sio.read_image_uint8(str(p))
    p16 = tmp_path / f"i16.{fmt}"
    Image.fromarray((vals * 257).astype(np.uint16)).save(p16)
    rgb, note = sio.read_image_uint8(str(p16))
    assert (rgb[..., 0] == vals).all() and "16-bit" in note


def test_image_to_png_bytes_refuses_a_batch_or_other_channels():
    """(a [2, 3, H, W] batch gave a PNG of its first image, silently.)"""
    for bad in (torch.zeros(2, 3, 4, 4), torch.zeros(1, 1, 4, 4), torch.zeros(4, 4)):
        with pytest.raises(ValueError, match="one RGB image"):
            sio.image_to_png_bytes(bad)
    assert sio.image_to_png_bytes(torch.zeros(3, 4, 4))[:4] == b"\x89PNG"


def test_a_16_bit_ppm_is_noted(tmp_path):
    """(its conversion to 8 bits, Pillow's rounding, came with an empty note.)"""
    import numpy as np

    vals = np.array([[[511, 33023, 65279], [65535, 0, 257]]], dtype=">u2")
    p = tmp_path / "t16.ppm"
    p.write_bytes(b"P6\n2 1\n65535\n" + vals.tobytes())
    rgb, note = sio.read_image_uint8(str(p))
    assert rgb.tolist() == [[[2, 128, 254], [255, 0, 1]]]
    assert "scaled 65535-level samples to 8-bit" in note


def test_overwrite_never_replaces_a_folder_device_or_fifo(tmp_path):
    """(With overwrite=True a FIFO, a folder or, as root, /dev/null became a regular file; the
    folder case named the hidden temporary file.)"""
    fifo = tmp_path / "pipe.slim"
    os.mkfifo(fifo)
    folder = tmp_path / "dir.slim"
    folder.mkdir()
    link = tmp_path / "link.slim"       # a link to one of them (as /dev/stdout is)
    os.symlink(fifo, link)
    for p in (fifo, folder, link):
        with pytest.raises(FileExistsError, match=r"exists and is not a regular file \(a folder, "
                                                  r"device, FIFO or socket, or a link to one\): "
                                                  r"not replacing it"):
            sio.atomic_write_bytes(str(p), b"abc", overwrite=True)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and folder.is_dir() and link.is_symlink()
    assert sorted(os.listdir(tmp_path)) == ["dir.slim", "link.slim", "pipe.slim"]   # (no temp)


def test_overwrite_replaces_a_link_not_its_target(tmp_path):
    target = tmp_path / "target.slim"
    target.write_bytes(b"target")
    link = tmp_path / "link.slim"
    os.symlink(target, link)
    sio.atomic_write_bytes(str(link), b"new", overwrite=True)
    assert not link.is_symlink() and link.read_bytes() == b"new"
    assert target.read_bytes() == b"target"


@pytest.mark.parametrize("x, match", [
    (torch.full((1, 3, 4, 4), 200, dtype=torch.uint8), r"expects float values in \[0, 1\], got "
                                                       r"torch.uint8 \(for 0..255 integers pass"),
    (torch.full((1, 3, 4, 4), float("nan")), "holds NaN or inf values"),
    (torch.rand(2, 3, 4, 4), r"got \(2, 3, 4, 4\) \(a batch: encode its images one by one\)"),
    (torch.rand(1, 1, 4, 4), r"got \(1, 1, 4, 4\) \(RGB: 3 channels, first after the batch\)"),
    (torch.rand(3, 4, 4).numpy(), r"got \(3, 4, 4\) \(a torch.Tensor: torch.from_numpy"),
])
def test_image_to_png_bytes_refuses_what_it_would_turn_into_another_image(x, match):
    """(uint8 0..255 came out nearly white, NaN black; a 1-channel image was told it was a
    batch.)"""
    with pytest.raises(ValueError, match=match):
        sio.image_to_png_bytes(x)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# -- (found by an audit of exotic image files) a PNG transparency (tRNS) chunk on a grayscale / RGB / 16-bit image -----------------------
@pytest.mark.parametrize("kind", ["L", "RGB", "I;16"])
def test_a_png_transparency_key_colour_is_noted_like_a_palettes(tmp_path, kind):
    """A tRNS chunk on an L, RGB or 16-bit gray PNG makes every pixel of one colour transparent
    (a viewer shows the background there). read_image_uint8 drops it, as it drops a palette
    image's, but says nothing: the note is "converted L to RGB" / "" (for a P image with tRNS it
    says "dropped the alpha channel")."""
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:, 4:] = 200
    if kind == "RGB":
        im, key = Image.fromarray(rgb), (0, 0, 0)
    elif kind == "L":
        im, key = Image.fromarray(rgb[..., 0]), 0
    else:
        im, key = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), 0
    p = tmp_path / "keyed.png"
    im.save(p, transparency=key)
    assert "transparency" in Image.open(p).info   # (half the image is transparent in a viewer)
    _, note = read_image_uint8(str(p))
    assert "alpha" in note or "transparen" in note, note


# -- an embedded ICC profile -------------------------------------------------------------------
def _s15(v):
    return struct.pack(">i", int(round(v * 65536)))


def _xyz(x, y, z):
    return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)


def _linear_rgb_icc(name: bytes = b"linear RGB") -> bytes:
    """A minimal ICC v2 RGB display profile: sRGB's primaries with a linear (gamma 1) curve."""
    text = name + b"\0"
    desc = (b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * 8 + b"\0" * 3
            + b"\0" * 67)
    curv = b"curv\0\0\0\0" + struct.pack(">IH", 1, 256) + b"\0\0"
    tags = [(b"desc", desc), (b"wtpt", _xyz(0.9642, 1.0, 0.8249)),
            (b"rXYZ", _xyz(0.4361, 0.2225, 0.0139)), (b"gXYZ", _xyz(0.3851, 0.7169, 0.0971)),
            (b"bXYZ", _xyz(0.1431, 0.0606, 0.7141)), (b"rTRC", curv), (b"gTRC", curv),
            (b"bTRC", curv), (b"cprt", b"text\0\0\0\0none\0\0\0\0")]
    offset = 128 + 4 + 12 * len(tags)
    table = body = b""
    for sig, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = (struct.pack(">I", offset + len(body)) + b"lcms" + bytes([2, 0x10, 0, 0])
              + b"mntrRGB XYZ " + b"\0" * 12 + b"acsp" + b"\0" * 24 + b"\0" * 4
              + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_an_icc_profile_is_converted_to_srgb(tmp_path, ext):
    """Colour-managed viewers show an image through its embedded ICC profile (wide-gamut phone
    photos, Adobe RGB); the decoded files carry none (sRGB). The profile had been ignored
    silently: a mid-gray 128 that a viewer shows as ~188 came back as 128, note ""."""
    icc = _linear_rgb_icc()
    gray = np.tile(np.arange(0, 256, 16, dtype=np.uint8)[None, :, None], (8, 1, 3))
    p = tmp_path / f"linear.{ext}"
    Image.fromarray(gray).save(p, icc_profile=icc, **({"quality": 100} if ext == "jpg" else {}))
    shown = np.asarray(ImageCms.profileToProfile(
        Image.open(p).convert("RGB"), ImageCms.ImageCmsProfile(io.BytesIO(icc)),
        ImageCms.createProfile("sRGB"), outputMode="RGB"), dtype=int)
    rgb, note = read_image_uint8(str(p))
    assert np.abs(rgb.astype(int) - shown).max() <= 1 and shown[0, 8, 0] > 160
    assert "converted its ICC colour profile (linear RGB) to sRGB" in note


def test_an_srgb_profile_changes_nothing_and_a_wrong_one_is_said(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    p = tmp_path / "srgb.png"
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(rgb).save(p, icc_profile=srgb)
    got, note = read_image_uint8(str(p))
    assert note == "" and np.array_equal(got, rgb)
    p = tmp_path / "rgb_with_a_lab_profile.png"   # a profile of another colour space
    Image.fromarray(rgb).save(p, icc_profile=ImageCms.ImageCmsProfile(
        ImageCms.createProfile("LAB")).tobytes())
    got, note = read_image_uint8(str(p))
    assert np.array_equal(got, rgb) and note.startswith("ignored its ICC colour profile")


# -- a 16-bit RGB TIFF --------------------------------------------------------------------------
def _tiff_rgb16(path, arr):
    """An uncompressed little-endian 16-bit RGB TIFF (Pillow writes no such file)."""
    h, w, c = arr.shape
    data = arr.astype("<u2").tobytes()
    entries = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, 3, None), (259, 3, 1, 1),
               (262, 3, 1, 2), (273, 4, 1, None), (277, 3, 1, 3), (278, 3, 1, h),
               (279, 4, 1, len(data)), (284, 3, 1, 1)]
    n = len(entries)
    bps_off = 8 + 2 + 12 * n + 4
    data_off = bps_off + 6
    out = b"II*\0" + struct.pack("<IH", 8, n)
    for tag, typ, cnt, val in entries:
        val = bps_off if tag == 258 else data_off if tag == 273 else val
        out += struct.pack("<HHI", tag, typ, cnt) + (
            struct.pack("<HH", val, 0) if typ == 3 and cnt == 1 else struct.pack("<I", val))
    path.write_bytes(out + struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16) + data)


def test_a_16_bit_rgb_tiff_read_as_8_bit_is_noted_like_a_16_bit_png(tmp_path):
    """A 16-bit RGB PNG gets "read 16-bit RGB as 8-bit (the high byte of each sample)"; the same
    pixels in a TIFF are narrowed as silently (note ""), because the check looks at the PNG's
    decoder mode (``dec["raw"]``) and not at TIFF's (``dec["raw_any"]``: 'RGB;16L')."""
    arr = (np.arange(4 * 5 * 3, dtype=np.uint16).reshape(4, 5, 3) * 1000)
    p = tmp_path / "rgb16.tif"
    _tiff_rgb16(p, arr)
    assert Image.open(p).mode == "RGB"
    rgb, note = read_image_uint8(str(p))
    assert (np.abs(rgb.astype(int) - arr // 256) <= 1).all()   # (the pixels themselves are fine)
    assert "16-bit" in note, repr(note)


# -- damaged / truncated files that escape as other exceptions --------------------------------
def _broken_chunk_png(path):
    """A PNG whose second IDAT chunk's type bytes were damaged (a bit-rotted / badly copied
    file)."""
    raw = b"".join(b"\0" + bytes(range(48)) for _ in range(16))
    z = zlib.compress(raw)
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + _chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0))
                     + _chunk(b"IDAT", z[:len(z) // 2]) + _chunk(b"\0\1\2\3", z[len(z) // 2:])
                     + _chunk(b"IEND", b""))


def test_a_png_with_a_damaged_chunk_is_a_value_error(tmp_path):
    """Pillow raises SyntaxError("broken PNG file ...") while loading; _open_image catches only
    UnidentifiedImageError / OSError / ValueError, so read_image_uint8 raises SyntaxError (a
    truncated AVIF: SyntaxError or RuntimeError the same way) instead of its documented
    ValueError naming the file."""
    p = tmp_path / "damaged.png"
    _broken_chunk_png(p)
    with pytest.raises(ValueError, match="damaged.png"):
        read_image_uint8(str(p))


def test_a_truncated_animated_gif_is_read_or_a_value_error(tmp_path):
    """A partly downloaded animated GIF: read_image_uint8 counts its frames (``im.n_frames``,
    outside any try) and Pillow's frame scan raises IndexError / struct.error at the cut, for
    some cut points inside the second frame. Expected: the first frame (with the note) or a
    ValueError naming the file."""
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).quantize(16)
              for _ in range(3)]
    full = tmp_path / "anim.gif"
    frames[0].save(full, save_all=True, append_images=frames[1:])
    data = full.read_bytes()
    cut = tmp_path / "cut.gif"
    escaped = []
    for n in range(16, len(data)):
        cut.write_bytes(data[:n])
        try:
            read_image_uint8(str(cut))
        except ValueError:
            pass
        except Exception as e:  # noqa: BLE001 - what the test is about
            escaped.append((n, type(e).__name__, str(e)[:60]))
    assert not escaped, escaped[:5]


def test_a_linear_profile_named_srgb_is_still_converted(tmp_path):
    """sRGB is told by what the profile does, not by its name ("sRGB-elle-V2-g10" is linear)."""
    icc = _linear_rgb_icc(b"sRGB-elle-V2-g10")
    gray = np.full((4, 4, 3), 128, np.uint8)
    p = tmp_path / "g10.png"
    Image.fromarray(gray).save(p, icc_profile=icc)
    rgb, note = read_image_uint8(str(p))
    assert rgb[0, 0, 0] > 160 and "converted its ICC colour profile (sRGB-elle-V2-g10)" in note


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd") or not hasattr(os, "fchmod"),
                    reason="Linux /proc and os.fchmod")
def test_atomic_write_closes_its_temp_file_when_setting_the_mode_fails(tmp_path, monkeypatch):
    """The temporary file's descriptor was closed only by the fdopen block, which came after
    fchmod: an fchmod error (EPERM on vfat / CIFS mounts) left it open."""
    def fchmod(fd, mode):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "fchmod", fchmod)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(PermissionError):
            sio.atomic_write_bytes(str(tmp_path / "out.slim"), b"SLIM", overwrite=True)
    assert len(os.listdir("/proc/self/fd")) == before
    assert os.listdir(tmp_path) == []


def _missing_path_callers(tmp_path):
    """Every public entry point that takes a path to read, with a missing path."""
    from slimkernels.evaluation.kodak import list_images as eval_images
    from slimkernels.pretrained import load_model, model_info
    from slimkernels.training import cli as train_cli
    from slimkernels.training.data import list_images as train_images
    from slimkernels.training.trainer import TrainConfig, Trainer
    gone = str(tmp_path / "gone")
    return [("read_image", lambda: sio.read_image(gone + ".png")),
            ("read_image_uint8", lambda: sio.read_image_uint8(gone + ".png")),
            ("open_image", lambda: sio.open_image(gone + ".png")),
            ("load_torch_file", lambda: sio.load_torch_file(gone + ".pt", "{path}: {error}")),
            ("load_model", lambda: load_model(gone + ".pt")),
            ("model_info", lambda: model_info(gone + ".pt")),
            ("training data", lambda: train_images(gone)),
            ("train --data", lambda: train_cli.run(TrainConfig(data=gone,
                                                               out=str(tmp_path / "run")))),
            ("train --init", lambda: Trainer(TrainConfig(
                data=str(tmp_path), out=str(tmp_path / "run2"), init=gone + ".pt")).fit()),
            ("eval folder", lambda: eval_images(gone))]


def test_a_missing_path_is_one_error_from_every_entry_point(tmp_path):
    """read_image, model_info and the trainer raised ValueError for a missing path while
    load_model raised FileNotFoundError: one MissingFileError now, both, so that either
    ``except`` catches it from any of them; its message names the path, without an errno
    prefix."""
    for name, call in _missing_path_callers(tmp_path):
        with pytest.raises(sio.MissingFileError) as info:
            call()
        e = info.value
        assert isinstance(e, FileNotFoundError) and isinstance(e, ValueError), name
        assert "gone" in str(e) and "does not exist" in str(e), (name, str(e))
        assert not str(e).startswith("[Errno"), (name, str(e))


def test_a_path_that_exists_but_is_not_a_file_is_not_a_missing_file(tmp_path):
    """A folder where a file is expected (or a file where a folder is) exists: a ValueError
    saying so, not a FileNotFoundError."""
    from slimkernels.evaluation.kodak import list_images as eval_images
    from slimkernels.pretrained import model_info
    from slimkernels.training.data import list_images as train_images
    f = tmp_path / "f.txt"
    f.write_text("x")
    for call in (lambda: model_info(str(tmp_path)), lambda: train_images(str(f)),
                 lambda: eval_images(str(f))):
        with pytest.raises(ValueError) as info:
            call()
        assert not isinstance(info.value, FileNotFoundError), str(info.value)


def test_load_torch_file_names_an_empty_or_foreign_file(tmp_path):
    """(torch said "EOFError: " for an empty file and "KeyError: 101" for a text file.)"""
    import torch

    from slimkernels.io import load_torch_file
    empty, text, good = tmp_path / "e.pt", tmp_path / "t.pt", tmp_path / "g.pt"
    empty.write_bytes(b"")
    text.write_text("hello world")
    torch.save({"a": torch.ones(2)}, good)
    msg = "{path}: unreadable ({error})"
    with pytest.raises(ValueError, match=r"e\.pt: unreadable \(an empty file, 0 bytes\)"):
        load_torch_file(str(empty), msg)
    with pytest.raises(ValueError, match=r"t\.pt: unreadable \(not a file written by torch\.save: "
                                         r"it starts with b'hello wo'\)"):
        load_torch_file(str(text), msg)
    truncated = tmp_path / "cut.pt"   # (a zip cut short: torch said "OSError: [Errno 22]
    data = good.read_bytes()          # Invalid argument" or "PytorchStreamReader failed ...")
    for n in (100, len(data) // 2, len(data) - 1):
        truncated.write_bytes(data[:n])
        with pytest.raises(ValueError, match=r"cut\.pt: unreadable \(a zip archive without its "
                                             r"end \(no end-of-archive record\): cut short") as e:
            load_torch_file(str(truncated), msg)
        assert "\n" not in str(e.value)
    assert torch.equal(load_torch_file(str(good), msg)["a"], torch.ones(2))


def test_image_names_lists_image_files_only(tmp_path):
    """The evaluation's and the trainer's image listing: image extensions in any case, sorted,
    no subfolder named like an image, no other files."""
    for n in ("b.PNG", "a.jpg", "c.txt", "d.webp"):
        (tmp_path / n).write_bytes(b"")
    (tmp_path / "e.png").mkdir()
    assert sio.image_names(str(tmp_path)) == ["a.jpg", "b.PNG", "d.webp"]
    # a FIFO named like an image is left out (reading it waited for a writer for good: eval and
    # train hung on it); a link to an image is one, a link to nothing is listed (reading it
    # then says so)
    os.mkfifo(tmp_path / "f.png")
    os.symlink(tmp_path / "a.jpg", tmp_path / "g.jpg")
    os.symlink(tmp_path / "nowhere.png", tmp_path / "h.png")
    assert sio.image_names(str(tmp_path)) == ["a.jpg", "b.PNG", "d.webp", "g.jpg", "h.png"]
    # hidden names are no images to list (macOS's ._a.jpg beside a.jpg failed the evaluation)
    (tmp_path / "._a.jpg").write_bytes(b"\x00\x05\x16\x07")
    (tmp_path / ".hidden.png").write_bytes(b"")
    assert sio.image_names(str(tmp_path)) == ["a.jpg", "b.PNG", "d.webp", "g.jpg", "h.png"]


def test_missing_folders_and_their_removal(tmp_path):
    """missing_folders lists what os.makedirs creates, deepest first; remove_empty_folders
    removes them while empty and stops at the first that is not."""
    deep = tmp_path / "a" / "b" / "c"
    made = sio.missing_folders(str(deep))
    assert made == [str(deep), str(deep.parent), str(deep.parent.parent)]
    assert sio.missing_folders(str(tmp_path)) == []
    os.makedirs(deep)
    (deep.parent / "keep.txt").write_text("x")
    sio.remove_empty_folders(made)
    assert not deep.exists() and (deep.parent / "keep.txt").exists()
    assert (tmp_path / "a").is_dir()


def test_reading_a_fifo_as_an_image_is_refused_not_waited_on(tmp_path):
    """``read_image`` / ``open_image`` on a FIFO (``demo.py --image fifo``) blocked until
    something wrote into it (a child process, so that a regression fails by its timeout)."""
    import subprocess
    import sys
    fifo = tmp_path / "image.png"
    os.mkfifo(fifo)
    code = ("from slimkernels.io import open_image, read_image, load_torch_file, "
            "torch_archive_problem\n"
            "assert torch_archive_problem(%r) is None\n"
            "for f in (read_image, open_image, lambda p: load_torch_file(p, '{error}')):\n"
            "    try:\n        f(%r)\n    except ValueError as e:\n        print(e)\n"
            % (str(fifo), str(fifo)))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    # (load_torch_file too: accelerate_compressai.py --checkpoint fifo waited)
    assert r.stdout.count("is not a regular file (a pipe, a socket or a device)") == 3


def _noisy_gradient(h: int = 48, w: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    ramp = torch.linspace(0, 1, w).expand(3, h, w)
    return (ramp + 0.05 * torch.rand(3, h, w, generator=g)).clamp(0, 1)


def test_png_bytes_use_the_libraries_zlib_level_and_stay_lossless():
    """The PNG is Pillow's at :data:`PNG_COMPRESS_LEVEL` (byte for byte), a ``compress_level``
    picks another (9 no larger than 1 here), each decodes to the same 8-bit pixels; levels
    outside 0..9 or not ints are refused by name."""
    x = _noisy_gradient()
    want = x.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    sizes = {}
    for level in (None, 1, 9):
        data = (sio.image_to_png_bytes(x) if level is None else
                sio.image_to_png_bytes(x, compress_level=level))
        assert np.array_equal(np.array(Image.open(io.BytesIO(data))), want)
        buf = io.BytesIO()
        Image.fromarray(want).save(buf, format="PNG",
                                   compress_level=sio.PNG_COMPRESS_LEVEL if level is None else level)
        assert data == buf.getvalue(), level
        sizes[level] = len(data)
    assert sizes[9] <= sizes[1]
    for bad in (-1, 10, 4.0, True, "4"):
        with pytest.raises(ValueError, match="compress_level must be an int 0..9"):
            sio.image_to_png_bytes(x, compress_level=bad)


@pytest.mark.parametrize("fmt", ["WEBP", "webp"])
def test_webp_bytes_are_lossless_whatever_the_case_of_the_name(fmt):
    x = _noisy_gradient()
    want = x.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    data = sio.image_to_png_bytes(x, fmt)
    assert data[8:12] == b"WEBP"
    assert np.array_equal(np.array(Image.open(io.BytesIO(data)).convert("RGB")), want)
