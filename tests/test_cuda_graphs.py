"""slimkernels.cuda_graphs and compress / decompress(cuda_graph=True).

The cache's logic runs on CPU with a stand-in capturer whose "graph" recomputes the function into
the static output on replay (what a CUDA graph's replay does); the real capture and the codec's
bytes are checked on a GPU (``cuda`` marker)."""
import copy
import pickle
import warnings

import pytest
import torch

from slimkernels.cuda_graphs import GraphCache, _Captured, capture


class _FakeGraph:
    def __init__(self, fn, static_in, static_out):
        self.fn, self.static_in, self.static_out = fn, static_in, static_out

    def replay(self):
        self.static_out.copy_(self.fn(self.static_in))


def _fake_capturer(log):
    def cap(fn, x):
        log.append(tuple(x.shape))
        static_in = x.clone()
        static_out = fn(static_in)
        return _Captured(_FakeGraph(fn, static_in, static_out), static_in, static_out)
    return cap


def _fn(t):
    return t * 2 + 1


def test_replays_with_new_inputs_and_hands_out_its_own_tensors():
    log = []
    cache = GraphCache(capturer=_fake_capturer(log))
    a, b = torch.rand(2, 3), torch.rand(2, 3)
    ya = cache.run("enc", _fn, a, b"id")
    yb = cache.run("enc", _fn, b, b"id")
    assert log == [(2, 3)]                                   # captured once, replayed after
    assert torch.equal(ya, _fn(a)) and torch.equal(yb, _fn(b))
    assert ya.data_ptr() != yb.data_ptr()                    # not the static output
    ya.zero_()
    assert torch.equal(cache.run("enc", _fn, b, b"id"), _fn(b))


def test_keys_shapes_weights_and_least_recently_used():
    log = []
    cache = GraphCache(max_entries=2, capturer=_fake_capturer(log))
    x, y = torch.rand(1, 4), torch.rand(1, 5)
    cache.run("enc", _fn, x, b"id")
    cache.run("dec", _fn, x, b"id")                          # another transform: its own graph
    assert len(cache) == 2 and len(log) == 2
    cache.run("enc", _fn, x, b"id")                          # hit; "dec" is now the oldest
    cache.run("enc", _fn, y, b"id")                          # another shape: a third, "dec" goes
    assert len(cache) == 2 and len(log) == 3
    cache.run("enc", _fn, x, b"id")
    assert len(log) == 3
    cache.run("dec", _fn, x, b"id")
    assert len(log) == 4
    cache.run("dec", _fn, x, b"new weights")                 # new weights: every graph dropped
    assert len(log) == 5 and len(cache) == 1


def test_a_transform_that_cannot_be_captured_runs_eagerly_after_one_warning():
    calls = []

    def failing(fn, x):
        calls.append(1)
        return _Captured(error="RuntimeError: operation not permitted when stream is capturing")
    cache = GraphCache(capturer=failing)
    x = torch.rand(3)
    with pytest.warns(RuntimeWarning, match="could not be captured"):
        y = cache.run("enc", _fn, x, b"id")
    assert torch.equal(y, _fn(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # no second warning
        assert torch.equal(cache.run("enc", _fn, x, b"id"), _fn(x))
    assert len(calls) == 1                                   # not captured again


def test_each_graph_keeps_what_its_capture_may_read_alive():
    """keepalive: tensors another owner may drop (the conv weight-copy cache when full) stay
    alive as long as a graph captured over them does."""
    import weakref
    held = [torch.rand(3)]
    ref = weakref.ref(held[0])
    cache = GraphCache(capturer=_fake_capturer([]), keepalive=lambda: list(held))
    cache.run("enc", _fn, torch.rand(2), b"id")
    held.clear()                                             # the owner drops it
    assert ref() is not None
    cache.clear()
    assert ref() is None


def test_copies_start_empty_and_bad_sizes_are_refused():
    log = []
    cache = GraphCache(max_entries=3, capturer=_fake_capturer(log))
    cache.run("enc", _fn, torch.rand(2), b"id")
    for c in (copy.deepcopy(cache), pickle.loads(pickle.dumps(GraphCache(3)))):
        assert len(c) == 0 and c.max_entries == 3
    with pytest.raises(ValueError, match="max_entries"):
        GraphCache(0)
    with pytest.raises(ValueError, match="CUDA tensor"):
        capture(_fn, torch.rand(2))


def _model():
    from slimkernels.models import SlimCAE
    torch.manual_seed(0)
    m = SlimCAE(widths=(32, 16)).eval()
    m.update()
    return m


def test_capture_after_the_second_use():
    """capture_after=2 (the codec's default): a key's first use runs eagerly and captures
    nothing; its second captures, later ones replay; use counts are bounded and start again when
    the weights change."""
    log, calls = [], []

    def fn(t):
        calls.append(1)
        return _fn(t)
    cache = GraphCache(max_entries=1, capturer=_fake_capturer(log))
    x = torch.rand(2, 3)
    assert torch.equal(cache.run("enc", fn, x, b"id", capture_after=2), _fn(x))
    assert log == [] and len(cache) == 0 and len(calls) == 1
    assert torch.equal(cache.run("enc", fn, x, b"id", capture_after=2), _fn(x))
    assert log == [(2, 3)] and len(cache) == 1
    cache.run("enc", fn, x, b"id", capture_after=2)
    assert log == [(2, 3)]                                   # replayed
    for i in range(20):                                      # one-off sizes: no captures, and
        cache.run("enc", fn, torch.rand(1, i + 4), b"id", capture_after=2)  # bounded counts
    assert log == [(2, 3)] and len(cache._seen) <= 8
    cache.run("dec", fn, x, b"id", capture_after=2)
    cache.run("dec", fn, x, b"id2", capture_after=2)         # new weights: counting restarts
    assert log == [(2, 3)] and len(cache) == 0
    with pytest.raises(ValueError, match="capture_after"):
        cache.run("enc", fn, x, b"id2", capture_after=0)


def test_codec_cuda_graph_argument_is_checked():
    m = _model()
    with pytest.raises(ValueError, match="cuda_graph must be None, True or False"):
        m.compress(torch.rand(1, 3, 16, 16), 16, precision="fp32", cuda_graph="yes")


def test_cuda_graph_is_ignored_on_cpu():
    m = _model()
    x = torch.rand(1, 3, 40, 24)
    data = m.compress(x, 16, precision="fp32")
    assert m.compress(x, 16, precision="fp32", cuda_graph=True) == data
    a = m.decompress(data, precision="fp32")
    assert torch.equal(m.decompress(data, precision="fp32", cuda_graph=True), a)
    assert "_cuda_graphs" not in m.__dict__
    copy.deepcopy(m)


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_same_bytes_and_own_outputs_on_gpu(precision):
    m = _model().cuda()
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.rand(1, 3, 64, 48, generator=g), torch.rand(1, 3, 64, 48, generator=g)
    plain = [m.compress(x, w, precision=precision, cuda_graph=False)
             for x in (x1, x2) for w in (32, 16)]
    graph = [m.compress(x, w, precision=precision, cuda_graph=True)
             for x in (x1, x2) for w in (32, 16)]
    assert graph == plain                          # second image: replays of the first's graphs
    d1 = m.decompress(plain[0], precision=precision, cuda_graph=True)
    d1_copy = d1.clone()
    d2 = m.decompress(plain[2], precision=precision, cuda_graph=True)   # same graph, other input
    assert torch.equal(d1, d1_copy)                # the first result was not overwritten
    assert torch.equal(d2, m.decompress(plain[2], precision=precision, cuda_graph=False))
    from slimkernels.ops.conv import cached_weight_copies
    graphs = m.__dict__["_cuda_graphs"]
    assert graphs._keepalive is cached_weight_copies and len(graphs) == 3  # enc 32, 16; dec 32
    assert all(e.keep for e in graphs._entries.values())   # the weight copies they read
    with torch.no_grad():                          # new weights: new graphs, new bytes
        m.g_a[0].weight.mul_(1.01)
    assert m.compress(x1, 32, precision=precision, cuda_graph=True) == \
        m.compress(x1, 32, precision=precision, cuda_graph=False)
    m.clear_caches()
    assert "_cuda_graphs" not in m.__dict__


@pytest.mark.cuda
def test_cuda_graph_default_captures_at_the_second_call():
    """cuda_graph=None (the default) on a GPU: the first call with a key runs without a graph,
    the second captures, the bytes equal the graph-free ones throughout."""
    m = _model().cuda()
    x = torch.rand(1, 3, 64, 48, generator=torch.Generator().manual_seed(2))
    ref = m.compress(x, 32, precision="fp32", cuda_graph=False)
    assert m.compress(x, 32, precision="fp32") == ref
    graphs = m.__dict__["_cuda_graphs"]
    assert len(graphs) == 0
    assert m.compress(x, 32, precision="fp32") == ref and len(graphs) == 1
    assert m.compress(x, 32, precision="fp32") == ref and len(graphs) == 1


def test_the_keys_of_failed_captures_are_bounded_and_cleared():
    """Every full key (image size included) whose capture failed was kept for good (one entry
    per image size of a transform that cannot be captured); clear() kept them too."""
    cache = GraphCache(4, capturer=lambda fn, x: _Captured(error="RuntimeError: not capturable"))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for i in range(200):
            cache.run(("encode", 48), lambda t: t, torch.empty(1, 3, 8 + i, 8), b"m")
        assert len(w) == 200          # (each new size warned once)
        cache.run(("encode", 48), lambda t: t, torch.empty(1, 3, 8 + 199, 8), b"m")
        assert len(w) == 200
    assert len(cache._warned) <= 8 * cache.max_entries
    cache.clear()
    assert not cache._warned
