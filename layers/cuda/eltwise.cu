// Element-wise MAX over several bottoms (Caffe's Eltwise MAX), one launch per
// bottom in order. SUM and PROD are plain xp expressions in layers/eltwise.py.
#include "common.cuh"

// Fold bottom `k` into the running maximum y and its argmax. Bottom 0
// initializes both; a later bottom wins only when strictly greater, so ties
// go to the first bottom that holds the maximum.
KERNEL void FN(eltwise_max_forward)(const long long n, const real* x,
                                    const int k, real* y, int* argmax) {
  CUDA_KERNEL_LOOP(i, n) {
    if (k == 0 || x[i] > y[i]) {
      y[i] = x[i];
      argmax[i] = k;
    }
  }
}

// dx_k = dy where bottom k won, 0 elsewhere.
KERNEL void FN(eltwise_max_backward)(const long long n, const real* dy,
                                     const int* argmax, const int k, real* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    dx[i] = argmax[i] == k ? dy[i] : (real)0;
  }
}
