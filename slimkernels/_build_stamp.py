"""Which C++ files each compiled extension is built from, and their stamp.

setup.py compiles each extension's stamp (:func:`stamp` of its :func:`extension_files`) into it
as ``SOURCE_STAMP``. In a source checkout (the package beside ``setup.py`` and ``csrc/``, the
extension built in place) the package compares that with the sources there when it first loads
the extension (:func:`stale`): a build older than the C++ beside it (a ``git pull`` or an edit
without a rebuild) is then named, with the command that rebuilds it, instead of failing later
with a ``TypeError`` from a changed binding or running old kernels. Installed packages (no
``csrc/`` beside them) are not checked.

Standard library only: setup.py loads this file by its path, before torch or the package.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from typing import Dict, List, Optional, Tuple

#: Set to 0 / false / no / off to skip the check (e.g. while editing comments in csrc/).
CHECK_ENV = "SLIMKERNELS_BUILD_CHECK"

REBUILD = "python setup.py build_ext --inplace` (or `make install`)"


def _listed(root: str, folder: str, suffix: str) -> List[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(os.path.join(root, folder))
                  if f.endswith(suffix))


def extension_files(root: str) -> Dict[str, Tuple[List[str], List[str]]]:
    """``{extension name: (sources, headers)}``, paths relative to ``root`` (the checkout):
    what setup.py compiles (sources) and what they include (headers: a change rebuilds the
    extension). OSError when ``root`` has no ``csrc/``."""
    cpu = os.path.join("csrc", "cpu")
    return {
        "_coder": (_listed(root, "csrc", ".cpp"), _listed(root, "csrc", ".hpp")),
        "_state_key": ([os.path.join("csrc", "py", "state_key.cpp")], []),
        # (coder_executor.cpp includes the coder's header)
        "_cpu_kernels": (_listed(root, cpu, ".cpp"),
                         _listed(root, cpu, ".hpp") + [os.path.join("csrc", "range_coder.hpp")]),
    }


def stamp(root: str, files: List[str]) -> str:
    """16 hex digits of the SHA-256 of ``files`` (paths relative to ``root``, in the given
    order): each one's path with ``/`` separators, then its bytes."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.replace(os.sep, "/").encode() + b"\0")
        with open(os.path.join(root, f), "rb") as fh:
            h.update(fh.read())
        h.update(b"\0")
    return h.hexdigest()[:16]


def extension_stamp(root: str, name: str) -> str:
    """:func:`stamp` of extension ``name``'s sources and headers under ``root``."""
    sources, headers = extension_files(root)[name]
    return stamp(root, sources + headers)


def _checkout_of(module) -> Optional[str]:
    """The source checkout ``module`` (a compiled extension of the package) was built in place
    in: the package folder's parent when it holds ``setup.py`` and ``csrc/``; else None."""
    path = getattr(module, "__file__", None)
    if not path:
        return None
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if os.path.isfile(os.path.join(root, "setup.py")) and \
            os.path.isdir(os.path.join(root, "csrc")):
        return root
    return None


def stale(module, name: str) -> Optional[str]:
    """None when extension ``module`` (``slimkernels.<name>``) matches the C++ sources of the
    checkout it was built in (or is not in one, or the check is switched off by
    ``SLIMKERNELS_BUILD_CHECK=0``); else the message that names the stale build and how to
    rebuild it."""
    if os.environ.get(CHECK_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return None
    root = _checkout_of(module)
    if root is None:
        return None
    try:
        want = extension_stamp(root, name)
    except OSError:   # (a checkout without some of the files: nothing to compare with)
        return None
    have = getattr(module, "SOURCE_STAMP", None)
    if have == want:
        return None
    built = f"from sources stamped {have}" if have else "before builds were stamped"
    return (f"slimkernels.{name} ({module.__file__}) was built {built}, but the C++ sources in "
            f"{os.path.join(root, 'csrc')} are now {want} (pulled or edited without a rebuild): "
            f"rebuild it with `{REBUILD} in {root}; or set {CHECK_ENV}=0 to use it as it is")


def optional(module, name: str, without: str):
    """``module`` (the optional extension ``slimkernels.<name>``), or None after a
    RuntimeWarning when it is :func:`stale`: the package then runs as if it were not built
    (``without``: what that means, for the warning)."""
    msg = stale(module, name)
    if msg is None:
        return module
    warnings.warn(f"{msg}. Until then {without}.", RuntimeWarning, stacklevel=3)
    return None
