"""Caffe's regression and margin losses: EuclideanLoss,
SigmoidCrossEntropyLoss, HingeLoss and ContrastiveLoss.

All are loss layers (top 0 gets loss_weight 1 unless the prototxt says
otherwise) with one top, the loss, of shape ``()``. As in Caffe's
``LossLayer``, the first two bottoms share their first axis ``N``, and
integer inputs (labels, similarities) take no gradient.

The per-element work of the last three runs in ``layers/cuda/losses.cu`` on
the GPU: it writes each element's loss term and the slope backward scales.
Sums, differences and the scaling are the same array math on both devices.
The shared pieces of every loss (normalization modes, label checks, the
legacy 4-axis view of a shape) come from ``layers.softmax``.
"""
import numpy as np

from layers.base import Layer, register
from layers.kernels import launch
from layers.softmax import (check_labels, contiguous, legacy_shape, loss_normalizer,
                            read_ignore_label, read_normalization, work_buffer)
from netdef.device import array_module


# -- helpers shared by these losses ---------------------------------------------------

def batch_normalizer(num):
    """What Caffe divides these losses by: the batch size N. An empty batch
    divides by 1, so its loss is 0 rather than NaN."""
    return max(float(num), 1.0)


def check_first_axis(layer, bottoms, index=1):
    """Caffe's LossLayer rule: bottom ``index`` has the first axis (the batch)
    of bottom 0."""
    shape = tuple(bottoms[0].shape)
    if not shape:
        raise layer.shape_error(0, "at least one axis (the batch)", shape)
    other = tuple(bottoms[index].shape)
    if not other or other[0] != shape[0]:
        raise layer.shape_error(
            index, f"the first axis (batch) of '{layer.bottom_name(0)}' {shape}, "
            f"i.e. {shape[0]} items", other)


def refuse_gradient(layer, propagate_down, index, role):
    """Caffe stops when asked for the gradient of a label input; so do we."""
    if propagate_down[index]:
        raise layer.definition_error(
            f"cannot back-propagate to the {role} bottom '{layer.bottom_name(index)}'; "
            "set propagate_down: false for it")


def scaled_slope(slope, top, normalizer, shape):
    """``slope * loss_weight / normalizer`` shaped as ``shape`` (any device)."""
    return (slope * (top.diff / normalizer)).reshape(shape)


# -- EuclideanLoss --------------------------------------------------------------------

@register("EuclideanLoss")
class EuclideanLossLayer(Layer):
    """``loss = sum((a - b)^2) / (2 N)``.

    bottoms: a and b, each ``(N, ...)`` with the same count per item (Caffe
    compares ``count(1)``; e.g. ``(N, 4)`` and ``(N, 4, 1, 1)`` fit).
    top: the loss ``()``.
    Backward: ``da = (a - b) * loss_weight / N`` and ``db = -da``; both
    bottoms take a gradient.
    """

    exact_bottoms = 2
    exact_tops = 1
    is_loss = True

    def layer_setup(self, bottoms, tops):
        self.diff = None  # a - b, sized in reshape, read by backward

    def reshape(self, bottoms, tops):
        check_first_axis(self, bottoms)
        shape = tuple(bottoms[0].shape)
        per_item = [int(np.prod(b.shape[1:], dtype=np.int64)) for b in bottoms]
        if per_item[0] != per_item[1]:
            raise self.shape_error(
                1, f"{per_item[0]} values per item, as '{self.bottom_name(0)}' {shape}",
                bottoms[1].shape)
        data = bottoms[0].data
        self.diff = work_buffer(self.diff, array_module(data), shape, data.dtype)
        tops[0].reshape(())

    def forward_cpu(self, bottoms, tops):
        a = bottoms[0].data
        self.diff[...] = a - bottoms[1].data.reshape(a.shape)
        flat = self.diff.reshape(-1)
        tops[0].data[...] = flat @ flat / batch_normalizer(a.shape[0]) / 2

    def backward_cpu(self, tops, propagate_down, bottoms):
        normalizer = batch_normalizer(bottoms[0].shape[0])
        for i, sign in ((0, 1), (1, -1)):
            if propagate_down[i]:
                bottoms[i].diff[...] = scaled_slope(self.diff * sign, tops[0], normalizer,
                                                    bottoms[i].shape)

    # The same array math on both devices: a difference and a dot product.
    forward_gpu = forward_cpu
    backward_gpu = backward_cpu


# -- SigmoidCrossEntropyLoss ---------------------------------------------------------------

def _sigmoid_cross_entropy_numpy(x, t, ignored):
    """Per element: (loss, slope = sigmoid(x) - t), 0 where ``ignored``."""
    real = x.dtype.type
    positive = (x >= 0).astype(x.dtype)
    loss = np.log(real(1) + np.exp(-np.abs(x))) - x * (t - positive)
    sigmoid = real(0.5) * np.tanh(real(0.5) * x) + real(0.5)
    return np.where(ignored, real(0), loss), np.where(ignored, real(0), sigmoid - t)


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossLayer(Layer):
    """Cross-entropy of ``sigmoid(x)`` against targets ``t`` in [0, 1],
    computed stably: ``sum(log(1 + exp(-|x|)) - x * (t - [x >= 0])) / normalizer``.

    bottoms: logits ``(N, ...)``; targets with the same count and first axis.
    top: the loss ``()``.

    ``loss_param``: ``ignore_label`` (optional): an element whose target
    truncates to it counts for nothing; ``normalization`` FULL (all
    elements), VALID (the non-ignored count), BATCH_SIZE (N), PRE_FIXED
    (``pre_fixed_normalizer``) or NONE (1); the normalizer is at least 1.
    When neither ``normalization`` nor the legacy ``normalize`` (true VALID,
    false BATCH_SIZE) is set, the mode is BATCH_SIZE, as in Caffe (not the
    VALID that the message's default says).

    Backward: ``dx = (sigmoid(x) - t) * loss_weight / normalizer``, 0 where
    ignored. The targets take no gradient (asking for one is an error).
    """

    exact_bottoms = 2
    exact_tops = 1
    is_loss = True

    def layer_setup(self, bottoms, tops):
        loss_param = self.param.loss_param
        self.ignore_label = read_ignore_label(loss_param)
        if loss_param.HasField("normalization") or loss_param.HasField("normalize"):
            self.normalization = read_normalization(loss_param)
        else:
            self.normalization = "BATCH_SIZE"
        self.pre_fixed_normalizer = float(loss_param.pre_fixed_normalizer)
        # Per element: the loss term, d loss / d x and whether it counts.
        self.element_loss = self.slope = self.valid = None

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def reshape(self, bottoms, tops):
        check_first_axis(self, bottoms)
        shape = tuple(bottoms[0].shape)
        if bottoms[1].count != bottoms[0].count:
            raise self.shape_error(
                1, f"{bottoms[0].count} targets, one per logit of '{self.bottom_name(0)}' {shape}",
                bottoms[1].shape)
        xp, dtype = array_module(bottoms[0].data), bottoms[0].data.dtype
        count = bottoms[0].count
        self.element_loss = work_buffer(self.element_loss, xp, (count,), dtype)
        self.slope = work_buffer(self.slope, xp, (count,), dtype)
        self.valid = work_buffer(self.valid, xp, (count,), dtype)
        tops[0].reshape(())

    def _inputs(self, bottoms):
        """Logits and targets as flat contiguous arrays of the logits' dtype."""
        x = contiguous(bottoms[0].data).reshape(-1)
        t = contiguous(bottoms[1].data).reshape(-1).astype(x.dtype, copy=False)
        return x, t

    def _normalizer(self, bottoms):
        num = bottoms[0].shape[0]
        return loss_normalizer(self.normalization, full=bottoms[0].count, batch=num,
                               valid=self.valid.sum(), pre_fixed=self.pre_fixed_normalizer)

    def forward_cpu(self, bottoms, tops):
        x, t = self._inputs(bottoms)
        if self.ignore_label is None:
            ignored = np.zeros(x.shape, dtype=bool)
        else:
            ignored = t.astype(np.int64) == self.ignore_label
        self.element_loss[...], self.slope[...] = _sigmoid_cross_entropy_numpy(x, t, ignored)
        self.valid[...] = ~ignored
        self._finish_forward(bottoms, tops)

    def forward_gpu(self, bottoms, tops):
        x, t = self._inputs(bottoms)
        has_ignore = self.ignore_label is not None
        launch("losses.cu", "sigmoid_cross_entropy_forward", x.dtype, x.size,
               (np.int64(x.size), x, t, np.int32(has_ignore),
                np.int32(self.ignore_label if has_ignore else 0),
                self.element_loss, self.slope, self.valid))
        self._finish_forward(bottoms, tops)

    def _finish_forward(self, bottoms, tops):
        tops[0].data[...] = self.element_loss.sum() / self._normalizer(bottoms)

    def backward_cpu(self, tops, propagate_down, bottoms):
        refuse_gradient(self, propagate_down, 1, "targets")
        if propagate_down[0]:
            bottoms[0].diff[...] = scaled_slope(self.slope, tops[0], self._normalizer(bottoms),
                                                bottoms[0].shape)

    backward_gpu = backward_cpu


# -- HingeLoss ------------------------------------------------------------------------

@register("HingeLoss")
class HingeLossLayer(Layer):
    """One-vs-all hinge loss over ``dim`` classes:
    ``m[n, j] = max(0, 1 + s * x[n, j])`` with ``s = -1`` at the label's
    class and ``+1`` elsewhere; loss ``sum(m) / N`` (``hinge_loss_param.norm``
    L1, the default) or ``sum(m^2) / N`` (L2).

    bottoms: scores ``(N, ...)``, read as ``(N, dim)`` with dim the count
    per item; labels, one integer (truncated as Caffe does) in [0, dim) per
    item, e.g. ``(N,)`` or ``(N, 1, 1, 1)``.
    top: the loss ``()``.
    Backward: L1 ``dx = s * [m > 0] * loss_weight / N``; L2
    ``dx = 2 s m * loss_weight / N``. The labels take no gradient (asking
    for one is an error).
    """

    exact_bottoms = 2
    exact_tops = 1
    is_loss = True

    def layer_setup(self, bottoms, tops):
        hinge_param = self.param.hinge_loss_param
        self.squared = hinge_param.norm == type(hinge_param).L2
        # Per element of the (N, dim) scores: m or m^2, and its slope.
        self.element_loss = self.slope = None

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def reshape(self, bottoms, tops):
        check_first_axis(self, bottoms)
        shape = tuple(bottoms[0].shape)
        num = shape[0]
        if bottoms[1].count != num:
            raise self.shape_error(1, f"{num} labels, one per item of '{self.bottom_name(0)}' "
                                   f"{shape}", bottoms[1].shape)
        self.dim = bottoms[0].count // num if num else 0
        xp, dtype = array_module(bottoms[0].data), bottoms[0].data.dtype
        self.element_loss = work_buffer(self.element_loss, xp, (num, self.dim), dtype)
        self.slope = work_buffer(self.slope, xp, (num, self.dim), dtype)
        tops[0].reshape(())

    def _inputs(self, bottoms):
        """Scores ``(N, dim)`` and the raw labels ``(N,)``, labels checked."""
        x = contiguous(bottoms[0].data).reshape(self.element_loss.shape)
        raw = contiguous(bottoms[1].data).reshape(-1)
        raw, _ = check_labels(self, 1, raw, raw.astype(np.int64), self.dim, None)
        return x, raw

    def forward_cpu(self, bottoms, tops):
        x, raw = self._inputs(bottoms)
        real = x.dtype.type
        at_label = np.arange(self.dim) == raw.astype(np.int64)[:, None]
        s = np.where(at_label, real(-1), real(1))
        m = np.maximum(real(0), real(1) + s * x)
        if self.squared:
            self.element_loss[...], self.slope[...] = m * m, s * real(2) * m
        else:
            self.element_loss[...], self.slope[...] = m, np.where(m > 0, s, real(0))
        self._finish_forward(bottoms, tops)

    def forward_gpu(self, bottoms, tops):
        x, raw = self._inputs(bottoms)
        launch("losses.cu", "hinge_forward", x.dtype, x.size,
               (np.int64(x.size), np.int64(self.dim), x, raw.astype(x.dtype, copy=False),
                np.int32(self.squared), self.element_loss, self.slope))
        self._finish_forward(bottoms, tops)

    def _finish_forward(self, bottoms, tops):
        tops[0].data[...] = self.element_loss.sum() / batch_normalizer(bottoms[0].shape[0])

    def backward_cpu(self, tops, propagate_down, bottoms):
        refuse_gradient(self, propagate_down, 1, "labels")
        if propagate_down[0]:
            bottoms[0].diff[...] = scaled_slope(self.slope, tops[0],
                                                batch_normalizer(bottoms[0].shape[0]),
                                                bottoms[0].shape)

    backward_gpu = backward_cpu


# -- ContrastiveLoss -------------------------------------------------------------------------

def _contrastive_numpy(dist_sq, y, margin, legacy):
    """Per pair: (loss term, coeff), as ``contrastive_forward`` in losses.cu."""
    real = dist_sq.dtype.type
    similar = y.astype(np.int64) != 0
    if legacy:
        mdist = real(margin) - dist_sq
        dissimilar_loss = np.maximum(mdist, real(0))
        dissimilar_coeff = np.where(mdist > 0, real(-1), real(0))
    else:
        d = np.sqrt(dist_sq)
        mdist = real(margin) - d
        dissimilar_loss = np.maximum(mdist, real(0)) ** 2
        dissimilar_coeff = np.where(mdist > 0, -mdist / (d + real(1e-4)), real(0))
    return (np.where(similar, dist_sq, dissimilar_loss),
            np.where(similar, real(1), dissimilar_coeff))


@register("ContrastiveLoss")
class ContrastiveLossLayer(Layer):
    """Contrastive loss of feature pairs (Hadsell, Chopra and LeCun):
    ``loss = sum_n l_n / (2 N)`` with ``d_n = ||a_n - b_n||`` and

    - similar pairs (``y`` truncated to an integer is nonzero): ``l = d^2``;
    - dissimilar pairs: ``l = max(margin - d, 0)^2``, or with
      ``contrastive_loss_param.legacy_version`` ``l = max(margin - d^2, 0)``.

    ``margin`` defaults to 1.

    bottoms: a and b ``(N, C)`` or ``(N, C, 1, 1)``; y ``(N,)`` or
    ``(N, 1, 1, 1)``.
    top: the loss ``()``.
    Backward, per pair and with ``k = loss_weight / N``: similar
    ``da = k (a - b)``; dissimilar where the hinge is active
    ``da = -k (a - b)`` (legacy) or ``da = -k (margin - d) / (d + 1e-4) (a - b)``
    (Caffe's guard against d = 0, kept so gradients equal Caffe's), else 0;
    ``db = -da``. y takes no gradient.
    """

    exact_bottoms = 3
    exact_tops = 1
    is_loss = True

    def layer_setup(self, bottoms, tops):
        param = self.param.contrastive_loss_param
        self.margin = float(param.margin)
        self.legacy = bool(param.legacy_version)
        # a - b (N, C); per pair: squared distance, loss term and coeff.
        self.diff = self.dist_sq = self.pair_loss = self.coeff = None

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2

    def reshape(self, bottoms, tops):
        check_first_axis(self, bottoms)
        shape = legacy_shape(bottoms[0].shape)
        if len(shape) != 4 or shape[2:] != (1, 1):
            raise self.shape_error(0, "features (N, C) or (N, C, 1, 1)", bottoms[0].shape)
        num, channels = shape[:2]
        if legacy_shape(bottoms[1].shape) != shape:
            raise self.shape_error(1, f"the shape of '{self.bottom_name(0)}' "
                                   f"{tuple(bottoms[0].shape)} (compared as N, C, H, W)",
                                   bottoms[1].shape)
        if legacy_shape(bottoms[2].shape) != (num, 1, 1, 1):
            raise self.shape_error(2, f"one similarity per pair: ({num},) or ({num}, 1, 1, 1)",
                                   bottoms[2].shape)
        xp, dtype = array_module(bottoms[0].data), bottoms[0].data.dtype
        self.diff = work_buffer(self.diff, xp, (num, channels), dtype)
        self.dist_sq = work_buffer(self.dist_sq, xp, (num,), dtype)
        self.pair_loss = work_buffer(self.pair_loss, xp, (num,), dtype)
        self.coeff = work_buffer(self.coeff, xp, (num,), dtype)
        tops[0].reshape(())

    def _distances(self, bottoms):
        """Fill ``diff`` and ``dist_sq`` (the same array math on both devices);
        return the similarities as a flat contiguous array of the data dtype."""
        self.diff[...] = (bottoms[0].data.reshape(self.diff.shape)
                          - bottoms[1].data.reshape(self.diff.shape))
        self.dist_sq[...] = (self.diff * self.diff).sum(axis=1)
        return contiguous(bottoms[2].data).reshape(-1).astype(self.diff.dtype, copy=False)

    def forward_cpu(self, bottoms, tops):
        y = self._distances(bottoms)
        self.pair_loss[...], self.coeff[...] = _contrastive_numpy(self.dist_sq, y, self.margin,
                                                                  self.legacy)
        self._finish_forward(tops)

    def forward_gpu(self, bottoms, tops):
        y = self._distances(bottoms)
        num = self.dist_sq.size
        real = self.dist_sq.dtype.type
        launch("losses.cu", "contrastive_forward", self.dist_sq.dtype, num,
               (np.int64(num), self.dist_sq, y, real(self.margin), np.int32(self.legacy),
                self.pair_loss, self.coeff))
        self._finish_forward(tops)

    def _finish_forward(self, tops):
        tops[0].data[...] = self.pair_loss.sum() / batch_normalizer(self.diff.shape[0]) / 2

    def backward_cpu(self, tops, propagate_down, bottoms):
        slope = self.diff * self.coeff[:, None]
        normalizer = batch_normalizer(self.diff.shape[0])
        for i, sign in ((0, 1), (1, -1)):
            if propagate_down[i]:
                bottoms[i].diff[...] = scaled_slope(slope * sign, tops[0], normalizer,
                                                    bottoms[i].shape)

    backward_gpu = backward_cpu
