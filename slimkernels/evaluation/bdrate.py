"""Bjontegaard deltas: BD-rate and BD-PSNR between two rate-distortion curves.

BD-rate is the average rate difference (in %) of a *test* codec against an *anchor* codec at
equal quality: log-rate is interpolated as a function of quality (PSNR, or any metric) on each
curve, both interpolants are integrated over the quality range the two curves share, and the
mean log-rate difference ``d`` gives ``(10**d - 1) * 100``. Negative = the test codec saves rate.
BD-PSNR swaps the axes: the average quality difference (dB) over the shared log-rate range.

Interpolation methods:
    ``"pchip"``: piecewise cubic Hermite (monotone, Fritsch-Carlson; scipy PchipInterpolator),
    ``"akima"``: Akima 1970 spline (scipy Akima1DInterpolator; linear for two points),
    ``"cubic"``: the original VCEG-M33 Bjontegaard: one cubic polynomial fitted by least squares
    (needs >= 4 points per curve).
PCHIP/Akima follow the ``bjontegaard`` package (Herglotz et al.) and the VCEG-AL22 advice that
piecewise interpolation is more robust than the single cubic.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence, Tuple

import numpy as np

METHODS = ("pchip", "akima", "cubic")


#: Below this shared fraction of the two curves' union range on the integration axis a BD value
#: comes with :class:`SmallOverlapWarning` (the ``bjontegaard`` package's default).
MIN_OVERLAP = 0.75


class SmallOverlapWarning(UserWarning):
    """Two curves that share less than :data:`MIN_OVERLAP` of their union range on the BD
    metric's integration axis: the value averages over that shared part only."""


class NonMonotoneCurveWarning(UserWarning):
    """A rate-distortion curve whose quality falls somewhere as its rate rises: a BD metric
    assumes a monotone curve, and its value over this one averages a curve that folds back."""


def _curve(rate: Sequence[float], quality: Sequence[float], name: str) -> Tuple[np.ndarray, np.ndarray]:
    r = np.asarray(rate, dtype=np.float64).ravel()
    q = np.asarray(quality, dtype=np.float64).ravel()
    if r.shape != q.shape:
        raise ValueError(f"{name}: {r.size} rates but {q.size} quality values")
    if r.size < 2:
        raise ValueError(f"{name}: a BD metric needs at least 2 rate-distortion points, got {r.size}")
    if not (np.isfinite(r).all() and np.isfinite(q).all()):
        raise ValueError(f"{name}: rates and quality values must be finite, got {r} / {q} (a "
                         f"lossless point's infinite PSNR: leave that point out)")
    if (r <= 0).any():
        raise ValueError(f"{name}: rates must be > 0 (log-rate is interpolated), got {r}")
    order = np.argsort(r, kind="stable")
    # a point of a higher rate and a lower quality than another (points of the same rate do
    # not count: a tie anywhere had switched the check off)
    if np.any((r[None, :] > r[:, None]) & (q[None, :] < q[:, None])):
        warnings.warn(f"{name}: the quality falls as the rate rises (by rate: "
                      f"{np.round(r[order], 4).tolist()} -> {np.round(q[order], 3).tolist()}); "
                      "a BD metric assumes a monotone curve: check the points, or drop the "
                      "ones a higher rate does not improve", NonMonotoneCurveWarning, stacklevel=3)
    return r, q


class _Interp:
    """``y(x)`` through the points, with ``integrate(a, b)``; x must be strictly increasing."""

    def __init__(self, x: np.ndarray, y: np.ndarray, method: str, name: str,
                 shown=lambda v: f"{v:.6g}"):
        order = np.argsort(x, kind="stable")
        x, y = x[order], y[order]
        if np.any(np.diff(x) <= 0):   # (shown: the value as the caller gave it, e.g. 0.5 bpp
            #                            for log10 = -0.30103)
            raise ValueError(f"{name}: two points share the value "
                             f"{shown(x[np.argmin(np.diff(x))])} on the integration axis; BD "
                             "metrics need distinct values (average or drop duplicate points)")
        from scipy import interpolate

        if method == "pchip":
            self.f = interpolate.PchipInterpolator(x, y)
            self.integrate = self.f.integrate
        elif method == "akima":
            if x.size == 2:
                self.f = interpolate.make_interp_spline(x, y, k=1)
            else:
                self.f = interpolate.Akima1DInterpolator(x, y)
            self.integrate = self.f.integrate
        elif method == "cubic":
            if x.size < 4:
                raise ValueError(f"{name}: the cubic Bjontegaard fit needs >= 4 points, got "
                                 f"{x.size}; use method='pchip' or 'akima'")
            p = np.polyint(np.polyfit(x, y, 3))
            self.f = np.poly1d(np.polyfit(x, y, 3))
            self.integrate = lambda a, b: float(np.polyval(p, b) - np.polyval(p, a))
        else:
            raise ValueError(f"unknown interpolation method {method!r}; choose one of {METHODS}")


def _delta(x_anchor, y_anchor, x_test, y_test, method: str, shown=None) -> float:
    kw = {} if shown is None else {"shown": shown}
    fa = _Interp(x_anchor, y_anchor, method, "anchor", **kw)
    ft = _Interp(x_test, y_test, method, "test", **kw)
    lo = max(x_anchor.min(), x_test.min())
    hi = min(x_anchor.max(), x_test.max())
    if not hi > lo:
        raise ValueError(
            f"the curves do not overlap on the integration axis: anchor spans "
            f"[{x_anchor.min():.4g}, {x_anchor.max():.4g}], test spans [{x_test.min():.4g}, "
            f"{x_test.max():.4g}]; a BD metric is undefined without a shared range")
    union = max(x_anchor.max(), x_test.max()) - min(x_anchor.min(), x_test.min())
    if (hi - lo) < MIN_OVERLAP * union:
        warnings.warn(f"the curves share only {(hi - lo) / union:.0%} of their range on the "
                      f"integration axis (< {MIN_OVERLAP:.0%}); the value averages over that "
                      "part only", SmallOverlapWarning, stacklevel=3)
    return float((ft.integrate(lo, hi) - fa.integrate(lo, hi)) / (hi - lo))


def overlap(anchor_values: Sequence[float], test_values: Sequence[float]) -> float:
    """Fraction of the union range of two value sets that both cover (0 = disjoint, 1 = same).

    Raises:
        ValueError: an empty set, or a value that is not finite (NaN had given 1.0, a full
            overlap; an empty set numpy's "zero-size array" message)."""
    a, t = np.asarray(anchor_values, float), np.asarray(test_values, float)
    for v, name in ((a, "anchor"), (t, "test")):
        if v.size == 0 or not np.isfinite(v).all():
            raise ValueError(f"overlap: the {name} values must be finite and not empty, got "
                             f"{v.tolist()!r:.80}")
    total = max(a.max(), t.max()) - min(a.min(), t.min())
    shared = max(0.0, min(a.max(), t.max()) - max(a.min(), t.min()))
    return float(shared / total) if total > 0 else 1.0


def bd_rate(rate_anchor: Sequence[float], quality_anchor: Sequence[float],
            rate_test: Sequence[float], quality_test: Sequence[float],
            method: str = "pchip") -> float:
    """Bjontegaard delta rate of ``test`` against ``anchor``, in percent.

    Args:
        rate_anchor, quality_anchor: the anchor curve (e.g. bpp and PSNR dB), >= 2 points.
        rate_test, quality_test: the test curve.
        method: ``"pchip"`` (default), ``"akima"`` or ``"cubic"``.

    Returns:
        average rate change at equal quality over the shared quality range, in % (-10.0 means the
        test codec needs 10 % fewer bits).

    Raises:
        ValueError: too few points, non-positive rates, duplicate quality values, no overlap.

    Warns:
        NonMonotoneCurveWarning: a curve whose quality falls somewhere as its rate rises (the
        value is still computed, over the folded curve).
        SmallOverlapWarning: the curves share less than :data:`MIN_OVERLAP` of their union
        range on the integration axis (the value is still computed, over the shared part).
    """
    ra, qa = _curve(rate_anchor, quality_anchor, "anchor")
    rt, qt = _curve(rate_test, quality_test, "test")
    d = _delta(qa, np.log10(ra), qt, np.log10(rt), method)
    return float((10.0 ** d - 1.0) * 100.0)


def bd_psnr(rate_anchor: Sequence[float], quality_anchor: Sequence[float],
            rate_test: Sequence[float], quality_test: Sequence[float],
            method: str = "pchip") -> float:
    """Bjontegaard delta quality (dB for PSNR) of ``test`` against ``anchor`` at equal rate.

    Same arguments as :func:`bd_rate`; the quality is interpolated over log10(rate) and averaged
    over the shared log-rate range. Positive = the test codec is better. Raises and warns as
    :func:`bd_rate` (the overlap on the log-rate axis).
    """
    ra, qa = _curve(rate_anchor, quality_anchor, "anchor")
    rt, qt = _curve(rate_test, quality_test, "test")
    return _delta(np.log10(ra), qa, np.log10(rt), qt, method,
                  shown=lambda v: f"{10 ** v:.6g} (rate)")   # (the log10 rate had been named)


def quality_at_rate(rate: Sequence[float], quality: Sequence[float], at: float,
                    method: str = "pchip") -> float:
    """Quality of a curve at rate ``at`` (interpolated over log10 rate; NaN outside the curve).

    Raises:
        ValueError: a bad curve (see :func:`bd_rate`), or ``at`` not a finite number > 0 (0
            gave NaN and numpy's divide-by-zero warning)."""
    r, q = _curve(rate, quality, "curve")
    x = np.log10(r)
    if isinstance(at, bool) or not (isinstance(at, (int, float, np.number)) and
                                    math.isfinite(at) and at > 0):
        raise ValueError(f"quality_at_rate: at must be a finite rate > 0, got {at!r:.40}")
    t = np.log10(float(at))
    if t < x.min() or t > x.max():
        return float("nan")
    return float(_Interp(x, q, method, "curve").f(t))
