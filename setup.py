"""Build script: the package and its three pybind11 extensions from csrc/: the range coder
(``_coder``, required), the state-key walk (``_state_key``) and the CPU kernels
(``_cpu_kernels``), both optional."""
import os
import shutil
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _version():
    ns = {}
    with open(os.path.join(HERE, "slimkernels", "_version.py")) as f:
        exec(f.read(), ns)
    return ns["__version__"]


def _load_build_stamp():
    """slimkernels/_build_stamp.py, loaded by its path (importing the package needs torch)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "_slimkernels_build_stamp", os.path.join(HERE, "slimkernels", "_build_stamp.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_BUILDS = ("build_ext", "bdist_wheel", "develop", "install", "editable_wheel", "build")


def _ext_modules():
    if not any(a in sys.argv for a in _BUILDS):
        return []   # (sdist, egg_info, --version...: nothing is compiled, pybind11 not needed)
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:  # pragma: no cover - only without build isolation
        sys.exit("slimkernels: building needs pybind11 (pip install pybind11), "
                 "or install with pip, which reads it from pyproject.toml.")
    stamps = _load_build_stamp()
    files = stamps.extension_files(HERE)

    def ext(name, **kw):
        # the sources' stamp compiled in (SOURCE_STAMP: slimkernels/_build_stamp.py compares it
        # with the checkout's C++ when the package loads the extension); the headers as
        # dependencies: an edited header rebuilds the extensions that include it (setuptools
        # tracks only the listed sources otherwise)
        sources, headers = files[name]
        macro = ("SK_SOURCE_STAMP", '"%s"' % stamps.stamp(HERE, sources + headers))
        return Pybind11Extension("slimkernels." + name, sources, depends=headers,
                                 define_macros=[macro], cxx_std=17, **kw)
    args = ["-O3", "-std=c++17", "-fvisibility=hidden"]
    # -pthread: the coder's worker pool (glibc >= 2.34 links it anyway; older systems need it).
    # -fno-wrapv: Python's own CFLAGS carry -fwrapv, which made the encoder's loop ~4 % slower
    # (the coder has no signed overflow: the fuzz and random drivers run it under UBSan).
    return [ext("_coder", include_dirs=["csrc"],
                extra_compile_args=args + ["-pthread", "-fno-wrapv"],
                extra_link_args=["-pthread"]),
            # The module-tree state key of the weight caches (model_id). Optional: without it
            # slimkernels._state walks the tree in Python (same key semantics, ~3x slower).
            ext("_state_key", extra_compile_args=args, optional=True),
            # CPU kernels (AMX / AVX-512 / AVX2 convolutions and GDN, Winograd, batched GEMM,
            # latents, image I/O, the coder's OpenMP executor). Optional: if it fails to build (old
            # compiler or assembler, another ISA), the package installs without it and every op
            # falls back to its PyTorch path.
            # -fopenmp: its threads are torch's (same libgomp.so.1 once torch is loaded).
            ext("_cpu_kernels", include_dirs=[os.path.join("csrc", "cpu")],
                extra_compile_args=args + ["-pthread", "-fopenmp"],
                extra_link_args=["-pthread", "-fopenmp"], optional=True)]


def _check_compiler():
    cxx = os.environ.get("CXX", "").strip()
    if cxx:   # (the build runs $CXX itself: g++ on the PATH does not help a wrong one)
        if shutil.which(cxx.split()[0]) is None:
            sys.exit(f"slimkernels: $CXX is {cxx!r}, which is not found: set CXX to a C++17 "
                     f"compiler (or unset it to use c++ / g++ / clang++) and run the install "
                     f"again.")
        return
    if shutil.which("c++") is None and shutil.which("g++") is None \
            and shutil.which("clang++") is None:
        sys.exit("slimkernels: no C++ compiler found (looked for $CXX, c++, g++, clang++). "
                 "The entropy coder is a C++17 extension: install one "
                 "(Debian/Ubuntu: apt-get install g++) and run the install again.")


if any(a in sys.argv for a in _BUILDS):
    _check_compiler()

setup(
    name="slimkernels",
    version=_version(),
    description="Slimmable compressive autoencoders on fast Triton kernels with a C++ range coder",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    packages=find_packages(include=["slimkernels", "slimkernels.*"]),
    package_data={"slimkernels": ["pretrained/*.pt", "pretrained/*.md", "pretrained/*.json",
                                  "assets/*.png", "assets/*.md"]},
    ext_modules=_ext_modules(),
    install_requires=[
        "torch>=2.4",
        "numpy",
        "pillow",
        "triton; platform_system == 'Linux'",
        "tqdm",
        # the evaluation (slimkernels eval): BD-rate interpolation and the RD plots
        "scipy",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "pytest-benchmark", "hypothesis", "scipy"],
        "bench": ["matplotlib", "pytest-benchmark", "scipy"],
        "docs": ["pdoc"],
    },
    entry_points={"console_scripts": ["slimkernels=slimkernels.cli:main"]},
    zip_safe=False,
)
