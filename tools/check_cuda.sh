#!/usr/bin/env bash
# CUDA compile check for a machine without a GPU.
#
# Builds lightgcn_ext with its CUDA kernels against the CUDA 13.0 build of torch
# that tools/torch_versions.env pins and the machine's nvcc, imports the result,
# checks that the CUDA kernels are registered, and runs the test suite with that
# build (CUDA tests skip: there is no device). Nothing CUDA runs here; this
# proves the .cu files compile and link.
#
# It never touches the CPU build used by the normal test run: the sources are
# copied to build/cuda-check-src and built there (objects in build/cuda-check),
# with the venv .venv-cuda (~5.5 GB, ~2 min to install the first time).
# Safe to run again: every step is skipped or incremental when already done.
#
#     bash tools/check_cuda.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-cuda"
SRC="$ROOT/build/cuda-check-src"
BUILD_TEMP="$ROOT/build/cuda-check"
. "$ROOT/tools/torch_versions.env"  # CUDA_TORCH_VERSION

log() { printf '[check_cuda] %s\n' "$*"; }

# 1. The venv, with the CUDA build of torch.
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" - "$CUDA_TORCH_VERSION" <<'EOF' 2>/dev/null; then
import sys
import torch, numpy, pytest, hypothesis, ninja, setuptools, wheel, tqdm, matplotlib  # noqa: F401
sys.exit(torch.__version__.split("+")[0] != sys.argv[1] or torch.version.cuda is None)
EOF
  log "installing torch==$CUDA_TORCH_VERSION and the build/test tools into $VENV"
  "$PY" -m pip install -q "torch==$CUDA_TORCH_VERSION" numpy pytest hypothesis ninja setuptools wheel \
    tqdm matplotlib
fi
if ! "$PY" -c "import torch_geometric" 2>/dev/null; then
  "$PY" -m pip install -q torch_geometric || log "torch_geometric not installed (its tests will skip)"
fi
"$PY" -c "import torch; print('[check_cuda] torch', torch.__version__, 'cuda', torch.version.cuda)"

# 2. A copy of the sources (tracked and untracked-but-not-ignored files, mtimes
#    kept so that ninja rebuilds only what changed).
log "copying sources to $SRC"
rm -rf "$SRC"
mkdir -p "$SRC" "$BUILD_TEMP"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard) |
  "$PY" -c '
import os, shutil, sys
root, dst = sys.argv[1], sys.argv[2]
for rel in sys.stdin.buffer.read().decode().split("\0"):
    src = os.path.join(root, rel)
    if rel and os.path.isfile(src):  # skips files deleted but still tracked
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dst, rel))
' "$ROOT" "$SRC"

# 3. The build.
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export PATH="$CUDA_HOME/bin:$PATH"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export FORCE_CUDA=1
export MAX_JOBS="${MAX_JOBS:-2}"
log "building (CUDA_HOME=$CUDA_HOME TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS)"
start=$(date +%s)
(cd "$SRC" && "$PY" setup.py -q build_ext --inplace --build-temp "$BUILD_TEMP")
log "build took $(( $(date +%s) - start )) s"

# 4. The import, and the CUDA kernels registered.
(cd "$SRC" && "$PY" - <<'EOF')
import glob, importlib.util, torch

# The module itself, not the package: this checks the build, not lightgcn_ext/__init__.py.
path = glob.glob("lightgcn_ext/_C*.so")[0]
spec = importlib.util.spec_from_file_location("lightgcn_ext._C", path)
ext = importlib.util.module_from_spec(spec)  # loads the library: registers the ops

assert ext.with_cuda == 1, f"built without CUDA: with_cuda = {ext.with_cuda}"
for op in ("propagate", "layer_dots"):
    name = f"lightgcn_ext::{op}"
    for key in ("CPU", "CUDA"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, key), f"{name}: no {key} kernel"
print(f"[check_cuda] import OK: {path}, torch {ext.torch_version}, with_cuda = 1, "
      "CPU and CUDA kernels registered")
EOF

# 5. The test suite with this build. tests/test_build.py is left out: it checks
#    the CMake build, which `make ctest` and `make test` check against the CPU
#    torch; configuring CMake against this CUDA torch needs CUDA runtime
#    libraries (libnvrtc.so) that a compile-only toolkit lacks.
log "running the tests with the CUDA build"
(cd "$SRC" && "$PY" -m pytest -q tests --ignore=tests/test_build.py)
log "OK"
