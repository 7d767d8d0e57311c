"""Entropy coding: a fast, exact, multi-stream rANS coder written in C++ (``slimkernels._coder``).

The contract is CompressAI's ``encode_with_indexes`` / ``decode_with_indexes``: element ``j`` is
coded with CDF ``i = indexes[j]`` as the value ``v = symbols[j] - offsets[i]``. A CDF of length
``L`` codes ``v`` in ``[0, L - 3]`` directly; ``L - 2`` is the escape symbol, after which ``v`` is
written in bypass bits, so every int32 symbol (``INT32_MIN`` .. ``INT32_MAX``) round-trips exactly.

Arrays are read in place: numpy arrays or CPU torch tensors of dtype int32 (C-contiguous) are
passed to C++ without copies; other integer dtypes are converted after a range check. CDF tables
are integer, so encoder and decoder agree bit for bit on every machine. The coder keeps
validated copies of the last few table sets it saw (with the decoder's lookup tables): calls
with the same table content skip validation and table building.

Byte layout, algorithm and safety guarantees: ``docs/coder.md``.

Example::

    cdf = pmf_to_quantized_cdf(np.array([0.5, 0.25, 0.2, 0.05]))  # 3 symbols + tail mass
    cdfs = cdf[None, :]                                                # [1, 5] int32
    lengths, offsets = np.array([5], np.int32), np.array([-1], np.int32)
    data = encode(symbols, np.zeros_like(symbols), cdfs, lengths, offsets)
    assert (decode(data, np.zeros_like(symbols), cdfs, lengths, offsets) == symbols).all()
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import numpy as np

from . import _build_stamp
from ._checks import is_int
from ._fork import forked_since_import

__all__ = [
    "encode",
    "encode_prepared",
    "decode_prepared",
    "ideal_bytes",
    "decode",
    "pmf_to_quantized_cdf",
    "pmfs_to_quantized_cdfs",
    "validate_tables",
    "stream_count",
    "openmp_pool_available",
    "POOLS",
    "MIN_PRECISION",
    "MAX_PRECISION",
]

MIN_PRECISION = 1
MAX_PRECISION = 16

_I32_MIN, _I32_MAX = np.iinfo(np.int32).min, np.iinfo(np.int32).max


def _ext():
    c = _CODER
    return c if c is not None else _load_coder()


_CODER = None   # the extension, once loaded and checked (_load_coder)


def _load_coder():
    """slimkernels._coder; ImportError naming the fix when it is not built, or is a build of
    other C++ sources than the checkout beside it holds (``_build_stamp.stale``: the coder has
    no fallback)."""
    global _CODER
    try:
        from . import _coder
    except ImportError as e:  # pragma: no cover - only when the extension was not built
        raise ImportError(
            "slimkernels._coder (the C++ entropy coder) is not built: run "
            "`pip install --no-build-isolation -e .` or `python setup.py build_ext --inplace` "
            "in the slimkernels checkout (needs a C++17 compiler and pybind11)") from e
    msg = _build_stamp.stale(_coder, "_coder")
    if msg is not None:
        raise ImportError(msg)
    _CODER = _coder
    return _coder


def _to_numpy(x, name):
    """Return a numpy view of ``x`` (numpy array, CPU torch tensor or array-like)."""
    if isinstance(x, np.ndarray):
        return x
    mod = type(x).__module__
    if mod.startswith("torch"):
        if getattr(x, "device", None) is not None and x.device.type != "cpu":
            raise ValueError(f"{name} is a tensor on {x.device}; the coder runs on the CPU: "
                             f"pass {name}.cpu()")
        x = x.detach()
        if x.dtype == _bfloat16():   # (numpy has no bf16: "Got unsupported ScalarType")
            x = x.float()
        return x.numpy()
    if isinstance(x, (bytes, bytearray, memoryview, str)):
        raise ValueError(f"{name} must be an integer array, got {type(x).__name__}")
    try:
        a = np.asarray(x)
    except ValueError as e:   # a ragged list
        raise ValueError(f"{name} must be an array of one shape (numpy: {e})") from None
    if a.size == 0 and a.dtype == np.float64 and not isinstance(x, np.ndarray):
        a = a.astype(np.int32)   # (an empty list: numpy's default float64 holds no value)
    return a


def _bfloat16():
    import torch
    return torch.bfloat16


def _as_int32(x, name, ndim=None):
    """C-contiguous int32 view of ``x``; copies only when the dtype or layout requires it."""
    if type(x).__module__.startswith("torch") and getattr(x, "dtype", None) == _bfloat16():
        raise ValueError(f"{name} must hold integers (int32), got dtype torch.bfloat16")
    a = _to_numpy(x, name)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(a.shape)}")
    if a.dtype != np.int32:
        if a.dtype == np.bool_ or a.dtype.kind not in "iu":
            raise ValueError(f"{name} must hold integers (int32), got dtype {a.dtype}")
        if a.size and (a.min() < _I32_MIN or a.max() > _I32_MAX):
            raise ValueError(f"{name} has values outside the int32 range")
        a = a.astype(np.int32)
    # (reshaped: ascontiguousarray makes a 0-d array 1-d, and decode returns indexes' shape)
    return _aligned(np.ascontiguousarray(a)).reshape(a.shape)


def _aligned(a: np.ndarray) -> np.ndarray:
    """``a``, copied when its data is not aligned to its element size (a view at an odd byte
    offset, e.g. ``np.frombuffer(b[1:], np.int32)``: the C++ coder refuses those)."""
    return a if a.flags.aligned else a.copy()


def _as_float64(x, name, ndim):
    a = _to_numpy(x, name)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(a.shape)}")
    if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
        raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}")
    return _aligned(np.ascontiguousarray(a, dtype=np.float64))


def _check_int(v, name, lo, hi=None):
    if not is_int(v):
        raise ValueError(f"{name} must be an int, got {type(v).__name__}")
    v = int(v)
    if v < lo or (hi is not None and v > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {rng}, got {v}")
    return v


#: Threads and streams above this are clamped here, before they reach the C++ ints (the coder
#: itself caps threads at 256 and the streams, and streams at the symbol count).
_CLAMP = 1 << 30


def _threads(threads):
    return 0 if threads is None else min(_check_int(threads, "threads", 1), _CLAMP)


#: The thread pools :func:`encode` / :func:`decode` can run substreams on (``pool=``).
POOLS = ("coder", "openmp")


def _executor(pool):
    """None for ``pool="coder"`` (the coder's own worker pool), the OpenMP executor capsule of
    ``slimkernels._cpu_kernels`` for ``"openmp"``."""
    if pool == "coder":
        return None
    if pool == "openmp":
        if forked_since_import():
            return None  # OpenMP cannot run in a fork()ed child: the coder's pool can
        ex = _openmp_executor()
        if ex is None:
            raise ValueError('pool="openmp" needs slimkernels._cpu_kernels built with OpenMP '
                             '(it is not importable here, or too old); use pool="coder"')
        return ex
    raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")


@functools.lru_cache(maxsize=None)
def _openmp_executor():
    """The executor capsule of ``slimkernels._cpu_kernels.coder_executor()`` (made once), or
    None when that module is not built."""
    from ._cpu import _module   # the one place that imports the optional extension
    ck = _module()
    return ck.coder_executor() if ck is not None and hasattr(ck, "coder_executor") else None


def openmp_pool_available() -> bool:
    """Whether ``pool="openmp"`` works here (``slimkernels._cpu_kernels`` is built)."""
    return _openmp_executor() is not None


def _tables(cdfs, cdf_lengths, offsets, precision):
    precision = _check_int(precision, "precision", MIN_PRECISION, MAX_PRECISION)
    return (_as_int32(cdfs, "cdfs", 2), _as_int32(cdf_lengths, "cdf_lengths", 1),
            _as_int32(offsets, "offsets", 1), precision)


def _index_run(shape, idx, name="symbols"):
    """``(idx, run)`` such that element ``j`` of an array of ``shape`` uses flat index
    ``j // run`` of ``idx``: run 1 when both have the same number of elements, else
    ``prod(shape[k:])`` when ``idx.shape == shape[:k] + (1,) * (ndim - k)`` (an empty ``idx``
    with run 1 when there are no symbols)."""
    idx_shape = idx.shape
    n, m = math.prod(shape), math.prod(idx_shape)
    if n >= 1 << 62:
        raise ValueError(f"{name} {tuple(shape)} has too many elements ({n})")
    if m == n:
        return idx, 1
    if len(idx_shape) == len(shape):
        k = 0
        while k < len(shape) and idx_shape[k] == shape[k]:
            k += 1
        if all(d == 1 for d in idx_shape[k:]):
            run = math.prod(shape[k:])
            return (idx, run) if run else (idx.reshape(-1)[:0], 1)
    raise ValueError(
        f"indexes has shape {tuple(idx_shape)}: it must have as many elements as {name} "
        f"{tuple(shape)} (one CDF index per symbol), or {name}' leading dimensions followed by "
        f"1s (one index per run of trailing elements, e.g. [1, C, 1, 1] for [1, C, H, W])")


def encode(symbols, indexes, cdfs, cdf_lengths, offsets, *, precision=16, streams=1,
           threads=None, pool="coder") -> bytes:
    """Entropy-code ``symbols`` with the CDF of each element chosen by ``indexes``.

    Args:
        symbols: int32 array of any shape (numpy or CPU torch), read in place.
        indexes: int32 array with the same number of elements; ``indexes[j]`` in
            ``[0, num_cdfs)`` selects the CDF of element ``j`` (both flattened in C order).
            Or a compact form that broadcasts over trailing dimensions: ``symbols``' leading
            dimensions followed by 1s, e.g. ``[1, C, 1, 1]`` for ``[1, C, H, W]`` symbols (one
            CDF per channel). Same bytes as the expanded array, without reading 4 bytes of
            index per symbol.
        cdfs: int32 ``[num_cdfs, max_length]``; row ``i`` holds a CDF of length
            ``cdf_lengths[i]``: ``cdf[0] = 0``, ``cdf[L-1] = 2**precision``, strictly increasing
            (every symbol, escape included, has frequency >= 1). Entries past ``L-1`` are ignored.
        cdf_lengths: int32 ``[num_cdfs]``, each in ``[2, max_length]``.
        offsets: int32 ``[num_cdfs]``: element ``j`` is coded as ``symbols[j] - offsets[i]``.
        precision: CDF precision in bits, 1..16.
        streams: number of independent substreams (>= 1). Symbols are split into that many
            contiguous chunks (clamped to the symbol count) coded in parallel threads with the
            GIL released; the substream sizes are stored in the output.
        threads: threads (>= 1, capped at 2 x ``streams`` and 256), the calling thread
            included; the others come from ``pool``. ``None`` means ``min(streams, cpu
            count)``. With ``threads >= 2 * streams``, each substream of at least 16384
            symbols (indexes per symbol or per run of >= 4) has its 4 lanes coded as two
            halves on two threads: same bytes.
        pool: where the other threads come from: ``"coder"`` (default), the coder's own worker
            pool kept between calls; ``"openmp"``, the OpenMP threads of
            ``slimkernels._cpu_kernels``, which are torch's own (same ``libgomp``) where torch
            runs on OpenMP: right after torch's parallel work they are still spinning and start
            at once, where a sleeping worker of the coder's pool can take ~0.25 ms to wake up on
            a busy or virtualised machine (what ``SlimCAE.compress`` uses). In a ``fork()``ed
            child of the process that imported slimkernels, where OpenMP cannot run,
            ``"openmp"`` uses the coder's pool (a child forked before slimkernels was imported
            cannot be recognised: pass ``"coder"`` or ``threads=1`` there). Same bytes either
            way.

    Returns:
        The encoded ``bytes`` (self-describing: format version, precision, symbol count,
        substream sizes; see docs/coder.md).

    Raises:
        ValueError: on any invalid argument or table, before anything is coded.
    """
    sym = _as_int32(symbols, "symbols")
    idx = _as_int32(indexes, "indexes")
    idx, run = _index_run(sym.shape, idx)
    cdfs, lengths, offsets, precision = _tables(cdfs, cdf_lengths, offsets, precision)
    streams = min(_check_int(streams, "streams", 1), _CLAMP)
    return _ext().encode(sym, idx, cdfs, lengths, offsets, precision, streams, _threads(threads),
                         run, executor=_executor(pool))


def encode_prepared(symbols: np.ndarray, indexes: np.ndarray, run: int, cdfs: np.ndarray,
                    cdf_lengths: np.ndarray, offsets: np.ndarray, precision: int, streams: int,
                    threads: int, pool: str = "coder") -> bytes:
    """:func:`encode` for arguments already in the coder's form, without its conversions (the
    codec's hot path: ~25 us of Python on a 768x512 latent right after a transform): C-contiguous
    int32 numpy ``symbols`` and ``indexes`` with element ``j`` using index ``j // run``, tables
    as :func:`encode` takes them, ints ``precision``, ``streams >= 1``, ``threads >= 1`` (0: as
    ``threads=None``). The C++ coder still validates everything (a wrong argument raises
    ValueError or TypeError, never codes garbage). Same bytes as :func:`encode`."""
    threads = _prepared_threads(threads)
    _prepared_array(symbols, "symbols", "encode_prepared")
    _prepared_array(indexes, "indexes", "encode_prepared")
    streams = min(_check_int(streams, "streams", 1), _CLAMP)
    return _ext().encode(symbols, indexes, cdfs, cdf_lengths, offsets, precision, streams,
                         threads, run, executor=_executor(pool))


def _prepared_threads(threads) -> int:
    """The prepared calls' ``threads``: None as 0 (what :func:`encode` reads as None), clamped
    as :func:`encode` clamps it (None had been "'<' not supported", 2**40 pybind's dump)."""
    if threads is None:
        return 0
    return min(_check_int(threads, "threads", 0), _CLAMP)


def _prepared_array(a, name: str, fn: str) -> None:
    """TypeError unless ``a`` is a C-contiguous int32 numpy array (the prepared calls take
    them as they are: another one got pybind's signature dump, in the C++ argument order)."""
    if not isinstance(a, np.ndarray) or a.dtype != np.int32 or not a.flags.c_contiguous \
            or not a.flags.aligned:
        what = (f"a {a.dtype} array{'' if a.flags.c_contiguous else ' (not C-contiguous)'}"
                f"{'' if a.flags.aligned else ' (not aligned: a view at an odd byte offset)'}"
                if isinstance(a, np.ndarray) else type(a).__name__)
        raise TypeError(f"{fn}: {name} must be a C-contiguous, aligned int32 numpy array, got "
                        f"{what} (np.require(x, np.int32, 'CA'); or use encode / decode, "
                        f"which convert)")


def decode(data, indexes, cdfs, cdf_lengths, offsets, *, precision=16,
           threads=None, shape=None, pool="coder") -> np.ndarray:
    """Decode symbols written by :func:`encode` with the same tables.

    Args:
        data: ``bytes``, ``bytearray``, ``memoryview`` or a uint8 array (numpy or CPU torch;
            its bytes in C order).
        indexes, cdfs, cdf_lengths, offsets, precision: as for :func:`encode`.
        threads: worker threads (>= 1, capped at the substream count and 256); ``None`` means
            ``min(substreams, cpu count)``.
        shape: the symbols' shape (a tuple of ints). Needed with compact ``indexes`` (see
            :func:`encode`); ``None``: the shape of ``indexes``.
        pool: ``"coder"`` or ``"openmp"``, as for :func:`encode`.

    Returns:
        numpy int32 array of ``shape`` (default: the shape of ``indexes``).

    Raises:
        ValueError: for invalid tables or indexes, or when ``data`` is not a stream encoded
            with these tables (truncated, damaged, another precision or symbol count). Decoding
            any byte string is safe: it returns or raises ValueError in time linear in the
            symbol count and the data size; it never reads outside its inputs.
    """
    data = _encoded_bytes(data, "decode", ValueError)
    idx = _as_int32(indexes, "indexes")
    run = 1
    if shape is not None:
        if isinstance(shape, (int, np.integer)):
            shape = (shape,)
        try:
            shape = tuple(_check_int(d, "shape entries", 0) for d in shape)
        except TypeError:
            raise ValueError(f"shape must be a tuple of ints, got {shape!r}") from None
        idx, run = _index_run(shape, idx, "shape")
    cdfs, lengths, offsets, precision = _tables(cdfs, cdf_lengths, offsets, precision)
    return _ext().decode(data, idx, cdfs, lengths, offsets, precision, _threads(threads),
                         shape, run, executor=_executor(pool))


def decode_prepared(data: bytes, indexes: np.ndarray, run: int, shape: Tuple[int, ...],
                    cdfs: np.ndarray, cdf_lengths: np.ndarray, offsets: np.ndarray,
                    precision: int, threads: int, pool: str = "coder",
                    stats: Optional[np.ndarray] = None) -> np.ndarray:
    """:func:`decode` for arguments already in the coder's form, without its conversions (the
    codec's hot path): ``data`` bytes, C-contiguous int32 numpy ``indexes`` with element ``j`` of
    ``shape`` using index ``j // run``, tables as :func:`decode` takes them, ints ``precision``
    and ``threads >= 1`` (0: as ``threads=None``). The C++ decoder still validates everything
    (safe on any ``data``, as :func:`decode`). Returns the same array as :func:`decode`.
    ``stats``: None, or a writeable C-contiguous int64 numpy array whose element 0 receives the
    number of escaped symbols (values outside their CDF's table; 0 for a latent the entropy
    model covers)."""
    threads = _prepared_threads(threads)
    _prepared_array(indexes, "indexes", "decode_prepared")
    if not isinstance(shape, (tuple, list)) or \
            not all(is_int(d) and 0 <= d < 2 ** 62 for d in shape):
        raise ValueError(f"shape must be a tuple of ints >= 0, got {shape!r:.60}")
    return _ext().decode(data, indexes, cdfs, cdf_lengths, offsets, precision, threads, shape,
                         run, executor=_executor(pool), stats=stats)


def stream_count(data) -> int:
    """Number of substreams recorded in an encoded byte string (validates the header only).
    ``data``: as :func:`decode` takes it (bytes, bytearray, memoryview or a uint8 array, numpy
    or CPU torch).

    Raises:
        TypeError: another type, or an array that is not uint8.
        ValueError: a header that is not a valid coder header (too short, a stream count or
            lengths that do not fit the data)."""
    return int(_ext().stream_count(_encoded_bytes(data, "stream_count", TypeError)))


def _encoded_bytes(data, who: str, error: type):
    """``data`` as the C++ coder takes encoded bytes: ``bytes`` / ``bytearray`` as they are, a
    uint8 numpy array or CPU torch tensor (its bytes in C order), a ``memoryview`` (its bytes;
    copied when not 1-D contiguous bytes); anything else raises ``error`` (:func:`decode`:
    ValueError, :func:`stream_count`: TypeError) naming ``who`` and what it got."""
    dtype = None   # (a tensor's own dtype for the message: a bf16 one reaches numpy as float32)
    if type(data).__module__.startswith("torch"):
        dtype = getattr(data, "dtype", None)
        data = _to_numpy(data, "data")
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise error(f"{who} takes the encoded bytes as bytes or a uint8 array, got an "
                        f"array of {dtype if dtype is not None else data.dtype}")
        return np.ascontiguousarray(data).reshape(-1)
    if isinstance(data, memoryview):
        return data if data.c_contiguous and data.ndim == 1 and data.itemsize == 1 \
            else data.tobytes()
    if not isinstance(data, (bytes, bytearray)):
        raise error(f"{who} takes the encoded bytes (bytes, bytearray, memoryview or a uint8 "
                    f"array), got {type(data).__name__}")
    return data


def validate_tables(cdfs, cdf_lengths, offsets, *, precision=16) -> None:
    """Check CDF tables as :func:`encode` does; raise ValueError naming the first problem.

    Rules: precision in 1..16; ``cdfs`` int32 ``[num_cdfs >= 1, max_length >= 2]``;
    ``cdf_lengths[i]`` in ``[2, max_length]``; ``cdf[i, 0] == 0``;
    ``cdf[i, L-1] == 2**precision``; ``cdf[i, 0:L]`` strictly increasing.
    """
    cdfs, lengths, offsets, precision = _tables(cdfs, cdf_lengths, offsets, precision)
    _ext().validate_tables(cdfs, lengths, offsets, precision)


def pmf_to_quantized_cdf(pmf, precision=16) -> np.ndarray:
    """Quantize a pmf into an integer CDF (CompressAI's convention).

    Args:
        pmf: float64 ``[n + 1]``: the probabilities of the ``n`` codable symbols followed by the
            tail mass (probability of everything else), which becomes the escape symbol. Entries
            must be finite and >= 0; they need not sum to 1 (they are normalised; all zeros give
            every entry the same frequency: a uniform table).
        precision: bits, 1..16; ``n + 1 <= 2**precision`` is required.

    Returns:
        int32 ``[n + 2]`` CDF: ``cdf[0] = 0``, ``cdf[n + 1] = 2**precision``, every frequency
        ``cdf[k+1] - cdf[k] >= 1``. Each entry first gets frequency 1; the remaining
        ``2**precision - (n + 1)`` slots are shared in proportion to the pmf by the largest
        remainder method (ties of the float64 remainders to the lower index: values that are
        equal in exact arithmetic may round apart and not tie). Deterministic (float64 in a fixed
        order).

    Raises:
        ValueError: negative, NaN or infinite entries, entries whose sum overflows float64
            (scale them down), an empty pmf, or too low a precision.
    """
    precision = _check_int(precision, "precision", MIN_PRECISION, MAX_PRECISION)
    return _ext().pmf_to_quantized_cdf(_as_float64(pmf, "pmf", 1), precision)


def pmfs_to_quantized_cdfs(pmfs, pmf_lengths, tail_masses=None, precision=16):
    """Batch :func:`pmf_to_quantized_cdf` for an entropy model's table of CDFs.

    Args:
        pmfs: float64 ``[num_cdfs, max_pmf_length]``; row ``i`` uses its first
            ``pmf_lengths[i]`` entries.
        pmf_lengths: int32 ``[num_cdfs]``, each in ``[0, max_pmf_length]``.
        tail_masses: float64 ``[num_cdfs]`` (the escape's probability per row) or ``None``
            for zero tail mass (the escape still gets frequency 1).
        precision: bits, 1..16.

    Returns:
        ``(cdfs, cdf_lengths)``: int32 ``[num_cdfs, max_pmf_length + 2]`` (zero padded) and
        int32 ``[num_cdfs]`` = ``pmf_lengths + 2``, ready for :func:`encode`.
    """
    precision = _check_int(precision, "precision", MIN_PRECISION, MAX_PRECISION)
    p = _as_float64(pmfs, "pmfs", 2)
    lengths = _as_int32(pmf_lengths, "pmf_lengths", 1)
    tails = None if tail_masses is None else _as_float64(tail_masses, "tail_masses", 1)
    return _ext().pmfs_to_quantized_cdfs(p, lengths, tails, precision)


def ideal_bytes(symbols, indexes, cdfs, cdf_lengths, offsets, *, precision: int = 16) -> float:
    """Ideal size in bytes, ``-sum log2 p / 8``, of ``symbols`` under the quantized CDFs.

    Out-of-range values count as the escape symbol only (the bypass bits that follow an escape
    are not included). Arguments as in :func:`encode` (numpy or CPU torch int arrays, compact
    indexes included), checked as it checks them (ValueError); the result is a float. Used to
    check the coder's overhead in tests and benchmarks.
    """
    sym = _as_int32(symbols, "symbols")
    idx, run = _index_run(sym.shape, _as_int32(indexes, "indexes"))
    cdfs, lengths, offsets, precision = _tables(cdfs, cdf_lengths, offsets, precision)
    _ext().validate_tables(cdfs, lengths, offsets, precision)
    i = idx.reshape(-1)
    if i.size and (i.min() < 0 or i.max() >= cdfs.shape[0]):
        bad = int(np.flatnonzero((i < 0) | (i >= cdfs.shape[0]))[0])
        raise ValueError(f"indexes[{bad}] = {int(i[bad])} is out of range [0, {cdfs.shape[0]})")
    if run > 1:
        i = np.repeat(i, run)
    v = sym.reshape(-1).astype(np.int64) - offsets[i]
    nd = lengths[i].astype(np.int64) - 2
    v = np.where((v < 0) | (v >= nd), nd, v)
    freq = cdfs[i, v + 1].astype(np.float64) - cdfs[i, v]
    return float(-np.log2(freq / (1 << precision)).sum() / 8) + 0.0   # (no symbols: 0.0, not -0.0)
