"""Names a package imports on first use (PEP 562), so that importing it stays light."""
from __future__ import annotations

import importlib
from typing import Callable, Dict, Optional, Tuple


def lazy_names(package: str, names: Dict[str, Optional[str]],
               namespace: dict) -> Tuple[Callable[[str], object], Callable[[], list]]:
    """``(__getattr__, __dir__)`` for the package ``package`` (its ``__name__``).

    Args:
        names: public name -> the submodule (relative, without the dot) that defines it, or None
            for the submodule of that name itself.
        namespace: the package's ``globals()`` (``__dir__`` lists them with ``names``).
    """
    def __getattr__(name: str):
        if name in names:
            where = names[name]
            module = importlib.import_module(f".{where or name}", package)
            return module if where is None else getattr(module, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
