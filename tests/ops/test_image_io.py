"""The image conversions at the transforms' ends (slimkernels/ops/image_io.py,
csrc/cpu/image_io.cpp): bit-exact against torch's casts, every layout and tail, NaN kept."""
import pytest
import torch

from slimkernels.ops import image_io

kernels = pytest.mark.skipif(
    image_io._kernels() is None,
    reason="no AVX-512 (F + BW) here or slimkernels._cpu_kernels not built")


def _values(shape, seed):
    """Uniform [0, 1) plus the edge cases of rounding: ties at even and odd bf16 mantissas,
    subnormals, negatives, large values, infinities, the largest finite fp32."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=g)
    flat = x.view(-1)
    bits = torch.tensor([0x3F808000, 0x3F818000, 0x3F80C000, 0x00000001, 0x00400000, 0x80001234,
                         0x7F7FFFFF, 0x7F7F8000, 0xFF800000, 0x7F800000, 0xBF7FFFFF, 0x3F7FFFFF],
                        dtype=torch.int64).to(torch.int32)
    special = bits.view(torch.float32)
    idx = torch.randperm(flat.numel(), generator=g)[: min(flat.numel(), 4 * special.numel())]
    flat[idx] = special.repeat(4)[: idx.numel()]
    return x


def _same_bits(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype
    na, nb = torch.isnan(a.float()), torch.isnan(b.float())
    assert torch.equal(na, nb)
    ia = a.view(torch.int16) if a.dtype == torch.bfloat16 else a.view(torch.int32)
    ib = b.view(torch.int16) if b.dtype == torch.bfloat16 else b.view(torch.int32)
    assert torch.equal(ia[~na], ib[~nb])


@kernels
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (1, 3, 64, 96), (2, 3, 9, 33), (1, 3, 1, 95),
                                   (1, 3, 17, 64)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_image_to_bf16_bit_exact(shape, channels_last):
    x = _values(shape, sum(shape))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x[0, 1, 0, 0] = float("nan")
    y = image_io.image_to_bf16(x)
    assert y.dtype == torch.bfloat16 and y.stride() == image_io._dense_strides(y, True)
    _same_bits(y, x.to(torch.bfloat16))
    _same_bits(image_io.image_to_bf16_reference(x), x.to(torch.bfloat16))


@pytest.mark.parametrize("kernel", [True, False])
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (1, 3, 64, 96), (2, 3, 9, 33), (1, 4, 6, 35),
                                   (1, 1, 3, 40)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_image_to_bf16_measures_the_value_range(shape, channels_last, kernel, monkeypatch):
    """with_range: (min, max) of every value, as torch.aminmax; both NaN with a NaN anywhere
    (vector body or scalar tail, first or last row); inf kept; the same tensor either way."""
    if kernel and image_io._kernels() is None:
        pytest.skip("no AVX-512 (F + BW) here or slimkernels._cpu_kernels not built")
    if not kernel:
        monkeypatch.setenv("SLIMKERNELS_CPU_KERNELS", "0")
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.rand(*shape, generator=g) * 3 - 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    N, C, H, W = shape
    cases = [None, (0, 0, 0, 0), (N - 1, C - 1, H - 1, W - 1), (0, C // 2, H // 2, W - 1)]
    for where in cases:
        for bad in ((float("nan"), float("inf"), -float("inf")) if where else (None,)):
            y = x.clone()
            if where is not None:
                y[where] = bad
            out, (lo, hi) = image_io.image_to_bf16(y, with_range=True)
            _same_bits(out, y.to(torch.bfloat16))
            ref_lo, ref_hi = (float(v) for v in torch.aminmax(y))
            if bad is not None and bad != bad:
                assert lo != lo and hi != hi, (where, lo, hi)
            else:
                assert (lo, hi) == (ref_lo, ref_hi), (where, bad, lo, hi, ref_lo, ref_hi)
                assert (lo, hi) == image_io.value_range(y)
    assert image_io.image_to_bf16(torch.empty(1, 3, 0, 4), with_range=True)[1] == (0.0, 0.0)


@kernels
@pytest.mark.parametrize("channels_last", [False, True])
def test_image_to_bf16_value_range_over_threads(channels_last):
    """An image large enough for several threads (rows split between them): the extremes and a
    NaN in the second half of the rows are seen (the per-row ranges merged after)."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(7)
        x = torch.rand(1, 3, 256, 384, generator=g)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x[0, 1, 200, 300] = 7.5
        x[0, 2, 255, 383] = -3.25
        _, (lo, hi) = image_io.image_to_bf16(x, with_range=True)
        assert (lo, hi) == (-3.25, 7.5)
        x[0, 0, 250, 10] = float("nan")
        _, (lo, hi) = image_io.image_to_bf16(x, with_range=True)
        assert lo != lo and hi != hi
    finally:
        torch.set_num_threads(old)


@kernels
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [1, 31, 32, 33, 16383, 16384, 16385, 3 * 130 * 200])
def test_value_range_kernel_against_aminmax(monkeypatch, threads, n):
    """value_range of a dense float32 tensor by the kernel (torch.aminmax not called): the
    values' min and max exactly wherever they lie (the first value, a vector's edge, a chunk's
    edge, the scalar tail, the last value; subnormals and negatives among the others), the
    infinities too, and both NaN for a NaN at the first, a middle or the last value."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        base = _values((n,), 11 + n).nan_to_num(posinf=0.5, neginf=0.5)   # finite
        cases = []
        for i in sorted({0, 15, 16, 31, 32, 16383, 16384, n - 1} & set(range(n))):
            for v in (-9.0, 7.0):                     # the minimum, then the maximum, at i
                x = base.clone()
                x[i] = v
                cases.append(x)
        x = base.clone()
        x[n // 2] = -float("inf")
        x[n - 1] = float("inf")
        cases.append(x)
        want = [tuple(float(v) for v in torch.aminmax(x)) for x in cases]
        monkeypatch.setattr(torch, "aminmax", lambda *a, **k: pytest.fail("aminmax ran"))
        assert [image_io.value_range(x) for x in cases] == want
        x = cases[-1]
        for i in {0, n // 3, n - 1}:
            y = x.clone()
            y[i] = float("nan")
            lo, hi = image_io.value_range(y)
            assert lo != lo and hi != hi, i
    finally:
        torch.set_num_threads(old)


@kernels
def test_value_range_of_images_in_every_layout(monkeypatch):
    """Contiguous NCHW, dense channels_last, an HWC view (batch stride 3) and a batch: the
    kernel's pass over the memory gives aminmax's range; a strided view (not dense) falls back to
    aminmax and sees only its own values."""
    g = torch.Generator().manual_seed(12)
    x = torch.rand(2, 3, 37, 53, generator=g)
    x[1, 2, 36, 52] = 4.5
    x[0, 0, 0, 0] = -0.25
    hwc = x[1].permute(1, 2, 0).contiguous().permute(2, 0, 1)[None]
    cases = [x, x.contiguous(memory_format=torch.channels_last), hwc]
    want = [tuple(float(v) for v in torch.aminmax(t)) for t in cases]
    strided = x[:, :, :, :52]                   # misses column 52 (4.5)
    want_strided = tuple(float(v) for v in torch.aminmax(strided))
    assert want[0] == (-0.25, 4.5) and want[2][1] == 4.5 and want_strided[1] < 4.5
    assert image_io.value_range(strided) == want_strided
    monkeypatch.setattr(torch, "aminmax", lambda *a, **k: pytest.fail("aminmax ran"))
    assert [image_io.value_range(t) for t in cases] == want


@kernels
@pytest.mark.parametrize("c", [1, 4])
def test_image_to_bf16_other_channel_counts(c):
    """NCHW with C != 3 goes to the reference; channels_last to the kernel's flat cast."""
    for cl in (False, True):
        x = _values((1, c, 6, 35), c)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        _same_bits(image_io.image_to_bf16(x), x.to(torch.bfloat16))


def test_image_to_bf16_strided_input_and_bad_input():
    x = _values((1, 3, 20, 30), 3)[..., 2:15, 1:27]     # a cropped view: not dense
    y = image_io.image_to_bf16(x)
    _same_bits(y, x.to(torch.bfloat16))
    assert y.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="float32"):
        image_io.image_to_bf16(x.double())
    with pytest.raises(ValueError, match="float32"):
        image_io.image_to_bf16(x[0])


@kernels
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (1, 3, 64, 96), (2, 3, 9, 33), (37,)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_to_image_bit_exact(shape, channels_last):
    if channels_last and len(shape) != 4:
        pytest.skip("1-D")
    x = (_values(shape, 7 + len(shape)) * 3 - 1).to(torch.bfloat16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    def flat(t):   # the elements in memory order (a view)
        return t.permute(0, 2, 3, 1).view(-1) if channels_last else t.view(-1)
    flat(x)[3] = float("nan")
    flat(x)[5] = float("-inf")
    y = image_io.bf16_to_image(x)
    assert y.dtype == torch.float32 and y.stride() == x.stride()
    _same_bits(y, x.float().clamp(0, 1))
    assert torch.isnan(flat(y)[3]) and flat(y)[5] == 0
    _same_bits(image_io.bf16_to_image(x, -0.5, 0.25), x.float().clamp(-0.5, 0.25))


def test_bf16_to_image_non_dense_and_bad_input():
    x = torch.randn(1, 3, 10, 12).to(torch.bfloat16)[..., 1:9, 2:11]
    _same_bits(image_io.bf16_to_image(x), x.float().clamp(0, 1))
    with pytest.raises(ValueError, match="bfloat16"):
        image_io.bf16_to_image(x.float())
    with pytest.raises(ValueError, match="lo <= hi"):
        image_io.bf16_to_image(x, 1.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        image_io.bf16_to_image(x, 0.0, float("inf"))
    with pytest.raises(ValueError, match="finite float32"):
        image_io.bf16_to_image(x, 0.0, 1e39)          # beyond float32: torch's clamp refuses it


def test_gradient_is_kept():
    """With a gradient to track, both go to torch's ops (the kernels would drop autograd)."""
    x = torch.rand(1, 3, 8, 40, requires_grad=True)
    y = image_io.image_to_bf16(x)
    assert y.requires_grad
    y.float().sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    z = (torch.rand(1, 3, 8, 40) * 2 - 0.5).to(torch.bfloat16).requires_grad_()
    out = image_io.bf16_to_image(z)
    assert out.requires_grad
    out.sum().backward()
    inside = ((z.float() >= 0) & (z.float() <= 1)).to(z.dtype)
    assert torch.equal(z.grad, inside)


@kernels
def test_several_threads_same_bits():
    """Images large enough for the kernels' row split over threads (a 768x512 Kodak size)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        x = _values((1, 3, 512, 768), 21)
        _same_bits(image_io.image_to_bf16(x), x.to(torch.bfloat16))
        y = (x * 2 - 0.5).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        _same_bits(image_io.bf16_to_image(y), y.float().clamp(0, 1))
    finally:
        torch.set_num_threads(threads)


@kernels
def test_kernels_reject_bad_arguments_directly():
    ck = image_io._kernels()
    x = torch.zeros(4, dtype=torch.bfloat16)
    out = torch.empty(4)
    with pytest.raises(Exception, match="lo > hi"):
        ck.bf16_to_image(x.data_ptr(), out.data_ptr(), 4, 1.0, 0.0, 1)
    with pytest.raises(Exception, match="null pointer"):
        ck.image_to_bf16(0, False, 1, 3, 2, 2, out.data_ptr(), 1)


def test_switched_off_uses_the_reference(monkeypatch):
    monkeypatch.setenv("SLIMKERNELS_CPU_KERNELS", "0")
    assert image_io._kernels() is None
    x = _values((1, 3, 8, 40), 9)
    _same_bits(image_io.image_to_bf16(x), x.to(torch.bfloat16))
    y = x.to(torch.bfloat16)
    _same_bits(image_io.bf16_to_image(y), y.float().clamp(0, 1))


def test_the_first_conv_check_is_taken_once_by_the_image_alone():
    """checked_by_first_conv names one image (its data and size, float32): the first conv that
    gets it takes the check (a view of other size, a copy, another dtype do not), once; none
    outside the context, none in another thread."""
    import threading
    x = torch.rand(1, 3, 8, 8)
    assert image_io.take_first_conv_check(x) is None
    with image_io.checked_by_first_conv(x, -0.5, 1.5):
        assert image_io.take_first_conv_check(x.clone()) is None
        assert image_io.take_first_conv_check(x[..., :4]) is None
        assert image_io.take_first_conv_check(x.double()) is None
        seen = []
        t = threading.Thread(target=lambda: seen.append(image_io.take_first_conv_check(x)))
        t.start()
        t.join()
        assert seen == [None]
        assert image_io.take_first_conv_check(x) == (-0.5, 1.5)
        assert image_io.take_first_conv_check(x) is None      # taken
    with image_io.checked_by_first_conv(x, 0.0, 1.0):
        pass
    assert image_io.take_first_conv_check(x) is None


def test_check_values_refuses_what_lies_outside_or_is_not_finite():
    x = torch.rand(1, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    image_io.check_values(x, 0.0, 1.0)
    for bad in (1.0001, -1e-6, float("nan"), float("inf")):
        y = x.clone()
        y[0, 2, 15, 15] = bad
        with pytest.raises(image_io.ImageRangeError, match="outside"):
            image_io.check_values(y, 0.0, 1.0)
    assert issubclass(image_io.ImageRangeError, ValueError)


@pytest.mark.parametrize("w", [1, 40])
def test_slim_conv2d_checks_the_image_of_its_context_on_every_route(w):
    """Within checked_by_first_conv the first slim_conv2d checks the image, whichever route it
    takes: the direct AMX conv where it runs, a measure first elsewhere, and the transposed
    image of a one-column output (w=1: it hands the check to the conv it calls): a bad value is
    refused, a good image gives the output of the conv without the context."""
    from slimkernels.ops import slim_conv2d
    g = torch.Generator().manual_seed(w)
    x = torch.rand(1, 3, 40, w, generator=g).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(16, 3, 5, 5, generator=g) * 0.1, torch.randn(16, generator=g)

    def conv(t):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return slim_conv2d(t, weight, bias, stride=2, padding=2)
    want = conv(x)
    with image_io.checked_by_first_conv(x, -0.5, 1.5) as check:
        assert torch.equal(conv(x), want)
    assert check.taken
    bad = x.clone(memory_format=torch.channels_last)
    bad[0, 1, 39, w - 1] = 7.0
    with image_io.checked_by_first_conv(bad, -0.5, 1.5):
        with pytest.raises(image_io.ImageRangeError):
            conv(bad)
    assert conv(bad).shape == want.shape      # outside the context: no check


@kernels
def test_the_raw_kernel_refuses_sizes_whose_product_overflows():
    """N * C * H * W wrapped in int64 (2^32 * 2^32 = 0): the kernel returned "ok" for a size it
    never checked (an UBSan build's signed-overflow report)."""
    x = torch.zeros(4)
    out = torch.empty(4, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="negative or overflowing size"):
        image_io._kernels().image_to_bf16(x.data_ptr(), False, 2 ** 32, 2 ** 32, 1, 1,
                                          out.data_ptr(), 1)
