"""slimkernels._state: the module-tree state key (compiled walk and Python walk) and its cache."""
import importlib.util

import pytest
import torch
import torch.nn as nn

from slimkernels import _state
from slimkernels.models import SlimCAE

def _native_built() -> bool:
    return _state._STATE_KEY is not None


NATIVE = pytest.mark.skipif(not _native_built(), reason="slimkernels._state_key not built")
WALKS = [pytest.param(True, id="native", marks=NATIVE), pytest.param(False, id="python")]


def test_native_walk_is_built_with_the_coder():
    # the same compiler built slimkernels._coder: the optional state-key extension must be there
    assert importlib.util.find_spec("slimkernels._coder") is not None
    assert _native_built(), "slimkernels._state_key was not built (python setup.py build_ext)"


class Leaf(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 2))
        self.register_parameter("absent", None)
        self.register_buffer("persistent", torch.zeros(4))
        self.register_buffer("scratch", torch.ones(2), persistent=False)
        self.register_buffer("empty_slot", None)


class Tree(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = Leaf()
        self.seq = nn.Sequential(nn.Linear(2, 3), nn.Identity(), Leaf())
        self.none_child = None
        self.register_module("missing", None)
        self.top = nn.Parameter(torch.tensor(1.0))


def _names_of(m: nn.Module, tensors):
    by_id = {id(t): k for k, t in m.state_dict(keep_vars=True).items()}
    return sorted(by_id[id(t)] for t in tensors)


@pytest.mark.parametrize("native", WALKS)
def test_walk_collects_exactly_the_state_dict_tensors(native):
    m = Tree()
    _, tensors = _state.module_state_key(m, native=native)
    assert _names_of(m, tensors) == sorted(m.state_dict().keys())
    assert len(tensors) == len(m.state_dict())   # no duplicates, no None, no non-persistent


@NATIVE
def test_native_and_python_walks_agree_on_slimcae():
    m = SlimCAE(widths=(24, 16))
    _, a = _state.module_state_key(m, native=True)
    _, b = _state.module_state_key(m, native=False)
    assert len(a) == len(b) == len(m.state_dict())
    assert all(x is y for x, y in zip(a, b))            # same objects, same order


def _changes(native):
    """(description, mutation) pairs; each must change the key of a fresh Tree."""
    def inplace_param(m):
        with torch.no_grad():
            m.a.w.add_(1.0)

    def inplace_buffer(m):
        m.seq[2].persistent.fill_(2.0)

    def replace_param(m):
        m.a.w = nn.Parameter(m.a.w.detach().clone())

    def replace_buffer(m):
        m.a.persistent = torch.zeros(4)

    def data_swap(m):
        m.top.data = m.top.data + 1.0

    def dtype_move(m):
        m.double()

    def add_child(m):
        m.extra = nn.Linear(1, 1)

    def remove_child(m):
        del m.seq[0]

    def add_buffer(m):
        m.seq[1].register_buffer("new", torch.zeros(1))

    def swap_children(m):
        m.a, m.seq[2] = m.seq[2], m.a

    def load_state_dict(m):
        sd = {k: v.clone() + 1.0 for k, v in m.state_dict().items()}
        m.load_state_dict(sd)

    return [inplace_param, inplace_buffer, replace_param, replace_buffer, data_swap, dtype_move,
            add_child, remove_child, add_buffer, swap_children, load_state_dict]


@pytest.mark.parametrize("native", WALKS)
@pytest.mark.parametrize("change", _changes(True), ids=lambda f: f.__name__)
def test_key_changes_with_the_state(native, change):
    torch.manual_seed(0)
    m = Tree()
    k0, t0 = _state.module_state_key(m, native=native)
    k1, _ = _state.module_state_key(m, native=native)
    assert k1 == k0                                      # nothing changed: same key
    change(m)
    k2, _ = _state.module_state_key(m, native=native)
    assert k2 != k0, change.__name__
    del t0


@pytest.mark.parametrize("native", WALKS)
def test_key_ignores_non_persistent_buffers_and_grads(native):
    m = Tree()
    k0, _ = _state.module_state_key(m, native=native)
    m.a.scratch.fill_(5.0)                               # non-persistent: not model state
    m.a.w.grad = torch.ones_like(m.a.w)
    k1, _ = _state.module_state_key(m, native=native)
    assert k1 == k0


@NATIVE
def test_native_rejects_a_non_module_with_a_clear_error():
    with pytest.raises(AttributeError, match="_parameters"):
        _state.module_state_key(object())

    class Broken(nn.Module):
        pass
    b = Broken()
    object.__setattr__(b, "_parameters", [1, 2])
    with pytest.raises(TypeError, match="Broken._parameters is not a dict"):
        _state.module_state_key(b)


def test_cached_on_module_rebuilds_only_on_change():
    m = Tree()
    calls = []

    def build():
        calls.append(1)
        return len(calls)

    owner = type("Owner", (), {})()
    assert _state.cached_on_module(owner, "_c", m, build) == 1
    assert _state.cached_on_module(owner, "_c", m, build) == 1
    with torch.no_grad():
        m.seq[0].weight.mul_(2.0)
    assert _state.cached_on_module(owner, "_c", m, build) == 2
    assert _state.cached_on_module(owner, "_c", m, build, extra="cfg") == 3   # extra is keyed
    assert _state.cached_on_module(owner, "_c", m, build, extra="cfg") == 3


@pytest.mark.parametrize("native", WALKS)
def test_inference_tensors_never_give_a_matching_key(native):
    """A tree built under torch.inference_mode holds inference tensors, which have no version
    counter: the walk still works, and its key never matches a previous one (caches rebuild);
    a tree of ordinary tensors keeps matching keys."""
    with torch.inference_mode():
        m = Tree()
    k0, _ = _state.module_state_key(m, native=native)
    k1, _ = _state.module_state_key(m, native=native)
    assert k1 != k0
    calls = []
    owner = type("Owner", (), {})()
    for _ in range(3):
        _state.cached_on_module(owner, "_c", m, lambda: calls.append(1), )
    assert len(calls) == 3
    plain = Tree()
    assert _state.module_state_key(plain, native=native)[0] == \
        _state.module_state_key(plain, native=native)[0]


@pytest.mark.parametrize("native", [pytest.param(True, marks=NATIVE), False])
def test_module_key_changes_with_the_tree_not_only_its_tensors(native):
    """A layer without tensors added to or replaced in the tree changes the key with
    modules=True (the CPU replay ran a recording without the new layer)."""
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    k0, t0, m0 = _state.module_state_key(m, native=native, modules=True)
    assert _state.module_state_key(m, native=native, modules=True)[0] == k0
    assert len(m0) == 3 and len(t0) == 2
    m.append(torch.nn.Hardtanh())
    k1 = _state.module_state_key(m, native=native, modules=True)[0]
    m[2] = torch.nn.Tanh()
    k2 = _state.module_state_key(m, native=native, modules=True)[0]
    assert len({k0, k1, k2}) == 3


# ----------------------------------------------------------------- the compiled walk's prefetch
@NATIVE
@pytest.mark.parametrize("change", _changes(True), ids=lambda f: f.__name__)
def test_prefetch_list_gives_the_same_key_through_every_change(change):
    """A walk with a prefetch list (the previous walk's objects) keys exactly as one without,
    before and after each change, and leaves in the list what it visited: every module but the
    root, their dicts, and the state tensors (so the next walk prefetches the new tree)."""
    torch.manual_seed(0)
    m = Tree()
    pf = []
    for step in range(3):
        if step == 2:
            change(m)
        k_pf, t_pf, mods = _state.module_state_key(m, modules=True, prefetch=pf)
        k, t, _ = _state.module_state_key(m, modules=True)
        assert k_pf == k and all(a is b for a, b in zip(t_pf, t)) and len(t_pf) == len(t)
        ids = {id(o) for o in pf}
        assert id(m) not in ids and id(m.__dict__) not in ids     # no cycle through root's dict
        for mod in mods[1:]:
            assert id(mod) in ids and id(mod.__dict__) in ids
            assert {id(mod._parameters), id(mod._buffers), id(mod._modules)} <= ids
        assert all(id(x) in ids for x in t)
        # exactly those: nothing of an earlier tree is kept alive by the list
        want = {id(x) for mod in mods[1:] for x in (mod, mod.__dict__)}
        want |= {id(x) for mod in mods for x in (mod._parameters, mod._buffers, mod._modules)}
        want |= {id(x) for x in t}
        assert ids == want and len(pf) == len(want)


@NATIVE
def test_prefetch_list_of_anything_is_only_a_hint():
    """Whatever the list holds (a caller's mistake, or a tree since rebuilt) is replaced, never
    read as the state: the key is the walk's."""
    m = Tree()
    junk = [1, "a", {"x": 1}, torch.zeros(3), nn.Linear(1, 1), None] * 50
    k, _ = _state.module_state_key(m)
    assert _state.module_state_key(m, prefetch=junk)[0] == k
    assert not any(o is None or isinstance(o, (int, str)) for o in junk)
    with pytest.raises(TypeError, match="prefetch must be a list"):
        _state.module_state_key(m, prefetch=(1, 2))


@NATIVE
def test_prefetch_reads_the_tensor_impl_where_torch_keeps_it():
    """The TensorImpl prefetch finds where this torch keeps a tensor's TensorImpl address in its
    Python object (``_cdata``): without it the walk loses most of its cold gain silently."""
    import ctypes
    _state.module_state_key(Tree(), prefetch=[])
    off = _state._STATE_KEY.tensor_impl_offset()
    assert off > 0, "the TensorImpl offset was not found in this torch's tensor objects"
    for t in (torch.zeros(3), nn.Parameter(torch.ones(2)), torch.empty(0, dtype=torch.bfloat16)):
        assert ctypes.c_uint64.from_address(id(t) + off).value == t._cdata


def test_cached_on_module_keeps_its_prefetch_list_without_a_cycle():
    """cached_on_module keeps the walk's list with its cache (root's own object and dict are
    never in it): a model deleted after a cached build is freed without the cyclic collector."""
    import gc
    import weakref
    m = Tree()
    gc.collect()
    gc.disable()
    try:
        for _ in range(2):
            _state.cached_on_module(m, "_c", m, lambda: 1)
        pf = m.__dict__["_c"][2][2]
        assert (len(pf) > 0) == _native_built()
        refs = [weakref.ref(x) for x in m.modules()]
        del m, pf
        alive = sum(r() is not None for r in refs)
    finally:
        gc.enable()
    assert alive == 0, f"{alive} modules of a deleted tree wait for the cyclic collector"


@NATIVE
@pytest.mark.skipif(not (__import__("platform").machine() in ("x86_64", "AMD64") and
                         __import__("shutil").which("objdump")),
                    reason="checks x86-64 machine code with objdump")
def test_the_built_walk_holds_its_prefetch_instructions():
    """gcc dropped loops of __builtin_prefetch under Python's -DNDEBUG (loops without effects),
    silently: the built walk then had no prefetch at all."""
    import subprocess
    path = _state._STATE_KEY.__file__
    asm = subprocess.run(["objdump", "-d", path], capture_output=True, text=True,
                         check=True).stdout
    lines = [ln for ln in asm.splitlines() if "prefetcht0" in ln]
    # level 1's loop: each previous object and the words before it (a managed dict: -0x20)
    assert any("prefetcht0 -0x20(" in ln for ln in lines), \
        f"{path}: the walk's first prefetch loop is missing ({len(lines)} prefetches in all)"
    assert len(lines) >= 10, f"{path}: {len(lines)} prefetch instructions, expected the 3 levels"


# ------------------------------------------------------------------ trees the walks refuse
_CYCLE_CHECKS = r"""
import torch, torch.nn as nn
from slimkernels import _state

def refused(m, native):
    try:
        _state.module_state_key(m, native=native, modules=True)
    except ValueError as e:
        return str(e)
    return None

for native in ([True, False] if _state._STATE_KEY is not None else [False]):
    a = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 2)))
    a[1][1].owner = a[1]                       # a grandchild holding its parent
    msg = refused(a, native)
    assert msg and "has a cycle: '1.1.owner' is '1' (Sequential)" in msg, msg
    assert "weakref" in msg, msg
    b = nn.Sequential(nn.Linear(2, 2))
    b[0].me = b[0]                             # a module holding itself
    assert "'0.me' is '0' (Linear)" in refused(b, native)
    c = nn.Sequential(nn.Linear(2, 2))
    c[0].top = c                               # the root
    assert "'0.top' is the root (Sequential)" in refused(c, native)
    deep = nn.Sequential()
    cur = deep
    for _ in range(_state.MAX_DEPTH + 5):      # acyclic, but past the limit
        cur.add_module("x", nn.Sequential())
        cur = cur.x
    assert "deeper than" in refused(deep, native) and "no cycle" in refused(deep, native)
    ok = nn.Sequential()
    cur = ok
    for _ in range(_state.MAX_DEPTH - 1):      # deep, within the limit: walked
        cur.add_module("x", nn.Linear(1, 1))
        cur = cur.x
    assert refused(ok, native) is None
    shared = nn.Linear(2, 2)                   # the same module twice is not a cycle
    assert refused(nn.Sequential(shared, nn.Sequential(shared)), native) is None

from slimkernels.models import SlimCAE
m = SlimCAE(widths=(16, 8))
m.update()
x = torch.rand(1, 3, 32, 32)
data = m.compress(x, 8)
m.g_a[0].owner = m                             # the model's codec calls refuse it, by name
for call in (lambda: m.compress(x, 8), lambda: m.decompress(data), m.model_id):
    try:
        call()
    except ValueError as e:
        assert "'g_a.0.owner' is the root (SlimCAE)" in str(e), e
    else:
        raise AssertionError("a model with a cycle was coded")
print("ok")
"""


def test_a_module_tree_with_a_cycle_is_refused_by_name_not_walked_forever():
    """A module registered under one of its descendants (``layer.owner = model``, a pattern
    people write) made the walks loop until memory ran out (compress, decompress, model_id):
    now a ValueError names the attribute. In a child process with a time limit, so that a
    regression fails this test instead of hanging the run."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", _CYCLE_CHECKS], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


_FREED_BUFFERS = r"""
import torch, torch.nn as nn
from slimkernels import _state

class M(nn.Module):
    pass

class Dropping(set):   # a membership test that runs Python code: it frees the module's buffers
    def __contains__(self, key):
        m._buffers.clear()
        return False

    def __bool__(self):
        return True

m = M()
for i in range(4):
    m.register_buffer(f"b{i}", torch.full((3,), float(i)))
m.__dict__["_non_persistent_buffers_set"] = Dropping()
key, tensors = _state.module_state_key(m, native=True)
assert [t.tolist() for t in tensors] == [[float(i)] * 3 for i in range(4)], tensors
print("ok")
"""


@NATIVE
def test_the_built_walk_keeps_buffers_a_membership_test_frees():
    """The compiled walk held the buffers dict's items as borrowed references across the
    non-persistent set's membership test, which can run Python code: a test that drops the
    buffers left it appending freed tensors (an ASan build's use after free; the normal build
    crashed, exit -11). In a child process: a regression fails this test, not the run."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", _FREED_BUFFERS], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), (r.returncode, r.stderr[-3000:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_first_non_finite_names_the_first_bad_tensor(dtype, bad):
    """Each float dtype (NumPy's path: float32 / 64 / 16; torch's: bfloat16), in a strided view
    (transposed, sliced) and with requires_grad, finds NaN and +-inf; ints, empty tensors and
    finite ones pass."""
    ok = torch.randn(6, 5, dtype=dtype)
    hit = torch.randn(8, 6, dtype=dtype)
    hit[4, 3] = bad
    view = hit.t()[:, ::2]                       # strided, holds the bad element (at [3, 2])
    leaf = hit.clone().requires_grad_(True)
    tensors = {"ints": torch.tensor([2 ** 31 - 1]), "empty": torch.empty(0, dtype=dtype),
               "ok": ok, "bad_view": view, "bad_leaf": leaf}
    assert _state.first_non_finite(tensors) == "bad_view"
    del tensors["bad_view"]
    assert _state.first_non_finite(tensors) == "bad_leaf"
    del tensors["bad_leaf"]
    assert _state.first_non_finite(tensors) is None
    assert _state.first_non_finite({"neg": torch._neg_view(hit)}) == "neg"  # (NumPy refuses it)
