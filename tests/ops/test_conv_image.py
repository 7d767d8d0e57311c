"""The direct fp32 AVX2 conv for few-channel inputs (slimkernels.ops.conv_image) against float64
F.conv2d, and the conv op's dispatch to it."""
import os

import pytest
import torch
import torch.nn.functional as F

from slimkernels.ops import conv as conv_mod
from slimkernels.ops import conv_image as CI
from slimkernels.ops import slim_conv2d, slim_conv_transpose2d
from slimkernels.ops._raw import torch_avx512

_FLAGS = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
HAS_AVX2 = " avx2" in _FLAGS and " fma" in _FLAGS
needs_kernel = pytest.mark.skipif(not CI.image_conv_available(),
                                  reason="no AVX2 + FMA here or _cpu_kernels not built")
TOL = 1e-5   # fp32, relative to the output's largest magnitude


def _case(N, ci, co, H, W, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, ci, H, W, generator=g)
    w = torch.randn(co, ci, k, k, generator=g) / (ci * k * k) ** 0.5
    return x, w, torch.randn(co, generator=g)


def _err(y, ref):
    assert y.shape == ref.shape, (tuple(y.shape), tuple(ref.shape))
    assert torch.isfinite(y).all(), "NaN/Inf in the result"
    return ((y.double() - ref).abs().max() / ref.abs().max()).item()


def test_available_matches_the_cpu():
    assert CI.image_conv_available() == HAS_AVX2


CASES = [  # N, C_in, C_out, H, W, k, stride, padding
    (1, 3, 20, 33, 47, 9, 4, 4),    # SlimCAE's image layer, odd sizes, a partial 16-channel panel
    (2, 3, 48, 64, 40, 9, 4, 4),    # batch 2, three full panels
    (1, 1, 5, 7, 9, 3, 1, 1),       # one channel, stride 1
    (1, 4, 33, 17, 23, 5, 2, 2),    # 4 channels, 3 panels (the last with one channel)
    (1, 3, 16, 11, 13, 9, 4, 0),    # no padding: no border windows
    (1, 3, 7, 4, 5, 9, 4, 4),       # smaller than the kernel: every window crosses a border
    (1, 8, 17, 10, 30, 3, 2, 1),    # the most channels the kernel takes
]


HAS_AVX512 = " avx512f" in _FLAGS
# the fp32 AVX-512 variants run where the CPU has AVX-512F and torch runs at that level (not
# under ATEN_CPU_CAPABILITY=avx2)
AVX512_VARIANTS = HAS_AVX512 and torch_avx512()
FP32_VARIANTS = pytest.mark.parametrize("avx512", [False, True], ids=["avx2", "avx512"])


class _KernelSpy:
    """The kernels module with the names of the functions called through it recorded."""

    def __init__(self, K):
        self._K, self.called = K, []

    def __getattr__(self, name):
        attr = getattr(self._K, name)
        if not (callable(attr) and name.endswith("_forward")):
            return attr

        def call(*a, **k):
            self.called.append(name)
            return attr(*a, **k)
        return call


def _fp32_variant(monkeypatch, avx512):
    """Run the fp32 kernels' ``avx512`` variant (skip where the CPU lacks it); the spy that
    records which kernels ran."""
    if avx512 and not AVX512_VARIANTS:
        pytest.skip("no AVX-512F here, or torch held below its AVX-512 level")
    monkeypatch.setattr(CI, "FP32_AVX512", avx512)
    assert CI._fp32_avx512() == avx512
    spy = _KernelSpy(CI._kernels())
    monkeypatch.setattr(CI, "_kernels", lambda: spy)
    return spy


@needs_kernel
@pytest.mark.parametrize("case", CASES + [
    (1, 3, 48, 40, 70, 9, 4, 4),    # 3 panels: one 8-pixel x 3-panel AVX-512 tile per step
    (2, 3, 80, 21, 90, 9, 4, 4),    # 5 panels (3 + 2), row tails of 1-7 pixels, batch 2
    (1, 2, 40, 9, 61, 5, 1, 2),     # stride 1: 61 columns, a partial third panel
])
@pytest.mark.parametrize("channels_last", [True, False])
@FP32_VARIANTS
def test_matches_float64(case, channels_last, avx512, monkeypatch):
    """Both fp32 variants (AVX2: 6-pixel x 1-panel tiles; AVX-512: 8 x 3), where the CPU has
    them, on the same packed weight."""
    spy = _fp32_variant(monkeypatch, avx512)
    N, ci, co, H, W, k, s, p = case
    x, w, b = _case(N, ci, co, H, W, k)
    ref = F.conv2d(x.double(), w.double(), b.double(), stride=s, padding=p)
    xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    y = CI.conv2d_image(xin, CI.pack_image_conv_weight(w), b, k, s, p, co)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert _err(y, ref) < TOL
    y0 = CI.conv2d_image(xin, CI.pack_image_conv_weight(w), None, k, s, p, co)
    assert _err(y0, ref - b.double()[:, None, None]) < TOL
    assert spy.called == ["conv_avx512_forward" if avx512 else "conv_avx2_forward"] * 2


@needs_kernel
@FP32_VARIANTS
def test_random_geometries_match_float64_fp32(avx512, monkeypatch):
    """A seeded sweep (1-8 input channels, 1-60 outputs, kernels 1-11, strides 1-5, padding past
    the kernel's half, inputs down to the kernel's size, batches) for each fp32 variant."""
    _fp32_variant(monkeypatch, avx512)
    import random
    rng = random.Random(21)
    done = 0
    while done < 40:
        N, C, co = rng.randint(1, 2), rng.randint(1, 8), rng.randint(1, 60)
        k, s, p, H, W = (rng.randint(1, 11), rng.randint(1, 5), rng.randint(0, 11),
                         rng.randint(1, 25), rng.randint(1, 40))
        if min(H, W) + 2 * p < k:
            continue
        x, w, b = _case(N, C, co, H, W, k, seed=done)
        ref = F.conv2d(x.double(), w.double(), b.double(), stride=s, padding=p)
        assert _err(CI.conv2d_image(x, CI.pack_image_conv_weight(w), b, k, s, p, co), ref) < TOL
        done += 1


@needs_kernel
def test_packed_weight_on_another_device_is_refused():
    """The meta device stands in for CUDA: a packed weight there is refused, not read."""
    x, w, b = _case(1, 3, 20, 16, 16, 9)
    with pytest.raises(ValueError, match="on meta"):
        CI.conv2d_image(x, CI.pack_image_conv_weight(w).to("meta"), b, 9, 4, 4, 20)
    xt = torch.randn(1, 12, 6, 6)
    wt = torch.randn(12, 3, 9, 9)
    with pytest.raises(ValueError, match="on meta"):
        CI.conv_transpose2d_image(xt, CI.pack_image_conv_transpose_weight(wt).to("meta"), None,
                                  9, 4, 4, 3, 3)


@needs_kernel
def test_bad_input_is_refused():
    x, w, b = _case(1, 3, 20, 16, 16, 9)
    wp = CI.pack_image_conv_weight(w)
    with pytest.raises(ValueError, match="fp32"):
        CI.conv2d_image(x.double(), wp, b, 9, 4, 4, 20)
    with pytest.raises(ValueError, match="does not fit"):
        CI.conv2d_image(x, wp, b, 9, 4, 4, 40)
    with pytest.raises(ValueError, match="does not fit"):
        CI.conv2d_image(x, wp[:, :, 1:], b, 9, 4, 4, 20)
    with pytest.raises(ValueError, match="channels"):
        CI.conv2d_image(torch.randn(1, 9, 16, 16), wp, b, 9, 4, 4, 20)
    with pytest.raises(ValueError, match="bias"):
        CI.conv2d_image(x, wp, b[:3], 9, 4, 4, 20)
    with pytest.raises(ValueError, match="smaller"):
        CI.conv2d_image(x[:, :, :4, :4], wp, b, 9, 4, 0, 20)
    with pytest.raises(ValueError, match="square"):
        CI.pack_image_conv_weight(torch.randn(4, 3, 3, 5))


@pytest.mark.skipif(not CI.image_conv_available() or
                    conv_mod._cpu_capability() not in ("AVX2", "AVX512"),
                    reason="the conv op uses this kernel on AVX2 and AVX-512 CPUs only")
def test_slim_conv2d_dispatches_the_image_layer(monkeypatch):
    """fp32 enc1-like convs go to the kernel on AVX2 CPUs and, by its AVX-512 variant only, on
    AVX-512 ones; ``CPU_IMAGE_CONV`` (and on AVX-512 ``CPU_IMAGE_CONV_AVX512`` or
    ``conv_image.FP32_AVX512``) off: oneDNN."""
    avx512 = conv_mod._cpu_capability() == "AVX512"
    kspy = _fp32_variant(monkeypatch, avx512)
    calls = []
    real = CI.conv2d_image

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(CI, "conv2d_image", spy)
    x, w, b = _case(1, 3, 64, 40, 56, 9, seed=3)
    ref = F.conv2d(x.double(), w[:40].double(), b[:40].double(), stride=4, padding=4)
    with torch.no_grad():
        y = slim_conv2d(x, w, b, stride=4, padding=4, out_width=40)
    assert calls == [1]
    assert _err(y, ref) < TOL
    y = slim_conv2d(x, w.requires_grad_(), b, stride=4, padding=4, out_width=40)  # gradient
    assert calls == [1] and y.requires_grad
    assert kspy.called == ["conv_avx512_forward" if avx512 else "conv_avx2_forward"]
    monkeypatch.setattr(conv_mod, "CPU_IMAGE_CONV", False)
    with torch.no_grad():
        slim_conv2d(x, w, b, stride=4, padding=4, out_width=40)
    assert calls == [1]
    if avx512:   # on AVX-512 CPUs: the AVX-512 variant or nothing
        monkeypatch.setattr(conv_mod, "CPU_IMAGE_CONV", True)
        for name in ("CPU_IMAGE_CONV_AVX512", "FP32_AVX512"):
            with monkeypatch.context() as m:
                m.setattr(conv_mod if name.startswith("CPU") else CI, name, False)
                with torch.no_grad():
                    y = slim_conv2d(x, w, b, stride=4, padding=4, out_width=40)
                assert calls == [1], name
                assert _err(y, ref) < TOL
        with torch.no_grad():
            slim_conv2d(x, w, b, stride=4, padding=4, out_width=40)
        assert calls == [1, 1]


T_CASES = [  # N, C_in, C_out, H, W, k, stride, padding, output_padding
    (1, 12, 3, 10, 7, 9, 4, 4, 3),   # SlimCAE's output layer (input channels: one tail block)
    (2, 13, 3, 9, 11, 9, 4, 4, 3),   # batch 2, 13 channels
    (1, 5, 1, 7, 9, 3, 1, 1, 0),     # one output channel, stride 1
    (1, 16, 2, 6, 5, 5, 2, 2, 1),    # two output channels, 5x5/2
    (1, 48, 3, 3, 2, 9, 4, 4, 3),    # input smaller than a 4-pixel block: checked pixels only
    (1, 24, 3, 5, 40, 9, 4, 4, 0),   # wide rows: interior blocks, partial block, no out-padding
    (1, 7, 3, 4, 11, 11, 4, 5, 2),   # 33 lanes: a 4-vector and a 1-vector group per row
    (1, 9, 2, 5, 6, 7, 3, 0, 1),     # no padding: output columns from the first buffer lane
    (1, 6, 3, 3, 4, 5, 2, 4, 1),     # padding past the kernel's half: inner output only
    (1, 5, 3, 3, 4, 23, 8, 11, 7),   # 69 lanes: a second vector group (v0 > 0) in every variant
]


@needs_kernel
@pytest.mark.parametrize("case", T_CASES)
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("avx512", [False, True], ids=["avx2", "avx512"])
def test_transposed_matches_float64(case, channels_last, avx512, monkeypatch):
    """Both fp32 variants: AVX2 (8-lane taps) and AVX-512 (16-lane), where the CPU has it."""
    if avx512 and not AVX512_VARIANTS:
        pytest.skip("no AVX-512F here, or torch held below its AVX-512 level")
    monkeypatch.setattr(CI, "FP32_AVX512", avx512)
    assert CI._lanes(5, 1) == (16 if avx512 else 8)
    N, ci, co, H, W, k, s, p, op = case
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, ci, H, W, generator=g)
    w = torch.randn(ci, co, k, k, generator=g) / (ci * k * k) ** 0.5
    b = torch.randn(co, generator=g)
    ref = F.conv_transpose2d(x.double(), w.double(), b.double(), stride=s, padding=p,
                             output_padding=op)
    xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    wp = CI.pack_image_conv_transpose_weight(w)
    y = CI.conv_transpose2d_image(xin, wp, b, k, s, p, op, co)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert _err(y, ref) < TOL
    y0 = CI.conv_transpose2d_image(xin, wp, None, k, s, p, op, co)
    assert _err(y0, ref - b.double()[:, None, None]) < TOL


@needs_kernel
def test_transposed_bad_input_is_refused():
    x = torch.randn(1, 16, 6, 6)
    w = torch.randn(16, 3, 9, 9)
    wp = CI.pack_image_conv_transpose_weight(w)
    with pytest.raises(ValueError, match="fp32"):
        CI.conv_transpose2d_image(x.double(), wp, None, 9, 4, 4, 3, 3)
    with pytest.raises(ValueError, match="output channels"):
        CI.conv_transpose2d_image(x, wp, None, 9, 4, 4, 3, 4)
    with pytest.raises(ValueError, match="does not fit"):
        CI.conv_transpose2d_image(x[:, :7], wp, None, 9, 4, 4, 3, 3)
    with pytest.raises(ValueError, match="geometry"):
        CI.conv_transpose2d_image(x, wp, None, 9, 4, 4, 4, 3)
    with pytest.raises(ValueError, match="bias"):
        CI.conv_transpose2d_image(x, wp, torch.zeros(2), 9, 4, 4, 3, 3)


@needs_kernel
def test_transposed_too_many_row_buffers():
    """A 65x65 stride-1 kernel onto one channel needs 72 row buffers: the kernel refuses it with
    a clear error, and the conv op runs it on oneDNN instead."""
    assert CI.transposed_geometry_ok(9, 4, 3) and not CI.transposed_geometry_ok(65, 1, 1)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 2, 3, 3, generator=g)
    w = torch.randn(2, 1, 65, 65, generator=g) / 100
    with pytest.raises(ValueError, match="row buffers"):
        CI.conv_transpose2d_image(x, CI.pack_image_conv_transpose_weight(w), None, 65, 1, 0, 0, 1)
    with torch.no_grad():
        y = slim_conv_transpose2d(x, w, None, stride=1, padding=0)
    assert _err(y, F.conv_transpose2d(x.double(), w.double())) < TOL


@pytest.mark.skipif(not CI.image_conv_available() or
                    conv_mod._cpu_capability() not in ("AVX2", "AVX512"),
                    reason="the conv op uses this kernel on AVX2 and AVX-512 CPUs only")
def test_slim_conv_transpose2d_dispatches_the_output_layer(monkeypatch):
    calls = []
    real = CI.conv_transpose2d_image

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(CI, "conv_transpose2d_image", spy)
    g = torch.Generator().manual_seed(2)
    w = torch.randn(64, 3, 9, 9, generator=g) / 50
    b = torch.randn(3, generator=g)
    x = torch.randn(1, 40, 7, 9, generator=g)
    ref = F.conv_transpose2d(x.double(), w[:40].double(), b.double(), stride=4, padding=4,
                             output_padding=3)
    with torch.no_grad():
        y = slim_conv_transpose2d(x, w, b, stride=4, padding=4, output_padding=3)
    assert calls == [1]
    assert _err(y, ref) < TOL
    monkeypatch.setattr(conv_mod, "CPU_IMAGE_CONV", False)
    with torch.no_grad():
        slim_conv_transpose2d(x, w, b, stride=4, padding=4, output_padding=3)
    assert calls == [1]


def test_global_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv("SLIMKERNELS_CPU_KERNELS", "0")
    assert not CI.image_conv_available()
    x, w, b = _case(1, 3, 8, 12, 12, 9)
    with pytest.raises(RuntimeError, match="SLIMKERNELS_CPU_KERNELS"):
        CI.conv2d_image(x, CI.pack_image_conv_weight(w), b, 9, 4, 4, 8)


# -- the bf16 transposed kernel (AVX512-BF16) ---------------------------------------------------
HAS_AVX512_BF16 = HAS_AVX2 and all(f" {f}" in _FLAGS for f in
                                   ("avx512f", "avx512bw", "avx512vl", "avx512_bf16"))
needs_bf16 = pytest.mark.skipif(not CI.image_conv_bf16_available(),
                                reason="no AVX512-BF16 here or _cpu_kernels not built")
BF16_CASES = T_CASES + [
    (1, 48, 3, 6, 30, 9, 4, 4, 3),   # SlimCAE's w=48: 24 channel pairs, 12-pixel blocks + tail
    (1, 1, 3, 4, 5, 9, 4, 4, 3),     # one input channel: the odd channel alone
    (2, 33, 2, 5, 13, 5, 2, 2, 1),   # odd channel count, two outputs, batch 2
    (1, 17, 1, 3, 20, 20, 3, 3, 2),  # 20 lanes: a 2-vector group
]


def _spy_dtypes(monkeypatch, name):
    """The dtypes of x in every call of ``conv_image.<name>`` from now on (the kernel still
    runs)."""
    seen = []
    real = getattr(CI, name)

    def spy(x, *a, **k):
        seen.append(x.dtype)
        return real(x, *a, **k)
    monkeypatch.setattr(CI, name, spy)
    return seen


def _bf16_case(case, seed=5):
    N, ci, co, H, W, k, s, p, op = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, ci, H, W, generator=g).bfloat16()
    w = torch.randn(ci, co, k, k, generator=g) / (ci * k * k) ** 0.5
    b = torch.randn(co, generator=g)
    return x, w, b


def _check_one_bf16_rounding(y, ref):
    """fp32 sums rounded once to bf16: each value within half a bf16 ulp (2^-8 relative) of the
    float64 result, plus fp32 summation slack (1e-5 of the largest value)."""
    assert y.dtype == torch.bfloat16 and y.shape == ref.shape
    assert torch.isfinite(y).all(), "NaN/Inf in the result"
    err = (y.double() - ref).abs()
    bound = ref.abs() * 2.0 ** -8 + 1e-5 * ref.abs().max()
    assert (err <= bound).all(), (err - bound).max().item()


def _check_bf16_dispatch(monkeypatch, name, ref, call):
    """``call()`` under CPU bf16 autocast without gradient runs ``conv_image.<name>`` once, on
    bf16 x, and gives ``ref`` with one bf16 rounding; with ``CPU_IMAGE_CONV_BF16`` off it does
    not run it (and still returns bf16)."""
    seen = _spy_dtypes(monkeypatch, name)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = call()
    assert seen == [torch.bfloat16]
    _check_one_bf16_rounding(y, ref)
    monkeypatch.setattr(conv_mod, "CPU_IMAGE_CONV_BF16", False)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y2 = call()
    assert seen == [torch.bfloat16] and y2.dtype == torch.bfloat16


def test_bf16_available_matches_the_cpu():
    assert CI.image_conv_bf16_available() == HAS_AVX512_BF16


@needs_bf16
@pytest.mark.parametrize("case", BF16_CASES)
@pytest.mark.parametrize("channels_last", [True, False])
def test_transposed_bf16_matches_float64(case, channels_last):
    N, ci, co, H, W, k, s, p, op = case
    x, w, b = _bf16_case(case)
    wb = w.bfloat16().double()   # the kernel's taps: w rounded to bf16 by the packing
    ref = F.conv_transpose2d(x.double(), wb, b.double(), stride=s, padding=p, output_padding=op)
    xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    wp = CI.pack_image_conv_transpose_weight(w, torch.bfloat16)
    assert wp.dtype == torch.bfloat16 and wp.shape == (k, -(-ci // 2), CI._lanes(k, co, wp.dtype), 2)
    y = CI.conv_transpose2d_image(xin, wp, b, k, s, p, op, co)
    assert y.is_contiguous(memory_format=torch.channels_last)
    _check_one_bf16_rounding(y, ref)
    y0 = CI.conv_transpose2d_image(xin, wp, None, k, s, p, op, co)
    _check_one_bf16_rounding(y0, ref - b.double()[:, None, None])


@needs_bf16
def test_transposed_bf16_odd_channel_reads_its_pixel_only():
    """With an odd channel count the last channel is broadcast alone: the next pixel's first
    channel (here inf) must not be read with it (inf x a zero tap would be NaN). Stride 4 >
    kernel 3, so each pixel has its own outputs."""
    x, w, b = _bf16_case((1, 5, 3, 2, 3, 3, 4, 0, 0))
    x = x.contiguous(memory_format=torch.channels_last)
    x[0, 0, 0, 1] = float("inf")   # pixel (0, 1), channel 0: right after pixel (0, 0) in memory
    y = CI.conv_transpose2d_image(x, CI.pack_image_conv_transpose_weight(w, torch.bfloat16), b,
                                  3, 4, 0, 0, 3)
    ref = F.conv_transpose2d(x.double(), w.bfloat16().double(), b.double(), stride=4)
    own = (slice(None), slice(None), slice(0, 3), slice(0, 3))   # pixel (0, 0)'s outputs
    _check_one_bf16_rounding(y[own], ref[own])
    assert not torch.isfinite(y[0, :, 0:3, 4:7]).all()   # pixel (0, 1)'s: inf there too


@needs_bf16
def test_transposed_bf16_bad_input_is_refused():
    x = torch.randn(1, 16, 6, 6).bfloat16()
    w = torch.randn(16, 3, 9, 9)
    with pytest.raises(ValueError, match="does not fit"):   # fp32 taps for bf16 x
        CI.conv_transpose2d_image(x, CI.pack_image_conv_transpose_weight(w), None, 9, 4, 4, 3, 3)
    wp = CI.pack_image_conv_transpose_weight(w, torch.bfloat16)
    with pytest.raises(ValueError, match="does not fit"):   # bf16 taps for fp32 x
        CI.conv_transpose2d_image(x.float(), wp, None, 9, 4, 4, 3, 3)
    with pytest.raises(ValueError, match="fp32 or bf16"):
        CI.conv_transpose2d_image(x.half(), wp, None, 9, 4, 4, 3, 3)
    with pytest.raises(ValueError, match="dtype"):
        CI.pack_image_conv_transpose_weight(w, torch.float16)


@pytest.mark.skipif(not CI.image_conv_bf16_available() or conv_mod._amx(),
                    reason="the conv op uses the bf16 kernel on AVX512-BF16 CPUs without AMX")
def test_slim_conv_transpose2d_dispatches_the_bf16_output_layer(monkeypatch):
    """Under CPU bf16 autocast without gradient SlimCAE's output layer (a 64-wide weight used at
    40 channels, in place) goes to the bf16 kernel; CPU_IMAGE_CONV_BF16 = False turns it off."""
    x, w, b = _bf16_case((1, 64, 3, 7, 9, 9, 4, 4, 3))
    x = x[:, :40].float()
    ref = F.conv_transpose2d(x.double(), w[:40].bfloat16().double(), b.double(), stride=4,
                             padding=4, output_padding=3)
    _check_bf16_dispatch(monkeypatch, "conv_transpose2d_image", ref, lambda: slim_conv_transpose2d(
        x, w, b, stride=4, padding=4, output_padding=3))


# -- the bf16 conv from few channels (AVX512-BF16) ----------------------------------------------
@needs_bf16
@pytest.mark.parametrize("case", CASES + [(1, 3, 48, 40, 70, 9, 4, 4),    # 3 panels, 8-px tiles
                                          (1, 3, 72, 13, 37, 9, 4, 4)])   # 5 panels: 3 + 2
@pytest.mark.parametrize("channels_last", [True, False])
def test_bf16_conv_matches_float64(case, channels_last):
    """Each value within half a bf16 ulp of float64 on the same bf16 inputs (odd k*C runs: the
    last element alone; partial panels; interior tiles, tails and border windows)."""
    N, ci, co, H, W, k, s, p = case
    x, w, b = _case(N, ci, co, H, W, k, seed=3)
    x = x.bfloat16()
    ref = F.conv2d(x.double(), w.bfloat16().double(), b.double(), stride=s, padding=p)
    xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    wp = CI.pack_image_conv_weight(w, torch.bfloat16)
    assert wp.shape == (-(-co // 16), k, -(-(k * ci) // 2), 16, 2)
    y = CI.conv2d_image(xin, wp, b, k, s, p, co)
    assert y.is_contiguous(memory_format=torch.channels_last)
    _check_one_bf16_rounding(y, ref)
    _check_one_bf16_rounding(CI.conv2d_image(xin, wp, None, k, s, p, co),
                             ref - b.double()[:, None, None])


@needs_bf16
def test_bf16_conv_odd_run_reads_its_window_only():
    """k*C = 3 (odd): the last element of a window row is broadcast alone. With stride 4 > k the
    element after each window row belongs to no window: inf there must not reach any output
    (inf x a zero tap would be NaN)."""
    x, w, b = _case(1, 1, 16, 3, 24, 3, seed=9)
    x = x.bfloat16().contiguous(memory_format=torch.channels_last)
    x[0, 0, :, 3::4] = float("inf")      # columns 3, 7, ...: after windows 0-2, 4-6, ...
    y = CI.conv2d_image(x, CI.pack_image_conv_weight(w, torch.bfloat16), b, 3, 4, 0, 16)
    xf = x.double().clone()
    xf[0, 0, :, 3::4] = 0.0              # never read by the true conv
    _check_one_bf16_rounding(y, F.conv2d(xf, w.bfloat16().double(), b.double(), stride=4))


@pytest.mark.skipif(not CI.image_conv_bf16_available() or conv_mod._amx(),
                    reason="the conv op uses the bf16 kernels on AVX512-BF16 CPUs without AMX")
def test_slim_conv2d_dispatches_the_bf16_image_layer(monkeypatch):
    """Under CPU bf16 autocast without gradient SlimCAE's first layer (a 64-wide weight used at
    40 outputs, in place) goes to the bf16 conv kernel; CPU_IMAGE_CONV_BF16 = False turns it
    off."""
    x, w, b = _case(1, 3, 64, 21, 29, 9, seed=10)
    ref = F.conv2d(x.bfloat16().double(), w[:40].bfloat16().double(), b[:40].double(), stride=4,
                   padding=4)
    _check_bf16_dispatch(monkeypatch, "conv2d_image", ref,
                         lambda: slim_conv2d(x, w, b, stride=4, padding=4, out_width=40))


@needs_bf16
def test_bf16_conv_bad_input_is_refused():
    x = torch.randn(1, 3, 20, 20).bfloat16()
    w = torch.randn(16, 3, 9, 9)
    with pytest.raises(ValueError, match="does not fit"):     # fp32 taps for bf16 x
        CI.conv2d_image(x, CI.pack_image_conv_weight(w), None, 9, 4, 4, 16)
    with pytest.raises(ValueError, match="fp32 or bf16"):
        CI.conv2d_image(x.half(), CI.pack_image_conv_weight(w, torch.bfloat16), None, 9, 4, 4, 16)
    with pytest.raises(ValueError, match="dtype"):
        CI.pack_image_conv_weight(w, torch.float16)


@needs_bf16
def test_random_geometries_match_float64():
    """A seeded sweep of geometries (channels 1-70, kernels 1-11, strides 1-5, padding past the
    kernel's half, output padding, inputs smaller than the kernel, batches): every bf16 kernel
    within half a bf16 ulp of float64, the fp32 transposed variants within 1e-5."""
    import random
    rng = random.Random(11)
    done = {"t": 0, "c": 0}
    while done["t"] < 60:
        N, C, co = rng.randint(1, 3), rng.randint(1, 70), rng.randint(1, 3)
        k, s = rng.randint(1, 11), rng.randint(1, 5)
        p, op, H, W = rng.randint(0, k + 2), rng.randint(0, s - 1), rng.randint(1, 9), rng.randint(1, 30)
        if not CI.transposed_geometry_ok(k, s, co, torch.bfloat16) or \
                min((H - 1) * s, (W - 1) * s) - 2 * p + k + op < 1:
            continue
        x, w, b = _bf16_case((N, C, co, H, W, k, s, p, op), seed=done["t"])
        ref = F.conv_transpose2d(x.double(), w.bfloat16().double(), b.double(), stride=s,
                                 padding=p, output_padding=op)
        _check_one_bf16_rounding(CI.conv_transpose2d_image(
            x, CI.pack_image_conv_transpose_weight(w, torch.bfloat16), b, k, s, p, op, co), ref)
        yf = CI.conv_transpose2d_image(x.float(), CI.pack_image_conv_transpose_weight(
            w.bfloat16().float()), b, k, s, p, op, co)
        assert _err(yf, ref) < TOL
        done["t"] += 1
    while done["c"] < 40:
        N, C, co = rng.randint(1, 2), rng.randint(1, 8), rng.randint(1, 60)
        k, s, p, H, W = (rng.randint(1, 11), rng.randint(1, 5), rng.randint(0, 11),
                         rng.randint(1, 25), rng.randint(1, 40))
        if min(H, W) + 2 * p < k:
            continue
        x, w, b = _case(N, C, co, H, W, k, seed=done["c"])
        x = x.bfloat16()
        ref = F.conv2d(x.double(), w.bfloat16().double(), b.double(), stride=s, padding=p)
        _check_one_bf16_rounding(
            CI.conv2d_image(x, CI.pack_image_conv_weight(w, torch.bfloat16), b, k, s, p, co), ref)
        done["c"] += 1
