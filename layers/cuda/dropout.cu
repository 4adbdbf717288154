// Dropout (layers/dropout.py). The uniforms u in [0, 1) are drawn by the
// caller (cuRAND through CuPy); a unit is kept when u >= ratio, which has
// probability 1 - ratio. x and y may be the same array (in-place dropout).
#include "common.cuh"

KERNEL void FN(dropout_forward)(const long long n, const real* x, const real* u,
                                const real ratio, const real keep_scale,
                                real* mask, real* y) {
  CUDA_KERNEL_LOOP(i, n) {
    const real m = u[i] >= ratio ? keep_scale : (real)0;
    mask[i] = m;
    y[i] = x[i] * m;
  }
}

// dx and dy may be the same array (in place).
KERNEL void FN(dropout_backward)(const long long n, const real* dy, const real* mask,
                                 real* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    dx[i] = dy[i] * mask[i];
  }
}
