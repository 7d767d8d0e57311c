"""bench/ab_switch.py: the A/B of a dispatch switch runs every value, restores the switch, and
refuses what it cannot compare with a message."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ab_switch  # noqa: E402
import slimkernels.ops.conv as oc  # noqa: E402


def test_compare_runs_each_value_and_restores_the_switch(monkeypatch):
    seen = []
    real = oc._use_amx_conv
    monkeypatch.setattr(oc, "_use_amx_conv",
                        lambda *a, **k: seen.append(oc.CPU_AMX_CONV_WINDOWS) or real(*a, **k))
    saved = oc.CPU_AMX_CONV_WINDOWS
    x = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    rows = ab_switch.compare("CPU_AMX_CONV_WINDOWS", [False, True], [48], rounds=2, threads=1,
                             image=x)
    assert oc.CPU_AMX_CONV_WINDOWS == saved
    assert [(r["width"], r["op"]) for r in rows] == [(48, "compress"), (48, "decompress")]
    for r in rows:
        assert len(r["ms"]) == 2 and min(r["ms"]) > 0
        assert r["speedup"] == pytest.approx(r["ms"][0] / r["ms"][-1])
        assert r["same"] is True          # (the window layout keeps the bits)
    if oc.amx_conv_available():           # both values reached the dispatch
        assert {False, True} <= set(seen)
    text = ab_switch.table("CPU_AMX_CONV_WINDOWS", [False, True], rows)
    assert "| 48 | compress |" in text and "| 48 | decompress |" in text


def test_main_prints_the_table(capsys, monkeypatch):
    monkeypatch.setattr(ab_switch, "compare", lambda *a, **k: [
        {"width": 48, "op": "compress", "ms": [2.0, 1.0], "speedup": 2.0, "same": False}])
    assert ab_switch.main(["CPU_AMX_CONV_WINDOWS", "--widths", "48", "--ops", "compress"]) == 0
    out = capsys.readouterr().out
    assert "| 48 | compress | 2.000 | 1.000 | 2.000x | no |" in out


@pytest.mark.parametrize("argv, match", [
    (["cpu_amx_conv"], "not a switch name"),
    (["NO_SUCH_SWITCH"], "has no switch NO_SUCH_SWITCH; it has: .*CPU_AMX_CONV_WINDOWS"),
    (["F"], r"slimkernels.ops.conv.F is not a switch \(a module, not a bool"),
    (["AMX_CONV_GDN_MAX_CHANNELS"], "not a bool: give --values"),
    (["AMX_CONV_GDN_MAX_CHANNELS", "--values", "72"], "at least two values"),
    (["AMX_CONV_GDN_MAX_CHANNELS", "--values", "72,True"], "not of the switch's type"),
    (["CPU_AMX_CONV_WINDOWS", "--values", "off,on"], "Python literals"),
    (["CPU_AMX_CONV_WINDOWS", "--widths", "47"], "not the model's"),
    (["CPU_AMX_CONV_WINDOWS", "--widths", "a"], "comma-separated widths"),
    (["CPU_AMX_CONV_WINDOWS", "--ops", "encode"], "compress and / or decompress"),
    (["CPU_AMX_CONV_WINDOWS", "--rounds", "0"], "at least 1"),
    (["CPU_AMX_CONV_WINDOWS", "--image", "/no/such.png"], "no such file"),
    (["X", "--module", "slimkernels.no_such"], "cannot import"),
])
def test_main_refuses_what_it_cannot_compare(argv, match):
    with pytest.raises(SystemExit, match=match):
        ab_switch.main(argv)


def test_rotation_puts_each_value_in_each_place():
    for n in (2, 3, 5):
        firsts, places = [], {}
        for r in range(4 * n):
            order = ab_switch.rotation(n, r)
            assert sorted(order) == list(range(n))
            firsts.append(order[0])
            for place, v in enumerate(order):
                places[v, place] = places.get((v, place), 0) + 1
        assert all(firsts.count(v) == 4 for v in range(n))
        assert set(places.values()) == {4} and len(places) == n * n


class _Fake:
    """A model stand-in: records the switch's value at each call; compress fails on demand."""
    widths = (48,)

    def __init__(self, fail=False):
        self.seen, self.fail = [], fail

    def clear_caches(self):
        pass

    def compress(self, x, w, precision="auto"):
        self.seen.append(oc.AMX_CONV_GDN_MAX_CHANNELS)
        if self.fail and len(self.seen) > 1:
            raise RuntimeError("boom")
        return b"x"

    def decompress(self, data, precision="auto"):
        return torch.zeros(1)


def test_compare_rotates_several_values_and_restores_the_switch_after_an_error():
    saved, nt = oc.AMX_CONV_GDN_MAX_CHANNELS, torch.get_num_threads()
    fake = _Fake()
    vals = [10, 20, 30, 40, 50]
    ab_switch.compare("AMX_CONV_GDN_MAX_CHANNELS", vals, [48], ops=["compress"], rounds=5,
                      threads=1, image=torch.zeros(1, 3, 8, 8), model=fake)
    assert oc.AMX_CONV_GDN_MAX_CHANNELS == saved
    assert fake.seen[1:1 + len(vals)] == vals    # (the bytes of each value, after the first)
    rounds = fake.seen[1 + len(vals):]            # per round: an untimed and a timed call each
    assert len(rounds) == 5 * 2 * len(vals)
    firsts = [rounds[2 * len(vals) * r] for r in range(5)]
    assert sorted(firsts) == vals                 # each value first in one round of five
    assert rounds[0::2] == rounds[1::2]           # the timed call right after one of its value
    with pytest.raises(RuntimeError, match="boom"):
        ab_switch.compare("AMX_CONV_GDN_MAX_CHANNELS", vals, [48], ops=["compress"], rounds=1,
                          threads=2, image=torch.zeros(1, 3, 8, 8), model=_Fake(fail=True))
    assert oc.AMX_CONV_GDN_MAX_CHANNELS == saved and torch.get_num_threads() == nt


def test_switches_are_the_literal_constants_only():
    """``F`` (torch.nn.functional in slimkernels.ops.conv) is upper case but no switch: neither
    listed nor accepted."""
    import slimkernels.ops.conv as conv
    names = ab_switch.switches(conv)
    assert "CPU_AMX_CONV_WINDOWS" in names and "AMX_CONV_GDN_MAX_CHANNELS" in names
    assert "F" not in names
    with pytest.raises(SystemExit) as e:
        ab_switch.main(["NO_SUCH_SWITCH"])
    assert ", F," not in str(e.value) and not str(e.value).endswith(", F")


def test_help_describes_the_tool_and_every_option():
    """--help: the whole docstring (the first line alone stopped mid-sentence: "... module)
    on"), and a help text with the default for each option."""
    import subprocess
    r = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                     "ab_switch.py"), "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "``compress`` / ``decompress`` of the bundled model, per width." in r.stdout
    assert "python bench/ab_switch.py AMX_CONV_GDN_WINDOWS" in r.stdout   # the examples
    for opt, default in (("--widths", "48,192"), ("--ops", "both"), ("--rounds", "30"),
                         ("--threads", "2"), ("--precision", "auto")):
        line = r.stdout[r.stdout.index(f"  {opt} "):]
        assert f"(default {default})" in " ".join(line.split("\n  -")[0].split()), opt
