import pytest
import torch

from slimkernels.backend import resolve_backend


def test_cpu_defaults_to_torch(monkeypatch):
    monkeypatch.delenv("SLIMKERNELS_BACKEND", raising=False)
    assert resolve_backend(torch.zeros(1)) == "torch"


def test_env_forces_backend(monkeypatch):
    monkeypatch.setenv("SLIMKERNELS_BACKEND", "torch")
    assert resolve_backend(torch.zeros(1)) == "torch"
    monkeypatch.setenv("SLIMKERNELS_BACKEND", "cudnn")
    with pytest.raises(ValueError, match="unknown backend 'cudnn'"):
        resolve_backend(torch.zeros(1))


def test_argument_wins_over_env(monkeypatch):
    monkeypatch.setenv("SLIMKERNELS_BACKEND", "triton")
    assert resolve_backend(torch.zeros(1), "torch") == "torch"


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        resolve_backend(torch.zeros(1), "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend(torch.zeros(1), "triton") == "triton"


@pytest.mark.parametrize("cudnn,matmul,want", [(True, True, True), (True, False, True),
                                               (False, True, True), (False, False, False)])
def test_tf32_allowed_follows_pytorch_switches(cudnn, matmul, want):
    from slimkernels.backend import tf32_allowed
    from tests._tf32 import tf32_switches
    with tf32_switches(cudnn, matmul):
        assert tf32_allowed() is want


@pytest.mark.skipif(not hasattr(torch.backends.cudnn, "conv"),
                    reason="torch before 2.9: no fp32_precision switches")
@pytest.mark.parametrize("values,want", [
    ({("cudnn", "conv"): "ieee", ("cuda", "matmul"): "ieee"}, False),
    ({("",): "ieee"}, None),   # (torch 2.13: the children follow; 2.11 keeps conv's "tf32")
    ({("cudnn", "conv"): "tf32", ("cuda", "matmul"): "ieee"}, True),
    ({("cudnn", "conv"): "none", ("cuda", "matmul"): "tf32"}, True),
    ({("cudnn", "conv"): "none", ("cuda", "matmul"): "none"}, False),   # (the root's "none")
    ({("",): "tf32", ("cudnn", "conv"): "none", ("cuda", "matmul"): "none"}, True),
])
def test_tf32_allowed_follows_pytorch_s_fp32_precision_switches(values, want, monkeypatch):
    """(After torch.backends.cudnn.conv.fp32_precision = "ieee", PyTorch's newer switches, the
    legacy allow_tf32 getter that tf32_allowed read raised: every fp32 Triton conv and GDN
    call failed.)"""
    from slimkernels import ops
    from slimkernels.backend import tf32_allowed
    from tests._tf32 import fp32_precisions
    with fp32_precisions(values):
        conv = torch.backends.cudnn.conv.fp32_precision
        if want is None:   # (what conv says then, with matmul's "ieee")
            want = conv == "tf32"
        assert tf32_allowed() is want
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        x, w = torch.rand(1, 4, 6, 6), torch.rand(4, 4, 3, 3)
        y = ops.slim_conv2d(x, w, None, padding=1, backend="triton")
        torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w, padding=1))


def test_a_backend_that_is_not_a_string_is_a_clear_error(monkeypatch):
    """(backend=1 said "'int' object has no attribute 'strip'"; a blank SLIMKERNELS_BACKEND was
    "unknown backend ''" where an empty one is unset.)"""
    from slimkernels.backend import resolve_backend
    x = torch.zeros(1)
    with pytest.raises(ValueError, match="must be one of .* or None, got int 1"):
        resolve_backend(x, 1)
    monkeypatch.setenv("SLIMKERNELS_BACKEND", "  ")
    assert resolve_backend(x) == resolve_backend(x, None)


@pytest.mark.parametrize("value,on", [("1", True), ("true", True), ("ON", True), ("yes", True),
                                      ("y", True), ("0", False), ("false", False),
                                      ("off", False), ("no", False), ("", False), ("2", False)])
def test_the_interpreter_switch_is_read_as_triton_reads_it(monkeypatch, value, on):
    """TRITON_INTERPRET=false was taken for "on" (any value but "" and "0"), the opposite of
    triton: the backend check then let CPU tensors reach triton ("0 active drivers")."""
    from slimkernels.backend import interpreter_enabled
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert interpreter_enabled() is on
    try:
        from triton._C.libtriton import getenv_bool
    except ImportError:
        return
    assert getenv_bool("TRITON_INTERPRET", False) is on   # (triton's own reading agrees)


def test_current_backend_reads_the_device_type_without_allocating_there(monkeypatch):
    # (it allocated an empty tensor on the device: "cuda" on a CPU-only torch raised torch's
    # AssertionError "Torch not compiled with CUDA enabled", "mps" a NotImplementedError)
    from slimkernels import backend
    monkeypatch.delenv("SLIMKERNELS_BACKEND", raising=False)
    assert backend.current_backend() == "torch"
    assert backend.current_backend(torch.device("cpu")) == "torch"
    assert backend.current_backend("mps") == "torch"
    monkeypatch.setattr(backend, "triton_available", lambda: True)
    assert backend.current_backend("cuda") == "triton"
    assert backend.current_backend("cuda:1") == "triton"
    monkeypatch.setattr(backend, "triton_available", lambda: False)
    assert backend.current_backend("cuda") == "torch"
    monkeypatch.setenv("SLIMKERNELS_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="triton is not installed"):
        backend.current_backend("cuda")


def test_current_backend_of_none_is_the_default_devices(monkeypatch):
    from slimkernels.backend import current_backend
    monkeypatch.delenv("SLIMKERNELS_BACKEND", raising=False)
    assert current_backend(None) == "torch"
    monkeypatch.setenv("SLIMKERNELS_BACKEND", "foo")
    with pytest.raises(ValueError, match="unknown backend 'foo' from \\$SLIMKERNELS_BACKEND"):
        current_backend("cpu")


@pytest.mark.parametrize("device", ["xyz", "cuda:x", 3, 2.5])
def test_current_backend_of_something_that_is_not_a_device_is_a_clear_error(device):
    from slimkernels.backend import current_backend
    with pytest.raises(ValueError, match="current_backend: .*(not a device name|must be a "
                                         "torch.device)"):
        current_backend(device)


def test_resolve_backend_of_what_is_not_a_tensor_is_named():
    """(A numpy array: "'numpy.ndarray' object has no attribute 'is_cuda'".)"""
    import numpy as np
    from slimkernels.backend import resolve_backend
    with pytest.raises(ValueError, match="x must be a torch.Tensor, got ndarray"):
        resolve_backend(np.zeros(3))
