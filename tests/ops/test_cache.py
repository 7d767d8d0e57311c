"""slimkernels.ops._cache: the prepared-weight caches let go of a deleted model's tensors."""
import gc
import weakref

import torch

from slimkernels.ops import _cache


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
