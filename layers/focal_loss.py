"""Focal losses (Lin et al., "Focal Loss for Dense Object Detection", the
RetinaNet loss): SigmoidFocalLoss and SoftmaxFocalLoss.

``FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t)``, with ``alpha_t = alpha`` for
a foreground target and ``1 - alpha`` for a background one, read from
``focal_loss_param { alpha gamma }`` (defaults 0.25 and 2, RetinaNet's).
gamma 0 makes it alpha_t-weighted cross-entropy.

Label convention (Detectron's): one integer label per anchor position,
0 background, ``c`` in ``1..K`` object class ``c``, and optionally
``loss_param.ignore_label`` (e.g. -1) for anchors that count for nothing.

The per-element work runs in ``layers/cuda/focal_loss.cu`` on the GPU and as
the same formulas in NumPy on the CPU; both write the loss terms and the
unscaled gradient in forward, and backward scales the gradient by
``loss_weight / normalizer``. log-sigmoid and log-softmax are computed
stably (no overflow, no log of 0).
"""
import numpy as np

from layers.base import Layer, register
from layers.kernels import launch
from layers.losses import refuse_gradient, scaled_slope
from layers.softmax import (check_label_count, checked_labels, contiguous, ignored_mask,
                            loss_normalizer, read_ignore_label, read_normalization,
                            split_at_axis, work_buffer)
from netdef.device import array_module


def read_focal_param(layer):
    """(alpha, gamma) of ``focal_loss_param``; a NetDefinitionError naming
    the layer when alpha is outside [0, 1] or gamma is negative."""
    param = layer.param.focal_loss_param
    alpha, gamma = float(param.alpha), float(param.gamma)
    if not 0.0 <= alpha <= 1.0:
        raise layer.definition_error(f"focal_loss_param.alpha must lie in [0, 1], found {alpha:g}")
    if not gamma >= 0.0:
        raise layer.definition_error(f"focal_loss_param.gamma must be >= 0, found {gamma:g}")
    return alpha, gamma


def log_sigmoid(x):
    """log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|)), finite for every x."""
    return np.minimum(x, 0) - np.log1p(np.exp(-np.abs(x)))


def sigmoid_focal_numpy(x, target, alpha, gamma):
    """Per element of logits ``x`` and 0/1 ``target`` (same shape): (loss,
    gradient of the loss with respect to x). Formulas as in
    ``sigmoid_focal_loss_forward`` of focal_loss.cu."""
    real = x.dtype.type
    log_p, log_q = log_sigmoid(x), log_sigmoid(-x)
    p, q = np.exp(log_p), np.exp(log_q)
    w_pos = real(alpha) * q ** real(gamma)
    w_neg = real(1 - alpha) * p ** real(gamma)
    loss = np.where(target, -w_pos * log_p, -w_neg * log_q)
    grad = np.where(target, w_pos * (real(gamma) * p * log_p - q),
                    w_neg * (p - real(gamma) * q * log_q))
    return loss, grad


def softmax_focal_numpy(x, labels, alpha, gamma):
    """Scores ``x`` (outer, C, inner) and labels (outer, 1, inner) in [0, C):
    (probabilities, per-position loss (outer, 1, inner), gradient like x).
    Formulas as in ``softmax_focal_loss_forward`` of focal_loss.cu."""
    real = x.dtype.type
    shifted = x - x.max(axis=1, keepdims=True)
    log_prob = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    prob = np.exp(log_prob)
    log_pt = np.take_along_axis(log_prob, labels, axis=1)
    pt = np.exp(log_pt)
    q = real(1) - pt
    w = np.where(labels > 0, real(alpha), real(1 - alpha))
    focus = q ** real(gamma)
    loss = -w * focus * log_pt
    if gamma == 0:
        second = np.zeros_like(q)
    else:
        # (1 - p_t)^(gamma - 1) is infinite at p_t = 1 for gamma < 1: the
        # term is taken as 0 there, as in the kernel.
        safe_q = np.where(q > 0, q, real(1))
        second = np.where(q > 0, real(gamma) * safe_q ** real(gamma - 1) * pt * log_pt, real(0))
    grad = prob.copy()
    np.put_along_axis(grad, labels, np.take_along_axis(grad, labels, axis=1) - 1, axis=1)
    return prob, loss, grad * (w * (focus - second))


class _FocalLossBase(Layer):
    """What both focal losses share: params, label reading, propagate checks."""

    exact_bottoms = 2
    is_loss = True

    def layer_setup(self, bottoms, tops):
        self.alpha, self.gamma = read_focal_param(self)
        self.ignore_label = read_ignore_label(self.param.loss_param)
        # Work arrays, sized in reshape; the normalizer, set by forward for
        # backward (a 0-d array on the GPU, so no synchronization).
        self.element_loss = self.grad = self.normalizer = None

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def _labels(self, bottoms, num_classes):
        return checked_labels(self, bottoms, num_classes)

    def _ignored(self, labels):
        return ignored_mask(labels, self.ignore_label)

    def _kernel_flags(self):
        has_ignore = self.ignore_label is not None
        return np.int32(has_ignore), np.int32(self.ignore_label if has_ignore else 0)

    def backward_cpu(self, tops, propagate_down, bottoms):
        refuse_gradient(self, propagate_down, 1, "labels")
        if len(bottoms) > 2:
            refuse_gradient(self, propagate_down, 2, "positive count")
        if propagate_down[0]:
            bottoms[0].diff[...] = scaled_slope(self.grad, tops[0], self.normalizer,
                                                bottoms[0].shape)

    backward_gpu = backward_cpu


@register("SigmoidFocalLoss")
class SigmoidFocalLossLayer(_FocalLossBase):
    """RetinaNet's classification loss: an independent sigmoid per class,
    ``sum FL / max(number of positive anchors, 1)``.

    bottoms: logits ``(N, A*K, ...)`` (A anchors per position, K object
    classes, anchor-major as Detectron lays them out: channel ``a*K + k``
    is class ``k + 1`` of anchor ``a``); labels ``(N, A, ...)`` with the
    logits' axes after the second, integers (truncated) in ``[0, K]`` or
    ``loss_param.ignore_label``. ``(N, K)`` logits take ``(N, 1)`` labels.
    Optional third bottom: the positive count to normalize by, one value
    (Detectron's ``fg_num``: with one loss per pyramid level, each divides
    by the positives of all levels together, not its own).
    top: the loss ``()``.

    A position with label ``c > 0`` has target 1 on channel ``c - 1`` and 0 on
    the other K - 1 channels; label 0 (background) has target 0 on all K; an
    ignored position contributes nothing. The normalizer is the count of
    labels in ``1..K`` (at least 1), as RetinaNet's, or the third bottom's
    value (at least 1); ``loss_param``'s normalization mode is not read.

    Backward: the closed-form gradient times ``loss_weight / normalizer``;
    labels take no gradient (asking for one is an error).
    """

    exact_bottoms = None
    min_bottoms = 2
    max_bottoms = 3
    exact_tops = 1

    def reshape(self, bottoms, tops):
        if len(bottoms) > 2 and bottoms[2].count != 1:
            raise self.shape_error(2, "one value, the number of positive anchors", bottoms[2].shape)
        scores, labels = tuple(bottoms[0].shape), tuple(bottoms[1].shape)
        expected = "(N, A, ...) labels for (N, A*K, ...) logits, A dividing the logits' channels"
        if (len(scores) < 2 or len(labels) != len(scores) or labels[0] != scores[0]
                or labels[2:] != scores[2:] or labels[1] < 1 or scores[1] % labels[1]):
            raise self.shape_error(1, f"{expected}; logits '{self.bottom_name(0)}' are {scores}",
                                   labels)
        self.anchors = labels[1]
        self.classes = scores[1] // labels[1]
        self.outer = scores[0] * self.anchors
        self.inner = int(np.prod(scores[2:], dtype=np.int64))
        xp, dtype = array_module(bottoms[0].data), bottoms[0].data.dtype
        self.element_loss = work_buffer(self.element_loss, xp, (bottoms[0].count,), dtype)
        self.grad = work_buffer(self.grad, xp, (bottoms[0].count,), dtype)
        tops[0].reshape(())

    def _finish_forward(self, bottoms, labels, tops):
        xp = array_module(labels)
        if len(bottoms) > 2:
            positives = bottoms[2].data.reshape(())
        else:
            positives = ((labels > 0) & ~self._ignored(labels)).sum()
        self.normalizer = xp.maximum(positives, 1).astype(self.grad.dtype)
        tops[0].data[...] = self.element_loss.sum() / self.normalizer

    def forward_cpu(self, bottoms, tops):
        _, labels = self._labels(bottoms, self.classes + 1)
        view = (self.outer, self.classes, self.inner)
        x = contiguous(bottoms[0].data).reshape(view)
        lab = labels.reshape(self.outer, 1, self.inner)
        channel = np.arange(1, self.classes + 1).reshape(1, -1, 1)
        loss, grad = sigmoid_focal_numpy(x, lab == channel, self.alpha, self.gamma)
        ignored = self._ignored(lab)
        self.element_loss[...] = np.where(ignored, 0, loss).reshape(-1)
        self.grad[...] = np.where(ignored, 0, grad).reshape(-1)
        self._finish_forward(bottoms, labels, tops)

    def forward_gpu(self, bottoms, tops):
        raw, labels = self._labels(bottoms, self.classes + 1)
        x = contiguous(bottoms[0].data)
        launch("focal_loss.cu", "sigmoid_focal_loss_forward", x.dtype, x.size,
               (np.int64(x.size), np.int32(self.classes), np.int64(self.inner), x,
                raw.astype(x.dtype, copy=False), x.dtype.type(self.alpha),
                x.dtype.type(self.gamma)) + self._kernel_flags() + (self.element_loss, self.grad))
        self._finish_forward(bottoms, labels, tops)


@register("SoftmaxFocalLoss")
class SoftmaxFocalLossLayer(_FocalLossBase):
    """Focal loss on a softmax over the classes: per position,
    ``-alpha_t (1 - p_t)^gamma log p_t`` for the label's probability p_t,
    ``alpha_t = alpha`` for labels > 0 and ``1 - alpha`` for label 0.

    bottoms: scores with the C classes (background 0 included) on
    ``softmax_param.axis`` (default 1), e.g. ``(N, C)`` or ``(N, C, H, W)``;
    labels with one value per position of the other axes (SoftmaxWithLoss's
    rule), integers (truncated) in ``[0, C)`` or ``loss_param.ignore_label``.
    tops: the loss ``()``; optionally the probabilities (shape of the scores,
    no gradient).

    Normalized as SoftmaxWithLoss (``loss_param.normalization``: VALID by
    default, the non-ignored count; FULL, BATCH_SIZE, PRE_FIXED, NONE; the
    legacy ``normalize``); at least 1. gamma 0 with alpha 0.5 is half of
    SoftmaxWithLoss. Backward: ``D (p - onehot(t))`` with
    ``D = alpha_t ((1-p_t)^gamma - gamma (1-p_t)^(gamma-1) p_t log p_t)``,
    times ``loss_weight / normalizer``.
    """

    min_tops = 1
    max_tops = 2

    def layer_setup(self, bottoms, tops):
        super().layer_setup(bottoms, tops)
        loss_param = self.param.loss_param
        self.normalization = read_normalization(loss_param)
        self.pre_fixed_normalizer = float(loss_param.pre_fixed_normalizer)
        self.axis_param = int(self.param.softmax_param.axis)
        self.prob = self.valid = None

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        self.axis, self.outer, self.channels, self.inner = split_at_axis(self, shape, self.axis_param)
        check_label_count(self, bottoms)
        positions = self.outer * self.inner
        xp, dtype = array_module(bottoms[0].data), bottoms[0].data.dtype
        self.prob = work_buffer(self.prob, xp, shape, dtype)
        self.grad = work_buffer(self.grad, xp, shape, dtype)
        self.element_loss = work_buffer(self.element_loss, xp, (positions,), dtype)
        self.valid = work_buffer(self.valid, xp, (positions,), dtype)
        tops[0].reshape(())
        if len(tops) >= 2:
            tops[1].reshape(shape)

    def _finish_forward(self, tops):
        self.normalizer = loss_normalizer(
            self.normalization, full=self.outer * self.inner, batch=self.outer,
            valid=self.valid.sum(), pre_fixed=self.pre_fixed_normalizer)
        tops[0].data[...] = self.element_loss.sum() / self.normalizer
        if len(tops) >= 2:
            tops[1].data[...] = self.prob

    def forward_cpu(self, bottoms, tops):
        _, labels = self._labels(bottoms, self.channels)
        ignored = self._ignored(labels).reshape(self.outer, 1, self.inner)
        safe = np.where(ignored, 0, labels.reshape(self.outer, 1, self.inner))
        x = contiguous(bottoms[0].data).reshape(self.outer, self.channels, self.inner)
        prob, loss, grad = softmax_focal_numpy(x, safe, self.alpha, self.gamma)
        self.prob[...] = prob.reshape(self.prob.shape)
        self.element_loss[...] = np.where(ignored, 0, loss).reshape(-1)
        self.grad[...] = np.where(ignored, 0, grad).reshape(self.grad.shape)
        self.valid[...] = ~ignored.reshape(-1)
        self._finish_forward(tops)

    def forward_gpu(self, bottoms, tops):
        raw, _ = self._labels(bottoms, self.channels)
        x = contiguous(bottoms[0].data)
        positions = self.outer * self.inner
        launch("focal_loss.cu", "softmax_focal_loss_forward", x.dtype, positions,
               (np.int64(positions), np.int32(self.channels), np.int64(self.inner), x,
                raw.astype(x.dtype, copy=False), x.dtype.type(self.alpha),
                x.dtype.type(self.gamma)) + self._kernel_flags()
               + (self.prob, self.element_loss, self.valid, self.grad))
        self._finish_forward(tops)
