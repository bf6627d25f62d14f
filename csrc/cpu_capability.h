// Which vector instructions the kernels may use, decided once per process, as ATen's DispatchStub
// decides its CPU capability: AVX2 with FMA where the CPU has both, unless the environment variable
// MANUAL_OPS_CPU_CAPABILITY is "default" (the counterpart of ATEN_CPU_CAPABILITY=default), which
// selects the portable code everywhere; the tests use it to check both versions of each kernel.
//
// AVX2 code is compiled per function, with MANUAL_OPS_AVX2 (below) on the functions that use the
// intrinsics, so nothing else in the library needs AVX2 and the portable code runs on any x86-64
// CPU. F16C (float16 <-> float32 conversion) comes with it: every CPU with AVX2 has it.
#pragma once

#include <cstdlib>
#include <cstring>

#define MANUAL_OPS_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace manual_ops {

inline bool use_avx2() {
  static const bool enabled = [] {
    const char* requested = std::getenv("MANUAL_OPS_CPU_CAPABILITY");
    if (requested != nullptr && std::strcmp(requested, "default") == 0) return false;
#if defined(__x86_64__) || defined(__i386__)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
    return false;
#endif
  }();
  return enabled;
}

}  // namespace manual_ops
