"""slimkernels.ops._cache: the prepared-weight caches let go of a deleted model's tensors, and
stay whole and current under threads, a garbage collection inside them and fork() (the
concurrency audit: the other thread's action is injected at the racy point)."""
import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import pytest
import torch

from slimkernels.ops import _cache, clear_weight_caches, slim_conv2d
from slimkernels.ops import conv as conv_mod

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def one_thread_clean_caches():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    clear_weight_caches()
    yield
    clear_weight_caches()
    torch.set_num_threads(n)


def _entry(*tensors):
    return (0, tuple(tensors), None)


def test_drop_orphans_drops_only_entries_whose_sources_nothing_else_holds(monkeypatch):
    monkeypatch.setattr(_cache, "_PACK_CACHE", type(_cache._PACK_CACHE)())
    monkeypatch.setattr(_cache, "_CAST_CACHE", {})
    live, other = torch.nn.Parameter(torch.randn(3)), torch.randn(3)
    _cache._PACK_CACHE["a"] = _entry(live)
    _cache._PACK_CACHE["b"] = _entry(live, other)          # held three times, alive
    _cache._CAST_CACHE["c"] = (0, live, None)
    dead = torch.randn(2)
    _cache._PACK_CACHE["d"] = _entry(dead)                  # held by both caches, then freed
    _cache._CAST_CACHE["e"] = (0, dead, None)
    half = torch.randn(2)
    _cache._PACK_CACHE["f"] = _entry(live, half)            # one source freed: the entry goes
    del dead, half
    _cache.drop_orphans()
    assert sorted(_cache._PACK_CACHE) == ["a", "b"] and list(_cache._CAST_CACHE) == ["c"]
    del other
    _cache.drop_orphans()
    assert sorted(_cache._PACK_CACHE) == ["a"] and list(_cache._CAST_CACHE) == ["c"]
    del live
    _cache.drop_orphans()
    assert not _cache._PACK_CACHE and not _cache._CAST_CACHE


def test_a_deleted_layer_is_freed_once_another_weight_is_prepared():
    """The caches held their source tensors until 128 newer entries pushed them out: a deleted
    model's parameters and prepared copies stayed alive (43 models, +320 MB over 60 CLI-style
    loads in one process)."""
    from slimkernels.nn import SlimConv2d
    x = torch.rand(1, 8, 16, 16)
    layer = SlimConv2d(8, 16, 3, 1, 1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x)
    refs = [weakref.ref(p) for p in layer.parameters()]
    del layer
    gc.collect()
    other = SlimConv2d(8, 16, 3, 1, 1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        other(x)                                            # a new entry: the sweep runs
    gc.collect()
    assert [r() for r in refs] == [None] * len(refs)


# -- 1. GC reentrancy: deadlock on the non-reentrant _PACK_LOCK ----------------------------------
def test_a_gc_finalizer_that_clears_the_weight_caches_does_not_deadlock(one_thread_clean_caches):
    """drop_orphans() allocates (lists, tuples, a Counter) while _cache._PACK_LOCK is held, so the
    cyclic garbage collector runs inside the lock; a finalizer of a collected object that calls
    slimkernels.ops.clear_weight_caches() (or compresses) then takes the same threading.Lock in
    the same thread: the process hangs for good (ops/_cache.py:36 via :127 / conv.py:155).
    Runs in a subprocess (a hang there cannot poison this session); gc threshold 1 makes a
    collection at each allocation (the default threshold makes one every ~700, which hit the lock
    in 5/5 runs of e4_gc_reentrancy.py within 2 s)."""
    code = textwrap.dedent("""
        import gc, weakref, torch
        torch.set_num_threads(1)
        import slimkernels
        from slimkernels.pretrained import load_model
        m = load_model()
        x = torch.rand(1, 3, 32, 48)
        class Node:
            pass
        def arm():
            n = Node(); n.me = n         # cyclic garbage whose finalizer clears the caches
            weakref.finalize(n, fired)
        armed = [True]
        def fired():
            slimkernels.ops.clear_weight_caches()
            if armed[0]:
                arm()                    # (always one such object waiting for the collector)
        arm()
        gc.set_threshold(1, 10**6, 10**6)   # a young-generation collection at each allocation
        for i in range(3):
            m.compress(x, (48, 72, 96)[i], precision="bf16", streams=1)   # builds cache entries
        gc.set_threshold(700, 10, 10)
        armed[0] = False
        print("done")
        """)
    try:
        env = dict(os.environ, PYTHONPATH=ROOT)
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                           text=True, timeout=20, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("deadlock: a finalizer run by the GC inside _PACK_LOCK called "
                    "clear_weight_caches() (threading.Lock is not reentrant)")
    assert r.returncode == 0 and "done" in r.stdout, r.stderr[-2000:]


# -- 2. _cast_full stores the version read AFTER the copy ------------------------------------------
class _UpdateDuringCast(torch.overrides.TorchFunctionMode):
    """Stands for another thread: right after the weight's cast copy is computed (the first
    ``Tensor.to`` of ``w``'s storage to bf16), updates ``w`` in place (an optimizer step,
    ``w.mul_()`` under no_grad: the version counter is bumped)."""

    def __init__(self, w):
        super().__init__()
        self.w, self.done = w, False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.done and getattr(func, "__name__", "") == "to" and args and \
                isinstance(args[0], torch.Tensor) and args[0].data_ptr() == self.w.data_ptr() \
                and isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16:
            self.done = True
            with torch.no_grad():
                self.w.mul_(2.0)
        return out


def test_cast_copy_is_not_kept_stale_after_an_in_place_update_during_its_build(
        one_thread_clean_caches, monkeypatch):
    """ops/conv.py:158 stores ``t._version`` read after ``t.detach().to(dtype)``: an in-place
    update made by another thread while the copy is built leaves the OLD values cached under
    the NEW version, and every later call (after the updates stopped) computes with stale
    weights. (Real threads: e5_cast_stale.py, stale in 6/20 and 11/20 trials.) The path: a
    no-grad conv under CPU bf16 autocast whose input has 1 channel (no prepacked path); on CUDA
    every no-grad Triton conv (_triton_operands). (Where oneDNN has no bf16, no AVX-512, such a
    conv runs as float32 and casts nothing: the probe is patched to take the cast path.)"""
    monkeypatch.setattr(conv_mod, "_onednn_half", lambda dt: True)
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(32, 1, 5, 5, generator=g))
    b = torch.nn.Parameter(torch.randn(32, generator=g))
    x = torch.rand(1, 1, 12, 12, generator=g)

    def conv():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return slim_conv2d(x, w, b, stride=2, padding=2, out_width=16)
    with _UpdateDuringCast(w) as mode:
        conv()
    assert mode.done, "the injected update did not run (the cast path was not taken)"
    y = conv()                          # quiescent: the update is long done
    with torch.no_grad():
        cached = conv_mod._cast_full(w, torch.bfloat16)
        truth = w.detach().to(torch.bfloat16)
    clear_weight_caches()
    fresh = conv()
    assert torch.equal(cached, truth), "the cast cache holds the weight of before the update"
    assert torch.equal(y, fresh)


def test_clear_weight_caches_wins_over_a_pack_built_before_it(one_thread_clean_caches):
    """The same race in the ops' weight cache (ops/_cache.py:124-128): an entry built from the
    values of before a ``.data`` write is inserted after the ``clear_weight_caches()`` that
    followed the write, and then served for good."""
    w = torch.ones(4)

    def build_then_writer_acts():
        val = w * 10                    # prepared from the old values
        w.data.fill_(2.0)               # meanwhile, the other thread writes through .data ...
        clear_weight_caches()           # ... and clears, as documented
        return val
    _cache._cached(("audit-conc",), (w,), build_then_writer_acts)
    got = _cache._cached(("audit-conc",), (w,), lambda: w * 10)
    assert torch.equal(got, torch.full((4,), 20.0)), "stale entry survived the clear"


# -- 5. fork(): the child's fresh lock does not make a torn cache whole ---------------------------
class _FreedSlowly:
    """A cache value whose release hands the GIL over (as freeing the entries' tensors did in
    e11_fork_torn_cache.py: 7/300 and 2/300 children inherited a torn cache)."""

    def __init__(self, ev):
        self.ev = ev

    def __del__(self):
        self.ev.set()
        time.sleep(0.5)


def test_a_fork_during_a_cache_clear_gives_the_child_a_whole_cache(one_thread_clean_caches):
    """ops/_cache.py:23-31 gives a forked child a fresh _PACK_LOCK on the claim that every update
    under the lock is one dict operation; but OrderedDict.clear() empties the dict first and
    unlinks its order list after freeing the values, and the GIL can change hands in between. A
    child forked then inherits a torn OrderedDict: its first cache use raises KeyError in
    drop_orphans (list(_PACK_CACHE.items())), as 3 of 330 children of e8_fork.py did in
    compress. Fix: hold the lock across fork() (register_at_fork before= acquire,
    after_in_parent= release), same for the ReplayCache locks."""
    ev = threading.Event()
    _cache._PACK_CACHE[("audit-conc-a",)] = (None, (), torch.zeros(1))
    _cache._PACK_CACHE[("audit-conc-b",)] = (None, (), _FreedSlowly(ev))
    t = threading.Thread(target=clear_weight_caches)
    t.start()
    assert ev.wait(10)
    pid = os.fork()
    if pid == 0:   # child
        code = 0
        try:
            list(_cache._PACK_CACHE.items())
            torch.set_num_threads(1)
            w = torch.randn(8, 8, 3, 3)
            with torch.no_grad():
                slim_conv2d(torch.randn(1, 8, 6, 6), w, None, stride=1, padding=1)
                slim_conv2d(torch.randn(1, 8, 6, 6), w, None, stride=1, padding=1)
        except KeyError:
            code = 5
        except BaseException:
            code = 6
        os._exit(code)
    t.join()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, \
        f"child exit {os.WEXITSTATUS(status)} (5: KeyError from the torn weight cache)"


def test_a_clear_run_inside_the_sweep_is_not_undone(one_thread_clean_caches, monkeypatch):
    """A GC finalizer set off by drop_orphans (the reason the lock is reentrant) that writes
    through .data and clears: the entry built from the values before was stored after the
    clear (the generation was checked before the sweep)."""
    w = torch.ones(4)
    keep = torch.ones(1)          # an existing entry, so that the sweep counts references
    _cache._PACK_CACHE[("audit-other",)] = ([], (keep,), None)
    real = _cache._refcounts
    fired = []

    def refcounts_with_finalizer(*a):
        if not fired:
            fired.append(1)
            w.data.fill_(2.0)
            clear_weight_caches()
        return real(*a)
    monkeypatch.setattr(_cache, "_refcounts", refcounts_with_finalizer)
    _cache._cached(("audit-k",), (w,), lambda: w * 10)
    monkeypatch.setattr(_cache, "_refcounts", real)
    assert fired
    got = _cache._cached(("audit-k",), (w,), lambda: w * 10)
    assert torch.equal(got, torch.full((4,), 20.0))
