// Low-rank plus diagonal Fisher factors: F ~ D + U U^T per parameter block, built from the
// per-sample gradient rows R of clhost.sample_grads/1 (F = (1/n) sum R^T R). LibTorch linear
// algebra.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace clhost::lowrank {

// One block's factor. D is chosen so that diag(D + U U^T) is the exact diagonal of F.
struct Factor {
  torch::Tensor ut;    // U^T: [rank, elements] float32
  torch::Tensor diag;  // D: [elements] float32, >= 0
  [[nodiscard]] int64_t rank() const { return ut.defined() ? ut.size(0) : 0; }
  [[nodiscard]] int64_t bytes() const;
};

// The rank kept for a block whose exact factor has `rows` rows (samples, or samples x classes):
// ceil(ratio * rows), at least 1, at most max_rank when max_rank > 0.
int64_t rank_for(double compression_ratio, int64_t rows, int64_t max_rank);

// Builds one block's factor from its stream of row chunks in one pass.
// rank >= rows: U = R^T / sqrt(n) exactly (D = 0). Otherwise a randomized Nystrom sketch of
// F (Tropp, Yurtsever, Udell & Cevher 2017, "Fixed-rank approximation of a positive-semidefinite
// matrix from streaming data"): Y = F Omega with sketch_columns Gaussian columns, then the
// rank-`rank` truncation of the stabilised Nystrom approximation. The diagonal is accumulated
// exactly in both cases.
class FactorBuilder {
 public:
  FactorBuilder(int64_t elements, int64_t rank, int64_t expected_rows, uint64_t seed);
  void add(const torch::Tensor& rows);  // [m, elements] float32
  Factor finish(int64_t samples);       // samples: the n of F = (1/n) sum R^T R

 private:
  void flush();

  int64_t elements_;
  int64_t rank_;
  bool exact_;
  torch::Tensor diag_sum_;                // sum of squared rows, float64
  std::vector<torch::Tensor> kept_rows_;  // exact: every row
  torch::Tensor omega_;                   // sketch: [elements, columns] float32
  torch::Tensor sketch_;                  // sketch: Y = sum R^T (R Omega), float32
  // Sketch updates read and write all of Y and Omega: chunks are gathered into updates of at
  // least flush_rows_ rows so that this traffic is paid once per update, not once per chunk.
  torch::Tensor pending_;  // [capacity, elements]; the first pending_rows_ rows are waiting
  int64_t pending_rows_ = 0;
  int64_t flush_rows_ = 0;
};

// The best rank-`rank` factor of gamma * old + new (re-compressing [sqrt(gamma) U_old, U_new]);
// the diagonal of the sum stays exact.
Factor merge(const Factor& old_factor, const Factor& new_factor, double gamma, int64_t rank);

// d^T (D + U U^T) d, and when `gradient` is given, (D + U U^T) d written into it.
double quadratic(const Factor& factor, const torch::Tensor& d, torch::Tensor* gradient);

// The dense matrix D + U U^T (tests, small blocks only).
torch::Tensor dense(const Factor& factor);

}  // namespace clhost::lowrank
