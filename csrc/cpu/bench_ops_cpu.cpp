// Private ops for the benchmarks (bench/), not part of the API:
//
//   _bare_gather(rowptr, col, x) -> out, out[r] = sum_{k in row r} x[col[k]]
//     The least work any LightGCN sweep must do: read each neighbour row once
//     per edge and sum it; no weights, no normalization, no epilogue beyond the
//     store. It runs cpu::sweep, the loop of the propagate kernels (the same
//     tiles, prefetch, chunking and instruction-set copy, the same flags), so
//     that a sweep of propagate over this floor is the cost of what it fuses.
//     For bfloat16 x the sums are float32 and out is bfloat16: the floor of
//     the sweeps that gather bfloat16 layers (propagate's bf16=True).
//   _cpu_isa(str? isa=None) -> str
//     The copy of the sweep that runs ("avx512", "avx2" or "baseline"), after
//     setting it to isa (auto, avx512, avx2 or baseline) when given: the
//     benchmarks time copies side by side in one process.
#include "../checks.h"
#include "sweep.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <optional>
#include <string>

namespace lightgcn_ext {
namespace {

at::Tensor bare_gather_cpu(const at::Tensor& rowptr_in, const at::Tensor& col_in,
                           const at::Tensor& x_in) {
  TORCH_CHECK(rowptr_in.dim() == 1 && rowptr_in.scalar_type() == at::kLong,
              "rowptr must be a 1-D int64 tensor, got ", rowptr_in.dim(), "-D ",
              rowptr_in.scalar_type());
  TORCH_CHECK(col_in.dim() == 1 && (col_in.scalar_type() == at::kInt ||
                                    col_in.scalar_type() == at::kLong),
              "col must be a 1-D int32 or int64 tensor, got ", col_in.dim(), "-D ",
              col_in.scalar_type());
  TORCH_CHECK(x_in.dim() == 2 && (x_in.scalar_type() == at::kFloat ||
                                  x_in.scalar_type() == at::kDouble ||
                                  x_in.scalar_type() == at::kBFloat16),
              "x must be a 2-D float32, float64 or bfloat16 tensor, got ", x_in.dim(), "-D ",
              x_in.scalar_type());
  TORCH_CHECK(rowptr_in.numel() == x_in.size(0) + 1, "rowptr must have len(x) + 1 = ",
              x_in.size(0) + 1, " entries, got ", rowptr_in.numel());
  const auto rowptr = rowptr_in.contiguous();
  const auto col = col_in.contiguous();
  const auto x = x_in.contiguous();
  check_csr_contents(rowptr, col, x.size(0));
  const int64_t n = x.size(0), d = x.size(1);
  auto out = at::zeros_like(x);
  if (n == 0 || d == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "bare_gather_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    AT_DISPATCH_INDEX_TYPES(col.scalar_type(), "bare_gather_cpu_col", [&] {
      const cpu::Csr<acc_t, index_t> csr{rowptr.data_ptr<int64_t>(), col.data_ptr<index_t>(),
                                         nullptr, nullptr, n};
      scalar_t* o = out.data_ptr<scalar_t>();
      cpu::sweep(csr, x.data_ptr<scalar_t>(), d, cpu::balanced_row_chunks(csr.rowptr, n),
                 [&](int64_t, int64_t r, int64_t j0, int64_t width, const acc_t* acc) {
                   for (int64_t t = 0; t < width; ++t) {
                     o[r * d + j0 + t] = static_cast<scalar_t>(acc[t]);
                   }
                 });
    });
  });
  return out;
}

std::string cpu_isa(const std::optional<std::string>& isa) {
  if (isa.has_value()) {
    cpu::isa_setting().store(static_cast<int>(cpu::parse_isa(*isa, "isa")));
  }
  return cpu::isa_name(cpu::current_isa());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lightgcn_ext, m) {
  m.def("_bare_gather(Tensor rowptr, Tensor col, Tensor x) -> Tensor");
  m.def("_cpu_isa(str? isa=None) -> str", &cpu_isa);
}

TORCH_LIBRARY_IMPL(lightgcn_ext, CPU, m) { m.impl("_bare_gather", &bare_gather_cpu); }

}  // namespace lightgcn_ext
