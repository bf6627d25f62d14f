// ReLU's forward and backward loops, compiled once per CPU capability (cpu_capability.h).
// Derivation: docs/derivations.md, "relu".
#include "cpu/relu_kernel.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include "common.h"

namespace manual_ops {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

constexpr int64_t kGrain = 1 << 15;

// out[i] = f(in[i]...) for i in [0, n), a vector at a time, the last partial one by count.
// Unlike at::vec::map, bfloat16 and float16 stay Vectorized<T> (no round trip through float32):
// relu only compares and selects, so every value keeps its bits.
template <typename T, typename F, typename... In>
void select_loop(const F& f, T* out, int64_t n, const In*... in) {
  using Vec = Vectorized<T>;
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) f(Vec::loadu(in + i)...).store(out + i);
  if (i < n) f(Vec::loadu(in + i, n - i)...).store(out + i, n - i);
}

// y[i] = max(x[i], 0), as `x < 0 ? 0 : x`: the compare is false for NaN and for -0.0, so both pass
// through as in torch. Vectorized<T> compares in float32 for bfloat16 and float16 and keeps the
// other operand's bits as they are, so no value is rounded.
void relu_kernel(const at::Tensor& x, at::Tensor& y) {
  MANUAL_OPS_DISPATCH_FLOATING(x.scalar_type(), "relu", [&] {
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* out = y.mutable_data_ptr<scalar_t>();  // == in for relu_
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      select_loop(
          [](Vectorized<scalar_t> v) {
            const Vectorized<scalar_t> zero(scalar_t(0));
            return Vectorized<scalar_t>::blendv(v, zero, v < zero);
          },
          out + begin, end - begin, in + begin);
    });
  });
}

// dx[i] = dy[i] * 1[y[i] > 0], as `y <= 0 ? 0 : dy` (a NaN output passes the gradient, as in torch).
void relu_backward_kernel(const at::Tensor& result, const at::Tensor& grad_output, at::Tensor& grad_input) {
  MANUAL_OPS_DISPATCH_FLOATING(result.scalar_type(), "relu_backward", [&] {
    const scalar_t* y = result.const_data_ptr<scalar_t>();
    const scalar_t* dy = grad_output.const_data_ptr<scalar_t>();
    scalar_t* dx = grad_input.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, result.numel(), kGrain, [&](int64_t begin, int64_t end) {
      select_loop(
          [](Vectorized<scalar_t> yv, Vectorized<scalar_t> g) {
            const Vectorized<scalar_t> zero(scalar_t(0));
            return Vectorized<scalar_t>::blendv(g, zero, yv <= zero);
          },
          dx + begin, end - begin, y + begin, dy + begin);
    });
  });
}

}  // namespace
}  // namespace CPU_CAPABILITY

MANUAL_OPS_REGISTER_KERNEL(relu_stub, CPU_CAPABILITY::relu_kernel);
MANUAL_OPS_REGISTER_KERNEL(relu_backward_stub, CPU_CAPABILITY::relu_backward_kernel);

}  // namespace manual_ops
