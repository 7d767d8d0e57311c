"""Load CompressAI's GDN / EntropyBottleneck source files without importing the compressai
package (whose __init__ pulls many dependencies). Returns None when compressai is absent."""
import importlib.machinery
import importlib.util
import os
import sys
import types


def load_compressai_module(relpath: str, name: str):
    pkg = sys.modules.get("compressai")
    if pkg is not None and getattr(pkg, "__path__", None):
        root = list(pkg.__path__)[0]
    else:
        spec = importlib.util.find_spec("compressai")
        if spec is None or not spec.submodule_search_locations:
            return None
        root = list(spec.submodule_search_locations)[0]
    for pkg in ("compressai", "compressai.ops", "compressai.layers"):
        if pkg not in sys.modules or not hasattr(sys.modules[pkg], "__path__"):
            m = types.ModuleType(pkg)
            m.__path__ = [os.path.join(root, *pkg.split(".")[1:])]
            # a real spec, so importlib.util.find_spec() keeps working for other code
            m.__spec__ = importlib.machinery.ModuleSpec(pkg, None, is_package=True)
            m.__spec__.submodule_search_locations = m.__path__
            sys.modules[pkg] = m
    for dep, rel in (("compressai.ops.bound_ops", "ops/bound_ops.py"),
                     ("compressai.ops.parametrizers", "ops/parametrizers.py")):
        if dep not in sys.modules:
            s = importlib.util.spec_from_file_location(dep, os.path.join(root, rel))
            mod = importlib.util.module_from_spec(s)
            sys.modules[dep] = mod
            s.loader.exec_module(mod)
    s = importlib.util.spec_from_file_location(name, os.path.join(root, relpath))
    mod = importlib.util.module_from_spec(s)
    sys.modules[name] = mod
    s.loader.exec_module(mod)
    return mod
