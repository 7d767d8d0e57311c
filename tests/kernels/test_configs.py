"""slimkernels.kernels.configs: the autotune lists and the SLIMKERNELS_AUTOTUNE switch."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from slimkernels.kernels import configs as K  # noqa: E402


def test_to_triton_keeps_every_config_by_default(monkeypatch):
    monkeypatch.delenv("SLIMKERNELS_AUTOTUNE", raising=False)
    assert K.autotune_enabled()
    got = K.to_triton(K.CONV_FWD_CONFIGS)
    assert [c.kwargs for c in got] == [c["kwargs"] for c in K.CONV_FWD_CONFIGS]
    assert [(c.num_warps, c.num_stages) for c in got] == \
        [(c["num_warps"], c["num_stages"]) for c in K.CONV_FWD_CONFIGS]


@pytest.mark.parametrize("value,on", [("0", False), (" 0 ", False), ("1", True), ("", True)])
def test_autotune_switch(monkeypatch, value, on):
    monkeypatch.setenv("SLIMKERNELS_AUTOTUNE", value)
    assert K.autotune_enabled() is on
    got = K.to_triton(K.GDN_FWD_CONFIGS)
    assert len(got) == (len(K.GDN_FWD_CONFIGS) if on else 1)
    assert got[0].kwargs == K.GDN_FWD_CONFIGS[0]["kwargs"]


def test_kernels_built_with_autotune_off_hold_one_config_each():
    """Read at import: the kernel modules built under SLIMKERNELS_AUTOTUNE=0 autotune over one
    config (checked in a fresh interpreter, as a GPU test run sets it)."""
    code = ("from slimkernels.kernels import conv, gdn\n"
            "ts = [conv._CONV[k] for k in conv._CONV] + [conv._CONVT[k] for k in conv._CONVT]\n"
            "ts += [gdn._fwd_tuned, gdn._bwd_dn_tuned, gdn._bwd_dx_tuned, gdn._bwd_dgamma_tuned]\n"
            "print(sorted({len(t.configs) for t in ts}))\n")
    env = dict(os.environ, SLIMKERNELS_AUTOTUNE="0", TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[1]"
