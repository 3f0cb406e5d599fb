#!/usr/bin/env bash
# The one build of lightgcn_ext._C: in place, against the torch of $PYTHON
# (never a second torch). `make build`, tools/check_cuda.sh and
# tools/gpu_check.sh all build through this script.
#
#     bash tools/build.sh                    # CPU kernels, plus CUDA when torch has CUDA and nvcc is found
#     WITH_CUDA=1 bash tools/build.sh        # the CUDA kernels too, or fail; then checks they registered
#     bash tools/build.sh --build-temp DIR   # extra arguments go to `setup.py build_ext`
#
# Environment:
#   PYTHON                 the interpreter whose torch to build against (default python3)
#   MAX_JOBS               parallel compile jobs (default 2)
#   WITH_CUDA=1            the environment of tools/cuda_env.sh (FORCE_CUDA=1, CUDA_HOME,
#                          TORCH_CUDA_ARCH_LIST)
# It builds in the repository that holds this script (a copy of the sources
# builds the copy).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
export MAX_JOBS="${MAX_JOBS:-2}"

if [ "${WITH_CUDA:-0}" != 0 ]; then
  . tools/cuda_env.sh
  echo "[build] CUDA_HOME=$CUDA_HOME TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"
fi

"$PY" setup.py -q build_ext --inplace "$@"

if [ "${WITH_CUDA:-0}" != 0 ]; then
  # The built module itself, not the package: this checks the build, not
  # lightgcn_ext/__init__.py. Loading the library registers the ops.
  "$PY" - <<'PYEOF'
import glob, importlib.util, torch

path = glob.glob("lightgcn_ext/_C*.so")[0]
spec = importlib.util.spec_from_file_location("lightgcn_ext._C", path)
ext = importlib.util.module_from_spec(spec)
assert ext.with_cuda == 1, f"{path} was built without CUDA"
for op in ("propagate", "layer_dots", "propagate_rows", "propagate_rows_backward"):
    for key in ("CPU", "CUDA"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lightgcn_ext::{op}", key), \
            f"lightgcn_ext::{op}: no {key} kernel"
print(f"[build] {path}: torch {ext.torch_version}, CPU and CUDA kernels registered")
PYEOF
fi
