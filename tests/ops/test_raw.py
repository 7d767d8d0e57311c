"""The raw-pointer argument helpers shared by the CPU kernels (slimkernels.ops._raw)."""
import os
import subprocess
import sys

import pytest
import torch

from slimkernels.ops import _raw


def test_bias_pointer_checks_shape_and_device():
    b = torch.arange(4, dtype=torch.float64)
    ptr, keep = _raw.bias_pointer(b, 4, "op")
    assert keep.dtype == torch.float32 and keep.is_contiguous() and ptr == keep.data_ptr()
    assert torch.equal(keep, b.float())
    assert _raw.bias_pointer(None, 4, "op") == (0, None)
    with pytest.raises(ValueError, match=r"op: bias \(3,\) must be \[4\]"):
        _raw.bias_pointer(b[:3], 4, "op")
    with pytest.raises(ValueError, match="op: bias is on meta"):
        _raw.bias_pointer(b.to("meta"), 4, "op")


def test_torch_avx512_follows_torch():
    assert _raw.torch_avx512() == (str(torch.backends.cpu.get_cpu_capability()) == "AVX512")


def test_forced_avx2_capability_caps_the_avx512_variants():
    """Under ATEN_CPU_CAPABILITY=avx2 (torch held to AVX2) the fp32 AVX-512 kernel variants are
    not used either, on any CPU."""
    code = ("from slimkernels.ops import conv_image as CI, winograd as Wg\n"
            "from slimkernels.ops._raw import torch_avx512\n"
            "print(torch_avx512(), CI._fp32_avx512(), Wg._gemm_avx512())")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    assert out == ["False", "False", "False"]
