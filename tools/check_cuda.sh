#!/usr/bin/env bash
# CUDA compile check for a machine without a GPU.
#
# Builds lightgcn_ext with its CUDA kernels (tools/build.sh with WITH_CUDA=1)
# against a CUDA build of torch and the machine's nvcc, checks that the CUDA
# kernels are registered, and runs the test suite with that build (CUDA tests
# skip: there is no device). Nothing CUDA runs here; this proves the .cu files
# compile and link.
#
# The CUDA torch comes from tools/torch_versions.env (CUDA_TORCH_VERSION, which
# the environment variable of that name overrides), installed with pip into a
# venv: on the development machine pip finds it on local disk; elsewhere it is
# a download of several GB.
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
PINNED_CUDA_TORCH_VERSION="$(. "$ROOT/tools/torch_versions.env" && echo "$CUDA_TORCH_VERSION")"
CUDA_TORCH_VERSION="${CUDA_TORCH_VERSION:-$PINNED_CUDA_TORCH_VERSION}"

log() { printf '[check_cuda] %s\n' "$*"; }

# 1. The venv, with the CUDA build of torch.
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" - "$CUDA_TORCH_VERSION" <<'EOF' 2>/dev/null; then
import sys
import torch, numpy, pytest, hypothesis, ninja, setuptools, wheel, tqdm, matplotlib, pyarrow  # noqa: F401
sys.exit(torch.__version__.split("+")[0] != sys.argv[1] or torch.version.cuda is None)
EOF
  log "installing torch==$CUDA_TORCH_VERSION and the build/test tools into $VENV"
  "$PY" -m pip install -q "torch==$CUDA_TORCH_VERSION" numpy pytest hypothesis ninja setuptools wheel \
    tqdm matplotlib pyarrow
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

# 3. The build (tools/build.sh, the one build command), and the CUDA kernels
#    registered.
. "$SRC/tools/cuda_env.sh"  # exported: step 4's wheel build uses it too
log "building"
start=$(date +%s)
WITH_CUDA=1 PYTHON="$PY" bash "$SRC/tools/build.sh" --build-temp "$BUILD_TEMP"
log "build took $(( $(date +%s) - start )) s"

# 4. The test suite with this build. tests/test_build.py is left out: it checks
#    the CMake build, which `make ctest` and `make test` check against the CPU
#    torch; configuring CMake against this CUDA torch needs CUDA runtime
#    libraries (libnvrtc.so) that a compile-only toolkit lacks.
log "running the tests with the CUDA build"
(cd "$SRC" && "$PY" -m pytest -q tests --ignore=tests/test_build.py)
log "OK"
