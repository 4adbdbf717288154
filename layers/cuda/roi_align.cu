// ROIAlign (Mask R-CNN; Detectron2's ROIAlignV2 when aligned) and its
// position-sensitive variant PSROIAlign: the average of bilinear samples on a
// regular grid inside each bin of each RoI.
//
// bottom (N, C, H, W); rois (R, 5) [batch_index, x1, y1, x2, y2] in image
// pixels. ROIAlign: top (R, C, pooled_h, pooled_w). PSROIAlign: C =
// output_dim * k * k, top (R, output_dim, k, k), bin (ph, pw) of class c
// samples input channel (c * k + ph) * k + pw.
#include "common.cuh"

// Where one RoI's bins and samples lie along one axis (in map cells).
struct AlignAxis {
  real start;  // RoI start
  real bin;    // bin size
  int grid;    // samples per bin along this axis (0: none)
};

// RoI [low, high] in image pixels -> map cells, on an axis of `size` cells.
// aligned: shift by half a cell and keep the true size (Detectron2's
// ROIAlignV2); otherwise the original Mask R-CNN rule, which makes every RoI
// at least one cell long. sampling_ratio 0 means adaptive: ceil(roi size /
// pooled) samples per bin, at most ceil(size / pooled), what a RoI as long
// as the map gets (the bound; layers/roi_align.py says why). Compared while
// still real: a RoI of 2^31 cells would overflow the cast.
DEVICE AlignAxis align_axis(const real low, const real high, const real scale, const int aligned,
                            const int pooled, const int sampling_ratio, const int size) {
  const real offset = aligned ? (real)0.5 : (real)0;
  AlignAxis a;
  a.start = MUL_RN(low, scale) - offset;
  real length = MUL_RN(high, scale) - offset - a.start;
  if (!aligned) length = max(length, (real)1);
  a.bin = length / (real)pooled;
  const int bound = (size + pooled - 1) / pooled;
  const real want = ceil(a.bin);
  a.grid = sampling_ratio > 0 ? sampling_ratio
                              : want <= 0 ? 0 : want >= (real)bound ? bound : (int)want;
  return a;
}

// Position of sample i of bin p.
DEVICE real align_sample(const AlignAxis& a, const int p, const int i) {
  return a.start + MUL_RN((real)p, a.bin) + MUL_RN((real)i + (real)0.5, a.bin) / (real)a.grid;
}

// The two neighbouring cells of coordinate v on an axis of `size` cells and
// their weights. False when v lies beyond [-1, size]: such a sample counts
// as 0. Inside, v is clamped into [0, size - 1]. (Written so that NaN is
// outside as well, which keeps every access in bounds.)
DEVICE bool align_neighbours(real v, const int size, int& low, int& high, real& w_low,
                             real& w_high) {
  if (!(v >= (real)-1 && v <= (real)size)) return false;
  if (v <= 0) v = 0;
  low = (int)v;
  if (low >= size - 1) {
    low = high = size - 1;
    v = (real)low;
  } else {
    high = low + 1;
  }
  w_high = v - (real)low;
  w_low = (real)1 - w_high;
  return true;
}

// Average of the samples of bin (ph, pw) over one channel plane.
DEVICE real align_bin(const real* plane, const int height, const int width, const AlignAxis& ay,
                      const AlignAxis& ax, const int ph, const int pw) {
  real sum = 0;
  for (int iy = 0; iy < ay.grid; ++iy) {
    int y0, y1;
    real wy0, wy1;
    if (!align_neighbours(align_sample(ay, ph, iy), height, y0, y1, wy0, wy1)) continue;
    for (int ix = 0; ix < ax.grid; ++ix) {
      int x0, x1;
      real wx0, wx1;
      if (!align_neighbours(align_sample(ax, pw, ix), width, x0, x1, wx0, wx1)) continue;
      sum += wy0 * wx0 * plane[y0 * width + x0] + wy0 * wx1 * plane[y0 * width + x1] +
             wy1 * wx0 * plane[y1 * width + x0] + wy1 * wx1 * plane[y1 * width + x1];
    }
  }
  // An empty grid (inverted aligned RoI) gives 0, not 0 / 0.
  const int count = max(ay.grid * ax.grid, 1);
  return sum / (real)count;
}

// Top element t of ROIAlign (input channel t.c, pooled_h x pooled_w bins) or,
// position_sensitive, of PSROIAlign (input channel ps_channel, k x k bins):
// the input plane it samples and its sampling grid along both axes. The
// forward and backward kernels of both layers differ only after this.
struct AlignBin {
  long long plane;
  AlignAxis y, x;
};

DEVICE AlignBin align_locate(const real* rois, const RoiBin& t, const int position_sensitive,
                             const int channels, const int height, const int width,
                             const int pooled_h, const int pooled_w, const real spatial_scale,
                             const int sampling_ratio, const int aligned) {
  const real* roi = rois + t.r * 5;
  const int channel = position_sensitive ? ps_channel(t, pooled_w) : t.c;
  AlignBin a;
  a.plane = roi_plane(rois, t, channel, channels, height, width);
  a.y = align_axis(roi[2], roi[4], spatial_scale, aligned, pooled_h, sampling_ratio, height);
  a.x = align_axis(roi[1], roi[3], spatial_scale, aligned, pooled_w, sampling_ratio, width);
  return a;
}

// One thread per top element (R, C, pooled_h, pooled_w).
KERNEL void FN(roi_align_forward)(const long long n, const real* bottom, const real* rois,
                                  const int channels, const int height, const int width,
                                  const int pooled_h, const int pooled_w,
                                  const real spatial_scale, const int sampling_ratio,
                                  const int aligned, real* top) {
  CUDA_KERNEL_LOOP(index, n) {
    const RoiBin t = roi_bin(index, channels, pooled_h, pooled_w);
    const AlignBin a = align_locate(rois, t, 0, channels, height, width, pooled_h, pooled_w,
                                    spatial_scale, sampling_ratio, aligned);
    top[index] = align_bin(bottom + a.plane, height, width, a.y, a.x, t.ph, t.pw);
  }
}

// One thread per top element (R, output_dim, k, k).
KERNEL void FN(psroi_align_forward)(const long long n, const real* bottom, const real* rois,
                                    const int channels, const int height, const int width,
                                    const int output_dim, const int group_size,
                                    const real spatial_scale, const int sampling_ratio,
                                    const int aligned, real* top) {
  CUDA_KERNEL_LOOP(index, n) {
    const RoiBin t = roi_bin(index, output_dim, group_size, group_size);
    const AlignBin a = align_locate(rois, t, 1, channels, height, width, group_size,
                                    group_size, spatial_scale, sampling_ratio, aligned);
    top[index] = align_bin(bottom + a.plane, height, width, a.y, a.x, t.ph, t.pw);
  }
}

// -- backward: a gather ------------------------------------------------------
//
// One thread per bottom element (N, C, H, W) sums what every sample of every
// bin of every RoI of its image gives it: top_diff / count times the
// sample's bilinear weights on this cell's row and column. Each thread
// writes only its own element, adding in a fixed order (RoI, then the
// samples' rows, then their columns), so the result is the same on every
// run (an atomicAdd scatter over top elements adds in whatever order the
// threads reach a cell). It assigns every element: bottom_diff need not be
// zeroed.
//
// Cost: R RoI visits per bottom element. A RoI of another image is one load
// and a compare. One of the same image computes its row axis and the range
// of samples near the cell's row (about 20 instructions) and stops there
// unless the RoI reaches the row; then the columns likewise, and for the
// RoIs covering the cell, about (2 / step + 3) candidate samples per axis
// (step: the distance between samples, about one cell with the adaptive
// grid), checked exactly: some 10-20 neighbour computations. For a Mask
// R-CNN head (256 x 50 x 84 cells, 512 RoIs per image) that is about 5e8
// visits per image, around a millisecond on a current GPU.

// The sample numbers [first, last) of bins [p0, p1) along axis a that can
// touch cell h of `size`: sample i of bin p is number s = p * grid + i, at
// about start + (s + 0.5) * step. A sample touches h when h is one of its
// two neighbours, so it lies in [h - 1, h + 1] (down to -1 for cells 0 and 1,
// clamped to 0; up to size for the last cell). One sample of margin each side
// absorbs the rounding of the quotients; align_touch decides. A zero step
// (an empty aligned RoI with a fixed sampling_ratio) puts every sample at
// one place: all are candidates. A negative step (an inverted aligned RoI)
// runs backwards.
DEVICE void align_samples_near(const AlignAxis& a, const int h, const int size, const int p0,
                               const int p1, int& first, int& last) {
  first = p0 * a.grid;
  last = p1 * a.grid;
  const real step = a.bin / (real)max(a.grid, 1);
  if (a.grid <= 0 || !(fabs(step) > 0)) return;
  const real lo = h <= 1 ? (real)-1 : (real)(h - 1);
  const real hi = h >= size - 1 ? (real)size : (real)(h + 1);
  real s_lo = (lo - a.start) / step - (real)0.5;
  real s_hi = (hi - a.start) / step - (real)0.5;
  if (s_lo > s_hi) {
    const real swap = s_lo;
    s_lo = s_hi;
    s_hi = swap;
  }
  // Clamped while still real: far-away cells give huge quotients.
  const real begin = (real)first, end = (real)last;
  first = (int)min(max(floor(s_lo) - (real)1, begin), end);
  last = (int)min(max(ceil(s_hi) + (real)2, begin), end);
}

// Whether sample s of axis a has cell h among its neighbours, and then its
// bilinear weight on h (both weights when both neighbours are h, at the
// map's edge, where one is 0): exactly the forward's weights.
DEVICE bool align_touch(const AlignAxis& a, const int s, const int h, const int size,
                        real& weight) {
  int low, high;
  real w_low, w_high;
  if (!align_neighbours(align_sample(a, s / a.grid, s % a.grid), size, low, high, w_low, w_high))
    return false;
  if (low != h && high != h) return false;
  weight = (low == h ? w_low : (real)0) + (high == h ? w_high : (real)0);
  return true;
}

// One bottom cell and what can read it: its image, row h and column w, the
// offset of top element (bin 0, 0) of its top channel within a RoI's top
// elements (RoI r's bin (p, q) is at r * roi_stride + top + p * pooled_w +
// q), and the bins [p0, p1) x [q0, q1) that may read its channel.
struct AlignCell {
  int image, top, h, w, p0, p1, q0, q1;
};

DEVICE real align_gather(const real* top_diff, const real* rois, const long long num_rois,
                         const long long roi_stride, const AlignCell& e, const int height,
                         const int width, const int pooled_h, const int pooled_w,
                         const real spatial_scale, const int sampling_ratio,
                         const int aligned) {
  real sum = 0;
  for (long long r = 0; r < num_rois; ++r) {
    const real* roi = rois + r * 5;
    if ((int)roi[0] != e.image) continue;
    const AlignAxis ay = align_axis(roi[2], roi[4], spatial_scale, aligned, pooled_h,
                                    sampling_ratio, height);
    int sy0, sy1, sx0, sx1;
    align_samples_near(ay, e.h, height, e.p0, e.p1, sy0, sy1);
    if (sy0 >= sy1) continue;
    const AlignAxis ax = align_axis(roi[1], roi[3], spatial_scale, aligned, pooled_w,
                                    sampling_ratio, width);
    align_samples_near(ax, e.w, width, e.q0, e.q1, sx0, sx1);
    if (sx0 >= sx1) continue;
    const real* g = top_diff + r * roi_stride + e.top;
    const int count = max(ay.grid * ax.grid, 1);
    for (int sy = sy0; sy < sy1; ++sy) {
      real wy, wx;
      if (!align_touch(ay, sy, e.h, height, wy)) continue;
      const real* g_row = g + (sy / ay.grid) * pooled_w;
      for (int sx = sx0; sx < sx1; ++sx) {
        if (!align_touch(ax, sx, e.w, width, wx)) continue;
        sum += g_row[sx / ax.grid] / (real)count * wy * wx;  // this sample's part
      }
    }
  }
  return sum;
}

// ROIAlign: bottom channel c is read by channel c of every bin.
KERNEL void FN(roi_align_backward)(const long long n, const real* top_diff, const real* rois,
                                   const long long num_rois, const int channels,
                                   const int height, const int width, const int pooled_h,
                                   const int pooled_w, const real spatial_scale,
                                   const int sampling_ratio, const int aligned,
                                   real* bottom_diff) {
  CUDA_KERNEL_LOOP(index, n) {
    const PlanePos p = plane_pos(index, height, width);
    const int bins = pooled_h * pooled_w;
    const AlignCell e = {(int)(p.plane / channels), (int)(p.plane % channels) * bins, p.row,
                         p.col, 0, pooled_h, 0, pooled_w};
    bottom_diff[index] = align_gather(top_diff, rois, num_rois, (long long)channels * bins, e,
                                      height, width, pooled_h, pooled_w, spatial_scale,
                                      sampling_ratio, aligned);
  }
}

// PSROIAlign: bottom channel (c * k + ph) * k + pw is read only by bin
// (ph, pw) of class c, the top element at that same offset within a RoI.
KERNEL void FN(psroi_align_backward)(const long long n, const real* top_diff, const real* rois,
                                     const long long num_rois, const int channels,
                                     const int height, const int width, const int group_size,
                                     const real spatial_scale, const int sampling_ratio,
                                     const int aligned, real* bottom_diff) {
  CUDA_KERNEL_LOOP(index, n) {
    const PlanePos p = plane_pos(index, height, width);
    const int k = group_size;
    const int channel = (int)(p.plane % channels);
    const int ph = (channel / k) % k, pw = channel % k;
    // Top offset of bin (0, 0) of class c, so that + ph * k + pw is the channel.
    const AlignCell e = {(int)(p.plane / channels), channel - ph * k - pw, p.row, p.col,
                         ph, ph + 1, pw, pw + 1};
    bottom_diff[index] = align_gather(top_diff, rois, num_rois, channels, e, height, width,
                                      k, k, spatial_scale, sampling_ratio, aligned);
  }
}
