"""Replays of a codec's transforms on the CPU: the compiled kernels' calls recorded once, then
re-issued without the Python between them.

At narrow widths a SlimCAE transform on a CPU spends a third of its time in Python: the layers'
dispatch (which kernel, which cached weight pack, which layout), run between kernels that have
just evicted the interpreter's objects from the caches. When every step of a transform is a
call of the compiled kernels (``slimkernels._cpu_kernels``) plus allocations and views (the
bf16 transforms at w=48 and 72 on an AMX CPU, the fp32 analysis), :class:`ReplayCache` records
those calls once per (transform, width, precision, input shape / dtype / strides, thread count,
thread, dispatch switches) and re-issues them afterwards with the new input's address: the
SlimCAE w=48 encoder on a Kodak image 1.83 -> 1.36 ms (2 threads, AMX Xeon).

Safety, in order:

* A recording fails (the key then runs eagerly for good) when the transform runs any PyTorch
  op other than an allocation or a view (a oneDNN convolution, a copy), hands a kernel an
  address that is not inside the input, a tensor allocated by the call, a cached weight pack
  the call read, or a parameter / buffer of the model, or returns a tensor it did not allocate.
* The first use after recording checks the replay against the eager transform: the recording's
  buffers are filled with NaN first, so that a step the recording missed shows; any difference
  drops the recording.
* A replay re-checks the environment switches the recording read and the module-level dispatch
  switches (``slimkernels.ops.*`` constants), runs only while no module it called has hooks,
  and compares every kernel's return value with the recorded one (falling back to the eager
  call on a difference).
* The cache is keyed by the model's state key (every parameter and buffer's identity, version
  counter and storage, :meth:`slimkernels.SlimCodec.model_id`): an update of the weights drops
  every recording (writes through ``.data`` bypass version counters: call ``clear_caches()``).

A recording keeps the memory of one transform call (its intermediate tensors are reused by every
replay) and the weight packs it read. The transform's output is the recording's own buffer: the
caller must be done with it before its thread's next call of the same key (compress quantizes it,
decompress converts it, in the same call).
"""
from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from typing import Callable, Hashable, List, Optional, Tuple

import torch

from . import _recording
from ._env import _getenv

__all__ = ["ReplayCache", "dispatch_switches"]

#: The modules whose UPPER_CASE constants steer the CPU dispatch (a replay is keyed by them).
SWITCH_MODULES = ("slimkernels.ops.conv", "slimkernels.ops.gdn", "slimkernels.ops.image_io",
                  "slimkernels.ops.conv_image", "slimkernels.ops.winograd",
                  "slimkernels.ops.latents", "slimkernels.backend", "slimkernels.codec")

_ALLOCATIONS = {"aten.empty.memory_format", "aten.empty_strided.default",
                "aten.empty_like.default", "aten.new_empty.default",
                "aten.new_empty_strided.default"}
_VIEWS = {"aten.permute.default", "aten.view.default", "aten.as_strided.default",
          "aten.detach.default", "aten.alias.default", "aten.slice.Tensor", "aten.select.int",
          "aten.unsqueeze.default", "aten.squeeze.dim", "aten.transpose.int", "aten.t.default",
          "aten.expand.default", "aten._reshape_alias.default", "aten.unflatten.int",
          "aten.view.dtype", "aten.lift_fresh.default"}
_POINTER_MIN = 1 << 32   # an int argument at least this large must be an address we know


_SWITCH_NAMES: dict = {}   # module name -> (module, its switch names)


def dispatch_switches() -> Tuple:
    """The values of the UPPER_CASE bool / int / float / str / None constants of
    :data:`SWITCH_MODULES` (imported ones; names listed at their first call), in a tuple: part
    of every replay key, so that setting one (as the tests and benchmarks do) is seen."""
    out = []
    for name in SWITCH_MODULES:
        hit = _SWITCH_NAMES.get(name)
        if hit is None:
            mod = sys.modules.get(name)
            if mod is None:
                continue
            hit = _SWITCH_NAMES[name] = (mod, tuple(
                k for k, v in vars(mod).items()
                if k.isupper() and (v is None or isinstance(v, (bool, int, float, str)))))
        d = hit[0].__dict__
        out.extend([d.get(k) for k in hit[1]])
    return tuple(out)


def _storage_range(t: torch.Tensor) -> Tuple[int, int]:
    s = t.untyped_storage()
    p = s.data_ptr()
    return p, p + s.nbytes()


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


class _Recorder:
    """Collects one eager transform call: the compiled kernels' calls (through a logging proxy
    of the module, :func:`slimkernels._cpu.cpu_kernels`), the tensors it allocated or viewed
    (a TorchDispatchMode), the cached values it read, the environment switches it read and the
    modules it called."""

    def __init__(self):
        self.calls: List[Tuple[str, tuple, dict, object]] = []
        self.allocated: List[torch.Tensor] = []
        self.viewed: List[torch.Tensor] = []
        self.kept: List[torch.Tensor] = []
        self.env: dict = {}
        self.modules: list = []
        self.error: Optional[str] = None

    # -- hooks (slimkernels._recording) --
    def keep_value(self, value) -> None:
        self.kept.extend(_tensors(value))

    def env_read(self, name: str, value) -> None:
        if name not in self.env:
            self.env[name] = _getenv(name)   # as set (None: unset), whatever the default

    def kernels(self, module):
        rec = self

        class _Proxy:
            def __getattr__(self, name):
                f = getattr(module, name)
                if not callable(f):
                    return f

                def call(*args, **kwargs):
                    r = f(*args, **kwargs)
                    rec.calls.append((name, args, kwargs, r))
                    return r
                return call
        return _Proxy()


def _record(fn: Callable, x: torch.Tensor):
    """Run ``fn(x)`` eagerly while recording it; returns ``(recorder, output)``."""
    from torch.utils._python_dispatch import TorchDispatchMode

    rec = _Recorder()

    class _Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = str(func)
            if name in _ALLOCATIONS:
                rec.allocated.extend(_tensors(out))
            elif name in _VIEWS:
                rec.viewed.extend(_tensors(out))
            elif rec.error is None:
                rec.error = f"the transform runs {name}, which a replay cannot repeat"
            return out

    def pre_hook(module, args):
        rec.modules.append(module)

    token = _recording.ACTIVE.set(rec)
    handle = torch.nn.modules.module.register_module_forward_pre_hook(pre_hook)
    try:
        with _Mode():
            y = fn(x)
    finally:
        handle.remove()
        _recording.ACTIVE.reset(token)
    return rec, y


def _module_hooked(m) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or
                getattr(m, "_backward_pre_hooks", None) or "forward" in m.__dict__)


def _global_hooks() -> bool:
    mm = torch.nn.modules.module
    return any(bool(getattr(mm, n, None)) for n in (
        "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
        "_global_backward_pre_hooks", "_global_forward_hooks_always_called"))


class _Replay:
    """One recorded transform: ``steps`` (kernel, arguments with the input's addresses as
    offsets, recorded result), the tensors it must keep, its output; or ``error``."""

    def __init__(self, error: Optional[str] = None):
        self.error = error
        self.verified = False
        self.steps: list = []
        self.keep: list = []
        self.buffers: list = []
        self.output: Optional[torch.Tensor] = None
        self.env: dict = {}
        self.modules: list = []
        self.replays = 0
        self.nbytes = 0

    @classmethod
    def build(cls, rec: _Recorder, x: torch.Tensor, y, state_tensors) -> "_Replay":
        if rec.error is not None:
            return cls(rec.error)
        if not isinstance(y, torch.Tensor):
            return cls(f"the transform returned {type(y).__name__}, not a tensor")
        if not rec.calls:
            return cls("the transform calls no compiled kernel")
        if _global_hooks() or any(_module_hooked(m) for m in rec.modules):
            return cls("a module of the transform has hooks")
        owned = [_storage_range(t) for t in rec.allocated]
        known = owned + [_storage_range(t) for t in rec.viewed + rec.kept]
        known += [_storage_range(t) for t in state_tensors if t.device.type == "cpu"]
        x0, x1 = x.data_ptr(), _storage_range(x)[1]   # offsets from x's first element
        yr = _storage_range(y)
        if not any(a <= yr[0] and yr[1] <= b for a, b in owned):
            return cls("the transform's output is not a tensor it allocated")
        r = cls()
        for name, args, kwargs, result in rec.calls:
            fixed = {}
            for i, v in enumerate(args):
                if type(v) is not int or v < 65536:
                    continue
                if x0 <= v < x1:
                    fixed[i] = v - x0
                elif v >= _POINTER_MIN and not any(a <= v < b for a, b in known):
                    return cls(f"{name} got an address ({v:#x}) outside the tensors the "
                               f"replay keeps")
            if any(type(v) is int and v >= _POINTER_MIN for v in kwargs.values()):
                return cls(f"{name} got an address as a keyword argument")
            r.steps.append((name, list(args), kwargs, fixed, result))
        r.keep = rec.allocated + rec.viewed + rec.kept + [t.detach() for t in state_tensors]
        r.buffers = rec.allocated
        r.nbytes = sum(t.untyped_storage().nbytes() for t in rec.allocated)
        r.output = y
        r.env = dict(rec.env)
        r.modules = list({id(m): m for m in rec.modules}.values())
        return r

    def runnable(self) -> bool:
        """The recording still describes the eager call: same environment switches, no hooks."""
        for name, value in self.env.items():
            if _getenv(name) != value:
                return False
        return not (_global_hooks() or any(_module_hooked(m) for m in self.modules))

    def replay(self, kernels, x: torch.Tensor) -> Optional[torch.Tensor]:
        """Re-issue the steps on ``x``; the output buffer, or None when a kernel's result
        differs from the recorded one (the eager call must run)."""
        base = x.data_ptr()
        for name, args, kwargs, fixed, result in self.steps:
            for i, off in fixed.items():
                args[i] = base + off
            if getattr(kernels, name)(*args, **kwargs) != result:
                return None
        self.replays += 1
        return self.output

    def poison(self) -> None:
        """Fill the recording's own buffers with NaN (all-ones bytes)."""
        for t in self.buffers:
            t.untyped_storage().fill_(255)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality of two tensors of one shape and dtype (NaN bits included)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.is_floating_point:
        ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.contiguous().view(ints), b.contiguous().view(ints))
    return torch.equal(a, b)


class ReplayCache:
    """Recorded CPU transforms of one model, for its current weights (see the module docstring).

    Args:
        max_entries: recordings kept (least recently used dropped first); each holds the
            memory of one transform call. Keys whose transform cannot be replayed are
            remembered apart (up to ``8 * max_entries``, without memory) and run eagerly.
        max_bytes: the recordings' own buffers together at most this many bytes (least
            recently used dropped first; one larger than this is not kept).
    """

    def __init__(self, max_entries: int = 8, max_bytes: int = 256 << 20):
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: "OrderedDict[Hashable, _Replay]" = OrderedDict()
        self._failed: "OrderedDict[Hashable, str]" = OrderedDict()
        self._seen: "OrderedDict[Hashable, int]" = OrderedDict()
        self._state = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __getstate__(self):
        return {"max_entries": self.max_entries, "max_bytes": self.max_bytes}

    def __setstate__(self, d):
        self.__init__(d["max_entries"], d["max_bytes"])

    def __deepcopy__(self, memo):
        return ReplayCache(self.max_entries, self.max_bytes)

    def nbytes(self) -> int:
        """Bytes of the recordings' own buffers."""
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def clear(self) -> None:
        """Drop every recording and the use counts of keys not recorded yet."""
        with self._lock:
            self._entries.clear()
            self._failed.clear()
            self._seen.clear()

    def entries(self) -> List[_Replay]:
        """The recordings kept (for tests and benchmarks)."""
        with self._lock:
            return list(self._entries.values())

    def failures(self) -> List[str]:
        """Why the keys that run eagerly could not be replayed (for tests and benchmarks)."""
        with self._lock:
            return list(self._failed.values())

    def _fail(self, full, why: str) -> None:
        with self._lock:
            self._entries.pop(full, None)
            self._failed[full] = why
            while len(self._failed) > 8 * self.max_entries:
                self._failed.popitem(last=False)

    def run(self, key: Hashable, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
            state, state_tensors: Callable[[], list], kernels,
            record_after: int = 2) -> torch.Tensor:
        """``fn(x)`` for a CPU ``x`` (no gradient), replayed when a verified recording for
        ``key``, ``x``'s shape / dtype / strides, the thread count, this thread and the
        dispatch switches exists; recorded at the key's ``record_after``-th use and verified at
        the next.

        Args:
            state: the model's state key (a recording is dropped when it changes).
            state_tensors: ``() -> list`` of the model's parameters and buffers (read when
                recording: addresses inside them are allowed).
            kernels: the compiled kernels' module (``slimkernels._cpu_kernels``).

        Returns:
            ``fn(x)``; from a replay, the recording's own output buffer (valid until this
            thread's next call of the key).
        """
        if x.requires_grad and torch.is_grad_enabled():
            return fn(x)
        full = (key, tuple(x.shape), x.dtype, x.stride(), torch.get_num_threads(),
                threading.get_ident(), dispatch_switches())
        with self._lock:
            if state != self._state:
                self._entries.clear()
                self._failed.clear()
                self._seen.clear()
                self._state = state
            entry = None
            if full in self._failed:
                self._failed.move_to_end(full)
            elif full in self._entries:
                entry = self._entries[full]
                self._entries.move_to_end(full)
            else:
                uses = self._seen.pop(full, 0) + 1
                if uses < record_after:
                    self._seen[full] = uses
                    while len(self._seen) > 8 * self.max_entries:
                        self._seen.popitem(last=False)
                else:
                    entry = _Replay("recording")   # placeholder while this thread records
                    self._entries[full] = entry
                    while len(self._entries) > self.max_entries:
                        self._entries.popitem(last=False)
        if entry is None:
            return fn(x)
        if entry.error == "recording":
            try:
                rec, y = _record(fn, x)
            except Exception:
                with self._lock:
                    self._entries.pop(full, None)
                raise
            entry = _Replay.build(rec, x, y, state_tensors())
            if entry.error is not None:
                self._fail(full, entry.error)
                return y
            with self._lock:
                if full in self._entries:
                    self._entries[full] = entry
                    total = sum(e.nbytes for e in self._entries.values())
                    while total > self.max_bytes and self._entries:
                        _, old = self._entries.popitem(last=False)
                        total -= old.nbytes
            return y.clone()
        if not entry.runnable():
            return fn(x)
        if not entry.verified:
            y = fn(x)
            entry.poison()
            r = entry.replay(kernels, x)
            if r is not None and _same(r, y):
                entry.verified = True
            else:
                self._fail(full, "the replay differs from the eager transform")
            return y
        out = entry.replay(kernels, x)
        if out is None:   # data-dependent results: the recording does not describe the call
            self._fail(full, "a kernel returned another result than when recorded")
            return fn(x)
        return out
