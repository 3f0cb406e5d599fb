// The emulator of cuda_emulation.h itself: its shuffles against the values
// CUDA defines, and the failures it must report instead of hanging or passing
// quietly. Each failure mode is its own ctest test (a deliberately broken
// kernel, run as `test_cuda_emulator MODE`), which passes when the output
// names the kernel, the block and what went wrong.
//
//   test_cuda_emulator                  shuffles, barriers and indices (must pass)
//   test_cuda_emulator divergent_sync   a __syncthreads that half the block skips: deadlock
//   test_cuda_emulator missing_lane     a shuffle that one lane of its mask skips: deadlock
//   test_cuda_emulator outside_mask     a shuffle that reads a lane outside its mask
//   test_cuda_emulator race             shared memory read without a barrier (TSan build: a race)
#include "cuda_emulation.h"

#include <cstdio>
#include <string>
#include <vector>

namespace {

constexpr int kBlock = 64;
int failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok && failures++ < 20) std::printf("FAIL: %s\n", what.c_str());
}

// Each thread writes what its shuffles return to out[(blockIdx.x * kBlock + t) * 8 + k].
__global__ void shuffles(int* out) {
  const int t = threadIdx.x;
  int* o = out + (blockIdx.x * blockDim.x + t) * 8;
  o[0] = __shfl_sync(0xffffffffu, t, 3);              // lane 3 of the warp
  o[1] = __shfl_sync(0xffffffffu, t, 5, 8);           // lane 5 of the segment of 8
  o[2] = __shfl_down_sync(0xffffffffu, t, 4);         // t + 4, own value past the end
  o[3] = __shfl_down_sync(0xffffffffu, t, 1, 4);      // within segments of 4
  o[4] = __shfl_xor_sync(0xffffffffu, t, 1);          // the neighbour
  // Groups of 4 lanes with their own masks, as the sweeps use them.
  const unsigned group = 0xfu << ((t % 32) & ~3);
  o[5] = __shfl_sync(group, t * 10, 2, 4);
  __shared__ int sum[kBlock];
  sum[t] = t;
  __syncthreads();
  int total = 0;
  for (int u = 0; u < kBlock; ++u) total += sum[u];
  o[6] = total;
  __syncthreads();
  o[7] = static_cast<int>(gridDim.x * 1000 + blockIdx.x);
}

__global__ void divergent_sync() {
  if (threadIdx.x < kBlock / 2) __syncthreads();
}

__global__ void missing_lane() {
  if (threadIdx.x != 7) (void)__shfl_sync(0xffffffffu, 1, 0);
}

__global__ void outside_mask() { (void)__shfl_sync(0x0000ffffu, 1, 20); }

__global__ void race(int* out) {
  __shared__ int value[kBlock];
  value[threadIdx.x] = static_cast<int>(threadIdx.x);
  // Missing: __syncthreads();
  out[threadIdx.x] = value[(threadIdx.x + 1) % kBlock];
}

int semantics() {
  const int grid = 3;
  std::vector<int> out(grid * kBlock * 8, -1);
  cuda_emulation::launch("shuffles", grid, kBlock, [&] { shuffles(out.data()); });
  for (int b = 0; b < grid; ++b) {
    for (int t = 0; t < kBlock; ++t) {
      const int* o = out.data() + (b * kBlock + t) * 8;
      const int warp = t & ~31, lane = t & 31;
      const std::string at = "block " + std::to_string(b) + " thread " + std::to_string(t);
      check(o[0] == warp + 3, at + ": __shfl_sync(lane 3)");
      check(o[1] == (t & ~7) + 5, at + ": __shfl_sync(lane 5, width 8)");
      check(o[2] == (lane + 4 < 32 ? t + 4 : t), at + ": __shfl_down_sync(4)");
      check(o[3] == ((t & 3) + 1 < 4 ? t + 1 : t), at + ": __shfl_down_sync(1, width 4)");
      check(o[4] == (t ^ 1), at + ": __shfl_xor_sync(1)");
      check(o[5] == ((t & ~3) + 2) * 10, at + ": __shfl_sync in a group of 4");
      check(o[6] == kBlock * (kBlock - 1) / 2, at + ": __shared__ sum after __syncthreads");
      check(o[7] == grid * 1000 + b, at + ": gridDim / blockIdx");
    }
  }
  if (failures == 0) std::printf("test_cuda_emulator: shuffles, barriers and indices as on a GPU\n");
  return failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode.empty()) return semantics();
  if (mode == "divergent_sync") {
    cuda_emulation::launch("divergent_sync", 2, kBlock, [] { divergent_sync(); });
  } else if (mode == "missing_lane") {
    cuda_emulation::launch("missing_lane", 2, kBlock, [] { missing_lane(); });
  } else if (mode == "outside_mask") {
    cuda_emulation::launch("outside_mask", 1, kBlock, [] { outside_mask(); });
  } else if (mode == "race") {
    std::vector<int> out(kBlock);
    cuda_emulation::launch("race", 1, kBlock, [&] { race(out.data()); });
  } else {
    std::fprintf(stderr, "test_cuda_emulator: unknown mode '%s'\n", mode.c_str());
    return 2;
  }
  std::printf("test_cuda_emulator: %s ran to its end\n", mode.c_str());
  return 0;
}
