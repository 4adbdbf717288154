// Caffe-SSD's Normalize (layers/normalize.py). The bottom is viewed as
// (num, channels, spatial); a normalization group is one position (n, s)
// over the channels (across_spatial false) or one image n (across_spatial
// true). With r the group's norm and s_c the scale (scale[c * scale_step]:
// step 0 when one scale is shared, 1 when there is one per channel):
//   r    = sqrt(sum over the group of x^2 + eps)
//   y    = s_c x / r
//   dx   = (g - (x / r) dot) / r,  g = dy s_c,  dot = sum over the group of g x / r
//   ds_c = sum over n and s of dy x / r   (summed over c too when shared)
//
// The group sums run in two stages so that neither needs atomics and both
// are deterministic: one thread per position sums over the channels
// (normalize_sum_squares, normalize_scaled_dot), then one thread per group
// sums the positions of its group (normalize_group_norms,
// normalize_group_sums; a group of one position when not across_spatial).
// Every other kernel runs one thread per element.
#include "common.cuh"

// The group of element (n, c, s): n when across_spatial, else n * spatial + s.
DEVICE long long normalize_group(const long long n, const long long s, const long long spatial,
                                 const int across) {
  return across ? n : n * spatial + s;
}

// Sum of `width` consecutive values starting at row * width.
DEVICE real normalize_row_sum(const real* values, const long long row, const long long width) {
  real sum = 0;
  for (long long j = 0; j < width; ++j) sum += values[row * width + j];
  return sum;
}

// One thread per position p = (n, s): out[p] = sum over c of x[n, c, s]^2.
KERNEL void FN(normalize_sum_squares)(const long long positions, const long long channels,
                                      const long long spatial, const real* x, real* out) {
  CUDA_KERNEL_LOOP(p, positions) {
    const real* column = x + (p / spatial) * channels * spatial + p % spatial;
    real sum = 0;
    for (long long c = 0; c < channels; ++c) sum += column[c * spatial] * column[c * spatial];
    out[p] = sum;
  }
}

// One thread per position p = (n, s): out[p] = sum over c of dy s_c x / r
// (the norms exist by now, so each term is divided as the NumPy path does).
KERNEL void FN(normalize_scaled_dot)(const long long positions, const long long channels,
                                     const long long spatial, const int across, const real* dy,
                                     const real* x, const real* norm, const real* scale,
                                     const long long scale_step, real* out) {
  CUDA_KERNEL_LOOP(p, positions) {
    const long long n = p / spatial;
    const long long base = n * channels * spatial + p % spatial;
    const real r = norm[normalize_group(n, p % spatial, spatial, across)];
    real sum = 0;
    for (long long c = 0; c < channels; ++c) {
      const long long j = base + c * spatial;
      sum += dy[j] * scale[c * scale_step] * (x[j] / r);
    }
    out[p] = sum;
  }
}

// One thread per group: norm[g] = sqrt(sum of its `width` position sums + eps).
KERNEL void FN(normalize_group_norms)(const long long groups, const long long width,
                                      const real* sums, const real eps, real* norm) {
  CUDA_KERNEL_LOOP(g, groups) {
    norm[g] = sqrt(normalize_row_sum(sums, g, width) + eps);
  }
}

// One thread per group: out[g] = sum of its `width` position sums.
KERNEL void FN(normalize_group_sums)(const long long groups, const long long width,
                                     const real* sums, real* out) {
  CUDA_KERNEL_LOOP(g, groups) {
    out[g] = normalize_row_sum(sums, g, width);
  }
}

// One thread per element: y = s_c x / r.
KERNEL void FN(normalize_forward)(const long long count, const long long channels,
                                  const long long spatial, const int across, const real* x,
                                  const real* norm, const real* scale,
                                  const long long scale_step, real* y) {
  CUDA_KERNEL_LOOP(i, count) {
    const long long s = i % spatial;
    const long long c = (i / spatial) % channels;
    const long long n = i / (spatial * channels);
    y[i] = scale[c * scale_step] * (x[i] / norm[normalize_group(n, s, spatial, across)]);
  }
}

// One thread per element: dx = (dy s_c - (x / r) dot) / r, dot the group's
// sum of dy s x / r (normalize_scaled_dot, then normalize_group_sums when
// across).
KERNEL void FN(normalize_backward)(const long long count, const long long channels,
                                   const long long spatial, const int across, const real* x,
                                   const real* dy, const real* norm, const real* dot,
                                   const real* scale, const long long scale_step, real* dx) {
  CUDA_KERNEL_LOOP(i, count) {
    const long long s = i % spatial;
    const long long c = (i / spatial) % channels;
    const long long n = i / (spatial * channels);
    const long long g = normalize_group(n, s, spatial, across);
    const real r = norm[g];
    dx[i] = (dy[i] * scale[c * scale_step] - (x[i] / r) * dot[g]) / r;
  }
}

// First stage of the scale gradient: one thread per (c, s), summing over the
// num images: terms[c, s] = sum over n of dy x / r. The caller sums terms
// over s per channel (or over everything when the scale is shared).
KERNEL void FN(normalize_scale_terms)(const long long channel_positions, const long long num,
                                      const long long channels, const long long spatial,
                                      const int across, const real* x, const real* dy,
                                      const real* norm, real* terms) {
  CUDA_KERNEL_LOOP(j, channel_positions) {
    const long long s = j % spatial;
    real sum = 0;
    for (long long n = 0; n < num; ++n) {
      const long long i = n * channels * spatial + j;
      sum += dy[i] * (x[i] / norm[normalize_group(n, s, spatial, across)]);
    }
    terms[j] = sum;
  }
}
