import pytest

from slimkernels.training import LambdaScheduler, rd_slope


def test_rd_slope():
    assert rd_slope([1.0, 0.5], [34.0, 31.0], 0) == pytest.approx(6.0)


def _synthetic_rd(lambdas):
    """A toy RD model: each width's rate grows with log lambda, PSNR is a concave function of
    rate, and narrow widths lose some quality. Deterministic."""
    import math
    bpp = [0.15 * (k + 1) ** -0.3 * (1 + math.log(lam / 1e-4)) for k, lam in enumerate(lambdas)]
    psnr = [24 + 9 * math.log1p(b) - 0.4 * k for k, b in enumerate(bpp)]
    return bpp, psnr


def test_scheduler_follows_the_paper_search_and_never_touches_the_widest():
    lam0 = [0.03] * 5
    s = LambdaScheduler(lam0)
    lambdas = list(lam0)
    updates = 0
    while True:
        new = s.observe(*_synthetic_rd(lambdas))
        if new is None:
            break
        updates += 1
        assert new[0] == 0.03
        assert all(a >= b for a, b in zip(new, new[1:]))   # narrower never above wider
        lambdas = new
        assert updates < 5 * 8
    assert s.done
    assert lambdas[-1] < lambdas[1] <= 0.03
    for ev in s.history:
        if ev["action"] != "done":
            assert ev["reductions"] <= s.max_reductions


def test_scheduler_stops_a_pair_when_the_slope_rises():
    s = LambdaScheduler([1.0, 1.0, 1.0])
    assert s.observe([1.0, 0.5, 0.2], [35, 32, 29]) == [1.0, 0.8, 0.8]          # s_ref = 6
    assert s.observe([1.0, 0.45, 0.2], [35, 31.8, 29]) == pytest.approx([1.0, 0.64, 0.64])  # 5.8
    # slope rises above 5.8: pair 0 is done, pair 1 starts from its own slope and reduces width 2
    out = s.observe([1.0, 0.4, 0.2], [35, 31.0, 29])
    assert out == pytest.approx([1.0, 0.64, 0.512]) and s.i == 1
    assert s.history[-1]["pair"] == 0


def test_state_dict_roundtrip():
    s = LambdaScheduler([1.0, 1.0])
    s.observe([1.0, 0.5], [33, 30])
    t = LambdaScheduler([9.0, 9.0])
    t.load_state_dict(s.state_dict())
    assert t.lambdas == s.lambdas and t.i == s.i and t.s_ref == s.s_ref
    with pytest.raises(ValueError, match="expected 2"):
        t.observe([1.0], [30])


@pytest.mark.parametrize("kw,msg", [(dict(factor=0.0), "factor must be in"),
                                    (dict(factor=-1.0), "factor must be in"),
                                    (dict(factor=float("nan")), "factor must be in"),
                                    (dict(factor=2.0), "factor must be in"),
                                    (dict(max_reductions=-1), "max_reductions must be an int"),
                                    (dict(max_reductions=1.5), "max_reductions must be an int")])
def test_scheduler_settings_are_checked(kw, msg):
    with pytest.raises(ValueError, match=msg):
        LambdaScheduler([0.01, 0.005], **kw)


def test_scheduler_refuses_non_finite_results_and_keeps_its_state_dict_apart():
    s = LambdaScheduler([0.01, 0.005, 0.002])
    with pytest.raises(ValueError, match="validation results must be finite"):
        s.observe([1.0, 0.5, 0.2], [35.0, float("nan"), 28.0])   # (kept reducing before)
    assert s.lambdas == [0.01, 0.005, 0.002] and s.m == 0
    snap = s.state_dict()
    s.observe([1.0, 0.5, 0.2], [35.0, 31.0, 28.0])
    assert snap["lambdas"] == [0.01, 0.005, 0.002]              # (was the live list)
    with pytest.raises(ValueError, match=r"unknown keys \['bogus'\]"):
        s.load_state_dict({"i": 1, "bogus": 1})
    with pytest.raises(ValueError, match="the state has 2 lambdas"):
        s.load_state_dict({"lambdas": [1.0, 2.0]})


def test_no_reductions_allowed_leaves_the_lambdas():
    """max_reductions=0: "at most 0 reductions" per pair, so the search ends at once (it reduced
    once per pair)."""
    s = LambdaScheduler([1.0, 1.0, 1.0], max_reductions=0)
    assert s.observe([1.0, 0.5, 0.25], [30.0, 28.0, 26.0]) is None
    assert s.done and s.lambdas == [1.0, 1.0, 1.0]
    assert s.observe([1.0, 0.5, 0.25], [30.0, 28.0, 26.0]) is None


@pytest.mark.parametrize("lambdas", [[-0.1, 0.2], [float("nan"), 0.2], [0.1, "x"]])
def test_scheduler_refuses_lambdas_that_cannot_train(lambdas):
    """(LambdaScheduler checked factor and max_reductions, not the lambdas: negative and NaN
    ones were scaled by the search.)"""
    with pytest.raises(ValueError, match=r"LambdaScheduler: lambdas .* must be finite numbers "
                                         r"> 0"):
        LambdaScheduler(lambdas)


def test_scheduler_argument_mistakes_are_named():
    """(max_reductions='3': TypeError "'<' not supported"; factor='x': "could not convert
    string to float"; observe(1.0, 30.0): TypeError "object of type 'float' has no len()".)"""
    with pytest.raises(ValueError, match=r"max_reductions must be an int >= 0, got '3'"):
        LambdaScheduler([0.1, 0.2], max_reductions="3")
    with pytest.raises(ValueError, match=r"factor must be in \(0, 1\), got 'x'"):
        LambdaScheduler([0.1, 0.2], factor="x")
    s = LambdaScheduler([0.1, 0.2])
    with pytest.raises(ValueError, match=r"expected 2 bpp and psnr values \(one per width, "
                                         r"widest first\), got 1.0 and 30.0"):
        s.observe(1.0, 30.0)
    assert LambdaScheduler([0.1, 0.2], max_reductions=3.0).max_reductions == 3   # (as before)


@pytest.mark.parametrize("state,msg", [
    ({"i": 5}, r"pair index i 5 must be an int in 0..1 for 3 lambdas"),
    ({"i": 2}, r"pair index i 2 must be an int in 0..1"),          # (only once done)
    ({"i": -1}, r"pair index i -1"),
    ({"i": 1.5}, r"pair index i 1.5"),
    ({"factor": 5.0}, r"the state's factor must be in \(0, 1\), got 5.0"),
    ({"lambdas": [-1, "x", 0.1]}, r"LambdaScheduler state: lambdas \[-1, 'x', 0.1\] must be "
                                  r"finite numbers > 0"),
    ({"lambdas": 0.1}, r"the state has no list of lambdas, this scheduler 3"),
    ({"max_reductions": -2}, r"the state's max_reductions must be an int >= 0, got -2"),
    ({"m": "1"}, r"the state's reduction count m '1' must be an int >= 0"),
    ({"s_ref": float("nan")}, r"the state's reference slope s_ref nan must be a finite number"),
    ({"done": "no"}, r"the state's done 'no' must be True or False"),
    ({"history": None}, r"the state's history must be a list, got NoneType"),
    (None, r"not a LambdaScheduler state: a NoneType, not a dict"),
])
def test_scheduler_load_state_dict_checks_the_values(state, msg):
    """load_state_dict checked the key names only: {"i": 5} failed at the next observe() with an
    IndexError in rd_slope, {"factor": 5.0} made the "reduced" lambdas grow, {"lambdas": [-1,
    "x", ...]} was taken, None was a TypeError. A refused state changes nothing."""
    s = LambdaScheduler([0.01, 0.005, 0.002])
    before = s.state_dict()
    with pytest.raises(ValueError, match=msg):
        s.load_state_dict(state)
    assert s.state_dict() == before
    done = LambdaScheduler([0.01, 0.005, 0.002])
    done.load_state_dict({"i": 2, "done": True})             # (where a finished search is)
    assert done.observe([1.0, 0.5, 0.2], [35.0, 31.0, 28.0]) is None


@pytest.mark.parametrize("i", [1, -1, 0.0, True])
def test_rd_slope_refuses_an_index_outside_the_pairs(i):
    """(i = K-1 was an IndexError, i = -1 the slope between the last and the first width.)"""
    with pytest.raises(ValueError, match=rf"rd_slope: i={i!r} must be a pair index, an int in "
                                         rf"0..0 for 2 widths"):
        rd_slope([1.0, 0.5], [34.0, 31.0], i)
