// cpu_capability(): see cpu_capability.h.
#include "cpu_capability.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

namespace manual_ops {
namespace {

// The highest capability whose -m flags (setup.py) this CPU and its OS support.
Capability hardware_capability() {
#if defined(__x86_64__) || defined(__i386__)
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return Capability::AVX512;
  if (avx2) return Capability::AVX2;
#endif
  return Capability::DEFAULT;
}

Capability choose_capability() {
  const Capability hardware = hardware_capability();
  const char* requested = std::getenv("MANUAL_OPS_CPU_CAPABILITY");
  if (requested == nullptr) return hardware;
  for (int c = 0; c < kCapabilities; ++c) {
    if (std::strcmp(requested, capability_name(static_cast<Capability>(c))) != 0) continue;
    if (c <= static_cast<int>(hardware)) return static_cast<Capability>(c);
    TORCH_WARN("manual_ops: ignoring MANUAL_OPS_CPU_CAPABILITY=", requested, ": this CPU supports at most ",
               capability_name(hardware));
    return hardware;
  }
  TORCH_WARN("manual_ops: ignoring invalid value for MANUAL_OPS_CPU_CAPABILITY: ", requested,
             " (expected default, avx2 or avx512)");
  return hardware;
}

}  // namespace

Capability cpu_capability() {
  static const Capability chosen = choose_capability();
  return chosen;
}

const char* capability_name(Capability c) {
  switch (c) {
    case Capability::AVX512: return "avx512";
    case Capability::AVX2: return "avx2";
    case Capability::DEFAULT: break;
  }
  return "default";
}

}  // namespace manual_ops
