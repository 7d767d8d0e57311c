"""BD-rate / BD-PSNR against analytic values and the `bjontegaard` package."""
import math
import warnings

import numpy as np
import pytest

from slimkernels.evaluation.bdrate import (NonMonotoneCurveWarning, SmallOverlapWarning, bd_psnr,
                                          bd_rate, overlap, quality_at_rate)

# a realistic pair: published Kodak points (Yang et al. 2021)
BALLE = ([0.120, 0.195, 0.316, 0.481, 0.721, 1.061], [26.78, 28.35, 30.02, 31.73, 33.69, 35.82])
CAI = ([0.123, 0.189, 0.288, 0.440, 0.648, 0.967], [26.91, 28.22, 29.62, 31.28, 32.96, 35.38])
ALL = ("pchip", "akima", "cubic")


@pytest.mark.parametrize("method", ALL)
def test_identical_curves_give_zero(method):
    r, q = BALLE
    assert bd_rate(r, q, r, q, method) == pytest.approx(0.0, abs=1e-12)
    assert bd_psnr(r, q, r, q, method) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("scale,expect", [(0.9, -10.0), (2.0, 100.0), (1.25, 25.0)])
def test_uniformly_scaled_rates(method, scale, expect):
    r, q = BALLE
    assert bd_rate(r, q, [scale * v for v in r], q, method) == pytest.approx(expect, abs=1e-9)


@pytest.mark.parametrize("method", ALL)
def test_uniform_psnr_shift(method):
    r, q = BALLE
    assert bd_psnr(r, q, r, [v + 0.5 for v in q], method) == pytest.approx(0.5, abs=1e-12)
    # the same shift makes the test codec cheaper at equal quality
    assert bd_rate(r, q, r, [v + 0.5 for v in q], method) < 0


@pytest.mark.parametrize("method", ALL)
def test_linear_log_rate_analytic(method):
    """log10 R linear in PSNR on both curves (every method reproduces lines exactly), sampled at
    different PSNRs; the shared range is [30, 36] and the mean log-rate difference
    -0.02 * 33 + 0.5 = -0.16."""
    qa = np.array([28.0, 30.5, 33.0, 35.5, 38.0])
    qt = np.array([30.0, 31.0, 33.7, 34.9, 36.0])
    ra = 10 ** (0.10 * qa - 3.0)
    rt = 10 ** (0.08 * qt - 2.5)
    with pytest.warns(SmallOverlapWarning, match="60%"):   # ([30, 36] of [28, 38])
        v = bd_rate(ra, qa, rt, qt, method)
    assert v == pytest.approx((10 ** -0.16 - 1) * 100, abs=1e-9)


def test_point_order_does_not_matter():
    r, q = np.array(CAI[0]), np.array(CAI[1])
    p = np.random.default_rng(0).permutation(len(r))
    for m in ALL:
        assert bd_rate(*BALLE, r[p], q[p], m) == pytest.approx(bd_rate(*BALLE, r, q, m), abs=1e-12)


def test_methods_differ_on_realistic_curves():
    vals = [bd_rate(*BALLE, *CAI, m) for m in ALL]
    assert all(abs(v) < 10 for v in vals)
    assert len({round(v, 9) for v in vals}) == 3  # three distinct interpolants


@pytest.mark.parametrize("method", ALL)
def test_matches_bjontegaard_package(method):
    bj = pytest.importorskip("bjontegaard", reason="the bjontegaard package is not installed")
    assert bd_rate(*BALLE, *CAI, method) == pytest.approx(
        bj.bd_rate(*BALLE, *CAI, method=method, min_overlap=0), rel=1e-9, abs=1e-9)
    assert bd_psnr(*BALLE, *CAI, method) == pytest.approx(
        bj.bd_psnr(*BALLE, *CAI, method=method, min_overlap=0), rel=1e-9, abs=1e-9)
    # a pair with partial overlap and unequal point counts (JPEG-like anchor)
    jr = [0.25, 0.4, 0.6, 0.9, 1.3, 2.0]
    jq = [24.5, 27.0, 29.2, 31.3, 33.2, 35.5]
    assert bd_rate(jr, jq, *BALLE, method) == pytest.approx(
        bj.bd_rate(jr, jq, *BALLE, method=method, min_overlap=0), rel=1e-9)
    assert bd_rate(jr, jq, *BALLE, method) < -30


def test_errors_are_clear():
    r, q = BALLE
    with pytest.raises(ValueError, match="do not overlap"):
        bd_rate(r, q, r, [v + 20 for v in q])
    with pytest.raises(ValueError, match="at least 2"):
        bd_rate(r, q, [0.5], [30.0])
    with pytest.raises(ValueError, match="> 0"):
        bd_rate(r, q, [0.0, 0.5], [28.0, 31.0])
    with pytest.raises(ValueError, match="distinct"):
        bd_rate(r, q, [0.2, 0.3, 0.5], [29.0, 29.0, 31.0])
    with pytest.raises(ValueError, match=">= 4 points"):
        bd_rate(r, q, [0.2, 0.3, 0.5], [28.0, 29.0, 31.0], "cubic")
    with pytest.raises(ValueError, match="unknown interpolation"):
        bd_rate(r, q, r, q, "spline")
    with pytest.raises(ValueError, match="finite"):
        bd_rate(r, q, [0.2, 0.5], [28.0, float("nan")])
    with pytest.raises(ValueError, match="rates but"):
        bd_rate(r, q, [0.2, 0.5], [28.0])


def test_helpers():
    assert overlap([1, 3], [2, 4]) == pytest.approx(1 / 3)
    assert overlap([1, 2], [3, 4]) == 0.0
    assert quality_at_rate(*BALLE, 0.481) == pytest.approx(31.73, abs=1e-12)
    v = quality_at_rate(*BALLE, 0.6)
    assert 31.73 < v < 33.69
    assert math.isnan(quality_at_rate(*BALLE, 2.0))


@pytest.mark.filterwarnings("ignore::slimkernels.evaluation.bdrate.SmallOverlapWarning")
def test_a_curve_that_folds_back_is_warned_and_still_computed():
    from slimkernels.evaluation.bdrate import NonMonotoneCurveWarning
    r, q = BALLE
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonMonotoneCurveWarning)
        warnings.simplefilter("ignore", SmallOverlapWarning)
        bd_rate(r, q, [0.2, 0.3, 0.5], [28.0, 29.0, 31.0])      # monotone: no warning
    with pytest.warns(NonMonotoneCurveWarning, match=r"test: the quality falls.*\[0.2, 0.3, 0.5\]"):
        v = bd_psnr(r, q, [0.5, 0.2, 0.3], [31.0, 29.5, 29.0])   # order given does not matter
    assert math.isfinite(v)
    with pytest.warns(NonMonotoneCurveWarning, match="anchor"):
        bd_rate([0.2, 0.3, 0.5], [28.0, 27.0, 31.0], r, q)


def test_bd_summary_lists_a_folding_curve_once_under_warnings():
    from slimkernels.evaluation.kodak import bd_summary
    r, q = BALLE
    test = {"results": {"bpp": [0.2, 0.3, 0.5], "psnr-rgb": [29.5, 29.0, 31.0]}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # reported in the summary, not raised or printed
        row = bd_summary(test, {"ref": {"results": {"bpp": list(r), "psnr-rgb": list(q)}}})["ref"]
    folds = [w for w in row["warnings"] if "the quality falls" in w]
    assert len(folds) == 1 and folds[0].startswith("bd_rate_pchip: test:")
    assert row["bd_rate_pchip"] is not None and row["bd_psnr_pchip"] is not None


def test_markdown_marks_a_folding_curve_apart_from_a_small_overlap():
    from slimkernels.evaluation.kodak import bd_summary, markdown_table
    r, q = BALLE
    anchors = {"ref": {"results": {"bpp": list(r), "psnr-rgb": list(q)}}}

    def table(psnr):
        res = {"width": [48, 96, 192], "bpp": [0.2, 0.3, 0.5], "psnr-rgb": psnr,
               "bpp-estimated": [0.2, 0.3, 0.5], "ms-ssim-rgb": [0.9, 0.92, 0.95],
               "ms-ssim-db": [10.0, 11.0, 13.0], "encode_ms": [1.0] * 3, "decode_ms": [1.0] * 3}
        return markdown_table({"results": res}, bd_summary({"results": res}, anchors))

    folded = table([29.5, 29.0, 31.0])
    assert "^ |" in folded and "folds back" in folded
    monotone = table([28.0, 29.0, 31.0])
    assert "^" not in monotone and "folds back" not in monotone


# -- (found by an audit of the evaluation numbers) ----------------------------------------------
_ANCHOR = ([0.1, 0.2, 0.3, 0.4], [25.0, 27.0, 29.0, 31.0])
# quality falls from 29 dB at 0.2 bpp to 27 dB at 0.4 bpp; two points happen to share 0.2 bpp
_FOLDING_WITH_A_RATE_TIE = ([0.1, 0.2, 0.2, 0.4], [26.0, 29.0, 28.0, 27.0])


def test_folding_curve_is_warned_even_when_two_rates_tie():
    # bd_rate's docstring: "Warns: NonMonotoneCurveWarning: a curve whose quality falls somewhere
    # as its rate rises". _curve only checks when ALL rates are distinct, so one tie anywhere
    # switches the check off (without the tie, [0.1, 0.2, 0.3, 0.4] -> same q, it warns).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bd_rate(*_ANCHOR, *_FOLDING_WITH_A_RATE_TIE)
    assert any(issubclass(w.category, NonMonotoneCurveWarning) for w in caught)


def test_bd_summary_flags_a_folding_curve_with_a_rate_tie():
    # kodak.bd_summary: "a value computed ... over a curve whose quality does not rise with its
    # rate, gets a line under "warnings"" (and table.md marks it "^").
    from slimkernels.evaluation.kodak import bd_summary

    test = {"results": {"bpp": _FOLDING_WITH_A_RATE_TIE[0], "psnr-rgb": _FOLDING_WITH_A_RATE_TIE[1]}}
    anchor = {"results": {"bpp": _ANCHOR[0], "psnr-rgb": _ANCHOR[1]}}
    row = bd_summary(test, {"ref": anchor})["ref"]
    assert row["bd_rate_pchip"] is not None
    assert any("the quality falls" in w for w in row.get("warnings", []))


# -- audit (forty-eighth sitting) ----------------------------------------------------------------
def test_overlap_refuses_values_that_are_not_finite_or_empty():
    """(overlap([25, nan], [30, 31]) was 1.0, a full overlap; an empty set numpy's "zero-size
    array to reduction operation" message.)"""
    for a, t in (([25.0, math.nan], [30.0, 31.0]), ([], [30.0, 31.0]), ([25.0, 26.0], [math.inf])):
        with pytest.raises(ValueError, match="must be finite and not empty"):
            overlap(a, t)
    assert overlap([25.0, 30.0], [28.0, 31.0]) == pytest.approx(2 / 6)


@pytest.mark.filterwarnings("ignore::slimkernels.evaluation.bdrate.SmallOverlapWarning")
def test_bd_summary_leaves_out_a_lossless_point():
    """(One point of infinite PSNR / MS-SSIM 1.0 made every BD value None and the PSNR overlap
    0%, with numpy warnings; its finite points give the value.)"""
    from slimkernels.evaluation.kodak import bd_summary
    test = {"results": {"bpp": [0.15, 0.25, 0.4, 0.6, 9.0],
                        "psnr-rgb": [27, 28.8, 30.5, 32.2, math.inf],
                        "ms-ssim-rgb": [0.93, 0.95, 0.97, 0.98, 1.0]}}
    anchor = {"results": {"bpp": [0.3, 0.5, 0.8, 1.2, 2.0], "psnr-rgb": [25, 28, 31, 33, 36],
                          "ms-ssim-rgb": [0.90, 0.94, 0.97, 0.98, 0.99]}}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        row = bd_summary(test, {"JPEG": anchor})["JPEG"]
    r = anchor["results"]
    want = bd_rate(r["bpp"], r["psnr-rgb"], test["results"]["bpp"][:4],
                   test["results"]["psnr-rgb"][:4])
    assert row["bd_rate_pchip"] == pytest.approx(want) and row["bd_rate_ms_ssim_pchip"] is not None
    assert row["overlap_psnr"] == pytest.approx(overlap(r["psnr-rgb"], [27, 28.8, 30.5, 32.2]))
    assert any("1 point(s) of the test curve left out" in w for w in row["warnings"])


def test_messages_name_the_rate_and_a_bad_rate_to_read_at():
    """(Two points of one rate were named by its log10, "share the value -0.30103"; reading a
    curve at rate 0 gave NaN and numpy's divide-by-zero warning.)"""
    from slimkernels.evaluation.bdrate import quality_at_rate
    with pytest.raises(ValueError, match=r"share the value 0\.5 \(rate\)"):
        bd_psnr([0.5, 0.5, 1.0], [30, 31, 33], [0.4, 0.8, 1.2], [29, 31, 33])
    for bad in (0, -1.0, math.nan, True, "1"):
        with pytest.raises(ValueError, match="at must be a finite rate > 0"):
            quality_at_rate([0.5, 1.0], [30, 33], bad)
    assert quality_at_rate([0.5, 1.0], [30, 33], 0.5) == pytest.approx(30)


def test_a_small_overlap_is_warned_when_called_directly():
    r, q = BALLE
    # the test curve's quality range shares only its lowest part with the anchor's
    hi_q = [v + 7.0 for v in q]
    with pytest.warns(SmallOverlapWarning, match=r"share only \d+%"):
        v = bd_rate(r, q, r, hi_q)
    assert math.isfinite(v)
    with pytest.warns(SmallOverlapWarning):
        bd_psnr(r, q, [4 * v for v in r], q)   # log-rate ranges shifted by log10(4)
    with warnings.catch_warnings():   # a full overlap says nothing
        warnings.simplefilter("error")
        bd_rate(*BALLE, *CAI)
        bd_psnr(*BALLE, *CAI)


def test_bd_summary_reports_a_small_overlap_once_without_python_warnings():
    from slimkernels.evaluation.kodak import bd_summary

    def curve(r, q):
        return {"results": {"bpp": list(r), "psnr-rgb": list(q)}}
    r, q = BALLE
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # (its own note only: no SmallOverlapWarning escapes)
        out = bd_summary(curve(r, [v + 7.0 for v in q]), {"a": curve(r, q)})["a"]
    assert any("bd_rate_pchip: the curves share only" in w for w in out["warnings"])
