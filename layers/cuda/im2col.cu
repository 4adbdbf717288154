// Column transforms of one image for convolution as a GEMM (Caffe's layout).
//
// The column matrix of an image (C, H, W) has C * kh * kw rows, row index
// (c * kh + i) * kw + j, and Ho * Wo columns, column index y * Wo + x; entry
// (row, column) is the input pixel (c, y * sh - ph + i * dh, x * sw - pw + j * dw)
// or 0 where that lies in the padding. A weight blob (O, C, kh, kw) is then
// the (O, C * kh * kw) matrix that multiplies it.
#include "common.cuh"

// One thread per column-matrix element: n = C * kh * kw * Ho * Wo.
KERNEL void FN(im2col)(const long long n, const real* im, const int height,
                       const int width, const int kernel_h, const int kernel_w,
                       const int pad_h, const int pad_w, const int stride_h,
                       const int stride_w, const int dilation_h,
                       const int dilation_w, const int height_col,
                       const int width_col, real* col) {
  CUDA_KERNEL_LOOP(index, n) {
    const long long x = index % width_col;
    long long rest = index / width_col;
    const long long y = rest % height_col;
    rest /= height_col;
    const int j = (int)(rest % kernel_w);
    rest /= kernel_w;
    const int i = (int)(rest % kernel_h);
    const long long c = rest / kernel_h;
    const long long h = y * stride_h - pad_h + (long long)i * dilation_h;
    const long long w = x * stride_w - pad_w + (long long)j * dilation_w;
    col[index] = (h >= 0 && h < height && w >= 0 && w < width)
                     ? im[(c * height + h) * width + w]
                     : (real)0;
  }
}

// The adjoint of im2col: im[c, h, w] = sum of the column entries that read
// pixel (c, h, w). One thread per image element gathers them (at most
// kh * kw), so no two threads write the same place and no atomics are
// needed; the image is overwritten, not accumulated into.
KERNEL void FN(col2im)(const long long n, const real* col, const int height,
                       const int width, const int kernel_h, const int kernel_w,
                       const int pad_h, const int pad_w, const int stride_h,
                       const int stride_w, const int dilation_h,
                       const int dilation_w, const int height_col,
                       const int width_col, real* im) {
  CUDA_KERNEL_LOOP(index, n) {
    const long long w = index % width + pad_w;  // coordinates in the padded image
    const long long h = (index / width) % height + pad_h;
    const long long c = index / ((long long)width * height);
    real sum = 0;
    for (int i = 0; i < kernel_h; ++i) {
      const long long hs = h - (long long)i * dilation_h;  // = y * stride_h
      if (hs < 0 || hs % stride_h != 0) continue;
      const long long y = hs / stride_h;
      if (y >= height_col) continue;
      for (int j = 0; j < kernel_w; ++j) {
        const long long ws = w - (long long)j * dilation_w;  // = x * stride_w
        if (ws < 0 || ws % stride_w != 0) continue;
        const long long x = ws / stride_w;
        if (x >= width_col) continue;
        const long long row = (c * kernel_h + i) * kernel_w + j;
        sum += col[(row * height_col + y) * width_col + x];
      }
    }
    im[index] = sum;
  }
}
