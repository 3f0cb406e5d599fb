// The merge-path schedule of the CUDA sweeps, in plain index arithmetic that
// the host compiler also builds, so that tests/cpp checks it on the CPU.
//
// Why: a sweep that gives each row to one group of lanes lasts as long as its
// longest row, and power-law graphs have rows of thousands of edges. Merge
// path (Merrill and Garland, SC 2016) instead cuts the sequence
//
//   edges of row 0, end of row 0, edges of row 1, end of row 1, ...
//
// (N + E positions: edge e of row r sits at e + r, the end of row r at
// rowptr[r + 1] + r) into work items of the same number of positions, so
// that every item costs about the same whatever the degrees.
//
// A row cut by item boundaries is summed in pieces: every item writes the
// piece of its last, unfinished row to `carry[item]`, and the item where a
// row ends, if the row began in an earlier item, writes its own piece to
// `tail[item]` and names the row in `pending[item]`. A second pass adds a
// pending row's pieces in item order and finishes it. The order of every sum
// depends only on the graph and the item size, so results are deterministic.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define LIGHTGCN_EXT_HOST_DEVICE __host__ __device__ __forceinline__
// Before the walkers below, which call a device lambda when the kernels
// instantiate them.
#define LIGHTGCN_EXT_NO_EXEC_CHECK _Pragma("nv_exec_check_disable")
#else
#define LIGHTGCN_EXT_HOST_DEVICE inline
#define LIGHTGCN_EXT_NO_EXEC_CHECK
#endif

namespace lightgcn_ext {
namespace merge_path {

// A position of the merged sequence as (row, edge): the row whose edges or
// end it is in, and the index of the next edge to take (for an end of row,
// rowptr[row + 1]). Position N + E is (N, E).
struct Coord {
  int64_t row;
  int64_t edge;
};

LIGHTGCN_EXT_HOST_DEVICE Coord coord_of(const int64_t* rowptr, int64_t num_rows, int64_t pos) {
  // The first row whose end lies at or after pos.
  int64_t lo = 0, hi = num_rows;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (rowptr[mid + 1] + mid >= pos) hi = mid; else lo = mid + 1;
  }
  return {lo, pos - lo};
}

LIGHTGCN_EXT_HOST_DEVICE int64_t num_items(int64_t num_rows, int64_t num_edges,
                                           int64_t item_size) {
  return (num_rows + num_edges + item_size - 1) / item_size;
}

// What item `item` covers: the edges [begin.edge, end.edge), which belong to
// rows begin.row .. end.row; rows [begin.row, end.row) end in it; row
// end.row (when < N) continues in the next item.
struct Item {
  Coord begin;
  Coord end;
  // begin.row ends here but began in an earlier item: it is pending.
  bool first_row_pending;
};

LIGHTGCN_EXT_HOST_DEVICE Item item_span(const int64_t* rowptr, int64_t num_rows,
                                        int64_t num_edges, int64_t item_size, int64_t item) {
  const int64_t total = num_rows + num_edges;
  const int64_t first = item * item_size;
  const int64_t last = first + item_size < total ? first + item_size : total;
  const Coord begin = coord_of(rowptr, num_rows, first);
  const Coord end = coord_of(rowptr, num_rows, last);
  const bool pending = begin.row < end.row && begin.edge > rowptr[begin.row];
  return {begin, end, pending};
}

// The item holding the first position of row r (its first edge, or its end
// when it has none): a pending row's pieces are carry[first_item .. item - 1]
// and tail[item].
LIGHTGCN_EXT_HOST_DEVICE int64_t first_item_of_row(const int64_t* rowptr, int64_t row,
                                                   int64_t item_size) {
  return (rowptr[row] + row) / item_size;
}

// Walking an item's edges in order: the row of the current edge, where that
// row's edges end, and whether the row began in this item.
struct RowCursor {
  int64_t row;
  int64_t row_end;
  bool began_here;
};

LIGHTGCN_EXT_HOST_DEVICE RowCursor start_cursor(const int64_t* rowptr, const Item& item) {
  const int64_t row = item.begin.row;
  return {row, rowptr[row + 1], item.begin.edge == rowptr[row]};
}

// Before summing edge `edge`: calls finish(row, began_here) for each row that
// ends before it (empty rows included) and moves the cursor to its row.
LIGHTGCN_EXT_NO_EXEC_CHECK
template <typename Finish>
LIGHTGCN_EXT_HOST_DEVICE void advance_past(const int64_t* rowptr, RowCursor& cursor,
                                           int64_t edge, Finish& finish) {
  while (edge >= cursor.row_end) {
    finish(cursor.row, cursor.began_here);
    ++cursor.row;
    cursor.row_end = rowptr[cursor.row + 1];
    cursor.began_here = true;
  }
}

// After the item's last edge: finishes the rows up to end_row (exclusive),
// the rows that end in this item.
LIGHTGCN_EXT_NO_EXEC_CHECK
template <typename Finish>
LIGHTGCN_EXT_HOST_DEVICE void finish_until(RowCursor& cursor, int64_t end_row, Finish& finish) {
  while (cursor.row < end_row) {
    finish(cursor.row, cursor.began_here);
    ++cursor.row;
    cursor.began_here = true;
  }
}

}  // namespace merge_path
}  // namespace lightgcn_ext
