// C++ test of the lightgcn_ext CPU ops, called through the dispatcher as any
// caller of the schemas would, against references written from the math:
//
//   deg_i  = sum of w_e over edges e = (j -> i)      (in-degree, duplicates count)
//   dinv_i = deg_i^-1/2, and 0 where deg_i = 0
//   (M h)_i = sum over edges e = (j -> i) of dinv_i * w_e * dinv_j * h_j
//   propagate(CSR by destination) = sum_{l=0..L} alpha_l M^l x
//   propagate(CSR by source)      = sum_{l=0..L} alpha_l (M^T)^l x
//   layer_dots                    = [<M^l x, grad> for l = 0..L]
//   propagate_rows                = rows of propagate, and of x
//   propagate_rows_backward       = sum_l alpha_l (M^T)^l G + G0 (G, G0 scattered rows)
//
// The references loop over the edge list; they share nothing with the kernels
// (no CSR, no Horner, no source scaling). Exit status 0 iff every check passed;
// each failure prints the case and the first mismatching entries.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

namespace {

using Tensor = at::Tensor;
using OptTensor = std::optional<at::Tensor>;

// ---------------------------------------------------------------- the ops

using PrepareCsrFn = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(const Tensor&,
                                                                                 int64_t);
// The graph operands of propagate and layer_dots: (rowptr, col, weight, dinv)
// of M, then (rowptr_t, col_t, weight_t) of M^T, which only autograd reads.
#define GRAPH_OPERANDS \
  const Tensor&, const Tensor&, const OptTensor&, const Tensor&, const OptTensor&, \
      const OptTensor&, const OptTensor&
using PropagateFn = Tensor(GRAPH_OPERANDS, const Tensor&, const Tensor&, bool);
using LayerDotsFn = Tensor(GRAPH_OPERANDS, const Tensor&, const Tensor&, int64_t);
using PropagateRowsFn = std::tuple<Tensor, Tensor>(GRAPH_OPERANDS, const Tensor&, const Tensor&,
                                                   const Tensor&, bool);
using PropagateRowsBackwardFn = Tensor(GRAPH_OPERANDS, const Tensor&, const OptTensor&,
                                       const Tensor&, const Tensor&, bool);
#undef GRAPH_OPERANDS


auto prepare_csr_op() {
  static const auto op = c10::Dispatcher::singleton()
                              .findSchemaOrThrow("lightgcn_ext::prepare_csr", "")
                              .typed<PrepareCsrFn>();
  return op;
}

auto propagate_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lightgcn_ext::propagate", "")
                             .typed<PropagateFn>();
  return op;
}

auto layer_dots_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lightgcn_ext::layer_dots", "")
                             .typed<LayerDotsFn>();
  return op;
}

auto propagate_rows_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lightgcn_ext::propagate_rows", "")
                             .typed<PropagateRowsFn>();
  return op;
}

auto propagate_rows_backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lightgcn_ext::propagate_rows_backward", "")
                             .typed<PropagateRowsBackwardFn>();
  return op;
}

// The kernels read no M^T (only autograd does): these pass None for it.
Tensor call_propagate(const Tensor& rowptr, const Tensor& col, const OptTensor& weight,
                      const Tensor& dinv, const Tensor& x, const Tensor& alpha) {
  return propagate_op().call(rowptr, col, weight, dinv, {}, {}, {}, x, alpha, false);
}

Tensor call_layer_dots(const Tensor& rowptr, const Tensor& col, const OptTensor& weight,
                       const Tensor& dinv, const Tensor& x, const Tensor& grad, int64_t L) {
  return layer_dots_op().call(rowptr, col, weight, dinv, {}, {}, {}, x, grad, L);
}

// ---------------------------------------------------------------- bookkeeping

int g_checks = 0;
int g_failures = 0;

void fail(const std::string& what) {
  ++g_failures;
  std::fprintf(stderr, "FAIL: %s\n", what.c_str());
}

using c10::str;

// ---------------------------------------------------------------- graphs

struct Graph {
  std::string name;
  int64_t n = 0;
  std::vector<int64_t> src, dst;  // edge e = (src[e] -> dst[e])
  std::vector<double> weight;     // empty: unweighted
  int64_t num_edges() const { return static_cast<int64_t>(src.size()); }
  double w(int64_t e) const { return weight.empty() ? 1.0 : weight[e]; }
};

// A random graph on n nodes in which only the first `reached` nodes receive
// edges (the others are empty rows of the CSR), with `hub_share` of the edges
// aimed at node 0, some duplicated edges and some self-loops.
Graph random_graph(const std::string& name, int64_t n, int64_t reached, int64_t num_edges,
                   double hub_share, bool weighted, std::mt19937_64& rng) {
  Graph g;
  g.name = name;
  g.n = n;
  std::uniform_int_distribution<int64_t> any(0, n - 1), target(0, std::max<int64_t>(reached, 1) - 1);
  std::uniform_real_distribution<double> unit(0.0, 1.0), wdist(0.25, 2.0);
  auto add = [&](int64_t s, int64_t d) {
    g.src.push_back(s);
    g.dst.push_back(d);
    if (weighted) g.weight.push_back(wdist(rng));
  };
  for (int64_t e = 0; e < num_edges; ++e) {
    const int64_t d = unit(rng) < hub_share ? 0 : target(rng);
    add(any(rng), d);
  }
  const int64_t base = g.num_edges();
  for (int64_t e = 0; e < base / 10; ++e) {  // duplicates of existing edges
    const int64_t k = std::uniform_int_distribution<int64_t>(0, base - 1)(rng);
    add(g.src[k], g.dst[k]);
  }
  for (int64_t i = 0; i < std::min<int64_t>(reached, 5); ++i) add(i, i);  // self-loops
  // Shuffle the edge order, so that CSR slots and edge ids differ.
  std::vector<int64_t> order(g.src.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  std::shuffle(order.begin(), order.end(), rng);
  Graph shuffled = g;
  for (size_t i = 0; i < order.size(); ++i) {
    shuffled.src[i] = g.src[order[i]];
    shuffled.dst[i] = g.dst[order[i]];
    if (weighted) shuffled.weight[i] = g.weight[order[i]];
  }
  return shuffled;
}

Graph without_weights(Graph g) {
  g.weight.clear();
  g.name += ", unweighted";
  return g;
}

// ---------------------------------------------------------------- references

std::vector<double> reference_dinv(const Graph& g) {
  std::vector<double> deg(g.n, 0.0), dinv(g.n, 0.0);
  for (int64_t e = 0; e < g.num_edges(); ++e) deg[g.dst[e]] += g.w(e);
  for (int64_t i = 0; i < g.n; ++i) dinv[i] = deg[i] > 0 ? 1.0 / std::sqrt(deg[i]) : 0.0;
  return dinv;
}

// y = M h (transpose = false) or M^T h, for row-major [n, d] h.
std::vector<double> apply_m(const Graph& g, const std::vector<double>& dinv,
                            const std::vector<double>& h, int64_t d, bool transpose) {
  std::vector<double> y(h.size(), 0.0);
  for (int64_t e = 0; e < g.num_edges(); ++e) {
    const int64_t i = transpose ? g.src[e] : g.dst[e];  // row of the entry M[dst][src]
    const int64_t j = transpose ? g.dst[e] : g.src[e];
    const double m = dinv[g.dst[e]] * g.w(e) * dinv[g.src[e]];
    for (int64_t k = 0; k < d; ++k) y[i * d + k] += m * h[j * d + k];
  }
  return y;
}

// [x, M x, M^2 x, ..., M^L x] (or with M^T).
std::vector<std::vector<double>> reference_layers(const Graph& g, const std::vector<double>& dinv,
                                                  const std::vector<double>& x, int64_t d,
                                                  int64_t num_layers, bool transpose) {
  std::vector<std::vector<double>> layers{x};
  for (int64_t l = 1; l <= num_layers; ++l)
    layers.push_back(apply_m(g, dinv, layers.back(), d, transpose));
  return layers;
}

std::vector<double> to_doubles(const Tensor& t) {
  const auto c = t.to(at::kDouble).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// ---------------------------------------------------------------- comparison

struct Tolerance {
  double rtol, atol;
};

Tolerance tolerance_for(at::ScalarType dtype) {
  if (dtype == at::kDouble) return {1e-10, 1e-12};
  return {2e-5, 2e-6};
}

// |got - want| <= atol * scale + rtol * |want|, where scale bounds the size of
// the terms each entry was summed from (so cancellation does not make the
// check impossibly tight).
bool expect_close(const std::string& what, const std::vector<double>& got,
                  const std::vector<double>& want, const std::vector<double>& scale,
                  Tolerance tol, int64_t d) {
  ++g_checks;
  if (got.size() != want.size()) {
    fail(str(what, ": got ", got.size(), " values, want ", want.size()));
    return false;
  }
  int shown = 0, bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(got[i] - want[i]);
    const double allowed = tol.atol * std::max(1.0, scale[i]) + tol.rtol * std::abs(want[i]);
    if (!(err <= allowed)) {  // also catches NaN
      ++bad;
      if (shown++ < 5) {
        const int64_t r = d > 0 ? static_cast<int64_t>(i) / d : 0;
        const int64_t c = d > 0 ? static_cast<int64_t>(i) % d : 0;
        std::fprintf(stderr, "  %s: [%lld, %lld] got %.17g want %.17g (|diff| %.3g > %.3g)\n",
                     what.c_str(), static_cast<long long>(r), static_cast<long long>(c), got[i],
                     want[i], err, allowed);
      }
    }
  }
  if (bad > 0) fail(str(what, ": ", bad, " of ", got.size(), " entries mismatch"));
  return bad == 0;
}

// ---------------------------------------------------------------- prepare_csr

struct Prepared {
  Tensor rowptr, col, perm, rowptr_t, col_t, perm_t;
};

Tensor edge_index_of(const Graph& g) {
  auto ei = at::empty({2, g.num_edges()}, at::kLong);
  auto a = ei.accessor<int64_t, 2>();
  for (int64_t e = 0; e < g.num_edges(); ++e) {
    a[0][e] = g.src[e];
    a[1][e] = g.dst[e];
  }
  return ei;
}

// Checks one CSR (rows = `row_of`, cols = `col_of` of each edge) against the
// edge list: rowptr is the row histogram, and slot k of row r holds an edge
// perm[k] with that row and column; perm is a permutation of the edge ids.
void check_csr(const std::string& what, const Graph& g, const Tensor& rowptr, const Tensor& col,
               const Tensor& perm, const std::vector<int64_t>& row_of,
               const std::vector<int64_t>& col_of) {
  ++g_checks;
  const int64_t n = g.n, num_edges = g.num_edges();
  if (rowptr.scalar_type() != at::kLong || rowptr.dim() != 1 || rowptr.numel() != n + 1) {
    fail(str(what, ": rowptr must be int64 [", n + 1, "], got ", rowptr.scalar_type(), " ",
             rowptr.sizes()));
    return;
  }
  if (col.dim() != 1 || col.numel() != num_edges || perm.dim() != 1 ||
      perm.numel() != num_edges) {
    fail(str(what, ": col and perm must have ", num_edges, " entries, got ", col.sizes(), " and ",
             perm.sizes()));
    return;
  }
  if (col.scalar_type() != at::kInt) {  // num_nodes fits in int32
    fail(str(what, ": col must be int32 for a small graph, got ", col.scalar_type()));
  }
  const auto rp = to_doubles(rowptr), cl = to_doubles(col), pm = to_doubles(perm);
  std::vector<int64_t> count(n, 0);
  for (int64_t e = 0; e < num_edges; ++e) ++count[row_of[e]];
  std::vector<bool> seen(num_edges, false);
  if (rp[0] != 0) fail(str(what, ": rowptr[0] = ", rp[0]));
  for (int64_t r = 0; r < n; ++r) {
    if (rp[r + 1] - rp[r] != static_cast<double>(count[r])) {
      fail(str(what, ": row ", r, " has ", rp[r + 1] - rp[r], " slots, want ", count[r]));
      return;
    }
    for (auto k = static_cast<int64_t>(rp[r]); k < static_cast<int64_t>(rp[r + 1]); ++k) {
      const auto e = static_cast<int64_t>(pm[k]);
      if (e < 0 || e >= num_edges || seen[e]) {
        fail(str(what, ": perm[", k, "] = ", e, " is not a fresh edge id"));
        return;
      }
      seen[e] = true;
      if (row_of[e] != r || col_of[e] != static_cast<int64_t>(cl[k])) {
        fail(str(what, ": slot ", k, " (row ", r, ", col ", cl[k], ") holds edge ", e, " = (row ",
                 row_of[e], ", col ", col_of[e], ")"));
        return;
      }
    }
  }
}

Prepared prepare(const Graph& g) {
  auto [rowptr, col, perm, rowptr_t, col_t, perm_t] = prepare_csr_op().call(edge_index_of(g), g.n);
  Prepared p{rowptr, col, perm, rowptr_t, col_t, perm_t};
  // By destination: rows = dst, cols = src. By source: the transpose.
  check_csr(g.name + ", prepare_csr by destination", g, p.rowptr, p.col, p.perm, g.dst, g.src);
  check_csr(g.name + ", prepare_csr by source", g, p.rowptr_t, p.col_t, p.perm_t, g.src, g.dst);
  return p;
}

// ---------------------------------------------------------------- propagate, layer_dots

Tensor random_features(int64_t n, int64_t d, at::ScalarType dtype, std::mt19937_64& rng,
                       bool non_contiguous) {
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  // A wider table whose first d columns are the features: a strided view.
  const int64_t width = non_contiguous ? d + 3 : d;
  auto t = at::empty({n, width}, at::kDouble);
  auto* p = t.data_ptr<double>();
  for (int64_t i = 0; i < n * width; ++i) p[i] = dist(rng);
  return t.to(dtype).narrow(1, 0, d);
}

Tensor random_alpha(int64_t num_layers, at::ScalarType dtype, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> dist(-1.0, 1.5);
  auto a = at::empty({num_layers + 1}, at::kDouble);
  for (int64_t l = 0; l <= num_layers; ++l) a.data_ptr<double>()[l] = dist(rng);
  return a.to(dtype);
}

struct Case {
  const Graph* graph;
  const Prepared* prepared;
  at::ScalarType dtype;
  at::ScalarType index_dtype;  // of col
  int64_t d;
  bool transpose;  // use the CSR by source, i.e. M^T
  bool non_contiguous;
};

std::string describe(const Case& c) {
  return str(c.graph->name, ", ", c.dtype, ", col ", c.index_dtype, ", d=", c.d,
             c.transpose ? ", transposed CSR" : "", c.non_contiguous ? ", strided x" : "");
}

// propagate_rows at the largest L, on a row list with repeats (and every
// node without in-edges): its rows of sum_l alpha_l M^l x and of x; and
// propagate_rows_backward: sum_l alpha_l (M^T)^l G + G0, G and G0 the row
// gradients scattered to their nodes (repeats summed).
void check_propagate_rows(const Case& c, std::mt19937_64& rng, int64_t L, const Tensor& dinv,
                          const OptTensor& weight) {
  const Graph& g = *c.graph;
  const Prepared& p = *c.prepared;
  const int64_t n = g.n, d = c.d;
  // The operator of the op: M (CSR by destination) or, transposed, the CSR by source.
  const auto& rowptr = c.transpose ? p.rowptr_t : p.rowptr;
  const auto& rowptr_t = c.transpose ? p.rowptr : p.rowptr_t;
  const auto col = (c.transpose ? p.col_t : p.col).to(c.index_dtype);
  const auto col_t = (c.transpose ? p.col : p.col_t).to(c.index_dtype);
  OptTensor weight_t;
  if (weight.has_value()) {
    const auto w = at::tensor(g.weight, at::kDouble).to(weight->scalar_type());
    weight_t = w.index_select(0, c.transpose ? p.perm : p.perm_t);
  }
  std::vector<int64_t> rows;
  std::uniform_int_distribution<int64_t> any(0, n - 1);
  for (int64_t i = 0; i < std::min<int64_t>(n, 50); ++i) rows.push_back(any(rng));
  for (int64_t i = 0; i < n && !rows.empty(); i += 7) rows.push_back(rows[i % rows.size()]);
  rows.push_back(n - 1);
  const auto rows_t = at::tensor(rows, at::kLong);
  const int64_t R = static_cast<int64_t>(rows.size());
  const auto x = random_features(n, d, c.dtype, rng, c.non_contiguous);
  const auto xs = to_doubles(x);
  const auto layers_x = reference_layers(g, to_doubles(dinv), xs, d, L, c.transpose);
  const auto alpha = random_alpha(L, c.dtype, rng);
  const auto a = to_doubles(alpha);
  const Tolerance tol = tolerance_for(c.dtype);
  const std::string what = str(describe(c), ", L=", L, ", propagate_rows");
  std::vector<double> want(R * d, 0.0), want_x(R * d), scale(R * d, 1.0);
  for (int64_t i = 0; i < R; ++i) {
    for (int64_t k = 0; k < d; ++k) {
      for (int64_t l = 0; l <= L; ++l) want[i * d + k] += a[l] * layers_x[l][rows[i] * d + k];
      want_x[i * d + k] = xs[rows[i] * d + k];
    }
  }
  // Backward: G and G0 scattered, then sum_l alpha_l (M^T)^l G + G0.
  const auto grad = random_features(R, d, c.dtype, rng, false);
  const auto grad0 = random_features(R, d, c.dtype, rng, false);
  const auto gs = to_doubles(grad), g0s = to_doubles(grad0);
  std::vector<double> scattered(n * d, 0.0), want_grad(n * d, 0.0), grad_scale(n * d, 1.0);
  for (int64_t i = 0; i < R; ++i)
    for (int64_t k = 0; k < d; ++k) scattered[rows[i] * d + k] += gs[i * d + k];
  const auto back = reference_layers(g, to_doubles(dinv), scattered, d, L, !c.transpose);
  for (int64_t l = 0; l <= L; ++l)
    for (int64_t i = 0; i < n * d; ++i) want_grad[i] += a[l] * back[l][i];
  for (int64_t i = 0; i < R; ++i)
    for (int64_t k = 0; k < d; ++k) want_grad[rows[i] * d + k] += g0s[i * d + k];
  try {
    const auto [out, out_x] =
        propagate_rows_op().call(rowptr, col, weight, dinv, rowptr_t, col_t, weight_t, x, alpha,
                                 rows_t, false);
    expect_close(what, to_doubles(out), want, scale, tol, d);
    expect_close(what + " (x rows)", to_doubles(out_x), want_x, scale, {0, 0}, d);
    const auto grad_x = propagate_rows_backward_op().call(rowptr, col, weight, dinv, rowptr_t,
                                                          col_t, weight_t, grad, grad0, alpha,
                                                          rows_t, false);
    expect_close(what + "_backward", to_doubles(grad_x), want_grad, grad_scale, tol, d);
  } catch (const c10::Error& e) {
    fail(str(what, ": threw: ", e.what_without_backtrace()));
  }
}

void run_case(const Case& c, std::mt19937_64& rng, int64_t max_layers) {
  const Graph& g = *c.graph;
  const Prepared& p = *c.prepared;
  const auto acc_dtype = at::toOpMathType(c.dtype);
  const auto& rowptr = c.transpose ? p.rowptr_t : p.rowptr;
  const auto col = (c.transpose ? p.col_t : p.col).to(c.index_dtype);
  const auto& perm = c.transpose ? p.perm_t : p.perm;
  const auto dinv_ref = reference_dinv(g);
  const auto dinv = at::tensor(dinv_ref, at::kDouble).to(acc_dtype);
  OptTensor weight;
  if (!g.weight.empty()) weight = at::tensor(g.weight, at::kDouble).to(acc_dtype).index_select(0, perm);

  const auto x = random_features(g.n, c.d, c.dtype, rng, c.non_contiguous);
  const auto grad = random_features(g.n, c.d, c.dtype, rng, false);
  // The references start from the values the op sees (x rounded to its dtype).
  const auto xs = to_doubles(x), gs = to_doubles(grad);
  const auto layers = reference_layers(g, dinv_ref, xs, c.d, max_layers, c.transpose);
  // |M|^l |x|: bounds the terms each entry of M^l x is summed from.
  std::vector<double> abs_x(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) abs_x[i] = std::abs(xs[i]);
  const auto abs_layers = reference_layers(g, dinv_ref, abs_x, c.d, max_layers, c.transpose);
  const Tolerance tol = tolerance_for(c.dtype);

  for (int64_t L = 0; L <= max_layers; ++L) {
    const auto alpha = random_alpha(L, c.dtype, rng);
    const auto a = to_doubles(alpha);
    std::vector<double> want(xs.size(), 0.0), scale(xs.size(), 0.0);
    for (int64_t l = 0; l <= L; ++l) {
      for (size_t i = 0; i < want.size(); ++i) {
        want[i] += a[l] * layers[l][i];
        scale[i] += std::abs(a[l]) * abs_layers[l][i];
      }
    }
    const std::string what = str(describe(c), ", L=", L);
    Tensor out;
    try {
      out = call_propagate(rowptr, col, weight, dinv, x, alpha);
    } catch (const c10::Error& e) {
      fail(str(what, ": propagate threw: ", e.what_without_backtrace()));
      continue;
    }
    ++g_checks;
    if (out.scalar_type() != c.dtype || out.sizes() != x.sizes()) {
      fail(str(what, ": propagate returned ", out.scalar_type(), " ", out.sizes(), ", want ",
               c.dtype, " ", x.sizes()));
      continue;
    }
    expect_close(what + ", propagate", to_doubles(out), want, scale, tol, c.d);
  }

  check_propagate_rows(c, rng, max_layers, dinv, weight);

  // layer_dots: [<M^l x, grad> for l = 0..L], at the largest L.
  std::vector<double> want(max_layers + 1, 0.0), scale(max_layers + 1, 0.0);
  for (int64_t l = 0; l <= max_layers; ++l) {
    for (size_t i = 0; i < gs.size(); ++i) {
      want[l] += layers[l][i] * gs[i];
      scale[l] += abs_layers[l][i] * std::abs(gs[i]);
    }
  }
  const std::string what = str(describe(c), ", layer_dots L=", max_layers);
  try {
    const auto dots = call_layer_dots(rowptr, col, weight, dinv, x, grad, max_layers);
    ++g_checks;
    if (dots.scalar_type() != acc_dtype || dots.dim() != 1 || dots.numel() != max_layers + 1) {
      fail(str(what, ": returned ", dots.scalar_type(), " ", dots.sizes(), ", want ", acc_dtype,
               " [", max_layers + 1, "]"));
    } else {
      expect_close(what, to_doubles(dots), want, scale, tol, 1);
    }
  } catch (const c10::Error& e) {
    fail(str(what, ": threw: ", e.what_without_backtrace()));
  }
}

// ---------------------------------------------------------------- bad arguments

// Expects f() to throw c10::Error whose message mentions `mentions`.
void expect_error(const std::string& what, const std::string& mentions,
                  const std::function<void()>& f) {
  ++g_checks;
  try {
    f();
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    if (msg.find(mentions) == std::string::npos) {
      fail(str(what, ": the error does not mention \"", mentions, "\": ", msg));
    }
    return;
  } catch (const std::exception& e) {
    fail(str(what, ": threw something other than c10::Error: ", e.what()));
    return;
  }
  fail(str(what, ": did not throw"));
}

void check_bad_arguments(const Graph& g, const Prepared& p) {
  const auto dinv = at::tensor(reference_dinv(g), at::kDouble).to(at::kFloat);
  const auto x = at::rand({g.n, 8}, at::kFloat);
  const auto alpha = at::full({3}, 1.0 / 3, at::kFloat);
  const OptTensor none;

  expect_error("propagate, x with one row too many", "rowptr", [&] {
    call_propagate(p.rowptr, p.col, none, dinv, at::rand({g.n + 1, 8}, at::kFloat), alpha);
  });
  expect_error("propagate, 1-D x", "x", [&] {
    call_propagate(p.rowptr, p.col, none, dinv, at::rand({g.n}, at::kFloat), alpha);
  });
  expect_error("propagate, float64 dinv for float32 x", "dinv", [&] {
    call_propagate(p.rowptr, p.col, none, dinv.to(at::kDouble), x, alpha);
  });
  expect_error("propagate, float col", "col", [&] {
    call_propagate(p.rowptr, p.col.to(at::kFloat), none, dinv, x, alpha);
  });
  expect_error("propagate, weight with one entry too few", "weight", [&] {
    call_propagate(p.rowptr, p.col, OptTensor(at::ones({p.col.numel() - 1}, at::kFloat)), dinv, x,
                   alpha);
  });
  expect_error("propagate, empty alpha", "alpha", [&] {
    call_propagate(p.rowptr, p.col, none, dinv, x, at::empty({0}, at::kFloat));
  });
  expect_error("layer_dots, grad of another shape", "grad", [&] {
    call_layer_dots(p.rowptr, p.col, none, dinv, x, at::rand({g.n, 9}, at::kFloat), 2);
  });
  expect_error("layer_dots, negative num_layers", "num_layers", [&] {
    call_layer_dots(p.rowptr, p.col, none, dinv, x, x, -1);
  });
  expect_error("propagate_rows, a row id >= num_nodes", "rows", [&] {
    propagate_rows_op().call(p.rowptr, p.col, none, dinv, {}, {}, {}, x, alpha,
                             at::tensor(std::vector<int64_t>{0, g.n}, at::kLong), false);
  });
  expect_error("propagate_rows_backward, grad with one row too many", "grad", [&] {
    propagate_rows_backward_op().call(p.rowptr, p.col, none, dinv, {}, {}, {},
                                      at::rand({3, 8}, at::kFloat), none, alpha,
                                      at::zeros({2}, at::kLong), false);
  });
  expect_error("prepare_csr, a node id >= num_nodes", "edge_index", [&] {
    prepare_csr_op().call(edge_index_of(g), g.n - 1);
  });
  expect_error("prepare_csr, edge_index of shape [3, E]", "edge_index", [&] {
    prepare_csr_op().call(at::zeros({3, 4}, at::kLong), g.n);
  });
}

}  // namespace

int main() {
  std::mt19937_64 rng(20240601);
  at::manual_seed(7);

  std::vector<Graph> graphs;
  {
    auto w = random_graph("small graph (N=40, E~130, 10 empty rows)", 40, 30, 120, 0.1, true, rng);
    graphs.push_back(w);
    graphs.push_back(without_weights(w));
    Graph single;
    single.name = "one node, one self-loop";
    single.n = 1;
    single.src = {0};
    single.dst = {0};
    graphs.push_back(single);
    Graph empty;
    empty.name = "no edges (N=7)";
    empty.n = 7;
    graphs.push_back(empty);
  }
  // Large enough (E + N > 2 * 8192) for the CPU kernel to split the rows into
  // several chunks, with a hub that receives a quarter of the edges.
  auto big = random_graph("larger graph (N=3000, E~30k, hub at node 0)", 3000, 2800, 27000, 0.25,
                          true, rng);
  graphs.push_back(big);
  graphs.push_back(without_weights(big));

  try {
    for (const auto& g : graphs) {
      const Prepared p = prepare(g);
      const bool small = g.n <= 64;
      const std::vector<int64_t> dims =
          small ? std::vector<int64_t>{1, 5, 8, 13, 32, 64, 67, 130} : std::vector<int64_t>{67};
      for (const auto dtype : {at::kFloat, at::kDouble}) {
        for (const auto index_dtype : {at::kInt, at::kLong}) {
          for (const auto d : dims) {
            for (const bool transpose : {false, true}) {
              const bool non_contiguous = d == 13;
              run_case({&g, &p, dtype, index_dtype, d, transpose, non_contiguous}, rng, 3);
            }
          }
        }
      }
    }
    check_bad_arguments(graphs[0], prepare(graphs[0]));
  } catch (const c10::Error& e) {
    fail(str("unexpected c10::Error: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    fail(str("unexpected exception: ", e.what()));
  }

  if (g_failures > 0) {
    std::fprintf(stderr, "FAILED: %d failure(s) in %d checks\n", g_failures, g_checks);
    return 1;
  }
  std::printf("all %d checks passed\n", g_checks);
  return 0;
}
