// Focal losses (RetinaNet): SigmoidFocalLoss and SoftmaxFocalLoss.
//
// Both forward kernels write, besides the per-element (sigmoid) or
// per-position (softmax) loss, the unscaled gradient of the summed loss; the
// caller sums, normalizes, and backward scales the gradient by
// loss_weight / normalizer (the same array math on both devices).
//
// Layout: scores viewed as (outer, channels, inner), labels one per
// (outer, inner) position, read as `real` and truncated to int as Caffe does.
// Labels were range-checked by the caller (or the bad ones replaced by 0
// until the deferred error is raised: layers/deferred_checks.py).
#include "common.cuh"

// log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|)): no overflow for any x.
DEVICE real focal_log_sigmoid(const real x) {
  return min(x, (real)0) - log1p(exp(-fabs(x)));
}

// One thread per element (o, k, s): channel k is class k + 1; label 0 is
// background, so every channel of a background position has target 0.
//   target 1: loss = -alpha (1-p)^gamma log p,
//             grad = alpha (1-p)^gamma (gamma p log p - (1-p))
//   target 0: loss = -(1-alpha) p^gamma log(1-p),
//             grad = (1-alpha) p^gamma (p - gamma (1-p) log(1-p))
// with p = sigmoid(x), log p and log(1-p) = log sigmoid(-x) computed stably.
// An ignored position gives 0 loss and 0 gradient on all its channels.
KERNEL void FN(sigmoid_focal_loss_forward)(const long long count, const int channels,
                                           const long long inner, const real* x,
                                           const real* label, const real alpha,
                                           const real gamma, const int has_ignore,
                                           const int ignore_label, real* loss, real* grad) {
  CUDA_KERNEL_LOOP(i, count) {
    const long long s = i % inner;
    const int k = (int)((i / inner) % channels);
    const long long o = i / (inner * channels);
    const int l = (int)label[o * inner + s];
    if (has_ignore && l == ignore_label) {
      loss[i] = 0;
      grad[i] = 0;
    } else {
      const real v = x[i];
      const real log_p = focal_log_sigmoid(v);
      const real log_q = focal_log_sigmoid(-v);
      const real p = exp(log_p);
      const real q = exp(log_q);
      if (l == k + 1) {
        const real w = alpha * pow(q, gamma);
        loss[i] = -w * log_p;
        grad[i] = w * (gamma * p * log_p - q);
      } else {
        const real w = ((real)1 - alpha) * pow(p, gamma);
        loss[i] = -w * log_q;
        grad[i] = w * (p - gamma * q * log_q);
      }
    }
  }
}

// One thread per position: log-softmax over the channels (max subtracted),
// p_t of the label t, weight w = alpha for t > 0 and 1 - alpha for t == 0;
//   loss = -w (1-p_t)^gamma log p_t,
//   grad_c = D (p_c - [c == t]),
//   D = w ((1-p_t)^gamma - gamma (1-p_t)^(gamma-1) p_t log p_t),
// the second term of D taken as 0 when gamma is 0 or p_t is 1 (its limit
// for gamma >= 1). prob receives the probabilities; valid is 1 or 0.
KERNEL void FN(softmax_focal_loss_forward)(const long long positions, const int channels,
                                           const long long inner, const real* x,
                                           const real* label, const real alpha,
                                           const real gamma, const int has_ignore,
                                           const int ignore_label, real* prob, real* loss,
                                           real* valid, real* grad) {
  CUDA_KERNEL_LOOP(p, positions) {
    const long long base = (p / inner) * channels * inner + p % inner;
    real top = x[base];
    for (int c = 1; c < channels; ++c) top = max(top, x[base + c * inner]);
    real sum = 0;
    for (int c = 0; c < channels; ++c) sum += exp(x[base + c * inner] - top);
    const real log_sum = log(sum);
    for (int c = 0; c < channels; ++c) {
      prob[base + c * inner] = exp(x[base + c * inner] - top - log_sum);
    }
    const int l = (int)label[p];
    if (has_ignore && l == ignore_label) {
      loss[p] = 0;
      valid[p] = 0;
      for (int c = 0; c < channels; ++c) grad[base + c * inner] = 0;
    } else {
      const real log_pt = x[base + l * inner] - top - log_sum;
      const real pt = exp(log_pt);
      const real q = (real)1 - pt;
      const real w = l > 0 ? alpha : (real)1 - alpha;
      const real focus = pow(q, gamma);
      loss[p] = -w * focus * log_pt;
      valid[p] = 1;
      const real second = (gamma == 0 || q <= 0) ? (real)0
                                                 : gamma * pow(q, gamma - 1) * pt * log_pt;
      const real d = w * (focus - second);
      for (int c = 0; c < channels; ++c) {
        const long long j = base + c * inner;
        grad[j] = d * (prob[j] - (c == l ? (real)1 : (real)0));
      }
    }
  }
}
