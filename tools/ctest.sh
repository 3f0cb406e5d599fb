#!/usr/bin/env bash
# Configures, builds and runs the C++ tests of the ops (CMakeLists.txt) with ctest: the CPU
# op's test, and the CUDA kernel source run on CPU threads by an emulation of the CUDA
# execution model, plain and under AddressSanitizer and ThreadSanitizer.
#
#   tools/ctest.sh                          # Release build in build/cmake
#   BUILD_TYPE=Debug tools/ctest.sh         # the debug flags (setup.py's DEBUG=1)
#   tools/ctest.sh -DLIGHTGCN_EXT_WITH_CUDA=ON   # extra arguments go to the configure step
#
# Environment:
#   PYTHON      the Python whose torch to build against (default: python3)
#   BUILD_DIR   the build folder (default: build/cmake in the repository)
#   BUILD_TYPE  Release (default) or Debug
#   JOBS        parallel compile jobs and tests (default: 2)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$(command -v "${PYTHON:-python3}")"
build_dir="${BUILD_DIR:-$root/build/cmake}"

torch_prefix="$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)')"

cmake -S "$root" -B "$build_dir" \
  -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" \
  -DCMAKE_PREFIX_PATH="$torch_prefix" \
  -DLIGHTGCN_EXT_PYTHON="$python" \
  "$@"
cmake --build "$build_dir" -j "${JOBS:-2}"
# Each emulated test runs one thread at a time: two tests at once keep two cores busy.
ctest --test-dir "$build_dir" --output-on-failure -j "${JOBS:-2}"
