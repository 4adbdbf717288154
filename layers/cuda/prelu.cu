// PReLU (layers/prelu.py), Caffe's formulas:
//   y = max(x, 0) + a_c * min(x, 0)
//   dx = dy * ((x > 0) + a_c * (x <= 0))
//   da_c += sum over items and positions of dy * x * (x <= 0)
// The bottom is (N, C, dim...) flattened; element i has channel
// c = (i / dim) % channels, and its slope is a[c / div], with div = channels
// when one slope is shared by all channels, else 1.
// x may be y (in place: the caller passes its saved copy of the input to
// backward) and dx may be dy; each element is read before it is written.
#include "common.cuh"

DEVICE long long prelu_slope_index(const long long i, const long long channels,
                                   const long long dim, const long long div) {
  return (i / dim) % channels / div;
}

KERNEL void FN(prelu_forward)(const long long n, const long long channels,
                              const long long dim, const long long div, const real* x,
                              const real* slope, real* y) {
  CUDA_KERNEL_LOOP(i, n) {
    const real v = x[i];
    const real a = slope[prelu_slope_index(i, channels, dim, div)];
    // max(x, 0) + a * min(x, 0), with NaN propagating as in the NumPy path.
    y[i] = (v > 0 ? v : (real)0) + a * (v > 0 ? (real)0 : v);
  }
}

KERNEL void FN(prelu_backward)(const long long n, const long long channels,
                               const long long dim, const long long div, const real* x,
                               const real* slope, const real* dy, real* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    const real v = x[i];
    const real a = slope[prelu_slope_index(i, channels, dim, div)];
    dx[i] = dy[i] * ((v > 0 ? (real)1 : (real)0) + a * (v <= 0 ? (real)1 : (real)0));
  }
}

// First stage of the slope gradient (Caffe's PReLUParamBackward): one thread
// per (channel, position) of an item, n = channels * dim, summing over the
// num items; terms[j] = sum_k dy[k, j] * x[k, j] * (x[k, j] <= 0). The caller
// sums terms over the positions of each channel (or over all of them).
KERNEL void FN(prelu_slope_terms)(const long long n, const long long num, const real* x,
                                  const real* dy, real* terms) {
  CUDA_KERNEL_LOOP(j, n) {
    real sum = 0;
    for (long long k = 0; k < num; ++k) {
      const real v = x[k * n + j];
      sum += dy[k * n + j] * v * (v <= 0 ? (real)1 : (real)0);
    }
    terms[j] = sum;
  }
}
