"""slimkernels.allocator: glibc's thresholds set by tune_malloc (page faults of a repeated
40 MB allocation, measured in fresh processes), bad values refused, the CLI calling it unless
SLIMKERNELS_TUNE_MALLOC=0."""
import subprocess
import sys

import pytest

from slimkernels import allocator, cli
from tests._env import set_env

_CHILD = r"""
import ctypes, resource, sys
if sys.argv[1] == "tuned":
    from slimkernels.allocator import tune_malloc
    assert tune_malloc()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def once():  # 40 MB: above glibc's largest adaptive mmap threshold (32 MiB)
    p = libc.malloc(40 << 20)
    ctypes.memset(p, 1, 40 << 20)
    libc.free(p)
for _ in range(3):
    once()
f0 = faults()
for _ in range(10):
    once()
print((faults() - f0) // 10)
"""

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or
                           not allocator.tune_malloc(), reason="no glibc mallopt here")


def _faults_per_alloc(mode):
    r = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip().splitlines()[-1])


@glibc
def test_tuned_allocations_are_not_faulted_in_again():
    default, tuned = _faults_per_alloc("default"), _faults_per_alloc("tuned")
    # a fresh 40 MB mmap faults in ~10,000 4 KiB pages (fewer with huge pages); from the heap
    # it is reused as it is (measured here: 10,241 against 0)
    assert default > 1000, default
    assert tuned < default / 10, (default, tuned)


@pytest.mark.parametrize("kw", [dict(mmap_threshold=0), dict(trim_threshold=-1),
                                dict(mmap_threshold=2 ** 31), dict(trim_threshold=1.5),
                                dict(mmap_threshold=True)])
def test_bad_thresholds_are_refused(kw):
    with pytest.raises(ValueError, match="positive int"):
        allocator.tune_malloc(**kw)


@pytest.mark.parametrize("value,expected", [(None, True), ("1", True), ("0", False),
                                            ("off", False), (" False ", False), ("yes", True)])
def test_env_switch(monkeypatch, value, expected):
    set_env(monkeypatch, "SLIMKERNELS_TUNE_MALLOC", value)
    assert allocator.enabled_by_env() is expected


@pytest.mark.parametrize("env,calls", [("1", 1), ("0", 0)])
def test_cli_tunes_unless_switched_off(monkeypatch, capsys, env, calls):
    seen = []
    monkeypatch.setattr(allocator, "tune_malloc", lambda *a, **k: seen.append(1) or True)
    monkeypatch.setenv("SLIMKERNELS_TUNE_MALLOC", env)
    assert cli.main(["env"]) == 0
    assert len(seen) == calls
    assert allocator.tune_from_env() is bool(calls)
    assert len(seen) == 2 * calls


@pytest.mark.parametrize("env,calls", [("1", 1), ("0", 0)])
def test_training_cli_tunes_unless_switched_off(monkeypatch, tmp_path, env, calls):
    """`slimkernels train` / python/train.py set the thresholds before the trainer starts (its
    weight gradients allocate fresh 10-20 MB buffers every step)."""
    from slimkernels.training import cli as train_cli
    order = []
    monkeypatch.setattr(allocator, "tune_malloc", lambda *a, **k: order.append("tune") or True)

    class FakeTrainer:
        stopped_by = None    # (as the Trainer's after a fit() no signal stopped)

        def __init__(self, cfg, log=print):   # (the Trainer's signature)
            order.append("trainer")

        def fit(self):
            order.append("fit")

    monkeypatch.setattr(train_cli, "Trainer", FakeTrainer)
    monkeypatch.setenv("SLIMKERNELS_TUNE_MALLOC", env)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    # (--data: an existing folder, which the command line checks before the trainer starts)
    assert train_cli.main(["--steps", "1", "--data", str(tmp_path)]) == 0
    assert order == ["tune"] * calls + ["trainer", "fit"]
