"""Test configuration.

Without a GPU, Triton kernels are tested under Triton's interpreter: ``TRITON_INTERPRET=1`` must
be set before ``triton`` is first imported, so it is set here, before any test module loads.
"""
import os

import pytest

try:
    import torch
    _HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _HAS_CUDA = False

if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Tests check correctness on small tensors: one intra-op thread is faster for them and keeps the
# suite's time stable on a busy 2-core machine. SLIMKERNELS_TEST_THREADS overrides.
try:
    torch.set_num_threads(int(os.environ.get("SLIMKERNELS_TEST_THREADS", "1")))
except Exception:  # pragma: no cover
    pass


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not _HAS_CUDA:
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _full_fp32_on_gpu(request):
    """On a GPU, fp32 kernels (ours, cuDNN's references) follow PyTorch's TF32 switches: tests
    hold fp32 results to ~1e-5, so TF32 is off unless a test is marked ``tf32`` (~1e-3)."""
    if not _HAS_CUDA or "tf32" in request.keywords:
        yield
        return
    from tests._tf32 import tf32_switches
    with tf32_switches(False, False):
        yield


@pytest.fixture
def rng():
    import numpy as np
    return np.random.default_rng(1234)
