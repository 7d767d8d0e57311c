"""Tests of the coder's threads and caches: the process-wide worker pool (repeated calls, every
streams x threads combination, concurrent callers, fork), the per-stream index checks, and the
cache of validated tables and decoder lookup tables (must follow the table *content*).

Everything is compared with ``_ref_encode``, the independent pure-Python encoder of the format.
"""
import os
import signal
import threading
import time
import warnings

import numpy as np
import pytest

from slimkernels import coding
from tests.test_coding import _kodak_like, _random_tables, _ref_encode, _symbols


@pytest.fixture(scope="module")
def work():
    return _kodak_like(np.random.default_rng(11), channels=12, h=8, w=16)  # 1,536 symbols


def _threads_now():
    return len(os.listdir("/proc/self/task"))


def test_streams_times_threads_grid(work):
    sym, idx, cdfs, lengths, offsets = work
    for streams in range(1, 9):
        ref = _ref_encode(sym, idx, cdfs, lengths, offsets, 16, streams)
        for threads in range(1, 9):
            data = coding.encode(sym, idx, cdfs, lengths, offsets, streams=streams,
                                 threads=threads)
            assert data == ref, (streams, threads)
            for dthreads in (1, threads):
                out = coding.decode(data, idx, cdfs, lengths, offsets, threads=dthreads)
                np.testing.assert_array_equal(out, sym)


def test_repeated_calls_alternating_tables_and_sizes():
    rng = np.random.default_rng(12)
    a = _kodak_like(rng, channels=6, h=8, w=16)
    tb = _random_tables(rng, 4, 300, 14)  # 300 symbols: 16-bit lookup entries
    b_sym = rng.integers(-40, 300, 2000).astype(np.int32)
    b_idx = rng.integers(0, 4, 2000).astype(np.int32)
    b = (b_sym, b_idx) + tb
    refs = {}
    for it in range(120):
        (sym, idx, cdfs, lengths, offsets), prec = (a, 16) if it % 2 else (b, 14)
        n = [7, 100, sym.size][it % 3]  # different sizes -> different lookup-table widths
        s, i = sym.reshape(-1)[:n], idx.reshape(-1)[:n]
        streams = 1 + it % 4
        key = (it % 2, n, streams)
        if key not in refs:
            refs[key] = _ref_encode(s, i, cdfs, lengths, offsets, prec, streams)
        data = coding.encode(s, i, cdfs, lengths, offsets, precision=prec, streams=streams,
                             threads=1 + it % 3)
        assert data == refs[key]
        out = coding.decode(data, i, cdfs, lengths, offsets, precision=prec, threads=1 + it % 2)
        np.testing.assert_array_equal(out, s)


def test_tables_changed_in_place_are_not_served_from_cache(work):
    sym, idx, cdfs, lengths, offsets = work
    c = cdfs.copy()
    data_a = coding.encode(sym, idx, c, lengths, offsets, streams=2)
    np.testing.assert_array_equal(coding.decode(data_a, idx, c, lengths, offsets, threads=2), sym)
    # Same array object, same shape, new content: channel order reversed.
    c[:] = cdfs[::-1]
    ref_b = _ref_encode(sym, idx, cdfs[::-1], lengths[::-1], offsets, 16, 2)
    data_b = coding.encode(sym, idx, c, lengths[::-1].copy(), offsets, streams=2)
    assert data_b == ref_b and data_b != data_a
    np.testing.assert_array_equal(
        coding.decode(data_b, idx, c, lengths[::-1].copy(), offsets, threads=2), sym)
    # The lookup table cached for the first content must not be used for the second.
    c2 = cdfs.copy()
    coding.decode(data_a, idx, c2, lengths, offsets, threads=1)  # caches lookup tables of A
    c2[3] = cdfs[11]  # one row changes (valid: another channel's CDF)
    ref_c = _ref_encode(sym, idx, c2, lengths, offsets, 16, 1)
    data_c = coding.encode(sym, idx, c2, lengths, offsets)
    assert data_c == ref_c
    np.testing.assert_array_equal(coding.decode(data_c, idx, c2, lengths, offsets), sym)
    # Only the lengths change: validated again.
    l2 = lengths.copy()
    l2[0] = cdfs.shape[1] + 1
    with pytest.raises(ValueError, match="cdf_lengths"):
        coding.encode(sym, idx, cdfs, l2, offsets)


def test_cached_tables_made_invalid_in_place_raise(work):
    sym, idx, cdfs, lengths, offsets = work
    c = cdfs.copy()
    data = coding.encode(sym, idx, c, lengths, offsets, streams=2)
    coding.decode(data, idx, c, lengths, offsets, threads=2)
    c[2, 5] = c[2, 4]  # zero frequency
    with pytest.raises(ValueError, match="strictly increasing"):
        coding.encode(sym, idx, c, lengths, offsets, streams=2)
    with pytest.raises(ValueError, match="strictly increasing"):
        coding.decode(data, idx, c, lengths, offsets, threads=2)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_first_bad_index_is_named_with_threads(work, threads):
    sym, idx, cdfs, lengths, offsets = work
    flat = idx.reshape(-1).copy()
    data = coding.encode(sym, flat, cdfs, lengths, offsets, streams=4)
    n = flat.size
    flat[n - 5] = 99  # in the last stream
    flat[n // 4 + 3] = -1  # in the second stream: the first bad position
    msg = rf"indexes\[{n // 4 + 3}\]"
    with pytest.raises(ValueError, match=msg):
        coding.encode(sym, flat, cdfs, lengths, offsets, streams=4, threads=threads)
    with pytest.raises(ValueError, match=msg):
        coding.decode(data, flat, cdfs, lengths, offsets, threads=threads)
    # A bad index is reported before corrupt data, whichever stream is corrupt.
    bad = bytearray(data)
    bad[-10] ^= 0xFF
    with pytest.raises(ValueError, match=msg):
        coding.decode(bytes(bad), flat, cdfs, lengths, offsets, threads=threads)
    with pytest.raises(ValueError, match=msg):
        coding.decode(bytes(bad[:-4]), flat, cdfs, lengths, offsets, threads=threads)


def test_concurrent_callers(work):
    """Python threads coding at the same time (GIL released): one gets the pool, the others
    start their own threads; every result must be exact."""
    sym, idx, cdfs, lengths, offsets = work
    refs = {s: _ref_encode(sym, idx, cdfs, lengths, offsets, 16, s) for s in (1, 2, 3, 4)}
    errors = []

    def run(seed):
        try:
            for it in range(30):
                s = 1 + (seed + it) % 4
                data = coding.encode(sym, idx, cdfs, lengths, offsets, streams=s, threads=s)
                assert data == refs[s]
                out = coding.decode(data, idx, cdfs, lengths, offsets, threads=2)
                np.testing.assert_array_equal(out, sym)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not any(t.is_alive() for t in ts), "a coding thread hangs"
    assert not errors, errors[0]


def _fork():
    # Forking a multi-threaded process is the point here (Python >= 3.12 warns about it).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def _wait_child(pid, timeout=60.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "timeout"


def _child_codes(work, ref, streams):
    """In a forked child: code with 2 threads; exit 0 if exact and a worker thread really ran."""
    sym, idx, cdfs, lengths, offsets = work
    code = 1
    try:
        before = _threads_now()
        for _ in range(3):
            data = coding.encode(sym, idx, cdfs, lengths, offsets, streams=streams, threads=2)
            out = coding.decode(data, idx, cdfs, lengths, offsets, threads=2)
            if data != ref or not np.array_equal(out, sym):
                os._exit(2)
        # The child starts with one thread; a 2-thread call must have started a worker here.
        code = 0 if _threads_now() > before else 3
    finally:
        os._exit(code)


@pytest.mark.skipif(not hasattr(os, "fork") or not os.path.isdir("/proc/self/task"),
                    reason="needs fork and /proc")
def test_pool_after_fork(work):
    sym, idx, cdfs, lengths, offsets = work
    ref = _ref_encode(sym, idx, cdfs, lengths, offsets, 16, 2)
    # The parent has used its pool (and its table cache) with 2 threads.
    assert coding.encode(sym, idx, cdfs, lengths, offsets, streams=2, threads=2) == ref
    coding.decode(ref, idx, cdfs, lengths, offsets, threads=2)
    pid = _fork()
    if pid == 0:
        _child_codes(work, ref, 2)
    assert _wait_child(pid) == 0
    # The parent's pool still works after the fork.
    assert coding.encode(sym, idx, cdfs, lengths, offsets, streams=2, threads=2) == ref


@pytest.mark.skipif(not hasattr(os, "fork") or not os.path.isdir("/proc/self/task"),
                    reason="needs fork and /proc")
def test_fork_while_another_thread_codes(work):
    """Fork at random moments of another thread's 2-thread calls (pool and cache locks may be
    held then): the child must not hang and must code exactly."""
    sym, idx, cdfs, lengths, offsets = work
    ref = _ref_encode(sym, idx, cdfs, lengths, offsets, 16, 2)
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            coding.encode(sym, idx, cdfs, lengths, offsets, streams=2, threads=2)
            coding.decode(ref, idx, cdfs, lengths, offsets, threads=2)

    t = threading.Thread(target=busy)
    t.start()
    try:
        for _ in range(8):
            time.sleep(0.003)
            pid = _fork()
            if pid == 0:
                _child_codes(work, ref, 2)
            assert _wait_child(pid) == 0
    finally:
        stop.set()
        t.join(30)


# ------------------------------------------------------------------------------------------
# pool="openmp": the substreams on the OpenMP threads of slimkernels._cpu_kernels
needs_openmp_pool = pytest.mark.skipif(not coding.openmp_pool_available(),
                                       reason="slimkernels._cpu_kernels is not built")


@needs_openmp_pool
def test_openmp_pool_same_bytes_every_streams_and_threads(work):
    sym, idx, cdfs, lengths, offsets = work
    compact = np.arange(sym.shape[1], dtype=np.int32).reshape(1, -1, 1, 1) \
        if sym.ndim == 4 else None
    for streams in (1, 2, 3, 5, 8):
        ref = _ref_encode(sym, idx, cdfs, lengths, offsets, 16, streams)
        for threads in (None, 1, 2, 3):
            data = coding.encode(sym, idx, cdfs, lengths, offsets, streams=streams,
                                 threads=threads, pool="openmp")
            assert data == ref, (streams, threads)
            out = coding.decode(data, idx, cdfs, lengths, offsets, threads=threads,
                                pool="openmp")
            np.testing.assert_array_equal(out, sym)
            if compact is not None:
                assert coding.encode(sym, compact, cdfs, lengths, offsets, streams=streams,
                                     threads=threads, pool="openmp") == ref
                np.testing.assert_array_equal(
                    coding.decode(data, compact, cdfs, lengths, offsets, shape=sym.shape,
                                  threads=threads, pool="openmp"), sym)


@needs_openmp_pool
def test_openmp_pool_reports_bad_index_and_corrupt_stream(work):
    sym, idx, cdfs, lengths, offsets = work
    bad = idx.copy().reshape(-1)
    bad[1000] = 99                                    # in the second of 3 substreams
    with pytest.raises(ValueError, match=r"indexes\[1000\]"):
        coding.encode(sym, bad, cdfs, lengths, offsets, streams=3, threads=3, pool="openmp")
    data = bytearray(coding.encode(sym, idx, cdfs, lengths, offsets, streams=3))
    data[-5] ^= 0xFF                                  # damage the last substream
    with pytest.raises(ValueError, match="corrupt stream"):
        coding.decode(bytes(data), idx, cdfs, lengths, offsets, threads=3, pool="openmp")


def test_pool_argument_checked(work):
    sym, idx, cdfs, lengths, offsets = work
    with pytest.raises(ValueError, match=r"pool must be one of \('coder', 'openmp'\)"):
        coding.encode(sym, idx, cdfs, lengths, offsets, pool="threads")
    data = coding.encode(sym, idx, cdfs, lengths, offsets)
    with pytest.raises(ValueError, match="pool must be one of"):
        coding.decode(data, idx, cdfs, lengths, offsets, pool=None)


def test_executor_capsule_checked_by_name(work):
    # The binding takes only the capsule of _cpu_kernels.coder_executor(): any other object,
    # or a capsule of another name (whose pointer would be called), is refused before coding.
    import ctypes
    from slimkernels import _coder
    sym, idx, cdfs, lengths, offsets = (np.ascontiguousarray(a, dtype=np.int32) for a in work)
    data = coding.encode(sym, idx, cdfs, lengths, offsets)
    new_capsule = ctypes.pythonapi.PyCapsule_New
    new_capsule.restype = ctypes.py_object
    new_capsule.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p)
    other = new_capsule(ctypes.c_void_p(16), b"slimkernels.other", None)
    for bad in (object(), 12345, other):
        with pytest.raises(ValueError, match="executor must be None or slimkernels._cpu_kernels"):
            _coder.encode(sym, idx, cdfs, lengths, offsets, 16, 2, 2, executor=bad)
        with pytest.raises(ValueError, match="executor must be None or slimkernels._cpu_kernels"):
            _coder.decode(data, idx, cdfs, lengths, offsets, 16, 2, executor=bad)


@needs_openmp_pool
@pytest.mark.skipif(not hasattr(os, "fork") or not os.path.isdir("/proc/self/task"),
                    reason="needs fork and /proc")
def test_openmp_pool_in_forked_child(work):
    """GNU OpenMP cannot run in a fork()ed child once its threads existed (a parallel region
    there waits for threads that are gone): pool="openmp" must fall back to the coder's pool."""
    sym, idx, cdfs, lengths, offsets = work
    ref = _ref_encode(sym, idx, cdfs, lengths, offsets, 16, 2)
    # The parent has run substreams on its OpenMP threads.
    assert coding.encode(sym, idx, cdfs, lengths, offsets, streams=2, threads=2,
                         pool="openmp") == ref
    pid = _fork()
    if pid == 0:
        code = 1
        try:
            data = coding.encode(sym, idx, cdfs, lengths, offsets, streams=2, threads=2,
                                 pool="openmp")
            out = coding.decode(data, idx, cdfs, lengths, offsets, threads=2, pool="openmp")
            code = 0 if data == ref and np.array_equal(out, sym) else 2
        finally:
            os._exit(code)
    assert _wait_child(pid, timeout=30.0) == 0
    assert coding.encode(sym, idx, cdfs, lengths, offsets, streams=2, threads=2,
                         pool="openmp") == ref


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_since_import_marks_children_and_grandchildren():
    from slimkernels._fork import forked_since_import
    assert not forked_since_import()
    pid = _fork()
    if pid == 0:
        code = 1
        try:
            if forked_since_import():
                grandchild = _fork()
                if grandchild == 0:
                    os._exit(0 if forked_since_import() else 3)
                code = _wait_child(grandchild, timeout=30.0)
        finally:
            os._exit(code if isinstance(code, int) else 4)
    assert _wait_child(pid, timeout=30.0) == 0
    assert not forked_since_import()


# ------------------------------------------------------------------------------------------
# Lane halves: with threads >= 2 x streams, each long enough substream's lanes {0, 1} and
# {2, 3} are coded by two threads and their words merged by group: the bytes of one thread.
MIN_HALVES = coding._ext().MIN_HALVES_SYMBOLS


def _encode_counted(sym, idx, cdfs, lengths, offsets, precision, streams, threads, run,
                    pool="coder"):
    """``(bytes, substreams coded as lane halves)`` from the binding, ``idx`` one entry per
    ``run`` symbols."""
    st = np.zeros(1, np.int64)
    data = coding._ext().encode(
        np.ascontiguousarray(sym, np.int32).reshape(-1), np.ascontiguousarray(idx, np.int32),
        cdfs, lengths, offsets, precision, streams, threads, run,
        executor=coding._executor(pool), stats=st)
    return data, int(st[0])


def _case(rng, n, run, precision, escapes, num_cdfs=5, max_symbols=40):
    """Random tables and ``n`` symbols with one index per ``run`` of them; ``escapes``: the
    fraction of symbols outside their table (every size of escape, int32's extremes included)."""
    cdfs, lengths, offsets = _random_tables(rng, num_cdfs, max_symbols, precision)
    idx = rng.integers(0, num_cdfs, n // run).astype(np.int32)
    sym = _symbols(rng, np.repeat(idx, run), lengths, offsets, escapes)
    return sym, idx, cdfs, lengths, offsets


@pytest.mark.parametrize("n, run, precision, escapes, streams", [
    (MIN_HALVES, 1, 16, 0.0, 1),              # the smallest substream split
    (MIN_HALVES + 3, 1, 12, 0.05, 1),         # a partial last group; the generic precision
    (MIN_HALVES + 1, MIN_HALVES + 1, 16, 0.01, 1),  # one run of every symbol
    (12 * 1536, 1536, 16, 0.0, 1),            # a latent: a CDF per channel of 32x48 symbols
    (5 * 4001, 5, 16, 0.02, 1),               # runs of 5: groups straddle rows
    (4 * 4099, 4, 8, 0.0, 1),                 # the shortest runs coded run by run
    (2 * MIN_HALVES + 7, 1, 16, 0.02, 2),     # two substreams on four threads
    (3 * MIN_HALVES + 5, 1, 14, 0.0, 3),
    (MIN_HALVES + 2, 1, 16, 1.0, 1),          # every symbol escaped: ~39 bits each, the half
    (6 * 3000, 6, 16, 0.6, 1),                # buffers and the merged one outgrow the scratch
])
def test_lane_halves_write_the_bytes_of_one_thread(n, run, precision, escapes, streams):
    rng = np.random.default_rng(n + run)
    sym, idx, cdfs, lengths, offsets = _case(rng, n, run, precision, escapes)
    one, split = _encode_counted(sym, idx, cdfs, lengths, offsets, precision, streams, 1, run)
    assert split == 0
    data, split = _encode_counted(sym, idx, cdfs, lengths, offsets, precision, streams,
                                  2 * streams, run)
    assert split == streams and data == one
    out = coding.decode(data, np.repeat(idx, run), cdfs, lengths, offsets, precision=precision,
                        threads=streams)
    np.testing.assert_array_equal(out, sym)


def test_lane_halves_match_the_reference_encoder():
    # the one-thread bytes are themselves checked against _ref_encode elsewhere; this is the
    # independent check of a split run (a latent with escapes, two substreams)
    sym, idx, cdfs, lengths, offsets = _kodak_like(np.random.default_rng(5), channels=24, h=32,
                                                   w=45)
    ref = _ref_encode(sym, idx, cdfs, lengths, offsets, 16, 2)
    data, split = _encode_counted(sym, np.arange(24), cdfs, lengths, offsets, 16, 2, 4, 32 * 45)
    assert split == 2 and data == ref


@pytest.mark.parametrize("n, run, streams, threads", [
    (MIN_HALVES - 1, 1, 1, 2),        # too short
    (2 * MIN_HALVES - 2, 1, 2, 4),    # substreams of MIN_HALVES - 1
    (2 * MIN_HALVES, 1, 2, 3),        # fewer threads than 2 x streams
    (2 * MIN_HALVES, 1, 1, 0),        # threads=0: one per substream
    (2 * MIN_HALVES, 2, 1, 2),        # runs of 2 and 3 go through the index buffer
    (3 * MIN_HALVES, 3, 1, 2),
])
def test_lane_halves_only_where_they_apply(n, run, streams, threads):
    sym, idx, cdfs, lengths, offsets = _case(np.random.default_rng(n), n, run, 16, 0.01)
    one, _ = _encode_counted(sym, idx, cdfs, lengths, offsets, 16, streams, 1, run)
    data, split = _encode_counted(sym, idx, cdfs, lengths, offsets, 16, streams, threads, run)
    assert split == 0 and data == one


@needs_openmp_pool
def test_lane_halves_on_the_openmp_pool():
    sym, idx, cdfs, lengths, offsets = _case(np.random.default_rng(3), 48 * 1536, 1536, 16, 0.01)
    one, _ = _encode_counted(sym, idx, cdfs, lengths, offsets, 16, 1, 1, 1536)
    for _ in range(3):
        data, split = _encode_counted(sym, idx, cdfs, lengths, offsets, 16, 1, 2, 1536,
                                      pool="openmp")
        assert split == 1 and data == one


def test_lane_halves_name_the_first_bad_index():
    sym, idx, cdfs, lengths, offsets = _case(np.random.default_rng(4), 2 * MIN_HALVES, 1, 16, 0)
    bad = idx.copy()
    bad[MIN_HALVES + 11] = 5        # the second half of the symbols; both halves read it
    bad[-1] = -1
    with pytest.raises(ValueError, match=rf"indexes\[{MIN_HALVES + 11}\]"):
        _encode_counted(sym, bad, cdfs, lengths, offsets, 16, 1, 2, 1)


def test_encode_stats_argument_checked():
    sym, idx, cdfs, lengths, offsets = _case(np.random.default_rng(6), 64, 1, 16, 0)
    for bad in (np.zeros(1, np.int32), np.zeros(0, np.int64), np.zeros((2, 2), np.int64)[:, 0],
                [0], np.zeros(1, np.int64).view()):
        if isinstance(bad, np.ndarray) and bad.dtype == np.int64 and bad.size:
            bad.flags.writeable = False
        with pytest.raises(ValueError, match="stats must be None or a writeable C-contiguous "
                                             "int64"):
            coding._ext().encode(sym, idx, cdfs, lengths, offsets, 16, 1, 1, 1, stats=bad)
