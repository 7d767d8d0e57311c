"""The conv / GDN ops' caches of prepared weights (cast, rearranged, prepacked), kept while the
tensors they were built from keep their identity and version."""
from __future__ import annotations

import os
import sys
import threading
from collections import Counter, OrderedDict

import torch

from .. import _recording
from .._cpu import tracing
from .._state import bump_generation, generation

_PACK_CACHE: "OrderedDict" = OrderedDict()
#: Entries kept (least recently used dropped first).
_PACK_CACHE_MAX = 128
#: ... and of the entries built for an input shape (oneDNN's prepacked weights), at most this
#: many shapes per weight and configuration (its least recently used shape dropped first):
#: compressing images of 40 sizes at w=192 in bf16 grew the process by 4.7 MiB per size before
#: this bound (two 1.8 MB prepacked 5x5 weights per size, up to 128 entries), 1.2 MiB after
#: (oneDNN's own primitive cache; RSS after ``malloc_trim``).
_PACK_CACHE_MAX_SHAPES = 8
_PACK_LOCK = threading.RLock()   # (reentrant: a finalizer run by the GC inside may clear)
#: ``ops.conv._cast_full``'s cache: ``{key: (version, source tensor, copy)}`` (held here so that
#: :func:`drop_orphans` sees both caches' holdings of a tensor).
_CAST_CACHE: dict = {}


def _before_fork() -> None:
    # no other thread inside a cache operation while the process is copied: OrderedDict.clear()
    # frees the entries (and can hand the GIL over) between emptying the dict and its order
    # list, and a child forked then found a torn cache (KeyError in 7 of 300 forks)
    _PACK_LOCK.acquire()


def _after_fork_in_parent() -> None:
    _PACK_LOCK.release()


def _new_lock_in_child() -> None:
    # the child's copy of the lock is held (by _before_fork, and a fork() while another thread
    # held it left it locked for good: the child's next conv waited forever): a free one
    global _PACK_LOCK
    _PACK_LOCK = threading.RLock()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_new_lock_in_child)


def clear() -> None:
    """Drop every entry of both caches (:func:`slimkernels.ops.clear_weight_caches`)."""
    with _PACK_LOCK:
        bump_generation()   # (a build in flight now, e.g. after a .data write, is not kept)
        _PACK_CACHE.clear()
        _CAST_CACHE.clear()


def _refcounts(pack_entries, cast_entries):
    """``[(tensor id, sys.getrefcount as seen here, times the caches hold it)]`` over the source
    tensors of the entries' values (read in :func:`drop_orphans` against a calibration that
    runs this same code)."""
    srcs = [t for e in pack_entries for t in e[1]]
    srcs += [e[1] for e in cast_entries]
    held = Counter(map(id, srcs))   # (no loop variable left holding the last tensor)
    return [(id(t), sys.getrefcount(t), held[id(t)]) for t in srcs]


def _calibrate():
    """``(refs, per_holding)``: the count :func:`_refcounts` sees for a tensor that only the
    caches hold, once, and what each further holding adds (CPython's counting of the loop's own
    references differs between versions: measured, not assumed)."""
    probe = torch.empty(0)
    entries = [(None, (probe,), None)]
    del probe
    c1 = _refcounts(entries, ())[0][1]
    t = entries[0][1][0]
    entries.append((None, (t,), None))   # (a second holding: its own tuple)
    del t
    c2 = _refcounts(entries, ())[0][1]
    return c1, c2 - c1


_REFS_ALONE, _REFS_PER_HOLDING = _calibrate()


def drop_orphans() -> None:
    """Drop the entries of both caches whose source tensors nothing but the caches references
    any more (their model was deleted: the entries kept its parameters and their prepared
    copies alive until 128 newer entries pushed them out). Run when an entry is added; an
    entry dropped here while its tensor lived on elsewhere (e.g. only in an autograd graph) is
    rebuilt at its next use."""
    pack, cast = list(_PACK_CACHE.items()), list(_CAST_CACHE.items())
    counts = _refcounts([e for _, e in pack], [e for _, e in cast])
    dead = {i for i, c, h in counts if c <= _REFS_ALONE + (h - 1) * _REFS_PER_HOLDING}
    del counts
    if not dead:
        return
    for k, e in pack:
        if any(id(t) in dead for t in e[1]):
            _PACK_CACHE.pop(k, None)
    for k, e in cast:
        if id(e[1]) in dead:
            _CAST_CACHE.pop(k, None)


def store_cast(key, entry, gen: int, max_entries: int) -> None:
    """Put ``entry`` = ``(version, source tensor, copy)`` into the cast cache
    (``ops.conv._cast_full``) under the lock, after the sweep of :func:`drop_orphans`; not when
    the caches were cleared since generation ``gen`` (read before the copy was made); the cache
    is emptied first when it holds ``max_entries``."""
    if tracing():   # (a torch mode's copy, e.g. a fake tensor: not for later calls)
        return
    with _PACK_LOCK:
        drop_orphans()   # (first: a GC finalizer it sets off may clear the caches)
        if gen != generation():
            return
        if len(_CAST_CACHE) >= max_entries:
            _CAST_CACHE.clear()
        _CAST_CACHE[key] = entry


def _same_objects(kept, tensors) -> bool:
    """Whether ``kept`` holds the very tensor objects of ``tensors``, in order."""
    for k, t in zip(kept, tensors):
        if k is not t:
            return False
    return True


def _bound_shapes(key) -> None:
    """Drop the least recently used entries of ``key``'s weight and configuration (the same
    key but its last element, the input shape, and the same source tensors) past
    ``_PACK_CACHE_MAX_SHAPES`` shapes. Under the lock, after ``key`` was added (a miss, which
    cost a build: the walk over the entries is small beside it)."""
    head, n = key[0][:-1], len(key[0])
    same = [k for k in _PACK_CACHE
            if len(k[0]) == n and k[0][:-1] == head and k[1:] == key[1:]]   # (oldest first)
    for k in same[:max(0, len(same) - _PACK_CACHE_MAX_SHAPES)]:
        _PACK_CACHE.pop(k, None)


def _cached(key, sources, build, shaped=False):
    """``build()`` (run without gradient) once per ``key`` while every tensor in ``sources``
    (None entries skipped) keeps its identity, version, storage and shape (LRU,
    ``_PACK_CACHE_MAX`` entries). ``shaped``: ``key``'s last element is the input shape the
    value was built for (at most ``_PACK_CACHE_MAX_SHAPES`` kept per weight and
    configuration). Writes through ``.data`` bypass versions: clear the cache after them
    (:func:`slimkernels.ops.clear_weight_caches`). A source that is an inference
    tensor (``torch.inference_mode``) has no version counter: ``build()`` runs every call.

    An entry holds its source tensors (strong references, so that a freed tensor's id and
    storage cannot be reused by a new one that then matches the key), not weak references:
    ``torch.utils.swap_tensors`` (``Module._apply`` with
    ``torch.__future__.set_swap_module_params_on_conversion(True)``) refuses tensors that have
    weak references. A swapped tensor gets another storage and version: its entry misses."""
    src = [t for t in sources if t is not None]
    if tracing():   # (a torch mode, e.g. fake tensors: what it builds is not for later calls)
        with torch.no_grad():
            return build()
    for t in src:
        if t.is_inference():   # (made under torch.inference_mode: no version counter to key by)
            with torch.no_grad():
                return build()
    key = (key, *[id(t) for t in src])  # identity checked below (the entry keeps the tensors)
    ver = [(t._version, t.data_ptr(), t.shape) for t in src]
    with _PACK_LOCK:  # transforms may run in several threads (LRU bookkeeping is not atomic)
        hit = _PACK_CACHE.get(key)
        if hit is not None and hit[0] == ver and _same_objects(hit[1], src):
            if key in _PACK_CACHE:
                _PACK_CACHE.move_to_end(key)
            val = hit[2]
            _recording.keep(val)
            return val
    _recording.transient("a weight cache was built during the recording")
    gen = generation()
    with torch.no_grad():
        val = build()
    with _PACK_LOCK:
        drop_orphans()   # (first: a GC finalizer it sets off may clear the caches)
        if gen != generation():   # cleared meanwhile (after a .data write): not kept
            _recording.keep(val)
            return val
        _PACK_CACHE[key] = (ver, tuple(src), val)
        _PACK_CACHE.move_to_end(key)
        while len(_PACK_CACHE) > _PACK_CACHE_MAX:
            _PACK_CACHE.popitem(last=False)
        if shaped:
            _bound_shapes(key)
    _recording.keep(val)
    return val
