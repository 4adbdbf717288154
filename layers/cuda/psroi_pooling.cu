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

// One thread per top element: the mean of its bin in its channel (0 if empty).
KERNEL void FN(psroi_pool_forward)(const long long n, const real* bottom, const real* rois,
                                   const int channels, const int height, const int width,
                                   const int output_dim, const int group_size,
                                   const real spatial_scale, real* top) {
  CUDA_KERNEL_LOOP(index, n) {
    const int k = group_size;
    const int pw = (int)(index % k);
    const int ph = (int)((index / k) % k);
    const int c = (int)((index / k / k) % output_dim);
    const long long r = index / k / k / output_dim;
    const real* roi = rois + r * 5;
    const long long b = (long long)roi[0];  // checked to lie in [0, N) by the host
    int h0, h1, w0, w1;
    psroi_bin(roi[2], roi[4], spatial_scale, k, ph, height, h0, h1);
    psroi_bin(roi[1], roi[3], spatial_scale, k, pw, width, w0, w1);
    const int channel = (c * k + ph) * k + pw;
    const real* plane = bottom + (b * channels + channel) * height * width;
    real sum = 0;
    for (int h = h0; h < h1; ++h) {
      for (int w = w0; w < w1; ++w) sum += plane[h * width + w];
    }
    const int area = (h1 - h0) * (w1 - w0);
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
    const int k = group_size;
    const int pw = (int)(index % k);
    const int ph = (int)((index / k) % k);
    const int c = (int)((index / k / k) % output_dim);
    const long long r = index / k / k / output_dim;
    const real* roi = rois + r * 5;
    const long long b = (long long)roi[0];
    int h0, h1, w0, w1;
    psroi_bin(roi[2], roi[4], spatial_scale, k, ph, height, h0, h1);
    psroi_bin(roi[1], roi[3], spatial_scale, k, pw, width, w0, w1);
    const int area = (h1 - h0) * (w1 - w0);
    if (area <= 0) continue;
    const real share = top_diff[index] / (real)area;
    const int channel = (c * k + ph) * k + pw;
    real* plane = bottom_diff + (b * channels + channel) * height * width;
    for (int h = h0; h < h1; ++h) {
      for (int w = w0; w < w1; ++w) atomicAdd(plane + h * width + w, share);
    }
  }
}
