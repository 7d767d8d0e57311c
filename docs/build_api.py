#!/usr/bin/env python
"""Build the HTML API reference of slimkernels from its docstrings with pdoc.

    python docs/build_api.py                      # -> docs/_build/api/index.html
    python docs/build_api.py --out /tmp/api slimkernels.nn slimkernels.codec

Needs ``pdoc`` (``pip install -e .[docs]`` or ``pip install pdoc``); works offline. Docstrings are
read as Google style (``Args:``, ``Returns:``, ``Raises:``) with reStructuredText markup.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "_build" / "api"


def public_modules(package: str = "slimkernels") -> List[str]:
    """``package`` and every importable submodule with no ``_``-prefixed part, in import order.

    pdoc documents the submodules of a package without ``__all__`` by itself; those are left
    out here so no page is generated twice.
    """
    pkg = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(pkg.__path__, package + "."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts):
            continue
        parent = importlib.import_module(".".join(parts[:-1]))
        if parent.__name__ == package or hasattr(parent, "__all__"):
            names.append(info.name)
    return names


def build(out: Path = DEFAULT_OUT, modules: Optional[Sequence[str]] = None) -> Path:
    """Render the HTML reference of ``modules`` (default: :func:`public_modules`) into ``out``.

    Returns:
        the path of ``index.html``.

    Raises:
        ImportError: pdoc is not installed (the message says how to install it).
    """
    try:
        import pdoc
        import pdoc.render
    except ImportError as e:
        raise ImportError("building the API reference needs pdoc: pip install pdoc "
                          "(or pip install -e '.[docs]')") from e
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    mods = list(modules) if modules else public_modules()
    pdoc.render.configure(docformat="google", show_source=True,
                          footer_text="slimkernels API reference")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # a module reached both by name and through its package is rendered once: fine
        warnings.filterwarnings("ignore", message="The module specification")
        pdoc.pdoc(*mods, output_directory=out)
    return out / "index.html"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("modules", nargs="*", help="modules to document (default: all public ones)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder")
    args = p.parse_args(argv)
    index = build(Path(args.out), args.modules or None)
    n = sum(1 for _ in Path(args.out).rglob("*.html"))
    print(f"wrote {n} pages; open {os.path.abspath(index)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
