// Which copy of the vectorised kernels runs, decided once per process, as ATen's DispatchStub does.
//
// The kernel bodies live in csrc/cpu/*.cpp, written once with at::vec::Vectorized<T>. setup.py
// compiles each of those files once per capability below, with -DCPU_CAPABILITY=<name>,
// -DCPU_CAPABILITY_<name> and that capability's -m flags, as ATen's cmake/Codegen.cmake does; at::vec
// then has 8 float32 lanes under AVX2 and 16 under AVX512, and 1-lane portable code under DEFAULT.
// Each copy registers its functions into the KernelStubs declared in csrc/cpu/*.h, and an op calls
// the stub, which runs the copy of cpu_capability().
//
// cpu_capability() is the highest level the CPU has (cpuid through __builtin_cpu_supports, which
// also checks that the OS saves the wider registers), or a lower one requested by the environment
// variable MANUAL_OPS_CPU_CAPABILITY=default|avx2|avx512 (the counterpart of ATEN_CPU_CAPABILITY);
// a request above what the CPU has, or an unknown value, is ignored with a warning, as torch ignores
// an invalid ATEN_CPU_CAPABILITY.
#pragma once

#include <utility>

namespace manual_ops {

enum class Capability { DEFAULT = 0, AVX2 = 1, AVX512 = 2 };
constexpr int kCapabilities = 3;

Capability cpu_capability();
const char* capability_name(Capability c);

// One function pointer per capability, filled in by csrc/cpu/*.cpp's registrations before main()
// (a namespace-scope KernelStub is zero-initialised before any dynamic initialiser runs, so the
// order of the registrations across files does not matter).
template <typename Fn>
struct KernelStub {
  Fn* kernels[kCapabilities];

  template <typename... Args>
  decltype(auto) operator()(Args&&... args) const {
    return kernels[static_cast<int>(cpu_capability())](std::forward<Args>(args)...);
  }
};

}  // namespace manual_ops

// In a header: the stub's type. In the op's file: the stub. In a kernel file: its copy's function.
#define MANUAL_OPS_DECLARE_KERNEL(stub, signature) extern ::manual_ops::KernelStub<signature> stub
#define MANUAL_OPS_DEFINE_KERNEL(stub) decltype(stub) stub
#define MANUAL_OPS_REGISTER_KERNEL(stub, fn) \
  static const bool stub##_registered =      \
      (::manual_ops::stub.kernels[static_cast<int>(::manual_ops::Capability::CPU_CAPABILITY)] = &fn, true)
