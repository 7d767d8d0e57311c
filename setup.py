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


_BUILDS = ("build_ext", "bdist_wheel", "develop", "install", "editable_wheel", "build")


def _ext_modules():
    if not any(a in sys.argv for a in _BUILDS):
        return []   # (sdist, egg_info, --version...: nothing is compiled, pybind11 not needed)
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:  # pragma: no cover - only without build isolation
        sys.exit("slimkernels: building needs pybind11 (pip install pybind11), "
                 "or install with pip, which reads it from pyproject.toml.")
    sources = sorted(os.path.join("csrc", f) for f in os.listdir(os.path.join(HERE, "csrc"))
                     if f.endswith(".cpp"))
    args = ["-O3", "-std=c++17", "-fvisibility=hidden"]
    cpu_dir = os.path.join("csrc", "cpu")
    cpu_sources = sorted(os.path.join(cpu_dir, f) for f in os.listdir(os.path.join(HERE, cpu_dir))
                         if f.endswith(".cpp"))
    # headers as dependencies: an edited header rebuilds the extensions that include it
    # (setuptools tracks only the listed sources otherwise)
    def headers(d):
        return sorted(os.path.join(d, f) for f in os.listdir(os.path.join(HERE, d))
                      if f.endswith(".hpp"))
    # -pthread: the coder's worker pool (glibc >= 2.34 links it anyway; older systems need it).
    # -fno-wrapv: Python's own CFLAGS carry -fwrapv, which made the encoder's loop ~4 % slower
    # (the coder has no signed overflow: the fuzz and random drivers run it under UBSan).
    return [Pybind11Extension("slimkernels._coder", sources, include_dirs=["csrc"],
                              depends=headers("csrc"),
                              extra_compile_args=args + ["-pthread", "-fno-wrapv"],
                              extra_link_args=["-pthread"], cxx_std=17),
            # The module-tree state key of the weight caches (model_id). Optional: without it
            # slimkernels._state walks the tree in Python (same key semantics, ~3x slower).
            Pybind11Extension("slimkernels._state_key",
                              [os.path.join("csrc", "py", "state_key.cpp")],
                              extra_compile_args=args, cxx_std=17, optional=True),
            # CPU kernels (AMX / AVX-512 / AVX2 convolutions and GDN, Winograd, batched GEMM,
            # latents, image I/O, the coder's OpenMP executor). Optional: if it fails to build (old
            # compiler or assembler, another ISA), the package installs without it and every op
            # falls back to its PyTorch path.
            # -fopenmp: its threads are torch's (same libgomp.so.1 once torch is loaded).
            Pybind11Extension("slimkernels._cpu_kernels", cpu_sources, include_dirs=[cpu_dir],
                              depends=headers(cpu_dir),
                              extra_compile_args=args + ["-pthread", "-fopenmp"],
                              extra_link_args=["-pthread", "-fopenmp"], cxx_std=17,
                              optional=True)]


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
        "test": ["pytest", "pytest-benchmark", "hypothesis", "scipy"],
        "bench": ["matplotlib", "pytest-benchmark", "scipy"],
        "docs": ["pdoc"],
    },
    entry_points={"console_scripts": ["slimkernels=slimkernels.cli:main"]},
    zip_safe=False,
)
