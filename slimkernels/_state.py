"""One key for "these tensors are unchanged", shared by the caches built from weights."""
from typing import Iterable, Tuple

import torch


def tensor_state_key(tensors: Iterable[torch.Tensor]) -> Tuple:
    """``(id, version counter, data pointer)`` of each tensor: changes when a tensor is modified
    in place (optimizer step, ``load_state_dict``), replaced or moved to new storage. Writes
    through ``.data`` bypass version counters: the caches using this key need clearing then.
    A cache must keep references to the tensors of its key (or to views of them), so that a
    freed tensor's id and storage cannot be reused by a new tensor that then matches the key."""
    return tuple([(id(t), t._version, t.data_ptr()) for t in tensors])


def cached_on(owner, slot: str, tensors: Iterable[torch.Tensor], build, extra=None):
    """``build()``, cached in ``owner.__dict__[slot]`` until :func:`tensor_state_key` of
    ``tensors`` (or ``extra``) changes. The cache keeps the tensors, so that a freed tensor's id
    and storage cannot be reused by a new tensor that then matches the key. Drop it with
    ``owner.__dict__.pop(slot, None)``."""
    tensors = tuple(tensors)
    key = (extra, tensor_state_key(tensors))
    cache = owner.__dict__.get(slot)
    if cache is None or cache[0] != key:
        cache = (key, build(), tensors)
        owner.__dict__[slot] = cache
    return cache[1]
