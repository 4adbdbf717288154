// Element-wise activations: ReLU (with Caffe's negative_slope).
#include "common.cuh"

KERNEL void FN(relu_forward)(const long long n, const real* x, real* y,
                             const real negative_slope) {
  CUDA_KERNEL_LOOP(i, n) {
    y[i] = x[i] > 0 ? x[i] : x[i] * negative_slope;
  }
}

// Caffe's rule: the gradient at x == 0 is negative_slope.
KERNEL void FN(relu_backward)(const long long n, const real* x, const real* dy,
                              real* dx, const real negative_slope) {
  CUDA_KERNEL_LOOP(i, n) {
    dx[i] = x[i] > 0 ? dy[i] : dy[i] * negative_slope;
  }
}
