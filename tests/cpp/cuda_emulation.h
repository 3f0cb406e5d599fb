// The CUDA execution model on CPU threads, for running the real kernel source
// (csrc/cuda/propagate_kernels.cuh) with the host compiler in tests, under
// AddressSanitizer and ThreadSanitizer. A test tool, not a product; Linux only
// (futexes).
//
// What it models:
// - A launch of `grid` blocks of `block` threads: every thread of a block is a
//   real thread (a pool of `block` threads, kept between launches), and the
//   blocks of a launch run one after the other. threadIdx, blockIdx, blockDim
//   and gridDim are per thread (x only; y and z are 1).
// - __syncthreads: a barrier over all the block's threads, which orders their
//   memory accesses (ThreadSanitizer sees a release by every thread that
//   arrives and an acquire by every thread that leaves it).
// - __shfl_sync, __shfl_down_sync, __shfl_xor_sync (any trivially copyable
//   value of at most 8 bytes) and __syncwarp: the lanes that the mask names
//   meet at a barrier of those lanes and exchange values; `width` splits the
//   warp into segments as on a GPU. Warps are 32 threads. A shuffle orders no
//   memory access, as on a GPU; __syncwarp does.
// - atomicMax on int: an atomic read-modify-write that ThreadSanitizer sees,
//   relaxed (it orders no other access, as on a GPU).
// - __shared__ memory: one copy, shared by the running block's threads (blocks
//   do not overlap, so it is per block).
// - Qualifiers (__global__, __device__, __host__, __forceinline__,
//   __launch_bounds__) are no-ops; __restrict__ is the host compiler's own.
//
// Scheduling: one thread of the block runs at a time, until it waits at a
// barrier or leaves the kernel; then the next ready thread runs (round
// robin). The hand-over is a futex that ThreadSanitizer does not see, so the
// accesses of two threads are ordered for it only by the barriers above, as
// on a GPU: a race between a block's threads is a TSan report even though the
// threads never overlap in time. (Running them all at once would find no
// more races, and would make every barrier a convoy of 256 threads on a few
// cores.)
//
// What is an error here, reported with the kernel, the block and the thread
// (the process exits with status 1; a test never hangs on it):
// - a barrier or shuffle that can never complete: every thread still in the
//   block waits, in a __syncthreads that some thread never reaches, or in a
//   shuffle whose named lanes are not all there (a lane left the kernel, or
//   waits elsewhere, or with another mask). The report says where each
//   thread of the block is;
// - a shuffle by a lane that its own mask leaves out, or one that reads a lane
//   outside the mask;
// - a launch that makes no progress for kStallSeconds (a thread in an endless
//   loop), as a backstop.
//
// What it does not model: memory coalescing, caches, timing and occupancy
// (speed is measured on a GPU only); the memory model beyond what TSan sees
// (stores are never torn or reordered here); blocks running at the same time
// (they run one after the other, ordered, so a race between blocks on global
// memory is not seen); warp-synchronous code that relies on lanes in
// lockstep without a shuffle or __syncwarp; device memory as a separate
// address space (pointers are host pointers, so a kernel may read host data
// that a GPU could not).
#pragma once

#define LIGHTGCN_EXT_CUDA_EMULATION 1

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// One copy per kernel function; blocks run one at a time, so it is the block's.
#define __shared__ static

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
using cudaStream_t = struct cuda_emulation_stream*;

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
constexpr int warpSize = 32;

namespace cuda_emulation {

// A launch that makes no progress for this long fails (the deadlock check
// finds the barriers that can never complete at once; this catches the rest).
constexpr int kStallSeconds = 120;
// Shuffle barriers per warp and block: one per distinct mask (up to 32 for
// groups of one lane, plus wider ones).
constexpr int kBarriersPerWarp = 64;

// Emulator state. Only the running thread touches it, but the hand-over of
// the baton is invisible to ThreadSanitizer, so it is atomic (relaxed): TSan
// checks the kernel's memory, not the emulator's.
template <typename T>
class Shared {
 public:
  T get() const { return value_.load(std::memory_order_relaxed); }
  void set(T value) { value_.store(value, std::memory_order_relaxed); }

 private:
  std::atomic<T> value_{};
};

struct ShuffleBarrier {
  Shared<unsigned> mask;  // 0: a free slot
  Shared<unsigned> arrived;
  Shared<uint64_t> generation;
  // By the generation's parity: a lane that is already at the next shuffle
  // never overwrites a value that a slower lane has yet to read.
  Shared<uint64_t> values[2][32];
  // __syncwarp's release / acquire, by the generation's parity.
  std::atomic<uint64_t> order[2];
};

struct Thread {
  std::atomic<uint32_t> baton{0};  // futex word: 1 when this thread may run
  // Where it waits: barrier null when it runs, is ready or left the kernel.
  Shared<const void*> barrier;
  Shared<const char*> what;
  Shared<unsigned> mask;
  Shared<bool> left;  // out of the kernel for this block
};

inline void futex_wait(std::atomic<uint32_t>* word, uint32_t value) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, value, nullptr,
          nullptr, 0);
}

inline void futex_wake(std::atomic<uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr,
          0);
}

class Runtime {
 public:
  ~Runtime() {
    stop_.set(true);
    for (int t = 0; t < block_; ++t) hand_to(t);
    for (auto& worker : workers_) worker.join();
  }

  void launch(const char* name, int64_t grid, int block, const std::function<void()>& body) {
    if (grid <= 0 || grid > (int64_t{1} << 31) - 1 || block <= 0 || block > 1024) {
      std::fprintf(stderr, "cuda_emulation: launch of %s with grid %lld, block %d\n", name,
                   static_cast<long long>(grid), block);
      std::_Exit(1);
    }
    if (block != block_) resize(block);
    name_ = name;
    grid_ = grid;
    body_ = &body;
    block_index_.set(0);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      finished_ = false;
    }
    start_block();
    // The watchdog: progress is a hand-over of the baton.
    std::unique_lock<std::mutex> lock(mutex_);
    uint64_t progress = progress_.get();
    auto since = std::chrono::steady_clock::now();
    while (!done_.wait_for(lock, std::chrono::seconds(1), [&] { return finished_; })) {
      if (progress_.get() != progress) {
        progress = progress_.get();
        since = std::chrono::steady_clock::now();
      } else if (std::chrono::steady_clock::now() - since >
                 std::chrono::seconds(kStallSeconds)) {
        fail(running_.get(), "no progress for " + std::to_string(kStallSeconds) +
                                 " s (a thread that never reaches a barrier?)");
      }
    }
    body_ = nullptr;
  }

  void syncthreads() {
    const int t = static_cast<int>(threadIdx.x);
    const uint64_t generation = sync_generation_.get();
    std::atomic<uint64_t>& order = sync_order_[generation & 1];
    order.fetch_add(1, std::memory_order_release);
    const int arrived = sync_arrived_.get() + 1;
    if (arrived == block_) {
      sync_arrived_.set(0);
      sync_generation_.set(generation + 1);
      release(&sync_arrived_, 0, block_);
    } else {
      sync_arrived_.set(arrived);
      wait(t, &sync_arrived_, "__syncthreads", 0);
    }
    order.load(std::memory_order_acquire);
  }

  // The value of `var` at lane src_of(lane) among the lanes of `mask`;
  // orders memory (as __syncwarp) when `orders_memory`.
  template <typename T, typename SrcOf>
  T shuffle(const char* what, unsigned mask, T var, SrcOf src_of, bool orders_memory = false) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffle of a wide type");
    const int t = static_cast<int>(threadIdx.x);
    const int lane = t % warpSize, warp = t / warpSize;
    if (!((mask >> lane) & 1u)) {
      fail(t, describe(what, mask) + " by lane " + std::to_string(lane) +
                  ", which the mask leaves out");
    }
    ShuffleBarrier& b = shuffle_barrier(t, warp, mask);
    const uint64_t generation = b.generation.get();
    uint64_t bits = 0;
    std::memcpy(&bits, &var, sizeof(T));
    b.values[generation & 1][lane].set(bits);
    if (orders_memory) b.order[generation & 1].fetch_add(1, std::memory_order_release);
    const unsigned arrived = b.arrived.get() | (1u << lane);
    if (arrived == mask) {
      b.arrived.set(0);
      b.generation.set(generation + 1);
      release(&b, warp * warpSize, warpSize);
    } else {
      b.arrived.set(arrived);
      wait(t, &b, what, mask);
    }
    if (orders_memory) b.order[generation & 1].load(std::memory_order_acquire);
    const int src = src_of(lane);
    if (src < 0 || src >= warpSize || !((mask >> src) & 1u)) {
      fail(t, describe(what, mask) + " at lane " + std::to_string(lane) + " reads lane " +
                  std::to_string(src) + ", which the mask leaves out");
    }
    bits = b.values[generation & 1][src].get();
    T out;
    std::memcpy(&out, &bits, sizeof(T));
    return out;
  }

 private:
  static std::string describe(const char* what, unsigned mask) {
    if (std::strcmp(what, "__syncthreads") == 0) return what;
    char hex[16];
    std::snprintf(hex, sizeof hex, "0x%08x", mask);
    return std::string(what) + "(mask " + hex + ")";
  }

  // Replaces the pool by one of `block` threads (launches of one size keep it).
  void resize(int block) {
    stop_.set(true);
    for (int t = 0; t < block_; ++t) hand_to(t);
    for (auto& worker : workers_) worker.join();
    workers_.clear();
    stop_.set(false);
    block_ = block;
    threads_ = std::make_unique<Thread[]>(block);
    ready_ = std::make_unique<Shared<int>[]>(block);
    warps_ = std::make_unique<ShuffleBarrier[]>(((block + warpSize - 1) / warpSize) * kBarriersPerWarp);
    // All on one CPU: a hand-over then switches threads on one core instead of waking one on
    // another, which is twice as fast. Which CPU: CUDA_EMULATION_CPU, or one by the process
    // id, so that tests run side by side (ctest -j) tend to take different ones.
    cpu_set_t allowed, cpus;
    CPU_ZERO(&cpus);
    int cpu = -1;
    if (sched_getaffinity(0, sizeof allowed, &allowed) == 0 && CPU_COUNT(&allowed) > 0) {
      const char* env = std::getenv("CUDA_EMULATION_CPU");
      int pick = env != nullptr ? std::atoi(env) : static_cast<int>(getpid());
      pick %= CPU_COUNT(&allowed);
      for (int c = 0; c < CPU_SETSIZE && cpu < 0; ++c) {
        if (CPU_ISSET(c, &allowed) && pick-- == 0) cpu = c;
      }
    }
    if (cpu >= 0) CPU_SET(cpu, &cpus);
    for (int t = 0; t < block; ++t) {
      workers_.emplace_back([this, t] { work(t); });
      if (cpu >= 0) pthread_setaffinity_np(workers_.back().native_handle(), sizeof cpus, &cpus);
    }
  }

  // Sets up block block_index_ and hands the baton to its thread 0.
  void start_block() {
    live_.set(block_);
    sync_arrived_.set(0);
    for (int w = 0; w < (block_ + warpSize - 1) / warpSize * kBarriersPerWarp; ++w) {
      warps_[w].mask.set(0);
      warps_[w].arrived.set(0);
    }
    for (int t = 0; t < block_; ++t) {
      threads_[t].barrier.set(nullptr);
      threads_[t].left.set(false);
      ready_[t].set(t);
    }
    ready_head_.set(1);
    ready_tail_.set(block_);
    // Everything before (the launch's arguments, the last block) happens
    // before the block's threads start.
    block_order_.fetch_add(1, std::memory_order_release);
    hand_to(0);
  }

  void work(int t) {
    for (;;) {
      take_baton(t);
      if (stop_.get()) return;
      block_order_.load(std::memory_order_acquire);
      threadIdx = {static_cast<unsigned>(t), 0, 0};
      blockIdx = {static_cast<unsigned>(block_index_.get()), 0, 0};
      blockDim = {static_cast<unsigned>(block_), 1, 1};
      gridDim = {static_cast<unsigned>(grid_), 1, 1};
      (*body_)();
      leave(t);
    }
  }

  // Thread t leaves the kernel: the next ready thread runs, or the next
  // block starts, or the launch is over.
  void leave(int t) {
    exit_order_.fetch_add(1, std::memory_order_release);
    threads_[t].left.set(true);
    const int live = live_.get() - 1;
    live_.set(live);
    if (live > 0) {
      const int next = pop_ready();
      if (next < 0) deadlock(t, "thread " + std::to_string(t) + " left the kernel");
      hand_to(next);
      return;
    }
    exit_order_.load(std::memory_order_acquire);
    if (block_index_.get() + 1 < grid_) {
      block_index_.set(block_index_.get() + 1);
      start_block();
      return;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    finished_ = true;
    done_.notify_one();
  }

  // Thread t waits at `barrier` until a release: the next ready thread runs.
  void wait(int t, const void* barrier, const char* what, unsigned mask) {
    Thread& self = threads_[t];
    self.what.set(what);
    self.mask.set(mask);
    self.barrier.set(barrier);
    const int next = pop_ready();
    if (next < 0) deadlock(t, "thread " + std::to_string(t) + " waits");
    hand_to(next);
    take_baton(t);
  }

  // The threads [first, first + count) that wait at `barrier` are ready.
  void release(const void* barrier, int first, int count) {
    for (int t = first; t < first + count && t < block_; ++t) {
      if (threads_[t].barrier.get() != barrier) continue;
      threads_[t].barrier.set(nullptr);
      const int64_t tail = ready_tail_.get();
      ready_[tail % block_].set(t);
      ready_tail_.set(tail + 1);
    }
  }

  int pop_ready() {
    const int64_t head = ready_head_.get();
    if (head == ready_tail_.get()) return -1;
    ready_head_.set(head + 1);
    return ready_[head % block_].get();
  }

  // The hand-over. The fences order the memory of the two threads for the
  // hardware and the compiler; ThreadSanitizer ignores fences, so it sees no
  // order here.
  void hand_to(int t) {
    running_.set(t);
    progress_.set(progress_.get() + 1);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    threads_[t].baton.store(1, std::memory_order_relaxed);
    futex_wake(&threads_[t].baton);
  }

  void take_baton(int t) {
    std::atomic<uint32_t>& baton = threads_[t].baton;
    while (baton.load(std::memory_order_relaxed) == 0) futex_wait(&baton, 0);
    baton.store(0, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }

  ShuffleBarrier& shuffle_barrier(int t, int warp, unsigned mask) {
    ShuffleBarrier* slots = &warps_[warp * kBarriersPerWarp];
    for (int i = 0; i < kBarriersPerWarp; ++i) {
      if (slots[i].mask.get() == mask) return slots[i];
      if (slots[i].mask.get() == 0) {
        slots[i].mask.set(mask);
        slots[i].arrived.set(0);
        return slots[i];
      }
    }
    fail(t, "more than " + std::to_string(kBarriersPerWarp) + " shuffle masks in one warp");
  }

  std::string where(int t) const {
    return "kernel " + std::string(name_) + ", block " + std::to_string(block_index_.get()) +
           " of " + std::to_string(grid_) + ", thread " + std::to_string(t);
  }

  [[noreturn]] void fail(int t, const std::string& message) const {
    std::fprintf(stderr, "cuda_emulation: %s: %s\n", where(t).c_str(), message.c_str());
    std::fflush(stderr);
    std::_Exit(1);
  }

  // No thread of the block can go on: says where each one is.
  [[noreturn]] void deadlock(int t, const std::string& why) const {
    std::string report = "deadlock (" + why + "; no thread can go on):";
    std::string last;
    int from = 0;
    for (int u = 0; u <= block_; ++u) {
      std::string here;
      if (u < block_) {
        const Thread& thread = threads_[u];
        here = thread.left.get() ? "left the kernel"
               : thread.barrier.get() != nullptr
                   ? "wait in " + describe(thread.what.get(), thread.mask.get())
                   : "ready";
      }
      if (u > 0 && (u == block_ || here != last)) {
        report += from == u - 1 ? "\n  thread " + std::to_string(from)
                                : "\n  threads " + std::to_string(from) + "-" + std::to_string(u - 1);
        report += ": " + last;
      }
      if (u == 0 || here != last) {
        from = u;
        last = here;
      }
    }
    fail(t, report);
  }

  // Set by the launching thread while no kernel thread runs.
  std::vector<std::thread> workers_;
  std::unique_ptr<Thread[]> threads_;
  int block_ = 0;
  const char* name_ = "";
  int64_t grid_ = 0;
  const std::function<void()>* body_ = nullptr;
  std::mutex mutex_;
  std::condition_variable done_;
  bool finished_ = false;
  // The running block, touched by the thread that holds the baton.
  Shared<bool> stop_;
  Shared<int> running_;
  Shared<uint64_t> progress_;
  Shared<int64_t> block_index_;
  Shared<int> live_;  // threads not yet out of the kernel
  Shared<int> sync_arrived_;
  Shared<uint64_t> sync_generation_;
  std::unique_ptr<Shared<int>[]> ready_;  // a ring of thread ids
  Shared<int64_t> ready_head_, ready_tail_;
  std::unique_ptr<ShuffleBarrier[]> warps_;  // kBarriersPerWarp per warp
  // The memory order that a GPU gives and ThreadSanitizer checks against.
  std::atomic<uint64_t> sync_order_[2]{}, block_order_{0}, exit_order_{0};
};

inline Runtime& runtime() {
  static Runtime instance;
  return instance;
}

// Runs body() as a kernel of `grid` blocks of `block` threads.
template <typename Body>
void launch(const char* name, int64_t grid, int block, Body&& body) {
  const std::function<void()> f = std::forward<Body>(body);
  runtime().launch(name, grid, block, f);
}

inline void check_width(const char* what, int width) {
  if (width < 1 || width > warpSize || (width & (width - 1)) != 0) {
    std::fprintf(stderr, "cuda_emulation: %s with width %d (a power of two <= 32)\n", what,
                 width);
    std::_Exit(1);
  }
}

}  // namespace cuda_emulation

inline void __syncthreads() { cuda_emulation::runtime().syncthreads(); }

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  cuda_emulation::runtime().shuffle(
      "__syncwarp", mask, 0, [](int lane) { return lane; }, /*orders_memory=*/true);
}

// The lane's segment of `width` lanes starts at lane & ~(width - 1).
template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
  cuda_emulation::check_width("__shfl_sync", width);
  return cuda_emulation::runtime().shuffle("__shfl_sync", mask, var, [&](int lane) {
    return (lane & ~(width - 1)) + (src_lane & (width - 1));
  });
}

template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  cuda_emulation::check_width("__shfl_down_sync", width);
  return cuda_emulation::runtime().shuffle("__shfl_down_sync", mask, var, [&](int lane) {
    // Past the segment's end: the lane's own value.
    return (lane & (width - 1)) + static_cast<int>(delta) < width ? lane + static_cast<int>(delta)
                                                                   : lane;
  });
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  cuda_emulation::check_width("__shfl_xor_sync", width);
  return cuda_emulation::runtime().shuffle("__shfl_xor_sync", mask, var, [&](int lane) {
    // A later segment's lane: the lane's own value, as on a GPU.
    const int src = lane ^ lane_mask;
    return src / width > lane / width ? lane : src;
  });
}

inline int atomicMax(int* address, int value) {
  int old = __atomic_load_n(address, __ATOMIC_RELAXED);
  while (old < value && !__atomic_compare_exchange_n(address, &old, value, /*weak=*/true,
                                                     __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
