# Two commands do everything on a fresh Linux machine with Python 3.10+:
#   make demo   - set up .venv, build, compress/decompress the bundled sample at every width
#   make test   - set up .venv, build, run the test suite
#   (make test-all also runs the tests marked slow)
PYTHON ?= python3
VENV   ?= .venv
# where pip takes torch from: this project's machines hold a CPU wheel of torch 2.13.0 on local
# disk that pip finds by its own settings; elsewhere PyPI's torch is a CUDA build of several GB,
# and TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" takes the CPU one
TORCH_PIP_ARGS ?=
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.slimkernels-installed
# test processes (pytest-xdist; whole files per process): most tests run one thread (the Triton
# interpreter, compiles, subprocesses), so two halve the run on a 2-core machine (Zen 3 EPYC:
# 20:07 -> 11:06 min); TEST_WORKERS=0 runs them in this process
TEST_WORKERS ?= 2
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.hpp csrc/*/*.cpp csrc/*/*.hpp)

.PHONY: install demo test test-all bench docs clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) $(SOURCES)
	$(PY) -m pip install -q --upgrade pip
	@# torch when none is installed, pinned (an unpinned torch is a CUDA build): see TORCH_PIP_ARGS
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PIP_ARGS) torch==2.13.0
	$(PY) -m pip install -q setuptools wheel pybind11
	$(PY) -m pip install -q --no-build-isolation -e ".[test,bench,docs]"
	@# references for tests and benchmarks (--no-deps: only their own files are used): CompressAI's
	@# layers and coder, the bjontegaard package (BD-rate cross-check), pytorch-msssim (MS-SSIM cross-check)
	$(PY) -m pip install -q --no-deps compressai==1.2.8 bjontegaard==1.3.0 pytorch-msssim==1.0.0
	$(PY) -c "import slimkernels._coder"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) python/demo.py

test: install
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile

test-all: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# bench/report.py: tables + plots in bench/results/<machine>/. A folder that already holds a
# report (the tracked numbers the README quotes) is refused: make bench BENCH_ARGS=--force to
# replace it, BENCH_ARGS="--out DIR" to write elsewhere (any report.py options: --threads 2 ...)
BENCH_ARGS ?=
bench: install
	$(PY) bench/report.py $(BENCH_ARGS)

docs: install
	$(PY) docs/build_api.py

clean:
	rm -rf build *.egg-info slimkernels/*.so $(VENV)
