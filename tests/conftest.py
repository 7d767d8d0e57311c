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


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not _HAS_CUDA:
            item.add_marker(skip_cuda)


@pytest.fixture
def rng():
    import numpy as np
    return np.random.default_rng(1234)
