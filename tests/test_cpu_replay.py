"""slimkernels.cpu_replay: compress / decompress replay a CPU transform's kernel calls, with the
eager transform's bytes and images, and fall back to it whenever the recording may not hold."""
import copy
import pickle
import threading

import pytest
import torch

import slimkernels.ops.conv as conv_ops
from slimkernels import cpu_replay
from slimkernels._cpu import _module
from slimkernels.cpu_replay import ReplayCache, _Recorder, _Replay
from tests.test_codec import Tiny

pytestmark = pytest.mark.skipif(_module() is None, reason="slimkernels._cpu_kernels not built")


@pytest.fixture
def model():
    torch.manual_seed(3)
    m = Tiny(widths=(16, 8)).eval()
    m.update()
    return m


def _image(seed=0, h=24, w=20):
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _eager(model, fn):
    model.cpu_replay = False
    try:
        return fn()
    finally:
        model.cpu_replay = True


def _replays(model):
    cache = model.__dict__.get("_cpu_replays")
    return [] if cache is None else cache.entries()


def _amx() -> bool:
    return bool(_module().amx_available())


def _require_replayed(model, expected: bool = True):
    """The verified recordings that replayed. On an AMX CPU the Tiny model's transforms run on
    the compiled kernels alone (bf16, and fp32 at width 8), so no replay there fails the test
    (``expected``); elsewhere the dispatch may take PyTorch's convolutions: skipped."""
    done = [e for e in _replays(model) if e.verified and e.replays > 0]
    if not done:
        cache = model.__dict__.get("_cpu_replays")
        why = f"no transform here is replayable: " \
              f"{cache.failures() if cache is not None else 'no cache'}"
        if _amx() and expected:
            pytest.fail(why)
        pytest.skip(why)
    return done


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("width", [16, 8])
def test_replay_gives_the_eager_bytes_and_images(model, precision, width):
    x = _image(1)
    ref = _eager(model, lambda: model.compress(x, width=width, precision=precision))
    img = _eager(model, lambda: model.decompress(ref, precision=precision))
    for i in range(5):   # recorded at the 2nd call, verified at the 3rd, replayed after
        assert model.compress(x, width=width, precision=precision) == ref, i
        assert torch.equal(model.decompress(ref, precision=precision), img), i
    _require_replayed(model, expected=not (precision == "fp32" and width == 16))


def test_replay_reads_each_new_image(model):
    imgs = [_image(s) for s in range(6)]
    refs = [_eager(model, lambda: model.compress(x, width=8)) for x in imgs]
    assert [model.compress(x, width=8) for x in imgs] == refs
    _require_replayed(model)


def test_weight_update_drops_the_recordings(model):
    x = _image(2)
    for _ in range(4):
        model.compress(x, width=8)
    old = list(_require_replayed(model))   # (kept alive: a freed entry's id can be reused by a
    with torch.no_grad():                  # new one, which made the id comparison flaky)
        model.g_a[0].weight.mul_(-1.5)
    got = [model.compress(x, width=8) for _ in range(4)]
    assert not any(e is o for e in _replays(model) for o in old)   # dropped at the first call
    assert got == [_eager(model, lambda: model.compress(x, width=8))] * 4


def test_a_hook_added_after_recording_runs(model):
    x = _image(3)
    for _ in range(4):
        model.compress(x, width=8)
    _require_replayed(model)
    seen = []
    h = model.g_a[1].register_forward_hook(lambda m, a, out: seen.append(out.shape))
    try:
        model.compress(x, width=8)
    finally:
        h.remove()
    assert len(seen) == 1


def test_a_recording_does_not_hold_its_model_but_still_sees_its_own_forward(model):
    """A recording kept the model's __dict__ (which holds the recordings: a reference cycle);
    it now reads the model's instance-level forward through a weak reference (that the model is
    then freed by reference counting: tests/test_codec.py)."""
    x = _image(3)
    for _ in range(4):
        model.compress(x, width=8)
    done = _require_replayed(model)
    assert all(e.hooks[0][4] is not model.__dict__ for e in done)
    assert all(e.runnable() for e in done)
    model.forward = lambda *a, **k: None
    try:
        assert not any(e.runnable() for e in done)
    finally:
        del model.forward
    assert all(e.runnable() for e in done)
    assert all(e.root() is model for e in done)


def test_a_module_class_forward_patched_after_recording_runs(model, monkeypatch):
    x = _image(3)
    for _ in range(4):
        ref = model.compress(x, width=8)
    _require_replayed(model)
    cls = type(model.g_a[1])   # the GDN layer's class
    real = cls.forward
    monkeypatch.setattr(cls, "forward", lambda self, *a, **k: real(self, *a, **k) * 8 + 1)
    changed = model.compress(x, width=8)
    assert changed == _eager(model, lambda: model.compress(x, width=8)) and changed != ref
    monkeypatch.setattr(cls, "forward", real)
    assert model.compress(x, width=8) == ref


def test_dispatch_switches_and_environment_key_the_replay(model, monkeypatch):
    x = _image(4)
    for _ in range(4):
        model.compress(x, width=8)
    _require_replayed(model)
    before = cpu_replay.dispatch_switches()
    monkeypatch.setattr(conv_ops, "CPU_AMX_CONV", not conv_ops.CPU_AMX_CONV)
    assert cpu_replay.dispatch_switches() != before
    ref = _eager(model, lambda: model.compress(x, width=8))
    assert [model.compress(x, width=8) for _ in range(4)] == [ref] * 4
    monkeypatch.setenv("SLIMKERNELS_CPU_KERNELS", "0")
    n = sum(e.replays for e in _replays(model))
    ref0 = _eager(model, lambda: model.compress(x, width=8))
    assert [model.compress(x, width=8) for _ in range(3)] == [ref0] * 3
    assert sum(e.replays for e in _replays(model)) == n   # switched off: eager, no replay


def test_a_step_the_recording_missed_is_caught_by_the_check(model, monkeypatch):
    real = _Replay.build.__func__

    def drop_last(cls, rec, x, y, state, modules=()):
        r = real(cls, rec, x, y, state, modules)
        if r.error is None:
            r.steps = r.steps[:-1]
        return r
    monkeypatch.setattr(_Replay, "build", classmethod(drop_last))
    x = _image(5)
    ref = _eager(model, lambda: model.compress(x, width=8))
    assert [model.compress(x, width=8) for _ in range(5)] == [ref] * 5
    fails = model._cpu_replays.failures()
    if not fails and not _amx():
        pytest.skip("no transform here is replayable")
    assert any("differs" in f for f in fails), fails
    assert all(e.replays == 0 for e in _replays(model))


def test_a_kernel_result_that_differs_falls_back_to_eager(model):
    x = _image(6)
    for _ in range(4):
        model.compress(x, width=8)
    done = _require_replayed(model)
    for e in done:
        name, args, kwargs, fixed, result = e.steps[0]
        e.steps[0] = (name, args, kwargs, fixed, ("never", result))
    n = sum(e.replays for e in done)
    ref = _eager(model, lambda: model.compress(x, width=8))
    assert [model.compress(x, width=8) for _ in range(3)] == [ref] * 3
    assert sum(e.replays for e in done) == n
    assert any("another result" in f for f in model._cpu_replays.failures())


def test_threads_share_a_recording(model):
    xs = [_image(10 + i) for i in range(2)]
    refs = [_eager(model, lambda: model.compress(x, width=8)) for x in xs]
    errors = []

    def work(i):
        try:
            for _ in range(12):
                if model.compress(xs[i], width=8) != refs[i]:
                    errors.append(i)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))
    ts = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []


def test_clear_caches_copy_and_pickle_drop_the_recordings(model):
    x = _image(7)
    for _ in range(4):
        model.compress(x, width=8)
    _require_replayed(model)
    assert len(copy.deepcopy(model)._cpu_replays) == 0
    assert len(pickle.loads(pickle.dumps(model._cpu_replays))) == 0
    model.clear_caches()
    assert "_cpu_replays" not in model.__dict__


def test_replay_cache_refuses_what_it_cannot_repeat():
    cache = ReplayCache(2)
    kernels = _module()
    x = torch.rand(4, 5)
    # a PyTorch op that computes
    for _ in range(4):
        assert torch.equal(cache.run("mul", lambda t: t * 2, x, 0, list, kernels), x * 2)
    assert cache.entries() == [] and "mul" in cache.failures()[0]
    # no compiled kernel at all
    for _ in range(3):
        cache.run("view", lambda t: t.view(20), x, 0, list, kernels)
    assert any("no compiled kernel" in f for f in cache.failures())
    with pytest.raises(ValueError, match="max_entries"):
        ReplayCache(0)


def test_an_address_outside_the_kept_tensors_is_refused():
    rec = _Recorder()
    x = torch.rand(8)
    y = torch.empty(8)
    rec.allocation(y)
    stranger = torch.rand(16)

    def call(args, kwargs=None):
        rec.seq += 1
        rec.calls.append((rec.seq, "bf16_to_image", args, kwargs or {}, None))
    call((x.data_ptr(), y.data_ptr()))
    r = _Replay.build(rec, x, y, [])
    assert r.error is None and r.nbytes == 0 and r.output[0] == 32 and r.output[3] == y.shape
    call((stranger.data_ptr() | (1 << 44), 3))
    assert "outside" in _Replay.build(rec, x, y, []).error
    rec.calls[-1] = (rec.seq, "bf16_to_image", (), {"x": y.data_ptr() | (1 << 44)}, None)
    assert "keyword" in _Replay.build(rec, x, y, []).error
    rec.calls.pop()
    assert "wrote" in _Replay.build(rec, x, torch.rand(8), []).error
    # an address allocated only after the call that reads it: not the call's buffer
    late = _Recorder()
    call2 = (x.data_ptr(), y.data_ptr() | 0)
    late.seq = 1
    late.calls.append((1, "bf16_to_image", call2, {}, None))
    late.allocation(y)
    assert _Replay.build(late, x, y, []).error is not None


def test_the_arena_reuses_dead_buffers():
    """Buffers that are not alive at the same step share the arena's bytes; live ones don't."""
    from slimkernels.cpu_replay import _plan
    lives = [(0, 1, 100), (1, 2, 64), (2, 3, 100), (3, 3, 10)]
    offs, total = _plan(lives)
    for i in range(4):
        for j in range(i):
            (fi, li, ni), (fj, lj, nj) = lives[i], lives[j]
            if not (li < fj or lj < fi):   # alive together: disjoint bytes
                assert offs[i] + ni <= offs[j] or offs[j] + nj <= offs[i], (i, j, offs)
    assert all(o % 64 == 0 for o in offs)
    assert total <= 128 + 100 and total < sum(n for _, _, n in lives)


def test_buffers_dead_before_the_output_get_an_arena_freed_first_where_that_lowers_the_peak():
    """A decoder-like chain (a small early buffer, dead when the large output is allocated):
    two arenas, the early one freed before the output, peak 2.25 + 4.5 instead of 2.8 + 4.5; an
    encoder-like chain (large early buffers, a small output): one arena, as two would only add
    the late buffer to the early ones."""
    from slimkernels.cpu_replay import _EARLY, _LATE, _arenas
    mb = 1 << 20
    dec = {"dec1": (0, 1, 9 * mb // 16), "dec2": (1, 2, 9 * mb // 4)}
    at, (early, late) = _arenas(dec, 2, 9 * mb // 2)
    assert at["dec1"][0] == _EARLY and at["dec2"][0] == _LATE
    assert early == 9 * mb // 16 and late == 9 * mb // 4
    assert max(early + late, late + 9 * mb // 2) < (early + late) + 9 * mb // 2
    enc = {"enc1": (0, 1, 9 * mb // 4), "gdn1": (1, 2, 9 * mb // 4), "enc2": (2, 3, 9 * mb // 16)}
    at, (early, late) = _arenas(enc, 3, 9 * mb // 64)
    assert early == 0 and {w for w, _ in at.values()} == {_LATE}
    assert late <= 9 * mb // 2 + 64     # enc2 reuses enc1's bytes
    assert _arenas({}, 0, 100) == ({}, (0, 0))


def _image_kernels():
    from slimkernels.ops import image_io
    return image_io._kernels()


@pytest.mark.skipif(_image_kernels() is None, reason="no SIMD image conversion on this CPU")
@pytest.mark.parametrize("drop_last", [False, True])
def test_replay_of_a_kernel_call_reads_the_new_input(drop_last, monkeypatch):
    """The bf16 -> image conversion (one compiled kernel: x in, a new float32 tensor out)
    replayed on new inputs gives their images; a recording that misses the kernel call is caught
    by the check (its buffer is poisoned first, so the stale output of the same input does not
    pass)."""
    from slimkernels.ops.image_io import bf16_to_image
    if drop_last:
        real = _Replay.build.__func__

        def drop(cls, rec, x, y, state, modules=()):
            r = real(cls, rec, x, y, state, modules)
            r.steps = r.steps[:-1]
            return r
        monkeypatch.setattr(_Replay, "build", classmethod(drop))
    cache = ReplayCache(2)
    xs = [(torch.rand(1, 3, 6, 10, generator=torch.Generator().manual_seed(i)) * 1.4 - 0.2)
          .to(torch.bfloat16) for i in range(6)]
    xs[2] = xs[1]   # the check runs on the recording's own input
    for x in xs:
        y = cache.run("image", bf16_to_image, x, 0, list, _module())
        assert torch.equal(y, x.float().clamp(0, 1))
    if drop_last:
        assert cache.entries() == [] and "differs" in cache.failures()[0]
    else:
        [e] = cache.entries()
        assert e.verified and e.replays == 4   # the check's replay and 3 more


@pytest.mark.skipif(_image_kernels() is None, reason="no SIMD image conversion on this CPU")
def test_a_kernel_with_data_dependent_results_is_not_replayed():
    """The image cast returns the pixel range: its replay would return another result than the
    recording's, so the key runs eagerly from then on."""
    from slimkernels.ops.image_io import image_to_bf16
    cache = ReplayCache(2)
    xs = [torch.rand(1, 3, 6, 10, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    xs[2] = xs[1]
    for x in xs:
        assert torch.equal(cache.run("cast", image_to_bf16, x, 0, list, _module()),
                           x.to(torch.bfloat16))
    assert cache.entries() == [] and "another result" in cache.failures()[0]


@pytest.mark.skipif(_image_kernels() is None, reason="no SIMD image conversion on this CPU")
def test_an_environment_switch_read_by_the_recording_is_read_again(monkeypatch):
    """A transform that reads a switch with slimkernels._env.getenv: setting it after the
    recording sends the call to the eager path (which sees the new value)."""
    from slimkernels._env import getenv
    from slimkernels.ops.image_io import bf16_to_image

    def fn(t):
        return bf16_to_image(t, 0.0, float(getenv("SLIMKERNELS_TEST_HI", "1")))
    monkeypatch.delenv("SLIMKERNELS_TEST_HI", raising=False)
    cache = ReplayCache(2)
    x = (torch.rand(1, 3, 4, 5, generator=torch.Generator().manual_seed(0)) * 2).to(torch.bfloat16)
    for _ in range(4):
        assert torch.equal(cache.run("image", fn, x, 0, list, _module()), x.float().clamp(0, 1))
    [e] = cache.entries()
    assert e.replays == 2
    monkeypatch.setenv("SLIMKERNELS_TEST_HI", "0.5")
    assert torch.equal(cache.run("image", fn, x, 0, list, _module()), x.float().clamp(0, 0.5))
    assert e.replays == 2


@pytest.mark.skipif(_image_kernels() is None, reason="no SIMD image conversion on this CPU")
def test_inputs_at_other_storage_offsets():
    """The input's addresses are replayed relative to its first element: views at different
    offsets of larger storages give their own images."""
    from slimkernels.ops.image_io import bf16_to_image
    cache = ReplayCache(2)
    big = (torch.rand(64 * 60, generator=torch.Generator().manual_seed(1)) * 2).to(torch.bfloat16)
    for off in (0, 60, 60, 120, 7, 300):
        x = big[off: off + 60].view(1, 3, 4, 5)
        assert torch.equal(cache.run("image", bf16_to_image, x, 0, list, _module()),
                           x.float().clamp(0, 1)), off
    assert cache.entries()[0].replays == 4


@pytest.mark.skipif(_image_kernels() is None, reason="no SIMD image conversion on this CPU")
def test_the_check_does_not_poison_what_a_cache_keeps():
    """A value a cache built during the recorded call (and reported, as the weight caches do)
    is not filled with NaN by the check, even when the replay stops before rewriting it."""
    from slimkernels import _recording
    from slimkernels.ops.image_io import bf16_to_image, image_to_bf16
    store, calls = {}, [0]

    def fn(t):
        calls[0] += 1
        y = image_to_bf16(t)                      # returns the range: differs for another t
        if calls[0] == 2:
            store["pack"] = bf16_to_image(y)      # allocated and written in the recording
        if "pack" in store:
            _recording.keep(store["pack"])
        return y
    cache = ReplayCache(2)
    xs = [torch.rand(1, 3, 4, 6, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    for x in xs[:2]:
        cache.run("cast", fn, x, 0, list, _module())
    pack = store["pack"].clone()
    cache.run("cast", fn, xs[2], 0, list, _module())   # the check: stops at the first kernel
    assert "another result" in cache.failures()[0] or "differs" in cache.failures()[0]
    assert torch.equal(store["pack"], pack)


@pytest.mark.skipif(_image_kernels() is None, reason="no SIMD image conversion on this CPU")
def test_each_replay_returns_a_tensor_of_its_own():
    """A replay's output lives in an arena of its own: an output kept by the caller is not
    overwritten by the next replay."""
    from slimkernels.ops.image_io import bf16_to_image
    cache = ReplayCache(2)
    xs = [torch.rand(1, 3, 4, 5, generator=torch.Generator().manual_seed(i)).to(torch.bfloat16)
          for i in range(6)]
    outs = [cache.run("image", bf16_to_image, x, 0, list, _module()) for x in xs]
    assert cache.entries()[0].replays == 4
    for x, y in zip(xs, outs):
        assert torch.equal(y, x.float())


@pytest.mark.skipif(_image_kernels() is None, reason="no SIMD image conversion on this CPU")
def test_a_conversion_that_copies_is_refused_and_one_that_does_not_is_a_view():
    from slimkernels.ops.image_io import bf16_to_image
    x = torch.rand(1, 3, 4, 5).to(torch.bfloat16)
    copies = ReplayCache(2)
    for _ in range(3):
        y = copies.run("c", lambda t: bf16_to_image(t.float().to(torch.bfloat16)), x, 0, list,
                       _module())
        assert torch.equal(y, x.float())
    assert copies.entries() == [] and "float" in copies.failures()[0]
    views = ReplayCache(2)
    for _ in range(4):
        y = views.run("v", lambda t: bf16_to_image(t.to(torch.bfloat16).contiguous()), x, 0,
                      list, _module())
        assert torch.equal(y, x.float())
    assert views.entries()[0].replays == 2


# -- process audit (thirty-second sitting) ------------------------------------------------------
def test_an_interrupt_while_recording_does_not_disable_the_replay(model, monkeypatch):
    """A KeyboardInterrupt inside the recording left its placeholder (not an Exception), and
    the key ran eagerly for the model's lifetime."""
    x = _image(2)
    ref = _eager(model, lambda: model.compress(x, width=8, precision="bf16"))
    assert model.compress(x, width=8, precision="bf16") == ref       # 1st use
    real = cpu_replay._record

    def interrupted(fn, t):
        raise KeyboardInterrupt
    monkeypatch.setattr(cpu_replay, "_record", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.compress(x, width=8, precision="bf16")                 # 2nd use: records
    assert not any(e.recording for e in _replays(model))
    monkeypatch.setattr(cpu_replay, "_record", real)
    for _ in range(5):
        assert model.compress(x, width=8, precision="bf16") == ref
    _require_replayed(model)


def test_a_fork_while_a_cache_lock_is_held_leaves_the_child_a_free_lock(model):
    """A thread holding the weight-pack cache's or a replay cache's lock at fork() left the
    child's copy locked for good: its next compress waited forever."""
    import os

    from slimkernels.ops import _cache
    x = _image(3)
    model.compress(x, width=8)
    model.compress(x, width=8)          # a replay cache exists
    cache = model.__dict__["_cpu_replays"]
    with _cache._PACK_LOCK, cache._lock:
        pid = os.fork()
        if pid == 0:   # child: both locks free, and a compress completes
            try:
                ok = _cache._PACK_LOCK.acquire(timeout=5) and cache._lock.acquire(timeout=5)
                if ok:
                    _cache._PACK_LOCK.release()
                    cache._lock.release()
                    torch.set_num_threads(1)
                    model.compress(x, width=8)
                os._exit(0 if ok else 3)
            except BaseException:
                os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


# -- audit (thirty-third sitting) ----------------------------------------------------------------
def _bf16_calls(model, x, n, width=16):
    return [model.compress(x, width, precision="bf16") for _ in range(n)]


def test_a_layer_added_after_recording_runs(model):
    """A tensorless layer appended to g_a left the state key as it was: the replay ran the
    recorded kernels without it (and without its hook)."""
    x = _image(1)
    _bf16_calls(model, x, 4)
    _require_replayed(model)
    model.g_a.append(torch.nn.Hardtanh(-0.05, 0.05))
    seen = []
    model.g_a[-1].register_forward_hook(lambda *a: seen.append(1))
    got = _bf16_calls(model, x, 4)
    want = _eager(model, lambda: model.compress(x, 16, precision="bf16"))
    assert all(g == want for g in got) and len(seen) >= 4


@pytest.mark.parametrize("where", ["instance", "class"])
def test_a_patched_encode_is_not_replayed_over(model, where, monkeypatch):
    """compress runs self.encode: one patched (on the instance or the class) after a recording
    was ignored by the replay."""
    x = _image(2)
    base = _eager(model, lambda: model.compress(x, 16, precision="bf16"))
    _bf16_calls(model, x, 4)
    _require_replayed(model)
    orig = type(model).encode

    def halved(self, t, width=None):   # (the negative image: other symbols)
        return orig(self, 1 - t, width)
    if where == "instance":
        monkeypatch.setattr(model, "encode", halved.__get__(model), raising=False)
    else:
        monkeypatch.setattr(type(model), "encode", halved)
    got = _bf16_calls(model, x, 4)
    want = _eager(model, lambda: model.compress(x, 16, precision="bf16"))
    assert want != base and all(g == want for g in got)


def test_a_cache_built_while_recording_does_not_end_replays(model):
    """The weight caches cleared between the first call and the recording (another model's
    clear_caches(), an LRU eviction) made the recording see their rebuild: the key then ran
    eagerly for good. It is recorded again later."""
    from slimkernels.ops import clear_weight_caches
    x = _image(3)
    model.compress(x, 16, precision="bf16")
    clear_weight_caches()
    for _ in range(cpu_replay.RETRY_AFTER + 6):
        model.compress(x, 16, precision="bf16")
    _require_replayed(model)


def test_hooks_present_while_recording_do_not_end_replays(model):
    x = _image(4)
    h = model.g_a[0].register_forward_pre_hook(lambda *a: None)
    for _ in range(3):
        model.compress(x, 16, precision="bf16")
    h.remove()
    for _ in range(cpu_replay.RETRY_AFTER + 6):
        model.compress(x, 16, precision="bf16")
    _require_replayed(model)


def test_a_fork_while_another_thread_records_a_replay_lets_the_child_replay(monkeypatch):
    """(Performance only.) A fork while another thread records a CPU replay leaves the child the
    key's 'recording' placeholder, which no thread of the child completes: the child runs that
    transform eagerly for good (e10_fork_placeholder.py: 2/2, 0 replays in 40 calls). Fix: drop
    the placeholders in cpu_replay._new_locks_in_child."""
    from slimkernels.pretrained import load_model
    if not _amx():
        pytest.skip("the bundled model's bf16 transforms replay on AMX CPUs")
    model = load_model()
    x = torch.rand(1, 3, 64, 96)
    # (one thread here as in the threads below: the thread count is part of the replay's key,
    # and with SLIMKERNELS_TEST_THREADS=2 the second use below was another key's first)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _fork_while_recording(model, x, monkeypatch)
    finally:
        torch.set_num_threads(threads)


def _fork_while_recording(model, x, monkeypatch):
    import os
    model.compress(x, 48, precision="bf16", streams=1)          # 1st use of the key
    inside, release = threading.Event(), threading.Event()
    real = cpu_replay._record

    def slow_record(fn, t):
        inside.set()
        release.wait(20)
        return real(fn, t)
    monkeypatch.setattr(cpu_replay, "_record", slow_record)

    def second_use():
        torch.set_num_threads(1)
        model.compress(x, 48, precision="bf16", streams=1)      # 2nd use: this thread records
    t = threading.Thread(target=second_use)
    t.start()
    assert inside.wait(20)
    pid = os.fork()
    if pid == 0:   # child
        code = 3
        try:
            cpu_replay._record = real
            torch.set_num_threads(1)
            for _ in range(8):
                model.compress(x, 48, precision="bf16", streams=1)
            if any(e.replays > 0 for e in model._cpu_replays.entries()):
                code = 0
        except BaseException:
            code = 4
        os._exit(code)
    release.set()
    t.join()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, \
        "the child never replays the key another thread of the parent was recording at fork()"


def test_two_threads_forking_at_once_leave_no_replay_lock_held():
    """The fork hooks kept the locks they took in one module-wide list: a second thread forking
    while the first waited (for the weight cache's lock) overwrote it, its after-hook released
    nothing, and the replay cache's lock stayed held for good (every later compress of that
    model blocked). Run in a child process: a hang there cannot stop this session."""
    import subprocess
    import sys
    import textwrap
    code = textwrap.dedent("""
        import os, threading, time
        from slimkernels.ops import _cache
        from slimkernels import cpu_replay
        rc = cpu_replay.ReplayCache(4)
        def forker():
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
        _cache._PACK_LOCK.acquire()        # another thread inside the weight cache meanwhile
        a = threading.Thread(target=forker); a.start()
        time.sleep(0.3)
        b = threading.Thread(target=forker); b.start()
        time.sleep(0.3)
        _cache._PACK_LOCK.release()
        a.join(10); b.join(10)
        ok = not a.is_alive() and not b.is_alive() and rc._lock.acquire(timeout=5)
        print("ok" if ok else "LEAKED")
        os._exit(0 if ok else 3)
        """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr[-2000:]


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("layout", ["nchw", "hwc", "channels_last"])
def test_compress_leaves_the_image_unchanged(model, precision, layout):
    """compress reads the caller's image and never writes it, also where the transform takes
    it as it is (codec.CPU_IMAGE_AS_IS: a float32 image with the dense channels_last strides),
    eagerly and from the CPU replay (recorded at the second call, verified at the third,
    replayed at the fourth)."""
    x = _image(9, 48, 64)
    if layout == "hwc":
        x = x[0].permute(1, 2, 0).contiguous().permute(2, 0, 1)[None]
    elif layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    before = x.clone()
    data = [model.compress(x, 8, precision=precision) for _ in range(4)]
    assert torch.equal(x, before) and len(set(data)) == 1
    _require_replayed(model)


# -- the image's range check by the first conv (codec.CPU_IMAGE_RANGE_IN_CONV) ------------------
_BAD = ((200.0, r"values reach \S+ \.\. 200 \(0-255"), (float("nan"), "not finite"),
        (-float("inf"), "not finite"), (-0.75, r"values reach -0\.75"))


def _as_is(seed=3):
    """An image compress's bf16 transform takes as it is (float32, dense channels_last)."""
    return _image(seed, 48, 64).contiguous(memory_format=torch.channels_last)


def _spoiled(x, spot, value):
    y = x.clone(memory_format=torch.channels_last)
    y[spot] = value
    return y


@pytest.mark.parametrize("in_conv", [True, False])
def test_a_bad_image_is_refused_from_the_replay_which_keeps_replaying(model, monkeypatch,
                                                                     in_conv):
    """Where the transform takes the image as it is, its range is checked by the first conv as it
    reads it (the kernel, from the replay too: ``CPU_IMAGE_RANGE_IN_CONV``) or by a pass of its
    own: a bad value anywhere is refused with compress's message while the transform replays,
    and the recording keeps replaying after it, with the same bytes either way."""
    from slimkernels import codec
    if not _amx():
        pytest.skip("the image goes as it is only to the direct AMX conv")
    monkeypatch.setattr(codec, "CPU_IMAGE_RANGE_IN_CONV", in_conv)
    x = _as_is()
    data = {model.compress(x, w, precision="bf16") for w in (8, 16) for _ in range(4)}
    assert len(data) == 2
    count = sum(e.replays for e in _require_replayed(model))
    for spot in ((0, 0, 0, 0), (0, 2, 47, 63), (0, 1, 20, 33)):
        for bad, match in _BAD:
            for w in (8, 16):
                with pytest.raises(ValueError, match=match):
                    model.compress(_spoiled(x, spot, bad), w, precision="bf16")
    assert {model.compress(x, w, precision="bf16") for w in (8, 16)} == data
    assert sum(e.replays for e in _replays(model)) > count
    assert not model.__dict__["_cpu_replays"].failures()
    monkeypatch.setattr(codec, "CPU_IMAGE_RANGE_IN_CONV", not in_conv)   # the other way: the
    assert {model.compress(x, w, precision="bf16") for w in (8, 16)} == data   # same bytes


@pytest.mark.parametrize("when", [0, 1, 2, 3])
def test_a_bad_image_at_each_stage_of_a_recording(model, when):
    """A bad image at the key's first (eager) call, its recording, its verification or its
    first replay: refused each time, and the key goes on to record, verify and replay."""
    if not _amx():
        pytest.skip("the image goes as it is only to the direct AMX conv")
    x = _as_is(5)
    good = [model.compress(x, 8, precision="bf16") for _ in range(when)]
    with pytest.raises(ValueError, match="values reach"):
        model.compress(_spoiled(x, (0, 1, 47, 0), 2.0), 8, precision="bf16")
    good += [model.compress(x, 8, precision="bf16") for _ in range(4)]
    assert len(set(good)) == 1
    _require_replayed(model)
    assert not model.__dict__["_cpu_replays"].failures()


def test_the_image_check_where_the_first_conv_is_not_the_direct_one(model, monkeypatch):
    """Where the first conv does not take the direct AMX conv, it measures the image itself
    (ops.image_io.check_values) before it computes: the same refusals, the same bytes as the
    pass of compress's own."""
    from slimkernels import codec
    from slimkernels.ops import image_io
    if not _amx():
        pytest.skip("the image goes as it is only to the direct AMX conv")
    monkeypatch.setattr(conv_ops, "_conv2d_amx_if_eligible", lambda *a, **k: None)
    measured = []
    check = image_io.check_values
    monkeypatch.setattr(image_io, "check_values", lambda *a: measured.append(1) or check(*a))
    x = _as_is(7)
    data = [model.compress(x, 8, precision="bf16") for _ in range(3)]
    assert len(measured) == 3
    for bad, match in _BAD:
        with pytest.raises(ValueError, match=match):
            model.compress(_spoiled(x, (0, 0, 47, 63), bad), 8, precision="bf16")
    monkeypatch.setattr(codec, "CPU_IMAGE_RANGE_IN_CONV", False)
    assert model.compress(x, 8, precision="bf16") == data[0] and len(measured) == 3 + len(_BAD)


def test_the_replay_says_its_conv_checked_the_image(model, monkeypatch):
    """A replay repeats the recorded conv's taking of the check (``_recording.on_replay``), so
    compress runs no pass of its own over the image while the transform replays; where no conv
    got the image (a pre-hook hands the first conv a copy), compress measures it itself: the
    same refusals, the same bytes."""
    from slimkernels import codec
    if not _amx():
        pytest.skip("the image goes as it is only to the direct AMX conv")
    passes = []
    real = codec.value_range
    monkeypatch.setattr(codec, "value_range", lambda t: passes.append(1) or real(t))
    x = _as_is(11)
    data = [model.compress(x, 8, precision="bf16") for _ in range(5)]
    assert len(set(data)) == 1 and passes == []
    _require_replayed(model)
    handle = model.g_a[0].register_forward_pre_hook(lambda mod, args: (args[0].clone(),)
                                                    + tuple(args[1:]))
    try:
        assert model.compress(x, 8, precision="bf16") == data[0] and len(passes) == 1
        for bad, match in _BAD:
            with pytest.raises(ValueError, match=match):
                model.compress(_spoiled(x, (0, 2, 10, 63), bad), 8, precision="bf16")
    finally:
        handle.remove()
    passes.clear()
    assert model.compress(x, 8, precision="bf16") == data[0] and passes == []


# -- audit (forty-eighth sitting) ----------------------------------------------------------------
def test_a_plain_attribute_set_after_recording_is_seen(model):
    """A GDN's ``inverse`` (a plain attribute, as a layer's padding) set after the encoder was
    recorded: the replay ran the recorded kernels, so ``compress`` kept the old bytes (the eager
    call, ``forward`` and a fresh model saw the change)."""
    with torch.no_grad():   # (latents that are not all zero, so that the change shows)
        model.g_a[2].weight.mul_(30)
    model.update()
    x = _image(1)
    code = _bf16_calls(model, x, 4)[-1]
    _require_replayed(model)
    model.g_a[1].inverse = True
    got = _bf16_calls(model, x, 3)
    want = _eager(model, lambda: model.compress(x, 16, precision="bf16"))
    assert want != code and got == [want] * 3


def test_steady_calls_set_no_plain_attributes(model):
    """What keys the replays on the modules' plain attributes (``_state.attribute_version``)
    must not move in repeated calls, or nothing would replay."""
    from slimkernels import _state
    x = _image(2)
    code = _bf16_calls(model, x, 2)[-1]
    model.decompress(code, precision="bf16")
    v = _state.attribute_version()
    for w in (16, 8, 16):
        for prec in ("bf16", "fp32"):
            model.decompress(model.compress(x, w, precision=prec), precision=prec)
    assert _state.attribute_version() == v


def test_a_plain_attribute_set_after_recording_is_seen_by_the_bundled_decoder():
    """The bundled model's decoder (replayed on an AMX CPU, unlike the Tiny model's): its
    SwitchGDN's ``inverse`` set after a recording, ``decompress`` gave the old image."""
    from slimkernels.pretrained import load_model
    model = load_model()
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    code = model.compress(x, 48, precision="bf16")
    for _ in range(4):
        img = model.decompress(code, precision="bf16")
    kept = model._cpu_replays._entries.items()   # ((kind, ...), shape, ...) -> recording
    if not any(e.verified and e.replays > 0 and full[0][0] != "encode" for full, e in kept):
        (pytest.fail if _amx() else pytest.skip)(f"decoder not replayed: "
                                                 f"{model._cpu_replays.failures()}")
    gdn = model.g_s[2]
    gdn.inverse = False
    for g in gdn.gdns:
        g.inverse = False
    got = [model.decompress(code, precision="bf16") for _ in range(3)]
    want = _eager(model, lambda: model.decompress(code, precision="bf16"))
    assert not torch.equal(want, img) and all(torch.equal(g, want) for g in got)


@pytest.mark.parametrize("size", [256, 64])
def test_the_bundled_models_fp32_transforms_replay_through_winograd_layers(size):
    """The bundled model in fp32 where the Winograd rounds run our batched GEMM (AVX-512 or
    AVX2; with torch.bmm in them, as on AVX2 CPUs before, neither transform replayed, and the
    decoder's NCHW latent cost a torch copy in its first layer): both transforms replay, through
    the GEMM, with the eager bytes and image; at 64x64 too, whose 5x5/2 layers have 1-4 tiles
    (on AVX2 CPUs oneDNN's before ``WINOGRAD_NARROW_C``, which kept the transforms eager)."""
    from slimkernels.ops import winograd as Wg
    from slimkernels.pretrained import load_model
    if not Wg.winograd_available() or Wg.round_gemm() == "bmm":
        pytest.skip("no Winograd kernels or batched GEMM of ours here")
    if size == 64 and conv_ops._cpu_capability() != "AVX2":
        pytest.skip("the AVX2 CPUs' tile rule (AVX-512 ones take narrow layers at any size)")
    model = load_model()
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    ref = _eager(model, lambda: model.compress(x, 48, precision="fp32"))
    img = _eager(model, lambda: model.decompress(ref, precision="fp32"))
    for i in range(4):
        assert model.compress(x, 48, precision="fp32") == ref, i
        assert torch.equal(model.decompress(ref, precision="fp32"), img), i
    kept = model._cpu_replays._entries.items()
    done = {full[0][0] for full, e in kept if e.verified and e.replays > 0 and
            any(step[0] == "batched_gemm_" + Wg.round_gemm() for step in e.steps)}
    assert done == {"encode", "decode"}, model._cpu_replays.failures()


def test_a_cycle_over_more_keys_than_the_old_limit_keeps_replaying(model):
    """Transforms used in turn (compress and decompress at nine image sizes; SlimCAE's five
    widths take ten): each replayable one replays from its fourth use on. With 8 recordings
    kept, every call of such a cycle was a new recording, slower than eager."""
    sizes = [(24 + 4 * i, 20) for i in range(9)]
    for _ in range(4):
        for h, w in sizes:
            code = model.compress(_image(h, h, w), width=8, precision="fp32")
            model.decompress(code, precision="fp32")
    done = _require_replayed(model, expected=True)
    cache = model._cpu_replays
    # (Tiny's encoder at width 8 runs a oneDNN conv on an AVX2 CPU: its keys fail, kept apart)
    assert len(done) == len(cache.entries()) > 8, cache.failures()


def test_a_replay_uses_the_replaying_threads_winograd_workspace():
    """A Winograd conv's rounds work in a per-thread workspace (``winograd._workspace``): its
    replay takes the replaying thread's (not a copy in its arena, nor the recording thread's,
    which another thread's replay would share), grown or made anew when needed."""
    from slimkernels.ops import winograd as Wg
    if not Wg.winograd_available() or Wg.round_gemm() == "bmm":
        pytest.skip("no Winograd kernels or batched GEMM of ours here")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 32, 40, 36, generator=g).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(48, 32, 5, 5, generator=g) * 0.05, torch.randn(48, generator=g)
    U = Wg.winograd_conv2d_weight(w, 2)
    want = Wg.conv2d_winograd(x, U, b, 5, 2, 2)
    cache = ReplayCache(4)
    kernels = _module()

    def run(t):
        return cache.run("wino", lambda v: Wg.conv2d_winograd(v, U, b, 5, 2, 2), t, 0,
                         lambda: [U, b], kernels)
    for _ in range(4):   # eager, recorded, checked, replayed
        assert torch.equal(run(x), want)
    (entry,) = cache.entries()
    assert entry.verified and entry.replays == 2   # (the check is one)
    (provider, nbytes), = entry.scratch
    assert nbytes >= 36 * 4 * 4 * 48 * 4   # V and M of the rounds: not in the arena
    assert entry.nbytes < nbytes
    Wg.release_workspace()                 # this thread's workspace made anew by the replay
    assert torch.equal(run(x), want)
    mine = Wg._WORKSPACE.buf
    got = {}

    def other():
        got["y"] = run(x)
        got["ws"] = Wg._WORKSPACE.buf      # that thread's own workspace, made by the replay
    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert torch.equal(got["y"], want) and entry.replays == 4
    assert got["ws"].data_ptr() != mine.data_ptr() and got["ws"].numel() * 4 >= nbytes


def test_an_address_belongs_to_its_latest_owner_a_scratch_buffer_or_an_allocation():
    """Bytes reported as a thread's scratch, then allocated by the call (the scratch freed and
    its memory reused), are that allocation's; allocated, then reported as scratch, the
    scratch's (a fix to the replaying thread's buffer, sized by the recording's)."""
    from slimkernels.cpu_replay import _SCRATCH
    x, y, out = torch.rand(8), torch.empty(64), torch.empty(8)

    def prov(n):
        return torch.empty(n, dtype=torch.uint8)

    def record(first_scratch: bool):
        rec = _Recorder()
        for step in ("scratch", "allocation") if first_scratch else ("allocation", "scratch"):
            rec.scratch(y, prov) if step == "scratch" else rec.allocation(y)
        rec.allocation(out)
        rec.seq += 1
        rec.calls.append((rec.seq, "k", (x.data_ptr(), y.data_ptr() + 4, out.data_ptr()), {},
                          None))
        return _Replay.build(rec, x, out, [])
    r = record(True)
    assert r.error is None and r.scratch == () and r.nbytes >= 256
    fixes = r.steps[0][3]
    assert (1, _SCRATCH, 4) not in fixes and len(fixes) == 3
    r = record(False)
    assert r.error is None and r.scratch == ((prov, 256),) and r.nbytes == 0
    assert (1, _SCRATCH, 4) in r.steps[0][3]
