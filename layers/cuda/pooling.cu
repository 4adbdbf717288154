// Spatial pooling (layers/pooling.py): MAX and AVE, forward and backward.
//
// Layout: bottom (N, C, H, W), top (N, C, PH, PW), both C-contiguous; the
// argmax holds, per top element, the flat index h * W + w of the chosen cell
// within its map (-1 for a window without a real cell).
// Window (ph, pw) covers rows ph * stride_h - pad_h .. + kernel_h - 1 (and
// likewise for columns). Backward kernels run one thread per *bottom* element
// and gather from the windows that contain it, so no two threads write the
// same cell and no atomics are needed.
#include "common.cuh"

KERNEL void FN(max_pool_forward)(
    const long long n, const real* bottom, const int height, const int width,
    const int pooled_h, const int pooled_w, const int kernel_h, const int kernel_w,
    const int stride_h, const int stride_w, const int pad_h, const int pad_w,
    real* top, long long* argmax) {
  CUDA_KERNEL_LOOP(index, n) {
    const PlanePos t = plane_pos(index, pooled_h, pooled_w);
    const long long map = t.plane;
    int hstart = t.row * stride_h - pad_h;
    int wstart = t.col * stride_w - pad_w;
    // Only real cells compete: clip the window to the map.
    const int hend = min(hstart + kernel_h, height);
    const int wend = min(wstart + kernel_w, width);
    hstart = max(hstart, 0);
    wstart = max(wstart, 0);
    const real* slice = bottom + map * height * width;
    real best = 0;  // an empty window outputs 0 with argmax -1
    long long best_index = -1;
    for (int h = hstart; h < hend; ++h) {
      for (int w = wstart; w < wend; ++w) {
        const long long i = (long long)h * width + w;
        // Strictly larger wins: the first maximum in row-major order (Caffe).
        if (best_index < 0 || slice[i] > best) {
          best = slice[i];
          best_index = i;
        }
      }
    }
    top[index] = best;
    argmax[index] = best_index;
  }
}

KERNEL void FN(ave_pool_forward)(
    const long long n, const real* bottom, const int height, const int width,
    const int pooled_h, const int pooled_w, const int kernel_h, const int kernel_w,
    const int stride_h, const int stride_w, const int pad_h, const int pad_w,
    real* top) {
  CUDA_KERNEL_LOOP(index, n) {
    const PlanePos t = plane_pos(index, pooled_h, pooled_w);
    const long long map = t.plane;
    int hstart = t.row * stride_h - pad_h;
    int wstart = t.col * stride_w - pad_w;
    // The divisor counts pad cells but not cells past the padded edge.
    int hend = min(hstart + kernel_h, height + pad_h);
    int wend = min(wstart + kernel_w, width + pad_w);
    const int area = max(hend - hstart, 0) * max(wend - wstart, 0);
    hstart = max(hstart, 0);
    wstart = max(wstart, 0);
    hend = min(hend, height);
    wend = min(wend, width);
    const real* slice = bottom + map * height * width;
    real sum = 0;
    for (int h = hstart; h < hend; ++h) {
      for (int w = wstart; w < wend; ++w) {
        sum += slice[(long long)h * width + w];
      }
    }
    // area is 0 only for a window without a real cell, whose sum is 0.
    top[index] = sum / (real)max(area, 1);
  }
}

// The windows containing row h (0-based, in the map) are those with
// ph * stride - pad <= h < ph * stride - pad + kernel.
DEVICE int first_window(const int h, const int kernel, const int stride, const int pad) {
  const int shifted = h + pad;
  return shifted < kernel ? 0 : (shifted - kernel) / stride + 1;
}

DEVICE int last_window_end(const int h, const int stride, const int pad, const int pooled) {
  return min((h + pad) / stride + 1, pooled);
}

// The windows [ph0, ph1) x [pw0, pw1) that contain bottom cell b: the range
// both backward kernels gather from.
struct Windows {
  int ph0, ph1, pw0, pw1;
};

DEVICE Windows windows_containing(const PlanePos& b, const int pooled_h, const int pooled_w,
                                  const int kernel_h, const int kernel_w, const int stride_h,
                                  const int stride_w, const int pad_h, const int pad_w) {
  Windows win;
  win.ph0 = first_window(b.row, kernel_h, stride_h, pad_h);
  win.ph1 = last_window_end(b.row, stride_h, pad_h, pooled_h);
  win.pw0 = first_window(b.col, kernel_w, stride_w, pad_w);
  win.pw1 = last_window_end(b.col, stride_w, pad_w, pooled_w);
  return win;
}

KERNEL void FN(max_pool_backward)(
    const long long n, const real* top_diff, const long long* argmax,
    const int height, const int width, const int pooled_h, const int pooled_w,
    const int kernel_h, const int kernel_w, const int stride_h, const int stride_w,
    const int pad_h, const int pad_w, real* bottom_diff) {
  CUDA_KERNEL_LOOP(index, n) {
    const PlanePos b = plane_pos(index, height, width);
    const long long map = b.plane;
    const long long cell = (long long)b.row * width + b.col;
    const Windows win = windows_containing(b, pooled_h, pooled_w, kernel_h, kernel_w, stride_h,
                                           stride_w, pad_h, pad_w);
    const long long offset = map * pooled_h * pooled_w;
    real gradient = 0;
    for (int ph = win.ph0; ph < win.ph1; ++ph) {
      for (int pw = win.pw0; pw < win.pw1; ++pw) {
        const long long t = offset + (long long)ph * pooled_w + pw;
        if (argmax[t] == cell) {
          gradient += top_diff[t];
        }
      }
    }
    bottom_diff[index] = gradient;
  }
}

KERNEL void FN(ave_pool_backward)(
    const long long n, const real* top_diff,
    const int height, const int width, const int pooled_h, const int pooled_w,
    const int kernel_h, const int kernel_w, const int stride_h, const int stride_w,
    const int pad_h, const int pad_w, real* bottom_diff) {
  CUDA_KERNEL_LOOP(index, n) {
    const PlanePos b = plane_pos(index, height, width);
    const long long map = b.plane;
    const Windows win = windows_containing(b, pooled_h, pooled_w, kernel_h, kernel_w, stride_h,
                                           stride_w, pad_h, pad_w);
    const real* diff = top_diff + map * pooled_h * pooled_w;
    real gradient = 0;
    for (int ph = win.ph0; ph < win.ph1; ++ph) {
      const int hstart = ph * stride_h - pad_h;
      const int hsize = min(hstart + kernel_h, height + pad_h) - hstart;
      for (int pw = win.pw0; pw < win.pw1; ++pw) {
        const int wstart = pw * stride_w - pad_w;
        const int wsize = min(wstart + kernel_w, width + pad_w) - wstart;
        // A window containing a real cell has a positive area.
        gradient += diff[ph * pooled_w + pw] / (real)(hsize * wsize);
      }
    }
    bottom_diff[index] = gradient;
  }
}
