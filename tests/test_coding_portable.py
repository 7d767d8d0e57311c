"""The coder's portable C++ (``-DSK_NO_ASM``: no x86-64 assembly in the renormalisations of the
encoder and the decoder) writes the same bytes as the extension (built with it) and decodes them.

Builds ``tests/csrc/encode_file.cpp`` with the C++ core on its own (skipped without a C++
compiler), then encodes the same cases both ways: every precision, escapes of every size, runs
of one and of many symbols, one and several substreams. The driver decodes its bytes with the
same build and fails when they do not give the symbols back. Also builds
``tests/csrc/halves_check.cpp`` with AddressSanitizer and UBSan: the encoder's lane halves.
"""
import os
import shlex
import shutil
import struct
import subprocess

import numpy as np
import pytest

from slimkernels import coding

from .test_coding import _kodak_like, _random_tables, _symbols

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIN_HALVES = coding._ext().MIN_HALVES_SYMBOLS
def _compiler():
    """The C++ compiler command (``$CXX``, which may be e.g. ``ccache g++``, else c++ / g++ /
    clang++) as a list, or None."""
    cxx = shlex.split(os.environ.get("CXX", ""))
    if cxx and shutil.which(cxx[0]):
        return cxx
    for name in ("c++", "g++", "clang++"):
        if shutil.which(name):
            return [name]
    return None


@pytest.fixture(scope="module")
def portable_encoder(tmp_path_factory):
    """Path of the encode_file driver built with -DSK_NO_ASM."""
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler to build the portable coder with")
    exe = str(tmp_path_factory.mktemp("portable") / "encode_file")
    cmd = [*cxx, "-O1", "-std=c++17", "-DSK_NO_ASM", "-pthread", "-I", os.path.join(ROOT, "csrc"),
           os.path.join(ROOT, "csrc", "range_coder.cpp"),
           os.path.join(ROOT, "tests", "csrc", "encode_file.cpp"), "-o", exe]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"building the portable coder failed:\n{r.stderr[-3000:]}"
    return exe


def _encode_portable(exe, tmp_path, sym, idx, cdfs, lengths, offsets, precision, streams, run):
    sym = np.ascontiguousarray(sym, np.int32).reshape(-1)
    idx = np.ascontiguousarray(idx, np.int32).reshape(-1)
    cdfs = np.ascontiguousarray(cdfs, np.int32)
    head = struct.pack("<6q", sym.size, cdfs.shape[0], cdfs.shape[1], precision, streams, run)
    src, dst = tmp_path / "case.bin", tmp_path / "out.bin"
    src.write_bytes(head + sym.tobytes() + idx.tobytes() + cdfs.tobytes()
                    + np.ascontiguousarray(lengths, np.int32).tobytes()
                    + np.ascontiguousarray(offsets, np.int32).tobytes())
    r = subprocess.run([exe, str(src), str(dst)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return dst.read_bytes()


@pytest.mark.parametrize("seed", range(6))
def test_portable_build_writes_the_same_bytes(portable_encoder, tmp_path, seed):
    rng = np.random.default_rng(seed)
    precision = [16, 12, 1, 8, 16, 3][seed]
    cdfs, lengths, offsets = _random_tables(rng, 5, [300, 40, 1, 8, 3, 2][seed], precision)
    n = 2 * MIN_HALVES + 1 + seed   # one substream: the driver's lane halves at 2 threads too
    idx = rng.integers(0, 5, n).astype(np.int32)
    sym = _symbols(rng, idx, lengths, offsets, escaped=0.1)
    for streams in (1, 3):
        ours = coding.encode(sym, idx, cdfs, lengths, offsets, precision=precision,
                             streams=streams)
        assert _encode_portable(portable_encoder, tmp_path, sym, idx, cdfs, lengths, offsets,
                                precision, streams, 1) == ours


@pytest.mark.parametrize("streams", [1, 2])
def test_portable_build_same_bytes_on_a_latent(portable_encoder, tmp_path, rng, streams):
    # runs of h * w symbols sharing a CDF row (the run loop), every renormalisation rate from
    # near-deterministic channels to ~5 bits per symbol, and escapes; long enough substreams for
    # the driver's lane halves
    sym, idx, cdfs, lengths, offsets = _kodak_like(rng, channels=24, h=32, w=45)
    assert sym.size // streams >= MIN_HALVES
    compact = np.arange(24, dtype=np.int32).reshape(1, 24, 1, 1)
    ours = coding.encode(sym, compact, cdfs, lengths, offsets, streams=streams)
    assert ours == coding.encode(sym, idx, cdfs, lengths, offsets, streams=streams)
    assert _encode_portable(portable_encoder, tmp_path, sym, np.arange(24), cdfs, lengths,
                            offsets, 16, streams, 32 * 45) == ours


def test_lane_halves_under_address_and_undefined_behaviour_sanitizers(tmp_path):
    """tests/csrc/halves_check.cpp built with -fsanitize=address,undefined (skipped where the
    compiler cannot): random cases of the encoder's lane halves (escapes of every size, buffers
    that outgrow the scratch space, runs, several substreams) must write the bytes of one thread,
    decode back, count their escapes, and read or write nothing out of bounds."""
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = str(tmp_path / "halves_check")
    cmd = [*cxx, "-O1", "-g", "-std=c++17", "-fno-omit-frame-pointer",
           "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-pthread", "-I",
           os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "range_coder.cpp"),
           os.path.join(ROOT, "tests", "csrc", "halves_check.cpp"), "-o", exe]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0 and "sanitize" in r.stderr:
        pytest.skip(f"the compiler cannot build with the sanitizers: {r.stderr[-300:]}")
    assert r.returncode == 0, f"building the check failed:\n{r.stderr[-3000:]}"
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    r = subprocess.run([exe, "120", "3"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0 and "120 cases" in r.stdout, (r.stdout + r.stderr)[-3000:]
