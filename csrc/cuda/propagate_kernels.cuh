// The kernels of `propagate`, `propagate_rows` (and its backward) and
// `layer_dots` on CUDA, and the host code that sequences them (plan, vector
// width, scratch, sweeps and fix-ups, buffer swaps, partial sums). One source
// for two compilers: nvcc builds it for the GPU (propagate_cuda.cu, whose ATen
// entry points call the *_sweeps functions), and the host compiler builds it against the CPU
// emulation of the CUDA execution model, tests/cpp/cuda_emulation.h, which
// the emulated tests include first. Every launch goes through launch_kernel.
//
// The CPU kernels in ../cpu/propagate_cpu.cpp define the semantics, and these
// follow them. Each op is L sweeps of one CSR SpMM with a fused epilogue. As
// on the CPU, the sweeps carry the source-scaled features s = dinv * h, so a
// row of M h is dinv[r] * sum_k w_k s[col_k] and no dinv is gathered per
// edge; the first sweep gathers x itself, times dinv[col_k], which saves a
// scaling pass over N x d. The buffers s are stored in x's dtype: float16 and
// bfloat16 sweeps gather half the bytes of float32 ones (sums are float32
// whatever the type).
//
// bfloat16 layers for float32 x (the ops' bf16=True): the buffers s are
// stored in bfloat16 (store_t) while x, every sum, x's own term and the
// result stay float32, with the rounding points of the CPU kernels: each
// layer is rounded once, when it is stored. The first layer s_L = dinv *
// alpha_L * x is then written (rounded) by a pass of its own rather than
// scaled as the first sweep gathers x, so that every sweep gathers bfloat16
// rows and the first layer is the CPU's, bit for bit. The later layers are
// the CPU's up to the float32 rounding of the sums that they round (rows cut
// by work items are summed in pieces, and nvcc fuses multiplies and adds),
// which now and then moves a value to the neighbouring bfloat16 number.
//
// Schedule: merge path (../merge_path.h). Work items of the same number of
// (row end + edge) positions are spread over groups of G lanes (a power of
// two <= 32, sized to d): a sweep no longer waits for its longest row, and
// rows cut by item boundaries are finished by a second, small kernel that
// adds their pieces in a fixed order. Within an item a group loads up to G
// edges (col, weight) at once, one per lane, broadcasts them with shuffles,
// and gathers kBatch neighbour rows before summing any (one vector of V
// values per lane: 16-byte loads when d and the pointers allow).
// Offsets into [N, d] arrays are int64.
//
// layer_dots reduces deterministically: every block writes one partial per
// layer, and a last kernel adds them in a fixed order. The grid depends only
// on N, E, d and the item size, never on the device.
//
// A batch's rows (propagate_rows). The forward's last sweep computes only
// the listed rows: it visits every item, but skips the edges of the rows
// that are not listed, and sums the listed ones exactly as a full sweep
// does (the same pieces, added in the same order), so its numbers are
// propagate's at those rows, bit for bit. The backward starts from a
// gradient that is zero outside the listed rows: it is summed per listed
// node (repeats in list order, after a stable sort of the rows, so no float
// atomics) into a compact array, and the first sweep over M^T gathers only
// those rows (it reads every edge's column, but loads no row for the others).
// The other sweeps are full. No output size or launch depends on the values
// of rows, and nothing waits for the device: a CUDA graph captures both.
#pragma once

#include "../merge_path.h"

#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <type_traits>
#include <utility>

#if defined(__CUDACC__)
#include <c10/cuda/CUDAException.h>
#elif !defined(LIGHTGCN_EXT_CUDA_EMULATION)
#error "propagate_kernels.cuh: compile it with nvcc, or include tests/cpp/cuda_emulation.h first"
#endif

namespace lightgcn_ext {
namespace cuda_kernels {

namespace mp = merge_path;

// Positions (edges + row ends) per work item. Larger items split fewer rows
// (a row of average length a is cut with probability ~a / size) but give
// fewer items to spread; LIGHTGCN_EXT_CUDA_ITEM_SIZE overrides it, for
// tuning on a GPU.
constexpr int64_t kDefaultItemSize = 128;
constexpr int64_t kMaxItemSize = int64_t{1} << 20;

// The item size that LIGHTGCN_EXT_CUDA_ITEM_SIZE's value `env` asks for (null:
// unset): the default when unset or empty, -1 when it is not an integer in
// [1, kMaxItemSize].
inline int64_t item_size_from(const char* env) {
  if (env == nullptr || *env == '\0') return kDefaultItemSize;
  char* end = nullptr;
  const long long value = std::strtoll(env, &end, 10);
  return *end == '\0' && value >= 1 && value <= kMaxItemSize ? value : -1;
}

constexpr int kThreads = 256;
// Neighbour rows a lane requests before it sums any: the loads of a batch are
// independent, which hides the gather latency.
constexpr int kBatch = 8;
// Grid cap (items are visited with a grid-stride loop); it also bounds the
// number of per-block partials of layer_dots.
constexpr int64_t kMaxBlocks = 8192;

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
  return *reinterpret_cast<const Vec<T, N>*>(p);
}

template <typename T, int N>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& v) {
  *reinterpret_cast<Vec<T, N>*>(p) = v;
}

// Sum of v over the block, written by thread 0 to *out. Every thread of the
// block must call it; it may be called again right after. The order of the
// additions is fixed.
template <typename acc_t>
__device__ void block_sum(acc_t v, acc_t* out) {
  __shared__ acc_t warp_sums[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    acc_t total = 0;
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
    *out = total;
  }
  __syncthreads();  // warp_sums is free again
}

enum class Epilogue {
  kNext,   // s_out = dinv * (alpha_l x + dinv * acc): a middle step of propagate
  kFinal,  // out = alpha_0 x + dinv * acc (+ extra): the last step of propagate
  kDots,   // h = dinv * acc; dot += <h, grad>; s_out = dinv * h: layer_dots
};

// Where a sweep's gathered rows come from.
enum class Source {
  kX,             // x itself (a first sweep): each row times dinv[col], the sum times *src_scale
  kCompactX,      // the same from a compact x (Sweep::x_slot): no load where x's row is zero
  kLayer,         // s, a stored layer: a previous sweep's output, or x scaled by a pass
  kCompactLayer,  // the same, compact: row x_slot[col] of s (none where it is -1)
};

// Whether the source is x itself, in x's type (else a layer, in store_t).
__host__ __device__ constexpr bool gathers_x(Source source) {
  return source == Source::kX || source == Source::kCompactX;
}

// Whether the gathered rows are compact (indexed through Sweep::x_slot).
__host__ __device__ constexpr bool gathers_compact(Source source) {
  return source == Source::kCompactX || source == Source::kCompactLayer;
}

// Everything one sweep reads and writes. scalar_t is the type of x and of
// the result; store_t that of the layers s that the sweeps write and gather
// (scalar_t, or bfloat16 for float32 x: bf16=True).
template <typename scalar_t, typename store_t, typename index_t>
struct Sweep {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t* __restrict__ rowptr;
  const index_t* __restrict__ col;
  const acc_t* __restrict__ weight;  // null: every edge has weight 1
  const acc_t* __restrict__ dinv;
  int64_t num_rows, num_edges, d, item_size;
  // The gathered rows. A first sweep that gathers x itself (kX, kCompactX)
  // reads src_x, multiplies each row by dinv[col] and the sum by *src_scale
  // (alpha_L for propagate, null for 1); the others read the layer src.
  const scalar_t* __restrict__ src_x;
  const store_t* __restrict__ src;
  const acc_t* __restrict__ src_scale;
  const scalar_t* __restrict__ x;    // the epilogue's own rows: x, or grad for layer_dots
  // Null: x is dense, [N, d]. Else x is compact: node r's row is x[x_slot[r]], and
  // zero where x_slot[r] < 0 (the gradient of a batch, zero outside its rows).
  const int32_t* __restrict__ x_slot;
  const acc_t* __restrict__ extra;   // kFinal, with x_slot: added at x's rows (null: none)
  const acc_t* __restrict__ alpha;   // &alpha[l] for kNext and kFinal
  store_t* __restrict__ s_out;       // kNext, kDots (null: not needed)
  scalar_t* __restrict__ out;        // kFinal
  // kFinal only. Null: every row, out is [N, d]. Else only the rows r with
  // out_slot[r] >= 0 are computed, into out[out_slot[r]] (a batch's rows).
  const int32_t* __restrict__ out_slot;
  // The first sweep of layer_dots also sums <x, grad> (layer 0) from here.
  const scalar_t* __restrict__ dot0_x;
  // Pieces of rows cut by item boundaries ([items, d], in acc_t) and, per
  // item, the row it must finish in the fix-up kernel (-1: none).
  acc_t* __restrict__ carry;
  acc_t* __restrict__ tail;
  int64_t* __restrict__ pending;
  // kDots: per-block partial sums of this layer's dot and of layer 0's; the
  // sweep kernel writes [0, grid), the fix-up kernel [grid, 2 * grid).
  acc_t* __restrict__ partial;
  acc_t* __restrict__ partial0;
};

// A thread's place in a sweep: its group of G lanes takes the work items
// first_item, first_item + item_stride, ...; in each pass over the columns,
// lane `lane` holds columns [first, first + V) when first < d.
struct Lanes {
  int group;
  int lane;
  unsigned mask;  // the group's lanes within the warp, for the shuffles
  int64_t first_item, item_stride, num_items;
  int64_t pass_width;  // columns per pass: G * V
};

template <int V, typename S>
__device__ __forceinline__ Lanes lanes(int log2_group, const S& s) {
  const int group = 1 << log2_group;
  const int lane = threadIdx.x & (group - 1);
  const unsigned mask =
      group == 32 ? 0xffffffffu : ((1u << group) - 1u) << ((threadIdx.x & 31) & ~(group - 1));
  const int64_t groups_per_block = kThreads >> log2_group;
  return {group,
          lane,
          mask,
          blockIdx.x * groups_per_block + (threadIdx.x >> log2_group),
          static_cast<int64_t>(gridDim.x) * groups_per_block,
          merge_path::num_items(s.num_rows, s.num_edges, s.item_size),
          static_cast<int64_t>(group) * V};
}

// layer_dots: the block's sums of <h_l, grad> (and of <x, grad> in the first
// sweep) to partial slot `slot`. Every thread of the block must call it.
template <Epilogue kEpilogue, typename S, typename acc_t>
__device__ __forceinline__ void write_block_dots(const S& s, acc_t dot, acc_t dot0, int64_t slot) {
  if constexpr (kEpilogue == Epilogue::kDots) {
    block_sum(dot, s.partial + slot);
    if (s.dot0_x != nullptr) block_sum(dot0, s.partial0 + slot);
  }
}

// Whether the sweep computes row r (see Sweep::out_slot).
template <typename S>
__device__ __forceinline__ bool computes_row(const S& s, int64_t r) {
  return s.out_slot == nullptr || s.out_slot[r] >= 0;
}

// Row r is complete: its sum is acc (its columns [first, first + V)). Writes
// what the epilogue makes of it and adds to the dots.
template <Epilogue kEpilogue, int V, typename scalar_t, typename store_t, typename index_t>
__device__ __forceinline__ void finish_row(const Sweep<scalar_t, store_t, index_t>& s, int64_t r,
                                           int64_t first, at::opmath_type<scalar_t> (&acc)[V],
                                           at::opmath_type<scalar_t>& dot,
                                           at::opmath_type<scalar_t>& dot0) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t dr = s.dinv[r];
  const acc_t scale = s.src_scale != nullptr ? *s.src_scale : acc_t(1);
  const int64_t o = r * s.d + first;
  // x's row r, where a compact x keeps it (-1: zero).
  const int64_t x_row = s.x_slot != nullptr ? s.x_slot[r] : r;
  Vec<scalar_t, V> xv;
  if (x_row >= 0) {
    xv = load_vec<scalar_t, V>(s.x + x_row * s.d + first);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) xv.v[i] = static_cast<scalar_t>(0.0f);
  }
  if constexpr (kEpilogue == Epilogue::kFinal) {
    const acc_t a = *s.alpha;
    acc_t v[V];
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = a * static_cast<acc_t>(xv.v[i]) + dr * scale * acc[i];
    if (s.extra != nullptr && x_row >= 0) {
      const auto ev = load_vec<acc_t, V>(s.extra + x_row * s.d + first);
#pragma unroll
      for (int i = 0; i < V; ++i) v[i] += ev.v[i];
    }
    Vec<scalar_t, V> ov;
#pragma unroll
    for (int i = 0; i < V; ++i) ov.v[i] = static_cast<scalar_t>(v[i]);
    const int64_t out_row = s.out_slot != nullptr ? s.out_slot[r] : r;
    store_vec(s.out + out_row * s.d + first, ov);
  } else if constexpr (kEpilogue == Epilogue::kNext) {
    const acc_t a = *s.alpha;
    Vec<store_t, V> sv;
#pragma unroll
    for (int i = 0; i < V; ++i)
      sv.v[i] = static_cast<store_t>(dr * (a * static_cast<acc_t>(xv.v[i]) + dr * scale * acc[i]));
    store_vec(s.s_out + o, sv);
  } else {
    Vec<store_t, V> sv;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const acc_t h = dr * scale * acc[i];
      dot += h * static_cast<acc_t>(xv.v[i]);
      sv.v[i] = static_cast<store_t>(dr * h);
    }
    if (s.s_out != nullptr) store_vec(s.s_out + o, sv);
    if (s.dot0_x != nullptr) {
      const auto x0 = load_vec<scalar_t, V>(s.dot0_x + o);
#pragma unroll
      for (int i = 0; i < V; ++i) dot0 += static_cast<acc_t>(x0.v[i]) * static_cast<acc_t>(xv.v[i]);
    }
  }
}

template <typename T, int V>
__device__ __forceinline__ void store_acc(T* p, const T (&acc)[V]) {
  Vec<T, V> v;
#pragma unroll
  for (int i = 0; i < V; ++i) v.v[i] = acc[i];
  store_vec(p, v);
}

// One sweep over the work items: for every row that begins and ends in an
// item, acc = sum_k w_k src[col_k] (times dinv[col_k] from x), then the
// epilogue; the pieces of the other rows go to carry / tail. With out_slot,
// an item's rows that are not computed are skipped, edges and all: the rows
// that are computed are summed exactly as in a sweep over every row, so
// their results are the same, bit for bit.
template <typename scalar_t, typename store_t, typename index_t, int V, Epilogue kEpilogue,
          Source kSource>
__global__ void __launch_bounds__(kThreads)
    sweep_kernel(const Sweep<scalar_t, store_t, index_t> s, int log2_group) {
  using acc_t = at::opmath_type<scalar_t>;
  using gather_t = std::conditional_t<gathers_x(kSource), scalar_t, store_t>;
  const gather_t* __restrict__ src;
  if constexpr (gathers_x(kSource)) {
    src = s.src_x;
  } else {
    src = s.src;
  }
  const Lanes g = lanes<V>(log2_group, s);
  const int64_t d = s.d;
  acc_t dot = 0, dot0 = 0;

  for (int64_t item = g.first_item; item < g.num_items; item += g.item_stride) {
    const mp::Item span = mp::item_span(s.rowptr, s.num_rows, s.num_edges, s.item_size, item);
    if (g.lane == 0) {
      s.pending[item] =
          span.first_row_pending && computes_row(s, span.begin.row) ? span.begin.row : -1;
    }
    // The item's rows: begin.row .. end.row, the last one unless it is N.
    const int64_t last_row = span.end.row < s.num_rows ? span.end.row : s.num_rows - 1;

    for (int64_t j0 = 0; j0 < d; j0 += g.pass_width) {
      const int64_t first = j0 + static_cast<int64_t>(g.lane) * V;
      const bool active = first < d;
      acc_t acc[V];
#pragma unroll
      for (int i = 0; i < V; ++i) acc[i] = 0;
      auto finish = [&](int64_t row, bool began_here) {
        if (active) {
          if (began_here) {
            finish_row<kEpilogue, V>(s, row, first, acc, dot, dot0);
          } else {
            store_acc(s.tail + item * d + first, acc);
          }
        }
#pragma unroll
        for (int i = 0; i < V; ++i) acc[i] = 0;
      };

      // Runs of consecutive rows to compute, [run, run_end): the whole item,
      // or each run of rows that out_slot lists (whose edges are contiguous).
      for (int64_t run = span.begin.row; run <= last_row;) {
        int64_t run_end = last_row + 1;
        if (s.out_slot != nullptr) {
          while (run <= last_row && s.out_slot[run] < 0) ++run;
          if (run > last_row) break;
          run_end = run + 1;
          while (run_end <= last_row && s.out_slot[run_end] >= 0) ++run_end;
        }
        const int64_t run_begin = s.rowptr[run], run_stop = s.rowptr[run_end];
        const int64_t edge_begin = span.begin.edge > run_begin ? span.begin.edge : run_begin;
        const int64_t edge_end = span.end.edge < run_stop ? span.end.edge : run_stop;
        mp::RowCursor cursor{run, s.rowptr[run + 1], edge_begin == run_begin};

        for (int64_t k0 = edge_begin; k0 < edge_end; k0 += g.group) {
          // One edge per lane, broadcast below; lanes past the run's end
          // hold (node 0, weight 0), so that every load of a batch is valid.
          // From compact rows, the column becomes the row's slot (-1: a zero row).
          index_t my_col = gathers_compact(kSource) ? -1 : 0;
          acc_t my_w = 0;
          if (k0 + g.lane < edge_end) {
            my_col = s.col[k0 + g.lane];
            my_w = s.weight != nullptr ? s.weight[k0 + g.lane] : acc_t(1);
            if constexpr (gathers_x(kSource)) my_w *= s.dinv[my_col];
            if constexpr (gathers_compact(kSource)) my_col = s.x_slot[my_col];
          }
          const int count =
              edge_end - k0 < g.group ? static_cast<int>(edge_end - k0) : g.group;
          for (int t0 = 0; t0 < count; t0 += kBatch) {
            Vec<gather_t, V> rows[kBatch];
            acc_t w[kBatch];
#pragma unroll
            for (int b = 0; b < kBatch; ++b) {
              const int64_t c = __shfl_sync(g.mask, my_col, t0 + b, g.group);
              w[b] = __shfl_sync(g.mask, my_w, t0 + b, g.group);
              if (active && (!gathers_compact(kSource) || c >= 0)) {
                rows[b] = load_vec<gather_t, V>(src + c * d + first);
              } else if (active) {  // a zero row of compact rows: adds 0, as a dense one would
#pragma unroll
                for (int i = 0; i < V; ++i) rows[b].v[i] = static_cast<gather_t>(0.0f);
              }
            }
#pragma unroll
            for (int b = 0; b < kBatch; ++b) {
              if (t0 + b >= count) break;
              mp::advance_past(s.rowptr, cursor, k0 + t0 + b, finish);
              if (active) {
#pragma unroll
                for (int i = 0; i < V; ++i) acc[i] += w[b] * static_cast<acc_t>(rows[b].v[i]);
              }
            }
          }
        }
        mp::finish_until(cursor, run_end < span.end.row ? run_end : span.end.row, finish);
        run = run_end;
      }
      if (span.end.row < s.num_rows && active && computes_row(s, span.end.row)) {
        store_acc(s.carry + item * d + first, acc);
      }
    }
  }
  write_block_dots<kEpilogue>(s, dot, dot0, blockIdx.x);
}

// The rows that the sweep left pending: each one's pieces added in item
// order, then the epilogue.
template <typename scalar_t, typename store_t, typename index_t, int V, Epilogue kEpilogue>
__global__ void __launch_bounds__(kThreads)
    fixup_kernel(const Sweep<scalar_t, store_t, index_t> s, int log2_group) {
  using acc_t = at::opmath_type<scalar_t>;
  const Lanes g = lanes<V>(log2_group, s);
  const int64_t d = s.d;
  acc_t dot = 0, dot0 = 0;
  for (int64_t item = g.first_item; item < g.num_items; item += g.item_stride) {
    const int64_t row = s.pending[item];
    if (row < 0) continue;
    const int64_t first_item = mp::first_item_of_row(s.rowptr, row, s.item_size);
    for (int64_t j0 = 0; j0 < d; j0 += g.pass_width) {
      const int64_t first = j0 + static_cast<int64_t>(g.lane) * V;
      if (first >= d) continue;
      acc_t acc[V];
#pragma unroll
      for (int i = 0; i < V; ++i) acc[i] = 0;
      for (int64_t piece = first_item; piece <= item; ++piece) {
        const auto v = load_vec<acc_t, V>((piece < item ? s.carry : s.tail) + piece * d + first);
#pragma unroll
        for (int i = 0; i < V; ++i) acc[i] += v.v[i];
      }
      finish_row<kEpilogue, V>(s, row, first, acc, dot, dot0);
    }
  }
  write_block_dots<kEpilogue>(s, dot, dot0, gridDim.x + blockIdx.x);
}

// dots[l] = sum of partial[l, 0 : num_partials], in a fixed order; one block per l.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    sum_partials_kernel(const acc_t* __restrict__ partial, int64_t num_partials,
                        acc_t* __restrict__ dots) {
  const acc_t* row = partial + blockIdx.x * num_partials;
  acc_t sum = 0;
  for (int64_t i = threadIdx.x; i < num_partials; i += kThreads) sum += row[i];
  block_sum(sum, dots + blockIdx.x);
}

// ---- A batch's rows (propagate_rows and its backward): rows[0 .. num_listed)
// lists node ids, repeats allowed. slot[r] is the position of one entry that
// lists r (the last), -1 for the nodes not listed. Elementwise kernels take
// indices i = blockIdx.x * kThreads + threadIdx.x, grid-stride.

template <typename T>
__global__ void __launch_bounds__(kThreads)
    fill_kernel(T* __restrict__ out, int64_t count, T value) {
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * kThreads) {
    out[i] = value;
  }
}

// After fill_kernel(slot, N, -1): the maximum is the same whatever the order
// of the atomics, so slot is deterministic. (slot_t: int, which atomicMax takes.)
template <typename slot_t>
__global__ void __launch_bounds__(kThreads)
    list_rows_kernel(const int64_t* __restrict__ rows, int64_t num_listed,
                     slot_t* __restrict__ slot) {
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < num_listed;
       i += int64_t{gridDim.x} * kThreads) {
    atomicMax(slot + rows[i], static_cast<slot_t>(i));
  }
}

// out[i] = out[slot[rows[i]]] for the entries that are not their row's slot:
// the last sweep wrote each listed row once.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    copy_repeats_kernel(const int64_t* __restrict__ rows, const int32_t* __restrict__ slot,
                        int64_t num_listed, int64_t d, scalar_t* __restrict__ out) {
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < num_listed * d;
       i += int64_t{gridDim.x} * kThreads) {
    const int64_t entry = i / d, from = slot[rows[entry]];
    if (from != entry) out[i] = out[from * d + i % d];
  }
}

// The gradient of a batch as a compact x: for the rows `sorted` (rows sorted,
// stably, with order[t] the entry of rows at sorted position t, and slot made
// from sorted), g[t] = sum of grad[order[t']] over the run of t' that list
// the row whose slot is t, in list order; likewise extra from grad_x (when
// not null), kept in the accumulation type. No atomics: deterministic.
// Where top is not null, also the first layer that the sweeps gather, stored:
// top[t] = dinv[row] * *alpha_top * g[t] (the layer s_L = dinv * alpha_L * G
// at the rows where G is not zero).
template <typename scalar_t, typename store_t>
__global__ void __launch_bounds__(kThreads)
    sum_listed_kernel(const int64_t* __restrict__ sorted, const int64_t* __restrict__ order,
                      const int32_t* __restrict__ slot, int64_t num_listed, int64_t d,
                      const scalar_t* __restrict__ grad, const scalar_t* __restrict__ grad_x,
                      scalar_t* __restrict__ g, at::opmath_type<scalar_t>* __restrict__ extra,
                      const at::opmath_type<scalar_t>* __restrict__ dinv,
                      const at::opmath_type<scalar_t>* __restrict__ alpha_top,
                      store_t* __restrict__ top) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < num_listed * d;
       i += int64_t{gridDim.x} * kThreads) {
    const int64_t t = i / d, j = i % d, node = sorted[t];
    if (slot[node] != t) continue;  // t is not the last of its run
    int64_t run = t;
    while (run > 0 && sorted[run - 1] == node) --run;
    acc_t sum = 0, sum_x = 0;
    for (; run <= t; ++run) {
      const int64_t o = order[run] * d + j;
      sum += static_cast<acc_t>(grad[o]);
      if (grad_x != nullptr) sum_x += static_cast<acc_t>(grad_x[o]);
    }
    const scalar_t gi = static_cast<scalar_t>(sum);
    g[i] = gi;
    if (extra != nullptr) extra[i] = sum_x;
    if (top != nullptr) {
      top[i] = static_cast<store_t>(dinv[node] * *alpha_top * static_cast<acc_t>(gi));
    }
  }
}

// s = dinv * *alpha_top * x, rounded to store_t: the first layer that the
// sweeps gather, where it is stored in another type than x's.
template <typename scalar_t, typename store_t>
__global__ void __launch_bounds__(kThreads)
    scale_kernel(const scalar_t* __restrict__ x, const at::opmath_type<scalar_t>* __restrict__ dinv,
                 const at::opmath_type<scalar_t>* __restrict__ alpha_top, int64_t n, int64_t d,
                 store_t* __restrict__ s) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < n * d;
       i += int64_t{gridDim.x} * kThreads) {
    s[i] = static_cast<store_t>(dinv[i / d] * *alpha_top * static_cast<acc_t>(x[i]));
  }
}

// L = 0: out = alpha_0 G + G0 over every row, G and G0 the compact x and
// extra of sum_listed_kernel.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    listed_to_dense_kernel(const int32_t* __restrict__ slot, int64_t n, int64_t d,
                           const scalar_t* __restrict__ g,
                           const at::opmath_type<scalar_t>* __restrict__ extra,
                           const at::opmath_type<scalar_t>* __restrict__ alpha,
                           scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < n * d;
       i += int64_t{gridDim.x} * kThreads) {
    const int64_t t = slot[i / d];
    acc_t v = 0;
    if (t >= 0) {
      v = alpha[0] * static_cast<acc_t>(g[t * d + i % d]);
      if (extra != nullptr) v += extra[t * d + i % d];
    }
    out[i] = static_cast<scalar_t>(v);
  }
}

// The launch geometry of a graph's sweeps.
struct Plan {
  int log2_group;
  int64_t blocks;
  int64_t items;
};

inline Plan make_plan(int64_t n, int64_t num_edges, int64_t d, int vec, int64_t size) {
  const int64_t vectors = (d + vec - 1) / vec;
  int log2_group = 0;
  while ((int64_t{1} << log2_group) < std::min<int64_t>(vectors, 32)) ++log2_group;
  const int64_t groups_per_block = kThreads >> log2_group;
  const int64_t items = mp::num_items(n, num_edges, size);
  const int64_t blocks =
      std::min((items + groups_per_block - 1) / groups_per_block, kMaxBlocks);
  return {log2_group, std::max<int64_t>(blocks, 1), items};
}

// Launches kernel(args...) on `blocks` blocks of kThreads threads: the one
// place that launches, with <<<...>>> on the GPU, on CPU threads in the emulator.
template <typename... Params, typename... Args>
void launch_kernel(const char* name, void (*kernel)(Params...), int64_t blocks,
                   cudaStream_t stream, const Args&... args) {
#if defined(__CUDACC__)
  (void)name;
  kernel<<<blocks, kThreads, 0, stream>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#else
  (void)stream;
  cuda_emulation::launch(name, blocks, kThreads, [&] { kernel(args...); });
#endif
}

// Runs one sweep and its fix-up.
template <int V, Epilogue kEpilogue, Source kSource, typename scalar_t, typename store_t,
          typename index_t>
void launch_sweep(const Sweep<scalar_t, store_t, index_t>& s, const Plan& plan,
                  cudaStream_t stream) {
  launch_kernel("sweep_kernel", sweep_kernel<scalar_t, store_t, index_t, V, kEpilogue, kSource>,
                plan.blocks, stream, s, plan.log2_group);
  launch_kernel("fixup_kernel", fixup_kernel<scalar_t, store_t, index_t, V, kEpilogue>,
                plan.blocks, stream, s, plan.log2_group);
}

// Blocks for an elementwise kernel over `count` indices.
inline int64_t elementwise_blocks(int64_t count) {
  return std::max<int64_t>(1, std::min((count + kThreads - 1) / kThreads, kMaxBlocks));
}

// V values per vector: 16 bytes of x's dtype where d is a multiple of it and
// every [N, d] array of the call is aligned to a vector; else 1.
template <typename scalar_t>
constexpr int kVec = 16 / sizeof(scalar_t);

template <typename scalar_t>
bool can_vectorize(int64_t d, std::initializer_list<const void*> arrays) {
  constexpr int V = kVec<scalar_t>;
  if (d % V != 0) return false;
  for (const void* p : arrays) {
    if (reinterpret_cast<std::uintptr_t>(p) % (V * sizeof(scalar_t)) != 0) return false;
  }
  return true;
}

// The graph as the kernels read it (device pointers); weight null: all 1.
template <typename scalar_t, typename index_t>
struct DeviceGraph {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t* rowptr;
  const index_t* col;
  const acc_t* weight;
  const acc_t* dinv;
  int64_t num_rows, num_edges;
};

// allocate(bytes) returns device memory, aligned for any vector, that lives
// until the op returns (the caller's stream orders its reuse).
template <typename T, typename Allocate>
T* allocate_array(Allocate& allocate, int64_t count) {
  return static_cast<T*>(allocate(count * static_cast<int64_t>(sizeof(T))));
}

// A sweep over the graph with its scratch (the pieces of cut rows and the
// pending rows), whose layers are stored as store_t.
template <typename store_t, typename scalar_t, typename index_t, typename Allocate>
Sweep<scalar_t, store_t, index_t> base_sweep(const DeviceGraph<scalar_t, index_t>& graph,
                                             int64_t d, int64_t item_size, const Plan& plan,
                                             Allocate& allocate) {
  using acc_t = at::opmath_type<scalar_t>;
  Sweep<scalar_t, store_t, index_t> s{};
  s.rowptr = graph.rowptr;
  s.col = graph.col;
  s.weight = graph.weight;
  s.dinv = graph.dinv;
  s.num_rows = graph.num_rows;
  s.num_edges = graph.num_edges;
  s.d = d;
  s.item_size = item_size;
  s.carry = allocate_array<acc_t>(allocate, plan.items * d);
  s.tail = allocate_array<acc_t>(allocate, plan.items * d);
  s.pending = allocate_array<int64_t>(allocate, plan.items);
  return s;
}

// The source of the first sweep of a Horner scheme whose layers are stored as
// store_t: x itself where x is in that type (each row scaled as it is
// gathered: no pass writes s_L); else the layer s_L = dinv * alpha_L * x,
// rounded to store_t once by a pass of its own, as the CPU kernels round it.
template <typename scalar_t, typename store_t>
constexpr Source kFirstSource = std::is_same_v<scalar_t, store_t> ? Source::kX : Source::kLayer;
template <typename scalar_t, typename store_t>
constexpr Source kCompactFirstSource =
    std::is_same_v<scalar_t, store_t> ? Source::kCompactX : Source::kCompactLayer;

// Horner's scheme: h_L = alpha_L x; h_l = alpha_l x + M h_{l+1}; out = h_0,
// with s.x, s.x_slot, s.extra and s.out set by the caller, and s.src too where
// the first sweep gathers a stored layer (kFirst: kLayer, kCompactLayer). The
// first sweep gathers x itself for kFirst kX (kCompactX for a compact x); the
// others gather s_l = dinv h_l, which each sweep but the last writes to
// `next`, alternating with `spare`. The last sweep computes the rows of
// out_slot only, when not null.
template <int V, Source kFirst, typename scalar_t, typename store_t, typename index_t>
void horner_launch(Sweep<scalar_t, store_t, index_t> s, const Plan& plan,
                   const at::opmath_type<scalar_t>* alpha, int64_t L, store_t* next,
                   store_t* spare, const int32_t* out_slot, cudaStream_t stream) {
  s.src_x = s.x;
  for (int64_t l = L - 1; l >= 0; --l) {
    const bool first = l == L - 1;
    s.src_scale = first && gathers_x(kFirst) ? alpha + L : nullptr;
    s.alpha = alpha + l;
    s.s_out = l > 0 ? next : nullptr;
    s.out_slot = l == 0 ? out_slot : nullptr;
    if (l > 0 && first) {
      launch_sweep<V, Epilogue::kNext, kFirst>(s, plan, stream);
    } else if (l > 0) {
      launch_sweep<V, Epilogue::kNext, Source::kLayer>(s, plan, stream);
    } else if (first) {
      launch_sweep<V, Epilogue::kFinal, kFirst>(s, plan, stream);
    } else {
      launch_sweep<V, Epilogue::kFinal, Source::kLayer>(s, plan, stream);
    }
    s.src = next;
    std::swap(next, spare);
  }
}

// Runs horner_launch (L >= 1) with its buffers, [N, d] arrays of store_t:
// the layers s_{L-1} .. s_1 that the sweeps write for the next one to gather
// (none for L = 1), and for kFirst kLayer the layer s_L before them, which a
// pass writes here; two buffers at most, used in turn.
template <Source kFirst, typename scalar_t, typename store_t, typename index_t, typename Allocate>
void run_horner(Sweep<scalar_t, store_t, index_t> s, const Plan& plan, bool vec,
                const at::opmath_type<scalar_t>* alpha, int64_t L, const int32_t* out_slot,
                Allocate& allocate, cudaStream_t stream) {
  const int64_t n = s.num_rows, d = s.d;
  const int64_t stored = L - 1 + (kFirst == Source::kLayer ? 1 : 0);
  store_t* next = stored >= 1 ? allocate_array<store_t>(allocate, n * d) : nullptr;
  store_t* spare = stored >= 2 ? allocate_array<store_t>(allocate, n * d) : next;
  if constexpr (kFirst == Source::kLayer) {
    launch_kernel("scale_kernel", scale_kernel<scalar_t, store_t>, elementwise_blocks(n * d),
                  stream, s.x, s.dinv, alpha + L, n, d, next);
    s.src = next;
    std::swap(next, spare);
  }
  if (vec) {
    horner_launch<kVec<scalar_t>, kFirst>(s, plan, alpha, L, next, spare, out_slot, stream);
  } else {
    horner_launch<1, kFirst>(s, plan, alpha, L, next, spare, out_slot, stream);
  }
}

// out = sum_l alpha[l] M^l x for l = 0..L, on the graph's N x d rows, with
// alpha (L + 1 values) on the device, the layers that the sweeps gather
// stored as store_t (x's type, or bfloat16 for float32 x). Needs L >= 1,
// N >= 1, d >= 1: the entry points answer the other cases without a kernel.
template <typename store_t, typename scalar_t, typename index_t, typename Allocate>
void propagate_sweeps(const DeviceGraph<scalar_t, index_t>& graph, int64_t d, int64_t item_size,
                      const scalar_t* x, const at::opmath_type<scalar_t>* alpha, int64_t L,
                      scalar_t* out, Allocate&& allocate, cudaStream_t stream) {
  const bool vec = can_vectorize<scalar_t>(d, {x, out});
  const Plan plan =
      make_plan(graph.num_rows, graph.num_edges, d, vec ? kVec<scalar_t> : 1, item_size);
  auto s = base_sweep<store_t>(graph, d, item_size, plan, allocate);
  s.x = x;
  s.out = out;
  run_horner<kFirstSource<scalar_t, store_t>>(s, plan, vec, alpha, L, nullptr, allocate, stream);
}

// slot (N entries) for the listed rows rows[0 .. num_listed).
template <typename Allocate>
int32_t* list_rows(const int64_t* rows, int64_t num_listed, int64_t n, Allocate& allocate,
                   cudaStream_t stream) {
  int32_t* slot = allocate_array<int32_t>(allocate, n);
  launch_kernel("fill_kernel", fill_kernel<int32_t>, elementwise_blocks(n), stream, slot, n,
                int32_t{-1});
  launch_kernel("list_rows_kernel", list_rows_kernel<int32_t>, elementwise_blocks(num_listed), stream,
                rows, num_listed, slot);
  return slot;
}

// out[i] = (sum_l alpha[l] M^l x)[rows[i]] for i < num_listed (out is
// [num_listed, d]; rows are node ids, repeats allowed, fewer than 2^31): the
// sweeps of propagate_sweeps, but the last one computes each listed row once
// and reads only its edges. The numbers are those of propagate_sweeps (with
// the same store_t), bit for bit. Needs L >= 1, N >= 1, d >= 1, num_listed >= 1.
template <typename store_t, typename scalar_t, typename index_t, typename Allocate>
void propagate_rows_sweeps(const DeviceGraph<scalar_t, index_t>& graph, int64_t d,
                           int64_t item_size, const scalar_t* x,
                           const at::opmath_type<scalar_t>* alpha, int64_t L, const int64_t* rows,
                           int64_t num_listed, scalar_t* out, Allocate&& allocate,
                           cudaStream_t stream) {
  const bool vec = can_vectorize<scalar_t>(d, {x, out});
  const Plan plan =
      make_plan(graph.num_rows, graph.num_edges, d, vec ? kVec<scalar_t> : 1, item_size);
  auto s = base_sweep<store_t>(graph, d, item_size, plan, allocate);
  const int32_t* slot = list_rows(rows, num_listed, graph.num_rows, allocate, stream);
  s.x = x;
  s.out = out;
  run_horner<kFirstSource<scalar_t, store_t>>(s, plan, vec, alpha, L, slot, allocate, stream);
  launch_kernel("copy_repeats_kernel", copy_repeats_kernel<scalar_t>,
                elementwise_blocks(num_listed * d), stream, rows, slot, num_listed, d, out);
}

// The gradient of propagate_rows: out = sum_l alpha[l] (M^T)^l G + G0 over all
// N rows (out is [N, d]), where G and G0 are zero outside the listed rows and
// hold grad and grad_x (null: none) there, repeats summed in list order. The
// graph is M^T's. The listed rows come sorted: sorted (rows sorted stably)
// and order (the entry of rows at each sorted position). G is kept compact,
// one row per listed node, and the first sweep gathers only those rows (no
// atomics: the numbers are deterministic, and those of propagate_sweeps on
// the dense G with the same store_t, bit for bit, where no row is listed
// twice). Where store_t is not grad's type, the first layer s_L is stored
// compact too, beside G. Needs N >= 1, d >= 1, num_listed >= 1, fewer than
// 2^31; L = 0 too.
template <typename store_t, typename scalar_t, typename index_t, typename Allocate>
void propagate_rows_backward_sweeps(const DeviceGraph<scalar_t, index_t>& graph_t, int64_t d,
                                    int64_t item_size, const scalar_t* grad,
                                    const scalar_t* grad_x,
                                    const at::opmath_type<scalar_t>* alpha, int64_t L,
                                    const int64_t* sorted, const int64_t* order,
                                    int64_t num_listed, scalar_t* out, Allocate&& allocate,
                                    cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr Source kFirst = kCompactFirstSource<scalar_t, store_t>;
  const int64_t n = graph_t.num_rows;
  const int32_t* slot = list_rows(sorted, num_listed, n, allocate, stream);
  scalar_t* g = allocate_array<scalar_t>(allocate, num_listed * d);
  acc_t* extra = grad_x != nullptr ? allocate_array<acc_t>(allocate, num_listed * d) : nullptr;
  store_t* top = kFirst == Source::kCompactLayer && L >= 1
                     ? allocate_array<store_t>(allocate, num_listed * d)
                     : nullptr;
  launch_kernel("sum_listed_kernel", sum_listed_kernel<scalar_t, store_t>,
                elementwise_blocks(num_listed * d), stream, sorted, order, slot, num_listed, d,
                grad, grad_x, g, extra, graph_t.dinv, alpha + L, top);
  if (L == 0) {
    launch_kernel("listed_to_dense_kernel", listed_to_dense_kernel<scalar_t>,
                  elementwise_blocks(n * d), stream, slot, n, d, static_cast<const scalar_t*>(g),
                  static_cast<const acc_t*>(extra), alpha, out);
    return;
  }
  // extra and top are read in vectors of V: allocate aligns them for any vector.
  const bool vec = can_vectorize<scalar_t>(d, {g, out});
  const Plan plan = make_plan(n, graph_t.num_edges, d, vec ? kVec<scalar_t> : 1, item_size);
  auto s = base_sweep<store_t>(graph_t, d, item_size, plan, allocate);
  s.x = g;
  s.x_slot = slot;
  s.extra = extra;
  s.src = top;
  s.out = out;
  run_horner<kFirst>(s, plan, vec, alpha, L, nullptr, allocate, stream);
}

template <int V, typename scalar_t, typename index_t>
void layer_dots_launch(Sweep<scalar_t, scalar_t, index_t> s, const Plan& plan, const scalar_t* x,
                       const scalar_t* grad, int64_t L, scalar_t* buf_a, scalar_t* buf_b,
                       at::opmath_type<scalar_t>* partial, at::opmath_type<scalar_t>* dots,
                       cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  // Sweep l makes h_l = M h_{l-1} (h_0 = x) and adds <h_l, grad> to dots[l];
  // the first also adds <x, grad> to dots[0].
  const int64_t per_layer = 2 * plan.blocks;
  s.x = grad;
  s.partial0 = partial;
  for (int64_t l = 1; l <= L; ++l) {
    const bool from_x = l == 1;
    s.src_x = x;
    s.src = buf_a;
    s.dot0_x = from_x ? x : nullptr;
    s.s_out = l < L ? buf_b : nullptr;  // the last layer's s is never read
    s.partial = partial + l * per_layer;
    if (from_x) {
      launch_sweep<V, Epilogue::kDots, Source::kX>(s, plan, stream);
    } else {
      launch_sweep<V, Epilogue::kDots, Source::kLayer>(s, plan, stream);
    }
    std::swap(buf_a, buf_b);
  }
  launch_kernel("sum_partials_kernel", sum_partials_kernel<acc_t>, L + 1, stream,
                static_cast<const acc_t*>(partial), per_layer, dots);
}

// dots[l] = <M^l x, grad> for l = 0..L (L + 1 values of x's accumulation
// type, on the device). Needs L >= 1, N >= 1, d >= 1, as propagate_sweeps.
template <typename scalar_t, typename index_t, typename Allocate>
void layer_dots_sweeps(const DeviceGraph<scalar_t, index_t>& graph, int64_t d, int64_t item_size,
                       const scalar_t* x, const scalar_t* grad, int64_t L,
                       at::opmath_type<scalar_t>* dots, Allocate&& allocate,
                       cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = graph.num_rows;
  const bool vec = can_vectorize<scalar_t>(d, {x, grad});
  const Plan plan = make_plan(n, graph.num_edges, d, vec ? kVec<scalar_t> : 1, item_size);
  const auto s = base_sweep<scalar_t>(graph, d, item_size, plan, allocate);
  // Every block of every sweep and fix-up writes its partials: no zeroing.
  acc_t* partial = allocate_array<acc_t>(allocate, (L + 1) * 2 * plan.blocks);
  scalar_t* buf_a = L > 1 ? allocate_array<scalar_t>(allocate, n * d) : nullptr;
  scalar_t* buf_b = L > 2 ? allocate_array<scalar_t>(allocate, n * d) : buf_a;
  if (vec) {
    layer_dots_launch<kVec<scalar_t>>(s, plan, x, grad, L, buf_b, buf_a, partial, dots, stream);
  } else {
    layer_dots_launch<1>(s, plan, x, grad, L, buf_b, buf_a, partial, dots, stream);
  }
}

}  // namespace cuda_kernels
}  // namespace lightgcn_ext
