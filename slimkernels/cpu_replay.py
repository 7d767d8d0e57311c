"""Replays of a codec's transforms on the CPU: the compiled kernels' calls recorded once, then
re-issued without the Python between them.

At narrow widths a SlimCAE transform on a CPU spends a fifth of its time in Python: the layers'
dispatch (which kernel, which cached weight pack, which layout), run between kernels that have
just evicted the interpreter's objects from the caches. When every step of a transform is a
call of the compiled kernels (``slimkernels._cpu_kernels``) plus allocations and views (the
bf16 transforms at w=48 and 72 on an AMX CPU, the fp32 analysis), :class:`ReplayCache` records
those calls once per (transform, width, precision, input shape / dtype / strides, thread count,
dispatch switches) and re-issues them afterwards with the new input's address and the
intermediate buffers in two arenas planned by their lifetimes (about the eager call's peak),
allocated per call (the buffers dead before the output is first written in one freed right
then, the others in one freed when the call returns, as the eager call's memory; a per-thread
scratch buffer the kernels used, the Winograd workspace, is the replaying thread's own,
``_recording.scratch``): the SlimCAE w=48
encoder on a Kodak image 1.83 -> 1.36 ms (2 threads, AMX Xeon).

Safety, in order:

* A recording fails (the key then runs eagerly for good) when the transform calls anything of
  PyTorch's API but a query, an allocation or a view (a oneDNN convolution, a copy), hands a
  kernel an address that is not inside the input, a buffer the call allocated, a cached weight
  pack the call read, or a parameter / buffer of the model, or returns a tensor its kernels did
  not write.
* The first use after recording checks the replay against the eager transform, its arena
  filled with NaN first, so that a step the recording missed shows; any difference drops the
  recording.
* A replay re-checks the environment switches the recording read and the module-level dispatch
  switches (``slimkernels.ops.*`` constants), runs only while no module of the model has hooks
  or an instance-level ``forward`` and each module class has the ``forward`` it had when
  recorded, and compares every kernel's return value with the recorded one (a
  difference drops the recording and runs the eager call).
* A plain attribute set on one of the library's modules (``layer.padding = 1``,
  ``gdn.inverse = True``, ``model.train()``) drops the recordings too (the codec keys them by
  ``_state.attribute_version``, :class:`slimkernels._state.WatchedAttributes`); one set on a
  module class of your own inside the model is not seen: call ``clear_caches()`` after it.
* The cache is keyed by the model's state key (every parameter and buffer's identity, version
  counter and storage, :meth:`slimkernels.SlimCodec.model_id`): an update of the weights drops
  every recording (writes through ``.data`` bypass version counters: call ``clear_caches()``).
  A recording keeps the cached weight packs it read alive.
"""
from __future__ import annotations

import os
import sys
import threading
import weakref
from collections import OrderedDict
from typing import Callable, Hashable, List, Optional, Tuple

import torch
from torch.overrides import TorchFunctionMode

from . import _recording
from ._hooks import global_hooks as _global_hooks, hook_dicts as _hook_dicts, \
    hooked as _hooked
from ._env import _getenv

__all__ = ["ReplayCache", "dispatch_switches"]

#: The modules whose UPPER_CASE constants steer the CPU dispatch (a replay is keyed by them).
SWITCH_MODULES = ("slimkernels.ops.conv", "slimkernels.ops.gdn", "slimkernels.ops.image_io",
                  "slimkernels.ops.conv_image", "slimkernels.ops.winograd",
                  "slimkernels.backend", "slimkernels.codec")

# What a recorded transform may call of PyTorch's Python API (seen by a TorchFunctionMode, which,
# unlike a TorchDispatchMode, does not import torch._dynamo): queries, allocations, and views (the
# ones marked * only when their result shares the input's storage: else they computed a copy).
_QUERIES = {"__get__", "dim", "size", "stride", "numel", "element_size", "storage_offset",
            "data_ptr", "is_contiguous", "is_floating_point", "is_complex", "is_inference",
            "get_device", "is_pinned", "untyped_storage", "nbytes", "itemsize"}
_ALLOCATIONS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}
_VIEWS = {"permute", "view", "as_strided", "detach", "unsqueeze", "squeeze", "transpose", "t",
          "narrow", "expand", "unflatten", "flatten", "reshape", "view_as", "__getitem__",
          "contiguous", "to", "type_as", "float", "bfloat16", "alias"}
_POINTER_MIN = 1 << 32   # an int argument at least this large must be an address we know
#: Uses of a key after a recording failed for a reason that may not recur (a weight cache built
#: during it: another model's clear_caches(), an LRU eviction, first calls from several threads;
#: hooks present then) before it is recorded again (it stayed eager for good).
RETRY_AFTER = 16


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
    of the module, :func:`slimkernels._cpu.cpu_kernels`), the byte ranges it allocated (a
    TorchFunctionMode; no reference is held, so the call's memory comes and goes as when eager),
    in one sequence with the calls, the cached values it read and the environment switches it
    read."""

    def __init__(self):
        self.calls: List[Tuple[int, str, tuple, dict, object]] = []   # (seq, name, ...)
        self.allocated: List[Tuple[int, int, int]] = []   # (seq, start, end) byte ranges
        # per-thread scratch buffers used: (seq, start, end, provider) (_recording.scratch)
        self.scratches: List[Tuple[int, int, int, Callable]] = []
        self.kept: List[torch.Tensor] = []
        self.env: dict = {}
        self.error: Optional[str] = None
        self.transient: Optional[str] = None   # (slimkernels._recording.transient)
        self.effects: List[Callable[[], None]] = []   # (slimkernels._recording.on_replay)
        self.seq = 0

    # -- hooks (slimkernels._recording) --
    def keep_value(self, value) -> None:
        self.kept.extend(_tensors(value))

    def on_replay(self, fn: Callable[[], None]) -> None:
        self.effects.append(fn)

    def env_read(self, name: str) -> None:
        if name not in self.env:
            self.env[name] = _getenv(name)   # as set (None: unset), whatever the default

    def scratch(self, t: torch.Tensor, provider: Callable) -> None:
        self.seq += 1
        a, b = _storage_range(t)
        if b > a:
            self.scratches.append((self.seq, a, b, provider))

    def allocation(self, t: torch.Tensor) -> None:
        self.seq += 1
        a, b = _storage_range(t)
        if b > a:
            self.allocated.append((self.seq, a, b))

    def kernels(self, module):
        rec = self

        class _Proxy:
            def __getattr__(self, name):
                f = getattr(module, name)
                if not callable(f):
                    return f

                def call(*args, **kwargs):
                    r = f(*args, **kwargs)
                    rec.seq += 1
                    rec.calls.append((rec.seq, name, args, kwargs, r))
                    return r
                return call
        return _Proxy()


def _shares(out, args) -> bool:
    """Every tensor in ``out`` is a view of a tensor argument (not a new buffer)."""
    bases = {t.untyped_storage().data_ptr() for t in _tensors(args)}
    outs = list(_tensors(out))
    return bool(outs) and all(t.untyped_storage().data_ptr() in bases for t in outs)


class _RecordingMode(TorchFunctionMode):
    """The torch-function mode of a recording (:func:`_record`): notes the allocations of the
    call and the first torch op a replay cannot repeat. One class for every recording (a class
    per recording made dynamo compile a compiled function run inside again for each, its guards
    on the mode stack failing: past its recompile limit a fullgraph one failed the call)."""

    def __init__(self, rec: "_Recorder"):
        super().__init__()
        self.rec = rec

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rec = self.rec
        if torch.compiler.is_dynamo_compiling():   # (dynamo traces this mode through a
            # compiled function or submodule, e.g. one compiled whole: no storage queries)
            if rec.error is None:
                rec.error = "the transform runs torch.compile'd code, which a replay cannot " \
                            "repeat"
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in _ALLOCATIONS:
            for t in _tensors(out):
                rec.allocation(t)
        elif name not in _QUERIES and not (name in _VIEWS and _shares(out, args)) and \
                rec.error is None:
            rec.error = f"the transform runs torch's {name or func}, which a replay " \
                        f"cannot repeat"
        return out


def _record(fn: Callable, x: torch.Tensor):
    """Run ``fn(x)`` eagerly while recording it; returns ``(recorder, output)``."""
    rec = _Recorder()
    token = _recording.ACTIVE.set(rec)
    try:
        with _RecordingMode(rec):
            y = fn(x)
    finally:
        _recording.ACTIVE.reset(token)
    return rec, y


def _plan(lives: List[Tuple[int, int, int]], align: int = 64) -> Tuple[List[int], int]:
    """Offsets in one arena for buffers ``(first step, last step, bytes)`` such that buffers
    live at the same step do not overlap (first fit, largest first: a transform's chain of
    layer outputs packs into about its two largest neighbours, the eager call's peak); and
    its size."""
    order = sorted(range(len(lives)), key=lambda i: (-lives[i][2], lives[i][0]))
    offs = [0] * len(lives)
    placed: List[int] = []
    total = 0
    for i in order:
        f, l, n = lives[i]
        busy = sorted((offs[j], offs[j] + lives[j][2]) for j in placed
                      if not (lives[j][1] < f or l < lives[j][0]))
        o = 0
        for a, b in busy:
            if o + n <= a:
                break
            o = max(o, -(-b // align) * align)
        offs[i] = o
        placed.append(i)
        total = max(total, o + n)
    return offs, total


def _arenas(lives: dict, born: int, out_bytes: int) -> Tuple[dict, Tuple[int, int]]:
    """Where a replay's intermediate buffers go: ``lives`` maps each to ``(first step, last
    step, bytes)``; the output (``out_bytes``) is allocated at step ``born``. Returns ``({buffer:
    (_EARLY or _LATE, offset)}, (early arena bytes, late arena bytes))``: one arena (the late one,
    held through the call) unless two give a lower peak, the buffers dead before ``born`` in the
    early one, freed before the output is allocated (decoding at w=48: dec1's output is dead when
    dec3 writes the image; an encoder's large early buffers would only add to the late ones)."""
    def plan(ks):
        offs, total = _plan([lives[k] for k in ks])
        return dict(zip(ks, offs)), total
    keys = sorted(lives)
    early = [k for k in keys if lives[k][1] < born]
    (ae, te), (al, tl) = plan(early), plan([k for k in keys if lives[k][1] >= born])
    one, t1 = plan(keys)
    if max(te + tl, tl + out_bytes) < t1 + out_bytes:
        at = {k: (_EARLY, o) for k, o in ae.items()}
        at.update((k, (_LATE, o)) for k, o in al.items())
        return at, (te, tl)
    return {k: (_LATE, o) for k, o in one.items()}, (0, t1)


# Where an address fix points (the second item of a step's fixes): the input, the output's
# buffer, the arena of the buffers that die before the output is first written (freed right
# then), the arena of the others (freed when the replay returns); from _SCRATCH on, the
# replaying thread's scratch buffers (_recording.scratch), in the order of _Replay.scratch.
_X, _OUT, _EARLY, _LATE, _SCRATCH = 0, 1, 2, 3, 4


class _Replay:
    """One recorded transform: ``steps`` (kernel, arguments, address fixes, recorded result),
    the sizes of the two arenas its intermediate buffers live in (planned by lifetime: about the
    eager call's peak; allocated by each replay; the buffers dead before the output is first
    written in one freed right then, before the output is allocated, the others in one freed
    when the replay returns), the tensors it must keep, its output's buffer (allocated by each
    replay at the step that first writes it: the caller's tensor); or ``error``."""

    def __init__(self, error: Optional[str] = None, recording: bool = False,
                 transient: bool = False):
        self.error = error
        # the error may not recur (a cache built during the recording, hooks since removed):
        # the key is recorded again later instead of running eagerly for good
        self.transient = transient
        self.recording = recording   # a placeholder while one thread records the key
        self.verified = False
        self.steps: list = []
        self.keep: list = []
        self.output: Optional[Tuple] = None   # (bytes, element offset, dtype, shape, stride)
        self.env: dict = {}
        self.effects: tuple = ()         # the recorded call's Python side effects (callables)
        self.hooks: list = []
        self.root = None                 # a weak reference to the first module (the model)
        self.forwards: tuple = ()        # ((module class, its forward), ...) as recorded
        self.replays = 0
        self.arena_bytes = (0, 0)        # (early, late)
        self.scratch: tuple = ()         # ((provider, bytes), ...): per-thread scratch buffers
        self.out_step = 0                # the step that first writes the output

    @classmethod
    def build(cls, rec: _Recorder, x: torch.Tensor, y, state_tensors,
              modules=()) -> "_Replay":
        if rec.error is not None:
            return cls(rec.error, transient=rec.transient is not None)
        if not isinstance(y, torch.Tensor):
            return cls(f"the transform returned {type(y).__name__}, not a tensor")
        if not rec.calls:
            return cls("the transform calls no compiled kernel")
        hooks = _hook_dicts(modules)
        if _global_hooks() or _hooked(hooks):
            return cls("a module of the model has hooks (or its own forward)", transient=True)
        if modules:
            # the root's __dict__ holds the replay cache that holds this recording: not kept
            # (a reference cycle: a deleted model waited for the cyclic garbage collector); its
            # instance-level forward is looked up through a weak reference (runnable)
            hooks[0] = hooks[0][:4] + ({},)
        fixed_ranges = [_storage_range(t) for t in rec.kept]
        fixed_ranges += [_storage_range(t) for t in state_tensors if t.device.type == "cpu"]
        x0, x1 = x.data_ptr(), _storage_range(x)[1]   # offsets from x's first element
        allocs = rec.allocated
        scratches = rec.scratches
        providers: dict = {}   # provider -> [its index, the largest buffer's bytes]

        def owner(v: int, seq: int) -> int:
            """The latest allocation before ``seq`` holding address ``v``, or -1."""
            for k in range(len(allocs) - 1, -1, -1):
                s, a, b = allocs[k]
                if s < seq and a <= v < b:
                    return k
            return -1

        def scratch_of(v: int, seq: int, k: int) -> Optional[Tuple[int, int]]:
            """``(provider index, offset)`` when a scratch buffer reported before ``seq`` holds
            ``v``, later than allocation ``k`` (-1: none) if both do; else None."""
            for s, a, b, prov in reversed(scratches):
                if s < seq and a <= v < b:
                    if k >= 0 and allocs[k][0] > s:
                        return None
                    hit = providers.setdefault(prov, [len(providers), 0])
                    hit[1] = max(hit[1], b - a)
                    return hit[0], v - a
            return None
        first: dict = {}
        last: dict = {}
        raw = []
        for step, (seq, name, args, kwargs, result) in enumerate(rec.calls):
            if any(type(v) is int and v >= _POINTER_MIN for v in kwargs.values()):
                return cls(f"{name} got an address as a keyword argument")
            fixes = []
            for i, v in enumerate(args):
                if type(v) is not int or v < 65536:
                    continue
                if x0 <= v < x1:
                    fixes.append((i, -1, v - x0))
                elif any(a <= v < b for a, b in fixed_ranges):
                    continue                                  # a kept tensor: same address
                else:
                    k = owner(v, seq)
                    sc = scratch_of(v, seq, k) if scratches else None
                    if sc is not None:   # (k -2 - j: the replaying thread's scratch j)
                        fixes.append((i, -2 - sc[0], sc[1]))
                    elif k >= 0:
                        fixes.append((i, k, v - allocs[k][1]))
                        first.setdefault(k, step)
                        last[k] = step
                    elif v >= _POINTER_MIN:
                        return cls(f"{name} got an address ({v:#x}) outside the tensors the "
                                   f"replay keeps")
            raw.append((name, list(args), kwargs, fixes, result))
        ko = owner(y.data_ptr(), rec.seq + 1)
        if ko < 0 or ko not in first or y.data_ptr() + _extent(y) > allocs[ko][2]:
            return cls("the transform's output is not a buffer its kernels wrote")
        # the output gets a buffer of its own (it outlives the call), allocated at the step that
        # first writes it; the intermediates one arena freed when the replay returns, or, where
        # the peak is lower so, two: the buffers dead by then in one freed right before the
        # output is allocated, the others in one freed at the return
        at, sizes = _arenas({k: (first[k], last[k], allocs[k][2] - allocs[k][1])
                             for k in first if k != ko}, first[ko],
                            allocs[ko][2] - allocs[ko][1])
        at[ko] = (_OUT, 0)
        r = cls()
        r.arena_bytes = sizes
        r.out_step = first[ko]
        for name, args, kwargs, fixes, result in raw:
            r.steps.append((name, args, kwargs,
                            [(i, _X, off) if k == -1 else (i, _SCRATCH - 2 - k, off) if k < -1
                             else (i, at[k][0], at[k][1] + off) for i, k, off in fixes], result))
        r.scratch = tuple((prov, n) for prov, (_, n) in
                          sorted(providers.items(), key=lambda kv: kv[1][0]))
        r.keep = list(rec.kept) + [t.detach() for t in state_tensors]
        off = y.data_ptr() - allocs[ko][1]
        if off % y.element_size():
            return cls("the transform's output is not aligned to its element size")
        r.output = (allocs[ko][2] - allocs[ko][1], off // y.element_size(), y.dtype, y.shape,
                    y.stride())
        r.env = dict(rec.env)
        r.effects = tuple(rec.effects)
        r.hooks = hooks
        r.root = weakref.ref(modules[0]) if modules else None
        # each module class's forward as recorded (a class patched afterwards runs eagerly)
        r.forwards = tuple((c, c.forward) for c in {type(m) for m in modules})
        return r

    def runnable(self) -> bool:
        """The recording still describes the eager call: same environment switches, no hooks,
        the same ``forward`` on each module class."""
        for name, value in self.env.items():
            if _getenv(name) != value:
                return False
        for c, f in self.forwards:
            if c.forward is not f:
                return False
        root = self.root() if self.root is not None else None
        if root is not None and "forward" in root.__dict__:
            return False
        return not (_global_hooks() or _hooked(self.hooks))

    @property
    def nbytes(self) -> int:
        """Both arenas' bytes."""
        return sum(self.arena_bytes)

    def replay(self, kernels, x: torch.Tensor, poison: bool = False) -> Optional[torch.Tensor]:
        """Re-issue the steps on ``x`` in new arenas (``poison``: the arenas and the output's
        buffer filled with NaN first, so that a buffer the steps do not write shows); the output
        (a view of its buffer), or None when a kernel's result differs from the recorded one
        (the eager call must run)."""
        for effect in self.effects:   # (the recorded call's Python side effects)
            effect()
        nbytes, off, dtype, shape, stride = self.output
        early, late = (torch.empty(max(n, 1), dtype=torch.uint8) for n in self.arena_bytes)
        if poison:
            early.fill_(255)
            late.fill_(255)
        scratch = [prov(n) for prov, n in self.scratch]   # (this thread's; held till return)
        if poison:
            for t, (_, n) in zip(scratch, self.scratch):
                t.view(torch.uint8)[:n].fill_(255)
        base = [x.data_ptr(), 0, early.data_ptr(), late.data_ptr()] + \
            [t.data_ptr() for t in scratch]
        out = None
        for step, (name, args, kwargs, fixes, result) in enumerate(self.steps):
            if step == self.out_step:   # the early buffers are dead: their arena goes first
                del early
                out = torch.empty(nbytes, dtype=torch.uint8)
                if poison:
                    out.fill_(255)
                base[_OUT] = out.data_ptr()
                base[_EARLY] = 0
            args = list(args)   # (a recording may replay in several threads at once)
            for i, where, o in fixes:
                args[i] = base[where] + o
            if getattr(kernels, name)(*args, **kwargs) != result:
                return None
        if out is None:   # (steps edited away: the check against the eager call fails)
            out = torch.full((nbytes,), 255 if poison else 0, dtype=torch.uint8)
        self.replays += 1
        return torch.empty(0, dtype=dtype).set_(out.untyped_storage(), off, shape, stride)


def _extent(t: torch.Tensor) -> int:
    """Bytes from ``t``'s first element to the end of its last."""
    if t.numel() == 0:
        return 0
    return (sum((n - 1) * st for n, st in zip(t.shape, t.stride())) + 1) * t.element_size()


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality of two tensors of one shape and dtype (NaN bits included)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.is_floating_point:
        ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.contiguous().view(ints), b.contiguous().view(ints))
    return torch.equal(a, b)


#: Every ReplayCache, so that a fork()ed child gives each a free lock (a fork while another
#: thread held one left the child's copy locked for good: its next compress waited forever).
_CACHES: "weakref.WeakSet" = weakref.WeakSet()


_HELD: list = []   # the caches whose locks _before_fork took (released after the fork)
#: One fork at a time through the hooks: two threads forking at once shared _HELD (the second's
#: after-hook released nothing: a replay lock held for good, every later compress blocked).
_FORK_LOCK = threading.Lock()


def _before_fork() -> None:
    # no thread inside a cache's bookkeeping while the process is copied (as ops._cache); the
    # locks taken in one order (by id) by one forking thread at a time
    _FORK_LOCK.acquire()
    _HELD[:] = sorted(_CACHES, key=id)
    for c in _HELD:
        c._lock.acquire()


def _after_fork_in_parent() -> None:
    for c in reversed(_HELD):
        c._lock.release()
    _HELD.clear()
    _FORK_LOCK.release()


def _new_locks_in_child() -> None:
    global _FORK_LOCK
    for c in list(_CACHES):
        c._lock = threading.RLock()
        # a recording another thread of the parent was making never completes here
        for k in [k for k, e in c._entries.items() if e.recording]:
            del c._entries[k]
    _HELD.clear()
    _FORK_LOCK = threading.Lock()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_new_locks_in_child)


class ReplayCache:
    """Recorded CPU transforms of one model, for its current weights (see the module docstring).

    Args:
        max_entries: recordings kept (least recently used dropped first; a recording holds
            its steps and the cached weight packs they read, no activations). Keys whose
            transform cannot be replayed are remembered apart (up to ``8 * max_entries``) and
            run eagerly.
    """

    def __init__(self, max_entries: int = 8):
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: "OrderedDict[Hashable, _Replay]" = OrderedDict()
        self._failed: "OrderedDict[Hashable, str]" = OrderedDict()
        self._seen: "OrderedDict[Hashable, int]" = OrderedDict()
        self._state = None
        self._lock = threading.RLock()
        _CACHES.add(self)

    def __len__(self) -> int:
        return len(self._entries)

    def __getstate__(self):
        return {"max_entries": self.max_entries}

    def __setstate__(self, d):
        self.__init__(d["max_entries"])

    def __deepcopy__(self, memo):
        return ReplayCache(self.max_entries)

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

    def _retry_later(self, full) -> None:
        """A recording that failed for a reason that may not recur: dropped, and the key
        recorded again after :data:`RETRY_AFTER` more uses (eager until then)."""
        with self._lock:
            self._entries.pop(full, None)
            self._seen[full] = 1 - RETRY_AFTER
            self._seen.move_to_end(full)

    def _fail(self, full, why: str) -> None:
        with self._lock:
            self._entries.pop(full, None)
            self._failed[full] = why
            while len(self._failed) > 8 * self.max_entries:
                self._failed.popitem(last=False)

    def run(self, key: Hashable, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
            state, state_tensors: Callable[[], list], kernels, modules: Callable[[], list] = list,
            record_after: int = 2) -> torch.Tensor:
        """``fn(x)`` for a CPU ``x`` (no gradient), replayed when a verified recording for
        ``key``, ``x``'s shape / dtype / strides, the thread count and the dispatch switches
        exists; recorded at the key's ``record_after``-th use and verified at the next.

        Args:
            state: the model's state key (a recording is dropped when it changes).
            state_tensors: ``() -> list`` of the model's parameters and buffers (read when
                recording: addresses inside them are allowed).
            kernels: the compiled kernels' module (``slimkernels._cpu_kernels``).
            modules: ``() -> list`` of the modules ``fn`` may call (read when recording): a
                replay runs only while none has hooks or an instance ``forward``.

        Returns:
            ``fn(x)`` (from a replay, a view of the output buffer the replay allocated: a tensor
            of its own, as the eager call's).
        """
        if x.requires_grad and torch.is_grad_enabled():
            return fn(x)
        full = (key, tuple(x.shape), x.dtype, x.stride(), torch.get_num_threads(),
                dispatch_switches())
        with self._lock:
            if state != self._state:
                self._entries.clear()
                self._failed.clear()
                self._seen.clear()
                self._state = state
            entry, recorder, counted = None, False, False
            if full in self._failed:
                self._failed.move_to_end(full)
            elif full in self._entries:
                entry = self._entries[full]
                self._entries.move_to_end(full)
            else:
                uses = self._seen.pop(full, 0) + 1
                if uses < record_after:
                    self._seen[full] = uses
                    counted = True
                    while len(self._seen) > 8 * self.max_entries:
                        self._seen.popitem(last=False)
                else:
                    entry, recorder = _Replay(recording=True), True   # this thread records
                    self._entries[full] = entry
                    while len(self._entries) > self.max_entries:
                        self._entries.popitem(last=False)
        if entry is None or (entry.recording and not recorder):
            if not counted:
                return fn(x)   # (a key that failed, or another thread records it now)
            try:
                return fn(x)
            except BaseException:
                # a call that raised (e.g. compress's image refused by its first conv) is not a
                # use: it may have built some of the caches the transform reads, and a recording
                # at the next use would then see the rest built during it, and wait (transient)
                with self._lock:
                    if self._seen.get(full, 0) > 0:
                        self._seen[full] -= 1
                raise
        if recorder:
            mods = modules()
            if _global_hooks() or _hooked(_hook_dicts(mods)):
                # hooks or an instance-level forward (a torch.compile'd submodule has one): not
                # recorded now, tried again later (a compiled module run under the recording's
                # mode was compiled again for it, at every new key, until dynamo's recompile
                # limit failed a fullgraph one or left it uncompiled for good)
                self._retry_later(full)
                return fn(x)
            try:   # (BaseException: a Ctrl-C here left the placeholder, and the key eager
                rec, y = _record(fn, x)   # for good)
                entry = _Replay.build(rec, x, y, state_tensors(), mods)
            except BaseException:
                with self._lock:
                    self._entries.pop(full, None)
                raise
            del rec
            if entry.error is not None:
                if entry.transient:
                    self._retry_later(full)
                else:
                    self._fail(full, entry.error)
                return y
            with self._lock:
                if full in self._entries:
                    self._entries[full] = entry
            return y
        if not entry.runnable():
            return fn(x)
        if not entry.verified:
            y = fn(x)
            r = entry.replay(kernels, x, poison=True)
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
