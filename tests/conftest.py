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


def pytest_report_header(config):
    """Where Triton's interpreter cannot run the kernels here (triton 3.6 with NumPy >= 2.4),
    say why at the top: every interpreted kernel test then fails with that RuntimeError."""
    if _HAS_CUDA:
        return None
    try:
        from slimkernels.backend import interpreter_enabled, triton_available
        if not (triton_available() and interpreter_enabled()):
            return None
        from slimkernels.kernels.interpreter import interpreter_problem
        problem = interpreter_problem()
    except Exception as e:  # pragma: no cover (the tests will say it again)
        problem = f"the interpreter probe failed: {type(e).__name__}: {e}"
    return None if problem is None else f"NB: {problem}"


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
