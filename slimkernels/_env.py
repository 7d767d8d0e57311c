"""Environment switches read at every call, cheaply.

``os.environ.get`` encodes the name and decodes the value on each call (~0.7 us); the ops read
their switches (``SLIMKERNELS_CPU_KERNELS``, ``SLIMKERNELS_BACKEND``) several times per layer
call. :func:`getenv` answers the same from CPython's own mapping behind ``os.environ`` (its
``_data`` dict of encoded names and values, which ``os.environ[...] = ...``, ``del`` and
``monkeypatch.setenv`` update): ~0.1 us. Where ``os.environ`` is not CPython's ``os._Environ``
(replaced by a plain dict, another interpreter) it falls back to ``os.environ.get``.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from . import _recording

__all__ = ["getenv", "switched_off"]

#: The spellings (stripped, any case) that turn a ``SLIMKERNELS_*`` on/off switch off.
OFF_VALUES = ("0", "false", "no", "off")

# torch.compiler.is_dynamo_compiling, looked up once (a few calls per layer read the switches;
# dynamo knows the function itself, whatever name it is called by). Not is_compiling: that reads
# a process-wide flag, set while any thread compiles (torch 2.13) or exports, which sent other
# threads' eager calls down the traced paths (10x slower compress, other bytes)
_dynamo_compiling = torch.compiler.is_dynamo_compiling

_ENCODED: dict = {}   # name -> (encoded name, the os._Environ type it was encoded for)


def getenv(name: str, default: Optional[str] = None) -> Optional[str]:
    """``os.environ.get(name, default)`` (str or ``default``), read at every call."""
    if _dynamo_compiling():   # (torch.compile traces os.environ.get, and no CPU replay
        return os.environ.get(name, default)   # records there: no context variable to read)
    v = _getenv(name, default)
    if _recording.ACTIVE.get() is not None:   # a CPU replay re-reads the switches it saw
        _recording.env_read(name)
    return v


def _getenv(name: str, default: Optional[str] = None) -> Optional[str]:
    env = os.environ
    data = getattr(env, "_data", None)
    hit = _ENCODED.get(name)
    if hit is not None and hit[1] is type(env) and type(data) is dict:
        v = data.get(hit[0])
        return default if v is None else env.decodevalue(v)
    try:
        if type(data) is dict:
            _ENCODED[name] = (env.encodekey(name), type(env))
    except (AttributeError, TypeError, ValueError):  # not CPython's os._Environ
        pass
    return env.get(name, default)


def switched_off(name: str) -> bool:
    """Whether the on/off switch ``name`` (``SLIMKERNELS_CPU_KERNELS``,
    ``SLIMKERNELS_AUTOTUNE``, ``SLIMKERNELS_TUNE_MALLOC``) is set to one of :data:`OFF_VALUES`
    (``0``, ``false``, ``no``, ``off``; spaces around and case ignored); unset or anything else:
    on. Read at every call, as :func:`getenv`."""
    v = getenv(name)
    return v is not None and v.strip().lower() in OFF_VALUES
