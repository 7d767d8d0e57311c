"""CUDA-graph replays of a codec's transforms (``compress(..., cuda_graph=True)``).

On a GPU a SlimCAE transform at a small width is launch-bound: the second H200 sitting measured
the w=48 encoder at 0.70 ms per call with the Triton kernels launched from Python and 0.20 ms
replayed from a CUDA graph (``bench/results/cuda-nvidia-h200``). :class:`GraphCache` captures a
transform once per (transform, width, precision, input shape / dtype / strides, device) for the
current weights and replays it afterwards: the input is copied into the graph's static buffer,
the output is cloned out of it (a later replay must not change a tensor handed out before).

Weights are part of the capture (the kernels read them, and the cached casts / layouts of them,
by address), so the cache drops every graph when the model's id (its config and the version of
every parameter and buffer, :meth:`slimkernels.SlimCodec.model_id`) changes, and each graph keeps
the cached weight copies of its capture alive (the copy cache may drop them on its own). A transform the
graph cannot hold (a host synchronisation, a CPU fallback) is run eagerly for that key after one
warning.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Callable, Hashable, Optional

import torch

__all__ = ["GraphCache", "capture"]


class _Captured:
    """One captured call: ``static_in`` -> ``graph`` -> ``static_out``; or ``error`` (str) when
    the capture failed and the call runs eagerly. ``keep``: tensors the graph reads that it must
    keep alive (set by :class:`GraphCache`)."""

    def __init__(self, graph=None, static_in=None, static_out=None, error: Optional[str] = None):
        self.graph, self.static_in, self.static_out, self.error = graph, static_in, static_out, error
        self.keep: list = []


def capture(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
            warmup: int = 2) -> _Captured:
    """Capture ``fn(static_in)`` into a ``torch.cuda.CUDAGraph`` after ``warmup`` eager calls on a
    side stream (Triton's autotuning and the allocator's first requests happen there, outside
    the graph). ``x``: a CUDA tensor (its clone, same strides, is the static input). Returns the
    capture, or one with ``error`` set (the reason) when ``fn`` cannot be captured."""
    if x.device.type != "cuda":
        raise ValueError(f"capture needs a CUDA tensor, got one on {x.device}")
    static_in = x.clone()
    cur = torch.cuda.current_stream(x.device)
    side = torch.cuda.Stream(device=x.device)
    try:
        side.wait_stream(cur)
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn(static_in)
        cur.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = fn(static_in)
    except Exception as e:  # a sync or an allocation the graph cannot hold
        torch.cuda.synchronize(x.device)
        return _Captured(error=f"{type(e).__name__}: {e}"[:300])
    if not isinstance(static_out, torch.Tensor):
        return _Captured(error=f"the transform returned {type(static_out).__name__}, not a tensor")
    return _Captured(graph, static_in, static_out)


class GraphCache:
    """Captured transforms of one model, for its current weights (see the module docstring).

    Args:
        max_entries: graphs kept (least recently used dropped first); each holds its static
            input and output and the memory pool of one transform call.
        capturer: ``capture(fn, x) -> _Captured`` (tests pass a stand-in to run on CPU).
        keepalive: ``() -> list`` of tensors a capture may have read outside its own memory
            that another owner could free (the codec passes the conv weight-copy cache,
            :func:`slimkernels.ops.conv.cached_weight_copies`): each graph keeps those of its
            capture alive.
    """

    def __init__(self, max_entries: int = 4, capturer=capture, keepalive=None):
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._capture = capturer
        self._keepalive = keepalive
        self._entries: "OrderedDict[Hashable, _Captured]" = OrderedDict()
        self._model_id: Optional[bytes] = None
        self._warned: "OrderedDict[Hashable, None]" = OrderedDict()  # failed captures, warned
        self._seen: "OrderedDict[Hashable, int]" = OrderedDict()  # uses of keys not captured

    def __len__(self) -> int:
        return len(self._entries)

    # a model holding a cache stays copyable and picklable: the copy starts empty (graphs and
    # their static buffers belong to one process and one set of weights)
    def __getstate__(self):
        return {"max_entries": self.max_entries, "_capture": self._capture,
                "_keepalive": self._keepalive, "_entries": OrderedDict(), "_model_id": None,
                "_warned": OrderedDict(), "_seen": OrderedDict()}

    def __deepcopy__(self, memo):
        return GraphCache(self.max_entries, self._capture, self._keepalive)

    def clear(self) -> None:
        """Drop every graph (and its memory pool once the GPU is done with it), the use
        counts of keys not yet captured and the keys whose failed capture was warned about."""
        self._entries.clear()
        self._seen.clear()
        self._warned.clear()

    def run(self, key: Hashable, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
            model_id: Hashable, capture_after: int = 1) -> torch.Tensor:
        """``fn(x)``, from the graph captured for ``key`` and ``x``'s shape, dtype, strides and
        device (captured now if there is none for the weights ``model_id`` names).

        Args:
            model_id: what the graphs were captured for (the codec: its :meth:`model_id` and
                the modules' attribute version); another one drops them all.
            capture_after: capture at this use of a key (1: the first; 2: a key used once runs
                eagerly, so that a one-off image size costs no capture); earlier uses run
                ``fn(x)`` directly. Use counts of at most ``8 * max_entries`` keys are kept.

        Returns:
            a new tensor (cloned out of the graph's static output), as ``fn(x)`` would return.
        """
        if capture_after < 1:
            raise ValueError(f"capture_after must be >= 1, got {capture_after}")
        if model_id != self._model_id:
            self.clear()
            self._model_id = model_id
        full = (key, tuple(x.shape), x.dtype, x.stride(), str(x.device))
        entry = self._entries.get(full)
        if entry is None:
            uses = self._seen.pop(full, 0) + 1
            if uses < capture_after:
                self._seen[full] = uses
                while len(self._seen) > 8 * self.max_entries:
                    self._seen.popitem(last=False)
                return fn(x)
            entry = self._capture(fn, x)
            entry.keep = list(self._keepalive()) if self._keepalive is not None else []
            self._entries[full] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(full)
        if entry.error is not None:
            if full not in self._warned:
                self._warned[full] = None   # (warned once per key: at most 8 * max_entries kept)
                while len(self._warned) > 8 * self.max_entries:
                    self._warned.popitem(last=False)
                warnings.warn(f"cuda_graph: the transform {key!r} could not be captured "
                              f"({entry.error}); it runs without a CUDA graph", RuntimeWarning,
                              stacklevel=3)
            return fn(x)
        entry.static_in.copy_(x)
        entry.graph.replay()
        return entry.static_out.clone()
