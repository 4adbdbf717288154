// ROIPooling: Fast R-CNN max pooling over the bins of each RoI, with the bin
// geometry of the Caffe fork used by py-faster-rcnn (DESIGN.md section 4).
//
// bottom (N, C, H, W); rois (R, 5) [batch_index, x1, y1, x2, y2] in image
// pixels; top and argmax (R, C, pooled_h, pooled_w). argmax holds the
// in-plane index h * W + w of each maximum, -1 for an empty bin.
#include "common.cuh"

// One thread per top element.
KERNEL void FN(roi_pool_forward)(const long long n, const real* bottom, const real* rois,
                                 const int channels, const int height, const int width,
                                 const int pooled_h, const int pooled_w,
                                 const real spatial_scale, real* top, int* argmax) {
  CUDA_KERNEL_LOOP(index, n) {
    const RoiBin t = roi_bin(index, channels, pooled_h, pooled_w);
    const real* roi = rois + t.r * 5;
    // round() takes halves away from zero, as the NumPy path does.
    const int start_w = (int)round(roi[1] * spatial_scale);
    const int start_h = (int)round(roi[2] * spatial_scale);
    const int end_w = (int)round(roi[3] * spatial_scale);
    const int end_h = (int)round(roi[4] * spatial_scale);
    // Inverted and sub-cell RoIs are pooled as one cell (Caffe's rule).
    const int roi_w = max(end_w - start_w + 1, 1);
    const int roi_h = max(end_h - start_h + 1, 1);
    const real bin_h = (real)roi_h / (real)pooled_h;
    const real bin_w = (real)roi_w / (real)pooled_w;
    // Clipping keeps every access inside the map, whatever the RoI.
    const int h0 = min(max((int)floor((real)t.ph * bin_h) + start_h, 0), height);
    const int h1 = min(max((int)ceil((real)(t.ph + 1) * bin_h) + start_h, 0), height);
    const int w0 = min(max((int)floor((real)t.pw * bin_w) + start_w, 0), width);
    const int w1 = min(max((int)ceil((real)(t.pw + 1) * bin_w) + start_w, 0), width);
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

// One thread per top element: its diff goes to the cell that won the max.
// Bins of one or several RoIs can share that cell, hence atomicAdd.
// bottom_diff must be zeroed before the launch.
KERNEL void FN(roi_pool_backward)(const long long n, const real* top_diff, const real* rois,
                                  const int* argmax, const int channels, const int height,
                                  const int width, const int pooled_h, const int pooled_w,
                                  real* bottom_diff) {
  CUDA_KERNEL_LOOP(index, n) {
    const int cell = argmax[index];
    if (cell < 0) continue;
    const RoiBin t = roi_bin(index, channels, pooled_h, pooled_w);
    atomicAdd(bottom_diff + roi_plane(rois, t, t.c, channels, height, width) + cell,
              top_diff[index]);
  }
}
