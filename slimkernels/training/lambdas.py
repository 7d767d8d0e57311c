"""Lambda scheduling (SlimCAE's training contribution), as a resumable state machine.

Lambdas use the 255^2 convention: loss_k = bpp_k + lambda_k * 255^2 * MSE_k.
"""
from __future__ import annotations

import math
import numbers
from typing import Dict, List, Optional, Sequence

from .._checks import is_int

# the official predefined lambdas (2048 ... 128 on the [0,1]-MSE scale) in the 255^2 convention
PREDEFINED_LAMBDAS = (0.0315, 0.0157, 0.00787, 0.00394, 0.00197)


def check_lambdas(lambdas, where: str, count: Optional[int] = None) -> List[float]:
    """``lambdas`` as a list of floats; ValueError naming ``where`` unless it is a sequence of
    finite numbers > 0 (a negative lambda rewards distortion; NaN or inf make the loss NaN),
    with ``count`` entries when given (one per width: paired with the widths by position, a
    missing one left its width out of the loss)."""
    if isinstance(lambdas, (str, bytes, dict)) or not hasattr(lambdas, "__iter__"):
        raise ValueError(f"{where}: lambdas must be a list of numbers (one per width), got "
                         f"{lambdas!r}")
    # (numpy scalars and 0-dim tensors as their Python numbers)
    lams = [v.item() if getattr(v, "ndim", None) == 0 and hasattr(v, "item") else v
            for v in lambdas]
    if any(isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 < v < math.inf
           for v in lams):
        raise ValueError(f"{where}: lambdas {lams} must be finite numbers > 0")
    if count is not None and len(lams) != count:
        raise ValueError(f"{where}: {len(lams)} lambdas for {count} widths: give one lambda "
                         f"per width")
    return [float(v) for v in lams]


def rd_slope(bpp: Sequence[float], psnr: Sequence[float], i: int) -> float:
    """Chord slope (dB per bpp) between widths ``i`` and ``i + 1`` (ValueError unless ``i`` is
    an int in ``0 .. K-2`` for ``K`` values: ``K-1`` was an IndexError, ``-1`` wrapped around
    to the last width silently)."""
    k = min(len(bpp), len(psnr))
    if not is_int(i) or not 0 <= i < k - 1:
        raise ValueError(f"rd_slope: i={i!r} must be a pair index, an int in 0..{k - 2} for {k} "
                         f"widths")
    db = float(bpp[i]) - float(bpp[i + 1])
    if abs(db) < 1e-9:
        db = 1e-9 if db >= 0 else -1e-9
    return (float(psnr[i]) - float(psnr[i + 1])) / db


class LambdaScheduler:
    """The search of the SlimCAE paper (Yang et al. 2021): for each pair (i, i+1), widest first,
    multiply the lambdas of all narrower widths by ``factor`` (in (0, 1); at most
    ``max_reductions`` >= 0 times) while the RD chord slope
    between widths i and i+1 keeps falling; the widest lambda never changes.

    Drive it with :meth:`observe` after each validation; it returns the lambdas to train with next
    (or None when the search is over). The whole state is in :meth:`state_dict`.
    """

    def __init__(self, lambdas: Sequence[float], factor: float = 0.8, max_reductions: int = 7):
        # (negative or NaN lambdas were taken: the search then scaled them)
        self.lambdas: List[float] = check_lambdas(lambdas, "LambdaScheduler")
        if len(self.lambdas) < 2:
            raise ValueError("lambda scheduling needs at least two widths")
        self.factor = _factor(factor)
        self.max_reductions = _max_reductions(max_reductions)
        self.i = 0
        self.m = 0
        self.s_ref: Optional[float] = None
        self.done = False
        self.history: List[Dict] = []

    def _reduce(self):
        for j in range(self.i + 1, len(self.lambdas)):
            self.lambdas[j] *= self.factor
        self.m += 1

    def observe(self, bpp: Sequence[float], psnr: Sequence[float]) -> Optional[List[float]]:
        """Feed per-width validation results (widest first); returns the new lambdas or None."""
        if self.done:
            return None
        K = len(self.lambdas)
        if not all(hasattr(v, "__len__") and not isinstance(v, str) for v in (bpp, psnr)):
            # (len() of a float: TypeError)
            raise ValueError(f"expected {K} bpp and psnr values (one per width, widest first), "
                             f"got {bpp!r} and {psnr!r}")
        if len(bpp) != K or len(psnr) != K:
            raise ValueError(f"expected {K} bpp and psnr values, got {len(bpp)} and {len(psnr)}")
        if not all(math.isfinite(float(v)) for v in (*bpp, *psnr)):
            # (a NaN slope never compares greater: the lambdas kept falling at every call)
            raise ValueError(f"validation results must be finite, got bpp {list(bpp)} and psnr "
                             f"{list(psnr)}")
        if self.max_reductions == 0:   # (no reduction allowed: the search has nothing to do)
            self.done = True
            self.history.append({"pair": self.i, "reductions": 0, "slope": None, "s_ref": None,
                                 "bpp": list(map(float, bpp)), "psnr": list(map(float, psnr)),
                                 "lambdas_before": list(self.lambdas), "action": "done"})
            return None
        s = rd_slope(bpp, psnr, self.i)
        event = {"pair": self.i, "reductions": self.m, "slope": s, "s_ref": self.s_ref,
                 "bpp": list(map(float, bpp)), "psnr": list(map(float, psnr)),
                 "lambdas_before": list(self.lambdas)}
        if self.s_ref is not None and (s > self.s_ref or self.m >= self.max_reductions):
            # past the tangent point (or out of reductions): go to the next pair
            self.i += 1
            self.m = 0
            if self.i >= K - 1:
                self.done = True
                event["action"] = "done"
                self.history.append(event)
                return None
            s = rd_slope(bpp, psnr, self.i)
        self.s_ref = s
        self._reduce()
        event["action"] = f"reduce narrower than width index {self.i}"
        event["lambdas_after"] = list(self.lambdas)
        self.history.append(event)
        return list(self.lambdas)

    def state_dict(self) -> Dict:
        """The whole state (copies: a later :meth:`observe` does not change it)."""
        return {"lambdas": list(self.lambdas), "factor": self.factor,
                "max_reductions": self.max_reductions, "i": self.i, "m": self.m,
                "s_ref": self.s_ref, "done": self.done, "history": list(self.history)}

    def load_state_dict(self, state: Dict):
        """Restore :meth:`state_dict` (all of it or some of its keys); ValueError for unknown
        keys, another width count or a value this scheduler cannot go on from (nothing is
        changed then). (Only the keys were checked: ``{"i": 5}`` failed at the next
        :meth:`observe` with an IndexError, ``{"factor": 5.0}`` made the "reduced" lambdas grow,
        ``{"lambdas": [-1, "x"]}`` was taken.)"""
        if not isinstance(state, dict):
            raise ValueError(f"not a LambdaScheduler state: a {type(state).__name__}, not a dict")
        unknown = sorted(set(state) - set(self.state_dict()))
        if unknown:
            raise ValueError(f"not a LambdaScheduler state: unknown keys {unknown}")
        if "lambdas" in state and (not hasattr(state["lambdas"], "__len__")
                                   or len(state["lambdas"]) != len(self.lambdas)):
            n = len(state["lambdas"]) if hasattr(state["lambdas"], "__len__") else "no list of"
            raise ValueError(f"the state has {n} lambdas, this scheduler {len(self.lambdas)}")
        new = {**self.state_dict(), **state}
        new["lambdas"] = check_lambdas(new["lambdas"], "LambdaScheduler state")
        new["factor"] = _factor(new["factor"], "the state's ")
        new["max_reductions"] = _max_reductions(new["max_reductions"], "the state's ")
        K = len(self.lambdas)
        if not isinstance(new["done"], bool):
            raise ValueError(f"the state's done {new['done']!r} must be True or False")
        # (pair K-1 exists only once the search is done: the last pair is K-2)
        if not is_int(new["i"]) or not 0 <= new["i"] <= (K - 1 if new["done"] else K - 2):
            raise ValueError(f"the state's pair index i {new['i']!r} must be an int in "
                             f"0..{K - 2} for {K} lambdas")
        if not is_int(new["m"]) or new["m"] < 0:
            raise ValueError(f"the state's reduction count m {new['m']!r} must be an int >= 0")
        s_ref = new["s_ref"]
        if s_ref is not None and (isinstance(s_ref, bool) or not isinstance(s_ref, numbers.Real)
                                  or not math.isfinite(s_ref)):
            raise ValueError(f"the state's reference slope s_ref {s_ref!r} must be a finite "
                             f"number or None")
        if not isinstance(new["history"], list):
            raise ValueError(f"the state's history must be a list, got "
                             f"{type(new['history']).__name__}")
        for k in ("i", "m"):
            new[k] = int(new[k])
        for k, v in new.items():
            setattr(self, k, list(v) if isinstance(v, list) else v)


def _factor(factor, where: str = "") -> float:
    """``factor`` as a float in (0, 1), else ValueError (0, negative, NaN or >= 1 made the
    lambdas 0, < 0, NaN or unchanged)."""
    try:
        f = float(factor)
    except (TypeError, ValueError):
        f = math.nan
    if isinstance(factor, bool) or not 0 < f < 1:
        raise ValueError(f"{where}factor must be in (0, 1), got {factor!r}")
    return f


def _max_reductions(n, where: str = "") -> int:
    """``n`` as an int >= 0 (an integer-valued float is taken), else ValueError (a str gave
    "'<' not supported")."""
    if isinstance(n, bool) or not isinstance(n, numbers.Real) or not math.isfinite(n) or \
            not float(n).is_integer() or n < 0:
        raise ValueError(f"{where}max_reductions must be an int >= 0, got {n!r}")
    return int(n)
