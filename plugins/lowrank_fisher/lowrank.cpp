#include "lowrank.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

namespace clhost::lowrank {
namespace {

// The top-`rank` columns of W W^T's eigenbasis, scaled: returns V with V V^T the best rank-`rank`
// approximation of W W^T. W: [elements, k]; computed through the k x k Gram matrix in float64.
torch::Tensor top_columns(const torch::Tensor& w, int64_t rank) {
  if (w.size(1) <= rank) return w;
  const torch::Tensor w64 = w.to(torch::kFloat64);
  const torch::Tensor gram = w64.t().mm(w64);
  const auto [values, vectors] = at::linalg_eigh(gram);  // ascending
  const torch::Tensor top = vectors.slice(1, vectors.size(1) - rank, vectors.size(1));
  return w64.mm(top).to(torch::kFloat32);
}

}  // namespace

int64_t Factor::bytes() const {
  int64_t total = 0;
  if (ut.defined()) total += ut.numel() * static_cast<int64_t>(ut.element_size());
  if (diag.defined()) total += diag.numel() * static_cast<int64_t>(diag.element_size());
  return total;
}

int64_t rank_for(double compression_ratio, int64_t rows, int64_t max_rank) {
  auto rank = static_cast<int64_t>(std::ceil(compression_ratio * static_cast<double>(rows) - 1e-9));
  rank = std::max<int64_t>(rank, 1);
  if (max_rank > 0) rank = std::min(rank, max_rank);
  return rank;
}

FactorBuilder::FactorBuilder(int64_t elements, int64_t rank, int64_t expected_rows, uint64_t seed)
    : elements_(elements), rank_(rank), exact_(rank >= expected_rows) {
  diag_sum_ = torch::zeros({elements}, torch::kFloat64);
  if (!exact_) {
    // Oversampling: twice the rank (at most every row), the usual choice for Nystrom sketches.
    // More columns than the block has elements would only make the core matrix singular.
    const int64_t columns =
        std::min({expected_rows, elements, std::max<int64_t>(2 * rank, rank + 4)});
    auto generator = at::detail::createCPUGenerator(seed);
    omega_ = at::normal(0.0, 1.0, {elements, columns}, generator, torch::kFloat32);
    sketch_ = torch::zeros({elements, columns}, torch::kFloat32);
    // Enough rows per update to amortise the pass over Y and Omega (2 x elements x columns
    // floats), few enough that the gathered rows cost at most that much memory again.
    flush_rows_ = std::clamp<int64_t>(2 * columns, 32, 256);
  }
}

void FactorBuilder::flush() {
  if (pending_rows_ == 0) return;
  const torch::Tensor rows = pending_.narrow(0, 0, pending_rows_);
  sketch_.addmm_(rows.t(), rows.mm(omega_));
  pending_rows_ = 0;
}

void FactorBuilder::add(const torch::Tensor& rows) {
  if (rows.dim() != 2 || rows.size(1) != elements_) {
    throw std::invalid_argument("low-rank Fisher: a chunk of " + std::to_string(rows.dim()) +
                                "-D rows does not match the block's " + std::to_string(elements_) +
                                " elements");
  }
  // Column norms need no squared copy of the chunk; accumulated across chunks in float64.
  diag_sum_.add_(at::linalg_vector_norm(rows, 2, {0}).to(torch::kFloat64).square_());
  if (exact_) {
    kept_rows_.push_back(rows.clone());
    return;
  }
  // The caller's rows live for its call only: copied into one reused buffer.
  const int64_t needed = pending_rows_ + rows.size(0);
  if (!pending_.defined() || pending_.size(0) < needed) {
    torch::Tensor larger = torch::empty({std::max(needed, flush_rows_ + rows.size(0)), elements_});
    if (pending_rows_ > 0)
      larger.narrow(0, 0, pending_rows_).copy_(pending_.narrow(0, 0, pending_rows_));
    pending_ = larger;
  }
  pending_.narrow(0, pending_rows_, rows.size(0)).copy_(rows);
  pending_rows_ = needed;
  if (pending_rows_ >= flush_rows_) flush();
}

Factor FactorBuilder::finish(int64_t samples) {
  const double scale = 1.0 / static_cast<double>(std::max<int64_t>(samples, 1));
  Factor factor;
  torch::Tensor u;  // [elements, rank]
  if (exact_) {
    u = kept_rows_.empty() ? torch::zeros({elements_, 0})
                           : torch::cat(kept_rows_, 0).t().mul(std::sqrt(scale));
    kept_rows_.clear();
  } else {
    flush();
    pending_ = torch::Tensor();
    // Stabilised Nystrom (Tropp et al. 2017, Alg. 3), in float64: shift by nu, Cholesky of
    // Omega^T Y_nu, then the SVD of Y_nu L^-T gives F's approximate eigenpairs.
    const torch::Tensor y = sketch_.to(torch::kFloat64).mul(scale);
    const torch::Tensor omega = omega_.to(torch::kFloat64);
    double nu = std::sqrt(static_cast<double>(elements_)) * std::numeric_limits<float>::epsilon() *
                y.norm().item<double>();
    nu = std::max(nu, 1e-30);
    torch::Tensor e;
    for (int attempt = 0;; ++attempt) {
      const torch::Tensor y_nu = y + nu * omega;
      torch::Tensor core = omega.t().mm(y_nu);
      core = 0.5 * (core + core.t());
      const auto [lower, info] = at::linalg_cholesky_ex(core);
      if (info.item<int64_t>() == 0) {
        e = at::linalg_solve_triangular(lower, y_nu.t(), /*upper=*/false).t();  // Y_nu L^-T
        break;
      }
      if (attempt == 8) throw std::runtime_error("low-rank Fisher: Nystrom sketch did not factor");
      nu *= 100.0;
    }
    const auto [sigma_sq, v] = at::linalg_eigh(e.t().mm(e));  // ascending: squared singular values
    const int64_t k = sigma_sq.size(0);
    const int64_t keep = std::min(rank_, k);
    const torch::Tensor top_values = sigma_sq.slice(0, k - keep, k);
    const torch::Tensor top_vectors = v.slice(1, k - keep, k);
    // Left singular vectors E v / sigma; eigenvalues sigma^2 - nu (clamped at 0).
    const torch::Tensor sigma = top_values.clamp_min(1e-300).sqrt();
    const torch::Tensor lambda = (top_values - nu).clamp_min(0.0);
    u = e.mm(top_vectors).div(sigma).mul(lambda.sqrt()).to(torch::kFloat32);
    sketch_ = torch::Tensor();
    omega_ = torch::Tensor();
  }
  factor.ut = u.t().contiguous();
  const torch::Tensor exact_diag = diag_sum_.mul(scale);
  factor.diag = (exact_diag - factor.ut.to(torch::kFloat64).square().sum(0))
                    .clamp_min(0.0)
                    .to(torch::kFloat32)
                    .contiguous();
  return factor;
}

Factor merge(const Factor& old_factor, const Factor& new_factor, double gamma, int64_t rank) {
  const torch::Tensor w =
      torch::cat({old_factor.ut.t().mul(std::sqrt(gamma)), new_factor.ut.t()}, 1);  // [p, k]
  const torch::Tensor u = top_columns(w, rank);
  Factor merged;
  merged.ut = u.t().contiguous();
  // diag(gamma (D_old + U_old U_old^T) + D_new + U_new U_new^T) - diag(U U^T): exact diagonal.
  const torch::Tensor total_diag = old_factor.diag.to(torch::kFloat64).mul(gamma) +
                                   new_factor.diag.to(torch::kFloat64) +
                                   w.to(torch::kFloat64).square().sum(1);
  merged.diag = (total_diag - u.to(torch::kFloat64).square().sum(1))
                    .clamp_min(0.0)
                    .to(torch::kFloat32)
                    .contiguous();
  return merged;
}

double quadratic(const Factor& factor, const torch::Tensor& d, torch::Tensor* gradient) {
  const torch::Tensor weighted = factor.diag * d;
  double value = weighted.dot(d).item<double>();
  if (factor.rank() == 0) {
    if (gradient != nullptr) *gradient = weighted;
    return value;
  }
  const torch::Tensor z = factor.ut.mv(d);  // U^T d
  value += z.dot(z).item<double>();
  if (gradient != nullptr) *gradient = weighted.add_(factor.ut.t().mv(z));
  return value;
}

torch::Tensor dense(const Factor& factor) {
  torch::Tensor out = torch::diag(factor.diag.to(torch::kFloat64));
  if (factor.rank() > 0) {
    const torch::Tensor ut = factor.ut.to(torch::kFloat64);
    out += ut.t().mm(ut);
  }
  return out;
}

}  // namespace clhost::lowrank
