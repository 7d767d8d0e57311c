"""The Triton GDN kernels on an NCHW image whose channel offsets pass 2^31 elements.

With ``WIDE`` (int64 offsets) chosen for such a tensor, the pixel offsets were int64 but the
channel ones (``c * channel stride``) stayed int32: an NCHW activation of one image with
C * H * W >= 2^31 (192 channels of an ~11 MP image on a GPU) was read and written at wrapped
addresses (an audit's forward and backward segfaulted under the interpreter).

Shown as tests/kernels/test_conv_triton_wide.py does, under Triton's interpreter without
allocating gigabytes: one bf16 storage of 2^31 + 2^18 elements is reserved but never touched
except by a small view whose channel stride (< 2^31: an int32 kernel argument) puts its third
channel past 2^31. Runs in a child process with a 6.5 GB address-space limit; skipped where that
much cannot be reserved.
"""
import pytest

from slimkernels.backend import triton_available

from ._wide import run_child

pytestmark = pytest.mark.skipif(not triton_available(), reason="needs triton")

_CHILD = r"""
    from slimkernels.kernels import gdn as G
    from slimkernels.ops.gdn import gdn_reference
    q = -(-2 ** 31 // 2) + 64          # the channel stride: channel 2 starts past 2^31
    x = big.as_strided((1, 3, 2, 2), (3 * q, q, 2, 1), 0)
    x.copy_((torch.rand(1, 3, 2, 2, generator=g) + 0.5).to(torch.bfloat16))
    assert G._needs_wide(x, torch.empty_like(x))
    beta = torch.rand(3, generator=g) + 0.5
    gamma = torch.rand(3, 3, generator=g) * 0.1

    def check(name, got, ref):
        err = float((got.double() - ref).abs().max() / ref.abs().max())
        ok = bool(torch.isfinite(got).all()) and err < 2e-2
        print(name, "ok" if ok else "WRONG", err, flush=True)
        return ok

    results = []
    for inverse in (False, True):
        ref = gdn_reference(x.double(), beta.double(), gamma.double(), inverse=inverse)
        y = G.gdn_fwd(x, beta, gamma, inverse, fp32_precision="ieee")
        results.append(check(f"forward inverse={inverse}", y, ref))
        dy = (torch.rand(1, 3, 2, 2, generator=g) - 0.5).to(torch.bfloat16)
        dx, dg, db = G.gdn_bwd(dy, x, beta, gamma, inverse, fp32_precision="ieee")
        xd = x.double().detach().clone().requires_grad_()
        bd = beta.double().clone().requires_grad_()
        gd = gamma.double().clone().requires_grad_()
        gdn_reference(xd, bd, gd, inverse=inverse).backward(dy.double())
        results.append(check(f"dx inverse={inverse}", dx, xd.grad))
        results.append(check(f"dgamma inverse={inverse}", dg, gd.grad))
        results.append(check(f"dbeta inverse={inverse}", db, bd.grad))
    raise SystemExit(0 if all(results) else 3)
"""


def test_gdn_kernels_address_channels_past_2_31_elements():
    run_child(_CHILD, 8)
