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

// A gather, one thread per bottom element (N, output_dim * k * k, H, W):
// the sum of top_diff / bin_area over every RoI of its image whose bin reads
// this cell. The channel fixes the class c and the bin (ph, pw), so each RoI
// has one candidate bin. Each thread writes only its own element, adding in
// RoI order, so the result is the same on every run (an atomicAdd scatter
// over top elements adds in whatever order the threads reach a cell). It
// assigns every element: bottom_diff need not be zeroed.
//
// Cost: R RoI visits per bottom element. A RoI of another image costs one
// load and a compare; one of the same image the row bounds of its bin (two
// roundings, a division, four products), then, when the row is inside, the
// column bounds. About 20-40 instructions per visit: R-FCN's ResNet-101 head
// (1029 + 392 channels x 38 x 63 cells, 300 RoIs) is about 1e9 visits, on
// the order of a millisecond on an H100/H200, against tens of microseconds
// for the scatter; a few percent of a training iteration at most.
KERNEL void FN(psroi_pool_backward)(const long long n, const real* top_diff, const real* rois,
                                    const long long num_rois, const int channels,
                                    const int height, const int width, const int group_size,
                                    const real spatial_scale, real* bottom_diff) {
  CUDA_KERNEL_LOOP(index, n) {
    const PlanePos e = plane_pos(index, height, width);
    const long long image = e.plane / channels;
    const int k = group_size;
    // Channel (c * k + ph) * k + pw is also the offset of top element
    // (c, ph, pw) within a RoI's output_dim * k * k top elements.
    const int channel = (int)(e.plane % channels);
    const int ph = (channel / k) % k, pw = channel % k;
    real sum = 0;
    for (long long r = 0; r < num_rois; ++r) {
      const real* roi = rois + r * 5;
      if ((long long)roi[0] != image) continue;
      int h0, h1, w0, w1;
      psroi_bin(roi[2], roi[4], spatial_scale, k, ph, height, h0, h1);
      if (e.row < h0 || e.row >= h1) continue;
      psroi_bin(roi[1], roi[3], spatial_scale, k, pw, width, w0, w1);
      if (e.col < w0 || e.col >= w1) continue;
      sum += top_diff[r * channels + channel] / (real)((h1 - h0) * (w1 - w0));
    }
    bottom_diff[index] = sum;
  }
}
