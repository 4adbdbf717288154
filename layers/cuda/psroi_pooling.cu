// PSROIPooling: R-FCN position-sensitive average pooling over the k x k bins
// of each RoI, with the bin geometry of the Caffe fork used by py-R-FCN
// (DESIGN.md section 4).
//
// bottom (N, output_dim * k * k, H, W); rois (R, 5) [batch_index, x1, y1,
// x2, y2] in image pixels; top (R, output_dim, k, k). Bin (ph, pw) of class c
// reads input channel (c * k + ph) * k + pw.
#include "common.cuh"

// Cell bounds [start, end) of bin p along one axis, clipped to [0, size].
// The RoI spans round(low) * scale to (round(high) + 1) * scale, at least 0.1.
DEVICE void psroi_bin(const real low, const real high, const real scale, const int k,
                      const int p, const int size, int& start, int& end) {
  const real first = MUL_RN(round(low), scale);
  const real last = MUL_RN(round(high) + (real)1, scale);
  const real bin = max(last - first, (real)0.1) / (real)k;
  start = (int)min(max(floor(MUL_RN((real)p, bin) + first), (real)0), (real)size);
  end = (int)min(max(ceil(MUL_RN((real)(p + 1), bin) + first), (real)0), (real)size);
}

// Top element t's input plane and the cell bounds [h0, h1) x [w0, w1) of its
// bin, shared by the forward and backward kernels.
struct PsBin {
  long long plane;
  int h0, h1, w0, w1;
};

DEVICE PsBin psroi_locate(const real* rois, const RoiBin& t, const int channels,
                          const int height, const int width, const int k,
                          const real spatial_scale) {
  const real* roi = rois + t.r * 5;
  PsBin a;
  a.plane = roi_plane(rois, t, ps_channel(t, k), channels, height, width);
  psroi_bin(roi[2], roi[4], spatial_scale, k, t.ph, height, a.h0, a.h1);
  psroi_bin(roi[1], roi[3], spatial_scale, k, t.pw, width, a.w0, a.w1);
  return a;
}

// One thread per top element: the mean of its bin in its channel (0 if empty).
KERNEL void FN(psroi_pool_forward)(const long long n, const real* bottom, const real* rois,
                                   const int channels, const int height, const int width,
                                   const int output_dim, const int group_size,
                                   const real spatial_scale, real* top) {
  CUDA_KERNEL_LOOP(index, n) {
    const RoiBin t = roi_bin(index, output_dim, group_size, group_size);
    const PsBin a = psroi_locate(rois, t, channels, height, width, group_size, spatial_scale);
    const real* plane = bottom + a.plane;
    real sum = 0;
    for (int h = a.h0; h < a.h1; ++h) {
      for (int w = a.w0; w < a.w1; ++w) sum += plane[h * width + w];
    }
    const int area = (a.h1 - a.h0) * (a.w1 - a.w0);
    top[index] = area > 0 ? sum / (real)area : (real)0;
  }
}

// One thread per top element: top_diff / bin_area to every cell of its bin.
// Bins of several RoIs overlap, hence atomicAdd. bottom_diff must be zeroed.
KERNEL void FN(psroi_pool_backward)(const long long n, const real* top_diff, const real* rois,
                                    const int channels, const int height, const int width,
                                    const int output_dim, const int group_size,
                                    const real spatial_scale, real* bottom_diff) {
  CUDA_KERNEL_LOOP(index, n) {
    const RoiBin t = roi_bin(index, output_dim, group_size, group_size);
    const PsBin a = psroi_locate(rois, t, channels, height, width, group_size, spatial_scale);
    const int area = (a.h1 - a.h0) * (a.w1 - a.w0);
    if (area <= 0) continue;
    const real share = top_diff[index] / (real)area;
    real* plane = bottom_diff + a.plane;
    for (int h = a.h0; h < a.h1; ++h) {
      for (int w = a.w0; w < a.w1; ++w) atomicAdd(plane + h * width + w, share);
    }
  }
}
