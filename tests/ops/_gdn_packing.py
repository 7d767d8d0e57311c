"""Shared checks of the GDN kernels' cached gamma packing (``ops.gdn._packed_gamma``): the AVX2
and the AVX512-BF16 kernel's tests run them on their own kernel (``kind``)."""
import importlib

import torch

from slimkernels.ops import _cache
from tests.ops.test_gdn_cpu_fused import SCALARS, _params

gdn_mod = importlib.import_module("slimkernels.ops.gdn")  # the module (ops.gdn is the function)
_FORWARD = {"avx2": "gdn_forward_avx2", "bf16": "gdn_forward_bf16"}


def bits(t: torch.Tensor) -> torch.Tensor:
    """t's bit patterns (fp32 or bf16), for exact comparisons that NaN does not upset."""
    return t.contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int16)


def per_call(kind, x, beta, gamma, inverse, sc):
    """The kernel packing gamma_k inside the call (no packed gamma passed)."""
    fn = getattr(gdn_mod._avx2_kernels(), _FORWARD[kind])
    lay = "nchw" if x.is_contiguous() else "channels_last"
    return gdn_mod._run_kernel(fn, x, beta, gamma, lay, inverse, sc, 1)


def check_same_bits(monkeypatch, kind, run, make_x, scalars):
    """gamma_k packed once and cached (``USE_PACKED_GAMMA``) against packed inside every call:
    the same bits, for widths around ``PACKED_GAMMA_MIN_C`` from one gamma, a transposed view of
    it and bf16 gamma; cached from ``PACKED_GAMMA_MIN_C`` channels on, a hit the second time."""
    beta, gamma = _params(13)
    sc = SCALARS[scalars]
    gs, gb = (1.0, 0.0) if scalars == "none" else sc[:2]
    for g in (gamma, gamma.t().contiguous().t(), gamma.bfloat16()):
        for C in (7, 48, 64, 65, 192):
            x = make_x(C)
            monkeypatch.setattr(gdn_mod, "USE_PACKED_GAMMA", False)
            y_call = run(x, beta, g, True, sc)
            monkeypatch.setattr(gdn_mod, "USE_PACKED_GAMMA", True)
            y_cached = run(x, beta, g, True, sc)
            cached = (("gdn-" + kind, C, gs, gb), id(g)) in _cache._PACK_CACHE
            assert cached == (C >= gdn_mod.PACKED_GAMMA_MIN_C)
            assert torch.equal(bits(y_call), bits(y_cached))
            assert torch.equal(bits(run(x, beta, g, True, sc)), bits(y_call))   # a cache hit


def check_follows_updates(kind, run, x):
    """An in-place update of gamma (a version bump), a replaced gamma and other scalars each get
    their own packing: the result always equals the kernel packing per call. ``x`` has at least
    ``PACKED_GAMMA_MIN_C`` channels."""
    assert x.shape[1] >= gdn_mod.PACKED_GAMMA_MIN_C
    beta, gamma = _params(14)
    none, plus = SCALARS["none"], SCALARS["slimgdn+"]
    y0 = run(x, beta, gamma, False, none)
    assert torch.equal(bits(y0), bits(per_call(kind, x, beta, gamma, False, none)))
    gamma.mul_(1.5)
    y1 = run(x, beta, gamma, False, none)
    assert not torch.equal(bits(y1), bits(y0))
    assert torch.equal(bits(y1), bits(per_call(kind, x, beta, gamma, False, none)))
    g2 = gamma.clone() * 0.5
    assert torch.equal(bits(run(x, beta, g2, False, none)),
                       bits(per_call(kind, x, beta, g2, False, none)))
    assert torch.equal(bits(run(x, beta, gamma, False, plus)),
                       bits(per_call(kind, x, beta, gamma, False, plus)))


def check_inference_mode(kind, run, x):
    """Under ``torch.inference_mode`` (gamma then an inference tensor, without the version
    counter the cache keys by) the kernel packs gamma itself: same bits as outside it."""
    beta, gamma = _params(15)
    sc = SCALARS["slimgdn+"]
    y = run(x, beta, gamma, True, sc)
    with torch.inference_mode():
        gi = gamma.clone()
        assert gi.is_inference()
        y_inf = run(x, beta, gi, True, sc)
    assert torch.equal(bits(y_inf), bits(y))
    assert torch.equal(bits(y), bits(per_call(kind, x, beta, gamma, True, sc)))
