# The one entry point for building, testing and benchmarking (`make help`).
# Everything builds through tools/build.sh, in place, against the torch of $(PYTHON).
PYTHON ?= python3
MAX_JOBS ?= 2
export MAX_JOBS
# Where `make demo` writes its run (results.json, curve.png, checkpoint.pt).
DEMO_OUT ?= runs/demo
# Extra arguments for the bench-* targets, e.g. `make bench-train ARGS=--quick`.
ARGS ?=

.PHONY: help deps build install demo test test-fast ctest check-cuda gpu-check \
	bench-propagate bench-model bench-train bench-evaluate bench-recommend bench-scaling \
	bench-cuda bench-distributed clean

help:
	@echo "make demo            build, then train on the embedded synthetic data (DEMO_OUT=$(DEMO_OUT))"
	@echo "make test            build, then the whole test suite; test-fast: without the slow tests"
	@echo "make install         editable install: import lightgcn_ext anywhere, the lightgcn-ext command"
	@echo "make ctest           the CMake build of the same sources and its C++ tests"
	@echo "make check-cuda      compile and link the CUDA kernels with nvcc (no GPU needed)"
	@echo "make gpu-check       on a GPU machine: build with CUDA, CUDA tests, sanitizer, GPU benchmarks"
	@echo "make bench-propagate | bench-model | bench-train | bench-evaluate | bench-recommend"
	@echo "     | bench-scaling | bench-cuda | bench-distributed"
	@echo "                     the benchmarks (ARGS=--quick for a smoke run); reports in bench/results/"

# Installs what the build and the tests need; an installed torch is always reused.
deps:
	$(PYTHON) tools/install_deps.py

# lightgcn_ext._C in place (incremental).
build: deps
	PYTHON=$(PYTHON) bash tools/build.sh

# An editable install into $(PYTHON)'s environment, reusing its torch (no build
# isolation, no dependencies fetched): `import lightgcn_ext` from any directory and
# the `lightgcn-ext` command. Not needed for the targets here, which run from the
# repository root.
install: deps
	$(PYTHON) -m pip install --disable-pip-version-check --no-build-isolation --no-deps -e .

# The main job: 20 epochs on the embedded synthetic data, recall@20 and ndcg@20 per
# evaluation beside a popularity baseline; then the command to try next on the run.
demo: build
	$(PYTHON) -m lightgcn_ext train --data synthetic --epochs 20 --out $(DEMO_OUT) --overwrite
	@$(PYTHON) tools/demo_next.py $(DEMO_OUT) $(PYTHON)

test: build
	$(PYTHON) -m pytest -q tests

test-fast: build
	$(PYTHON) -m pytest -q -m "not slow" tests

# The CMake build of the same sources and its C++ tests.
ctest: deps
	bash tools/ctest.sh

# Compiles and links the CUDA kernels with nvcc against a CUDA build of torch in
# .venv-cuda (tools/torch_versions.env); needs no GPU.
check-cuda:
	bash tools/check_cuda.sh

# On a GPU machine: logs and reports under ./gpu_out (OUT=... to change).
gpu-check:
	PYTHON=$(PYTHON) bash tools/gpu_check.sh

# Each benchmark: make bench-NAME runs python -m bench.bench_NAME $(ARGS).
bench-propagate bench-model bench-train bench-evaluate bench-recommend bench-scaling bench-cuda bench-distributed: bench-%: build
	$(PYTHON) -m bench.bench_$* $(ARGS)

clean:
	rm -rf build lightgcn_ext/_C*.so *.egg-info
