// Dropout's one loop, forward and backward alike, compiled once per CPU capability (cpu_capability.h).
// Derivation: docs/derivations.md, "Dropout".
#include "cpu/dropout_kernel.h"

#include <ATen/Dispatch.h>

#include "common.h"
#include "cpu/vec_opmath.h"

namespace manual_ops {
namespace CPU_CAPABILITY {
namespace {

// out[i] = in[i] * (mask[i] != 0 ? s : 0) with s = T(1 / opmath(1 - p)): torch's noise tensor holds
// bernoulli(1 - p) / (1 - p) rounded to T, which its product with the input reads back, so each value here
// is the same product, rounded once, as torch's dropout (bit for bit; x * 0 keeps -0.0 and NaN as there).
void dropout_kernel(const at::Tensor& in, const at::Tensor& mask, at::Tensor& out, double p) {
  MANUAL_OPS_DISPATCH_FLOATING(in.scalar_type(), "dropout", [&] {
    using V = OpVec<scalar_t>;
    using S = typename V::value_type;
    const S scale = static_cast<S>(static_cast<scalar_t>(S(1) / static_cast<S>(1.0 - p)));
    elementwise<scalar_t>([&](V x, V m) { return x * V::blendv(V(0), V(scale), m != V(0)); }, out, in, mask);
  });
}

}  // namespace
}  // namespace CPU_CAPABILITY

MANUAL_OPS_REGISTER_KERNEL(dropout_stub, CPU_CAPABILITY::dropout_kernel);

}  // namespace manual_ops
