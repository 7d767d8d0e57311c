"""Winograd F(4x4, 3x3) convs (slimkernels.ops.winograd: AVX2 transforms + torch.bmm) against
float64 F.conv2d / F.conv_transpose2d, the PyTorch reference of the same algorithm, and the
conv op's dispatch to them."""
import os

import pytest
import torch
import torch.nn.functional as F

from slimkernels.ops import conv as conv_mod
from slimkernels.ops import slim_conv2d, slim_conv_transpose2d
from slimkernels.ops import winograd as Wg

_FLAGS = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
HAS_AVX2 = " avx2" in _FLAGS and " fma" in _FLAGS
needs_kernels = pytest.mark.skipif(not Wg.winograd_available(),
                                   reason="no AVX2 + FMA here or _cpu_kernels not built")
# fp32: the error relative to the output's largest magnitude (the transforms mix a tile's
# values, so a per-element relative error is meaningless where outputs cancel to ~0). F(4x4, 3x3)
# in fp32 errs 2-3x more than a direct fp32 conv (SlimCAE's widest 5x5/2 layer, 12 seeds: 4.7e-6
# .. 1.0e-5 against 2.3e-6 .. 3.8e-6), so ~1e-5 with that margin; a wrong tap or tile is O(1).
TOL = 2e-5


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _err(y, ref):
    assert y.shape == ref.shape, (tuple(y.shape), tuple(ref.shape))
    assert torch.isfinite(y).all(), "NaN/Inf in the result"
    return ((y.double() - ref).abs().max() / ref.abs().max()).item()


def _conv_case(N, ci, co, H, W, k, seed=0):
    g = _gen(seed)
    x = torch.randn(N, ci, H, W, generator=g)
    w = torch.randn(co, ci, k, k, generator=g) / (ci * k * k) ** 0.5
    b = torch.randn(co, generator=g)
    return x, w, b


def _convt_case(N, ci, co, H, W, k, seed=0):
    g = _gen(seed)
    x = torch.randn(N, ci, H, W, generator=g)
    w = torch.randn(ci, co, k, k, generator=g) / (ci * k * k) ** 0.5
    b = torch.randn(co, generator=g)
    return x, w, b


def test_available_matches_the_cpu():
    """On an x86 CPU with AVX2 + FMA the transforms must be built (fails if they are not)."""
    assert Wg.winograd_available() == HAS_AVX2


def test_matrices_compute_a_correlation():
    """A^T [(G g) * (B^T d)] = the 4 outputs of a 3-tap correlation, in float64."""
    BT, G, AT = Wg.winograd_matrices()
    g = torch.randn(3, dtype=torch.float64, generator=_gen(3))
    d = torch.randn(6, dtype=torch.float64, generator=_gen(4))
    y = AT @ ((G @ g) * (BT @ d))
    ref = torch.stack([(d[i:i + 3] * g).sum() for i in range(4)])
    torch.testing.assert_close(y, ref, rtol=1e-13, atol=1e-13)


CONV_CASES = [  # N, C_in, C_out, H, W, k, stride, padding
    (1, 16, 24, 37, 29, 5, 2, 2),   # SlimCAE's 5x5/2, odd sizes (partial tiles, both phases)
    (2, 13, 7, 20, 18, 5, 2, 2),    # channel tails (13*4 = 52 and 7: masked blocks), batch 2
    (1, 3, 20, 33, 47, 9, 4, 4),    # SlimCAE's 9x9/4 image layer (16 phases of 3 channels)
    (1, 10, 9, 11, 13, 3, 1, 1),    # plain 3x3 stride 1
    (1, 8, 8, 3, 2, 5, 2, 2),       # smaller than one tile
    (1, 6, 5, 14, 10, 4, 2, 1),     # kernel shorter than 3 taps per phase (zero-padded)
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_reference_is_exact_in_float64(case):
    N, ci, co, H, W, k, s, p = case
    x, w, b = _conv_case(N, ci, co, H, W, k)
    ref = F.conv2d(x.double(), w.double(), b.double(), stride=s, padding=p)
    y = Wg.conv2d_winograd_reference(x.double(), w.double(), b.double(), s, p)
    torch.testing.assert_close(y, ref, rtol=1e-11, atol=1e-11)


@needs_kernels
@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("channels_last", [True, False])
def test_conv2d_matches_float64(case, channels_last):
    N, ci, co, H, W, k, s, p = case
    x, w, b = _conv_case(N, ci, co, H, W, k)
    ref = F.conv2d(x.double(), w.double(), b.double(), stride=s, padding=p)
    xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    y = Wg.conv2d_winograd(xin, Wg.winograd_conv2d_weight(w, s), b, k, s, p)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert _err(y, ref) < TOL


CONVT_CASES = [  # N, C_in, C_out, H, W, k, stride, padding, output_padding
    (1, 16, 24, 9, 13, 5, 2, 2, 1),   # SlimCAE's 5x5/2
    (2, 7, 5, 6, 5, 5, 2, 2, 1),      # tails, batch 2
    (1, 12, 3, 10, 7, 9, 4, 4, 3),    # SlimCAE's 9x9/4 output layer (16 phases)
    (1, 6, 5, 7, 9, 3, 1, 1, 0),      # stride 1
    (1, 9, 11, 2, 3, 5, 2, 2, 0),     # tiny input, no output padding
]


@pytest.mark.parametrize("case", CONVT_CASES)
def test_transposed_reference_is_exact_in_float64(case):
    N, ci, co, H, W, k, s, p, op = case
    x, w, b = _convt_case(N, ci, co, H, W, k)
    ref = F.conv_transpose2d(x.double(), w.double(), b.double(), stride=s, padding=p,
                             output_padding=op)
    y = Wg.conv_transpose2d_winograd_reference(x.double(), w.double(), b.double(), s, p, op)
    torch.testing.assert_close(y, ref, rtol=1e-11, atol=1e-11)


@needs_kernels
@pytest.mark.parametrize("case", CONVT_CASES)
def test_conv_transpose2d_matches_float64(case):
    N, ci, co, H, W, k, s, p, op = case
    assert Wg.winograd_geometry_ok(k, s, p, True)
    x, w, b = _convt_case(N, ci, co, H, W, k)
    ref = F.conv_transpose2d(x.double(), w.double(), b.double(), stride=s, padding=p,
                             output_padding=op)
    y = Wg.conv_transpose2d_winograd(x, Wg.winograd_conv_transpose2d_weight(w, s, p), b, k, s,
                                     p, op)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert _err(y, ref) < TOL


@needs_kernels
def test_wide_layer_within_fp32_tolerance():
    """SlimCAE's widest 5x5/2 conv (K = 4 * 192 products per transformed value)."""
    x, w, b = _conv_case(1, 192, 192, 32, 40, 5, seed=5)
    ref = F.conv2d(x.double(), w.double(), b.double(), stride=2, padding=2)
    y = Wg.conv2d_winograd(x, Wg.winograd_conv2d_weight(w, 2), b, 5, 2, 2)
    assert _err(y, ref) < TOL


@needs_kernels
def test_chunks(monkeypatch):
    """Tiles processed in several transform -> GEMM -> transform rounds (a tiny ``CHUNK_BYTES``;
    the last round partial) stay within the fp32 tolerance (not bitwise equal to one round: the
    GEMM's summation order depends on its row count)."""
    monkeypatch.setattr(Wg, "CHUNK_BYTES", 1)
    monkeypatch.setattr(Wg, "MIN_CHUNK_TILES", 7)  # 2 * 6 * 5 = 60 tiles: 9 rounds
    x, w, b = _conv_case(2, 24, 16, 45, 39, 5, seed=6)
    ref = F.conv2d(x.double(), w.double(), b.double(), stride=2, padding=2)
    assert _err(Wg.conv2d_winograd(x, Wg.winograd_conv2d_weight(w, 2), b, 5, 2, 2), ref) < TOL
    xt, wt, bt = _convt_case(1, 16, 8, 11, 9, 5, seed=7)
    ref = F.conv_transpose2d(xt.double(), wt.double(), bt.double(), stride=2, padding=2,
                             output_padding=1)
    y = Wg.conv_transpose2d_winograd(xt, Wg.winograd_conv_transpose2d_weight(wt, 2, 2), bt, 5, 2,
                                     2, 1)
    assert _err(y, ref) < TOL


class _CountingKernels:
    """The extension module with its ``winograd_input`` calls counted (one per round)."""

    def __init__(self, K):
        self._K, self.rounds = K, 0

    def __getattr__(self, name):
        return getattr(self._K, name)

    def winograd_input(self, *a, **kw):
        self.rounds += 1
        return self._K.winograd_input(*a, **kw)


@needs_kernels
@pytest.mark.parametrize("factor, min_bytes, rounds", [
    (0.0, 1 << 30, 1),       # the floor: one round holds all 36 tiles
    (1.0, 0, 3),             # rounds of U's bytes: 16 tiles, then 16, then 4
    (1.0, 1 << 30, 1),       # ... unless the floor is larger
])
def test_round_size_follows_the_weight_size(monkeypatch, factor, min_bytes, rounds):
    """Tiles per round = CHUNK_U_FACTOR x U's bytes (clamped to [CHUNK_MIN_BYTES, CHUNK_BYTES])
    over the bytes of one tile's V and M rows."""
    x, w, b = _conv_case(1, 16, 32, 48, 48, 5, seed=8)   # 24x24 output: 6 x 6 = 36 tiles
    U = Wg.winograd_conv2d_weight(w, 2)                   # [36, 64, 32]: 36*4*96 B per tile
    tile_bytes = 36 * 4 * (U.shape[1] + U.shape[2])
    monkeypatch.setattr(Wg, "CHUNK_U_FACTOR", factor * 16 * tile_bytes / (4 * U.numel()))
    monkeypatch.setattr(Wg, "CHUNK_MIN_BYTES", min_bytes)
    monkeypatch.setattr(Wg, "MIN_CHUNK_TILES", 1)
    K = _CountingKernels(Wg._kernels())
    monkeypatch.setattr(Wg, "_kernels", lambda: K)
    y = Wg.conv2d_winograd(x, U, b, 5, 2, 2)
    assert K.rounds == rounds
    ref = F.conv2d(x.double(), w.double(), b.double(), stride=2, padding=2)
    assert _err(y, ref) < TOL


@needs_kernels
def test_bad_input_is_refused():
    x, w, b = _conv_case(1, 8, 8, 12, 12, 5)
    U = Wg.winograd_conv2d_weight(w, 2)
    with pytest.raises(ValueError, match="fp32"):
        Wg.conv2d_winograd(x.double(), U, b, 5, 2, 2)
    with pytest.raises(ValueError, match="does not fit"):
        Wg.conv2d_winograd(x[:, :4], U, b, 5, 2, 2)
    with pytest.raises(ValueError, match="does not fit"):
        Wg.conv2d_winograd(x, U[0], b, 5, 2, 2)
    with pytest.raises(ValueError, match="does not fit"):
        Wg.conv2d_winograd(x, U.double(), b, 5, 2, 2)
    with pytest.raises(ValueError, match="bias"):
        Wg.conv2d_winograd(x, U, b[:3], 5, 2, 2)
    with pytest.raises(ValueError, match="empty"):
        Wg.conv2d_winograd(x[:, :, :0], U, b, 5, 2, 2)
    with pytest.raises(ValueError, match="smaller"):
        Wg.conv2d_winograd(x[:, :, :1, :1], U, b, 5, 2, 0)
    with pytest.raises(ValueError, match="3 taps"):
        Wg.winograd_conv2d_weight(torch.randn(4, 4, 7, 7), 2)
    with pytest.raises(ValueError, match="sub-pixel"):
        Wg.winograd_conv_transpose2d_weight(torch.randn(4, 4, 9, 9), 2, 4)


def test_geometry():
    assert Wg.winograd_geometry_ok(5, 2, 2, False) and Wg.winograd_geometry_ok(9, 4, 4, False)
    assert Wg.winograd_geometry_ok(3, 1, 1, False)
    assert not Wg.winograd_geometry_ok(7, 2, 3, False)   # 4 taps per phase
    assert Wg.winograd_geometry_ok(5, 2, 2, True) and Wg.winograd_geometry_ok(9, 4, 4, True)
    assert not Wg.winograd_geometry_ok(9, 2, 4, True)


# -- the batched GEMMs of the rounds (AVX-512, AVX2) -------------------------------------------
def _gemm_here(isa: str) -> bool:
    """That GEMM kernel can run here (the CPU has the ISA, the kernels are built)."""
    K = Wg._kernels()
    return K is not None and hasattr(K, f"batched_gemm_{isa}") and \
        bool(getattr(K, f"batched_gemm_{isa}_available")())


GEMMS = [pytest.param(isa, marks=pytest.mark.skipif(not _gemm_here(isa),
                                                    reason=f"no {isa} here or kernels not built"))
         for isa in ("avx512", "avx2")]

def _gemm(isa: str):
    return getattr(Wg._kernels(), f"batched_gemm_{isa}")


def test_gemm_available_matches_the_cpu():
    K = Wg._kernels()
    if K is None:
        pytest.skip("kernels not built or switched off")
    assert bool(K.batched_gemm_avx512_available()) == (HAS_AVX2 and " avx512f" in _FLAGS)
    assert bool(K.batched_gemm_avx2_available()) == HAS_AVX2


def test_round_gemm_follows_the_switches(monkeypatch):
    if Wg._kernels() is None:
        pytest.skip("kernels not built or switched off")
    first = "avx512" if Wg._gemm_avx512() else "avx2" if _gemm_here("avx2") else "bmm"
    assert Wg.round_gemm() == first
    monkeypatch.setattr(Wg, "GEMM_AVX512", False)
    assert Wg.round_gemm() == ("avx2" if _gemm_here("avx2") else "bmm")
    monkeypatch.setattr(Wg, "GEMM_AVX2", False)
    assert Wg.round_gemm() == "bmm"


@pytest.mark.parametrize("isa", GEMMS)
@pytest.mark.parametrize("B, T, K, N", [
    (36, 384, 192, 48),   # SlimCAE's w=48 enc2 round: three full vectors per row tile
    (36, 37, 288, 72),    # 72 columns: a 3-vector and a 2-vector group, the last 8 lanes
    (2, 5, 7, 3),         # fewer rows than a tile, one partial vector
    (3, 17, 1, 16),       # K = 1, one full vector, row tails of 1
    (1, 64, 33, 200),     # 13 vectors: groups of 3, 3, 3, 3, 1 (8 lanes)
    (36, 130, 20, 97),    # rows across two work blocks of 64, 7 vectors (1 lane last)
    (4, 7, 130, 29),      # AVX2: 4 vectors, the last of 5 lanes; K over two blocks of 64
])
def test_gemm_matches_float64(isa, B, T, K, N):
    g = _gen(B * 1000 + N)
    V, U = torch.randn(B, T, K, generator=g), torch.randn(B, K, N, generator=g)
    M = torch.full((B, T, N + 1), float("nan"))[..., :N].contiguous()  # written, not read
    guard = torch.full((B * T * N + 64,), 7.0)   # a buffer whose tail must stay untouched
    out = guard[:B * T * N].view(B, T, N)
    _gemm(isa)(V.data_ptr(), U.data_ptr(), out.data_ptr(), B, T, K, N, 2)
    ref = torch.bmm(V.double(), U.double())
    assert torch.isfinite(out).all()
    assert _err(out, ref) < 1e-5
    assert (guard[B * T * N:] == 7.0).all()
    _gemm(isa)(V.data_ptr(), U.data_ptr(), M.data_ptr(), B, T, K, N, 1)
    assert _err(M, ref) < 1e-5


@pytest.mark.parametrize("isa", GEMMS)
@pytest.mark.parametrize("K", [768, 1536])
def test_gemm_error_does_not_grow_with_k(isa, K):
    """Long reductions (K = 4 x 192 in SlimCAE's widest rounds) sum in blocks: the error stays at
    torch.bmm's level (one FMA chain over K had 3x its error, which Winograd's output transform
    carried past its 2e-5 bound at w=192)."""
    g = _gen(K)
    V, U = torch.randn(36, 64, K, generator=g), torch.randn(36, K, 48, generator=g)
    M = torch.empty(36, 64, 48)
    _gemm(isa)(V.data_ptr(), U.data_ptr(), M.data_ptr(), 36, 64, K, 48, 2)
    ref = torch.bmm(V.double(), U.double())
    assert _err(M, ref) <= 1.5 * _err(torch.bmm(V, U), ref)


@pytest.mark.parametrize("isa", GEMMS)
def test_gemm_refuses_bad_arguments(isa):
    V, U, M = torch.randn(1, 2, 3), torch.randn(1, 3, 4), torch.empty(1, 2, 4)
    for args in [(0, U.data_ptr(), M.data_ptr(), 1, 2, 3, 4), (V.data_ptr(), U.data_ptr(), 0, 1,
                                                                2, 3, 4),
                 (V.data_ptr(), U.data_ptr(), M.data_ptr(), 1, 0, 3, 4),
                 (V.data_ptr(), U.data_ptr(), M.data_ptr(), 1, 2, -3, 4)]:
        with pytest.raises(RuntimeError, match=f"batched_gemm_{isa}: bad arguments"):
            _gemm(isa)(*args, 1)


@pytest.mark.parametrize("case", CONV_CASES[:2] + [(1, 48, 48, 40, 36, 5, 2, 2)])
def test_conv2d_through_each_gemm(case, monkeypatch):
    """The Winograd conv with each GEMM this CPU has (AVX-512, AVX2) and with torch.bmm: all
    within the fp32 tolerance of float64, and each switch takes effect (the kernel named runs,
    bmm only with both off)."""
    if not Wg.winograd_available():
        pytest.skip("no Winograd kernels here")
    N, ci, co, H, W, k, s, p = case
    x, w, b = _conv_case(N, ci, co, H, W, k)
    ref = F.conv2d(x.double(), w.double(), b.double(), stride=s, padding=p)
    U = Wg.winograd_conv2d_weight(w, s)
    used = []
    real = torch.bmm
    monkeypatch.setattr(Wg.torch, "bmm", lambda *a, **kw: used.append("bmm") or real(*a, **kw))
    K = Wg._kernels()

    class Spy:   # the kernels module, with the GEMM calls noted
        def __getattr__(self, name):
            fn = getattr(K, name)
            if not name.startswith("batched_gemm_") or name.endswith("_available"):
                return fn
            return lambda *a, **kw: used.append(name[len("batched_gemm_"):]) or fn(*a, **kw)
    monkeypatch.setattr(Wg, "_kernels", lambda: Spy())
    runs = 0
    for avx512, avx2 in ((True, True), (False, True), (False, False)):
        monkeypatch.setattr(Wg, "GEMM_AVX512", avx512)
        monkeypatch.setattr(Wg, "GEMM_AVX2", avx2)
        want = Wg.round_gemm()
        used.clear()
        assert _err(Wg.conv2d_winograd(x, U, b, k, s, p), ref) < TOL
        assert used and set(used) == {want}, (avx512, avx2, used)
        runs += want != "bmm"
    assert runs >= (1 if _gemm_here("avx2") else 0)


# -- dispatch from the conv ops ----------------------------------------------------------------
needs_dispatch = pytest.mark.skipif(
    not Wg.winograd_available() or conv_mod._cpu_capability() != "AVX2",
    reason="the AVX2 CPUs' Winograd rule (AVX-512 CPUs: test_avx512_dispatch_rule_with_the_gemm)")


needs_train_dispatch = pytest.mark.skipif(
    not Wg.winograd_available() or not (
        conv_mod._cpu_capability() == "AVX2" or
        (conv_mod._cpu_capability() == "AVX512" and Wg._gemm_avx512())),
    reason="training convs use Winograd on AVX2 CPUs and AVX-512 ones with the AVX-512 GEMM")


def _count_calls(monkeypatch, name, module=Wg):
    calls = []
    real = getattr(module, name)

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(module, name, spy)
    return calls


@needs_dispatch
def test_slim_conv2d_dispatches_wide_fp32_no_grad(monkeypatch):
    calls = _count_calls(monkeypatch, "conv2d_winograd")
    x, w, b = _conv_case(1, 96, 80, 24, 20, 5, seed=8)   # full weight [80, 96]: slice 72 x 64
    xs = x[:, :64].contiguous(memory_format=torch.channels_last)
    ref = F.conv2d(xs.double(), w[:72, :64].double(), b[:72].double(), stride=2, padding=2)
    with torch.no_grad():
        y = slim_conv2d(xs, w, b, stride=2, padding=2, out_width=72)
    assert calls == [1]
    assert _err(y, ref) < TOL
    with torch.no_grad():   # narrow: oneDNN
        slim_conv2d(x[:, :32], w, b, stride=2, padding=2, out_width=32)
    assert calls == [1]
    monkeypatch.setattr(conv_mod, "CPU_WINOGRAD_TRAIN", False)
    y = slim_conv2d(xs, w.requires_grad_(), b, stride=2, padding=2, out_width=72)  # gradient
    assert calls == [1] and y.requires_grad
    monkeypatch.setattr(conv_mod, "CPU_WINOGRAD", False)
    with torch.no_grad():
        slim_conv2d(xs, w, b, stride=2, padding=2, out_width=72)
    assert calls == [1]


@needs_dispatch
def test_slim_conv_transpose2d_dispatches_wide_fp32_no_grad(monkeypatch):
    calls = _count_calls(monkeypatch, "conv_transpose2d_winograd")
    x, w, b = _convt_case(1, 96, 80, 9, 11, 5, seed=9)
    xs = x[:, :72]
    ref = F.conv_transpose2d(xs.double(), w[:72, :64].double(), b[:64].double(), stride=2,
                             padding=2, output_padding=1)
    with torch.no_grad():
        y = slim_conv_transpose2d(xs, w, b, stride=2, padding=2, output_padding=1, out_width=64)
    assert calls == [1]
    assert _err(y, ref) < TOL


@needs_dispatch
def test_cached_weights_follow_parameter_updates():
    """The transformed weights are cached per parameter version: an in-place update is seen."""
    x, w, b = _conv_case(1, 64, 64, 24, 24, 5, seed=10)   # 12x12 output: 9 tiles
    assert conv_mod._use_winograd(x, 64, 64, 5, 2, 2, False)
    with torch.no_grad():
        y1 = slim_conv2d(x, w, b, stride=2, padding=2)
        w.mul_(2)
        b.mul_(2)
        y2 = slim_conv2d(x, w, b, stride=2, padding=2)
    torch.testing.assert_close(y2, 2 * y1, rtol=1e-5, atol=1e-5)


@needs_dispatch
def test_dispatch_rule_follows_the_gemm_shape(monkeypatch):
    """Winograd where its GEMM is wide enough: not for the 3-channel image layer (even with 96
    outputs) nor a 32-channel conv (N = 32); yes for a 48-channel conv (N = 48) and a 48-channel
    transposed conv (N = 4*48) at any tile count (``WINOGRAD_NARROW_C``: a replayed transform),
    96 channels with enough tiles (``WINOGRAD_MIN_TILES``; 192 channels
    ``WINOGRAD_MIN_TILES_WIDE``). The shipped thresholds, not patched."""
    conv_calls = _count_calls(monkeypatch, "conv2d_winograd")
    convt_calls = _count_calls(monkeypatch, "conv_transpose2d_winograd")
    with torch.no_grad():
        x, w, b = _conv_case(1, 3, 96, 40, 48, 9, seed=11)
        slim_conv2d(x, w, b, stride=4, padding=4)
        x, w, b = _conv_case(1, 32, 32, 24, 20, 5, seed=12)
        slim_conv2d(x, w, b, stride=2, padding=2)
        assert conv_calls == []
        x, w, b = _conv_case(1, 48, 48, 24, 20, 5, seed=12)
        slim_conv2d(x, w, b, stride=2, padding=2)
        assert conv_calls == [1]
        # narrow: any tile count (2 x 2 tiles of the input grid, 1 tile of the output's)
        x, w, b = _convt_case(1, 48, 48, 6, 7, 5, seed=13)
        ref = F.conv_transpose2d(x.double(), w.double(), b.double(), stride=2, padding=2,
                                 output_padding=1)
        y = slim_conv_transpose2d(x, w, b, stride=2, padding=2, output_padding=1)
        assert convt_calls == [1]
        assert _err(y, ref) < TOL
        x, w, b = _conv_case(1, 48, 48, 8, 8, 5, seed=12)
        y = slim_conv2d(x, w, b, stride=2, padding=2)
        assert conv_calls == [1, 1]
        assert _err(y, F.conv2d(x.double(), w.double(), b.double(), stride=2, padding=2)) < TOL
        # 96 channels: 2 x 2 and 4 tiles are too few, 3 x 3 enough
        x, w, b = _convt_case(1, 96, 96, 6, 7, 5, seed=13)
        slim_conv_transpose2d(x, w, b, stride=2, padding=2, output_padding=1)
        assert convt_calls == [1]
        x, w, b = _convt_case(1, 96, 96, 12, 11, 5, seed=13)   # 3 x 3 tiles
        slim_conv_transpose2d(x, w, b, stride=2, padding=2, output_padding=1)
        assert convt_calls == [1, 1]
        x, w, b = _conv_case(1, 96, 96, 16, 16, 5, seed=12)   # 8x8 output: 4 tiles, too few
        slim_conv2d(x, w, b, stride=2, padding=2)
        assert conv_calls == [1, 1]
        # 192 channels: 9 tiles are too few (the transformed weight outgrows the caches), 16 not
        x, w, b = _conv_case(1, 192, 192, 24, 24, 5, seed=15)
        slim_conv2d(x, w, b, stride=2, padding=2)
        assert conv_calls == [1, 1]
        x, w, b = _conv_case(1, 192, 192, 32, 32, 5, seed=15)
        slim_conv2d(x, w, b, stride=2, padding=2)
        assert conv_calls == [1, 1, 1]


@needs_dispatch
def test_output_layer_takes_winograd_from_enough_inputs(monkeypatch):
    """A no-grad transposed 9x9/4 conv onto RGB (SlimCAE's dec3): the image kernel below
    WINOGRAD_IMAGE_MIN_CIN inputs, Winograd from there on; both equal float64."""
    from slimkernels.ops import conv_image as CI
    if not CI.image_conv_available():
        pytest.skip("the image kernels did not build")
    wino = _count_calls(monkeypatch, "conv_transpose2d_winograd")
    image = _count_calls(monkeypatch, "conv_transpose2d_image", CI)
    lo = conv_mod.WINOGRAD_IMAGE_MIN_CIN
    for ci, want_wino in ((lo - 8, []), (lo, [1])):
        wino.clear()
        image.clear()
        x, w, b = _convt_case(1, ci, 3, 9, 10, 9, seed=ci)   # 3 x 3 tiles
        ref = F.conv_transpose2d(x.double(), w.double(), b.double(), stride=4, padding=4,
                                 output_padding=3)
        with torch.no_grad():
            y = slim_conv_transpose2d(x, w, b, stride=4, padding=4, output_padding=3)
        assert wino == want_wino and image == ([] if want_wino else [1])
        assert _err(y, ref) < TOL


@needs_dispatch
def test_global_switch_turns_it_off(monkeypatch):
    """SLIMKERNELS_CPU_KERNELS=0 sends every op to its PyTorch path, this one included."""
    calls = _count_calls(monkeypatch, "conv2d_winograd")
    monkeypatch.setenv("SLIMKERNELS_CPU_KERNELS", "0")
    assert not Wg.winograd_available()
    x, w, b = _conv_case(1, 64, 64, 24, 24, 5, seed=14)   # 9 tiles: Winograd without the switch
    ref = F.conv2d(x.double(), w.double(), b.double(), stride=2, padding=2)
    with torch.no_grad():
        y = slim_conv2d(x, w, b, stride=2, padding=2)
    assert calls == []
    assert _err(y, ref) < 1e-5


# -- training: the autograd Functions ------------------------------------------------------------
def _grads64(fn, x, w, b, gy):
    """(y, dx, dw, db) of fn in float64 (the reference)."""
    x, w, b = (t.detach().double().requires_grad_() for t in (x, w, b))
    y = fn(x, w, b)
    y.backward(gy.double())
    return y.detach(), x.grad, w.grad, b.grad


@pytest.mark.parametrize("columns", [None, 7])
def test_weight_transform_is_g_w_gt_in_float64_rounded_once(monkeypatch, columns):
    """``_transform_weight`` (GEMMs by ``G kron G``, in blocks of columns: the default, and 7
    to leave a partial last block) against ``G g G^T`` by einsum in float64: U's layout
    ``[36, K, C_out']`` and every element within one fp32 ulp, for a contiguous weight and a
    strided slice of a larger one (read in place)."""
    if columns is not None:
        monkeypatch.setattr(Wg, "_TRANSFORM_COLUMNS", columns)
    G = Wg.winograd_matrices()[1]
    big = torch.randn(40, 70, 3, 3, generator=_gen(21))
    for wc in (big[:33, :50], big.transpose(0, 1)[:9, 1::3], torch.randn(5, 7, 3, 3)):
        u = Wg._transform_weight(wc)
        ref = torch.einsum("ik,ockl,jl->ijco", G, wc.double(), G).reshape(36, wc.shape[1],
                                                                           wc.shape[0])
        assert u.dtype == torch.float32 and u.is_contiguous() and u.shape == ref.shape
        assert ((u.double() - ref).abs() <= ref.abs() * 2.0 ** -23).all()


def test_fp32_weight_transform_matches_the_float64_one():
    for shape in [(80, 4 * 24, 3, 3), (7, 5, 3, 3)]:
        wc = torch.randn(*shape, generator=_gen(20))
        ref = Wg._transform_weight(wc.double())  # float64 transform, rounded once
        u = Wg.transform_weight_fp32(wc)
        assert u.shape == ref.shape and u.dtype == torch.float32 and u.is_contiguous()
        assert (u - ref).abs().max() / ref.abs().max() < 1e-6


@needs_kernels
@pytest.mark.parametrize("n", [1, 7, 8, 13, 4096 + 5])
def test_weight_transform_kernel_matches_float64(n):
    """csrc/cpu/winograd.cpp's weight transform (column tails masked, split over threads)
    against G g G^T in float64; a null pointer is refused with the kernel's message."""
    g = torch.randn(9, n, generator=_gen(32))
    U = Wg._gg(g)
    _, G, _ = Wg.winograd_matrices()
    ref = torch.einsum("ia,abn,jb->ijn", G, g.double().view(3, 3, n), G).reshape(36, n)
    assert U.shape == (36, n) and torch.isfinite(U).all()
    assert (U - ref).abs().max() / ref.abs().max() < 1e-6
    with pytest.raises(RuntimeError, match="bad arguments"):
        Wg._kernels().winograd_weight(0, G.float().data_ptr(), n, U.data_ptr(), 1)


@pytest.mark.parametrize("path", ["kernel", "torch"])
@pytest.mark.parametrize("k,s,p", [(5, 2, 2), (3, 1, 1), (4, 2, 1), (6, 2, 2), (3, 2, 1)])
def test_fp32_layer_weights_match_the_float64_ones(monkeypatch, path, k, s, p):
    """The training builders give the inference caches' transformed weights up to fp32
    rounding: the AVX2 kernel reading a slice of a larger weight in place (lanes not a multiple
    of 8), and the torch fallback (polyphase split / sub-pixel gather + transpose in one copy)."""
    if path == "torch":
        monkeypatch.setattr(Wg, "_kernel_weight", lambda *a, **kw: False)
    elif not Wg.winograd_available():
        pytest.skip("no AVX2 + FMA here or _cpu_kernels not built")
    full = torch.randn(31, 27, k, k, generator=_gen(30))
    w = full[:21, :19]                                     # a slice, not contiguous
    ref = Wg.winograd_conv2d_weight(w, s)
    u = Wg.conv2d_weight_fp32(w, s)
    assert u.shape == ref.shape and (u - ref).abs().max() / ref.abs().max() < 1e-6
    if Wg.winograd_geometry_ok(k, s, p, True):
        ref = Wg.winograd_conv_transpose2d_weight(w, s, p)
        u = Wg.conv_transpose2d_weight_fp32(w, s, p)
        assert u.shape == ref.shape and (u - ref).abs().max() / ref.abs().max() < 1e-6


@needs_kernels
def test_kernel_weight_refuses_bad_taps():
    w = torch.randn(8, 8, 5, 5)
    U = torch.empty(36, 32, 8)
    taps = Wg._taps_conv(5, 2).clone()   # (a cached table: changed on a copy)
    taps[1, 4] = 25                                        # past the 5x5 kernel
    with pytest.raises(RuntimeError, match="tap index outside the kernel"):
        Wg._kernel_weight(w, 1, taps, U, 32 * 8, 8 * 8, 8)


@needs_kernels
@pytest.mark.parametrize("case", [(2, 40, 72, 16, 16, 5, 2, 2), (1, 36, 66, 13, 18, 5, 2, 2),
                                  (2, 33, 65, 12, 9, 3, 1, 1), (1, 40, 64, 15, 15, 4, 2, 1)])
def test_conv2d_function_gradients_match_float64(case):
    """Forward, input, weight and bias gradients of WinogradConv2dFunction against float64
    autograd through F.conv2d: even and odd sizes (x rows no output sees: the input gradient
    falls back to oneDNN), 3x3/1 and 4x4/2 kernels, weight and bias slices of larger tensors."""
    N, ci, co, H, W, k, s, p = case
    x, w_full, b_full = _conv_case(N, ci + 8, co + 16, H, W, k, seed=21)
    x = x[:, :ci].contiguous(memory_format=torch.channels_last).requires_grad_()
    w_full.requires_grad_()
    b_full.requires_grad_()
    y = Wg.WinogradConv2dFunction.apply(x, w_full[:co, :ci], b_full[:co], s, p)
    gy = torch.randn(y.shape, generator=_gen(22))
    y.backward(gy)
    ry, rdx, rdw, rdb = _grads64(lambda a, bw, bb: F.conv2d(a, bw, bb, stride=s, padding=p),
                                 x, w_full[:co, :ci], b_full[:co], gy)
    assert _err(y, ry) < TOL
    assert _err(x.grad, rdx) < TOL
    assert _err(w_full.grad[:co, :ci], rdw) < TOL
    assert _err(b_full.grad[:co], rdb) < TOL
    assert (w_full.grad[co:] == 0).all() and (w_full.grad[:, ci:] == 0).all()
    assert (b_full.grad[co:] == 0).all()


@needs_kernels
@pytest.mark.parametrize("case", [(2, 72, 40, 8, 8, 5, 2, 2, 1), (1, 66, 36, 7, 9, 5, 2, 2, 0),
                                  (2, 64, 33, 6, 5, 3, 1, 1, 0)])
def test_conv_transpose2d_function_gradients_match_float64(case):
    N, ci, co, H, W, k, s, p, op = case
    x, w_full, b_full = _convt_case(N, ci + 8, co + 16, H, W, k, seed=23)
    x = x[:, :ci].contiguous(memory_format=torch.channels_last).requires_grad_()
    w_full.requires_grad_()
    b_full.requires_grad_()
    y = Wg.WinogradConvTranspose2dFunction.apply(x, w_full[:ci, :co], b_full[:co], s, p, op)
    gy = torch.randn(y.shape, generator=_gen(24))
    y.backward(gy)
    ry, rdx, rdw, rdb = _grads64(
        lambda a, bw, bb: F.conv_transpose2d(a, bw, bb, stride=s, padding=p, output_padding=op),
        x, w_full[:ci, :co], b_full[:co], gy)
    assert _err(y, ry) < TOL
    assert _err(x.grad, rdx) < TOL
    assert _err(w_full.grad[:ci, :co], rdw) < TOL
    assert _err(b_full.grad[:co], rdb) < TOL
    assert (w_full.grad[ci:] == 0).all() and (w_full.grad[:, co:] == 0).all()


@needs_kernels
def test_functions_without_bias_and_with_frozen_parts():
    """No bias; a weight that needs no gradient (only dx); an input that needs none (only dw)."""
    x, w, _ = _conv_case(1, 40, 64, 12, 12, 5, seed=25)
    x = x.contiguous(memory_format=torch.channels_last)
    xr = x.clone().requires_grad_()
    y = Wg.WinogradConv2dFunction.apply(xr, w, None, 2, 2)
    gy = torch.randn(y.shape, generator=_gen(26))
    y.backward(gy)
    rdx = torch.ops.aten.convolution_backward(gy.double(), x.double(), w.double(), None, [2, 2],
                                              [2, 2], [1, 1], False, [0, 0], 1,
                                              [True, False, False])[0]
    assert _err(xr.grad, rdx) < TOL
    wr = w.clone().requires_grad_()
    y = Wg.WinogradConv2dFunction.apply(x, wr, None, 2, 2)
    y.backward(gy)
    _, _, rdw = (None, None, torch.ops.aten.convolution_backward(
        gy.double(), x.double(), w.double(), None, [2, 2], [2, 2], [1, 1], False, [0, 0], 1,
        [False, True, False])[1])
    assert _err(wr.grad, rdw) < TOL


@needs_train_dispatch
def test_training_convs_dispatch_to_the_functions(monkeypatch):
    """With gradient, fp32 wide 5x5/2 convs and transposed convs run the Winograd Functions
    (gradients equal float64 autograd); not under CPU_WINOGRAD_TRAIN=False, not for narrow
    layers (N < WINOGRAD_MIN_N on either pass), and not under bf16 autocast."""
    monkeypatch.setattr(conv_mod, "WINOGRAD_TRAIN_MIN_TILES", 1)
    monkeypatch.setattr(conv_mod, "WINOGRAD_TRAIN_MIN_N", 64)
    fwd = _count_calls(monkeypatch, "conv2d_winograd")
    fwdt = _count_calls(monkeypatch, "conv_transpose2d_winograd")
    x, w, b = _conv_case(2, 96, 80, 20, 20, 5, seed=27)
    w.requires_grad_()
    xs = x[:, :64].contiguous(memory_format=torch.channels_last).requires_grad_()
    y = slim_conv2d(xs, w, b, stride=2, padding=2, out_width=72)
    gy = torch.randn(y.shape, generator=_gen(28))
    y.backward(gy)
    assert fwd == [1] and fwdt == [1]   # forward conv, input gradient as a transposed conv
    ry, rdx, rdw, _ = _grads64(lambda a, bw, bb: F.conv2d(a, bw, bb, stride=2, padding=2),
                               xs, w[:72, :64], b[:72], gy)
    assert _err(y, ry) < TOL and _err(xs.grad, rdx) < TOL and _err(w.grad[:72, :64], rdw) < TOL

    xt, wt, bt = _convt_case(2, 96, 80, 8, 8, 5, seed=29)
    wt.requires_grad_()
    xts = xt[:, :72].requires_grad_()
    y = slim_conv_transpose2d(xts, wt, bt, stride=2, padding=2, output_padding=1, out_width=64)
    y.backward(torch.ones_like(y))
    assert fwd == [1, 1] and fwdt == [1, 1]
    ry, rdx, rdw, _ = _grads64(lambda a, bw, bb: F.conv_transpose2d(
        a, bw, bb, stride=2, padding=2, output_padding=1), xts, wt[:72, :64], bt[:64],
        torch.ones(y.shape))
    assert _err(y, ry) < TOL and _err(xts.grad, rdx) < TOL and _err(wt.grad[:72, :64], rdw) < TOL

    slim_conv2d(x[:, :32], w, b, stride=2, padding=2, out_width=32).sum().backward()  # narrow
    with torch.autocast("cpu", torch.bfloat16):
        slim_conv2d(xs, w, b, stride=2, padding=2, out_width=72).float().sum().backward()
    if not conv_mod._onednn_half(torch.bfloat16):   # (no bf16 in oneDNN, no AVX-512: the
        assert fwd == [1, 1, 1] and fwdt == [1, 1, 1]   # float32 op ran it, by Winograd)
        del fwd[2:], fwdt[2:]
    if conv_mod._cpu_capability() == "AVX512":   # its own switch there
        with monkeypatch.context() as m:
            m.setattr(conv_mod, "CPU_WINOGRAD_TRAIN_AVX512", False)
            slim_conv2d(xs, w, b, stride=2, padding=2, out_width=72).sum().backward()
        assert fwd == [1, 1] and fwdt == [1, 1]
    monkeypatch.setattr(conv_mod, "CPU_WINOGRAD_TRAIN", False)
    slim_conv2d(xs, w, b, stride=2, padding=2, out_width=72).sum().backward()
    assert fwd == [1, 1] and fwdt == [1, 1]


@needs_train_dispatch
def test_training_transposed_conv_onto_an_image(monkeypatch):
    """A transposed 9x9/4 conv onto 3 channels (SlimCAE's dec3) with at least
    WINOGRAD_TRAIN_IMAGE_MIN_CIN inputs trains by Winograd (forward transposed conv, input
    gradient as a conv; gradients equal float64 autograd, output_padding 3); fewer inputs, too few
    tiles or CPU_WINOGRAD_TRAIN=False stay on oneDNN."""
    monkeypatch.setattr(conv_mod, "WINOGRAD_TRAIN_MIN_TILES", 8)
    monkeypatch.setattr(conv_mod, "WINOGRAD_TRAIN_IMAGE_MIN_CIN", 40)
    fwd = _count_calls(monkeypatch, "conv2d_winograd")
    fwdt = _count_calls(monkeypatch, "conv_transpose2d_winograd")
    xt, wt, bt = _convt_case(2, 48, 3, 6, 5, 9, seed=46)   # 2 * 2 * 2 = 8 tiles
    wt.requires_grad_()
    bt.requires_grad_()
    xs = xt[:, :40].contiguous(memory_format=torch.channels_last).requires_grad_()
    y = slim_conv_transpose2d(xs, wt, bt, stride=4, padding=4, output_padding=3)
    assert y.shape == (2, 3, 24, 20)
    gy = torch.randn(y.shape, generator=_gen(47))
    y.backward(gy)
    assert fwdt == [1] and fwd == [1]
    ry, rdx, rdw, rdb = _grads64(lambda a, bw, bb: F.conv_transpose2d(
        a, bw, bb, stride=4, padding=4, output_padding=3), xs, wt[:40], bt, gy)
    assert _err(y, ry) < TOL and _err(xs.grad, rdx) < TOL and _err(wt.grad[:40], rdw) < TOL
    assert _err(bt.grad, rdb) < TOL
    xn = xt[:, :39].contiguous(memory_format=torch.channels_last).requires_grad_()
    slim_conv_transpose2d(xn, wt, bt, stride=4, padding=4, output_padding=3).sum().backward()
    monkeypatch.setattr(conv_mod, "WINOGRAD_TRAIN_MIN_TILES", 9)
    slim_conv_transpose2d(xs, wt, bt, stride=4, padding=4, output_padding=3).sum().backward()
    monkeypatch.setattr(conv_mod, "WINOGRAD_TRAIN_MIN_TILES", 8)
    monkeypatch.setattr(conv_mod, "CPU_WINOGRAD_TRAIN", False)
    slim_conv_transpose2d(xs, wt, bt, stride=4, padding=4, output_padding=3).sum().backward()
    assert fwdt == [1] and fwd == [1]


@needs_train_dispatch
def test_training_dispatch_needs_enough_tiles_and_channels(monkeypatch):
    """Small phase grids and narrow layers stay on oneDNN (the per-call weight transforms would
    cost more than Winograd saves): the thresholds are read per call."""
    calls = _count_calls(monkeypatch, "conv2d_winograd")
    x, w, b = _conv_case(1, 128, 128, 32, 32, 5, seed=31)    # output 16x16: 16 tiles
    w.requires_grad_()
    x = x.contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(conv_mod, "WINOGRAD_TRAIN_MIN_N", 128)
    monkeypatch.setattr(conv_mod, "WINOGRAD_TRAIN_MIN_TILES", 17)
    slim_conv2d(x, w, b, stride=2, padding=2)
    assert calls == []
    monkeypatch.setattr(conv_mod, "WINOGRAD_TRAIN_MIN_TILES", 16)
    slim_conv2d(x, w, b, stride=2, padding=2)
    assert calls == [1]
    monkeypatch.setattr(conv_mod, "WINOGRAD_TRAIN_MIN_N", 129)
    slim_conv2d(x, w, b, stride=2, padding=2)
    assert calls == [1]


@needs_kernels
@pytest.mark.parametrize("case", [(2, 40, 72, 16, 16, 5, 2, 2), (1, 36, 66, 13, 18, 5, 2, 2),
                                  (2, 33, 65, 12, 9, 3, 1, 1), (1, 40, 64, 15, 15, 4, 2, 1),
                                  (3, 9, 17, 4, 5, 5, 2, 2)])
def test_conv_weight_grad_matches_float64(case):
    """F(3x3, 4x4) weight gradient of a conv (polyphase split; tiles past the output; kernels
    that do not fill the 3x3 phase taps) against float64 aten.convolution_backward."""
    N, ci, co, H, W, k, s, p = case
    x, w, _ = _conv_case(N, ci, co, H, W, k, seed=40)
    x = x.contiguous(memory_format=torch.channels_last)
    gy = torch.randn(F.conv2d(x, w, None, s, p).shape, generator=_gen(41))
    ref = torch.ops.aten.convolution_backward(gy.double(), x.double(), w.double(), None, [s, s],
                                              [p, p], [1, 1], False, [0, 0], 1,
                                              [False, True, False])[1]
    got = Wg.conv2d_weight_grad(x, gy, k, s, p)
    assert got.dtype == torch.float32 and got.shape == w.shape
    assert _err(got, ref) < TOL


@needs_kernels
@pytest.mark.parametrize("case", [(2, 72, 40, 8, 8, 5, 2, 2, 1), (1, 66, 36, 7, 9, 5, 2, 2, 0),
                                  (2, 64, 33, 6, 5, 3, 1, 1, 0), (1, 9, 17, 3, 4, 5, 2, 2, 1)])
def test_conv_transpose_weight_grad_matches_float64(case):
    N, ci, co, H, W, k, s, p, op = case
    x, w, _ = _convt_case(N, ci, co, H, W, k, seed=42)
    x = x.contiguous(memory_format=torch.channels_last)
    gy = torch.randn(F.conv_transpose2d(x, w, None, s, p, op).shape, generator=_gen(43))
    ref = torch.ops.aten.convolution_backward(gy.double(), x.double(), w.double(), None, [s, s],
                                              [p, p], [1, 1], True, [op, op], 1,
                                              [False, True, False])[1]
    got = Wg.conv_transpose2d_weight_grad(x, gy, k, s, p)
    assert got.dtype == torch.float32 and got.shape == w.shape
    assert _err(got, ref) < TOL


def test_weight_grad_tap_tables_hold_every_tap_once():
    """The weight gradient writes each kernel tap once into an uninitialized tensor: every
    geometry the Winograd path admits (conv and transposed, k <= 9, s <= 4) must map its phases'
    3x3 taps onto all k*k taps, none twice."""
    seen = 0
    for k in range(1, 10):
        for s in range(1, 5):
            for p in range(k):
                if Wg.winograd_geometry_ok(k, s, p, False):
                    v = Wg._taps_conv(k, s)
                    v = v[v >= 0]
                    assert sorted(v.tolist()) == list(range(k * k)), (k, s)
                    seen += 1
                if Wg.winograd_geometry_ok(k, s, p, True):
                    v = Wg._taps_transposed(k, s, p)
                    v = v[v >= 0]
                    assert sorted(v.tolist()) == list(range(k * k)), (k, s, p)
                    seen += 1
    assert seen > 50


@needs_kernels
def test_weight_grad_kernel_refuses_bad_arguments():
    _, G, _ = Wg.winograd_matrices(dtype=torch.float32)
    out = torch.empty(9, 8)
    with pytest.raises(RuntimeError, match="bad arguments"):
        Wg._kernels().winograd_weight_grad(0, G.contiguous().data_ptr(), 8, out.data_ptr(), 1,
                                           0, 8, 1, 8, 1, 1)
    M = torch.zeros(36, 8)
    taps = torch.zeros(4, 9, dtype=torch.int32)
    for cp, c1, c2 in [(3, 1, 1),     # cp does not divide n
                       (4, 1, 3),     # c2 does not divide cp
                       (2, 2, 1)]:    # phases on both sides (4 / 2 / 2 > 1 and 2 / 1 > 1)
        with pytest.raises(RuntimeError, match="bad arguments"):
            Wg._kernels().winograd_weight_grad(M.data_ptr(), G.contiguous().data_ptr(), 8,
                                               out.data_ptr(), 1, taps.data_ptr(), cp, c1, c2,
                                               1, 1)
    _, _, AT = Wg.winograd_matrices(dtype=torch.float32)
    AT = AT.contiguous()
    gy = torch.zeros(1, 9, 9, 8)
    U = torch.empty(36, 4, 8)
    with pytest.raises(RuntimeError, match="bad arguments"):   # 2x2 tiles do not cover 9x9
        Wg._kernels().winograd_grad_tiles(gy.data_ptr(), 1, 9, 9, 8, 1, 2, 2, AT.data_ptr(),
                                          U.data_ptr(), 1)


@needs_kernels
def test_weight_grad_in_several_rounds(monkeypatch):
    """Small rounds: the GEMM over tiles accumulates round after round (first round written,
    the others added)."""
    monkeypatch.setattr(Wg, "CHUNK_BYTES", 1 << 16)
    monkeypatch.setattr(Wg, "CHUNK_MIN_BYTES", 1 << 14)
    x, w, _ = _conv_case(2, 40, 72, 32, 32, 5, seed=44)
    x = x.contiguous(memory_format=torch.channels_last)
    gy = torch.randn(F.conv2d(x, w, None, 2, 2).shape, generator=_gen(45))
    ref = torch.ops.aten.convolution_backward(gy.double(), x.double(), w.double(), None, [2, 2],
                                              [2, 2], [1, 1], False, [0, 0], 1,
                                              [False, True, False])[1]
    assert _err(Wg.conv2d_weight_grad(x, gy, 5, 2, 2), ref) < TOL


@pytest.mark.skipif(not Wg._gemm_avx512() or conv_mod._cpu_capability() != "AVX512",
                    reason="needs an AVX-512 CPU with the batched GEMM built")
def test_avx512_dispatch_rule_with_the_gemm(monkeypatch):
    """With the AVX-512 batched GEMM, the shipped thresholds (not patched): Winograd from
    ``WINOGRAD_AVX512_GEMM_MIN_C`` channels on both sides at any size (one tile), wide layers
    (192 x 192) from ``WINOGRAD_AVX512_GEMM_MIN_TILES_WIDE`` tiles; not the input image layer; the
    output one from ``WINOGRAD_IMAGE_MIN_CIN`` inputs."""
    conv_calls = _count_calls(monkeypatch, "conv2d_winograd")
    convt_calls = _count_calls(monkeypatch, "conv_transpose2d_winograd")
    c = conv_mod.WINOGRAD_AVX512_GEMM_MIN_C
    with torch.no_grad():
        x, w, b = _conv_case(1, c - 1, c - 1, 8, 8, 5, seed=71)    # too narrow
        slim_conv2d(x, w, b, stride=2, padding=2)
        x, w, b = _conv_case(1, 3, 96, 40, 48, 9, seed=72)          # the image layer
        slim_conv2d(x, w, b, stride=4, padding=4)
        assert conv_calls == []
        x, w, b = _conv_case(1, c, c, 8, 8, 5, seed=73)             # 4x4 output: one tile
        y = slim_conv2d(x, w, b, stride=2, padding=2)
        assert conv_calls == [1]
        assert _err(y, F.conv2d(x.double(), w.double(), b.double(), stride=2, padding=2)) < TOL
        x, w, b = _convt_case(1, c, c, 3, 4, 5, seed=74)            # one input tile
        y = slim_conv_transpose2d(x, w, b, stride=2, padding=2, output_padding=1)
        assert convt_calls == [1]
        assert _err(y, F.conv_transpose2d(x.double(), w.double(), b.double(), stride=2,
                                          padding=2, output_padding=1)) < TOL
        x, w, b = _conv_case(1, 192, 192, 16, 16, 5, seed=75)       # wide, 4 tiles: oneDNN
        slim_conv2d(x, w, b, stride=2, padding=2)
        assert conv_calls == [1]
        x, w, b = _conv_case(1, 192, 192, 24, 24, 5, seed=75)       # wide, 9 tiles
        slim_conv2d(x, w, b, stride=2, padding=2)
        assert conv_calls == [1, 1]
        # onto an image (N = 16 * 3): the image kernel below WINOGRAD_IMAGE_MIN_CIN inputs,
        # Winograd from there
        cmin = conv_mod.WINOGRAD_IMAGE_MIN_CIN
        x, w, b = _convt_case(1, cmin - 1, 3, 8, 8, 9, seed=76)
        slim_conv_transpose2d(x, w, b, stride=4, padding=4, output_padding=3)
        assert convt_calls == [1]
        x, w, b = _convt_case(1, cmin, 3, 8, 8, 9, seed=77)
        y = slim_conv_transpose2d(x, w, b, stride=4, padding=4, output_padding=3)
        assert convt_calls == [1, 1]
        assert _err(y, F.conv_transpose2d(x.double(), w.double(), b.double(), stride=4,
                                          padding=4, output_padding=3)) < TOL


def test_winograd_pays():
    """Winograd where it saves enough products (k >= 2 * stride, at most 3 phase taps): 5x5/2,
    9x9/4, 3x3/1, 4x4/2 and their transposed forms; not 1x1/1, 2x2/2, 3x3/2, 5x5/3, 6x6/4 (they
    map onto it but save at most 1.2x, or cost more), nor 7x7/2 (4 taps: no mapping)."""
    for k, s, p in [(5, 2, 2), (9, 4, 4), (3, 1, 1), (4, 2, 1)]:
        assert Wg.winograd_pays(k, s, p, False) and Wg.winograd_pays(k, s, p, True), (k, s, p)
    for k, s, p, tr in [(1, 1, 0, False), (2, 2, 0, False), (3, 2, 1, False), (2, 2, 0, True),
                        (1, 1, 0, True), (5, 3, 1, True), (6, 4, 1, True)]:
        assert Wg.winograd_geometry_ok(k, s, p, tr), (k, s, p, tr)
        assert not Wg.winograd_pays(k, s, p, tr), (k, s, p, tr)
    assert not Wg.winograd_pays(7, 2, 3, False)   # 4 taps: not even a geometry


@pytest.mark.skipif(not Wg.winograd_available() or
                    conv_mod._cpu_capability() not in ("AVX2", "AVX512"),
                    reason="the conv ops use Winograd on AVX2 and AVX-512 CPUs only")
def test_geometries_with_fewer_taps_stay_on_onednn(monkeypatch):
    """1x1/1, 2x2/2, transposed 2x2/2 and transposed 5x5/3 convs with channels and tiles that
    5x5/2 convs would take to Winograd stay on oneDNN (and match float64)."""
    conv_calls = _count_calls(monkeypatch, "conv2d_winograd")
    convt_calls = _count_calls(monkeypatch, "conv_transpose2d_winograd")
    with torch.no_grad():
        for k, s, p in [(1, 1, 0), (2, 2, 0), (5, 2, 2)]:
            x, w, b = _conv_case(1, 96, 96, 48, 48, k, seed=81)
            y = slim_conv2d(x, w, b, stride=s, padding=p)
            assert _err(y, F.conv2d(x.double(), w.double(), b.double(), stride=s,
                                    padding=p)) < TOL
        for k, s, p in [(2, 2, 0), (5, 3, 1)]:
            x, w, b = _convt_case(1, 96, 96, 24, 24, k, seed=82)
            y = slim_conv_transpose2d(x, w, b, stride=s, padding=p)
            assert _err(y, F.conv_transpose2d(x.double(), w.double(), b.double(), stride=s,
                                              padding=p)) < TOL
    assert conv_calls == [1] and convt_calls == []   # the 5x5/2 conv only


@needs_kernels
def test_kernels_refuse_tensors_on_another_device():
    """A transformed weight or bias that is not on the CPU is refused with a message (its pointer
    would be a device address); the meta device stands in for CUDA."""
    x, w, b = _conv_case(1, 8, 8, 12, 12, 5)
    U = Wg.winograd_conv2d_weight(w, 2)
    with pytest.raises(ValueError, match="transformed weight is on meta"):
        Wg.conv2d_winograd(x, U.to("meta"), b, 5, 2, 2)
    with pytest.raises(ValueError, match="bias is on meta"):
        Wg.conv2d_winograd(x, U, b.to("meta"), 5, 2, 2)


@needs_kernels
@pytest.mark.parametrize("gemm", [False, True], ids=["bmm", "gemm_avx512"])
def test_avx512_cpus_take_winograd_without_gradient_from_enough_channels(monkeypatch, gemm):
    """On AVX-512 CPUs (the capability patched here) no-grad fp32 convs and transposed convs with
    enough channels on both sides (``WINOGRAD_AVX512_MIN_C`` with ``torch.bmm`` as the GEMM,
    ``WINOGRAD_AVX512_GEMM_MIN_C`` with the AVX-512 batched GEMM) run by Winograd (values equal
    float64); narrower ones, a gradient (9 tiles: below the training rule's
    WINOGRAD_TRAIN_MIN_TILES) or CPU_WINOGRAD_AVX512 = False stay on oneDNN."""
    if gemm and not Wg._gemm_avx512():
        pytest.skip("the Winograd convs do not use the AVX-512 GEMM here")
    monkeypatch.setattr(Wg, "GEMM_AVX512", gemm)
    monkeypatch.setattr(conv_mod, "_cpu_capability", lambda: "AVX512")
    fwd = _count_calls(monkeypatch, "conv2d_winograd")
    fwdt = _count_calls(monkeypatch, "conv_transpose2d_winograd")
    c = conv_mod.WINOGRAD_AVX512_GEMM_MIN_C if gemm else conv_mod.WINOGRAD_AVX512_MIN_C
    x, w, b = _conv_case(1, c, c, 24, 24, 5, seed=61)   # 12x12 output: 9 tiles
    xt, wt, bt = _convt_case(1, c, c, 12, 12, 5, seed=62)
    x = x.contiguous(memory_format=torch.channels_last)
    xt = xt.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = slim_conv2d(x, w, b, stride=2, padding=2)
        yt = slim_conv_transpose2d(xt, wt, bt, stride=2, padding=2, output_padding=1)
    assert fwd == [1] and fwdt == [1]
    assert _err(y, F.conv2d(x.double(), w.double(), b.double(), stride=2, padding=2)) < TOL
    assert _err(yt, F.conv_transpose2d(xt.double(), wt.double(), bt.double(), stride=2,
                                       padding=2, output_padding=1)) < TOL
    with torch.no_grad():
        slim_conv2d(x, w, b, stride=2, padding=2, out_width=c - 1)          # too narrow
        slim_conv_transpose2d(xt[:, :c - 1], wt, bt, stride=2, padding=2, output_padding=1)
    slim_conv2d(x, w.clone().requires_grad_(), b, stride=2, padding=2)      # training
    monkeypatch.setattr(conv_mod, "CPU_WINOGRAD_AVX512", False)
    with torch.no_grad():
        slim_conv2d(x, w, b, stride=2, padding=2)
    assert fwd == [1] and fwdt == [1]
