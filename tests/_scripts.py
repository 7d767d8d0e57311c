"""Load a program of the repository (docs/, python/) that is not in a package, by its path."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_file(relpath: str, name: str):
    """The module at ``ROOT/relpath`` (e.g. ``"python/export_model.py"``), executed under
    ``name`` (not ``__main__``: its command line does not run)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relpath))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
