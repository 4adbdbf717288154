// ROIPooling: Fast R-CNN max pooling over the bins of each RoI, with the bin
// geometry of the Caffe fork used by py-faster-rcnn (DESIGN.md section 4).
//
// bottom (N, C, H, W); rois (R, 5) [batch_index, x1, y1, x2, y2] in image
// pixels; top and argmax (R, C, pooled_h, pooled_w). argmax holds the
// in-plane index h * W + w of each maximum, -1 for an empty bin.
#include "common.cuh"

// One axis of a RoI's bins: the RoI's first cell and the bin size in cells.
struct PoolAxis {
  int start;
  real bin;
};

// RoI [low, high] in image pixels -> its bins along one axis. round() takes
// halves away from zero, as the NumPy path does; inverted and sub-cell RoIs
// are pooled as one cell (Caffe's rule).
DEVICE PoolAxis pool_axis(const real low, const real high, const real scale, const int pooled) {
  PoolAxis a;
  a.start = (int)round(low * scale);
  const int end = (int)round(high * scale);
  a.bin = (real)max(end - a.start + 1, 1) / (real)pooled;
  return a;
}

// Cells [lo, hi) of bin p, clipped to [0, size] so that every access stays
// inside the map, whatever the RoI. Shared by forward and backward, so both
// see exactly the same bins.
DEVICE void pool_bin(const PoolAxis& a, const int p, const int size, int& lo, int& hi) {
  lo = min(max((int)floor(MUL_RN((real)p, a.bin)) + a.start, 0), size);
  hi = min(max((int)ceil(MUL_RN((real)(p + 1), a.bin)) + a.start, 0), size);
}

// One thread per top element.
KERNEL void FN(roi_pool_forward)(const long long n, const real* bottom, const real* rois,
                                 const int channels, const int height, const int width,
                                 const int pooled_h, const int pooled_w,
                                 const real spatial_scale, real* top, int* argmax) {
  CUDA_KERNEL_LOOP(index, n) {
    const RoiBin t = roi_bin(index, channels, pooled_h, pooled_w);
    const real* roi = rois + t.r * 5;
    int h0, h1, w0, w1;
    pool_bin(pool_axis(roi[2], roi[4], spatial_scale, pooled_h), t.ph, height, h0, h1);
    pool_bin(pool_axis(roi[1], roi[3], spatial_scale, pooled_w), t.pw, width, w0, w1);
    const real* plane = bottom + roi_plane(rois, t, t.c, channels, height, width);
    // First maximum in row-major order; an empty bin gives 0 and -1.
    real best = 0;
    int best_index = -1;
    for (int h = h0; h < h1; ++h) {
      for (int w = w0; w < w1; ++w) {
        const int i = h * width + w;
        if (best_index < 0 || plane[i] > best) {
          best = plane[i];
          best_index = i;
        }
      }
    }
    top[index] = best;
    argmax[index] = best_index;
  }
}

// The bins [first, last) of an axis that can contain cell h. Bin p covers
// [floor(p * bin), ceil((p + 1) * bin)) from the start, so it contains h
// exactly when p lies in ((h - start) / bin - 1, (h - start + 1) / bin);
// one bin of margin each side absorbs the rounding of these quotients, and
// pool_bin decides. Clamped while still real: far-away cells give huge
// quotients.
DEVICE void pool_bins_near(const PoolAxis& a, const int h, const int pooled, int& first,
                           int& last) {
  const real offset = (real)h - (real)a.start;
  first = (int)min(max(floor(offset / a.bin) - (real)1, (real)0), (real)pooled);
  last = (int)min(max(ceil((offset + (real)1) / a.bin) + (real)1, (real)0), (real)pooled);
}

// A gather, one thread per bottom element (N, C, H, W): the sum of the top
// diffs of every bin, of every RoI of its image, whose maximum it is. Each
// thread writes only its own element, adding in a fixed order (RoI, bin row,
// bin column), so the result is the same on every run (an atomicAdd scatter
// over top elements adds in whatever order the threads reach a cell). It
// assigns every element: bottom_diff need not be zeroed.
//
// Cost: R RoI visits per bottom element. A visit to a RoI of another image
// is one load and a compare; one of the same image computes the bin rows
// near h (two roundings, three divisions) and stops there unless h is in the
// RoI; only then the columns, and the argmax of each bin containing the
// cell (about (1 / bin + 1)^2, at most pooled_h * pooled_w). About 20-40
// instructions per visit: Fast R-CNN's VGG16 head (512 x 38 x 50 per image,
// 128 RoIs per image) is about 2.5e8 visits per image, a fraction of a
// millisecond on a current GPU.
KERNEL void FN(roi_pool_backward)(const long long n, const real* top_diff, const real* rois,
                                  const int* argmax, const long long num_rois,
                                  const int channels, const int height, const int width,
                                  const int pooled_h, const int pooled_w,
                                  const real spatial_scale, real* bottom_diff) {
  CUDA_KERNEL_LOOP(index, n) {
    const PlanePos e = plane_pos(index, height, width);
    const long long image = e.plane / channels;
    const int c = (int)(e.plane % channels);
    const int cell = e.row * width + e.col;
    real sum = 0;
    for (long long r = 0; r < num_rois; ++r) {
      const real* roi = rois + r * 5;
      if ((long long)roi[0] != image) continue;
      const PoolAxis ay = pool_axis(roi[2], roi[4], spatial_scale, pooled_h);
      int ph0, ph1;
      pool_bins_near(ay, e.row, pooled_h, ph0, ph1);
      if (ph0 >= ph1) continue;
      const PoolAxis ax = pool_axis(roi[1], roi[3], spatial_scale, pooled_w);
      int pw0, pw1;
      pool_bins_near(ax, e.col, pooled_w, pw0, pw1);
      const long long bins = (r * channels + c) * pooled_h;
      for (int ph = ph0; ph < ph1; ++ph) {
        int h0, h1;
        pool_bin(ay, ph, height, h0, h1);
        if (e.row < h0 || e.row >= h1) continue;
        for (int pw = pw0; pw < pw1; ++pw) {
          const long long t = (bins + ph) * pooled_w + pw;
          if (argmax[t] == cell) sum += top_diff[t];
        }
      }
    }
    bottom_diff[index] = sum;
  }
}
