// Batch normalization (Caffe's BatchNorm): the per-element normalize and
// gradient steps. The per-channel reductions (means, variances, and the
// means of dy and dy * y) are done by the caller with xp.mean.
//
// Layout: element i of an (N, C, S) array belongs to channel (i / S) % C.
#include "common.cuh"

// y = (x - mean[c]) / std[c], also stored in x_norm for backward. x and y may
// be the same array (in place): each element is read before it is written.
KERNEL void FN(batchnorm_forward)(const long long n, const real* x,
                                  const real* mean, const real* std, real* y,
                                  real* x_norm, const long long channels,
                                  const long long spatial) {
  CUDA_KERNEL_LOOP(i, n) {
    const long long c = (i / spatial) % channels;
    const real v = (x[i] - mean[c]) / std[c];
    y[i] = v;
    x_norm[i] = v;
  }
}

// Batch statistics: dx = (dy - mean(dy)[c] - mean(dy * y)[c] * y) / std[c].
// dy and dx may be the same array (in place).
KERNEL void FN(batchnorm_backward)(const long long n, const real* dy,
                                   const real* x_norm, const real* std,
                                   const real* mean_dy, const real* mean_dy_y,
                                   real* dx, const long long channels,
                                   const long long spatial) {
  CUDA_KERNEL_LOOP(i, n) {
    const long long c = (i / spatial) % channels;
    dx[i] = (dy[i] - mean_dy[c] - mean_dy_y[c] * x_norm[i]) / std[c];
  }
}

// Stored statistics are constants: dx = dy / std[c].
KERNEL void FN(batchnorm_backward_global)(const long long n, const real* dy,
                                          const real* std, real* dx,
                                          const long long channels,
                                          const long long spatial) {
  CUDA_KERNEL_LOOP(i, n) {
    const long long c = (i / spatial) % channels;
    dx[i] = dy[i] / std[c];
  }
}
