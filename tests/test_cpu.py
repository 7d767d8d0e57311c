"""slimkernels._cpu: the compiled CPU kernels' switch, read from the environment at every call."""
import os

import pytest

from slimkernels import _cpu
from tests._env import set_env


@pytest.mark.parametrize("value, off", [("0", True), ("1", False), ("", False), ("00", False),
                                        (None, False)])
def test_switch_follows_the_environment_at_every_call(monkeypatch, value, off):
    set_env(monkeypatch, "SLIMKERNELS_CPU_KERNELS", value)
    assert _cpu.switched_off() is off
    assert _cpu.switched_off() == (os.environ.get("SLIMKERNELS_CPU_KERNELS", "1") == "0")
    if off:
        assert _cpu.cpu_kernels("gdn_avx2_available") is None
        assert _cpu.cpu_kernels("latents_simd_available") is None


def test_switch_without_cpythons_environ_mapping(monkeypatch):
    # an os.environ replaced by a plain dict (no encoded _data): the plain lookup still decides
    monkeypatch.setattr(os, "environ", {"SLIMKERNELS_CPU_KERNELS": "0"})
    assert _cpu.switched_off() is True
    monkeypatch.setattr(os, "environ", {})
    assert _cpu.switched_off() is False


def test_switched_on_kernels_follow_the_probe(monkeypatch):
    monkeypatch.delenv("SLIMKERNELS_CPU_KERNELS", raising=False)
    mod = _cpu._module()
    if mod is None:
        pytest.skip("slimkernels._cpu_kernels not built here")
    assert _cpu.cpu_kernels("no_such_probe") is None
    probe = "gdn_avx2_available"
    assert (_cpu.cpu_kernels(probe) is mod) == bool(getattr(mod, probe)())
