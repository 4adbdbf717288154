// Per-element work of Caffe's sigmoid cross-entropy, hinge and contrastive
// losses (layers/losses.py). Each kernel writes, per element or per pair,
// the loss term and the slope the backward pass scales; the caller does the
// sums and the division by the normalizer.
#include "common.cuh"

// Sigmoid cross-entropy of logits x against targets t in [0, 1], in the
// form that never overflows:
//   loss = log(1 + exp(-|x|)) - x * (t - (x >= 0))
//   slope = sigmoid(x) - t
// An element whose target truncates to ignore_label (when has_ignore) has
// loss 0, slope 0 and valid 0; every other element has valid 1.
KERNEL void FN(sigmoid_cross_entropy_forward)(const long long n, const real* x,
                                              const real* t, const int has_ignore,
                                              const int ignore_label, real* loss,
                                              real* slope, real* valid) {
  CUDA_KERNEL_LOOP(i, n) {
    if (has_ignore && (int)t[i] == ignore_label) {
      loss[i] = 0;
      slope[i] = 0;
      valid[i] = 0;
    } else {
      const real v = x[i];
      const real positive = v >= 0 ? (real)1 : (real)0;
      loss[i] = log((real)1 + exp(-fabs(v))) - v * (t[i] - positive);
      slope[i] = (real)0.5 * tanh((real)0.5 * v) + (real)0.5 - t[i];
      valid[i] = 1;
    }
  }
}

// Multiclass hinge loss of scores x viewed as (num, dim), one integer label
// per row (checked by the caller to lie in [0, dim)):
//   m = max(0, 1 + s * x),  s = -1 at the label's column, +1 elsewhere
//   L1 (squared = 0): loss = m,    slope = s * (m > 0)
//   L2 (squared = 1): loss = m^2,  slope = s * 2m
KERNEL void FN(hinge_forward)(const long long n, const long long dim, const real* x,
                              const real* label, const int squared, real* loss,
                              real* slope) {
  CUDA_KERNEL_LOOP(i, n) {
    const long long row = i / dim;
    const real s = (long long)label[row] == i % dim ? (real)-1 : (real)1;
    const real m = max((real)0, (real)1 + s * x[i]);
    if (squared) {
      loss[i] = m * m;
      slope[i] = s * 2 * m;
    } else {
      loss[i] = m;
      slope[i] = m > 0 ? s : (real)0;
    }
  }
}

// Contrastive loss of one pair from its squared distance d2 and similarity y
// (nonzero after truncation: similar):
//   similar:              loss = d2,                    coeff = 1
//   dissimilar, legacy:   loss = max(margin - d2, 0),   coeff = -1 where margin - d2 > 0
//   dissimilar:           loss = max(margin - d, 0)^2,  coeff = -(margin - d) / (d + 1e-4)
//                                                       where margin - d > 0
// and coeff 0 otherwise. The gradient with respect to a is coeff * (a - b)
// times loss_weight / num (Caffe's 1e-4 guard against d = 0 included).
KERNEL void FN(contrastive_forward)(const long long num, const real* dist_sq,
                                    const real* y, const real margin, const int legacy,
                                    real* loss, real* coeff) {
  CUDA_KERNEL_LOOP(i, num) {
    const real d2 = dist_sq[i];
    if ((int)y[i] != 0) {
      loss[i] = d2;
      coeff[i] = 1;
    } else if (legacy) {
      const real mdist = margin - d2;
      loss[i] = max(mdist, (real)0);
      coeff[i] = mdist > 0 ? (real)-1 : (real)0;
    } else {
      const real d = sqrt(d2);
      const real mdist = margin - d;
      const real hinge = max(mdist, (real)0);
      loss[i] = hinge * hinge;
      coeff[i] = mdist > 0 ? -mdist / (d + (real)1e-4) : (real)0;
    }
  }
}
