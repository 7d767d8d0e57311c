"""slimkernels._env.getenv: os.environ.get, read at every call from CPython's own mapping."""
import os

import pytest

from slimkernels._env import getenv


@pytest.mark.parametrize("value", ["0", "1", "", "triton", " torch ", "é-ü", "a=b"])
def test_getenv_follows_set_and_delete(monkeypatch, value):
    name = "SLIMKERNELS_TEST_ENV_VALUE"
    monkeypatch.delenv(name, raising=False)
    assert getenv(name) is None and getenv(name, "d") == "d"
    monkeypatch.setenv(name, value)
    assert getenv(name) == value == os.environ.get(name)
    assert getenv(name, "d") == value
    os.environ[name] = value + "x"          # a plain assignment, after the name was encoded
    assert getenv(name) == value + "x"
    del os.environ[name]
    assert getenv(name) is None and getenv(name, "d") == "d"


def test_getenv_with_a_replaced_environ(monkeypatch):
    name = "SLIMKERNELS_TEST_ENV_REPLACED"
    monkeypatch.setenv(name, "real")
    assert getenv(name) == "real"           # the encoded name is cached now
    monkeypatch.setattr(os, "environ", {name: "plain"})
    assert getenv(name) == "plain"
    monkeypatch.setattr(os, "environ", {})
    assert getenv(name) is None and getenv(name, "d") == "d"


def test_getenv_matches_os_environ_for_every_variable():
    for name in list(os.environ)[:50]:
        assert getenv(name) == os.environ.get(name), name


@pytest.mark.parametrize("value,off", [("0", True), ("off", True), ("false", True),
                                       (" 0", True), ("NO", True), ("1", False), ("", False),
                                       ("on", False), (None, False)])
def test_the_on_off_switches_read_off_alike(monkeypatch, value, off):
    """(SLIMKERNELS_CPU_KERNELS was off only for exactly "0" and SLIMKERNELS_AUTOTUNE for "0"
    after stripping, while SLIMKERNELS_TUNE_MALLOC took 0 / false / no / off: "=off" left the
    CPU kernels on without a word.)"""
    from slimkernels import _cpu, allocator
    from slimkernels.kernels import configs
    for name in ("SLIMKERNELS_CPU_KERNELS", "SLIMKERNELS_AUTOTUNE", "SLIMKERNELS_TUNE_MALLOC"):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert _cpu.switched_off() is off
    assert configs.autotune_enabled() is not off
    assert allocator.enabled_by_env() is not off
