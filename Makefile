# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
MAX_JOBS ?= 2
export MAX_JOBS

.PHONY: deps build demo test test-fast ctest check-cuda bench clean

deps:
	$(PYTHON) tools/install_deps.py

# Builds lightgcn_ext._C in place against the installed torch (incremental).
build: deps
	$(PYTHON) setup.py -q build_ext --inplace

# Trains on the embedded synthetic data (20 epochs: about 20 s on 2 idle cores) and
# prints recall@20 and ndcg@20 per evaluation beside a popularity baseline.
demo: build
	$(PYTHON) -m lightgcn_ext train --data synthetic --epochs 20 --out runs/demo

test: build
	$(PYTHON) -m pytest -q tests

test-fast: build
	$(PYTHON) -m pytest -q -m "not slow" tests

# The CMake build of the same sources and its C++ test.
ctest: deps
	bash tools/ctest.sh

# Compiles and links the CUDA kernels with nvcc against the CUDA torch that
# tools/torch_versions.env pins, in .venv-cuda; needs no GPU.
check-cuda:
	bash tools/check_cuda.sh

bench: build
	$(PYTHON) -m bench.bench_propagate

clean:
	rm -rf build lightgcn_ext/_C*.so *.egg-info
