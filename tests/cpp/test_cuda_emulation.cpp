// The CUDA kernels of propagate, layer_dots, propagate_rows and its backward
// (csrc/cuda/propagate_kernels.cuh, the source nvcc builds), run on CPU threads
// by the emulation of the CUDA execution model in cuda_emulation.h, and
// compared with a float64 reference computed here from the definition:
// propagate = sum_l alpha_l M^l x and layer_dots[l] = <M^l x, grad>,
// M = D^-1/2 W D^-1/2 with the dinv and weights that the kernels are given;
// propagate_rows = propagate read at a list of rows, and its backward
// sum_l alpha_l (M^T)^l G + G0 with G, G0 the gradients of the two outputs
// summed at their rows. Tolerances are those of tests/test_cuda.py, with an
// absolute term for the spacing of float16's subnormal numbers.
//
// The corpus covers every branch of the schedule and of the epilogues: an
// empty graph (no edges), isolated nodes, a hub row of 5,000 edges, item sizes
// 1, 2, 7, 128 and 100,000 (the value LIGHTGCN_EXT_CUDA_ITEM_SIZE would set),
// d in {1, 3, 8, 64, 65, 130}, L in 1..4, weighted and unweighted, symmetric
// and directed graphs, float32, float64, float16 and bfloat16, float32 with
// bfloat16 layers (the ops' bf16=True), int32 and int64 columns, and x / out /
// grad aligned to a vector (vectorized kernels) or not (scalar kernels). L =
// 0, N = 0 and d = 0 launch nothing for propagate, layer_dots and
// propagate_rows: the ATen entry points answer them (tests/test_cuda.py
// checks them on a GPU).
//
// propagate_rows runs on row lists with repeats, isolated nodes and empty
// rows (the hub's row among them), every node, or one; its backward with L =
// 0 to 3, with and without the second output's gradient, over M itself as
// M^T (symmetric graphs, unweighted) or over the transposed CSR. Beside the
// reference, both must give the numbers of propagate's kernels on the same
// data bit for bit: the forward those of propagate at the listed rows, the
// backward those of propagate over M^T applied to the dense G.
//
// bfloat16 layers are held to tests/test_precision.py's bound (each gathered
// layer rounded once to bfloat16, on top of float32's rounding), and, on
// features and weights where float32 arithmetic is exact (dinv = 1, weights
// and alphas powers of two, features on a grid finer than bfloat16), to a
// float64 reference that rounds the same layers at the same points, bit for
// bit: propagate, propagate_rows and its backward, d in {1, 64, 65}, L in
// 1..3, weighted and unweighted, repeated rows, the empty graph.
//
// Every array the kernels read or write is its own heap allocation of exactly
// its size, so that under AddressSanitizer a read past any end is reported.
//
//   test_cuda_emulation            every case
//   test_cuda_emulation SUBSTRING  the cases whose name contains SUBSTRING
#include "cuda_emulation.h"

#include "cuda/propagate_kernels.cuh"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <new>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace {

namespace kernels = lightgcn_ext::cuda_kernels;

int failures = 0;


void fail(const std::string& message) {
  if (failures++ < 30) std::printf("FAIL: %s\n", message.c_str());
}

// ---------------------------------------------------------------- graphs
// A CSR with rows = destinations: row r sums over the sources col[rowptr[r]:rowptr[r+1]].
struct Csr {
  std::string name;
  int64_t n = 0;
  std::vector<int64_t> rowptr{0}, col;
  std::vector<double> weight;  // > 0
  bool symmetric = false;      // every edge's reverse is an edge (weights aside)
};

Csr from_edges(std::string name, int64_t n, std::vector<std::pair<int64_t, int64_t>> edges,
               std::mt19937_64& rng) {
  std::stable_sort(edges.begin(), edges.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  Csr g;
  g.name = std::move(name);
  g.n = n;
  g.rowptr.assign(n + 1, 0);
  std::uniform_real_distribution<double> weight(0.1, 2.1);
  for (const auto& [dst, src] : edges) {
    ++g.rowptr[dst + 1];
    g.col.push_back(src);
    g.weight.push_back(weight(rng));
  }
  for (int64_t r = 0; r < n; ++r) g.rowptr[r + 1] += g.rowptr[r];
  return g;
}

// Rows of Poisson degree, a share of them empty (the first and last always),
// self-loops and duplicate edges, and `hub` extra edges into row 1. A
// symmetric graph holds both directions of every edge, and its sources are
// drawn from the rows that have edges, so that the empty rows stay empty
// (isolated nodes).
Csr random_graph(std::string name, int64_t n, double avg_degree, double empty_share, int64_t hub,
                 bool symmetric, std::mt19937_64& rng) {
  std::poisson_distribution<int64_t> degree(avg_degree);
  std::bernoulli_distribution empty(empty_share), loop(0.1), duplicate(0.1);
  std::vector<int64_t> count(n);
  std::vector<int64_t> sources;
  for (int64_t r = 0; r < n; ++r) {
    count[r] = (empty(rng) || r == 0 || r == n - 1) ? 0 : degree(rng) + (r == 1 ? hub : 0);
    if (count[r] > 0 || !symmetric) sources.push_back(r);
  }
  std::uniform_int_distribution<size_t> source(0, sources.size() - 1);
  std::vector<std::pair<int64_t, int64_t>> edges;
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t i = 0; i < count[r]; ++i) {
      const int64_t src = loop(rng) ? r : sources[source(rng)];
      edges.emplace_back(r, src);
      if (duplicate(rng)) edges.emplace_back(r, src);
    }
  }
  if (symmetric) {
    const size_t directed = edges.size();
    for (size_t i = 0; i < directed; ++i) {
      if (edges[i].first != edges[i].second) edges.emplace_back(edges[i].second, edges[i].first);
    }
  }
  Csr g = from_edges(std::move(name), n, std::move(edges), rng);
  g.symmetric = symmetric;
  return g;
}

// The CSR of W^T (the operator M^T over M's dinv), each edge with its weight.
Csr transposed(const Csr& g) {
  Csr t;
  t.name = g.name + "^T";
  t.n = g.n;
  t.symmetric = g.symmetric;
  t.rowptr.assign(g.n + 1, 0);
  for (const int64_t c : g.col) ++t.rowptr[c + 1];
  for (int64_t r = 0; r < g.n; ++r) t.rowptr[r + 1] += t.rowptr[r];
  t.col.resize(g.col.size());
  t.weight.resize(g.col.size());
  std::vector<int64_t> cursor(t.rowptr.begin(), t.rowptr.end() - 1);
  for (int64_t r = 0; r < g.n; ++r) {
    for (int64_t k = g.rowptr[r]; k < g.rowptr[r + 1]; ++k) {
      const int64_t slot = cursor[g.col[k]]++;
      t.col[slot] = r;
      t.weight[slot] = g.weight[k];
    }
  }
  return t;
}

// ------------------------------------------------------------- device memory
// Exactly `count` elements, starting `offset` elements into an allocation
// aligned to 64 bytes (offset 1: a pointer that no vector load may use).
template <typename T>
class Array {
 public:
  Array(int64_t count, int offset = 0)
      : bytes_((count + offset) * sizeof(T)),
        base_(static_cast<char*>(::operator new(std::max<size_t>(bytes_, 1), std::align_val_t(64)))),
        data_(reinterpret_cast<T*>(base_) + offset),
        count_(count) {}
  ~Array() { ::operator delete(base_, std::align_val_t(64)); }
  Array(const Array&) = delete;
  Array& operator=(const Array&) = delete;
  T* data() { return data_; }
  const T* data() const { return data_; }
  T& operator[](int64_t i) { return data_[i]; }
  const T& operator[](int64_t i) const { return data_[i]; }
  int64_t size() const { return count_; }

 private:
  size_t bytes_;
  char* base_;
  T* data_;
  int64_t count_;
};

// allocate(bytes) for the kernels' scratch: one exact allocation each, freed
// at the end of the call.
class CallMemory {
 public:
  void* operator()(int64_t bytes) {
    arrays_.push_back(std::make_unique<Array<char>>(bytes));
    return arrays_.back()->data();
  }

 private:
  std::vector<std::unique_ptr<Array<char>>> arrays_;
};

// ---------------------------------------------------------------- reference
template <typename T>
double eps() {
  return static_cast<double>(std::numeric_limits<T>::epsilon());
}

// [M^l v for l = 0..L] in float64, with M = D W D from the given weights and dinv.
std::vector<std::vector<double>> layers(const Csr& g, const std::vector<double>& w,
                                        const std::vector<double>& dinv,
                                        const std::vector<double>& v, int64_t d, int64_t L) {
  std::vector<std::vector<double>> out{v};
  for (int64_t l = 1; l <= L; ++l) {
    std::vector<double> next(g.n * d, 0.0);
    const auto& prev = out.back();
    for (int64_t r = 0; r < g.n; ++r) {
      for (int64_t k = g.rowptr[r]; k < g.rowptr[r + 1]; ++k) {
        const double c = dinv[r] * w[k] * dinv[g.col[k]];
        for (int64_t j = 0; j < d; ++j) next[r * d + j] += c * prev[g.col[k] * d + j];
      }
    }
    out.push_back(std::move(next));
  }
  return out;
}

// ---------------------------------------------------------------- cases
// The features' type, and f32_bf16: float32 features whose gathered layers
// are stored in bfloat16 (the ops' bf16=True).
enum class Type { f32, f64, f16, bf16, f32_bf16 };
const char* type_name(Type t) {
  switch (t) {
    case Type::f32: return "float32";
    case Type::f64: return "float64";
    case Type::f16: return "float16";
    case Type::bf16: return "bfloat16";
    default: return "float32-bf16-layers";
  }
}

struct Case {
  const Csr* graph;
  int64_t d;
  int64_t L;
  Type type;
  bool int64_col;
  bool weighted;
  int64_t item_size;
  bool misaligned;

  std::string name() const {
    return graph->name + " d=" + std::to_string(d) + " L=" + std::to_string(L) + " " +
           type_name(type) + " col=" + (int64_col ? "int64" : "int32") +
           (weighted ? " weighted" : " unweighted") + " item_size=" + std::to_string(item_size) +
           (misaligned ? " misaligned" : " aligned");
  }
};

// The row lists of propagate_rows.
enum class Listed { kRepeats, kAll, kOne };

// A propagate_rows case: the forward on `listed` and its backward, with
// the gradient of x[rows] too when with_grad_x.
struct RowsCase {
  Case c;
  Listed listed;
  bool with_grad_x;

  std::string name() const {
    static const char* const listed_names[] = {"repeats", "all", "one"};
    return "rows " + c.name() + " listed=" + listed_names[static_cast<int>(listed)] +
           (with_grad_x ? " grad_x" : "");
  }
};

// The kernels a call runs: its dtype, column type, vector width (16 bytes or one value)
// and L = 1, 2 or more (see main); `op` tells propagate's kernels from those that
// only the backward of propagate_rows runs (it gathers a compact x).
std::string kernels_key(const char* op, Type type, bool int64_col, bool vectorized, int64_t L) {
  return std::string(op) + " " + type_name(type) + (int64_col ? " int64" : " int32") +
         (vectorized ? " vectorized" : " scalar") + " L=" + std::to_string(std::min<int64_t>(L, 3));
}
std::set<std::string> executed;  // by the cases that ran

// The item size as the CUDA entry points read it, from LIGHTGCN_EXT_CUDA_ITEM_SIZE.
int64_t item_size_of(const Case& c) {
  setenv("LIGHTGCN_EXT_CUDA_ITEM_SIZE", std::to_string(c.item_size).c_str(), 1);
  const int64_t item_size = kernels::item_size_from(std::getenv("LIGHTGCN_EXT_CUDA_ITEM_SIZE"));
  unsetenv("LIGHTGCN_EXT_CUDA_ITEM_SIZE");
  if (item_size != c.item_size) {
    fail(c.name() + ": LIGHTGCN_EXT_CUDA_ITEM_SIZE read as " + std::to_string(item_size));
  }
  return item_size;
}

// A graph's operands as the kernels see them, and in float64 as they are
// stored: weights (1 when unweighted) and dinv, from the graph's in-degrees or
// given (M^T takes M's dinv).
template <typename scalar_t, typename index_t>
struct Operands {
  using acc_t = at::opmath_type<scalar_t>;
  Array<int64_t> rowptr;
  Array<index_t> col;
  Array<acc_t> weight, dinv;
  std::vector<double> w, dinv64;
  bool weighted;

  Operands(const Csr& g, bool weighted_, const Operands* dinv_of = nullptr)
      : rowptr(g.n + 1),
        col(static_cast<int64_t>(g.col.size())),
        weight(weighted_ ? static_cast<int64_t>(g.col.size()) : 0),
        dinv(g.n),
        w(g.col.size()),
        dinv64(g.n),
        weighted(weighted_) {
    const int64_t n = g.n, e = static_cast<int64_t>(g.col.size());
    for (int64_t r = 0; r <= n; ++r) rowptr[r] = g.rowptr[r];
    for (int64_t k = 0; k < e; ++k) {
      col[k] = static_cast<index_t>(g.col[k]);
      w[k] = weighted ? static_cast<double>(static_cast<acc_t>(g.weight[k])) : 1.0;
      if (weighted) weight[k] = static_cast<acc_t>(g.weight[k]);
    }
    std::vector<double> deg(n, 0.0);
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t k = g.rowptr[r]; k < g.rowptr[r + 1]; ++k) deg[r] += w[k];
      dinv[r] = dinv_of != nullptr ? dinv_of->dinv[r]
                                   : static_cast<acc_t>(deg[r] > 0 ? 1.0 / std::sqrt(deg[r]) : 0.0);
      dinv64[r] = static_cast<double>(dinv[r]);
    }
  }

  // No normalization: dinv = 1, so that M is the weighted adjacency itself.
  void unit_dinv() {
    for (int64_t r = 0; r < dinv.size(); ++r) {
      dinv[r] = acc_t(1);
      dinv64[r] = 1.0;
    }
  }

  kernels::DeviceGraph<scalar_t, index_t> device() const {
    return {rowptr.data(), col.data(), weighted ? weight.data() : nullptr, dinv.data(),
            dinv.size(), col.size()};
  }
};

// tests/test_cuda.py's tolerance for a propagation of L layers whose inputs
// were rounded `roundings` times to the type: relative to sum_l |alpha_l|
// |M|^l |x| (`bound`).
template <typename scalar_t>
double propagate_rel(const Csr& g, int64_t L, int64_t roundings) {
  using acc_t = at::opmath_type<scalar_t>;
  int64_t max_degree = 0;
  for (int64_t r = 0; r < g.n; ++r) max_degree = std::max(max_degree, g.rowptr[r + 1] - g.rowptr[r]);
  return 2 * (L * (std::sqrt(static_cast<double>(max_degree)) + 2) * eps<acc_t>() +
              roundings * eps<scalar_t>());
}

// |got[i] - want[i]| <= rel * bound[i] for every i, got finite; reports the worst entry.
template <typename scalar_t>
void check_elementwise(const std::string& what, const scalar_t* got, const std::vector<double>& want,
                       const std::vector<double>& bound, double rel, int64_t d) {
  double worst = 0;
  int64_t worst_i = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double value = static_cast<double>(got[i]);
    const double ratio = std::isfinite(value) ? std::abs(value - want[i]) / (rel * bound[i] + 1e-30)
                                              : std::numeric_limits<double>::infinity();
    if (!(ratio <= worst)) {
      worst = ratio;
      worst_i = static_cast<int64_t>(i);
    }
  }
  if (!(worst <= 1)) {
    fail(what + " at row " + std::to_string(worst_i / d) + ", column " +
         std::to_string(worst_i % d) + ": got " + std::to_string(static_cast<double>(got[worst_i])) +
         ", want " + std::to_string(want[worst_i]) + " (" + std::to_string(worst) +
         "x the tolerance)");
  }
}

// sum_l alpha_l layers[l], elementwise.
std::vector<double> alpha_sum(const std::vector<std::vector<double>>& layers,
                              const std::vector<double>& alpha) {
  std::vector<double> out(layers[0].size(), 0.0);
  for (size_t l = 0; l < layers.size(); ++l) {
    for (size_t i = 0; i < out.size(); ++i) out[i] += alpha[l] * layers[l][i];
  }
  return out;
}

// Random values of the type, and their float64 copies.
template <typename scalar_t>
std::vector<double> fill_normal(Array<scalar_t>& a, std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  std::vector<double> values(a.size());
  for (int64_t i = 0; i < a.size(); ++i) {
    a[i] = static_cast<scalar_t>(normal(rng));
    values[i] = static_cast<double>(a[i]);
  }
  return values;
}

template <typename acc_t>
std::vector<double> fill_alpha(Array<acc_t>& alpha, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> uniform(0.1, 1.1);
  std::vector<double> values(alpha.size());
  for (int64_t l = 0; l < alpha.size(); ++l) {
    alpha[l] = static_cast<acc_t>(uniform(rng));
    values[l] = static_cast<double>(alpha[l]);
  }
  return values;
}

std::vector<double> abs_of(std::vector<double> v) {
  for (double& value : v) value = std::abs(value);
  return v;
}

// The unit roundoff of bfloat16 (8 significant bits, round to nearest even).
constexpr double kBf16UnitRoundoff = 1.0 / 256;

// tests/test_precision.py's bound on what bfloat16 layers add to the error
// of sum_l alpha_l M^l v: rounding each gathered layer h_l (Horner's partial
// sums h_L = alpha_L v, h_l = alpha_l v + M h_{l+1}) errs by at most u |h_l|,
// and that error reaches the result through M^l (M >= 0 here), so |error|
// <= u sum_{l=1..L} M^l |h_l|; 5% more for the second-order terms.
std::vector<double> bf16_layers_bound(const Csr& g, const std::vector<double>& w,
                                      const std::vector<double>& dinv,
                                      const std::vector<double>& v, int64_t d,
                                      const std::vector<double>& alpha) {
  const int64_t L = static_cast<int64_t>(alpha.size()) - 1;
  std::vector<double> h(v.size()), bound(v.size(), 0.0);
  for (size_t i = 0; i < v.size(); ++i) h[i] = alpha[L] * v[i];
  for (int64_t l = L; l >= 1; --l) {
    const auto reached = layers(g, w, dinv, abs_of(h), d, l).back();
    for (size_t i = 0; i < v.size(); ++i) bound[i] += 1.05 * kBf16UnitRoundoff * reached[i];
    if (l > 1) {
      const auto mh = layers(g, w, dinv, h, d, 1).back();
      for (size_t i = 0; i < v.size(); ++i) h[i] = alpha[l - 1] * v[i] + mh[i];
    }
  }
  return bound;
}

// The elementwise tolerance of a propagation of L layers over g whose inputs
// were rounded `roundings` times to the type: propagate_rel relative to
// abs_bound; plus, as an absolute term, `roundings` times the spacing of the
// type's subnormal numbers (float16's below 6e-5), where a rounding errs by up
// to half of it whatever the value; plus, where the layers are stored in
// bfloat16 (store_t is not scalar_t), the bound of their rounding, bf16_bound.
template <typename scalar_t, typename store_t>
std::vector<double> propagate_tolerance(const Csr& g, int64_t L, int64_t roundings,
                                        const std::vector<double>& abs_bound,
                                        const std::vector<double>& bf16_bound) {
  const double rel = propagate_rel<scalar_t>(g, L, roundings);
  const double subnormal =
      roundings * static_cast<double>(std::numeric_limits<scalar_t>::denorm_min());
  std::vector<double> tol(abs_bound.size());
  for (size_t i = 0; i < tol.size(); ++i) {
    tol[i] = rel * abs_bound[i] + subnormal +
             (std::is_same_v<scalar_t, store_t> ? 0.0 : bf16_bound[i]);
  }
  return tol;
}

template <typename scalar_t, typename store_t, typename index_t>
void run_case(const Case& c, std::mt19937_64& rng) {
  using acc_t = at::opmath_type<scalar_t>;
  const Csr& g = *c.graph;
  const int64_t n = g.n, d = c.d, L = c.L;
  const int offset = c.misaligned ? 1 : 0;
  const std::string name = c.name();

  const Operands<scalar_t, index_t> m(g, c.weighted);
  Array<scalar_t> x(n * d, offset), grad(n * d, offset), out(n * d, offset);
  const auto x64 = fill_normal(x, rng), grad64 = fill_normal(grad, rng);
  const auto absx = abs_of(x64), absgrad = abs_of(grad64);
  Array<acc_t> alpha(L + 1), dots(L + 1);
  const auto alpha64 = fill_alpha(alpha, rng);

  const int64_t item_size = item_size_of(c);
  executed.insert(kernels_key("propagate", c.type, c.int64_col,
                              kernels::can_vectorize<scalar_t>(d, {x.data(), out.data()}), L));
  {
    CallMemory memory;
    kernels::propagate_sweeps<store_t>(m.device(), d, item_size, x.data(), alpha.data(), L,
                                       out.data(), memory, nullptr);
  }

  // tests/test_cuda.py's tolerances: rounding relative to sum_l |alpha_l| |M|^l |x|.
  const auto want = layers(g, m.w, m.dinv64, x64, d, L);
  const auto abs_layers = layers(g, m.w, m.dinv64, absx, d, L);
  check_elementwise(name + ": propagate", out.data(), alpha_sum(want, alpha64),
                    propagate_tolerance<scalar_t, store_t>(
                        g, L, L + 1, alpha_sum(abs_layers, alpha64),
                        bf16_layers_bound(g, m.w, m.dinv64, x64, d, alpha64)),
                    1.0, d);
  if constexpr (!std::is_same_v<scalar_t, store_t>) return;  // layer_dots has no bf16 layers

  {
    CallMemory memory;
    kernels::layer_dots_sweeps(m.device(), d, item_size, x.data(), grad.data(), L, dots.data(),
                               memory, nullptr);
  }

  double norm_x = 0, norm_grad = 0;
  for (int64_t i = 0; i < n * d; ++i) {
    norm_x += x64[i] * x64[i];
    norm_grad += grad64[i] * grad64[i];
  }
  const double reduction = (std::is_same_v<scalar_t, double> ? 1e-12 : 1e-4) *
                           (std::sqrt(norm_x) * std::sqrt(norm_grad) + 1e-30);
  const double storage_eps = sizeof(scalar_t) == 2 ? eps<scalar_t>() : 0.0;
  for (int64_t l = 0; l <= L; ++l) {
    double ref = 0, abs_dot = 0;
    for (int64_t i = 0; i < n * d; ++i) {
      ref += want[l][i] * grad64[i];
      abs_dot += abs_layers[l][i] * absgrad[i];
    }
    const double tol = reduction + 2 * l * storage_eps * abs_dot;
    const double got = static_cast<double>(dots[l]);
    if (!(std::abs(got - ref) <= tol)) {
      fail(name + ": layer_dots[" + std::to_string(l) + "]: got " + std::to_string(got) +
           ", want " + std::to_string(ref) + " (tolerance " + std::to_string(tol) + ")");
    }
  }
}

// The listed rows of a case: with repeats (isolated nodes, empty rows and the
// hub's row among them: rows 0, 1 and n - 1), every node in a shuffled order,
// or node n - 1 alone.
std::vector<int64_t> listed_rows(const Csr& g, Listed listed, std::mt19937_64& rng) {
  std::vector<int64_t> rows;
  if (listed == Listed::kOne) return {g.n - 1};
  if (listed == Listed::kAll) {
    for (int64_t r = 0; r < g.n; ++r) rows.push_back(r);
    std::shuffle(rows.begin(), rows.end(), rng);
    return rows;
  }
  std::uniform_int_distribution<int64_t> node(0, g.n - 1);
  for (int64_t i = 0; i < g.n / 2 + 1; ++i) rows.push_back(node(rng));
  for (const int64_t r : {int64_t{0}, g.n - 1, g.n - 1, std::min<int64_t>(1, g.n - 1)}) {
    rows.push_back(r);
  }
  rows.push_back(rows.front());  // a repeat far from the first
  return rows;
}

// A row list as the kernels take it: rows, and rows sorted stably with the
// entry of rows at each sorted position (the CUDA entry point sorts with
// at::sort(stable=true)).
struct RowList {
  int64_t k;
  Array<int64_t> rows, sorted, order;

  explicit RowList(const std::vector<int64_t>& ids)
      : k(static_cast<int64_t>(ids.size())), rows(k), sorted(k), order(k) {
    std::vector<int64_t> order_ids(k);
    for (int64_t i = 0; i < k; ++i) {
      rows[i] = ids[i];
      order_ids[i] = i;
    }
    std::stable_sort(order_ids.begin(), order_ids.end(),
                     [&](int64_t a, int64_t b) { return ids[a] < ids[b]; });
    for (int64_t t = 0; t < k; ++t) {
      order[t] = order_ids[t];
      sorted[t] = ids[order_ids[t]];
    }
  }
};

// propagate_rows forward and backward against the reference and against
// propagate's kernels (see the top of the file).
template <typename scalar_t, typename store_t, typename index_t>
void run_rows_case(const RowsCase& rc, std::mt19937_64& rng) {
  using acc_t = at::opmath_type<scalar_t>;
  const Case& c = rc.c;
  const Csr& g = *c.graph;
  const int64_t n = g.n, d = c.d, L = c.L;
  const int offset = c.misaligned ? 1 : 0;
  const std::string name = rc.name();

  // M^T: M itself where the graph is symmetric and unweighted (W = W^T), as
  // the op's schema allows; else the transposed CSR, over M's dinv.
  const Csr gt = transposed(g);
  const Operands<scalar_t, index_t> m(g, c.weighted);
  const bool m_is_symmetric = g.symmetric && !c.weighted;
  const Operands<scalar_t, index_t> mt_own(gt, c.weighted, &m);
  const Operands<scalar_t, index_t>& mt = m_is_symmetric ? m : mt_own;

  const RowList list(listed_rows(g, rc.listed, rng));
  const int64_t k = list.k;
  const Array<int64_t> &rows = list.rows, &sorted = list.sorted, &order = list.order;

  Array<scalar_t> x(n * d, offset), full(n * d, offset), out(k * d, offset);
  Array<scalar_t> grad(k * d, offset), grad_x(k * d, offset), grad_in(n * d, offset);
  const auto x64 = fill_normal(x, rng), grad64 = fill_normal(grad, rng);
  const auto grad_x64 = fill_normal(grad_x, rng);
  Array<acc_t> alpha(L + 1);
  const auto alpha64 = fill_alpha(alpha, rng);
  const int64_t item_size = item_size_of(c);

  // The forward (L >= 1: the entry point answers L = 0 itself).
  if (L >= 1) {
    {
      CallMemory memory;
      kernels::propagate_rows_sweeps<store_t>(m.device(), d, item_size, x.data(), alpha.data(),
                                              L, rows.data(), k, out.data(), memory, nullptr);
    }
    {
      CallMemory memory;
      kernels::propagate_sweeps<store_t>(m.device(), d, item_size, x.data(), alpha.data(), L,
                                         full.data(), memory, nullptr);
    }
    const auto want = alpha_sum(layers(g, m.w, m.dinv64, x64, d, L), alpha64);
    const auto tol = propagate_tolerance<scalar_t, store_t>(
        g, L, L + 1, alpha_sum(layers(g, m.w, m.dinv64, abs_of(x64), d, L), alpha64),
        bf16_layers_bound(g, m.w, m.dinv64, x64, d, alpha64));
    std::vector<double> want_rows(k * d), tol_rows(k * d);
    int64_t differ = 0;
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j < d; ++j) {
        want_rows[i * d + j] = want[rows[i] * d + j];
        tol_rows[i * d + j] = tol[rows[i] * d + j];
        differ += !(out[i * d + j] == full[rows[i] * d + j]);
      }
    }
    check_elementwise(name + ": propagate_rows", out.data(), want_rows, tol_rows, 1.0, d);
    if (differ > 0) {
      fail(name + ": propagate_rows differs from propagate at its rows in " +
           std::to_string(differ) + " entries (they must be the same, bit for bit)");
    }
  }

  // The backward. The dense G: repeats summed in list order in the
  // accumulation type, then rounded to the type, as the kernels store it;
  // the sums of |grad| and |grad_x| bound the rounding of the repeats' sums.
  std::vector<acc_t> g_sum(n * d, acc_t(0));
  std::vector<double> g0(n * d, 0.0), abs_g(n * d, 0.0), abs_g0(n * d, 0.0);
  std::vector<int64_t> repeats(n, 0);
  for (int64_t i = 0; i < k; ++i) {
    ++repeats[rows[i]];
    for (int64_t j = 0; j < d; ++j) {
      g_sum[rows[i] * d + j] += static_cast<acc_t>(grad[i * d + j]);
      g0[rows[i] * d + j] += grad_x64[i * d + j];
      abs_g[rows[i] * d + j] += std::abs(grad64[i * d + j]);
      abs_g0[rows[i] * d + j] += std::abs(grad_x64[i * d + j]);
    }
  }
  const int64_t max_repeats = *std::max_element(repeats.begin(), repeats.end());
  std::vector<double> g64(n * d);
  for (int64_t i = 0; i < n * d; ++i) {
    grad_in[i] = static_cast<scalar_t>(g_sum[i]);
    g64[i] = static_cast<double>(grad_in[i]);
  }
  Array<scalar_t> grad_out(n * d, offset), dense_out(n * d, offset);
  executed.insert(kernels_key("propagate_rows_backward", c.type, c.int64_col,
                              kernels::can_vectorize<scalar_t>(d, {grad_out.data()}), L));
  {
    CallMemory memory;
    kernels::propagate_rows_backward_sweeps<store_t>(
        mt.device(), d, item_size, grad.data(), rc.with_grad_x ? grad_x.data() : nullptr,
        alpha.data(), L, sorted.data(), order.data(), k, grad_out.data(), memory, nullptr);
  }
  // The reference over the true M^T (gt), whichever CSR the kernels were given.
  auto want = alpha_sum(layers(gt, mt_own.w, m.dinv64, g64, d, L), alpha64);
  auto bound = alpha_sum(layers(gt, mt_own.w, m.dinv64, abs_g, d, L), alpha64);
  if (rc.with_grad_x) {
    for (int64_t i = 0; i < n * d; ++i) {
      want[i] += g0[i];
      bound[i] += abs_g0[i];
    }
  }
  // More roundings than a propagation: G's, and those of the repeats' sums.
  check_elementwise(name + ": propagate_rows_backward", grad_out.data(), want,
                    propagate_tolerance<scalar_t, store_t>(
                        gt, L, L + 2 + max_repeats, bound,
                        bf16_layers_bound(gt, mt_own.w, m.dinv64, g64, d, alpha64)),
                    1.0, d);
  if (!rc.with_grad_x && L >= 1) {
    {
      CallMemory memory;
      kernels::propagate_sweeps<store_t>(mt.device(), d, item_size, grad_in.data(),
                                         alpha.data(), L, dense_out.data(), memory, nullptr);
    }
    int64_t differ = 0;
    for (int64_t i = 0; i < n * d; ++i) differ += !(grad_out[i] == dense_out[i]);
    if (differ > 0) {
      fail(name + ": propagate_rows_backward differs from propagate over M^T in " +
           std::to_string(differ) + " entries (they must be the same, bit for bit)");
    }
  }
}

template <typename scalar_t, typename store_t = scalar_t>
void run_typed(const Case& c, std::mt19937_64& rng) {
  if (c.int64_col) {
    run_case<scalar_t, store_t, int64_t>(c, rng);
  } else {
    run_case<scalar_t, store_t, int32_t>(c, rng);
  }
}

template <typename scalar_t, typename store_t = scalar_t>
void run_rows_typed(const RowsCase& rc, std::mt19937_64& rng) {
  if (rc.c.int64_col) {
    run_rows_case<scalar_t, store_t, int64_t>(rc, rng);
  } else {
    run_rows_case<scalar_t, store_t, int32_t>(rc, rng);
  }
}

void run(const Case& c, std::mt19937_64& rng) {
  switch (c.type) {
    case Type::f32: return run_typed<float>(c, rng);
    case Type::f64: return run_typed<double>(c, rng);
    case Type::f16: return run_typed<c10::Half>(c, rng);
    case Type::bf16: return run_typed<c10::BFloat16>(c, rng);
    case Type::f32_bf16: return run_typed<float, c10::BFloat16>(c, rng);
  }
}

void run(const RowsCase& rc, std::mt19937_64& rng) {
  switch (rc.c.type) {
    case Type::f32: return run_rows_typed<float>(rc, rng);
    case Type::f64: return run_rows_typed<double>(rc, rng);
    case Type::f16: return run_rows_typed<c10::Half>(rc, rng);
    case Type::bf16: return run_rows_typed<c10::BFloat16>(rc, rng);
    case Type::f32_bf16: return run_rows_typed<float, c10::BFloat16>(rc, rng);
  }
}

// ------------------------------------------------- bfloat16 layers, exactly
// A case where float32 arithmetic is exact: no normalization (dinv = 1),
// weights 1/2, 1 or 2 (all 1 unweighted), alphas 1/2, 1/4, 1/8, 1/8 and
// features, gradients on a grid of 2^-9 in (-1, 1), which bfloat16 cannot
// hold (9 bits), so that the first layer is rounded too. The kernels must
// then give the float64 reference that rounds the same layers, bit for bit.
struct GridCase {
  const Csr* graph;
  int64_t d;
  int64_t L;
  bool weighted;
  int64_t item_size;

  std::string name() const {
    return "bf16 layers exact " + graph->name + " d=" + std::to_string(d) +
           " L=" + std::to_string(L) + (weighted ? " weighted" : " unweighted") +
           " item_size=" + std::to_string(item_size);
  }
};

double round_to_bf16(double v) {
  return static_cast<double>(static_cast<float>(c10::BFloat16(static_cast<float>(v))));
}

// sum_l alpha_l A^l v as the kernels compute it with bfloat16 layers and
// dinv = 1 (A the weighted adjacency of g): the layers s_L = alpha_L v, s_l =
// alpha_l v + A s_{l+1} (l = L-1 .. 1) rounded to bfloat16 where `round`,
// the result alpha_0 v + A s_1 not.
std::vector<double> horner_bf16(const Csr& g, const std::vector<double>& w,
                                const std::vector<double>& v, int64_t d,
                                const std::vector<double>& alpha, bool round) {
  const int64_t L = static_cast<int64_t>(alpha.size()) - 1;
  const std::vector<double> ones(g.n, 1.0);
  auto rounded = [&](double value) { return round ? round_to_bf16(value) : value; };
  std::vector<double> s(v.size());
  for (size_t i = 0; i < v.size(); ++i) s[i] = rounded(alpha[L] * v[i]);
  for (int64_t l = L - 1; l >= 0; --l) {
    const auto as = layers(g, w, ones, s, d, 1).back();
    for (size_t i = 0; i < v.size(); ++i) {
      s[i] = alpha[l] * v[i] + as[i];
      if (l > 0) s[i] = rounded(s[i]);
    }
  }
  return s;
}

template <typename T>
std::vector<double> fill_grid(Array<T>& a, std::mt19937_64& rng) {
  std::uniform_int_distribution<int> step(-511, 511);
  std::vector<double> values(a.size());
  for (int64_t i = 0; i < a.size(); ++i) {
    values[i] = step(rng) / 512.0;
    a[i] = static_cast<T>(values[i]);
  }
  return values;
}

// A failure, with the number of entries, where got is not want rounded to float32.
void check_bits(const std::string& what, const float* got, const std::vector<double>& want) {
  int64_t differ = 0;
  size_t first = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!(got[i] == static_cast<float>(want[i])) && differ++ == 0) first = i;
  }
  if (differ > 0) {
    fail(what + ": " + std::to_string(differ) + " entries differ from the reference that rounds "
         "the same layers (first: entry " + std::to_string(first) + ", got " +
         std::to_string(got[first]) + ", want " + std::to_string(want[first]) + ")");
  }
}

int grid_cases_rounding = 0;  // the cases whose roundings change the reference

void run(const GridCase& gc, std::mt19937_64& rng) {
  using store_t = c10::BFloat16;
  const int64_t n = gc.graph->n, d = gc.d, L = gc.L;
  const std::string name = gc.name();
  Csr g = *gc.graph;
  std::uniform_int_distribution<int> power(-1, 1);
  for (double& w : g.weight) w = std::ldexp(1.0, power(rng));
  const Csr gt = transposed(g);
  Operands<float, int32_t> m(g, gc.weighted);
  m.unit_dinv();
  const Operands<float, int32_t> mt(gt, gc.weighted, &m);
  const double alphas[] = {0.5, 0.25, 0.125, 0.125};
  const std::vector<double> alpha64(alphas, alphas + L + 1);
  Array<float> alpha(L + 1);
  for (int64_t l = 0; l <= L; ++l) alpha[l] = static_cast<float>(alpha64[l]);
  const int64_t item_size = item_size_of({gc.graph, d, L, Type::f32_bf16, false, gc.weighted,
                                          gc.item_size, false});

  Array<float> x(n * d), out(n * d);
  const auto x64 = fill_grid(x, rng);
  const auto want = horner_bf16(g, m.w, x64, d, alpha64, true);
  if (want != horner_bf16(g, m.w, x64, d, alpha64, false)) ++grid_cases_rounding;
  {
    CallMemory memory;
    kernels::propagate_sweeps<store_t>(m.device(), d, item_size, x.data(), alpha.data(), L,
                                       out.data(), memory, nullptr);
  }
  check_bits(name + ": propagate", out.data(), want);

  const RowList list(listed_rows(g, Listed::kRepeats, rng));
  const int64_t k = list.k;
  const Array<int64_t> &rows = list.rows, &sorted = list.sorted, &order = list.order;
  Array<float> out_rows(k * d);
  {
    CallMemory memory;
    kernels::propagate_rows_sweeps<store_t>(m.device(), d, item_size, x.data(), alpha.data(), L,
                                            rows.data(), k, out_rows.data(), memory, nullptr);
  }
  std::vector<double> want_rows(k * d);
  for (int64_t i = 0; i < k * d; ++i) want_rows[i] = want[rows[i / d] * d + i % d];
  check_bits(name + ": propagate_rows", out_rows.data(), want_rows);

  // The backward: the same scheme over A^T from the gradient G at the rows
  // (repeats summed: sums of the grid, exact), plus the gradient G0 of x[rows].
  Array<float> grad(k * d), grad_x(k * d), grad_out(n * d);
  const auto grad64 = fill_grid(grad, rng), grad_x64 = fill_grid(grad_x, rng);
  std::vector<double> g_dense(n * d, 0.0), g0(n * d, 0.0);
  for (int64_t i = 0; i < k * d; ++i) {
    g_dense[rows[i / d] * d + i % d] += grad64[i];
    g0[rows[i / d] * d + i % d] += grad_x64[i];
  }
  auto want_t = horner_bf16(gt, mt.w, g_dense, d, alpha64, true);
  for (int64_t i = 0; i < n * d; ++i) want_t[i] += g0[i];
  {
    CallMemory memory;
    kernels::propagate_rows_backward_sweeps<store_t>(
        mt.device(), d, item_size, grad.data(), grad_x.data(), alpha.data(), L, sorted.data(),
        order.data(), k, grad_out.data(), memory, nullptr);
  }
  check_bits(name + ": propagate_rows_backward", grad_out.data(), want_t);
}

// The cases whose name contains `filter`, timed; returns how many ran. Each
// case draws its data from a generator seeded by its name (FNV-1a), so that a
// case run alone sees the data it sees among all the others.
template <typename C>
int run_all(const std::vector<C>& cases, const std::string& filter) {
  int ran = 0;
  for (const C& c : cases) {
    const std::string name = c.name();
    if (!filter.empty() && name.find(filter) == std::string::npos) continue;
    uint64_t seed = 14695981039346656037ull;
    for (const char ch : name) seed = (seed ^ static_cast<unsigned char>(ch)) * 1099511628211ull;
    std::mt19937_64 rng(seed);
    const auto t0 = std::chrono::steady_clock::now();
    run(c, rng);
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (std::getenv("VERBOSE")) std::printf("%8.0f ms  %s\n", ms, name.c_str());
    ++ran;
  }
  return ran;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string filter = argc > 1 ? argv[1] : "";
  std::mt19937_64 rng(20261204);
  auto symmetric_graph = [](Csr g) {
    g.symmetric = true;
    return g;
  };
  const Csr empty = symmetric_graph(from_edges("empty(n=9,E=0)", 9, {}, rng));
  const Csr one = symmetric_graph(from_edges("one_loop(n=1)", 1, {{0, 0}}, rng));
  const Csr isolated = random_graph("isolated(n=30)", 30, 3, 0.6, 0, false, rng);
  const Csr directed = random_graph("directed(n=24)", 24, 3, 0.2, 6, false, rng);
  const Csr symmetric = random_graph("symmetric(n=30)", 30, 2, 0.2, 0, true, rng);
  const Csr hub = random_graph("hub(n=40,row1=5000)", 40, 2, 0.2, 5000, false, rng);

  // Every graph with every d and every type; the other parameters rotate so
  // that each value meets many others. The emulator's cost is a thread switch
  // per lane and barrier, so the item sizes that cut rows at every position
  // (1, 2) go with narrow d, and the hub row with d = 1 and 3 (one lane per
  // group, or four), but for one case of d = 64.
  const Csr* graphs[] = {&empty, &one, &isolated, &directed, &symmetric, &hub};
  const int64_t dims[] = {1, 3, 8, 64, 65, 130};
  const Type types[] = {Type::f32, Type::f64, Type::f16, Type::bf16, Type::f32_bf16};
  constexpr int64_t num_types = sizeof(types) / sizeof(types[0]);
  const std::vector<int64_t> all_sizes = {1, 2, 7, 128, 100000}, wide_sizes = {7, 128, 100000};
  std::vector<Case> cases;
  int64_t k = 0;
  for (const Csr* g : graphs) {
    for (const int64_t d : dims) {
      if (g == &hub && d > 3) continue;
      for (const Type t : types) {
        const auto& sizes = d <= 8 ? all_sizes : wide_sizes;
        cases.push_back({g, d, 1 + k % 4, t, (k / 2) % 2 == 1, (k / 3) % 2 == 0,
                         sizes[k % sizes.size()], (k / 5) % 2 == 1});
        ++k;
      }
    }
  }
  // The hub with d = 64 in float32: one layer, vectorized, items of 128.
  cases.push_back({&hub, 64, 1, Type::f32, false, true, 128, false});

  // propagate_rows: every graph with L = 0 to 3 and every row list; d (the
  // hub's 1 or 3), the type and the rest rotate as above.
  std::vector<RowsCase> rows_cases;
  int64_t q = 0;
  for (const Csr* g : graphs) {
    for (const int64_t L : {0, 1, 2, 3}) {
      for (const Listed listed : {Listed::kRepeats, Listed::kAll, Listed::kOne}) {
        const int64_t d = g == &hub ? 1 + 2 * (q % 2) : dims[q % 5];
        const auto& sizes = d <= 8 ? all_sizes : wide_sizes;
        rows_cases.push_back({{g, d, L, types[q % num_types], (q / 2) % 2 == 1, (q / 3) % 2 == 0,
                               sizes[q % sizes.size()], (q / 5) % 2 == 1},
                              listed,
                              q % 2 == 0});
        ++q;
      }
    }
  }

  // Every kernel the CUDA build instantiates must run: each dtype and column type with
  // vectorized and scalar loads, and L = 1 (the first sweep is the last), 2 (a sweep from x,
  // then one from the buffer) and 3 or more (sweeps from one buffer into the other), for
  // propagate's kernels and for those of propagate_rows' backward (whose first sweep gathers
  // a compact x). What the rotations above leave out runs on the directed graph with d = 8
  // (every dtype's vector divides it).
  auto vectorized = [](const Case& c) {
    const int64_t v = c.type == Type::f64                                  ? 2
                      : c.type == Type::f32 || c.type == Type::f32_bf16 ? 4
                                                                          : 8;
    return c.d % v == 0 && !c.misaligned;
  };
  auto kernels_of = [&](const char* op, const Case& c) {
    return kernels_key(op, c.type, c.int64_col, vectorized(c), c.L);
  };
  std::set<std::string> covered;
  for (const Case& c : cases) covered.insert(kernels_of("propagate", c));
  for (const RowsCase& rc : rows_cases) covered.insert(kernels_of("propagate_rows_backward", rc.c));
  for (const Type t : types) {
    for (const bool int64_col : {false, true}) {
      for (const bool misaligned : {false, true}) {
        for (int64_t L = 1; L <= 3; ++L) {
          const Case c{&directed, 8, L, t, int64_col, L != 2, 7, misaligned};
          if (covered.insert(kernels_of("propagate", c)).second) cases.push_back(c);
          if (covered.insert(kernels_of("propagate_rows_backward", c)).second) {
            rows_cases.push_back({c, Listed::kRepeats, L == 1});
          }
        }
      }
    }
  }

  // bfloat16 layers where float32 arithmetic is exact: the graphs but the
  // hub (whose long sums would not be), d = 1 (scalar), 64 (vectorized) and
  // 65 (scalar, two passes of a group), L = 1..3, weighted and not.
  std::vector<GridCase> grid_cases;
  int64_t e = 0;
  for (const Csr* g : {&empty, &one, &isolated, &directed, &symmetric}) {
    for (const int64_t d : {1, 64, 65}) {
      for (const int64_t L : {1, 2, 3}) {
        const auto& sizes = d <= 8 ? all_sizes : wide_sizes;
        grid_cases.push_back({g, d, L, e % 2 == 0, sizes[e % sizes.size()]});
        ++e;
      }
    }
  }

  // LIGHTGCN_EXT_CUDA_ITEM_SIZE's parser: the default, the values it takes, the ones it refuses.
  if (kernels::item_size_from(nullptr) != 128 || kernels::item_size_from("") != 128 ||
      kernels::item_size_from("100000") != 100000 || kernels::item_size_from("1") != 1 ||
      kernels::item_size_from("0") != -1 || kernels::item_size_from("1048577") != -1 ||
      kernels::item_size_from("7x") != -1 || kernels::item_size_from("-3") != -1) {
    fail("item_size_from: LIGHTGCN_EXT_CUDA_ITEM_SIZE parsed wrong");
  }

  const auto start = std::chrono::steady_clock::now();
  const int ran_propagate = run_all(cases, filter);
  const int ran_rows = run_all(rows_cases, filter);
  const int ran_grid = run_all(grid_cases, filter);
  const int ran = ran_propagate + ran_rows + ran_grid;
  if (filter.empty() && executed != covered) {
    for (const std::string& key : covered) {
      if (executed.count(key) == 0) fail("no case ran the kernels of " + key);
    }
  }
  // The exact cases test the rounding points only where rounding changes the numbers.
  if (ran_grid > 0 && 2 * grid_cases_rounding < ran_grid) {
    fail("bf16 layers exact: the roundings change the reference in " +
         std::to_string(grid_cases_rounding) + " of " + std::to_string(ran_grid) + " cases only");
  }
  const double s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (failures == 0) {
    std::printf("test_cuda_emulation: %d cases passed (%d propagate and layer_dots, %d "
                "propagate_rows, %d bf16 layers exact) (%.1f s)\n", ran, ran_propagate, ran_rows,
                ran_grid, s);
  } else {
    std::printf("test_cuda_emulation: %d failures in %d cases\n", failures, ran);
  }
  return failures == 0 && ran > 0 ? 0 : 1;
}
