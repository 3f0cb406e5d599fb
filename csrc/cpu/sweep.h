// The row sweep that every CPU kernel of lightgcn_ext is built on: for each
// row r of a CSR and each feature tile, acc = sum_k w_k * in[col_k, tile],
// handed to an epilogue. The gathered rows `in` may be stored in a narrower
// type than the sums (bfloat16 rows, float32 sums: half the bytes gathered).
// propagate_cpu.cpp fuses the normalization into its
// epilogues; bench_ops_cpu.cpp runs the same sweep with none, which is the
// floor the benchmarks hold the kernels against. One copy of the loop, so that
// the floor moves with the kernels' loop, flags and instruction set.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

namespace lightgcn_ext {
namespace cpu {

// Rows are cut into contiguous chunks of about this many edges (each row
// counts as one extra unit), so that a power-law degree distribution does not
// leave one thread with the hubs, and threads take chunks as they finish
// (`for_each_chunk`), so that a core shared with another process does not
// hold the others up. The chunking does not depend on the thread count,
// which keeps reductions deterministic.
constexpr int64_t kWorkPerChunk = 8192;

inline std::vector<int64_t> balanced_row_chunks(const int64_t* rowptr, int64_t num_rows) {
  const int64_t total = rowptr[num_rows] + num_rows;
  const int64_t num_chunks = std::max<int64_t>(1, std::min(num_rows, total / kWorkPerChunk));
  std::vector<int64_t> bounds(num_chunks + 1, num_rows);
  bounds[0] = 0;
  for (int64_t c = 1; c < num_chunks; ++c) {
    // First row whose cumulative work (edges + rows before it) reaches c/num_chunks.
    const int64_t target = total * c / num_chunks;
    int64_t lo = bounds[c - 1], hi = num_rows;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (rowptr[mid] + mid < target) lo = mid + 1; else hi = mid;
    }
    bounds[c] = lo;
  }
  return bounds;
}

// Calls f(c) for c in [0, num_chunks) on torch's intra-op threads, each
// thread taking the next chunk when it is done with one.
template <typename F>
void for_each_chunk(int64_t num_chunks, const F& f) {
  std::atomic<int64_t> next{0};
  const int64_t num_workers = std::min<int64_t>(at::get_num_threads(), num_chunks);
  at::parallel_for(0, num_workers, 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1); c < num_chunks; c = next.fetch_add(1)) f(c);
  });
}

template <typename acc_t, typename index_t>
struct Csr {
  const int64_t* rowptr;
  const index_t* col;
  const acc_t* weight;  // null: every edge has weight 1
  const acc_t* dinv;
  int64_t num_rows;
};

// Features are processed in tiles of kTile values so that the accumulators
// stay in registers; kTile is a compile-time constant, which makes the
// feature loop contiguous vector loads and FMAs. (A loop whose trip count the
// compiler cannot see was vectorized across edges with gathers instead, which
// ran 10x slower on AMD.)
template <typename acc_t>
constexpr int kTile = 64 / sizeof(acc_t) * 4;  // 64 floats or 32 doubles

// The gathered rows are scattered over a table larger than the caches, and
// the hardware prefetcher cannot guess them: the loop requests the tile of
// the edge kPrefetchEdges ahead, so that many rows are in flight while it
// sums. In a sweep of every row, the rows of a chunk are contiguous in col and
// the request runs on into the next rows; past a listed row's end, it looks
// into the next listed row's edges. On Gowalla (d = 64, mean degree 23; a
// standalone copy of this loop on the AMD EPYC of the benchmarks, 60
// interleaved rounds), running on into the next rows took 0.88x the time of
// stopping at each row's end for a float32 sweep, and 0.55-0.61x for a
// bfloat16 one (most of whose rows had prefetched nothing); 16 edges ahead
// beat 4 and 8 (float32) and 8 and 32 (bfloat16).
constexpr int64_t kPrefetchEdges = 16;

#if defined(__GNUC__) || defined(__clang__)
#define LIGHTGCN_EXT_ALWAYS_INLINE __attribute__((always_inline))
#else
#define LIGHTGCN_EXT_ALWAYS_INLINE
#endif
constexpr int kCacheLine = 64;

template <int T, typename in_t>
inline void prefetch_tile(const in_t* p) {
#if defined(__GNUC__) || defined(__clang__)
  for (int offset = 0; offset < T * static_cast<int>(sizeof(in_t)); offset += kCacheLine) {
    __builtin_prefetch(reinterpret_cast<const char*>(p) + offset);
  }
#endif
}

// The rows a sweep computes: every row of the CSR (rows == nullptr), or the
// listed ones, in list order (a row may be listed more than once).
struct RowList {
  const int64_t* rows = nullptr;
  int64_t row(int64_t i) const { return rows == nullptr ? i : rows[i]; }
};

// The positions [i0, i1) of chunk c: for every row r = rows.row(i) and
// feature tile [j0, j0 + width), computes acc = sum_k w_k * in[col_k, j0 :
// j0 + width] in acc_t and calls epilogue(c, i, j0, width, acc), i the
// position (the row itself when every row is swept). kScaled: each gathered
// row is first multiplied by dinv[col_k] * source_alpha, so that the first
// sweep of a Horner scheme reads x itself rather than a scaled copy written
// by a pass of its own (the products are the copy's, rounded alike). Always inlined, so that
// each caller below compiles it for its own instruction set.
template <bool kWeighted, bool kScaled, typename acc_t, typename in_t, typename index_t,
          typename Epilogue>
LIGHTGCN_EXT_ALWAYS_INLINE inline void sweep_chunk(const Csr<acc_t, index_t>& g, const in_t* in,
                                                  int64_t d, RowList rows, int64_t c, int64_t i0,
                                                  int64_t i1, const Epilogue& epilogue,
                                                  acc_t source_alpha) {
  constexpr int T = kTile<acc_t>;
  alignas(64) acc_t acc[T];
  // The end of the edges a prefetch may request: the chunk's, where its rows
  // are contiguous (every row swept); else the row's, and past it, the edges
  // [next_begin, next_end) of the next listed row.
  const int64_t chunk_end = rows.rows == nullptr ? g.rowptr[i1] : 0;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t r = rows.row(i);
    const int64_t begin = g.rowptr[r], end = g.rowptr[r + 1];
    const int64_t prefetch_end = rows.rows == nullptr ? chunk_end : end;
    int64_t next_begin = 0, next_end = 0;
    if (rows.rows != nullptr && i + 1 < i1) {
      next_begin = g.rowptr[rows.rows[i + 1]];
      next_end = g.rowptr[rows.rows[i + 1] + 1];
    }
    for (int64_t j0 = 0; j0 < d; j0 += T) {
      const int64_t width = std::min<int64_t>(T, d - j0);
      for (int t = 0; t < T; ++t) acc[t] = acc_t(0);
      if (width == T) {
        for (int64_t k = begin; k < end; ++k) {
          const int64_t ahead = k + kPrefetchEdges;
          if (ahead < prefetch_end) {
            prefetch_tile<T>(in + static_cast<int64_t>(g.col[ahead]) * d + j0);
          } else if (ahead - end + next_begin < next_end) {
            prefetch_tile<T>(in + static_cast<int64_t>(g.col[ahead - end + next_begin]) * d + j0);
          }
          const int64_t source = g.col[k];
          const in_t* src = in + source * d + j0;
          const acc_t w = kWeighted ? g.weight[k] : acc_t(1);
          const acc_t scale = kScaled ? g.dinv[source] * source_alpha : acc_t(1);
          for (int t = 0; t < T; ++t) {
            const acc_t v = kScaled ? scale * static_cast<acc_t>(src[t]) : static_cast<acc_t>(src[t]);
            acc[t] += kWeighted ? w * v : v;
          }
        }
      } else {
        for (int64_t k = begin; k < end; ++k) {
          const int64_t source = g.col[k];
          const in_t* src = in + source * d + j0;
          const acc_t w = kWeighted ? g.weight[k] : acc_t(1);
          const acc_t scale = kScaled ? g.dinv[source] * source_alpha : acc_t(1);
          for (int64_t t = 0; t < width; ++t) {
            const acc_t v = kScaled ? scale * static_cast<acc_t>(src[t]) : static_cast<acc_t>(src[t]);
            acc[t] += kWeighted ? w * v : v;
          }
        }
      }
      epilogue(c, i, j0, width, acc);
    }
  }
}

// The build targets baseline x86-64 (SSE2) so that the wheel runs anywhere;
// where the CPU has AVX2 and FMA, or AVX-512, the sweep can run a copy
// compiled for them. The copies differ in vector width only: the build turns
// off the fusing of multiplies and adds (-ffp-contract=off), which the
// compiler would otherwise do where each instruction set allows it, so every
// copy computes the same operations in the same order, and the same bits.
#if defined(__GNUC__) && defined(__x86_64__)
#define LIGHTGCN_EXT_HAS_AVX2_COPY 1
template <bool kWeighted, bool kScaled, typename acc_t, typename in_t, typename index_t,
          typename Epilogue>
__attribute__((target("avx2,fma"))) void sweep_chunk_avx2(
    const Csr<acc_t, index_t>& g, const in_t* in, int64_t d, RowList rows, int64_t c, int64_t i0,
    int64_t i1, const Epilogue& epilogue, acc_t source_alpha) {
  sweep_chunk<kWeighted, kScaled>(g, in, d, rows, c, i0, i1, epilogue, source_alpha);
}

template <bool kWeighted, bool kScaled, typename acc_t, typename in_t, typename index_t,
          typename Epilogue>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))) void sweep_chunk_avx512(
    const Csr<acc_t, index_t>& g, const in_t* in, int64_t d, RowList rows, int64_t c, int64_t i0,
    int64_t i1, const Epilogue& epilogue, acc_t source_alpha) {
  sweep_chunk<kWeighted, kScaled>(g, in, d, rows, c, i0, i1, epilogue, source_alpha);
}
#endif

// Which copy of the sweep runs. "auto" picks the widest this CPU has, a
// choice made by measurement: on the AMD EPYC of the benchmarks (Gowalla,
// d = 64, 2 threads, python -m bench.bench_propagate, which times the chosen
// copy beside the next narrower one, interleaved) one bare-gather sweep took
// 3.8 ms with AVX2 and 6.7 ms without, the whole forward 12.7 ms and 22.0 ms
// (README, Benchmarks); an AVX-512 sweep took 0.85-0.89x the time of an AVX2
// one in float32 and 0.73x in bfloat16 (its conversions of bfloat16 rows to
// float32 are half the instructions). The environment variable LIGHTGCN_EXT_CPU_ISA
// (auto, avx512, avx2, baseline) sets the choice once, at the first sweep; the
// private op lightgcn_ext::_cpu_isa changes it at run time, so that a
// benchmark can time copies side by side in one process.
enum class Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

inline bool cpu_has_avx2_fma() {
#if defined(LIGHTGCN_EXT_HAS_AVX2_COPY)
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

inline bool cpu_has_avx512() {
#if defined(LIGHTGCN_EXT_HAS_AVX2_COPY)
  static const bool has = cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return has;
#else
  return false;
#endif
}

inline const char* isa_name(Isa isa) {
  return isa == Isa::kAvx512 ? "avx512" : isa == Isa::kAvx2 ? "avx2" : "baseline";
}

// The Isa that `name` (auto, avx512, avx2 or baseline) selects on this CPU;
// `what` names the setting in the error.
inline Isa parse_isa(const std::string& name, const char* what) {
  if (name == "auto") {
    return cpu_has_avx512() ? Isa::kAvx512 : cpu_has_avx2_fma() ? Isa::kAvx2 : Isa::kBaseline;
  }
  if (name == "baseline") return Isa::kBaseline;
  TORCH_CHECK(name == "avx2" || name == "avx512", what,
              " must be auto, avx512, avx2 or baseline, got '", name, "'");
  if (name == "avx512") {
    TORCH_CHECK(cpu_has_avx512(), what,
                " = avx512, but this CPU (or build) has no AVX-512 (F, BW, VL, DQ)");
    return Isa::kAvx512;
  }
  TORCH_CHECK(cpu_has_avx2_fma(), what, " = avx2, but this CPU (or build) has no AVX2+FMA");
  return Isa::kAvx2;
}

inline std::atomic<int>& isa_setting() {
  static std::atomic<int> setting{[] {
    const char* env = std::getenv("LIGHTGCN_EXT_CPU_ISA");
    return static_cast<int>(parse_isa(env && *env ? env : "auto", "LIGHTGCN_EXT_CPU_ISA"));
  }()};
  return setting;
}

inline Isa current_isa() { return static_cast<Isa>(isa_setting().load(std::memory_order_relaxed)); }

template <bool kWeighted, bool kScaled, typename acc_t, typename in_t, typename index_t,
          typename Epilogue>
void sweep_rows(const Csr<acc_t, index_t>& g, const in_t* in, int64_t d, RowList rows,
                const std::vector<int64_t>& chunks, const Epilogue& epilogue, acc_t source_alpha) {
  // Read once per sweep: a change of the setting mid-sweep cannot mix copies.
  const Isa isa = current_isa();
  for_each_chunk(static_cast<int64_t>(chunks.size()) - 1, [&](int64_t c) {
#if defined(LIGHTGCN_EXT_HAS_AVX2_COPY)
    if (isa == Isa::kAvx512) {
      sweep_chunk_avx512<kWeighted, kScaled>(g, in, d, rows, c, chunks[c], chunks[c + 1], epilogue,
                                               source_alpha);
      return;
    }
    if (isa == Isa::kAvx2) {
      sweep_chunk_avx2<kWeighted, kScaled>(g, in, d, rows, c, chunks[c], chunks[c + 1], epilogue,
                                             source_alpha);
      return;
    }
#endif
    sweep_chunk<kWeighted, kScaled>(g, in, d, rows, c, chunks[c], chunks[c + 1], epilogue,
                                    source_alpha);
  });
}

// One sweep over the positions that `chunks` cuts (balanced_row_chunks of
// the CSR for every row; listed_row_chunks for a list); kScaled and
// source_alpha as for sweep_chunk.
template <bool kScaled = false, typename acc_t, typename in_t, typename index_t,
          typename Epilogue>
void sweep(const Csr<acc_t, index_t>& g, const in_t* in, int64_t d,
           const std::vector<int64_t>& chunks, const Epilogue& epilogue, RowList rows = {},
           acc_t source_alpha = acc_t(1)) {
  if (g.weight != nullptr) {
    sweep_rows<true, kScaled>(g, in, d, rows, chunks, epilogue, source_alpha);
  } else {
    sweep_rows<false, kScaled>(g, in, d, rows, chunks, epilogue, source_alpha);
  }
}

// The chunks of a sweep over the listed rows rows[0 .. num_listed), balanced
// by their degrees as balanced_row_chunks balances a whole CSR.
inline std::vector<int64_t> listed_row_chunks(const int64_t* rowptr, const int64_t* rows,
                                              int64_t num_listed) {
  std::vector<int64_t> listed_ptr(num_listed + 1, 0);
  for (int64_t i = 0; i < num_listed; ++i) {
    listed_ptr[i + 1] = listed_ptr[i] + rowptr[rows[i] + 1] - rowptr[rows[i]];
  }
  return balanced_row_chunks(listed_ptr.data(), num_listed);
}

}  // namespace cpu
}  // namespace lightgcn_ext
