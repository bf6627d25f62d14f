// The activations' forward, backward and double-backward loops, compiled once per CPU capability
// (cpu_capability.h): one elementwise loop per pass, and per activation only its f, f' and f''.
// Derivation: docs/derivations.md, "Activations".
#include "cpu/activation_kernel.h"

#include <ATen/Dispatch.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>

#include "common.h"
#include "cpu/vec_opmath.h"

namespace manual_ops {
namespace CPU_CAPABILITY {
namespace {

// Each activation: f(x); df(s) = f'(x) written in the saved s (x, or y = f(x) where noted); d2f(s) =
// d(df(s))/ds, what the saved tensor's gradient is made of in the double backward. V is a vector of
// the opmath type (float32 for the 16-bit dtypes), so each value is rounded once, when stored. Every
// comparison is written the way round that gives the result of torch's vectorised kernels for NaN (its
// scalar tail loops differ from them for elu's, hardtanh's and hardswish's backward).
template <typename V>
struct Sigmoid {  // y = 1 / (1 + e^-x); f' = y (1 - y)
  V f(V x) const { return (V(1) + x.neg().exp()).reciprocal(); }
  V df(V y) const { return y * (V(1) - y); }
  V d2f(V y) const { return V(1) - V(2) * y; }
};

template <typename V>
struct Tanh {  // y = tanh x; f' = 1 - y^2
  V f(V x) const { return x.tanh(); }
  V df(V y) const { return V(1) - y * y; }
  V d2f(V y) const { return V(-2) * y; }
};

template <typename V>
struct Silu {  // f = x s, s = sigmoid(x); f' = s (1 + x (1 - s)); f'' = s (1 - s) (2 + x (1 - 2 s))
  static V sigmoid(V x) { return (V(1) + x.neg().exp()).reciprocal(); }
  V f(V x) const { return x / (V(1) + x.neg().exp()); }
  V df(V x) const {
    const V s = sigmoid(x);
    return s * (V(1) + x * (V(1) - s));
  }
  V d2f(V x) const {
    const V s = sigmoid(x);
    return s * (V(1) - s) * (V(2) + x * (V(1) - V(2) * s));
  }
};

template <typename V>
struct Gelu {  // f = x Phi(x); f' = Phi + x phi; f'' = phi (2 - x^2), phi(x) = e^(-x^2/2) / sqrt(2 pi)
  static V phi(V x) { return (x * x * V(-0.5)).exp() * V(0.5 * M_2_SQRTPI * M_SQRT1_2); }
  static V Phi(V x) { return V(0.5) * (V(1) + (x * V(M_SQRT1_2)).erf()); }
  V f(V x) const { return x * Phi(x); }
  V df(V x) const { return Phi(x) + x * phi(x); }
  V d2f(V x) const { return phi(x) * (V(2) - x * x); }
};

template <typename V>
struct GeluTanh {  // f = x (1 + t) / 2, t = tanh u, u = k (x + c x^3): f' = (1 + t) / 2 + x (1 - t^2) u' / 2,
                   // f'' = (1 - t^2) (u' - x t u'^2 + x u'' / 2), u' = k (1 + 3 c x^2), u'' = 6 k c x
  static constexpr double k = M_SQRT2 * M_2_SQRTPI * 0.5;  // sqrt(2 / pi)
  static constexpr double c = 0.044715;
  static V t(V x) { return (V(k) * (x + V(c) * x * x * x)).tanh(); }
  static V du(V x) { return V(k) * (V(1) + V(3 * c) * x * x); }
  V f(V x) const { return V(0.5) * x * (V(1) + t(x)); }
  V df(V x) const {
    const V tx = t(x);
    return V(0.5) * (V(1) + tx) + V(0.5) * x * (V(1) - tx * tx) * du(x);
  }
  V d2f(V x) const {
    const V tx = t(x), dux = du(x);
    return (V(1) - tx * tx) * (dux - x * tx * dux * dux + x * V(3 * k * c) * x);
  }
};

template <typename V>
struct LeakyRelu {  // f = x > 0 ? x : a x; f' = x > 0 ? 1 : a; f'' = 0
  typename V::value_type slope;
  V f(V x) const { return V::blendv(x * V(slope), x, x > V(0)); }
  V df(V x) const { return V::blendv(V(slope), V(1), x > V(0)); }
  V d2f(V) const { return V(0); }
};

template <typename V>
struct Elu {  // f = x > 0 ? x : a (e^x - 1); f' = x > 0 ? 1 : a e^x; f'' = x > 0 ? 0 : a e^x
  typename V::value_type alpha;
  V f(V x) const { return V::blendv(x.expm1() * V(alpha), x, x > V(0)); }
  V df(V x) const { return V::blendv(x.exp() * V(alpha), V(1), x > V(0)); }
  V d2f(V x) const { return V::blendv(x.exp() * V(alpha), V(0), x > V(0)); }
};

template <typename V>
struct Hardtanh {  // y = clamp(x, lo, hi); f' = lo < y < hi ? 1 : 0 (y is in (lo, hi) exactly where x
                   // is, so the output decides); f'' = 0
  typename V::value_type lo, hi;
  V f(V x) const { return at::vec::clamp(x, V(lo), V(hi)); }
  V df(V y) const { return V::blendv(V(0), V(1), (y > V(lo)) & (y < V(hi))); }
  V d2f(V) const { return V(0); }
};

template <typename V>
struct Hardswish {  // f = x min(max(x + 3, 0), 6) / 6; f' = x <= -3 ? 0 : x < 3 ? x / 3 + 1/2 : 1;
                    // f'' = -3 < x < 3 ? 1/3 : 0
  V f(V x) const { return x * at::vec::clamp(x + V(3), V(0), V(6)) / V(6); }
  V df(V x) const {
    const V upper = V::blendv(x / V(3) + V(0.5), V(1), x >= V(3));
    return V::blendv(upper, V(0), x <= V(-3));
  }
  V d2f(V x) const { return V::blendv(V(0), V(1.0 / 3), (x > V(-3)) & (x < V(3))); }
};

template <typename V>
struct Hardsigmoid {  // f = min(max(x + 3, 0), 6) / 6; f' = -3 < x < 3 ? 1/6 : 0; f'' = 0
  V f(V x) const { return at::vec::clamp(x + V(3), V(0), V(6)) / V(6); }
  V df(V x) const { return V::blendv(V(0), V(1.0 / 6), (x > V(-3)) & (x < V(3))); }
  V d2f(V) const { return V(0); }
};

template <typename V>
struct Softplus {  // f = b x > t ? x : log(1 + e^(b x)) / b; f' = b x > t ? 1 : z / (z + 1), z = e^(b x);
                   // f'' = b x > t ? 0 : b z / (z + 1)^2
  typename V::value_type beta, threshold;
  V f(V x) const { return V::blendv((x * V(beta)).exp().log1p() / V(beta), x, x * V(beta) > V(threshold)); }
  V df(V x) const {
    const V z = (x * V(beta)).exp();
    return V::blendv(z / (z + V(1)), V(1), x * V(beta) > V(threshold));
  }
  V d2f(V x) const {
    const V z = (x * V(beta)).exp(), z1 = z + V(1);
    return V::blendv(V(beta) * z / (z1 * z1), V(0), x * V(beta) > V(threshold));
  }
};

// Calls body(activation) with the activation `a` names, as its struct over opmath vectors of T.
template <typename T, typename Body>
void with_activation(const ActivationArgs& a, const Body& body) {
  using V = OpVec<T>;
  using S = typename V::value_type;
  const S alpha = static_cast<S>(a.alpha), beta = static_cast<S>(a.beta);
  switch (a.kind) {
    case Activation::sigmoid: return body(Sigmoid<V>{});
    case Activation::tanh: return body(Tanh<V>{});
    case Activation::silu: return body(Silu<V>{});
    case Activation::gelu: return body(Gelu<V>{});
    case Activation::gelu_tanh: return body(GeluTanh<V>{});
    case Activation::leaky_relu: return body(LeakyRelu<V>{alpha});
    case Activation::elu: return body(Elu<V>{alpha});
    case Activation::hardtanh: return body(Hardtanh<V>{alpha, beta});
    case Activation::hardswish: return body(Hardswish<V>{});
    case Activation::hardsigmoid: return body(Hardsigmoid<V>{});
    case Activation::softplus: return body(Softplus<V>{alpha, beta});
  }
}

void activation_kernel(const at::Tensor& x, at::Tensor& y, const ActivationArgs& a) {
  MANUAL_OPS_DISPATCH_FLOATING(x.scalar_type(), "activation", [&] {
    with_activation<scalar_t>(a, [&](const auto& act) {
      elementwise<scalar_t>([&](auto xv) { return act.f(xv); }, y, x);
    });
  });
}

void activation_backward_kernel(const at::Tensor& saved, const at::Tensor& grad_output, at::Tensor& grad_input,
                                const ActivationArgs& a) {
  MANUAL_OPS_DISPATCH_FLOATING(saved.scalar_type(), "activation_backward", [&] {
    with_activation<scalar_t>(a, [&](const auto& act) {
      elementwise<scalar_t>([&](auto s, auto dy) { return act.df(s) * dy; }, grad_input, saved, grad_output);
    });
  });
}

void activation_double_backward_kernel(const at::Tensor& saved, const at::Tensor& grad_output,
                                       const at::Tensor& grad_grad_input, at::Tensor& out, const ActivationArgs& a) {
  MANUAL_OPS_DISPATCH_FLOATING(saved.scalar_type(), "activation_double_backward", [&] {
    with_activation<scalar_t>(a, [&](const auto& act) {
      elementwise<scalar_t>([&](auto s, auto dy, auto ggx) { return act.d2f(s) * dy * ggx; }, out, saved,
                            grad_output, grad_grad_input);
    });
  });
}

}  // namespace
}  // namespace CPU_CAPABILITY

MANUAL_OPS_REGISTER_KERNEL(activation_stub, CPU_CAPABILITY::activation_kernel);
MANUAL_OPS_REGISTER_KERNEL(activation_backward_stub, CPU_CAPABILITY::activation_backward_kernel);
MANUAL_OPS_REGISTER_KERNEL(activation_double_backward_stub, CPU_CAPABILITY::activation_double_backward_kernel);

}  // namespace manual_ops
