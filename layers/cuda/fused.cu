// Fused element-wise steps of the graph plan (layers/fused.py): a frozen
// per-channel affine (BatchNorm with stored statistics and a frozen Scale,
// folded to y = x * a[c] + b[c]) with an optional ReLU, and Eltwise SUM of
// two bottoms with an optional ReLU, each one pass over memory. Elements are
// NCHW; channel c of element i is (i / spatial) % channels.
#include "common.cuh"

KERNEL void FN(affine_forward)(const long long n, const real* x, const real* a,
                               const real* b, real* y, const long long channels,
                               const long long spatial, const int relu) {
  CUDA_KERNEL_LOOP(i, n) {
    const long long c = (i / spatial) % channels;
    const real v = x[i] * a[c] + b[c];
    y[i] = (relu && v <= 0) ? (real)0 : v;
  }
}

// dx = dy * a[c], zero where the ReLU output y was not positive. In place
// (dx == dy) is allowed: each element is read before it is written.
KERNEL void FN(affine_backward)(const long long n, const real* y, const real* dy,
                                const real* a, real* dx, const long long channels,
                                const long long spatial, const int relu) {
  CUDA_KERNEL_LOOP(i, n) {
    const long long c = (i / spatial) % channels;
    dx[i] = (relu && y[i] <= 0) ? (real)0 : dy[i] * a[c];
  }
}

KERNEL void FN(sum2_forward)(const long long n, const real* x0, const real* x1,
                             const real c0, const real c1, real* y, const int relu) {
  CUDA_KERNEL_LOOP(i, n) {
    const real v = c0 * x0[i] + c1 * x1[i];
    y[i] = (relu && v <= 0) ? (real)0 : v;
  }
}

// dx = coeff * dy where the ReLU output y is positive (or everywhere without
// ReLU), else 0. In place (dx == dy) is allowed.
KERNEL void FN(masked_scale)(const long long n, const real* y, const real* dy,
                             const real coeff, real* dx, const int relu) {
  CUDA_KERNEL_LOOP(i, n) {
    dx[i] = (relu && y[i] <= 0) ? (real)0 : coeff * dy[i];
  }
}

// y += b[c], then max(y, 0) when relu: a convolution's bias and ReLU in one
// pass over its output, in place.
KERNEL void FN(bias_relu)(const long long n, real* y, const real* b,
                          const long long channels, const long long spatial,
                          const int relu) {
  CUDA_KERNEL_LOOP(i, n) {
    const real v = y[i] + b[(i / spatial) % channels];
    y[i] = (relu && v <= 0) ? (real)0 : v;
  }
}
