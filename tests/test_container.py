import os

import pytest

from slimkernels import container as C


def _file(**kw):
    f = dict(model_id=bytes(range(16)), width=96, height=512, img_width=768, streams=2,
             payload=b"\x01\x02\x03" * 50, metadata={"k": b"v", "\u00e9t\u00e9": b"\x00" * 5})
    f.update(kw)
    return C.SlimFile(**f)


def test_roundtrip():
    data = C.pack(_file())
    f = C.unpack(data)
    assert (f.width, f.height, f.img_width, f.streams) == (96, 512, 768, 2)
    assert f.metadata == {"k": b"v", "\u00e9t\u00e9": b"\x00" * 5}
    assert f.payload == b"\x01\x02\x03" * 50 and f.version == C.FORMAT_VERSION


def test_every_truncation_is_refused():
    data = C.pack(_file())
    for n in range(len(data)):
        with pytest.raises(C.SlimFormatError):
            C.unpack(data[:n])


def test_every_single_bit_flip_is_refused():
    data = C.pack(_file(payload=b"xyz" * 4, metadata={}))
    for i in range(len(data)):
        for bit in (0, 3, 7):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises(C.SlimFormatError):
                C.unpack(bytes(bad))


def test_messages_name_the_problem():
    data = C.pack(_file())
    with pytest.raises(C.SlimFormatError, match="magic"):
        C.unpack(b"JUNK" + data[4:])
    newer = bytearray(data)
    newer[4] = C.FORMAT_VERSION + 1
    with pytest.raises(C.SlimFormatError, match="newer"):
        C.unpack(bytes(newer))
    with pytest.raises(C.SlimFormatError, match="unexpected bytes"):
        C.unpack(data + b"\x00")
    with pytest.raises(C.SlimFormatError, match="header checksum"):
        bad = bytearray(data)
        bad[23] ^= 1               # the width field
        C.unpack(bytes(bad))


def test_pack_validates_fields():
    with pytest.raises(ValueError, match="model_id"):
        C.pack(_file(model_id=b"short"))
    with pytest.raises(ValueError, match="width"):
        C.pack(_file(width=0))
    with pytest.raises(ValueError, match="height"):
        C.pack(_file(height=0))
    with pytest.raises(ValueError, match="metadata key"):
        C.pack(_file(metadata={"": b"x"}))
    with pytest.raises(ValueError, match=r"metadata value of 'a' must be bytes, got str .*encode"):
        C.pack(_file(metadata={"a": "text"}))
    with pytest.raises(ValueError, match="metadata value of 'n' must be bytes, got int"):
        C.pack(_file(metadata={"n": 5}))        # bytes(5) would silently store 5 zero bytes
    with pytest.raises(ValueError, match="metadata keys must be str, got int"):
        C.pack(_file(metadata={1: b"x"}))
    f = C.unpack(C.pack(_file(metadata={"b": bytearray(b"12"), "m": memoryview(b"34")})))
    assert f.metadata == {"b": b"12", "m": b"34"}


def test_write_is_atomic_and_refuses_overwrite(tmp_path):
    p = tmp_path / "a.slim"
    C.write(str(p), _file())
    before = p.read_bytes()
    with pytest.raises(FileExistsError, match="--force"):
        C.write(str(p), _file(width=8))
    assert p.read_bytes() == before
    C.write(str(p), _file(width=8), overwrite=True)
    assert C.read(str(p)).width == 8
    assert [q.name for q in tmp_path.iterdir()] == ["a.slim"]   # no temp files left


def _with_raw_key(data: bytes, key: bytes) -> bytes:
    """``data`` (one metadata entry, key 'k') with the key's bytes replaced by ``key`` (same
    length) and the header checksum made valid again: what another writer could produce."""
    import struct
    import zlib
    i = data.index(b"\x01k") + 1
    out = bytearray(data[:i] + key + data[i + 1:])
    pos = C._FIXED.size + 1 + 1 + 4 + 1 + 8       # (one entry: key 1 byte, value 1 byte)
    out[pos:pos + 4] = struct.pack("<I", zlib.crc32(bytes(out[:pos])))
    return bytes(out)


def test_metadata_keys_must_be_valid_distinct_and_not_empty():
    data = C.pack(_file(metadata={"k": b"v"}, payload=b"p"))
    assert C.unpack(_with_raw_key(data, b"k")).metadata == {"k": b"v"}   # (the helper is right)
    with pytest.raises(C.SlimFormatError, match="not UTF-8"):
        C.unpack(_with_raw_key(data, b"\xff"))
    two = C.pack(_file(metadata={"k": b"v", "j": b"v"}, payload=b"p"))
    import zlib, struct
    i = two.index(b"\x01j") + 1
    dup = bytearray(two[:i] + b"k" + two[i + 1:])
    pos = C._FIXED.size + 2 * (1 + 1 + 4 + 1) + 8
    dup[pos:pos + 4] = struct.pack("<I", zlib.crc32(bytes(dup[:pos])))
    with pytest.raises(C.SlimFormatError, match="repeated"):
        C.unpack(bytes(dup))
    with pytest.raises(ValueError, match="not valid UTF-8"):
        C.pack(_file(metadata={"\ud800": b"x"}))


@pytest.mark.parametrize("bad", ["/some/file.slim", None, 5, 1.5])
def test_unpack_refuses_what_is_not_bytes(bad):
    with pytest.raises(TypeError, match="must be bytes"):   # (bytes(5): five zero bytes)
        C.unpack(bad)


def test_unpack_takes_any_bytes_like():
    import numpy as np
    data = C.pack(_file())
    for v in (bytearray(data), memoryview(data), np.frombuffer(data, dtype=np.uint8)):
        assert C.unpack(v) == C.unpack(data)


def test_pack_refuses_fields_of_the_wrong_type():
    with pytest.raises(ValueError, match="width must be an int, got 48.5"):
        C.pack(_file(width=48.5))
    with pytest.raises(ValueError, match="streams must be an int"):
        C.pack(_file(streams=True))
    with pytest.raises(TypeError, match="payload must be bytes, got a str"):
        C.pack(_file(payload="text"))
    with pytest.raises(TypeError, match="model_id must be bytes"):
        C.pack(_file(model_id=list(range(16))))


@pytest.mark.parametrize("version", [0, 2, 255, "1", 1.0, None])
def test_pack_refuses_a_version_it_does_not_write(version):
    """(pack wrote version 1 whatever SlimFile.version said: unpack(pack(f)) != f.)"""
    with pytest.raises(ValueError, match=rf"version {version!r}: pack writes format version "
                                         rf"{C.FORMAT_VERSION} only"):
        C.pack(_file(version=version))
    f = _file(version=C.FORMAT_VERSION)
    assert C.unpack(C.pack(f)) == f


def test_pack_refuses_a_payload_its_length_field_cannot_hold():
    class Huge(bytes):      # reports 4 GiB without holding it
        def __len__(self):
            return 1 << 32
    f = C.SlimFile(model_id=bytes(16), width=8, height=16, img_width=16, streams=1,
                   payload=Huge(b"\x01"))
    with pytest.raises(ValueError, match="at most 2\\*\\*32 - 1"):
        C.pack(f)


def test_write_takes_a_slim_file_not_bytes(tmp_path):
    """(container.write(path, compress(...)) was "AttributeError: 'bytes' object has no
    attribute 'model_id'".)"""
    data = C.pack(_file())
    with pytest.raises(TypeError, match="container.write takes a SlimFile, got bytes: bytes from "
                                        "compress are a whole .slim file already"):
        C.write(str(tmp_path / "a.slim"), data)
    assert not (tmp_path / "a.slim").exists()
    C.write(str(tmp_path / "a.slim"), C.unpack(data))
    assert (tmp_path / "a.slim").read_bytes() == data


def test_another_models_file_is_a_model_mismatch():
    """decompress of a file written by another model raises ModelMismatchError, a
    SlimFormatError (the command line adds its --model hint on the type, not on the text)."""
    import torch
    from slimkernels.models import SlimCAE
    torch.manual_seed(0)
    a, b = SlimCAE(widths=(16, 8)).eval(), SlimCAE(widths=(16, 8)).eval()
    a.update()
    b.update()
    data = a.compress(torch.rand(1, 3, 32, 32), 8)
    with pytest.raises(C.ModelMismatchError, match="written with a different model"):
        b.decompress(data)
    assert issubclass(C.ModelMismatchError, C.SlimFormatError)


def test_the_reader_closes_the_file_when_reading_the_magic_fails(tmp_path, monkeypatch):
    """An I/O error while reading the magic bytes left the file open for as long as the
    exception lived (a batch keeping its errors kept the descriptors)."""
    import io

    p = tmp_path / "a.slim"
    p.write_bytes(b"SLIM" + b"\0" * 32)
    opened = []

    class Failing(io.BytesIO):
        def read(self, n=-1):
            raise OSError(5, "Input/output error")

    def fake_open(path, mode="r", *args, **kwargs):
        opened.append(Failing())
        return opened[-1]
    monkeypatch.setattr(C, "open", fake_open, raising=False)
    for fn in (C.read_bytes, C.check_magic, C.read):
        with pytest.raises(OSError, match="Input/output"):
            fn(str(p))
    assert len(opened) == 3 and all(f.closed for f in opened)


# -- audit (forty-eighth sitting) ----------------------------------------------------------------
def test_image_too_large_error_pickles():
    """(Its own __init__ made pickling fail: a worker process's refusal hung a
    multiprocessing pool, broke a ProcessPoolExecutor.)"""
    import copy
    import pickle
    e = C.ImageTooLargeError(20000, 10000, 1000, "pass max_pixels=None")
    for back in (pickle.loads(pickle.dumps(e)), copy.copy(e)):
        assert type(back) is C.ImageTooLargeError and str(back) == str(e)
        assert (back.width, back.height, back.limit) == (20000, 10000, 1000)


def test_a_path_that_is_not_a_file_name_is_refused(tmp_path):
    """(An int was taken as a file descriptor: read closed the caller's open file, read(0)
    waited on stdin; write with an int was lstat's TypeError.)"""
    import os
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        for fn, args in ((C.read, ()), (C.read_bytes, ()), (C.check_magic, ()),
                         (C.write, (_file(),))):
            for bad in (fd, True, 3.0):
                with pytest.raises(TypeError, match="path must be a file name"):
                    fn(bad, *args)
        os.fstat(fd)   # (still open)
    finally:
        os.close(fd)
    C.write(os.fsencode(tmp_path / "b.slim"), _file())   # bytes paths: read and write
    assert C.read(os.fsencode(tmp_path / "b.slim")) == C.read(str(tmp_path / "b.slim"))


def test_overwrite_must_be_a_bool(tmp_path):
    """(overwrite="no" replaced the file.)"""
    path = str(tmp_path / "a.slim")
    C.write(path, _file())
    before = open(path, "rb").read()
    for bad in ("no", 1, None):
        with pytest.raises(ValueError, match="overwrite must be True or False"):
            C.write(path, _file(width=9), overwrite=bad)
    assert open(path, "rb").read() == before


def test_pack_of_what_is_not_a_slim_file_is_named():
    """(bytes from compress: "'bytes' object has no attribute 'model_id'".)"""
    with pytest.raises(TypeError, match="container.pack takes a SlimFile, got bytes"):
        C.pack(C.pack(_file()))


def test_a_missing_slim_file_is_the_missing_file_error_of_the_other_readers(tmp_path):
    """(A plain FileNotFoundError, where a missing image, model file or folder is a
    slimkernels.io.MissingFileError: a FileNotFoundError and a ValueError.)"""
    from slimkernels.io import MissingFileError
    missing = tmp_path / "nope.slim"
    for fn in (C.read, C.read_bytes, C.check_magic):
        for path in (str(missing), missing, os.fsencode(missing)):
            with pytest.raises(MissingFileError, match=r"nope.slim does not exist$") as e:
                fn(path)
            assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ValueError)
    os.symlink(tmp_path / "gone", tmp_path / "dangling.slim")
    with pytest.raises(MissingFileError, match="dangling.slim does not exist"):
        C.read(str(tmp_path / "dangling.slim"))


def test_read_bytes_checks_the_header_before_reading_what_it_declares(tmp_path):
    """A large file (or an endless pipe) starting with b"SLIM" was read whole before its 47-byte
    header was checked: 2.1 GB of memory and 4.2 s for a 1 GB file, an out-of-memory error for
    a 4 GB one. Now the header is read field by field, its checksum verified, then the declared
    payload; a cut file still reads as far as it goes (unpack names what is missing)."""
    import threading
    import tracemalloc
    sparse = tmp_path / "sparse.slim"
    with open(sparse, "wb") as fh:
        fh.write(b"SLIM\x01\x00")
        fh.truncate(1 << 30)   # (sparse: no disk used)
    tracemalloc.start()
    try:
        with pytest.raises(C.SlimFormatError, match="the header checksum does not match"):
            C.read_bytes(str(sparse))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    # an endless pipe that starts like a .slim file: refused after its header
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    chunk = bytes(1 << 16)

    def writer():
        try:
            with open(fifo, "wb") as w:
                w.write(b"SLIM\x01\x00")
                for _ in range(1 << 14):   # (1 GiB, if it were all read)
                    w.write(chunk)
        except BrokenPipeError:
            pass
    t = threading.Thread(target=writer, daemon=True)
    t.start()
    with pytest.raises(C.SlimFormatError, match="the header checksum does not match"):
        C.read_bytes(fifo)
    t.join(30)
    assert not t.is_alive()   # (the reader closed the pipe: the writer stopped)
    # a good file: its bytes; with bytes after the payload: how many
    path = tmp_path / "a.slim"
    data = C.pack(_file())
    path.write_bytes(data)
    assert C.read_bytes(str(path)) == data and C.read(str(path)) == _file()
    path.write_bytes(data + b"xyz")
    with pytest.raises(C.SlimFormatError, match="^corrupt .slim file: 3 unexpected bytes after "
                                                "the payload$"):
        C.read_bytes(str(path))
    # cut anywhere: what is there, and unpack's message for it
    for k in range(4, len(data)):
        path.write_bytes(data[:k])
        got = C.read_bytes(str(path))
        assert got == data[:k]
        with pytest.raises(C.SlimFormatError, match="truncated"):
            C.unpack(got)
