// The merge-path schedule of the CUDA sweeps (csrc/merge_path.h), checked on
// the CPU: a sweep is simulated item by item, in a shuffled order as blocks
// may run, with the protocol of csrc/cuda/propagate_cuda.cu (finish the rows
// that begin and end in an item; write the pieces of cut rows to carry / tail;
// a fix-up pass adds a pending row's pieces in item order). Every row must be
// finished exactly once, every edge summed exactly once, and each row's sum
// must equal a direct sum over its edges. Values are integers, so sums are exact.
#include "merge_path.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace {

namespace mp = lightgcn_ext::merge_path;

int failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok && failures++ < 20) std::printf("FAIL: %s\n", what.c_str());
}

struct Csr {
  std::vector<int64_t> rowptr, col, value;  // value: of the gathered row col
};

// Rows of Poisson-like degree, some empty (runs of them too, at both ends),
// and a few hubs much longer than an item.
Csr random_csr(int64_t n, double avg_degree, int64_t hubs, std::mt19937_64& rng) {
  Csr g;
  std::poisson_distribution<int64_t> degree(avg_degree);
  std::uniform_int_distribution<int64_t> node(0, std::max<int64_t>(n - 1, 0));
  std::bernoulli_distribution empty(0.2);
  g.rowptr.push_back(0);
  for (int64_t r = 0; r < n; ++r) {
    int64_t k = empty(rng) || r == n - 1 ? 0 : degree(rng);
    if (r < hubs) k += 500 + 300 * r;
    for (int64_t i = 0; i < k; ++i) g.col.push_back(node(rng));
    g.rowptr.push_back(static_cast<int64_t>(g.col.size()));
  }
  std::uniform_int_distribution<int64_t> value(-1000, 1000);
  for (int64_t r = 0; r < n; ++r) g.value.push_back(value(rng));
  return g;
}

void simulate(const Csr& g, int64_t item_size, std::mt19937_64& rng, const std::string& name) {
  const int64_t n = static_cast<int64_t>(g.rowptr.size()) - 1;
  const int64_t e = static_cast<int64_t>(g.col.size());
  const int64_t* rowptr = g.rowptr.data();
  const int64_t items = n == 0 ? 0 : mp::num_items(n, e, item_size);
  std::vector<int64_t> carry(items, 0), tail(items, 0), pending(items, -2);
  std::vector<int64_t> result(n, 0), finished(n, 0), summed(e, 0);
  std::vector<int64_t> order(items);
  for (int64_t i = 0; i < items; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);

  for (const int64_t item : order) {
    const mp::Item span = mp::item_span(rowptr, n, e, item_size, item);
    pending[item] = span.first_row_pending ? span.begin.row : -1;
    int64_t acc = 0;
    auto finish = [&](int64_t row, bool began_here) {
      if (began_here) {
        result[row] = acc;
        ++finished[row];
      } else {
        check(row == span.begin.row, name + ": a row other than the item's first is cut");
        tail[item] = acc;
      }
      acc = 0;
    };
    mp::RowCursor cursor = mp::start_cursor(rowptr, span);
    for (int64_t k = span.begin.edge; k < span.end.edge; ++k) {
      mp::advance_past(rowptr, cursor, k, finish);
      check(rowptr[cursor.row] <= k && k < rowptr[cursor.row + 1],
            name + ": edge " + std::to_string(k) + " summed into the wrong row");
      acc += g.value[g.col[k]];
      ++summed[k];
    }
    mp::finish_until(cursor, span.end.row, finish);
    check(cursor.row == span.end.row, name + ": the cursor stops short of the item's end row");
    if (span.end.row < n) carry[item] = acc;
  }

  for (int64_t item = 0; item < items; ++item) {
    const int64_t row = pending[item];
    if (row < 0) continue;
    const int64_t first = mp::first_item_of_row(rowptr, row, item_size);
    check(first < item, name + ": a pending row begins in its own item");
    int64_t acc = 0;
    for (int64_t piece = first; piece < item; ++piece) {
      check(mp::item_span(rowptr, n, e, item_size, piece).end.row == row,
            name + ": a piece of row " + std::to_string(row) + " is another row's carry");
      acc += carry[piece];
    }
    result[row] = acc + tail[item];
    ++finished[row];
  }

  for (int64_t k = 0; k < e; ++k) {
    check(summed[k] == 1, name + ": edge " + std::to_string(k) + " summed " +
                              std::to_string(summed[k]) + " times");
  }
  for (int64_t r = 0; r < n; ++r) {
    int64_t want = 0;
    for (int64_t k = rowptr[r]; k < rowptr[r + 1]; ++k) want += g.value[g.col[k]];
    check(finished[r] == 1, name + ": row " + std::to_string(r) + " finished " +
                                std::to_string(finished[r]) + " times");
    check(result[r] == want, name + ": row " + std::to_string(r) + " sums to " +
                                 std::to_string(result[r]) + ", want " + std::to_string(want));
  }
}

}  // namespace

int main() {
  std::mt19937_64 rng(20261128);
  // (rows, average degree, hubs)
  const int64_t shapes[][3] = {{1, 0, 0}, {1, 3, 0}, {2, 1, 0}, {5, 0, 0},  {7, 2, 0},
                               {33, 4, 1}, {200, 6, 3}, {1000, 20, 2}, {3000, 1, 5}};
  const int64_t item_sizes[] = {1, 2, 3, 5, 8, 31, 128, 1024, 100000};
  int cases = 0;
  for (const auto& shape : shapes) {
    for (int repeat = 0; repeat < 3; ++repeat) {
      const Csr g = random_csr(shape[0], static_cast<double>(shape[1]), shape[2], rng);
      for (const int64_t size : item_sizes) {
        simulate(g, size, rng,
                 "n=" + std::to_string(shape[0]) + " E=" + std::to_string(g.col.size()) +
                     " item_size=" + std::to_string(size));
        ++cases;
      }
    }
  }
  // Exact sizes: one item per position, and the coordinates of its ends.
  const Csr small{{0, 2, 2, 5}, {0, 1, 0, 1, 2}, {1, 2, 3}};
  const mp::Coord end = mp::coord_of(small.rowptr.data(), 3, 8);
  check(end.row == 3 && end.edge == 5, "coord_of(N + E) is not (N, E)");
  const mp::Coord row1_end = mp::coord_of(small.rowptr.data(), 3, 3);
  check(row1_end.row == 1 && row1_end.edge == 2, "coord_of(the end of empty row 1)");
  if (failures == 0) std::printf("test_merge_path: %d cases passed\n", cases);
  else std::printf("test_merge_path: %d failures\n", failures);
  return failures == 0 ? 0 : 1;
}
