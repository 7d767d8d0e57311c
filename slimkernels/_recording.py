"""The hooks a CPU replay recording (:mod:`slimkernels.cpu_replay`) listens on.

While a recording is active in this thread (a context variable: other threads are not
affected), :func:`slimkernels._cpu.cpu_kernels` hands out the recorder's logging proxy of the
compiled kernels, the weight caches report the values they return (the replay keeps them
alive) and :func:`slimkernels._env.getenv` reports the switches read (the replay re-reads them).
Outside a recording each hook costs one context-variable read.
"""
from __future__ import annotations

import contextvars
ACTIVE: contextvars.ContextVar = contextvars.ContextVar("slimkernels_recording", default=None)


def keep(value) -> None:
    """Report a cached value (a tensor, or tuples / lists of them) read by the recorded call."""
    rec = ACTIVE.get()
    if rec is not None:
        rec.keep_value(value)


def env_read(name: str) -> None:
    """Report that the recorded call read environment switch ``name``."""
    rec = ACTIVE.get()
    if rec is not None:
        rec.env_read(name)


def transient(why: str) -> None:
    """Report that the recorded call did one-off work a steady-state call does not (a weight
    cache built on a miss): a recording that fails because of it is tried again later instead
    of leaving its key eager for good."""
    rec = ACTIVE.get()
    if rec is not None:
        rec.transient = why


def on_replay(fn) -> None:
    """Report a side effect of the recorded call that its replays must repeat, as ``fn()`` (no
    arguments, run at every replay before its kernels): Python state the call set that the
    kernels alone would not (e.g. that compress's image was range-checked by its first conv,
    :func:`slimkernels.ops.image_io.checked_by_first_conv`)."""
    rec = ACTIVE.get()
    if rec is not None:
        rec.on_replay(fn)


def scratch(t, provider) -> None:
    """Report that the recorded call uses ``t``, a per-thread scratch buffer (its contents dead
    between calls) obtained from ``provider(nbytes)``, which returns the calling thread's buffer
    of at least ``nbytes`` bytes: a replay calls it, in the replaying thread, for the largest
    size the recording used, and addresses inside ``t`` then point into that buffer (no copy of
    it in the replay's arena, no buffer shared between threads)."""
    rec = ACTIVE.get()
    if rec is not None:
        rec.scratch(t, provider)

