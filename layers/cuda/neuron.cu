// Element-wise activations: ReLU (with Caffe's negative_slope), Sigmoid, TanH.
// Sigmoid and TanH backward read the top (y), so they work in place.
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

// 0.5 * tanh(0.5 * x) + 0.5 equals 1 / (1 + exp(-x)) and never overflows.
KERNEL void FN(sigmoid_forward)(const long long n, const real* x, real* y) {
  CUDA_KERNEL_LOOP(i, n) {
    y[i] = (real)0.5 * tanh((real)0.5 * x[i]) + (real)0.5;
  }
}

KERNEL void FN(sigmoid_backward)(const long long n, const real* y, const real* dy,
                                 real* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    dx[i] = dy[i] * y[i] * (1 - y[i]);
  }
}

KERNEL void FN(tanh_forward)(const long long n, const real* x, real* y) {
  CUDA_KERNEL_LOOP(i, n) {
    y[i] = tanh(x[i]);
  }
}

KERNEL void FN(tanh_backward)(const long long n, const real* y, const real* dy,
                              real* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    dx[i] = dy[i] * (1 - y[i] * y[i]);
  }
}
