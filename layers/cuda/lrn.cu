// Local response normalization (layers/lrn.py), one thread per element of
// the (N, C, H, W) bottom, C-contiguous.
//
// Both regions compute scale = offset + alpha_over_n * (window sum of x^2)
// and y = x * scale^-beta, with a window centred on the element and zeros
// past the edges: local_size channels (ACROSS_CHANNELS) or local_size x
// local_size pixels of the element's channel (WITHIN_CHANNEL). The windows
// are symmetric, so the backward sum over "the elements whose window holds
// me" is the same window again:
//   dx = dy * scale^-beta - cache_ratio * x * (window sum of dy * y / scale)
// with cache_ratio = 2 * beta * alpha_over_n. Backward reads the neighbours'
// top diff, top data and scale, so dx must not alias them (the layer is
// never in place).
#include "common.cuh"

KERNEL void FN(lrn_across_forward)(const long long n, const real* x, const int channels,
                                   const long long plane, const int half,
                                   const real alpha_over_n, const real offset,
                                   const real beta, real* scale, real* y) {
  CUDA_KERNEL_LOOP(i, n) {
    const int c = (int)((i / plane) % channels);
    const int first = max(c - half, 0);
    const int last = min(c + half, channels - 1);
    real sum = 0;
    for (int k = first; k <= last; ++k) {
      const real v = x[i + (long long)(k - c) * plane];
      sum += v * v;
    }
    const real s = offset + alpha_over_n * sum;
    scale[i] = s;
    y[i] = x[i] * pow(s, -beta);
  }
}

KERNEL void FN(lrn_across_backward)(const long long n, const real* x, const real* y,
                                    const real* scale, const real* dy, const int channels,
                                    const long long plane, const int half,
                                    const real beta, const real cache_ratio, real* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    const int c = (int)((i / plane) % channels);
    const int first = max(c - half, 0);
    const int last = min(c + half, channels - 1);
    real sum = 0;
    for (int k = first; k <= last; ++k) {
      const long long j = i + (long long)(k - c) * plane;
      sum += dy[j] * y[j] / scale[j];
    }
    dx[i] = dy[i] * pow(scale[i], -beta) - cache_ratio * x[i] * sum;
  }
}

KERNEL void FN(lrn_within_forward)(const long long n, const real* x, const int height,
                                   const int width, const int half,
                                   const real alpha_over_n, const real offset,
                                   const real beta, real* scale, real* y) {
  CUDA_KERNEL_LOOP(i, n) {
    const PlanePos p = plane_pos(i, height, width);
    const real* map = x + p.plane * height * width;
    real sum = 0;
    for (int h = max(p.row - half, 0); h <= min(p.row + half, height - 1); ++h) {
      for (int w = max(p.col - half, 0); w <= min(p.col + half, width - 1); ++w) {
        const real v = map[(long long)h * width + w];
        sum += v * v;
      }
    }
    const real s = offset + alpha_over_n * sum;
    scale[i] = s;
    y[i] = x[i] * pow(s, -beta);
  }
}

KERNEL void FN(lrn_within_backward)(const long long n, const real* x, const real* y,
                                    const real* scale, const real* dy, const int height,
                                    const int width, const int half, const real beta,
                                    const real cache_ratio, real* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    const PlanePos p = plane_pos(i, height, width);
    const long long base = p.plane * height * width;
    real sum = 0;
    for (int h = max(p.row - half, 0); h <= min(p.row + half, height - 1); ++h) {
      for (int w = max(p.col - half, 0); w <= min(p.col + half, width - 1); ++w) {
        const long long j = base + (long long)h * width + w;
        sum += dy[j] * y[j] / scale[j];
      }
    }
    dx[i] = dy[i] * pow(scale[i], -beta) - cache_ratio * x[i] * sum;
  }
}
