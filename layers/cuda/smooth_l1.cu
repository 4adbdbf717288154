// Smooth L1 loss (Fast R-CNN, with py-faster-rcnn's sigma): element-wise
// loss and its derivative with respect to the prediction.
//
//   d = w_in * (x - t)
//   f(d) = 0.5 * s^2 * d^2      if |d| < 1 / s^2
//          |d| - 0.5 / s^2      otherwise
//   errors = w_out * f(d),  slope = d errors / d x = f'(d) * w_in * w_out
//
// Absent weights are read as 1 (has_inside / has_outside = 0; the pointer
// is then never dereferenced). The caller sums `errors` and scales `slope`
// by loss_weight / normalizer.
#include "common.cuh"

KERNEL void FN(smooth_l1_forward)(const long long n, const real* x, const real* t,
                                  const int has_inside, const real* w_in,
                                  const int has_outside, const real* w_out,
                                  const real sigma2, real* errors, real* slope) {
  CUDA_KERNEL_LOOP(i, n) {
    const real win = has_inside ? w_in[i] : (real)1;
    const real wout = has_outside ? w_out[i] : (real)1;
    const real d = (x[i] - t[i]) * win;
    const real ad = fabs(d);
    real f, g;
    if (ad < (real)1 / sigma2) {
      f = (real)0.5 * sigma2 * d * d;
      g = sigma2 * d;
    } else {
      f = ad - (real)0.5 / sigma2;
      g = d > 0 ? (real)1 : (real)-1;
    }
    errors[i] = f * wout;
    slope[i] = g * win * wout;
  }
}
