"""File helpers: atomic writes and image reading/writing with clear errors."""
from __future__ import annotations

import errno
import functools
import io
import os
import re
import shutil
import stat
import struct
import tempfile
import warnings
from typing import List, Optional, Tuple

import numpy as np
import torch

from ._errors import MissingFileError
from ._fork import one_thread_in_forked_child

__all__ = ["read_image", "read_image_uint8", "open_image", "image_to_png_bytes",
           "PNG_COMPRESS_LEVEL", "atomic_write_bytes", "atomic_torch_save", "load_torch_file",
           "MissingFileError", "IMAGE_EXTENSIONS"]

#: The file extensions (lower case) of the images a folder is read for: the evaluation's image
#: folder and the trainer's data folder.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def image_names(folder: str) -> List[str]:
    """The sorted names (not paths) of the image files directly in ``folder``: entries ending in
    one of :data:`IMAGE_EXTENSIONS` (any case) that are regular files, directly or through a
    link (a subfolder named like an image, ``x.png/``, is not one, nor a FIFO, socket or device:
    reading a FIFO would wait for a writer for good); a link that leads nowhere is listed, so
    that reading it says so. Hidden names (``.x.png``; macOS's ``._x.png`` beside every image
    copied onto another file system, which are no images) are left out, as a shell's ``*.png``
    leaves them. ``folder`` must exist (OSError from ``os.listdir``)."""
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS)
                  and not f.startswith(".") and _regular_or_dangling(os.path.join(folder, f)))


def _regular_or_dangling(path: str) -> bool:
    """Whether ``path`` is a regular file (following links) or cannot be reached at all."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return True


def missing_folders(path: str) -> List[str]:
    """The folders ``os.makedirs(path)`` would create: ``path`` and its missing parents, as
    absolute paths, deepest first (empty when ``path`` exists). Taken before the makedirs, for
    :func:`remove_empty_folders` to undo it after a failure."""
    made, d = [], os.path.abspath(path)
    while not os.path.lexists(d) and d != os.path.dirname(d):
        made.append(d)
        d = os.path.dirname(d)
    return made


def remove_empty_folders(folders: List[str]) -> None:
    """Remove each of ``folders`` (deepest first, as :func:`missing_folders` lists them) while
    it is an empty folder; stops at the first that is not (it and the ones above it stay)."""
    for d in folders:
        if not (os.path.isdir(d) and not os.listdir(d)):
            break
        os.rmdir(d)


def _new_file_mode() -> int:
    """The permission bits ``open(path, "w")`` would give a new file: 0o666 less the umask.
    (``tempfile.mkstemp`` creates its file 0o600, which a rename would carry over.)"""
    try:
        with open("/proc/self/status") as f:   # Linux: read the umask without changing it
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)   # elsewhere: set and restore (not atomic across threads)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str, data: bytes, *, overwrite: bool = False) -> None:
    """Write ``data`` (bytes) to ``path`` atomically (:func:`_atomic_write`).

    Raises:
        FileExistsError: ``path`` exists and not ``overwrite`` (pass ``overwrite=True`` /
            ``--force`` to replace it).
    """
    _atomic_write(path, lambda f: f.write(data), overwrite)


def _atomic_write(path: str, write, overwrite: bool) -> None:
    """``write(f)`` into a temp file (binary) in ``path``'s folder, then renamed to ``path``,
    so a failure never leaves a half-written file.

    The file gets the permissions a plain ``open(path, "w")`` would give (0o666 less the
    umask), or keeps those of the file it replaces. Without ``overwrite`` the final step is a
    hard link, which fails if ``path`` appeared meanwhile, so an existing file is never
    replaced, not even one created by another process after the first check (on file systems
    without hard links: an existence check, then a rename).

    With ``overwrite``, a regular file is replaced, and so is a symbolic link (the link itself:
    its target is left alone); a folder, device, FIFO or socket never is. ``overwrite`` must be
    a bool (ValueError: ``overwrite="no"`` replaced the file).

    Raises:
        FileExistsError: ``path`` exists and not ``overwrite`` (pass ``overwrite=True`` /
            ``--force`` to replace it), or it is not a regular file or a link.
        ValueError: ``overwrite`` is not a bool.
    """
    if not isinstance(overwrite, bool):
        raise ValueError(f"overwrite must be True or False, got {overwrite!r:.40}")

    def exists_error():
        return FileExistsError(f"{path} exists: refusing to overwrite it (use --force / "
                               "overwrite=True)")

    try:
        mode_now = os.lstat(path).st_mode
    except OSError:
        mode_now = None
    link_to_other = mode_now is not None and stat.S_ISLNK(mode_now) and \
        os.path.exists(path) and not os.path.isfile(path)   # (/dev/stdout: a link to a device)
    if mode_now is not None and not (stat.S_ISREG(mode_now) or stat.S_ISLNK(mode_now)) or \
            link_to_other:
        # (os.replace would put a regular file in the place of /dev/null or a FIFO, as root)
        raise FileExistsError(f"{path} exists and is not a regular file (a folder, device, FIFO "
                              f"or socket, or a link to one): not replacing it, even with "
                              f"overwrite=True / --force")
    if os.path.exists(path) and not overwrite:
        raise exists_error()
    folder = os.path.dirname(os.path.abspath(path))
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode) if overwrite else None
    except OSError:
        mode = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".slim-", suffix=".tmp", dir=folder)
    except OSError as e:   # (named after the file asked for, not the hidden temp file)
        raise type(e)(e.errno, f"cannot write {path}: {e.strerror} (in the folder {folder})") \
            from None
    try:
        with os.fdopen(fd, "wb") as f:   # (first: it closes fd whatever fails below)
            if hasattr(os, "fchmod"):   # POSIX (Windows files take no permission bits here)
                os.fchmod(f.fileno(), _new_file_mode() if mode is None else mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)          # atomic: fails if path exists now
            except FileExistsError:
                raise exists_error() from None
            except OSError:                 # no hard links here: check, then rename
                if os.path.exists(path):
                    raise exists_error() from None
                os.replace(tmp, path)
    finally:
        try:
            os.unlink(tmp)   # gone after a rename; the second name after a link
        except FileNotFoundError:
            pass


#: Free bytes under which a failed ``torch.save`` is taken for a full disk
#: (:func:`atomic_torch_save`).
_FULL_DISK_BYTES = 1 << 20


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save(obj, path)`` through :func:`_atomic_write` (replacing ``path`` if it
    exists): an interrupted save leaves the previous file whole, and no side file of a fixed
    name (``path + ".tmp"``) is written over. Streams into the temp file (no in-memory copy of
    a training checkpoint).

    Raises:
        OSError: the file could not be written (``errno.ENOSPC`` for a full disk; torch's own
            error, ``[enforce fail at inline_container.cc] unexpected pos``, said neither that
            nor which file); ``path`` itself is left as it was."""
    def save(f):
        try:
            torch.save(obj, f)
        except RuntimeError as e:   # (torch's zip writer after a short or failed write)
            folder = os.path.dirname(os.path.abspath(path))
            try:   # (measured while the partial temp file still holds its space)
                full = shutil.disk_usage(folder).free < _FULL_DISK_BYTES
            except OSError:
                full = False
            if full:
                raise OSError(errno.ENOSPC, f"no space left on the device to write {path} "
                                            f"(torch: {e}); it was left as it was") from None
            raise OSError(errno.EIO, f"could not write {path}: {e}; it was left as it was") \
                from None
    _atomic_write(path, save, overwrite=True)


def open_image(path: str, todo: str = ""):
    """Open and load an image file with Pillow (``PIL.Image.Image``, any mode).

    Raises:
        MissingFileError: ``path`` does not exist (a FileNotFoundError and a ValueError).
        TypeError: ``path`` is not a str, ``os.PathLike`` or bytes path (e.g. the image's
            bytes).
        ValueError: not a regular file (a FIFO, a socket, a device: refused before it is
            opened), not an image Pillow can read, or one over Pillow's decompression-bomb limit
            (``PIL.Image.MAX_IMAGE_PIXELS``, 2x of it: ~179 MP by default); the message names
            the file and ends with ``todo`` (what the caller's user should do) when given.
    """
    return _open_image(path, todo)[0]


#: What Pillow raises while reading a file that is damaged or cut (besides
#: UnidentifiedImageError): ValueError e.g. a PNG text chunk too large to inflate; SyntaxError
#: "broken PNG file" (a damaged chunk); RuntimeError / SyntaxError a truncated AVIF; IndexError /
#: struct.error / TypeError a cut animated GIF's or multi-page TIFF's frame scan.
_PILLOW_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, RuntimeError, IndexError,
                       TypeError, struct.error)


def _too_large(path: str, e, todo: str) -> ValueError:
    return ValueError(f"{path}: too large to read safely ({e}); " + (
        todo or "split the image into tiles, or from Python raise PIL.Image.MAX_IMAGE_PIXELS "
                "first"))


def _open_image(path: str, todo: str = ""):
    """:func:`open_image`, and what only the opening sees: ``(im, large, decoder)``: whether
    Pillow warned that the image is over its decompression-bomb warning size (the warning is
    caught: :func:`read_image_uint8` notes it), and a dict of the decoder's ``raw`` mode
    ('RGB;16B': a 16-bit RGB PNG, which Pillow reads as 8-bit; None if unknown), ``raw_any``
    (the same also where the decoder takes a tuple of arguments: TIFF's ('I;32S', 0, 1)) and
    ``maxval`` (a PPM / PGM's sample maximum when above 255, else None)."""
    from PIL import Image, UnidentifiedImageError

    if not (isinstance(path, (str, os.PathLike)) or (type(path) is bytes and b"\0" not in path)):
        # (an image's bytes, which hold NULs, were taken for a path: "MissingFileError:
        # b'\x89PNG...' does not exist"; a BytesIO was os.stat's TypeError)
        raise TypeError(f"an image file's path (str, os.PathLike or bytes) is needed, got "
                        f"{type(path).__name__}"
                        f"{' holding NUL bytes' if type(path) is bytes else ''}; for an image "
                        f"in memory, open it with Pillow "
                        f"(PIL.Image.open(io.BytesIO(data))), convert('RGB'), and make the "
                        f"[1, 3, H, W] float tensor from numpy.asarray(im) / 255")
    if not os.path.exists(path):
        raise MissingFileError(f"{path} does not exist" + (f"; {todo}" if todo else ""))
    # (Pillow cannot read a pipe, which does not seek, nor a device; a folder gets Pillow's
    # IsADirectoryError below)
    refuse_special_file(path, "pass the image file itself" + (f"; {todo}" if todo else ""))

    def refuse(e):
        return ValueError(f"{path}: not an image file Pillow can read ({type(e).__name__}: {e})"
                          + (f"; {todo}" if todo else ""))

    # (only Pillow's own calls are in these try blocks: an error of this module's code stays
    # what it is)
    unreadable = (UnidentifiedImageError,) + _PILLOW_READ_ERRORS
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise _too_large(path, e, todo) from None
    except MemoryError:
        raise
    except unreadable as e:
        raise refuse(e) from None
    large = False
    for w in caught:
        if issubclass(w.category, Image.DecompressionBombWarning):
            large = True
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    tile = im.tile[0] if getattr(im, "tile", None) else ()
    raw = tile[3] if len(tile) > 3 and isinstance(tile[3], str) else None
    # (the decoder's first argument, also where it is a tuple: TIFF's ("I;32S", 0, 1))
    args = tile[3] if len(tile) > 3 and isinstance(tile[3], tuple) else ()
    raw_any = raw if raw is not None else (
        args[0] if args and isinstance(args[0], str) else None)
    # a PPM / PGM of more than 8 bits per sample, which Pillow scales to 8 bits itself
    maxval = args[1] if tile and tile[0] == "ppm" and len(args) > 1 and \
        isinstance(args[1], int) and args[1] > 255 else None
    try:
        im.load()
    except BaseException as e:
        im.close()   # (the file Pillow holds open)
        if isinstance(e, Image.DecompressionBombError):
            raise _too_large(path, e, todo) from None
        if isinstance(e, unreadable) and not isinstance(e, MemoryError):
            raise refuse(e) from None
        raise
    return im, large, {"raw": raw, "raw_any": raw_any, "maxval": maxval}


def refuse_special_file(path, todo: str) -> None:
    """ValueError ``"<path> is not a regular file (a pipe, a socket or a device): <todo>"``
    when ``path`` exists and is neither a regular file nor a folder (links followed): opening a
    FIFO waits for a writer for good, and a device has no end. A missing path or a folder is
    left to the caller's own message; anything but a path (a file object) passes."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        return
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise ValueError(f"{os.fsdecode(path)} is not a regular file (a pipe, a socket or a "
                         f"device): {todo}")


def _special_file(path) -> bool:
    try:
        refuse_special_file(path, "")
    except ValueError:
        return True
    return False


def torch_archive_problem(path: str) -> Optional[str]:
    """What is damaged in the zip archive ``torch.save`` wrote at ``path`` ("its archive: <the
    zip reader's error>", or "its member <name> fails its CRC-32 check"), or None (sound, or not
    an archive: ``torch.load`` then says what it is; a FIFO or a device is not read, and
    :func:`load_torch_file` refuses it). torch's reader does not check the members' CRC-32, so
    a flipped bit in a tensor loaded silently. ~10 ms for a 17.6 MB file."""
    import zipfile
    if _special_file(path):
        return None
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        return f"its archive: {e}"
    return None if bad is None else f"its member {bad} fails its CRC-32 check"


def load_torch_file(path: str, unreadable: str, map_location="cpu"):
    """``torch.load(path, map_location=map_location, weights_only=True)``, with one error for
    a file torch cannot read (torch raises many exception types for them): ValueError with
    ``unreadable.format(path=path, error="<Type>: <message>")``; check existence first for
    another message than the one below for a missing file.

    ``weights_only``: only tensors, numbers, strings and plain containers are unpickled (what
    slimkernels' model files and training checkpoints hold), so that a model file from an
    untrusted source cannot run code while it loads; a file holding other Python objects is
    refused (the ValueError above). A missing file raises :class:`MissingFileError` (a
    FileNotFoundError and a ValueError); a FIFO, socket or device a ValueError before it is
    opened (:func:`refuse_special_file`: a FIFO waited for a writer for good)."""
    if isinstance(path, (str, bytes, os.PathLike)) and not os.path.exists(path):
        raise MissingFileError(f"{os.fsdecode(path)} does not exist")
    refuse_special_file(path, "pass the file itself")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise ValueError(unreadable.format(path=path, error=_not_torch_file(path) or
                                           _load_error(e))) from None


def _not_torch_file(path) -> Optional[str]:
    """What is wrong with a file that is plainly not one ``torch.save`` wrote (empty, or neither
    a zip archive nor a pickle by its first bytes), else None: torch said "EOFError: " for an
    empty file and "KeyError: 101" for a text file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except (OSError, TypeError):   # (a file object, or unreadable: torch's own error)
        return None
    if not head:
        return "an empty file, 0 bytes"
    if head.startswith(b"PK\x03\x04"):   # (a cut archive: torch said "OSError: [Errno 22]
        import zipfile                      # Invalid argument")
        try:
            whole = zipfile.is_zipfile(path)
        except OSError:
            return None
        return None if whole else ("a zip archive without its end (no end-of-archive record): "
                                   "cut short, e.g. a copy or download that did not finish")
    if head[:1] == b"\x80":
        return None
    return f"not a file written by torch.save: it starts with {head!r}"


def _load_error(e: Exception) -> str:
    """One line for what ``torch.load`` raised: torch's weights-only refusal is a page of
    advice (including to load with ``weights_only=False``, which slimkernels does not do); its
    reason is the line after "WeightsUnpickler error:" (torch <= 2.5) or the paragraph between
    the advice (later), kept without the advice and torch's terminal escapes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))   # (torch's bold / reset escapes)
    reason = None
    if "WeightsUnpickler error:" in text:   # (torch <= 2.5's wording)
        rest = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()
        reason = rest[0].strip() if rest else "refused"
    elif text.startswith("Weights only load failed"):   # (later: the reason is a paragraph
        paras = [p.strip() for p in text.split("\n\n") if p.strip()]   # between advice)
        reason = next((p.splitlines()[0] for p in paras[1:]
                       if not p.startswith(("Check the documentation", "Please file an issue"))),
                      "refused")
    if reason is not None:   # (without torch's advice to allow the type, or to trust the file)
        reason = reason.split(" Please use ")[0].split(" Re-running ")[0]
        return (f"{type(e).__name__}: {reason.rstrip('.')}; only tensors and plain data are "
                f"read, so that a file cannot run code while it loads")
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(e).__name__}: {first}"


def read_image(path: str) -> Tuple[torch.Tensor, str]:
    """Read an image file: ``(x, note)``, ``x`` the image as ``[1, 3, H, W]`` float32 in [0, 1]
    (:func:`read_image_uint8`'s pixels / 255), ``note`` what was converted ("" if nothing).

    Raises:
        MissingFileError: ``path`` does not exist (a FileNotFoundError and a ValueError).
        TypeError: ``path`` is not a str, ``os.PathLike`` or bytes path (e.g. the image's
            bytes).
        ValueError: see :func:`read_image_uint8`.

    In a ``fork()``ed child torch's thread count is set to 1 first, with a RuntimeWarning
    (:func:`slimkernels._fork.one_thread_in_forked_child`: the conversion's parallel op waited
    for good there).
    """
    one_thread_in_forked_child("read_image")
    rgb, note = read_image_uint8(path)
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div_(255.0), note


def _to_srgb(im, icc: Optional[bytes]):
    """``(image, note)``: ``im`` converted from its embedded ICC profile ``icc`` to sRGB (RGB
    mode; relative colorimetric, as colour-managed viewers show it), or as it is with no note
    when there is no profile, when the profile maps colours to themselves in sRGB (an sRGB
    profile, whatever its name) or when this Pillow has no ImageCms (littleCMS; standard
    wheels have it); a profile that cannot be applied (damaged, of another colour space than
    the pixels) leaves the pixels and says so."""
    if not icc:
        return im, ""
    try:
        from PIL import ImageCms  # noqa: F401  (whether this Pillow has littleCMS)
    except ImportError:
        return im, ""
    try:
        prof, desc, same = _icc_profile(bytes(icc))
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - PyCMSError, a damaged profile
        return im, f"ignored its ICC colour profile, which could not be read ({e}); "
    if same:
        return im, ""
    try:
        src = im if im.mode in ("RGB", "L", "CMYK") else im.convert(
            "L" if im.mode in ("LA", "I;16", "1") else "RGB")
        out = _profile_to_srgb(src, prof)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - PyCMSError (e.g. a gray profile on RGB pixels)
        return im, f"ignored its ICC colour profile ({desc or 'unnamed'}: {e}); "
    return out, f"converted its ICC colour profile ({desc or 'unnamed'}) to sRGB; "


#: littleCMS's relative colorimetric intent (``ImageCms.Intent`` from Pillow 10; 1 before)
_RELATIVE_COLORIMETRIC = 1


def _profile_to_srgb(im, prof):
    """``im`` (pixels in ICC profile ``prof``'s colour space) as sRGB RGB, relative
    colorimetric."""
    from PIL import ImageCms

    return ImageCms.profileToProfile(im, prof, ImageCms.createProfile("sRGB"),
                                     renderingIntent=_RELATIVE_COLORIMETRIC, outputMode="RGB")


@functools.lru_cache(maxsize=16)
def _icc_profile(icc: bytes):
    """``(profile, description, same)`` of ICC profile bytes; ``same``: an RGB profile that
    maps a ramp of colours to themselves in sRGB within one level (an sRGB profile by its
    curves and primaries, not by its name: a linear "sRGB-g10" profile is not one)."""
    from PIL import Image, ImageCms

    prof = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    desc = (ImageCms.getProfileDescription(prof) or "").strip()
    same = False
    if prof.profile.xcolor_space.strip() == "RGB":
        ramp = np.array([[(v, v, v), (v, 0, 0), (0, v, 0), (0, 0, v), (v, 255 - v, v // 2)]
                         for v in range(0, 256, 17)], dtype=np.uint8)
        test = Image.fromarray(ramp, "RGB")
        out = _profile_to_srgb(test, prof)
        same = int(np.abs(np.asarray(out, dtype=int) - ramp.astype(int)).max()) <= 1
    return prof, desc, same


def read_image_uint8(path: str, todo: str = "") -> Tuple[np.ndarray, str]:
    """Read an image file as 8-bit RGB: ``(rgb, note)``, ``rgb`` a writable uint8 numpy array
    ``[H, W, 3]``, ``note`` what was converted ("" when nothing was). The codec's reader
    (:func:`read_image`) and the training data's (:func:`slimkernels.training.data.load_rgb`).

    Grayscale, palette, RGBA (alpha dropped) and 16-bit images are converted to 8-bit RGB (16-bit
    grayscale by rounding v / 257: Pillow's own conversion clips it to white), an EXIF
    orientation (camera JPEGs) is applied, and an embedded ICC colour profile other than sRGB
    (wide-gamut phone photos, Adobe RGB, CMYK JPEGs) is converted to sRGB, so that the image is
    what colour-managed viewers show (the decoded files carry no profile: sRGB). A PNG gAMA
    chunk without a profile is not applied.

    Raises:
        MissingFileError: ``path`` does not exist (a FileNotFoundError and a ValueError).
        TypeError: ``path`` is not a str, ``os.PathLike`` or bytes path (e.g. the image's
            bytes).
        ValueError: see :func:`open_image` (raise ``PIL.Image.MAX_IMAGE_PIXELS`` in Python to read
            larger images; ``todo`` ends the message), an empty image, or floating-point /
            32-bit integer pixels (no agreed 8-bit meaning: a float TIFF used to come out black).
    """
    from PIL import Image

    src, large, dec = _open_image(path, todo)
    raw, raw_any = dec["raw"], dec["raw_any"]
    with src:
        im = src
        note = ""
        try:
            frames = getattr(im, "n_frames", 1)
        except _PILLOW_READ_ERRORS:   # (Pillow's scan for the frames past the first, read)
            frames = None
            note = "used the first frame (the file is cut or damaged after it); "
        if frames is not None and frames > 1:
            note = f"used the first of {frames} frames; "
        if large:   # (Pillow warns over PIL.Image.MAX_IMAGE_PIXELS)
            note += (f"a large image ({im.size[0]}x{im.size[1]}, over Pillow's "
                     f"decompression-bomb warning size); ")
        orientation = im.getexif().get(0x0112, 1)
        if orientation in range(2, 9):   # EXIF orientation: store it as displayed
            from PIL import ImageOps
            im = ImageOps.exif_transpose(im)
            note += "applied the EXIF orientation; "
        elif orientation not in (1, None, 0):
            note += f"ignored an invalid EXIF orientation ({orientation}); "
        mode = im.mode
        if mode in ("F", "I"):
            # 32-bit pixels: floats have no agreed range, and ints past 16 bits would be clipped
            arr = np.asarray(im)
            wide = mode == "I" and raw_any is not None and ";16" not in raw_any and \
                raw_any.startswith("I")   # (32-bit samples, whatever their values: 0..200
            if mode == "F" or wide or (   # read as 16-bit came out nearly black)
                    arr.size and (arr.min() < 0 or arr.max() > 65535)):
                raise ValueError(f"{path}: {'floating-point' if mode == 'F' else '32-bit integer'}"
                                 f" pixels (Pillow mode {mode}), which have no 8-bit meaning "
                                 f"here: convert the image to 8 or 16 bits per channel first")
        if mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float64)
            arr = np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8)
            im = Image.fromarray(arr, mode="L")
            note += f"converted 16-bit {mode} to 8-bit; "
        if dec["maxval"] is not None and im.mode in ("RGB", "L"):   # (Pillow rounds those)
            note += f"scaled {dec['maxval']}-level samples to 8-bit; "
        # (Pillow keeps each sample's high byte of a 16-bit RGB image: PNG 'RGB;16B', TIFF
        # 'RGB;16L', whose mode is in raw_any)
        if im.mode in ("RGB", "RGBA") and raw_any is not None and ";16" in raw_any:
            note += (f"read 16-bit {raw_any.split(';')[0]} as 8-bit (the high byte of each "
                     f"sample); ")
        if im.mode == "RGBA" or im.mode == "LA" or (im.mode == "P" and "transparency" in im.info):
            note += f"dropped the alpha channel of a {mode} image; "
        elif "transparency" in src.info:   # a PNG tRNS colour key on an L / RGB / 16-bit image
            note += (f"dropped the transparency of a {mode} image (its transparent colour "
                     f"comes as stored); ")
            if im.mode != "RGB":
                note += f"converted {mode} to RGB; "
        elif im.mode != "RGB":
            note += f"converted {mode} to RGB; "
        im, icc_note = _to_srgb(im, src.info.get("icc_profile"))
        note += icc_note
        rgb = np.array(im.convert("RGB"), dtype=np.uint8)
    if rgb.size == 0:
        raise ValueError(f"{path}: the image is empty")
    return rgb, note.rstrip("; ")


#: zlib level of the PNG files :func:`image_to_png_bytes` writes (``slimkernels decompress``'s
#: output). Pillow's default, 6, took longer than the decoding itself at narrow widths: on the 24
#: Kodak images decoded at w=48 / w=192, 4 writes a PNG in 77 / 81 ms against 192 / 159 for 6,
#: for +0.5 % / +2.1 % bytes (``/tmp/pnglvl.py`` of sitting 54, Zen 3, medians of 3).
PNG_COMPRESS_LEVEL = 4


def image_to_png_bytes(x: torch.Tensor, fmt: str = "PNG",
                       compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """``[1, 3, H, W]`` (or ``[3, H, W]``) float in [0, 1] -> encoded image bytes (8-bit RGB,
    values rounded, clamped to [0, 1] first), lossless in ``fmt`` (a Pillow format name: PNG,
    WEBP, BMP, TIFF, ...). ``compress_level``: PNG's zlib level, 0 (none) .. 9 (smallest,
    slowest); :data:`PNG_COMPRESS_LEVEL` by default.

    Raises:
        ValueError: another shape (a batch of several images: encode them one by one; not 3
            channels), a dtype that is not floating point (uint8 0..255: divide by 255
            first), a NaN / inf value, or a ``compress_level`` that is not an int 0..9."""

    from PIL import Image

    if isinstance(compress_level, bool) or not isinstance(compress_level, int) or \
            not 0 <= compress_level <= 9:
        raise ValueError(f"image_to_png_bytes: compress_level must be an int 0..9 (zlib's "
                         f"levels), got {compress_level!r}")

    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4) or x.shape[-3] != 3 or \
            (x.dim() == 4 and x.shape[0] != 1):
        shape = tuple(getattr(x, 'shape', ())) or type(x).__name__
        hint = ("a batch: encode its images one by one" if isinstance(x, torch.Tensor) and
                x.dim() == 4 and x.shape[0] != 1 else "RGB: 3 channels, first after the batch")
        if not isinstance(x, torch.Tensor):
            hint = "a torch.Tensor: torch.from_numpy(...) for an array"
        raise ValueError(f"image_to_png_bytes expects one RGB image [1, 3, H, W] or [3, H, W], "
                         f"got {shape} ({hint})")
    if not x.is_floating_point():   # (uint8 0..255 was clamped to [0, 1]: a white image)
        raise ValueError(f"image_to_png_bytes expects float values in [0, 1], got {x.dtype} "
                         f"(for 0..255 integers pass x / 255)")
    if x.dim() == 4:
        x = x[0]
    if not bool(torch.isfinite(x).all()):   # (NaN became black)
        raise ValueError("image_to_png_bytes: the image holds NaN or inf values")
    arr = x.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0)
    buf = io.BytesIO()
    # lossless: WebP's default is lossy (the decoded image would differ from the codec's)
    options = {"WEBP": {"lossless": True}, "PNG": {"compress_level": compress_level}}
    Image.fromarray(arr.cpu().numpy()).save(buf, format=fmt, **options.get(fmt.upper(), {}))
    return buf.getvalue()
