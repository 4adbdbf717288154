// YOLOv2's Region loss (darknet's region layer): the per-prediction loss
// and its gradient, given the targets the host assigned
// (layers/region_targets.py).
//
// Layout: predictions x (N, A * (5 + C), H, W); a slot s is one (image,
// anchor, cell) = ((b * A + n) * H + j) * W + i, its channels at
// base + k * inner with base = (s / inner) * (5 + C) * inner + s % inner,
// inner = H * W: 0 tx, 1 ty, 2 tw, 3 th, 4 objectness, 5.. classes.
// targets (9, slots), rows as in region_targets.py: 0 responsible,
// 1..4 tx ty tw th, 5 coordinate weight, 6 objectness target, 7 class
// (0-based), 8 no-object flag.
//
// One thread per slot writes the slot's loss and the gradient of that
// loss for all its 5 + C channels (no two threads write the same element):
//   responsible: 0.5 w ((tx - sig x)^2 + (ty - sig y)^2 + (tw - w)^2 + (th - h)^2)
//              + 0.5 object_scale (target - sig o)^2
//              + class_scale * (softmax: -log p_class; else the sum of the
//                classes' binary cross-entropies)
//   otherwise:   0.5 prior_scale ((0.5 - sig x)^2 + (0.5 - sig y)^2 + w^2 + h^2)
//              + [no-object] 0.5 noobject_scale (sig o)^2
// The targets are constants of the pass (darknet's deltas do not
// differentiate them). prior_scale is 0 once the early term is over.
#include "common.cuh"

DEVICE real region_log_sigmoid(const real v) {
  return min(v, (real)0) - log1p(exp(-fabs(v)));
}

DEVICE real region_sigmoid(const real v) { return exp(region_log_sigmoid(v)); }

// Cross-entropy of the softmax (softmax != 0) or the per-class sigmoids
// for class c, writing its gradient (times scale) into grad.
DEVICE real region_class_loss(const real* x, real* grad, const long long base,
                              const long long inner, const int classes, const int c,
                              const int softmax, const real scale) {
  const long long first = base + 5 * inner;
  real loss = 0;
  if (softmax) {
    real top = x[first];
    for (int k = 1; k < classes; ++k) top = max(top, x[first + k * inner]);
    real sum = 0;
    for (int k = 0; k < classes; ++k) sum += exp(x[first + k * inner] - top);
    const real log_sum = log(sum);
    for (int k = 0; k < classes; ++k) {
      const real log_p = x[first + k * inner] - top - log_sum;
      if (k == c) loss = -scale * log_p;
      grad[first + k * inner] = scale * (exp(log_p) - (k == c ? (real)1 : (real)0));
    }
  } else {
    for (int k = 0; k < classes; ++k) {
      const real v = x[first + k * inner];
      loss -= scale * (k == c ? region_log_sigmoid(v) : region_log_sigmoid(-v));
      grad[first + k * inner] = scale * (region_sigmoid(v) - (k == c ? (real)1 : (real)0));
    }
  }
  return loss;
}

KERNEL void FN(region_loss_forward)(const long long slots, const int classes,
                                    const long long inner, const real* x, const real* targets,
                                    const real object_scale, const real noobject_scale,
                                    const real class_scale, const real prior_scale,
                                    const int softmax, real* loss, real* grad) {
  CUDA_KERNEL_LOOP(s, slots) {
    const long long base = (s / inner) * (5 + classes) * inner + s % inner;
    const real sx = region_sigmoid(x[base]);
    const real sy = region_sigmoid(x[base + inner]);
    const real tw = x[base + 2 * inner];
    const real th = x[base + 3 * inner];
    const real so = region_sigmoid(x[base + 4 * inner]);
    real l = 0, g0 = 0, g1 = 0, g2 = 0, g3 = 0, g4 = 0;
    if (targets[s] != 0) {
      const real w = targets[5 * slots + s];
      const real dx = targets[slots + s] - sx, dy = targets[2 * slots + s] - sy;
      const real dw = targets[3 * slots + s] - tw, dh = targets[4 * slots + s] - th;
      const real d_obj = targets[6 * slots + s] - so;
      l = (real)0.5 * w * (dx * dx + dy * dy + dw * dw + dh * dh)
          + (real)0.5 * object_scale * d_obj * d_obj;
      g0 = -w * dx * sx * ((real)1 - sx);
      g1 = -w * dy * sy * ((real)1 - sy);
      g2 = -w * dw;
      g3 = -w * dh;
      g4 = -object_scale * d_obj * so * ((real)1 - so);
      l += region_class_loss(x, grad, base, inner, classes, (int)targets[7 * slots + s],
                             softmax, class_scale);
    } else {
      const real dx = (real)0.5 - sx, dy = (real)0.5 - sy;
      l = (real)0.5 * prior_scale * (dx * dx + dy * dy + tw * tw + th * th);
      g0 = -prior_scale * dx * sx * ((real)1 - sx);
      g1 = -prior_scale * dy * sy * ((real)1 - sy);
      g2 = prior_scale * tw;
      g3 = prior_scale * th;
      if (targets[8 * slots + s] != 0) {
        l += (real)0.5 * noobject_scale * so * so;
        g4 = noobject_scale * so * so * ((real)1 - so);
      }
      for (int k = 0; k < classes; ++k) grad[base + (5 + k) * inner] = 0;
    }
    loss[s] = l;
    grad[base] = g0;
    grad[base + inner] = g1;
    grad[base + 2 * inner] = g2;
    grad[base + 3 * inner] = g3;
    grad[base + 4 * inner] = g4;
  }
}
