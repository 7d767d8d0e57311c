"""Fixtures of the evaluation tests: two small image files and a tiny random-weight SlimCAE."""
import numpy as np
import pytest
import torch


def make_image(seed: int, h: int, w: int) -> np.ndarray:
    """A smooth-ish RGB uint8 image ``[h, w, 3]``: gradients plus blurred noise."""
    from scipy import ndimage

    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack([xx / w, yy / h, (xx + yy) / (h + w)], -1) * 160 + 40
    noise = ndimage.gaussian_filter(r.normal(0, 60, (h, w, 3)), sigma=(2, 2, 0))
    return np.clip(base + noise, 0, 255).round().astype(np.uint8)


@pytest.fixture
def image_folder(tmp_path):
    """Folder with 2 PNGs, 176x200 and 168x192 (not multiples of 16 in W / both)."""
    from PIL import Image

    d = tmp_path / "images"
    d.mkdir()
    Image.fromarray(make_image(1, 176, 200)).save(d / "a.png")
    Image.fromarray(make_image(2, 168, 192)).save(d / "b.png")
    (d / "notes.txt").write_text("not an image")
    return str(d)


@pytest.fixture(scope="module")
def tiny_model():
    from slimkernels.models import SlimCAE

    torch.manual_seed(0)
    m = SlimCAE(widths=(16, 8)).eval()
    m.update()
    return m


def coder_available() -> bool:
    try:
        import slimkernels._coder  # noqa: F401
        import slimkernels.coding  # noqa: F401
        return True
    except ImportError:
        return False


needs_coder = pytest.mark.skipif(not coder_available(),
                                 reason="the C++ range coder (slimkernels._coder / slimkernels.coding)"
                                        " is not built: pip install --no-build-isolation -e .")


@pytest.fixture(autouse=True)
def _one_thread():
    """Run these small-tensor tests on one intra-op thread.

    On a 2-core machine shared with a training job, OpenMP parallel regions over small tensors
    wait for busy cores: a 176x200 MS-SSIM measured 3.6 s on 2 threads vs 0.05 s on 1.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
