"""The interpreter probe (slimkernels/kernels/interpreter.py): an interpreter that cannot run the
kernels (triton 3.6 with NumPy >= 2.4) gives one clear error at every entry point, not a
TypeError from inside triton."""
import pytest
import torch

triton = pytest.importorskip("triton")

from slimkernels import ops  # noqa: E402
from slimkernels.backend import interpreter_enabled, resolve_backend  # noqa: E402
from slimkernels.kernels import interpreter  # noqa: E402

if torch.cuda.is_available() or not interpreter_enabled():  # pragma: no cover
    pytest.skip("the probe is for Triton's interpreter (CPU, TRITON_INTERPRET=1)",
                allow_module_level=True)

pytestmark = pytest.mark.interpret


@pytest.fixture
def fresh_probe():
    interpreter.interpreter_problem.cache_clear()
    yield
    interpreter.interpreter_problem.cache_clear()


class _Launch:
    """Stands in for the probe kernel: ``kernel[grid](out, n, STEP=...)``, raising ``error`` or
    writing ``count``."""

    def __init__(self, error=None, count=None):
        self.error, self.count, self.calls = error, count, 0

    def __getitem__(self, grid):
        def launch(out, n, STEP):
            self.calls += 1
            if self.error is not None:
                raise self.error
            out.fill_(self.count)
        return launch


def _numpy_refusal():
    """What triton 3.6's interpreter raised with NumPy 2.4: an InterpreterError from a
    TypeError."""
    cause = TypeError("only 0-dimensional arrays can be converted to Python scalars")
    try:
        try:
            raise cause
        except TypeError as e:
            raise triton.runtime.errors.InterpreterError(repr(e)) from e
    except triton.runtime.errors.InterpreterError as e:
        return e


@pytest.mark.parametrize("n, step", [(0, 1), (1, 1), (5, 2), (6, 2), (7, 3)])
def test_the_probe_kernel_counts_a_loop_over_a_runtime_bound(n, step):
    out = torch.full((1,), -1, dtype=torch.int32)
    interpreter._runtime_bound_loop_kernel[(1,)](out, n, STEP=step)
    assert out.item() == len(range(0, n, step))


def test_this_interpreter_runs_the_kernels(fresh_probe):
    assert interpreter.interpreter_problem() is None
    interpreter.check_interpreter("anything")   # no error


def test_a_refusing_interpreter_is_one_clear_error_at_every_entry_point(fresh_probe, monkeypatch):
    fake = _Launch(error=_numpy_refusal())
    monkeypatch.setattr(interpreter, "_runtime_bound_loop_kernel", fake)
    problem = interpreter.interpreter_problem()
    assert problem is not None
    for part in (f"triton {triton.__version__}", "NumPy", "TypeError: only 0-dimensional",
                 "triton-lang/triton#9171", "numpy<2.4", "backend='torch'"):
        assert part in problem
    x = torch.randn(1, 4, 5, 5)
    w = torch.randn(4, 4, 3, 3)
    beta, gamma = torch.ones(4), torch.eye(4) * 0.1
    from slimkernels.kernels.conv import conv2d_fwd, conv_transpose2d_fwd
    from slimkernels.kernels.gdn import gdn_triton
    calls = [("the Triton backend", lambda: resolve_backend(x, "triton")),
             ("the Triton backend", lambda: ops.gdn(x, beta, gamma, backend="triton")),
             ("gdn_triton", lambda: gdn_triton(x, beta, gamma)),
             ("conv2d_fwd", lambda: conv2d_fwd(x, w, padding=1)),
             ("conv_transpose2d_fwd", lambda: conv_transpose2d_fwd(x, w, padding=1))]
    for name, call in calls:
        with pytest.raises(RuntimeError) as e:
            call()
        assert str(e.value) == f"{name}: {problem}"
    assert fake.calls == 1                            # probed once per process
    assert resolve_backend(x, "torch") == "torch"     # the PyTorch path is untouched
    assert torch.isfinite(ops.gdn(x, beta, gamma, backend="torch")).all()


def test_an_interpreter_counting_wrong_is_refused_too(fresh_probe, monkeypatch):
    monkeypatch.setattr(interpreter, "_runtime_bound_loop_kernel", _Launch(count=2))
    problem = interpreter.interpreter_problem()
    assert problem is not None and "counted 2 steps of range(0, 5, 2) instead of 3" in problem


def test_no_probe_when_the_interpreter_is_off(fresh_probe, monkeypatch):
    fake = _Launch(error=AssertionError("the probe ran"))
    monkeypatch.setattr(interpreter, "_runtime_bound_loop_kernel", fake)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert interpreter.interpreter_problem() is None
    assert fake.calls == 0
