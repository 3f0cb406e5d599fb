// The CUDA kernels of propagate and layer_dots (csrc/cuda/propagate_kernels.cuh,
// the source nvcc builds), run on CPU threads by the emulation of the CUDA
// execution model in cuda_emulation.h, and compared with a float64 reference
// computed here from the definition: propagate = sum_l alpha_l M^l x and
// layer_dots[l] = <M^l x, grad>, M = D^-1/2 W D^-1/2 with the dinv and weights
// that the kernels are given. Tolerances are those of tests/test_cuda.py.
//
// The corpus covers every branch of the schedule and of the epilogues: an
// empty graph (no edges), isolated nodes, a hub row of 5,000 edges, item sizes
// 1, 2, 7, 128 and 100,000 (the value LIGHTGCN_EXT_CUDA_ITEM_SIZE would set),
// d in {1, 3, 8, 64, 65, 130}, L in 1..4, weighted and unweighted, symmetric
// and directed graphs, float32, float64, float16 and bfloat16, int32 and int64
// columns, and x / out / grad aligned to a vector (vectorized kernels) or not
// (scalar kernels). L = 0, N = 0 and d = 0 launch nothing: the ATen entry
// points answer them (tests/test_cuda.py checks them on a GPU).
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
  return from_edges(std::move(name), n, std::move(edges), rng);
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
enum class Type { f32, f64, f16, bf16 };
const char* type_name(Type t) {
  switch (t) {
    case Type::f32: return "float32";
    case Type::f64: return "float64";
    case Type::f16: return "float16";
    default: return "bfloat16";
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

// The kernels a call runs: its dtype, column type, vector width (16 bytes or one value)
// and L = 1, 2 or more (see main).
std::string kernels_key(Type type, bool int64_col, bool vectorized, int64_t L) {
  return std::string(type_name(type)) + (int64_col ? " int64" : " int32") +
         (vectorized ? " vectorized" : " scalar") + " L=" + std::to_string(std::min<int64_t>(L, 3));
}
std::set<std::string> executed;  // by the cases that ran

template <typename scalar_t, typename index_t>
void run_case(const Case& c, std::mt19937_64& rng) {
  using acc_t = at::opmath_type<scalar_t>;
  const Csr& g = *c.graph;
  const int64_t n = g.n, d = c.d, L = c.L, e = static_cast<int64_t>(g.col.size());
  const int offset = c.misaligned ? 1 : 0;
  const std::string name = c.name();

  // The operands as the kernels see them, and in float64 as they are stored.
  Array<int64_t> rowptr(n + 1);
  Array<index_t> col(e);
  Array<acc_t> weight(c.weighted ? e : 0), dinv(n);
  std::vector<double> w(e), dinv64(n), deg(n, 0.0);
  for (int64_t r = 0; r <= n; ++r) rowptr[r] = g.rowptr[r];
  for (int64_t k = 0; k < e; ++k) {
    col[k] = static_cast<index_t>(g.col[k]);
    w[k] = c.weighted ? static_cast<double>(static_cast<acc_t>(g.weight[k])) : 1.0;
    if (c.weighted) weight[k] = static_cast<acc_t>(g.weight[k]);
  }
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t k = g.rowptr[r]; k < g.rowptr[r + 1]; ++k) deg[r] += w[k];
    dinv[r] = static_cast<acc_t>(deg[r] > 0 ? 1.0 / std::sqrt(deg[r]) : 0.0);
    dinv64[r] = static_cast<double>(dinv[r]);
  }
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> uniform(0.1, 1.1);
  Array<scalar_t> x(n * d, offset), grad(n * d, offset), out(n * d, offset);
  std::vector<double> x64(n * d), grad64(n * d), absx(n * d), absgrad(n * d);
  for (int64_t i = 0; i < n * d; ++i) {
    x[i] = static_cast<scalar_t>(normal(rng));
    grad[i] = static_cast<scalar_t>(normal(rng));
    x64[i] = static_cast<double>(x[i]);
    grad64[i] = static_cast<double>(grad[i]);
    absx[i] = std::abs(x64[i]);
    absgrad[i] = std::abs(grad64[i]);
  }
  Array<acc_t> alpha(L + 1), dots(L + 1);
  std::vector<double> alpha64(L + 1);
  for (int64_t l = 0; l <= L; ++l) {
    alpha[l] = static_cast<acc_t>(uniform(rng));
    alpha64[l] = static_cast<double>(alpha[l]);
  }

  const kernels::DeviceGraph<scalar_t, index_t> graph{
      rowptr.data(), col.data(), c.weighted ? weight.data() : nullptr, dinv.data(), n, e};
  // The item size as the CUDA entry points read it, from LIGHTGCN_EXT_CUDA_ITEM_SIZE.
  setenv("LIGHTGCN_EXT_CUDA_ITEM_SIZE", std::to_string(c.item_size).c_str(), 1);
  const int64_t item_size = kernels::item_size_from(std::getenv("LIGHTGCN_EXT_CUDA_ITEM_SIZE"));
  unsetenv("LIGHTGCN_EXT_CUDA_ITEM_SIZE");
  if (item_size != c.item_size) {
    fail(name + ": LIGHTGCN_EXT_CUDA_ITEM_SIZE read as " + std::to_string(item_size));
  }
  executed.insert(kernels_key(c.type, c.int64_col,
                              kernels::can_vectorize<scalar_t>(d, {x.data(), out.data()}), L));
  {
    CallMemory memory;
    kernels::propagate_sweeps(graph, d, item_size, x.data(), alpha.data(), L, out.data(),
                              memory, nullptr);
  }
  {
    CallMemory memory;
    kernels::layer_dots_sweeps(graph, d, item_size, x.data(), grad.data(), L, dots.data(),
                               memory, nullptr);
  }

  // tests/test_cuda.py's tolerances: rounding relative to sum_l |alpha_l| |M|^l |x|.
  const auto want = layers(g, w, dinv64, x64, d, L);
  const auto abs_layers = layers(g, w, dinv64, absx, d, L);
  const double acc_eps = eps<acc_t>(), type_eps = eps<scalar_t>();
  int64_t max_degree = 0;
  for (int64_t r = 0; r < n; ++r) max_degree = std::max(max_degree, g.rowptr[r + 1] - g.rowptr[r]);
  const double rel = 2 * (L * (std::sqrt(static_cast<double>(max_degree)) + 2) * acc_eps +
                          (L + 1) * type_eps);
  double worst = 0;
  int64_t worst_i = 0;
  for (int64_t i = 0; i < n * d; ++i) {
    double ref = 0, bound = 0;
    for (int64_t l = 0; l <= L; ++l) {
      ref += alpha64[l] * want[l][i];
      bound += alpha64[l] * abs_layers[l][i];
    }
    const double got = static_cast<double>(out[i]);
    const double ratio = std::isfinite(got) ? std::abs(got - ref) / (rel * bound + 1e-30)
                                            : std::numeric_limits<double>::infinity();
    if (!(ratio <= worst)) {
      worst = ratio;
      worst_i = i;
    }
  }
  if (!(worst <= 1)) {
    double ref = 0;
    for (int64_t l = 0; l <= L; ++l) ref += alpha64[l] * want[l][worst_i];
    fail(name + ": propagate at row " + std::to_string(worst_i / d) + ", column " +
         std::to_string(worst_i % d) + ": got " + std::to_string(static_cast<double>(out[worst_i])) +
         ", want " + std::to_string(ref) + " (" + std::to_string(worst) + "x the tolerance)");
  }

  double norm_x = 0, norm_grad = 0;
  for (int64_t i = 0; i < n * d; ++i) {
    norm_x += x64[i] * x64[i];
    norm_grad += grad64[i] * grad64[i];
  }
  const double reduction = (std::is_same_v<scalar_t, double> ? 1e-12 : 1e-4) *
                           (std::sqrt(norm_x) * std::sqrt(norm_grad) + 1e-30);
  const double storage_eps = sizeof(scalar_t) == 2 ? type_eps : 0.0;
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

template <typename scalar_t>
void run_typed(const Case& c, std::mt19937_64& rng) {
  if (c.int64_col) {
    run_case<scalar_t, int64_t>(c, rng);
  } else {
    run_case<scalar_t, int32_t>(c, rng);
  }
}

void run(const Case& c, std::mt19937_64& rng) {
  switch (c.type) {
    case Type::f32: return run_typed<float>(c, rng);
    case Type::f64: return run_typed<double>(c, rng);
    case Type::f16: return run_typed<c10::Half>(c, rng);
    case Type::bf16: return run_typed<c10::BFloat16>(c, rng);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string filter = argc > 1 ? argv[1] : "";
  std::mt19937_64 rng(20261204);
  const Csr empty = from_edges("empty(n=9,E=0)", 9, {}, rng);
  const Csr one = from_edges("one_loop(n=1)", 1, {{0, 0}}, rng);
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
  const Type types[] = {Type::f32, Type::f64, Type::f16, Type::bf16};
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

  // Every kernel the CUDA build instantiates must run: each dtype and column type with
  // vectorized and scalar loads, and L = 1 (the first sweep is the last), 2 (a sweep from x,
  // then one from the buffer) and 3 or more (sweeps from one buffer into the other). What
  // the rotation above leaves out runs on the directed graph with d = 8 (every dtype's vector
  // divides it).
  auto vectorized = [](const Case& c) {
    const int64_t v = c.type == Type::f64 ? 2 : c.type == Type::f32 ? 4 : 8;
    return c.d % v == 0 && !c.misaligned;
  };
  auto kernels_of = [&](const Case& c) {
    return kernels_key(c.type, c.int64_col, vectorized(c), c.L);
  };
  std::set<std::string> covered;
  for (const Case& c : cases) covered.insert(kernels_of(c));
  for (const Type t : types) {
    for (const bool int64_col : {false, true}) {
      for (const bool misaligned : {false, true}) {
        for (int64_t L = 1; L <= 3; ++L) {
          const Case c{&directed, 8, L, t, int64_col, L != 2, 7, misaligned};
          if (covered.insert(kernels_of(c)).second) cases.push_back(c);
        }
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

  int ran = 0;
  const auto start = std::chrono::steady_clock::now();
  for (const Case& c : cases) {
    const std::string name = c.name();
    if (!filter.empty() && name.find(filter) == std::string::npos) continue;
    const auto t0 = std::chrono::steady_clock::now();
    run(c, rng);
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (std::getenv("VERBOSE")) std::printf("%8.0f ms  %s\n", ms, name.c_str());
    ++ran;
  }
  if (filter.empty() && executed != covered) {
    for (const std::string& key : covered) {
      if (executed.count(key) == 0) fail("no case ran the kernels of " + key);
    }
  }
  const double s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (failures == 0) {
    std::printf("test_cuda_emulation: %d cases passed (%.1f s)\n", ran, s);
  } else {
    std::printf("test_cuda_emulation: %d failures in %d cases\n", failures, ran);
  }
  return failures == 0 && ran > 0 ? 0 : 1;
}
