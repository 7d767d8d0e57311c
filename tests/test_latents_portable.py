"""The CPU latent dequantization's AVX2 row kernels (csrc/cpu/latents.cpp), which the extension
runs only on CPUs without AVX-512: built on their own with ``-DSK_LATENTS_AVX2`` into
``tests/csrc/latents_file.cpp`` (skipped without a C++ compiler or AVX2 + FMA), against torch's
int32 + float32 addition and its bf16 rounding, ties included."""
import os
import struct
import subprocess

import numpy as np
import pytest
import torch

from .test_coding_portable import ROOT, _compiler


def _avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx2" in flags and "fma" in flags


@pytest.fixture(scope="module")
def avx2_driver(tmp_path_factory):
    cxx = _compiler()
    if cxx is None or not _avx2():
        pytest.skip("no C++ compiler, or no AVX2 + FMA here")
    exe = str(tmp_path_factory.mktemp("latents") / "latents_file")
    cpu = os.path.join(ROOT, "csrc", "cpu")
    cmd = [*cxx, "-O1", "-std=c++17", "-DSK_LATENTS_AVX2", "-pthread", "-I", cpu,
           os.path.join(cpu, "latents.cpp"), os.path.join(ROOT, "tests", "csrc", "latents_file.cpp"),
           "-o", exe]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"building the latents driver failed:\n{r.stderr[-3000:]}"
    return exe


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("shape", [(1, 48, 32, 48), (2, 37, 5, 19), (1, 3, 1, 9), (1, 16, 2, 8)])
def test_avx2_dequantization_equals_torch(avx2_driver, tmp_path, bf16, shape):
    g = torch.Generator().manual_seed(sum(shape) + bf16)
    N, C, H, W = shape
    sym = torch.randint(-600, 600, shape, generator=g, dtype=torch.int32)
    med = torch.randn(C, generator=g) * 5
    med[0] = 0.0
    flat = sym.view(-1)
    flat[: min(4, flat.numel())] = torch.tensor([257, 259, -257, 1025], dtype=torch.int32)[
        : min(4, flat.numel())]                                      # bf16 ties (median 0)
    src, dst = tmp_path / "case.bin", tmp_path / "out.bin"
    src.write_bytes(struct.pack("<5q", N, C, H, W, int(bf16)) + sym.numpy().tobytes()
                    + med.numpy().astype(np.float32).tobytes())
    r = subprocess.run([avx2_driver, str(src), str(dst)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    ref = (sym + med.view(1, -1, 1, 1)).permute(0, 2, 3, 1).contiguous()   # NHWC
    if bf16:
        got = torch.from_numpy(np.frombuffer(dst.read_bytes(), np.int16).copy()).view(
            torch.bfloat16).view(N, H, W, C)
        assert torch.equal(got, ref.to(torch.bfloat16))
    else:
        got = torch.from_numpy(np.frombuffer(dst.read_bytes(), np.float32).copy()).view(N, H, W, C)
        assert torch.equal(got, ref)
