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
