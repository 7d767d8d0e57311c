"""The ``.slim`` file format: a versioned, checksummed container for one compressed image.

Layout (all integers little-endian)::

    offset  size  field
    0       4     magic b"SLIM"
    4       1     format version (1)
    5       1     flags (0; reserved)
    6       16    model id: first 16 bytes of SHA-256 over the model's config and weights
    22      2     width: active sub-network width (latent channels)
    24      4     image height (original, before padding)
    28      4     image width
    32      1     coder substreams (the payload also records each substream's size)
    33      2     number of metadata entries M
    35      ...   M x (key length u8, key UTF-8, value length u32, value bytes)
    ...     4     payload length P
    ...     4     CRC32 of the payload
    ...     4     CRC32 of every header byte before this field
    ...     P     payload: the range coder's byte string

A reader checks every field and raises :class:`SlimFormatError` (a ``ValueError``) saying what
is wrong: not a .slim file, newer version, corrupt header, truncated, corrupt payload, wrong model.
"""
from __future__ import annotations

import os
import stat
import struct
import zlib
from dataclasses import dataclass, field
from typing import Dict

from ._checks import is_int
from ._errors import MissingFileError

__all__ = ["SlimFile", "SlimFormatError", "ModelMismatchError", "ImageTooLargeError", "pack",
           "unpack", "read", "read_bytes", "check_magic", "check_metadata", "write", "MAGIC",
           "FORMAT_VERSION", "MAX_SIDE"]

MAGIC = b"SLIM"
FORMAT_VERSION = 1
_FIXED = struct.Struct("<4sBB16sHIIBH")
_TAIL = struct.Struct("<III")
MAX_SIDE = 1 << 20


class SlimFormatError(ValueError):
    """A ``.slim`` byte string that cannot be read; the message says why."""


class ModelMismatchError(SlimFormatError):
    """A valid ``.slim`` file written by another model (its model id differs): decode it with
    the model that wrote it."""


class ImageTooLargeError(ValueError):
    """A valid ``.slim`` file whose image has more pixels than the decoder was allowed to make
    (``max_pixels`` of :meth:`slimkernels.codec.SlimCodec.decompress`; the command line's
    ``--max-pixels``): a file of a few MB can ask for a 16384 x 16384 image (3 GB).
    ``width``, ``height``: the file's image; ``limit``: the pixels allowed; ``what``: the
    message without ``todo`` (what the caller's user can do)."""

    def __init__(self, width: int, height: int, limit: int, todo: str):
        self.width, self.height, self.limit, self.todo = width, height, limit, todo
        self.what = (f"the file's image is {width}x{height} = {width * height} pixels, more than "
                     f"the limit of {limit} (a guard against files that decode to huge images)")
        super().__init__(f"{self.what}: {todo}")

    def __reduce__(self):
        # (pickled with its four arguments: the default passed the message alone, so a worker
        # process's error could not reach its parent: a multiprocessing pool hung)
        return type(self), (self.width, self.height, self.limit, self.todo)


#: The widest sub-network a file can name (its width field is 16 bits).
MAX_WIDTH = 0xFFFF


@dataclass
class SlimFile:
    """The decoded fields of a ``.slim`` file.

    Attributes:
        model_id: 16 bytes identifying the model (see ``SlimCAE.model_id``).
        width: sub-network width. height, img_width: original image size in pixels.
        streams: number of coder substreams. payload: the coder's byte string.
        metadata: custom ``str -> bytes`` fields (keys up to 255 UTF-8 bytes).
        version: the format version read; ``pack`` writes ``FORMAT_VERSION`` (the default)
            and refuses any other.

    The byte layout is specified in ``docs/format.md``.
    """
    model_id: bytes
    width: int
    height: int
    img_width: int
    streams: int
    payload: bytes
    metadata: Dict[str, bytes] = field(default_factory=dict)
    version: int = FORMAT_VERSION


def _bytes_like(v, what: str) -> bytes:
    """``v`` (bytes, bytearray, memoryview or another buffer, e.g. a numpy uint8 array) as
    bytes; TypeError naming ``what`` for anything else (a str path, an int: ``bytes(n)`` would
    make n zero bytes)."""
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        raise TypeError(f"{what} must be bytes, got a str ({v[:60]!r}); for a file path read it "
                        f"first (slimkernels.container.read(path), or open(path, 'rb').read())")
    try:
        return memoryview(v).tobytes()
    except TypeError:
        raise TypeError(f"{what} must be bytes (or bytearray / memoryview), got "
                        f"{type(v).__name__}") from None


def _check_ints(f: SlimFile) -> None:
    for name in ("width", "height", "img_width", "streams"):
        v = getattr(f, name)
        if not is_int(v):
            raise ValueError(f"{name} must be an int, got {v!r}")


def pack(f: SlimFile) -> bytes:
    """Serialize a :class:`SlimFile` to bytes (ValueError on out-of-range fields or a
    ``version`` other than ``FORMAT_VERSION``, TypeError on a payload or model id that is not
    bytes, or an ``f`` that is not a SlimFile)."""
    _check_slim_file(f, "pack")
    if not is_int(f.version) or f.version != FORMAT_VERSION:   # (written as 1 silently)
        raise ValueError(f"version {f.version!r}: pack writes format version {FORMAT_VERSION} "
                         f"only (this library's); leave SlimFile.version at its default")
    model_id = _bytes_like(f.model_id, "model_id")
    if len(model_id) != 16:
        raise ValueError(f"model_id must be 16 bytes, got {len(model_id)}")
    _check_ints(f)
    if not 1 <= f.width <= MAX_WIDTH:
        raise ValueError(f"width {f.width} out of range 1..{MAX_WIDTH}")
    for name, v in (("height", f.height), ("img_width", f.img_width)):
        if not 1 <= v <= MAX_SIDE:
            raise ValueError(f"{name} {v} out of range 1..{MAX_SIDE}")
    if not 1 <= f.streams <= 255:
        raise ValueError(f"streams {f.streams} out of range 1..255")
    check_metadata(f.metadata)
    payload = _bytes_like(f.payload, "payload")
    if len(payload) >= 1 << 32:
        raise ValueError(f"payload is {len(payload)} bytes; a .slim file holds at most 2**32 - 1 "
                         "(its length field is 32 bits)")
    parts = [_FIXED.pack(MAGIC, FORMAT_VERSION, 0, model_id, int(f.width), int(f.height),
                         int(f.img_width), int(f.streams), len(f.metadata))]
    for k, v in f.metadata.items():
        kb, v = k.encode("utf-8"), bytes(v)
        parts.append(struct.pack("<B", len(kb)) + kb + struct.pack("<I", len(v)) + v)
    header = b"".join(parts)
    pre = header + struct.pack("<II", len(payload), zlib.crc32(payload))
    return pre + struct.pack("<I", zlib.crc32(pre)) + payload


def _check_metadata_entry(k, v) -> None:
    """ValueError naming the entry ``k: v`` when :func:`pack` cannot store it."""
    if not isinstance(k, str):
        raise ValueError(f"metadata keys must be str, got {type(k).__name__} {k!r}")
    if not isinstance(v, (bytes, bytearray, memoryview)):
        raise ValueError(f"metadata value of {k!r} must be bytes, got {type(v).__name__} "
                         f"(encode text first, e.g. 'text'.encode())")
    try:
        kb = k.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"metadata key {k!r} is not valid UTF-8 text (a lone surrogate?)") \
            from None
    if not 1 <= len(kb) <= 255:
        raise ValueError(f"metadata key {k!r} must be 1..255 UTF-8 bytes")
    if memoryview(v).nbytes >= 1 << 32:
        raise ValueError(f"metadata value of {k!r} is {memoryview(v).nbytes} bytes (at most "
                         f"2**32 - 1)")


def check_metadata(metadata) -> None:
    """ValueError when :func:`pack` would refuse ``metadata`` (a ``str -> bytes`` mapping: at
    most 65535 entries, keys of 1..255 UTF-8 bytes, values of bytes / bytearray / memoryview
    under 4 GiB), naming the first problem; for callers that check before the work (``compress``
    before its transform)."""
    from collections.abc import Mapping
    if not isinstance(metadata, Mapping):
        raise ValueError(f"metadata must be a dict of str -> bytes, got "
                         f"{type(metadata).__name__}")
    if len(metadata) >= 1 << 16:
        raise ValueError("too many metadata entries (at most 65535)")
    for k, v in metadata.items():
        _check_metadata_entry(k, v)


def unpack(data: bytes) -> SlimFile:
    """Parse and verify a ``.slim`` byte string (bytes, bytearray or memoryview); raises
    :class:`SlimFormatError` if invalid, TypeError for something that is not bytes (e.g. a
    path: read the file first, :func:`read`)."""
    data = _bytes_like(data, "the .slim data")
    if len(data) < 4 or data[:4] != MAGIC:
        raise SlimFormatError("not a .slim file (the magic bytes 'SLIM' are missing)")
    if len(data) < 5:
        raise SlimFormatError("truncated .slim file (ends inside the header)")
    if data[4] > FORMAT_VERSION:
        raise SlimFormatError(f"this .slim file has format version {data[4]}, newer than this "
                              f"slimkernels reads ({FORMAT_VERSION}): upgrade slimkernels (or "
                              f"the file is corrupt)")
    if data[4] == 0:
        raise SlimFormatError("corrupt .slim file: format version 0 does not exist")
    if len(data) < _FIXED.size:
        raise SlimFormatError("truncated .slim file (ends inside the header)")
    magic, version, flags, model_id, width, height, img_w, streams, nmeta = \
        _FIXED.unpack_from(data, 0)
    pos = _FIXED.size
    raw = []   # (key bytes, value) of the metadata entries
    try:
        for _ in range(nmeta):
            (kl,) = struct.unpack_from("<B", data, pos)
            key = data[pos + 1:pos + 1 + kl]
            pos += 1 + kl
            (vl,) = struct.unpack_from("<I", data, pos)
            pos += 4
            if pos + vl > len(data):
                raise struct.error("value past the end")
            raw.append((key, data[pos:pos + vl]))
            pos += vl
        plen, pcrc, hcrc = _TAIL.unpack_from(data, pos)
    except struct.error:
        raise SlimFormatError("truncated or corrupt .slim header") from None
    if zlib.crc32(data[:pos + 8]) != hcrc:
        raise SlimFormatError("corrupt .slim file: the header checksum does not match")
    if flags != 0:
        raise SlimFormatError(f"unsupported .slim flags {flags:#x}: written by a newer slimkernels?")
    meta: Dict[str, bytes] = {}
    for key, value in raw:
        try:
            name = key.decode("utf-8")
        except UnicodeDecodeError:
            raise SlimFormatError(f"corrupt .slim header: metadata key {key!r} is not UTF-8") \
                from None
        if not name or name in meta:
            raise SlimFormatError(f"corrupt .slim header: metadata key {name!r} is "
                                  f"{'empty' if not name else 'repeated'}")
        meta[name] = value
    pos += _TAIL.size
    payload = data[pos:]
    if len(payload) < plen:
        raise SlimFormatError(f"truncated .slim file: payload has {len(payload)} of {plen} bytes")
    if len(payload) > plen:
        raise SlimFormatError(f"corrupt .slim file: {len(payload) - plen} unexpected bytes after "
                              "the payload")
    if zlib.crc32(payload) != pcrc:
        raise SlimFormatError("corrupt .slim file: the payload checksum does not match")
    if not (1 <= height <= MAX_SIDE and 1 <= img_w <= MAX_SIDE and width >= 1 and streams >= 1):
        raise SlimFormatError("corrupt .slim header: image size, width or streams out of range")
    return SlimFile(model_id=model_id, width=width, height=height, img_width=img_w,
                    streams=streams, payload=payload, metadata=meta, version=version)


def read_bytes(path: str) -> bytes:
    """The bytes of the ``.slim`` file at ``path`` (a file or a pipe), read as the header says:
    the magic first (a large file that is not a ``.slim`` file, or ``/dev/zero``, is refused
    without reading it whole), then the header, whose checksum is verified before the payload
    is read (a large file or an endless pipe that only starts like a ``.slim`` file is refused
    after its header), then the payload's declared length. Otherwise unverified: what is there
    is returned for :func:`unpack` to check and name (a cut file, a bad version).

    Raises:
        slimkernels.io.MissingFileError: ``path`` does not exist (a FileNotFoundError and a
            ValueError).
        OSError: the file cannot be opened.
        SlimFormatError: a folder, a file without the magic bytes, a header whose checksum
            does not match, or bytes after the declared payload.
    """
    with _opened(path) as fh:
        return _read_declared(fh)


def _read_declared(fh) -> bytes:
    """:func:`read_bytes` after the magic: the header field by field, its checksum, then the
    payload (at most what a regular file holds: a claimed length is not allocated ahead)."""
    st = os.fstat(fh.fileno())
    left = st.st_size - len(MAGIC) if stat.S_ISREG(st.st_mode) else None   # (None: a pipe)
    buf = bytearray(MAGIC)

    def take(n: int) -> bool:
        """Append up to ``n`` more bytes (fewer at the end); whether all ``n`` came."""
        nonlocal left
        got = _read_up_to(fh, n if left is None else min(n, left))   # (a file: not past its end)
        buf.extend(got)
        if left is not None:
            left -= len(got)
        return len(got) == n

    if not take(_FIXED.size - len(MAGIC)) or not 1 <= buf[4] <= FORMAT_VERSION:
        return bytes(buf)   # (unpack: truncated, or the version's own message)
    nmeta = _FIXED.unpack_from(buf, 0)[-1]
    for _ in range(nmeta):
        if not take(1) or not take(buf[-1]) or not take(4):
            return bytes(buf)
        if not take(struct.unpack_from("<I", buf, len(buf) - 4)[0]):
            return bytes(buf)
    if not take(_TAIL.size):
        return bytes(buf)
    plen, _, hcrc = _TAIL.unpack_from(buf, len(buf) - _TAIL.size)
    if zlib.crc32(memoryview(buf)[:len(buf) - 4]) != hcrc:
        raise SlimFormatError("corrupt .slim file: the header checksum does not match")
    if not take(plen):
        return bytes(buf)   # (unpack: the payload is cut)
    if _read_up_to(fh, 1):
        more = "some" if left is None else f"{left}"   # (a pipe is not read to its end)
        raise SlimFormatError(f"corrupt .slim file: {more} unexpected bytes after the payload")
    return bytes(buf)


def _read_up_to(fh, n: int) -> bytes:
    """Up to ``n`` bytes of ``fh``: fewer only at its end (a pipe's read may return less)."""
    parts, want = [], n
    while want > 0:
        got = fh.read(min(want, 1 << 24))
        if not got:
            break
        parts.append(got)
        want -= len(got)
    return b"".join(parts)


def check_magic(path: str) -> None:
    """:func:`read_bytes`'s checks alone (a folder, the magic bytes), reading 4 bytes: for a
    caller that checks several files before it reads any (the command line's batches)."""
    with _opened(path):
        pass


def _opened(path: str):
    """``path`` opened for reading, past its magic bytes (SlimFormatError for a folder or a
    file without them)."""
    path = _check_path(path, "read")
    if os.path.isdir(path):
        raise SlimFormatError("not a .slim file: a folder")
    # (a missing path: MissingFileError, as a missing image or model file; ENOTDIR,
    # ENAMETOOLONG, EACCES, ... stay the OSErrors they are)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise MissingFileError(f"{path} does not exist") from None
    try:
        magic = fh.read(len(MAGIC))
    except BaseException:   # (an I/O error: the file is not left open with the exception)
        fh.close()
        raise
    if magic != MAGIC:
        fh.close()
        raise SlimFormatError("not a .slim file (the magic bytes 'SLIM' are missing)")
    return fh


def read(path: str) -> SlimFile:
    """Read and verify a ``.slim`` file from ``path``.

    Raises:
        slimkernels.io.MissingFileError: ``path`` does not exist (a FileNotFoundError and a
            ValueError).
        OSError: the file cannot be opened.
        SlimFormatError: the bytes are not a valid ``.slim`` file (see :func:`unpack`).
    """
    return unpack(read_bytes(path))


def write(path: str, f: SlimFile, *, overwrite: bool = False) -> None:
    """Write ``f`` to ``path`` atomically (temp file + rename); refuses to overwrite by default.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False, or it is a folder, device,
            FIFO or socket (never replaced; a symbolic link is replaced by the file).
        TypeError: ``f`` is not a :class:`SlimFile` (bytes from ``compress``: :func:`unpack`
            them first, or write them as they are).
        ValueError: a field of ``f`` is out of range (see :func:`pack`).
    """
    from .io import atomic_write_bytes
    path = _check_path(path, "write")
    _check_slim_file(f, "write")
    atomic_write_bytes(path, pack(f), overwrite=overwrite)


def _check_slim_file(f, fn: str) -> None:
    if not isinstance(f, SlimFile):   # (pack: "'bytes' object has no attribute 'model_id'")
        raise TypeError(f"container.{fn} takes a SlimFile, got {type(f).__name__}: bytes from "
                        f"compress are a whole .slim file already (write them as they are, or "
                        f"container.unpack(data) for a SlimFile)")


def _check_path(path, fn: str) -> str:
    """``path`` as a str; TypeError unless it is a str, bytes or os.PathLike (an int was taken
    as a file descriptor: read closed the caller's open file, read(0) waited on stdin)."""
    if isinstance(path, bool) or not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"container.{fn}: path must be a file name (str or os.PathLike), got "
                        f"{type(path).__name__} {path!r:.40}")
    return os.fsdecode(path)
