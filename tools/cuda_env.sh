# The environment of a build with the CUDA kernels, defined once. Sourced by
# tools/build.sh (WITH_CUDA=1), and by tools/check_cuda.sh so that the tests
# that build the package again (a wheel) build it the same way.
#   CUDA_HOME              default: the toolkit of the nvcc on PATH, else /usr/local/cuda
#   TORCH_CUDA_ARCH_LIST   default: 9.0 (H100/H200)
#   FORCE_CUDA=1           build the CUDA kernels even where torch cannot see a GPU
if [ -z "${CUDA_HOME:-}" ]; then
  CUDA_HOME=/usr/local/cuda
  if command -v nvcc >/dev/null; then
    # The nvcc on PATH may be a wrapper script outside the toolkit: only a
    # toolkit's root holds include/cuda.h.
    toolkit="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
    if [ -f "$toolkit/include/cuda.h" ]; then CUDA_HOME="$toolkit"; fi
  fi
fi
export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH" FORCE_CUDA=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
