"""An argparse action for lists given with spaces, commas or both (``--widths 192 48``,
``--widths 192,48``), shared by the command lines (eval, train)."""
from __future__ import annotations

import argparse
from typing import Callable, Type


def split_list(kind: Callable) -> Type[argparse.Action]:
    """An ``argparse.Action`` for ``nargs="+"`` that splits each token on commas and converts
    every part with ``kind`` (``int``, ``float``), flattened into one list; a part ``kind``
    refuses is the parser's usage error naming the option and the part."""
    name = getattr(kind, "__name__", "value")

    class SplitList(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            out = []
            for tok in values:
                for part in str(tok).split(","):
                    try:
                        out.append(kind(part))
                    except (TypeError, ValueError):
                        parser.error(f"argument {option_string}: invalid {name} value: {part!r} "
                                     f"(give values separated by spaces or commas, e.g. 192 48 "
                                     f"or 192,48)")
            setattr(namespace, self.dest, out)
    return SplitList
