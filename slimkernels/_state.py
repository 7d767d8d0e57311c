"""One key for "these tensors are unchanged", shared by the caches built from weights."""
import itertools
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch

from . import _build_stamp, _optim_versions, _recording
from ._cpu import functorch_transform, tracing

# Fused optimizer steps bump the parameters' version counters, which key this library's caches:
# installed with the module every cache key comes from (not on ``import slimkernels``, which
# stays free of torch).
_optim_versions.install()


def tensor_state_key(tensors: Iterable[torch.Tensor]) -> Tuple:
    """``(id, version counter, data pointer)`` of each tensor: changes when a tensor is modified
    in place (optimizer step, ``load_state_dict``), replaced or moved to new storage. Writes
    through ``.data`` bypass version counters: the caches using this key need clearing then.
    Inference tensors have no version counter: a key holding one never matches (:func:`_version`).
    A cache must keep references to the tensors of its key (or to views of them), so that a
    freed tensor's id and storage cannot be reused by a new tensor that then matches the key."""
    return tuple([(id(t), _version(t), t.data_ptr()) for t in tensors])


_UNTRACKED = itertools.count(-2, -1)


def _version(t: torch.Tensor) -> int:
    """``t._version``; for an inference tensor (``torch.inference_mode``: no version counter) a
    negative number never given before, so that a key holding it never matches: caches keyed by
    such tensors rebuild on every call."""
    return next(_UNTRACKED) if t.is_inference() else t._version


def cached_on(owner, slot: str, tensors: Iterable[torch.Tensor], build, extra=None):
    """``build()``, cached in ``owner.__dict__[slot]`` until :func:`tensor_state_key` of
    ``tensors`` (or ``extra``) changes. The cache keeps the tensors, so that a freed tensor's id
    and storage cannot be reused by a new tensor that then matches the key. Drop it with
    ``owner.__dict__.pop(slot, None)``."""
    if _uncached():
        return build()
    tensors = tuple(tensors)
    return _cached(owner, slot, (extra, tensor_state_key(tensors)), lambda: tensors, build)


#: Bumped whenever a plain attribute of one of the library's modules is set
#: (:class:`WatchedAttributes`): the recorded CPU replays and CUDA graphs are keyed by it.
_ATTRIBUTES = 0


def attribute_version() -> int:
    """The count of plain attributes set on the library's modules (:class:`WatchedAttributes`)
    in this process: a replay recorded before a change is not used after it."""
    return _ATTRIBUTES


class WatchedAttributes:
    """``nn.Module`` mixin (before the module class in the bases): setting an attribute that is
    not a parameter, a registered buffer or a submodule (``layer.padding = 1``,
    ``gdn.inverse = True``, ``model.train()``) bumps :func:`attribute_version`. The recorded CPU
    replays (:mod:`slimkernels.cpu_replay`) and CUDA graphs run what the modules did when they
    were recorded; their keys hold the version, so that such a change is seen (it was not: a
    warm ``compress`` kept the bytes of the old padding). Parameters and buffers are covered by
    the weights' state key; the caches' own entries are written into ``__dict__`` directly.
    A class names the attributes that do not change what its modules compute (e.g. the codec's
    ``cpu_replay`` switch) in ``_unwatched_attributes``."""

    _unwatched_attributes: frozenset = frozenset()

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if not isinstance(value, (torch.nn.Parameter, torch.nn.Module)) and \
                name not in self._unwatched_attributes and \
                name not in self.__dict__.get("_buffers", ()):
            global _ATTRIBUTES
            _ATTRIBUTES += 1


#: Bumped by every clear of a model's caches (:func:`bump_generation`): a build in flight in
#: another thread then is returned but not stored (it may hold weights of before a ``.data``
#: write that the clear was for).
_GENERATION = 0


def bump_generation() -> None:
    """Mark the caches cleared (every ``clear_cache`` / ``clear_caches`` /
    ``clear_weight_caches``): builds in flight are not kept."""
    global _GENERATION
    _GENERATION += 1


def generation() -> int:
    """The count of :func:`bump_generation` calls (read before a build, compared after)."""
    return _GENERATION


def _uncached() -> bool:
    """Whether the state-keyed caches build without caching, checked by :func:`cached_on` and
    :func:`cached_on_module` before they compute a key: under a torch mode (torch.export's fake
    tensors) or a torch.func transform / forward AD, whose tensors have no data pointer to key
    on (torch.export under no_grad, vmap over stacked parameters failed "Cannot access data
    pointer of Tensor") and whose results are not for later calls."""
    return tracing() or functorch_transform()


def _cached(owner, slot: str, key, keep, build):
    """``build()`` cached in ``owner.__dict__[slot]`` under ``key``, with ``keep()`` (what the
    cache must hold alive: called only when it builds). Its callers check :func:`_uncached`."""
    cache = owner.__dict__.get(slot)
    if cache is None or cache[0] != key:
        _recording.transient(f"the cache {slot} was built during the recording")
        gen = _GENERATION
        cache = (key, build(), keep())
        if gen != _GENERATION:   # (cleared while it was built: not kept)
            _recording.keep(cache[1])
            return cache[1]
        owner.__dict__[slot] = cache
    _recording.keep(cache[1])
    return cache[1]


def state_tensors(root: torch.nn.Module) -> List[torch.Tensor]:
    """Every ``state_dict`` tensor of ``root``'s module tree (parameters and persistent
    buffers), by a direct walk over the modules (~0.1 ms on SlimCAE against ~0.26 ms for
    building the state_dict). Order: a stack from ``root``: a module's parameters, then its
    persistent buffers, then its children pushed in order and taken from the end."""
    ts = []
    ext = ts.extend
    for m in _walk_modules(root):
        ext(m._parameters.values())
        b = m._buffers
        if b:
            skip = m._non_persistent_buffers_set
            ext([v for k, v in b.items() if k not in skip] if skip else b.values())
    return [t for t in ts if t is not None]


def _state_key_module():
    try:
        from . import _state_key
    except ImportError:  # built without the optional extension
        return None
    # (a build of other sources than the checkout's, e.g. from before the prefetch list, not
    # rebuilt since: the walks of Python, rather than a TypeError on every compress)
    return _build_stamp.optional(_state_key, "_state_key",
                                 "the model's state key is walked in Python (~3x slower)")


_STATE_KEY = _state_key_module()


def module_state_key(root: torch.nn.Module, native: bool = True, modules: bool = False,
                     prefetch: Optional[list] = None) -> Tuple:
    """``(key, tensors)`` of :func:`state_tensors` of ``root``: ``key`` changes when one of
    them is modified in place, replaced, added, removed or moved to new storage (as
    :func:`tensor_state_key`; writes through ``.data`` bypass version counters). Keep
    ``tensors`` with the key (see :func:`cached_on`). ``native``: the compiled walk
    (``slimkernels._state_key``, bytes of int64 triples; ~3x faster) when it is built, else the
    Python one (a tuple); the two keys are not comparable with each other. ``modules``: the
    key also changes when a module of the tree is added, removed or replaced (one without
    tensors too), and the modules come as a third element ``(key, tensors, modules)``: keep
    them with the key as well. ``prefetch``: a list the caller keeps between calls (start
    with ``[]``; the compiled walk only): the walk first prefetches the objects the previous
    walk left there, then leaves its own (strong references to the modules but ``root``, their
    dicts and the tensors). The same key, ~2x faster when those objects are out of the caches
    (right after a transform or an image read: 0.32 -> 0.17 ms on SlimCAE)."""
    if native and _STATE_KEY is not None:
        try:
            return _STATE_KEY.state_key(root, modules, prefetch)
        except ValueError as e:
            if "deeper than" in str(e):
                raise ValueError(_too_deep(root)) from None
            raise
    tensors = state_tensors(root)
    if not modules:
        return tensor_state_key(tensors), tensors
    mods = _walk_modules(root)
    return tensor_state_key(tensors) + tuple((id(m), -1, -1) for m in mods), tensors, mods


#: The walks take a module tree deeper than this for a cycle (csrc/py/state_key.cpp's
#: kMaxDepth): a module registered under one of its own descendants would make them endless.
MAX_DEPTH = 1000


def _walk_modules(root: torch.nn.Module) -> List[torch.nn.Module]:
    """The modules of ``root``'s tree in the compiled walk's order (csrc/py/state_key.cpp): a
    stack from ``root``, a module's children pushed in order and taken from the end.
    ValueError (naming the cycle) for a tree deeper than :data:`MAX_DEPTH`."""
    out = []
    stack = [(root, 0)]
    pop, push = stack.pop, stack.extend
    while stack:
        m, depth = pop()
        if m is not None:
            if depth > MAX_DEPTH:
                raise ValueError(_too_deep(root))
            out.append(m)
            push([(c, depth + 1) for c in m._modules.values()])
    return out


def _too_deep(root: torch.nn.Module) -> str:
    """The error for a module tree the walks refuse: the first cycle found (a child that is
    one of its ancestors), by name, with what to do; else the depth."""
    on_path = {id(root): ""}   # the modules on the current path, by id: their names
    stack = [(root, "", iter(root._modules.items()))]
    while stack:
        node, path, children = stack[-1]
        for name, child in children:
            if child is None:
                continue
            cpath = f"{path}.{name}" if path else name
            if id(child) in on_path:
                where = on_path[id(child)]
                return (f"the module tree of {type(root).__name__} has a cycle: {cpath!r} is "
                        f"{repr(where) if where else 'the root'} ({type(child).__name__}), a "
                        f"module that contains it. Assigning a module to an attribute "
                        f"registers it as a child: keep a reference to a parent out of the "
                        f"tree (a weakref.ref, or object.__setattr__)")
            if len(stack) <= MAX_DEPTH:
                on_path[id(child)] = cpath
                stack.append((child, cpath, iter(child._modules.items())))
                break
        else:
            stack.pop()
            if stack:
                on_path.pop(id(node), None)
    return (f"the module tree of {type(root).__name__} is deeper than {MAX_DEPTH} levels "
            f"(no cycle found within them)")


def cached_on_module(owner, slot: str, root: torch.nn.Module, build, extra=None):
    """:func:`cached_on` over every state tensor AND every module of ``root``'s module tree
    (:func:`module_state_key` with ``modules=True``: a module added, removed or replaced, even
    one without tensors, also rebuilds it). The cache keeps the modules but not ``owner``
    itself (it holds the cache: keeping it would make a reference cycle, and a deleted model
    would wait for the cyclic garbage collector)."""
    if _uncached():
        return build()
    cache = owner.__dict__.get(slot)
    # the previous walk's objects, prefetched by this one (only where owner is root: the list
    # holds no reference to root, so none to the cache holding it)
    prefetch = (cache[2][2] if cache is not None else []) if owner is root else None
    key, tensors, modules = module_state_key(root, modules=True, prefetch=prefetch)
    return _cached(owner, slot, (extra, key),
                   lambda: (tensors, [m for m in modules if m is not owner], prefetch), build)


def state_dict_mismatch(module: torch.nn.Module, sd: Dict) -> Tuple[List[str], List[str]]:
    """``(missing, unexpected)`` keys of state dict ``sd`` against ``module``'s, sorted: for a
    short error message (torch's own lists every key: kilobytes for a foreign file)."""
    want = set(module.state_dict())
    return sorted(want - set(sd)), sorted(set(sd) - want)


def describe_mismatch(missing: List[str], unexpected: List[str], shown: int = 3) -> str:
    """``"N missing key(s) (e.g. [...]), M unexpected (e.g. [...])"`` for
    :func:`state_dict_mismatch`'s lists (a few keys of each)."""
    return (f"{len(missing)} missing key(s) (e.g. {missing[:shown]}), {len(unexpected)} "
            f"unexpected (e.g. {unexpected[:shown]})")


#: Float dtypes NumPy reads in place (a CPU tensor's ``.numpy()`` is a view: no copy).
_NUMPY_FLOATS = (torch.float32, torch.float64, torch.float16)


def first_non_finite(tensors: Dict[str, torch.Tensor]) -> Optional[str]:
    """The name of the first floating-point tensor of ``tensors`` holding NaN or inf, else
    None. CPU float32 / float64 / float16 tensors are checked by NumPy (4 ms for SlimCAE's 271
    state tensors on a Zen 3, ``torch.isfinite(v).all()`` 18 ms: one allocation and two ops per
    tensor), the others by torch."""
    for k, v in tensors.items():
        if not v.is_floating_point() or not v.numel():
            continue
        arr = None
        if v.device.type == "cpu" and v.dtype in _NUMPY_FLOATS and v.layout == torch.strided:
            try:
                arr = v.detach().numpy()
            except (RuntimeError, TypeError):   # (e.g. a tensor subclass, a negated view)
                pass
        if not (np.isfinite(arr).all() if arr is not None else bool(torch.isfinite(v).all())):
            return k
    return None
