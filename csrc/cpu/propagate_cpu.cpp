// CPU kernels of `propagate` and `layer_dots`.
//
// Both are L sweeps of one row-wise CSR SpMM with a fused epilogue. The trick
// that keeps the sweeps cheap: the kernels never gather dinv per edge. They
// carry the *source-scaled* features s = dinv * h, so a row of M h is
// dinv[r] * sum_k w_k s[col_k], and the next s is written by the epilogue.
// Working memory: two [N, d] buffers, whatever L and E, in the accumulation
// type, or in bfloat16 where the op's bf16 flag asks for it (float32
// features): the rows the sweeps gather are then half the bytes, while every
// sum, the result and x's own contribution stay float32.
#include "../checks.h"
#include "sweep.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace lightgcn_ext {
namespace {

using cpu::balanced_row_chunks;
using cpu::Csr;
using cpu::for_each_chunk;
using cpu::listed_row_chunks;
using cpu::sweep;

// Applies f(r) to every row of an [n, d] array, in parallel.
template <typename F>
void for_each_row(int64_t n, int64_t d, const F& f) {
  at::parallel_for(0, n, std::max<int64_t>(1, 32768 / std::max<int64_t>(d, 1)),
                   [&](int64_t r0, int64_t r1) {
                     for (int64_t r = r0; r < r1; ++r) f(r);
                   });
}

// The features x that each layer of Horner's scheme adds, row by row: a
// dense [N, d] array (slot == nullptr), or a compact one holding the rows r
// with slot[r] >= 0 at position slot[r], every other row being zero (the
// gradient of a batch, which is zero outside the batch's rows). An empty
// Rows (data == nullptr) is zero everywhere.
template <typename src_t>
struct Rows {
  const src_t* data = nullptr;
  const int64_t* slot = nullptr;
  int64_t d = 0;

  // Row r, or nullptr where it is zero.
  const src_t* row(int64_t r) const {
    if (data == nullptr) return nullptr;
    if (slot == nullptr) return data + r * d;
    return slot[r] < 0 ? nullptr : data + slot[r] * d;
  }
};

// The first sweep of a backward restricted to a batch (see horner_kernel).
template <typename acc_t, typename store_t, typename index_t>
struct TopLayer {
  Csr<acc_t, index_t> graph;
  const store_t* s;
};

// (index_t is deduced from the graph alone: top may be a plain nullptr.)
template <typename T>
struct NotDeducedImpl {
  using type = T;
};
template <typename T>
using NotDeduced = typename NotDeducedImpl<T>::type;

// Horner's scheme over the operator g: h_L = alpha_L x; h_l = alpha_l x +
// M h_{l+1}; the result h_0 + extra. The sweeps carry s_l = dinv * h_l.
// Two options restrict sweeps to where the result can be nonzero or is read,
// without changing the order of any sum (so the numbers are those of the
// unrestricted scheme):
//  * top != nullptr: the first sweep (layer L-1) runs over top->graph, a
//    CSR whose cols index top->s, the rows of s_L that are not zero (the
//    backward of a batch). Otherwise s_L = dinv * alpha_L * x over g.
//  * last_rows.rows != nullptr: the last sweep (layer 0) computes only the
//    num_out_rows listed rows; out holds one row per listed position.
// The layers s_L .. s_1 that the sweeps gather (s_L only where the first
// sweep cannot read x itself) are stored in buf_a and buf_b as store_t (the
// accumulation type, or bfloat16); the sums are in the accumulation type.
// buf_b may be out's memory where out has every row and the type store_t.
template <typename scalar_t, typename store_t, typename src_t, typename index_t>
void horner_kernel(const Csr<at::opmath_type<scalar_t>, index_t>& g, const Rows<src_t>& x,
                   const Rows<at::opmath_type<scalar_t>>& extra,
                   const std::vector<at::opmath_type<scalar_t>>& alpha, int64_t d,
                   const NotDeduced<TopLayer<at::opmath_type<scalar_t>, store_t, index_t>>* top,
                   cpu::RowList last_rows, int64_t num_out_rows, store_t* buf_a, store_t* buf_b,
                   scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = g.num_rows, L = static_cast<int64_t>(alpha.size()) - 1;
  const acc_t* dinv = g.dinv;
  // s_1, which the last sweep reads while it writes out, is always in
  // buf_a, so that buf_b may be the output's own memory.
  if (L % 2 == 0) std::swap(buf_a, buf_b);
  // Where x is dense and the layers are stored in its own type, the first
  // sweep reads x itself, each row scaled by dinv * alpha_L as it is
  // gathered: no pass writes s_L, and the sums are the same.
  constexpr bool kStoredAsX = std::is_same_v<store_t, acc_t> && std::is_same_v<src_t, acc_t>;
  const bool scaled_first = kStoredAsX && top == nullptr && x.data != nullptr && x.slot == nullptr;
  if (top == nullptr && !scaled_first) {
    const acc_t alpha_last = alpha[L];
    for_each_row(n, d, [&](int64_t r) {
      const src_t* xr = x.row(r);
      store_t* s = buf_a + r * d;
      if (xr == nullptr) {
        std::fill(s, s + d, store_t(0));
      } else {
        for (int64_t j = 0; j < d; ++j) {
          s[j] = static_cast<store_t>(dinv[r] * alpha_last * static_cast<acc_t>(xr[j]));
        }
      }
    });
  }
  const auto chunks = balanced_row_chunks(g.rowptr, n);
  for (int64_t l = L - 1; l >= 0; --l) {
    const acc_t a = alpha[l];
    const bool first = l == L - 1 && top != nullptr;
    const auto& graph = first ? top->graph : g;
    const store_t* in = first ? top->s : buf_a;
    const auto run_sweep = [&](const std::vector<int64_t>& sweep_chunks, const auto& epilogue,
                               cpu::RowList rows) {
      if constexpr (kStoredAsX) {
        if (scaled_first && l == L - 1) {
          sweep<true>(graph, x.data, d, sweep_chunks, epilogue, rows, alpha[L]);
          return;
        }
      }
      sweep(graph, in, d, sweep_chunks, epilogue, rows);
    };
    if (l == 0) {
      const auto out_chunks =
          last_rows.rows != nullptr ? listed_row_chunks(graph.rowptr, last_rows.rows, num_out_rows)
          : first                   ? balanced_row_chunks(graph.rowptr, n)
                                    : chunks;
      const auto epilogue = [&](int64_t, int64_t i, int64_t j0, int64_t width, const acc_t* acc) {
        const int64_t r = last_rows.row(i), o = i * d + j0;
        const src_t* xr = x.row(r);
        const acc_t* er = extra.row(r);
        if (xr != nullptr && er == nullptr) {  // the dense case, kept branch-free
          for (int64_t t = 0; t < width; ++t) {
            out[o + t] =
                static_cast<scalar_t>(a * static_cast<acc_t>(xr[j0 + t]) + dinv[r] * acc[t]);
          }
          return;
        }
        for (int64_t t = 0; t < width; ++t) {
          acc_t v = xr != nullptr ? a * static_cast<acc_t>(xr[j0 + t]) + dinv[r] * acc[t]
                                  : dinv[r] * acc[t];
          if (er != nullptr) v += er[j0 + t];
          out[o + t] = static_cast<scalar_t>(v);
        }
      };
      run_sweep(out_chunks, epilogue, last_rows);
    } else {
      run_sweep(first ? balanced_row_chunks(graph.rowptr, n) : chunks,
                [&](int64_t, int64_t r, int64_t j0, int64_t width, const acc_t* acc) {
        const int64_t o = r * d + j0;
        const acc_t s = dinv[r];
        const src_t* xr = x.row(r);
        if (xr != nullptr) {
          for (int64_t t = 0; t < width; ++t) {
            const acc_t h = a * static_cast<acc_t>(xr[j0 + t]) + s * acc[t];
            buf_b[o + t] = static_cast<store_t>(s * h);
          }
        } else {
          for (int64_t t = 0; t < width; ++t) buf_b[o + t] = static_cast<store_t>(s * (s * acc[t]));
        }
      }, {});
      std::swap(buf_a, buf_b);
    }
  }
}

template <typename scalar_t, typename index_t>
void layer_dots_kernel(const Csr<at::opmath_type<scalar_t>, index_t>& g, const scalar_t* x,
                       const scalar_t* grad, int64_t L, int64_t d,
                       at::opmath_type<scalar_t>* buf_a, at::opmath_type<scalar_t>* buf_b,
                       at::opmath_type<scalar_t>* dots) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = g.num_rows;
  const acc_t* dinv = g.dinv;
  const auto chunks = balanced_row_chunks(g.rowptr, n);
  const int64_t num_chunks = static_cast<int64_t>(chunks.size()) - 1;
  // Per-chunk partial sums, added in chunk order: deterministic.
  std::vector<acc_t> partial(num_chunks);
  auto reduce_partials = [&]() {
    acc_t total = 0;
    for (const acc_t p : partial) total += p;
    std::fill(partial.begin(), partial.end(), acc_t(0));
    return total;
  };
  // Layer 0: <x, grad>; s_0 = dinv * x.
  for_each_chunk(num_chunks, [&](int64_t c) {
    acc_t sum = 0;
    for (int64_t r = chunks[c]; r < chunks[c + 1]; ++r) {
      for (int64_t i = r * d; i < (r + 1) * d; ++i) {
        const acc_t xi = static_cast<acc_t>(x[i]);
        sum += xi * static_cast<acc_t>(grad[i]);
        buf_a[i] = dinv[r] * xi;
      }
    }
    partial[c] = sum;
  });
  dots[0] = reduce_partials();
  for (int64_t l = 1; l <= L; ++l) {
    sweep(g, buf_a, d, chunks, [&](int64_t c, int64_t r, int64_t j0, int64_t width, const acc_t* acc) {
      const int64_t o = r * d + j0;
      const acc_t s = dinv[r];
      acc_t sum = 0;
      for (int64_t t = 0; t < width; ++t) {
        const acc_t h = s * acc[t];
        sum += h * static_cast<acc_t>(grad[o + t]);
        buf_b[o + t] = s * h;
      }
      partial[c] += sum;
    });
    std::swap(buf_a, buf_b);
    dots[l] = reduce_partials();
  }
}

// The typed view of the graph (data_ptr refuses another col type).
template <typename acc_t, typename index_t>
Csr<acc_t, index_t> csr_view(const GraphOperands& g) {
  return {g.rowptr.data_ptr<int64_t>(), g.col.data_ptr<index_t>(),
          g.weight.has_value() ? g.weight->data_ptr<acc_t>() : nullptr, g.dinv.data_ptr<acc_t>(),
          g.dinv.numel()};
}

// Calls f(csr) with the typed view of the graph.
template <typename acc_t, typename F>
void with_csr(const GraphOperands& g, const F& f) {
  AT_DISPATCH_INDEX_TYPES(g.col.scalar_type(), "lightgcn_ext_cpu_col", [&] {
    f(csr_view<acc_t, index_t>(g));
  });
}

// The type of the layers that a Horner scheme's sweeps gather, for features
// of the given type: bfloat16 where the op's bf16 flag is set, else the
// accumulation type.
at::ScalarType storage_type(at::ScalarType features, bool bf16) {
  return bf16 ? at::kBFloat16 : at::toOpMathType(features);
}

// Calls f(scalar_t{}, store_t{}) for the features' type scalar_t and the
// type store_t of the gathered layers (storage_type).
template <typename F>
void dispatch_storage(at::ScalarType features, bool bf16, const F& f) {
  if (bf16) {
    TORCH_INTERNAL_ASSERT(features == at::kFloat);
    f(float{}, c10::BFloat16{});
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features, "horner_cpu", [&] {
    f(scalar_t{}, at::opmath_type<scalar_t>{});
  });
}

// The working buffers of a Horner scheme over n rows whose result is `out`:
// the second one is the output itself where the output has every row and the
// buffers' type (float32, float64), which saves an [N, d] buffer.
std::pair<at::Tensor, at::Tensor> horner_buffers(int64_t n, int64_t d, int64_t L,
                                                 const at::Tensor& out, bool bf16) {
  const auto store_type = storage_type(out.scalar_type(), bf16);
  auto buf_a = at::empty({n, d}, out.options().dtype(store_type));
  if (store_type == out.scalar_type() && out.size(0) == n) return {buf_a, out};
  return {buf_a, L > 1 ? at::empty_like(buf_a) : buf_a};
}

template <typename acc_t>
std::vector<acc_t> alpha_values(const at::Tensor& alpha) {
  const auto a = alpha.to(at::kCPU, c10::CppTypeToScalarType<acc_t>::value).contiguous();
  return std::vector<acc_t>(a.template data_ptr<acc_t>(), a.template data_ptr<acc_t>() + a.numel());
}

at::Tensor propagate_cpu(const at::Tensor& rowptr_in, const at::Tensor& col_in,
                         const OptTensor& weight_in, const at::Tensor& dinv_in,
                         const OptTensor& /*rowptr_t*/, const OptTensor& /*col_t*/,
                         const OptTensor& /*weight_t*/, const at::Tensor& x_in,
                         const at::Tensor& alpha, bool bf16) {
  const auto args = checked_propagate_operands(rowptr_in, col_in, weight_in, dinv_in, x_in, alpha);
  check_bf16_features(bf16, args.x, "x");
  const auto& g = args.graph;
  const auto& x = args.x;
  const int64_t L = args.num_layers;
  check_csr_contents(g.rowptr, g.col, x.size(0));
  const int64_t n = x.size(0), d = x.size(1);
  if (L == 0 || n == 0 || d == 0) return alpha0_times_x(x, alpha);
  auto out = at::empty_like(x);
  const auto [buf_a, buf_b] = horner_buffers(n, d, L, out, bf16);
  dispatch_storage(x.scalar_type(), bf16, [&](auto scalar, auto store) {
    using scalar_t = decltype(scalar);
    using store_t = decltype(store);
    using acc_t = at::opmath_type<scalar_t>;
    with_csr<acc_t>(g, [&](const auto& csr) {
      horner_kernel<scalar_t, store_t>(csr, Rows<scalar_t>{x.data_ptr<scalar_t>(), nullptr, d},
                                       Rows<acc_t>{}, alpha_values<acc_t>(alpha), d, nullptr, {},
                                       n, buf_a.data_ptr<store_t>(), buf_b.data_ptr<store_t>(),
                                       out.data_ptr<scalar_t>());
    });
  });
  return out;
}

// (out, x_rows) = ((sum_l alpha_l M^l x)[rows], x[rows]): the full sweeps of
// propagate but the last, which computes the listed rows only.
std::tuple<at::Tensor, at::Tensor> propagate_rows_cpu(
    const at::Tensor& rowptr_in, const at::Tensor& col_in, const OptTensor& weight_in,
    const at::Tensor& dinv_in, const OptTensor& /*rowptr_t*/, const OptTensor& /*col_t*/,
    const OptTensor& /*weight_t*/, const at::Tensor& x_in, const at::Tensor& alpha,
    const at::Tensor& rows_in, bool bf16) {
  const auto args =
      checked_propagate_rows_operands(rowptr_in, col_in, weight_in, dinv_in, x_in, alpha, rows_in);
  check_bf16_features(bf16, args.propagate.x, "x");
  const auto& g = args.propagate.graph;
  const auto &x = args.propagate.x, &rows = args.rows;
  const int64_t L = args.propagate.num_layers;
  check_csr_contents(g.rowptr, g.col, x.size(0));
  check_row_values(rows, x.size(0));
  const int64_t n = x.size(0), d = x.size(1), num_rows = rows.numel();
  auto x_rows = x.index_select(0, rows);
  if (L == 0 || num_rows == 0 || d == 0) return {alpha0_times_x(x_rows, alpha), x_rows};
  auto out = at::empty({num_rows, d}, x.options());
  const auto [buf_a, buf_b] = horner_buffers(n, d, L, out, bf16);
  dispatch_storage(x.scalar_type(), bf16, [&](auto scalar, auto store) {
    using scalar_t = decltype(scalar);
    using store_t = decltype(store);
    using acc_t = at::opmath_type<scalar_t>;
    with_csr<acc_t>(g, [&](const auto& csr) {
      horner_kernel<scalar_t, store_t>(csr, Rows<scalar_t>{x.data_ptr<scalar_t>(), nullptr, d},
                                       Rows<acc_t>{}, alpha_values<acc_t>(alpha), d, nullptr,
                                       cpu::RowList{rows.data_ptr<int64_t>()}, num_rows,
                                       buf_a.data_ptr<store_t>(), buf_b.data_ptr<store_t>(),
                                       out.data_ptr<scalar_t>());
    });
  });
  return {out, x_rows};
}

// A gradient given at listed rows (repeats allowed), as the rows of a
// compact array: slot[r] is the position of node r in it (-1 where the row is
// zero); nodes in increasing order. Repeats are summed in list order, as
// index_add_ sums them on the CPU.
template <typename acc_t>
struct CompactRows {
  std::vector<int64_t> slot, nodes;

  CompactRows(const int64_t* rows, int64_t num_rows, int64_t num_nodes) : slot(num_nodes, -1) {
    for (int64_t i = 0; i < num_rows; ++i) slot[rows[i]] = 0;
    for (int64_t r = 0; r < num_nodes; ++r) {
      if (slot[r] >= 0) {
        slot[r] = static_cast<int64_t>(nodes.size());
        nodes.push_back(r);
      }
    }
  }

  template <typename scalar_t>
  at::Tensor sum(const at::Tensor& values, const int64_t* rows) const {
    const int64_t d = values.size(1);
    auto out = at::zeros({static_cast<int64_t>(nodes.size()), d},
                         values.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    acc_t* o = out.template data_ptr<acc_t>();
    const scalar_t* v = values.template data_ptr<scalar_t>();
    for (int64_t i = 0; i < values.size(0); ++i) {
      acc_t* dst = o + slot[rows[i]] * d;
      for (int64_t j = 0; j < d; ++j) dst[j] += static_cast<acc_t>(v[i * d + j]);
    }
    return out;
  }
};

// The entries of M^T in the columns `nodes` (the rows where a gradient is
// not zero), as a CSR over every row of M^T whose cols are positions in
// `nodes`: the first backward sweep of a batch reads these sum(deg(nodes))
// edges only. They are M's rows `nodes`, transposed by a counting sort; a
// row's entries come out by increasing column and, among parallel edges, in
// edge order, the order of M^T's own CSR, so that the sweep adds the same
// terms in the same order as a sweep over all of M^T.
template <typename acc_t, typename index_t>
struct SubCsr {
  std::vector<int64_t> rowptr;
  std::vector<index_t> col;
  std::vector<acc_t> weight;

  SubCsr(const Csr<acc_t, index_t>& m, const std::vector<int64_t>& nodes)
      : rowptr(m.num_rows + 1, 0) {
    for (const int64_t u : nodes)
      for (int64_t k = m.rowptr[u]; k < m.rowptr[u + 1]; ++k) ++rowptr[m.col[k] + 1];
    for (int64_t r = 0; r < m.num_rows; ++r) rowptr[r + 1] += rowptr[r];
    col.resize(rowptr.back());
    if (m.weight != nullptr) weight.resize(rowptr.back());
    std::vector<int64_t> cursor(rowptr.begin(), rowptr.end() - 1);
    for (int64_t p = 0; p < static_cast<int64_t>(nodes.size()); ++p) {
      const int64_t u = nodes[p];
      for (int64_t k = m.rowptr[u]; k < m.rowptr[u + 1]; ++k) {
        const int64_t slot = cursor[m.col[k]]++;
        col[slot] = static_cast<index_t>(p);
        if (m.weight != nullptr) weight[slot] = m.weight[k];
      }
    }
  }

  Csr<acc_t, index_t> view(const acc_t* dinv) const {
    return {rowptr.data(), col.data(), weight.empty() ? nullptr : weight.data(), dinv,
            static_cast<int64_t>(rowptr.size()) - 1};
  }
};

// grad_x = sum_l alpha_l (M^T)^l G + G0, where G and G0 are zero outside
// `rows` and hold grad and grad_x_rows there (repeats summed): the gradient
// of propagate_rows, one [N, d] array. The first of the L sweeps over M^T
// reads only the edges of M's rows `rows`; the others are full sweeps.
at::Tensor propagate_rows_backward_cpu(
    const at::Tensor& rowptr_in, const at::Tensor& col_in, const OptTensor& weight_in,
    const at::Tensor& dinv_in, const OptTensor& rowptr_t_in, const OptTensor& col_t_in,
    const OptTensor& weight_t_in, const at::Tensor& grad_in, const OptTensor& grad_x_rows_in,
    const at::Tensor& alpha, const at::Tensor& rows_in, bool bf16) {
  const auto args = checked_propagate_rows_backward_operands(
      rowptr_in, col_in, weight_in, dinv_in, rowptr_t_in, col_t_in, weight_t_in, grad_in,
      grad_x_rows_in, alpha, rows_in);
  check_bf16_features(bf16, args.grad, "grad");
  const auto &g = args.graph, &g_t = args.graph_t;
  const auto &grad = args.grad, &rows = args.rows;
  const int64_t L = args.num_layers, n = g.dinv.numel(), d = grad.size(1);
  check_csr_contents(g.rowptr, g.col, n);
  if (rowptr_t_in.has_value()) check_csr_contents(g_t.rowptr, g_t.col, n);
  check_row_values(rows, n);
  const auto acc_type = at::toOpMathType(grad.scalar_type());
  if (L == 0 || rows.numel() == 0 || d == 0) {
    auto sum = at::zeros({n, d}, grad.options().dtype(acc_type));
    sum.index_add_(0, rows, alpha0_times_x(grad, alpha).to(acc_type));
    if (args.grad_x_rows.has_value()) sum.index_add_(0, rows, args.grad_x_rows->to(acc_type));
    return sum.to(grad.scalar_type());
  }
  auto out = at::empty({n, d}, grad.options());
  const auto [buf_a, buf_b] = horner_buffers(n, d, L, out, bf16);
  dispatch_storage(grad.scalar_type(), bf16, [&](auto scalar, auto store) {
    using scalar_t = decltype(scalar);
    using store_t = decltype(store);
    using acc_t = at::opmath_type<scalar_t>;
    const auto a = alpha_values<acc_t>(alpha);
    const int64_t* row_ids = rows.data_ptr<int64_t>();
    const CompactRows<acc_t> compact(row_ids, rows.numel(), n);
    const auto grad_sum = compact.template sum<scalar_t>(grad, row_ids);
    const auto extra_sum = args.grad_x_rows.has_value()
                               ? compact.template sum<scalar_t>(*args.grad_x_rows, row_ids)
                               : at::Tensor();
    // s_L = dinv * alpha_L * G at the nodes where G is not zero.
    const acc_t* dinv = g.dinv.data_ptr<acc_t>();
    const auto store_type = storage_type(grad.scalar_type(), bf16);
    auto top_s = at::empty(grad_sum.sizes(), grad.options().dtype(store_type));
    const acc_t* gs = grad_sum.template data_ptr<acc_t>();
    store_t* s = top_s.template data_ptr<store_t>();
    for (int64_t p = 0; p < static_cast<int64_t>(compact.nodes.size()); ++p) {
      const int64_t u = compact.nodes[p];
      for (int64_t j = 0; j < d; ++j) {
        s[p * d + j] = static_cast<store_t>(dinv[u] * a[L] * gs[p * d + j]);
      }
    }
    const Rows<acc_t> x_rows{gs, compact.slot.data(), d};
    const Rows<acc_t> extra{extra_sum.defined() ? extra_sum.template data_ptr<acc_t>() : nullptr,
                            compact.slot.data(), d};
    with_csr<acc_t>(g, [&](const auto& m) {
      using index_t = std::remove_const_t<std::remove_pointer_t<decltype(m.col)>>;
      const SubCsr<acc_t, index_t> sub(m, compact.nodes);
      const TopLayer<acc_t, store_t, index_t> top{sub.view(dinv), s};
      horner_kernel<scalar_t, store_t>(csr_view<acc_t, index_t>(g_t), x_rows, extra, a, d, &top,
                                       {}, n, buf_a.data_ptr<store_t>(), buf_b.data_ptr<store_t>(),
                                       out.data_ptr<scalar_t>());
    });
  });
  return out;
}

at::Tensor layer_dots_cpu(const at::Tensor& rowptr_in, const at::Tensor& col_in,
                          const OptTensor& weight_in, const at::Tensor& dinv_in,
                          const OptTensor& /*rowptr_t*/, const OptTensor& /*col_t*/,
                          const OptTensor& /*weight_t*/, const at::Tensor& x_in,
                          const at::Tensor& grad_in, int64_t num_layers) {
  const auto args = checked_layer_dots_operands(rowptr_in, col_in, weight_in, dinv_in, x_in,
                                                grad_in, num_layers);
  const auto& g = args.graph;
  const auto &x = args.x, &grad = args.grad;
  check_csr_contents(g.rowptr, g.col, x.size(0));
  const int64_t n = x.size(0), d = x.size(1);
  const auto acc_type = at::toOpMathType(x.scalar_type());
  auto dots = at::zeros({num_layers + 1}, x.options().dtype(acc_type));
  if (n == 0 || d == 0) return dots;
  auto buf_a = at::empty({n, d}, x.options().dtype(acc_type));
  auto buf_b = at::empty_like(buf_a);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "layer_dots_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_csr<acc_t>(g, [&](const auto& csr) {
      layer_dots_kernel<scalar_t>(csr, x.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), num_layers,
                                  d, buf_a.data_ptr<acc_t>(), buf_b.data_ptr<acc_t>(),
                                  dots.data_ptr<acc_t>());
    });
  });
  return dots;
}

}  // namespace

TORCH_LIBRARY_IMPL(lightgcn_ext, CPU, m) {
  m.impl("propagate", &propagate_cpu);
  m.impl("layer_dots", &layer_dots_cpu);
  m.impl("propagate_rows", &propagate_rows_cpu);
  m.impl("propagate_rows_backward", &propagate_rows_backward_cpu);
}

}  // namespace lightgcn_ext
