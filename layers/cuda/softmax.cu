// Softmax over one axis, and the softmax cross-entropy loss (SoftmaxWithLoss
// and its OHEM variant).
//
// Layout: the input is viewed as (outer, channels, inner), the softmax axis
// in the middle; one thread handles one (outer, inner) position and walks
// its `channels` values with stride `inner`.
#include "common.cuh"

// FLT_MIN, the floor Caffe puts under a probability before its log, for
// float and double alike.
#define SOFTMAX_PROB_FLOOR ((real)1.17549435e-38)

// y = exp(x - max) / sum(exp(x - max)) per position; y may alias x (in-place
// softmax): each value is read before the thread overwrites it.
KERNEL void FN(softmax_forward)(const long long positions, const int channels,
                                const long long inner, const real* x, real* y) {
  CUDA_KERNEL_LOOP(p, positions) {
    const long long base = (p / inner) * channels * inner + p % inner;
    real top = x[base];
    for (int c = 1; c < channels; ++c) top = max(top, x[base + c * inner]);
    real sum = 0;
    for (int c = 0; c < channels; ++c) {
      const real e = exp(x[base + c * inner] - top);
      y[base + c * inner] = e;
      sum += e;
    }
    for (int c = 0; c < channels; ++c) y[base + c * inner] /= sum;
  }
}

// dx = y * (dy - sum_c(dy * y)); dx may alias dy (in place): the dot product
// is complete before the first write.
KERNEL void FN(softmax_backward)(const long long positions, const int channels,
                                 const long long inner, const real* y,
                                 const real* dy, real* dx) {
  CUDA_KERNEL_LOOP(p, positions) {
    const long long base = (p / inner) * channels * inner + p % inner;
    real dot = 0;
    for (int c = 0; c < channels; ++c) dot += dy[base + c * inner] * y[base + c * inner];
    for (int c = 0; c < channels; ++c) {
      const long long i = base + c * inner;
      dx[i] = y[i] * (dy[i] - dot);
    }
  }
}

// Per position: loss = -log(max(prob[label], FLT_MIN)) and valid = 1, or
// 0 and 0 where the label is the ignore label. Labels are truncated to int
// as Caffe does; the others lie in [0, channels): the caller checked them,
// or replaced the bad ones by 0 until the check's deferred error is raised
// (layers/deferred_checks.py).
KERNEL void FN(softmax_loss_forward)(const long long positions, const int channels,
                                     const long long inner, const real* prob,
                                     const real* label, real* loss, real* valid,
                                     const int has_ignore, const int ignore_label) {
  CUDA_KERNEL_LOOP(p, positions) {
    const int l = (int)label[p];
    if (has_ignore && l == ignore_label) {
      loss[p] = 0;
      valid[p] = 0;
    } else {
      const long long base = (p / inner) * channels * inner + p % inner;
      loss[p] = -log(max(prob[base + l * inner], SOFTMAX_PROB_FLOOR));
      valid[p] = 1;
    }
  }
}

// Unscaled gradient of the summed loss: dx = prob - onehot(label), and 0 over
// every channel of an ignored position. The caller multiplies by
// loss_weight / normalizer.
KERNEL void FN(softmax_loss_backward)(const long long positions, const int channels,
                                      const long long inner, const real* prob,
                                      const real* label, real* dx,
                                      const int has_ignore, const int ignore_label) {
  CUDA_KERNEL_LOOP(p, positions) {
    const int l = (int)label[p];
    const long long base = (p / inner) * channels * inner + p % inner;
    const bool ignored = has_ignore && l == ignore_label;
    for (int c = 0; c < channels; ++c) {
      const long long i = base + c * inner;
      dx[i] = ignored ? (real)0 : prob[i] - (c == l ? (real)1 : (real)0);
    }
  }
}
