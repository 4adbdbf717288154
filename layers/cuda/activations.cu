// Caffe's element-wise activations of layers/activations.py: ELU, Swish,
// Clip, Power, Exp, Log, AbsVal, BNLL and Threshold's forward.
//
// One thread per element. Forward kernels take (n, x, y, params...) and
// backward kernels (n, x, dy, dx, params...): backward reads x, never the
// top's data, which a later in-place layer may have changed. An in-place
// layer passes its saved copy of x (the caller's business, as in Caffe's
// PReLU). Each element is read before it is written, so y may be x and dx
// may be dy. Swish's forward also writes the slope its backward multiplies
// by (an array product, no kernel).
#include "common.cuh"

// -- ELU: y = x if x > 0 else alpha * (exp(x) - 1) -------------------------------

KERNEL void FN(elu_forward)(const long long n, const real* x, real* y, const real alpha) {
  CUDA_KERNEL_LOOP(i, n) {
    const real v = x[i];
    y[i] = v > 0 ? v : alpha * expm1(v);
  }
}

// Caffe's dy * (alpha + y) for x <= 0, as dy * alpha * exp(x).
KERNEL void FN(elu_backward)(const long long n, const real* x, const real* dy, real* dx,
                             const real alpha) {
  CUDA_KERNEL_LOOP(i, n) {
    const real v = x[i];
    dx[i] = dy[i] * (v > 0 ? (real)1 : alpha * exp(v));
  }
}

// -- Swish: y = x * s, s = sigmoid(beta * x) ------------------------------------------
// Also writes the slope dy/dx = beta * y + s * (1 - beta * y) (Caffe's
// backward expression), which backward multiplies dy by.

KERNEL void FN(swish_forward)(const long long n, const real* x, real* slope, real* y,
                              const real beta) {
  CUDA_KERNEL_LOOP(i, n) {
    const real v = x[i];
    const real s = (real)0.5 * tanh((real)0.5 * (beta * v)) + (real)0.5;
    const real out = v * s;
    const real by = beta * out;
    slope[i] = by + s * (1 - by);
    y[i] = out;
  }
}

// -- Clip: y = min(max(x, lo), hi); NaN stays NaN ------------------------------------

KERNEL void FN(clip_forward)(const long long n, const real* x, real* y, const real lo,
                             const real hi) {
  CUDA_KERNEL_LOOP(i, n) {
    const real v = x[i];
    y[i] = v > hi ? hi : (v < lo ? lo : v);
  }
}

// The gradient passes where lo <= x <= hi (both ends included, as Caffe).
KERNEL void FN(clip_backward)(const long long n, const real* x, const real* dy, real* dx,
                              const real lo, const real hi) {
  CUDA_KERNEL_LOOP(i, n) {
    const real v = x[i];
    dx[i] = dy[i] * ((v >= lo && v <= hi) ? (real)1 : (real)0);
  }
}

// -- Power: y = (shift + scale * x) ^ power -------------------------------------------
// The caller handles Caffe's constant cases (power * scale == 0: y is 1 or
// shift^power, dx is 0) and power == 1 (dx = scale * dy) with array fills.

KERNEL void FN(power_forward)(const long long n, const real* x, real* y, const real power,
                              const real scale, const real shift) {
  CUDA_KERNEL_LOOP(i, n) {
    const real base = scale * x[i] + shift;
    y[i] = power == (real)1 ? base : pow(base, power);
  }
}

// dy/dx = power * scale * (shift + scale * x)^(power - 1); linear for power 2.
KERNEL void FN(power_backward)(const long long n, const real* x, const real* dy, real* dx,
                               const real power, const real scale, const real shift) {
  CUDA_KERNEL_LOOP(i, n) {
    const real diff_scale = power * scale;
    const real base = scale * x[i] + shift;
    const real slope = power == (real)2 ? diff_scale * base
                                        : diff_scale * pow(base, power - (real)1);
    dx[i] = dy[i] * slope;
  }
}

// -- Exp: y = outer * exp(inner * x); dy/dx = inner * y, y computed again ------------

KERNEL void FN(exp_forward)(const long long n, const real* x, real* y, const real inner,
                            const real outer) {
  CUDA_KERNEL_LOOP(i, n) {
    y[i] = outer * exp(inner * x[i]);
  }
}

KERNEL void FN(exp_backward)(const long long n, const real* x, const real* dy, real* dx,
                             const real inner, const real outer) {
  CUDA_KERNEL_LOOP(i, n) {
    const real y = outer * exp(inner * x[i]);
    dx[i] = dy[i] * y * inner;
  }
}

// -- Log: y = log(shift + scale * x) / log(base); dy/dx = scale / log(base) / (...) ----

KERNEL void FN(log_forward)(const long long n, const real* x, real* y, const real scale,
                            const real shift, const real base_scale) {
  CUDA_KERNEL_LOOP(i, n) {
    y[i] = log(scale * x[i] + shift) * base_scale;
  }
}

KERNEL void FN(log_backward)(const long long n, const real* x, const real* dy, real* dx,
                             const real scale, const real shift, const real backward_scale) {
  CUDA_KERNEL_LOOP(i, n) {
    dx[i] = dy[i] * (backward_scale / (scale * x[i] + shift));
  }
}

// -- AbsVal: y = |x|; dy/dx = sign(x), 0 at 0 -----------------------------------------

KERNEL void FN(absval_forward)(const long long n, const real* x, real* y) {
  CUDA_KERNEL_LOOP(i, n) {
    y[i] = fabs(x[i]);
  }
}

KERNEL void FN(absval_backward)(const long long n, const real* x, const real* dy,
                                real* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    const real v = x[i];
    const real sign = v > 0 ? (real)1 : (v < 0 ? (real)-1 : (real)0);
    dx[i] = dy[i] * sign;
  }
}

// -- BNLL: y = log(1 + exp(x)), in the form that never overflows ----------------------

#define BNLL_THRESHOLD 50  // Caffe's kBNLL_THRESHOLD: exp(min(x, 50)) in backward

KERNEL void FN(bnll_forward)(const long long n, const real* x, real* y) {
  CUDA_KERNEL_LOOP(i, n) {
    const real v = x[i];
    y[i] = v > 0 ? v + log1p(exp(-v)) : log1p(exp(v));
  }
}

KERNEL void FN(bnll_backward)(const long long n, const real* x, const real* dy, real* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    const real e = exp(min(x[i], (real)BNLL_THRESHOLD));
    dx[i] = dy[i] * e / (e + 1);
  }
}

// -- Threshold: y = 1 where x > threshold, else 0 (no backward, as Caffe) -------------

KERNEL void FN(threshold_forward)(const long long n, const real* x, real* y,
                                  const real threshold) {
  CUDA_KERNEL_LOOP(i, n) {
    y[i] = x[i] > threshold ? (real)1 : (real)0;
  }
}
