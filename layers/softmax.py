"""Softmax and the softmax cross-entropy losses: Softmax, SoftmaxWithLoss and
py-R-FCN's SoftmaxWithLossOHEM.

The module also holds what every loss layer of the engine shares with
Caffe's ``LossLayer``: how ``loss_param`` picks the normalizer
(``read_normalization`` / ``loss_normalizer``), the check of integer labels
(``check_labels``) and Caffe's legacy 4-axis view of a shape
(``legacy_shape``), used by the detection losses in ``layers.smooth_l1``,
``layers.ohem`` and ``layers.accuracy``.

Shapes: the softmax axis ``a`` (``softmax_param.axis``, default 1, negative
counts from the end) splits the input into ``(outer, C, inner)``: outer is
the product of the axes before ``a``, inner of those after it. For scores
``(N, C, H, W)`` and axis 1 that is ``(N, C, H*W)``.
"""
import numpy as np

from layers import deferred_checks
from layers.base import Layer, register
from layers.kernels import launch
from netdef.device import array_module
from netdef.errors import DataError

# Caffe floors a probability at FLT_MIN before taking its log, for float and
# double alike.
PROB_FLOOR = float(np.finfo(np.float32).tiny)


# -- helpers shared by the loss layers ---------------------------------------------

def legacy_shape(shape):
    """Caffe's (num, channels, height, width) view of a shape of at most 4
    axes, missing trailing axes read as 1: ``(R, 8)`` -> ``(R, 8, 1, 1)``.
    Shapes of more axes are returned unchanged. The detection layers compare
    shapes this way, as Caffe's ``num()``/``channels()``/... checks do, so
    that ``(R, 8)`` targets fit ``(R, 8, 1, 1)`` predictions."""
    shape = tuple(int(s) for s in shape)
    return shape + (1,) * (4 - len(shape)) if len(shape) <= 4 else shape


def read_ignore_label(param):
    """``param.ignore_label`` (a LossParameter or AccuracyParameter) as an
    int when it is set, else None (no label is ignored)."""
    return int(param.ignore_label) if param.HasField("ignore_label") else None


def read_normalization(loss_param):
    """The normalization mode name of a LossParameter, by Caffe's rule:
    ``normalization`` when set; otherwise the legacy ``normalize`` when set
    (true: VALID, false: BATCH_SIZE); otherwise VALID (the default)."""
    if not loss_param.HasField("normalization") and loss_param.HasField("normalize"):
        return "VALID" if loss_param.normalize else "BATCH_SIZE"
    return type(loss_param).NormalizationMode.Name(loss_param.normalization)


def loss_normalizer(mode, *, full, batch, valid=None, pre_fixed=1.0):
    """What a summed loss is divided by (Caffe's ``get_normalizer``).

    full: outer x inner count; batch: outer count; valid: the count of
    non-ignored targets (a number or a 0-d array on any device; None means
    nothing can be ignored, so VALID equals FULL); pre_fixed:
    ``loss_param.pre_fixed_normalizer``. The result is at least 1, so a
    batch whose targets are all ignored has loss 0 rather than NaN. A 0-d
    array ``valid`` gives a 0-d array (no device synchronization).
    """
    if mode == "VALID" and valid is not None:
        xp = array_module(valid)
        return xp.maximum(valid, 1) if hasattr(valid, "shape") else max(float(valid), 1.0)
    value = {"FULL": full, "VALID": full, "BATCH_SIZE": batch,
             "PRE_FIXED": pre_fixed, "NONE": 1}[mode]
    return max(float(value), 1.0)


def check_labels(layer, bottom_index, raw, labels, num_classes, ignore_label):
    """Raise DataError when a label other than ``ignore_label`` lies outside
    ``[0, num_classes)``. ``labels`` are the truncated integers of ``raw``
    (any device); the message names the layer, the label blob and the value.

    Returns ``(raw, labels)`` to go on with: the same arrays, or, where a
    Net's forward pass defers the check to the end of the pass
    (``layers.deferred_checks``: no synchronization here on the GPU),
    copies with every bad label replaced by 0 so nothing reads out of
    bounds before the pass raises."""
    xp = array_module(labels)
    if labels.size == 0:
        return raw, labels
    bad = (labels < 0) | (labels >= num_classes)
    if ignore_label is not None:
        bad &= labels != ignore_label
    flat = bad.reshape(-1)

    def details():
        first = xp.argmax(flat)
        return first, raw.reshape(-1)[first]

    def report(first, value):
        allowed = f"an integer in [0, {num_classes - 1}]"
        if ignore_label is not None:
            allowed += f" or ignore_label {ignore_label}"
        raise DataError(
            f"{layer.where}: bottom '{layer.bottom_name(bottom_index)}' holds label "
            f"{float(value):g} at flat index {int(first)}, expected {allowed} "
            f"({num_classes} classes)")

    if deferred_checks.check(xp, flat.any(), details, report):
        raw, labels = xp.where(bad, 0, raw), xp.where(bad, 0, labels)
    return raw, labels


def checked_labels(layer, bottoms, num_classes):
    """Bottom 1 as (raw labels flat and contiguous, their truncated
    integers), range checked (``check_labels``) against ``[0, num_classes)``
    or ``layer.ignore_label``."""
    raw = contiguous(bottoms[1].data).reshape(-1)
    return check_labels(layer, 1, raw, raw.astype(np.int64), num_classes, layer.ignore_label)


def ignored_mask(labels, ignore_label):
    """Where ``labels`` equal ``ignore_label`` (all False without one)."""
    xp = array_module(labels)
    if ignore_label is None:
        return xp.zeros(labels.shape, dtype=bool)
    return labels == ignore_label


def check_label_count(layer, bottoms):
    """ShapeError unless bottom 1 holds one label per position of the scores
    (bottom 0) outside ``layer.axis`` (``layer.outer * layer.inner``)."""
    positions = layer.outer * layer.inner
    if bottoms[1].count != positions:
        raise layer.shape_error(
            1, f"{positions} labels, one per position of scores '{layer.bottom_name(0)}' "
            f"{tuple(bottoms[0].shape)} outside axis {layer.axis} (e.g. (N, H, W) for "
            f"(N, C, H, W))", bottoms[1].shape)


def split_at_axis(layer, shape, axis_param, bottom_index=0):
    """``(axis, outer, channels, inner)`` of ``shape`` around the canonical
    form of ``axis_param``; a ShapeError when the axis does not exist or is
    empty."""
    ndim = len(shape)
    if not -ndim <= axis_param < ndim:
        raise layer.shape_error(bottom_index, f"an axis {axis_param} (softmax_param.axis) "
                                f"among its {ndim} axes", shape)
    axis = axis_param % ndim
    channels = int(shape[axis])
    if channels < 1:
        raise layer.shape_error(bottom_index, f"at least one class along axis {axis}", shape)
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return axis, outer, channels, inner


def work_buffer(current, xp, shape, dtype):
    """A zeroed work array of ``shape``; ``current`` is kept when it already
    fits, so reshape on every forward does not reallocate."""
    if (current is not None and current.shape == tuple(shape) and current.dtype == dtype
            and array_module(current) is xp):
        return current
    return xp.zeros(shape, dtype=dtype)


def softmax_numpy(x):
    """Softmax of ``(outer, C, inner)`` along axis 1, the max subtracted
    first so that exp never overflows."""
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def contiguous(array):
    """``array`` as a C-contiguous array (no copy when it already is), as the
    kernels need."""
    return array_module(array).ascontiguousarray(array)


# -- Softmax ------------------------------------------------------------------------

@register("Softmax")
class SoftmaxLayer(Layer):
    """y = exp(x) / sum(exp(x)) along ``softmax_param.axis`` (default 1),
    computed as exp(x - max) for stability. Works in place.

    bottom: any shape with at least one class along the axis; top: the same.
    Backward: dx = y * (dy - sum(dy * y, axis)).
    """

    exact_bottoms = 1
    exact_tops = 1

    def layer_setup(self, bottoms, tops):
        self.axis_param = int(self.param.softmax_param.axis)

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        self.axis, self.outer, self.channels, self.inner = split_at_axis(self, shape, self.axis_param)
        tops[0].reshape(shape)

    def _view(self, array):
        return array.reshape(self.outer, self.channels, self.inner)

    def forward_cpu(self, bottoms, tops):
        tops[0].data[...] = softmax_numpy(self._view(bottoms[0].data)).reshape(tops[0].shape)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        y, dy = self._view(tops[0].data), self._view(tops[0].diff)
        dot = (dy * y).sum(axis=1, keepdims=True)
        # In place, bottom diff is top diff: the right side is complete first.
        bottoms[0].diff[...] = (y * (dy - dot)).reshape(bottoms[0].shape)

    def forward_gpu(self, bottoms, tops):
        x = contiguous(bottoms[0].data)
        positions = self.outer * self.inner
        launch("softmax.cu", "softmax_forward", x.dtype, positions,
               (np.int64(positions), np.int32(self.channels), np.int64(self.inner), x, tops[0].data))

    def backward_gpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        y = tops[0].data
        positions = self.outer * self.inner
        launch("softmax.cu", "softmax_backward", y.dtype, positions,
               (np.int64(positions), np.int32(self.channels), np.int64(self.inner),
                y, contiguous(tops[0].diff), bottoms[0].diff))


# -- SoftmaxWithLoss ------------------------------------------------------------------

@register("SoftmaxWithLoss")
class SoftmaxWithLossLayer(Layer):
    """Softmax cross-entropy: ``loss = sum_p -log(max(prob[p, label_p], FLT_MIN)) / normalizer``
    over the positions p whose label is not ``loss_param.ignore_label``.

    bottoms: scores ``(..., C, ...)`` with the classes on ``softmax_param.axis``
    (default 1), e.g. ``(N, C)`` or ``(N, C, H, W)``; labels with one value
    per position of the other axes (``outer * inner`` values in all, any
    shape, e.g. ``(N,)`` or ``(N, 1, H, W)``), integers (truncated as Caffe
    does) in ``[0, C)`` or the ignore label.
    tops: the loss, shape ``()``; optionally the probabilities, shape of the
    scores.

    ``loss_param``: ``ignore_label`` (optional); ``normalization`` FULL (outer
    x inner), VALID (default: the non-ignored count), BATCH_SIZE (outer),
    PRE_FIXED (``pre_fixed_normalizer``) or NONE (1); the legacy
    ``normalize`` (true VALID, false BATCH_SIZE) is read only when
    ``normalization`` is unset. The normalizer is at least 1.

    Backward: ``d scores = (prob - onehot(label)) * loss_weight / normalizer``,
    0 at ignored positions. The probability top carries no gradient. Labels
    take none: a label out of range is a DataError raised in forward, and
    asking for a label gradient is a NetDefinitionError, as in Caffe.
    """

    exact_bottoms = 2
    min_tops = 1
    max_tops = 2
    is_loss = True

    def layer_setup(self, bottoms, tops):
        loss_param = self.param.loss_param
        self.ignore_label = read_ignore_label(loss_param)
        self.normalization = read_normalization(loss_param)
        self.pre_fixed_normalizer = float(loss_param.pre_fixed_normalizer)
        self.axis_param = int(self.param.softmax_param.axis)
        # Work arrays, sized in reshape.
        self.prob = self.position_loss = self.position_valid = None

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        self.axis, self.outer, self.channels, self.inner = split_at_axis(self, shape, self.axis_param)
        check_label_count(self, bottoms)
        positions = self.outer * self.inner
        xp, dtype = array_module(bottoms[0].data), bottoms[0].data.dtype
        # Caffe's prob_ and, per position, the loss and whether it counts.
        self.prob = work_buffer(self.prob, xp, shape, dtype)
        self.position_loss = work_buffer(self.position_loss, xp, (positions,), dtype)
        self.position_valid = work_buffer(self.position_valid, xp, (positions,), dtype)
        tops[0].reshape(())
        if len(tops) >= 2:
            tops[1].reshape(shape)
        if len(tops) >= 3:
            tops[2].reshape(bottoms[1].shape)

    # -- shared pieces ------------------------------------------------------------
    def _labels(self, bottoms):
        return checked_labels(self, bottoms, self.channels)

    def _ignored(self, labels):
        return ignored_mask(labels, self.ignore_label)

    def _normalizer(self):
        return loss_normalizer(self.normalization, full=self.outer * self.inner, batch=self.outer,
                               valid=self.position_valid.sum(), pre_fixed=self.pre_fixed_normalizer)

    def _finish_forward(self, tops):
        tops[0].data[...] = self.position_loss.sum() / self._normalizer()
        if len(tops) >= 2:
            tops[1].data[...] = self.prob
        if len(tops) >= 3:
            tops[2].data[...] = self.position_loss.reshape(tops[2].shape)

    def _check_propagate(self, propagate_down):
        if propagate_down[1]:
            raise self.definition_error(
                f"cannot back-propagate to the labels bottom '{self.bottom_name(1)}'; "
                "set propagate_down: false for it")

    def _loss_scale(self, tops):
        """loss_weight / normalizer, a 0-d array on the data's device."""
        return tops[0].diff / self._normalizer()

    # -- CPU ----------------------------------------------------------------------
    def forward_cpu(self, bottoms, tops):
        view = (self.outer, self.channels, self.inner)
        prob = softmax_numpy(bottoms[0].data.reshape(view))
        self.prob[...] = prob.reshape(self.prob.shape)
        _, labels = self._labels(bottoms)
        ignored = self._ignored(labels)
        safe = np.where(ignored, 0, labels).reshape(self.outer, 1, self.inner)
        p = np.take_along_axis(prob, safe, axis=1).reshape(-1)
        loss = -np.log(np.maximum(p, p.dtype.type(PROB_FLOOR)))
        self.position_loss[...] = np.where(ignored, 0, loss)
        self.position_valid[...] = ~ignored
        self._finish_forward(tops)

    def backward_cpu(self, tops, propagate_down, bottoms):
        self._check_propagate(propagate_down)
        if not propagate_down[0]:
            return
        view = (self.outer, self.channels, self.inner)
        labels = bottoms[1].data.reshape(-1).astype(np.int64)
        ignored = self._ignored(labels)
        safe = np.where(ignored, 0, labels).reshape(self.outer, 1, self.inner)
        grad = self.prob.reshape(view).copy()
        np.put_along_axis(grad, safe, np.take_along_axis(grad, safe, axis=1) - 1, axis=1)
        grad *= ~ignored.reshape(self.outer, 1, self.inner)
        bottoms[0].diff[...] = (grad * self._loss_scale(tops)).reshape(bottoms[0].shape)

    # -- GPU ----------------------------------------------------------------------
    def _kernel_labels(self, raw):
        # The kernels read labels as `real`; integer or other-typed label
        # arrays are converted once here.
        return raw.astype(self.prob.dtype, copy=False)

    def forward_gpu(self, bottoms, tops):
        x = contiguous(bottoms[0].data)
        positions = self.outer * self.inner
        dims = (np.int64(positions), np.int32(self.channels), np.int64(self.inner))
        launch("softmax.cu", "softmax_forward", x.dtype, positions, dims + (x, self.prob))
        raw, _ = self._labels(bottoms)
        has_ignore = self.ignore_label is not None
        launch("softmax.cu", "softmax_loss_forward", x.dtype, positions,
               dims + (self.prob, self._kernel_labels(raw), self.position_loss, self.position_valid,
                       np.int32(has_ignore), np.int32(self.ignore_label if has_ignore else 0)))
        self._finish_forward(tops)

    def backward_gpu(self, tops, propagate_down, bottoms):
        self._check_propagate(propagate_down)
        if not propagate_down[0]:
            return
        positions = self.outer * self.inner
        raw = contiguous(bottoms[1].data).reshape(-1)
        has_ignore = self.ignore_label is not None
        diff = bottoms[0].diff
        launch("softmax.cu", "softmax_loss_backward", diff.dtype, positions,
               (np.int64(positions), np.int32(self.channels), np.int64(self.inner),
                self.prob, self._kernel_labels(raw), diff,
                np.int32(has_ignore), np.int32(self.ignore_label if has_ignore else 0)))
        diff *= self._loss_scale(tops)


@register("SoftmaxWithLossOHEM")
class SoftmaxWithLossOHEMLayer(SoftmaxWithLossLayer):
    """SoftmaxWithLoss of the Caffe fork py-R-FCN trains with, plus a third
    top: the loss of every position before normalization (0 where the label
    is ignored), shaped like the labels bottom, which ``BoxAnnotatorOHEM``
    ranks RoIs by.

    tops, in the fork's order: loss ``()``, probabilities (shape of the
    scores), per-position loss (shape of the labels); py-R-FCN's OHEM nets
    declare ``top: "temp_loss_cls" top: "temp_prob_cls" top: "per_roi_loss_cls"``
    with ``loss_weight: 0`` on all three. Only the first top carries a
    gradient, as in the fork. Everything else is SoftmaxWithLoss.
    """

    max_tops = 3

