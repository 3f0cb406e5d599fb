// The top-k of the full-ranking evaluation (lightgcn_ext.evaluation), on CPU:
//
//   topk_unseen(scores, exclude_rowptr, exclude_col, k) -> index
//     scores [B, n] float32 or float64 (no NaN), one row per user;
//     exclude_rowptr [B + 1] int64 and exclude_col int64: row r's excluded
//     items (its training items) are exclude_col[exclude_rowptr[r] ..
//     exclude_rowptr[r + 1]), ascending (the offsets need not start at 0, so
//     that a block of rows can pass a slice of a larger CSR's offsets);
//     index [B, k] int64: each row's k best items, ordered by score
//     descending, ties broken towards the lower item id, an excluded item
//     counting as -inf. That is exactly the first k of a stable descending
//     sort of the row after setting its excluded entries to -inf (so a row
//     with fewer than k unseen items ends with its excluded items, lowest ids
//     first).
//
// One pass over each row, rows spread over torch's threads: a heap holds the
// k best so far, and an item enters only if its score is strictly above the
// heap's worst. Items are visited in increasing id order, so an item whose
// score equals the worst's has the higher id and loses the tie, which is why
// the test can be a plain `>` against one threshold, checked 16 entries at a
// time. The exclusion list is consulted only for the few items that pass.
//
//   score_topk_unseen(users, items, exclude_rowptr, exclude_col, k, block_rows,
//                     onednn) -> index
//     the same for scores = users @ items^T, made here block by block: the
//     users in blocks of block_rows (>= 2; a lone last user joins the block
//     before it, since a single row is a matrix-vector product, rounded
//     otherwise), the blocks spread over torch's threads, each block scored by
//     one thread (oneDNN's linear where `onednn`, else torch's mm: the calls of
//     the Python evaluation) and ranked at once, so that at most one block's
//     scores per thread exist. On a 2-core AMD EPYC (AVX2), a 102-row block's
//     product with Gowalla's items took 8.0 ms on one thread and 6.3 ms over
//     both: two blocks side by side in 8.0 ms rather than one after the other
//     in 12.6 ms, and the product is most of an evaluation.
//
// The schemas live here, not in ops.cpp: a fragment of the same library.
// CUDA has no kernel: the Python caller uses torch ops there.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

namespace lightgcn_ext {
namespace {

template <typename scalar_t>
struct Entry {
  scalar_t value;
  int64_t id;
};

// a ranks below b: a lower score, or the same score and a higher id.
template <typename scalar_t>
inline bool ranks_below(const Entry<scalar_t>& a, const Entry<scalar_t>& b) {
  return a.value < b.value || (a.value == b.value && a.id > b.id);
}

// The k best entries of one row into out (k ids, best first). heap is scratch
// of k entries; excl[0..num_excl) the row's excluded items, ascending.
template <typename scalar_t>
void topk_row(const scalar_t* row, int64_t n, const int64_t* excl, int64_t num_excl, int64_t k,
              std::vector<Entry<scalar_t>>& heap, int64_t* out) {
  constexpr scalar_t kExcluded = -std::numeric_limits<scalar_t>::infinity();
  // A min-heap under ranks_below: heap.front() is the worst of the k kept.
  const auto worse_on_top = [](const Entry<scalar_t>& a, const Entry<scalar_t>& b) {
    return ranks_below(b, a);
  };
  int64_t e = 0;  // the first excluded item not below the current one
  const auto value_of = [&](int64_t i) {
    while (e < num_excl && excl[e] < i) ++e;
    return (e < num_excl && excl[e] == i) ? kExcluded : row[i];
  };
  heap.clear();
  for (int64_t i = 0; i < k; ++i) heap.push_back({value_of(i), i});
  std::make_heap(heap.begin(), heap.end(), worse_on_top);
  scalar_t threshold = heap.front().value;
  const auto consider = [&](int64_t i) {
    const scalar_t value = value_of(i);
    if (!(value > threshold)) return;  // an excluded item, now -inf
    std::pop_heap(heap.begin(), heap.end(), worse_on_top);
    heap.back() = {value, i};
    std::push_heap(heap.begin(), heap.end(), worse_on_top);
    threshold = heap.front().value;
  };
  constexpr int64_t kBlock = 16;
  int64_t i = k;
  for (; i + kBlock <= n; i += kBlock) {
    bool any = false;  // vectorizes: 16 compares, one test
    for (int64_t t = 0; t < kBlock; ++t) any |= row[i + t] > threshold;
    if (!any) continue;
    for (int64_t t = 0; t < kBlock; ++t) {
      if (row[i + t] > threshold) consider(i + t);
    }
  }
  for (; i < n; ++i) {
    if (row[i] > threshold) consider(i);
  }
  std::sort_heap(heap.begin(), heap.end(), worse_on_top);  // best first
  for (int64_t j = 0; j < k; ++j) out[j] = heap[j].id;
}

// Checks an exclusion CSR of num_rows rows (see the file's description), the
// rows of `rows_of` (what the error messages name); returns it contiguous.
std::pair<at::Tensor, at::Tensor> checked_exclusions(const at::Tensor& rowptr_in,
                                                     const at::Tensor& col_in, int64_t num_rows,
                                                     const char* rows_of) {
  TORCH_CHECK(rowptr_in.dim() == 1 && rowptr_in.scalar_type() == at::kLong &&
                  rowptr_in.numel() == num_rows + 1,
              "exclude_rowptr must be a 1-D int64 tensor of ", rows_of, ".size(0) + 1 = ", num_rows + 1,
              " entries, got ", rowptr_in.dim(), "-D ", rowptr_in.scalar_type(), " of ",
              rowptr_in.numel());
  TORCH_CHECK(col_in.dim() == 1 && col_in.scalar_type() == at::kLong,
              "exclude_col must be a 1-D int64 tensor, got ", col_in.dim(), "-D ",
              col_in.scalar_type());
  auto rowptr = rowptr_in.contiguous();
  auto col = col_in.contiguous();
  const int64_t* rp = rowptr.data_ptr<int64_t>();
  const int64_t* cp = col.data_ptr<int64_t>();
  TORCH_CHECK(num_rows == 0 || (rp[0] >= 0 && rp[num_rows] <= col.numel()),
              "exclude_rowptr must lie within [0, len(exclude_col) = ", col.numel(), "], got ",
              rp[0], " .. ", rp[num_rows]);
  for (int64_t r = 0; r < num_rows; ++r) {
    TORCH_CHECK(rp[r] <= rp[r + 1], "exclude_rowptr must be non-decreasing, got ", rp[r],
                " then ", rp[r + 1], " at row ", r);
    for (int64_t j = rp[r] + 1; j < rp[r + 1]; ++j) {
      TORCH_CHECK(cp[j - 1] < cp[j], "exclude_col must be strictly ascending within a row, "
                  "got ", cp[j - 1], " then ", cp[j], " in row ", r);
    }
  }
  return {rowptr, col};
}

// The top-k of rows [begin, end) of scores (n columns), whose first row is
// row `first` of the exclusion CSR, into out (k ids a row).
template <typename scalar_t>
void topk_rows(const scalar_t* scores, int64_t n, int64_t begin, int64_t end, int64_t first,
               const int64_t* rp, const int64_t* cp, int64_t k,
               std::vector<Entry<scalar_t>>& heap, int64_t* out) {
  for (int64_t r = begin; r < end; ++r) {
    const int64_t e = first + r;
    topk_row(scores + r * n, n, cp + rp[e], rp[e + 1] - rp[e], k, heap, out + r * k);
  }
}

at::Tensor topk_unseen_cpu(const at::Tensor& scores_in, const at::Tensor& rowptr_in,
                           const at::Tensor& col_in, int64_t k) {
  TORCH_CHECK(scores_in.dim() == 2 && (scores_in.scalar_type() == at::kFloat ||
                                       scores_in.scalar_type() == at::kDouble),
              "scores must be a 2-D float32 or float64 tensor, got ", scores_in.dim(), "-D ",
              scores_in.scalar_type());
  const int64_t num_rows = scores_in.size(0), n = scores_in.size(1);
  TORCH_CHECK(1 <= k && k <= n, "k must satisfy 1 <= k <= scores.size(1) = ", n, ", got ", k);
  const auto exclusions = checked_exclusions(rowptr_in, col_in, num_rows, "scores");
  const at::Tensor &rowptr = exclusions.first, &col = exclusions.second;
  const auto scores = scores_in.contiguous();
  auto index = at::empty({num_rows, k}, scores.options().dtype(at::kLong));
  if (num_rows == 0) return index;
  // About 64k scores per task: a row of a large catalogue is a task of its own.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / n);
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "topk_unseen_cpu", [&] {
    at::parallel_for(0, num_rows, grain, [&](int64_t begin, int64_t end) {
      std::vector<Entry<scalar_t>> heap;
      heap.reserve(k);
      topk_rows(scores.data_ptr<scalar_t>(), n, begin, end, 0, rowptr.data_ptr<int64_t>(),
                col.data_ptr<int64_t>(), k, heap, index.data_ptr<int64_t>());
    });
  });
  return index;
}

// users @ items^T for a block of users, as the Python evaluation computes it:
// oneDNN's linear (mkldnn::_linear_pointwise) for a block of at least 2 rows
// where `onednn`, else torch's mm. Called inside a parallel region, both run
// on the calling thread.
at::Tensor block_scores(const at::Tensor& users, const at::Tensor& items, bool onednn) {
  if (onednn && users.size(0) >= 2) {
    static const auto linear =
        c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
    torch::jit::Stack stack{users,
                            items,
                            c10::IValue(),
                            c10::IValue(std::string("none")),
                            c10::IValue(c10::List<std::optional<at::Scalar>>()),
                            c10::IValue(std::string(""))};
    linear.callBoxed(&stack);
    return stack[0].toTensor();
  }
  return at::mm(users, items.t());
}

at::Tensor score_topk_unseen_cpu(const at::Tensor& users_in, const at::Tensor& items_in,
                                 const at::Tensor& rowptr_in, const at::Tensor& col_in, int64_t k,
                                 int64_t block_rows, bool onednn) {
  TORCH_CHECK(users_in.dim() == 2 && items_in.dim() == 2 &&
                  users_in.scalar_type() == items_in.scalar_type() &&
                  (users_in.scalar_type() == at::kFloat || users_in.scalar_type() == at::kDouble) &&
                  users_in.size(1) == items_in.size(1),
              "users and items must be 2-D float32 or float64 tensors of one dtype and the same "
              "number of columns, got ", users_in.sizes(), " ", users_in.scalar_type(), " and ",
              items_in.sizes(), " ", items_in.scalar_type());
  const int64_t num_rows = users_in.size(0), n = items_in.size(0);
  TORCH_CHECK(1 <= k && k <= n, "k must satisfy 1 <= k <= items.size(0) = ", n, ", got ", k);
  TORCH_CHECK(block_rows >= 2, "block_rows must be at least 2, got ", block_rows);
  const auto exclusions = checked_exclusions(rowptr_in, col_in, num_rows, "users");
  const at::Tensor &rowptr = exclusions.first, &col = exclusions.second;
  const auto users = users_in.contiguous();
  const auto items = items_in.contiguous();
  auto index = at::empty({num_rows, k}, users.options().dtype(at::kLong));
  if (num_rows == 0) return index;
  std::vector<int64_t> starts;  // block b is rows [starts[b], starts[b + 1])
  for (int64_t a = 0; a < num_rows; a += block_rows) starts.push_back(a);
  if (starts.size() > 1 && num_rows - starts.back() == 1) starts.pop_back();
  starts.push_back(num_rows);
  const int64_t num_blocks = static_cast<int64_t>(starts.size()) - 1;
  AT_DISPATCH_FLOATING_TYPES(users.scalar_type(), "score_topk_unseen_cpu", [&] {
    at::parallel_for(0, num_blocks, 1, [&](int64_t b0, int64_t b1) {
      std::vector<Entry<scalar_t>> heap;
      heap.reserve(k);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t a = starts[b], rows = starts[b + 1] - a;
        const auto scores = block_scores(users.narrow(0, a, rows), items, onednn).contiguous();
        topk_rows(scores.data_ptr<scalar_t>(), n, 0, rows, a, rowptr.data_ptr<int64_t>(),
                  col.data_ptr<int64_t>(), k, heap, index.data_ptr<int64_t>() + a * k);
      }
    });
  });
  return index;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lightgcn_ext, m) {
  m.def("topk_unseen(Tensor scores, Tensor exclude_rowptr, Tensor exclude_col, int k) -> Tensor");
  m.def(
      "score_topk_unseen(Tensor users, Tensor items, Tensor exclude_rowptr, Tensor exclude_col, "
      "int k, int block_rows, bool onednn) -> Tensor");
}

TORCH_LIBRARY_IMPL(lightgcn_ext, CPU, m) {
  m.impl("topk_unseen", &topk_unseen_cpu);
  m.impl("score_topk_unseen", &score_topk_unseen_cpu);
}

}  // namespace lightgcn_ext
