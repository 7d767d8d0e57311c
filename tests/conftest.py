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


@pytest.fixture
def rng():
    import numpy as np
    return np.random.default_rng(1234)
