// Mean-variance normalization (layers/mvn.py): the element-wise halves of
// forward and backward, one thread per element of the (rows, dim) view of
// the blob (a row is one (n, c) map, or one image with across_channels).
// The per-row statistics (mean, sqrt(variance) + eps, and backward's row
// means of dy and y * dy) are reductions computed before the launch.
// Each thread reads and writes only its own element (and its row's
// statistics), so every kernel is correct in place.
#include "common.cuh"

KERNEL void FN(mvn_subtract_mean)(const long long n, const real* x, const real* mean,
                                  const long long dim, real* y) {
  CUDA_KERNEL_LOOP(i, n) {
    y[i] = x[i] - mean[i / dim];
  }
}

KERNEL void FN(mvn_normalize)(const long long n, const real* x, const real* mean,
                              const real* std, const long long dim, real* y) {
  CUDA_KERNEL_LOOP(i, n) {
    const long long row = i / dim;
    y[i] = (x[i] - mean[row]) / std[row];
  }
}

// Mean only: dx = dy - mean(dy).
KERNEL void FN(mvn_backward_mean)(const long long n, const real* dy, const real* mean_dy,
                                  const long long dim, real* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    dx[i] = dy[i] - mean_dy[i / dim];
  }
}

// Caffe's formula: dx = (dy - mean(dy) - y * mean(y * dy)) / (sqrt(var) + eps).
KERNEL void FN(mvn_backward_normalized)(const long long n, const real* y, const real* dy,
                                        const real* mean_dy, const real* mean_ydy,
                                        const real* std, const long long dim, real* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    const long long row = i / dim;
    dx[i] = (dy[i] - mean_dy[row] - y[i] * mean_ydy[row]) / std[row];
  }
}
