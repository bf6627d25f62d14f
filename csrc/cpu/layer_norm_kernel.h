// The row loops of layer_norm.cpp, one copy per CPU capability (cpu/layer_norm_kernel.cpp), for
// T = float, double, bfloat16 and float16, with arithmetic in opmath_t = at::opmath_type<T>. A row is
// one normalised slice: the M values of the trailing normalized_shape dims of one leading index.
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>

#include "cpu_capability.h"

namespace manual_ops {

template <typename T>
using ln_opmath = at::opmath_type<T>;

// Per row r of `rows` consecutive rows of M values (M > 0):
//   mean[r] = sum x / M,  var = sum (x - mean)^2 / M (two passes),  rstd[r] = 1 / sqrt(var + eps),
//   y = (x - mean) * rstd * gamma[m] + beta[m]   (gamma, beta null: 1, 0).
template <typename T>
using layer_norm_rows_fn = void(const T* x, int64_t rows, int64_t M, ln_opmath<T> eps, const ln_opmath<T>* gamma,
                                const ln_opmath<T>* beta, T* y, ln_opmath<T>* mean, ln_opmath<T>* rstd);
// Per row, with xhat = (x - mean[r]) * rstd[r] and g = gamma[m] * dy (gamma null: 1):
//   dx = rstd * (g - sum g / M - xhat * sum(g * xhat) / M)   (dx null: not computed),
//   dgamma[m] += dy * xhat,  dbeta[m] += dy   (either null: not accumulated).
template <typename T>
using layer_norm_backward_rows_fn = void(const T* dy, const T* x, int64_t rows, int64_t M, const ln_opmath<T>* mean,
                                         const ln_opmath<T>* rstd, const ln_opmath<T>* gamma, T* dx,
                                         ln_opmath<T>* dgamma, ln_opmath<T>* dbeta);

// The stubs of dtype T (defined and instantiated for the four in layer_norm.cpp).
template <typename T>
struct LayerNormStubs {
  static KernelStub<layer_norm_rows_fn<T>> rows;
  static KernelStub<layer_norm_backward_rows_fn<T>> backward_rows;
};

}  // namespace manual_ops
