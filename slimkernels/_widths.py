"""Checks of the widths (active channel counts) the layers, the entropy models and the codec
take: an int (or a numpy / 0-dim integer tensor index), never a float or string rounded to one."""
import operator
from typing import Iterable, List, Optional


def as_width(width, where: str) -> int:
    """``width`` as an int: any integer type (``operator.index``: int, numpy integers, 0-dim
    integer tensors); ValueError naming ``where`` for a float, str, bool or anything else (a
    float width used to be truncated silently: 96.5 ran as 96)."""
    if isinstance(width, bool):
        raise ValueError(f"{where}: width must be an int, got {width!r}")
    try:
        return operator.index(width)
    except TypeError:
        raise ValueError(f"{where}: width must be an int, got {width!r} "
                         f"({type(width).__name__})") from None


def width_list(widths: Iterable, where: str, full: Optional[int] = None) -> List[int]:
    """``widths`` as a non-empty list of ints (each :func:`as_width`), in their order; with
    ``full``, each in ``1..full``. ValueError naming ``where`` otherwise."""
    try:
        out = [as_width(w, where) for w in widths]
    except TypeError:
        raise ValueError(f"{where}: widths must be a sequence of ints, got {widths!r}") from None
    if not out:
        raise ValueError(f"{where}: widths must not be empty")
    if full is not None:
        bad = [w for w in out if not 1 <= w <= full]
        if bad:
            raise ValueError(f"{where}: widths {bad} are outside 1..{full} (the layer's output "
                             f"channels)")
    return out
