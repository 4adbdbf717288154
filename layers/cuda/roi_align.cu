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
  int grid;    // samples per bin along this axis (<= 0: none)
};

// RoI [low, high] in image pixels -> map cells. aligned: shift by half a cell
// and keep the true size (Detectron2's ROIAlignV2); otherwise the original
// Mask R-CNN rule, which makes every RoI at least one cell long.
// sampling_ratio 0 means adaptive: ceil(roi size / pooled) samples per bin.
DEVICE AlignAxis align_axis(const real low, const real high, const real scale, const int aligned,
                            const int pooled, const int sampling_ratio) {
  const real offset = aligned ? (real)0.5 : (real)0;
  AlignAxis a;
  a.start = MUL_RN(low, scale) - offset;
  real length = MUL_RN(high, scale) - offset - a.start;
  if (!aligned) length = max(length, (real)1);
  a.bin = length / (real)pooled;
  a.grid = sampling_ratio > 0 ? sampling_ratio : (int)ceil(length / (real)pooled);
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

// Spreads g (the bin's top diff) over the four neighbours of every sample.
// Samples of overlapping bins and RoIs share cells, hence atomicAdd.
DEVICE void align_bin_backward(real* plane, const int height, const int width,
                               const AlignAxis& ay, const AlignAxis& ax, const int ph,
                               const int pw, const real g) {
  const int count = max(ay.grid * ax.grid, 1);
  const real share = g / (real)count;
  for (int iy = 0; iy < ay.grid; ++iy) {
    int y0, y1;
    real wy0, wy1;
    if (!align_neighbours(align_sample(ay, ph, iy), height, y0, y1, wy0, wy1)) continue;
    for (int ix = 0; ix < ax.grid; ++ix) {
      int x0, x1;
      real wx0, wx1;
      if (!align_neighbours(align_sample(ax, pw, ix), width, x0, x1, wx0, wx1)) continue;
      atomicAdd(plane + y0 * width + x0, share * wy0 * wx0);
      atomicAdd(plane + y0 * width + x1, share * wy0 * wx1);
      atomicAdd(plane + y1 * width + x0, share * wy1 * wx0);
      atomicAdd(plane + y1 * width + x1, share * wy1 * wx1);
    }
  }
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
  a.y = align_axis(roi[2], roi[4], spatial_scale, aligned, pooled_h, sampling_ratio);
  a.x = align_axis(roi[1], roi[3], spatial_scale, aligned, pooled_w, sampling_ratio);
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

// One thread per top element; bottom_diff must be zeroed before the launch.
KERNEL void FN(roi_align_backward)(const long long n, const real* top_diff, const real* rois,
                                   const int channels, const int height, const int width,
                                   const int pooled_h, const int pooled_w,
                                   const real spatial_scale, const int sampling_ratio,
                                   const int aligned, real* bottom_diff) {
  CUDA_KERNEL_LOOP(index, n) {
    const RoiBin t = roi_bin(index, channels, pooled_h, pooled_w);
    const AlignBin a = align_locate(rois, t, 0, channels, height, width, pooled_h, pooled_w,
                                    spatial_scale, sampling_ratio, aligned);
    align_bin_backward(bottom_diff + a.plane, height, width, a.y, a.x, t.ph, t.pw,
                       top_diff[index]);
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

// One thread per top element; bottom_diff must be zeroed before the launch.
KERNEL void FN(psroi_align_backward)(const long long n, const real* top_diff, const real* rois,
                                     const int channels, const int height, const int width,
                                     const int output_dim, const int group_size,
                                     const real spatial_scale, const int sampling_ratio,
                                     const int aligned, real* bottom_diff) {
  CUDA_KERNEL_LOOP(index, n) {
    const RoiBin t = roi_bin(index, output_dim, group_size, group_size);
    const AlignBin a = align_locate(rois, t, 1, channels, height, width, group_size,
                                    group_size, spatial_scale, sampling_ratio, aligned);
    align_bin_backward(bottom_diff + a.plane, height, width, a.y, a.x, t.ph, t.pw,
                       top_diff[index]);
  }
}
