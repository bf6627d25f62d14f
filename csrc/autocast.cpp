// Autocast kernels: under torch.autocast each forward op casts its floating-point tensor
// arguments as torch's autocast does for the op's built-in twin, then runs below autocast:
//   conv2d_forward, linear_forward   -> the autocast dtype (lower_precision_fp: conv2d, linear)
//   cross_entropy_forward           -> float32 (fp32: cross_entropy_loss)
// Every other op (batch_norm, pooling, relu, and all backward ops) keeps its inputs' dtypes:
// autocast falls through to it. float64 tensors are never cast, as in torch.
#include "common.h"

#include <ATen/autocast_mode.h>

namespace manual_ops {
namespace {

enum class Policy { LowerPrecision, Float32 };

// Calls the operator `name` (of signature Ret(Args...)) with its tensors cast per `policy`,
// autocast excluded below; at::autocast::cached_cast casts only eligible (floating, not
// float64, on `device`) tensors, and reuses the cast of a leaf weight within one autocast region.
template <Policy policy, c10::DeviceType device, const char* name, class Sig>
struct Autocast;

template <Policy policy, c10::DeviceType device, const char* name, class Ret, class... Args>
struct Autocast<policy, device, name, Ret(Args...)> {
  static Ret call(Args... args) {
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Ret(Args...)>();
    c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(device));
    const at::ScalarType to = policy == Policy::LowerPrecision
                                  ? at::autocast::get_lower_precision_fp_from_device_type(device)
                                  : at::kFloat;
    return op.call(at::autocast::cached_cast(to, args, device)...);
  }
};

constexpr char kConv2d[] = "manual_ops::conv2d_forward";
constexpr char kLinear[] = "manual_ops::linear_forward";
constexpr char kCrossEntropy[] = "manual_ops::cross_entropy_forward";

using Conv2dSig = Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&, IntArrayRef, IntArrayRef,
                         IntArrayRef, int64_t);
using LinearSig = Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&);
using CrossEntropySig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const std::optional<Tensor>&,
                                                   c10::string_view, int64_t, double);

template <c10::DeviceType device>
void register_autocast(torch::Library& m) {
  m.impl("conv2d_forward", &Autocast<Policy::LowerPrecision, device, kConv2d, Conv2dSig>::call);
  m.impl("linear_forward", &Autocast<Policy::LowerPrecision, device, kLinear, LinearSig>::call);
  m.impl("cross_entropy_forward", &Autocast<Policy::Float32, device, kCrossEntropy, CrossEntropySig>::call);
}

}  // namespace

TORCH_LIBRARY_IMPL(manual_ops, AutocastCPU, m) { register_autocast<c10::DeviceType::CPU>(m); }
TORCH_LIBRARY_IMPL(manual_ops, AutocastCUDA, m) { register_autocast<c10::DeviceType::CUDA>(m); }

}  // namespace manual_ops
