"""The Triton conv kernels on images whose in-image offsets pass 2^31 elements.

Only the batch offset was int64: the offsets inside one image (rows, columns, channels, the
epilogue's channel stride) were int32, so an activation of one image with >= 2^31 elements (a
~179 MP image at width 192 on a GPU) was read and written at wrapped addresses (an audit's
1x1 conv of a 2^31 + 128-element input segfaulted under the interpreter). The launchers now pass
``WIDE`` (int64 offsets) for such tensors.

Shown under Triton's interpreter on CPU tensors without allocating gigabytes: one bf16 storage of
2^31 + 2^18 elements is reserved but never touched, except where small views read and write,
their strides below 2^31 (int32 kernel arguments, as in a real large image) and their last row
or channel past 2^31. Runs in a child process with a 6.5 GB
address-space limit; skipped where that much cannot be reserved.
"""
import pytest

from slimkernels.backend import triton_available

from ._wide import run_child

pytestmark = pytest.mark.skipif(not triton_available(), reason="needs triton")

_CHILD = r"""
    import torch.nn.functional as F
    from slimkernels.kernels import conv as K
    slot = iter(range(0, 2 ** 17, 8192))     # disjoint regions per view

    def view(shape, stride):
        v = big.as_strided(shape, stride, next(slot))
        v.copy_(torch.rand(shape, generator=g).to(torch.bfloat16))
        return v

    def rnd(*shape):
        return (torch.randn(*shape, generator=g) * 0.3).to(torch.bfloat16)

    def gdn(y, beta, gamma, inverse):
        c = y.shape[1]
        n = F.conv2d(y * y, gamma[:c, :c, None, None], beta[:c])
        return y * n.sqrt() if inverse else y * n.rsqrt()

    def check(name, y, ref):
        err = float((y.double() - ref).abs().max() / ref.abs().max())
        ok = bool(torch.isfinite(y).all()) and err < 2e-2
        print(name, "ok" if ok else "WRONG", err, flush=True)
        return ok

    def past(last):   # a stride (< 2^31: an int32 kernel argument) putting index last past 2^31
        return -(-2 ** 31 // last) + 64

    beta = (torch.rand(4, generator=g) + 0.5).double()
    gamma = (torch.rand(4, 4, generator=g) * 0.1).double()
    results = []
    # 1. flat-K conv (3 input channels): the input's third row lies past 2^31
    q = past(2)
    x = view((1, 3, 3, 2), (3 * q, 1, q, 3))
    w = rnd(4, 3, 3, 3)
    y = K.conv2d_fwd(x, w, None, padding=1)
    results.append(check("flat-K input", y, F.conv2d(x.double(), w.double(), padding=1)))
    # 2. per-tap conv (16 input channels), the same rows
    x = view((1, 16, 3, 2), (3 * q, 1, q, 16))
    w = rnd(4, 16, 3, 3)
    y = K.conv2d_fwd(x, w, None, padding=1)
    results.append(check("tap input", y, F.conv2d(x.double(), w.double(), padding=1)))
    # 3. conv + fused GDN into an NCHW output whose third channel lies past 2^31
    x = view((1, 16, 2, 2), (64, 1, 32, 16))
    w = rnd(4, 16, 3, 3)
    y = view((1, 3, 2, 2), (3 * q, q, 2, 1))
    K._launch(K._CONV, K.conv2d_fwd_kernel, x, w, w.stride(), None, y, 1, 1, 3, 3, 16, 3,
              2, 2, 2, 2, (beta.float(), gamma.float()), False, lambda m: (1, 1),
              flat_k=False)
    ref = gdn(F.conv2d(x.double(), w[:3].double(), padding=1), beta, gamma, False)
    results.append(check("GDN output", y, ref))
    # 4. transposed conv (phases) + fused IGDN: input rows and output rows past 2^31
    x = view((1, 16, 3, 2), (3 * q, 1, q, 16))
    w = rnd(16, 4, 3, 3)
    r = past(5)
    y = view((1, 2, 6, 4), (6 * r, 1, r, 2))
    K._launch(K._CONVT, K.conv_transpose2d_fwd_kernel, x, w, w.stride(), None, y, 1, 2, 3, 3,
              16, 2, 3, 2, 6, 4, (beta.float(), gamma.float()), True, lambda m: (4, 1))
    ref = gdn(F.conv_transpose2d(x.double(), w[:, :2].double(), stride=2, padding=1,
                                 output_padding=1), beta, gamma, True)
    results.append(check("transposed", y, ref))
    # 5. the col2im route of a transposed conv onto 3 channels, the last one past 2^31
    x = view((1, 16, 2, 2), (64, 1, 32, 16))
    w = rnd(16, 3, 5, 5)
    b = rnd(3)
    y = view((1, 3, 4, 4), (3 * q, q, 4, 1))
    K._conv_transpose2d_col2im(x, w, b, y, 2, 2, 16, 3)
    ref = F.conv_transpose2d(x.double(), w.double(), b.double(), stride=2, padding=2,
                             output_padding=1)
    results.append(check("col2im", y, ref))
    raise SystemExit(0 if all(results) else 3)
"""


def test_conv_kernels_address_images_past_2_31_elements():
    run_child(_CHILD, 5)
