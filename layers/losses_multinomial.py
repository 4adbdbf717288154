"""Caffe's log losses over class probabilities: MultinomialLogisticLoss
(probabilities in) and InfogainLoss (scores in, softmax inside, weighted by
an infogain matrix H, as BVLC Caffe's master computes it).

Both floor a probability at Caffe's ``kLOG_THRESHOLD`` (1e-20, a float
constant, so float32's nearest value for float and double alike) before
taking its log, and both are the same array math on both devices (gathers,
products and sums), except InfogainLoss's softmax, which runs the kernels
of ``layers/cuda/softmax.cu`` on the GPU.
"""
import numpy as np

from layers.base import Layer, register
from layers.kernels import launch
from layers.losses import check_first_axis, refuse_gradient
from layers.softmax import (softmax_numpy, check_label_count, check_labels, contiguous,
                            legacy_shape, loss_normalizer, read_ignore_label, split_at_axis,
                            work_buffer)
from netdef.caffemodel import read_blob_proto
from netdef.device import array_module

# Caffe's kLOG_THRESHOLD is the float 1e-20, compared as Dtype.
LOG_THRESHOLD = float(np.float32(1e-20))


def floored_log(p):
    """log(max(p, kLOG_THRESHOLD)), on any device."""
    xp = array_module(p)
    return xp.log(xp.maximum(p, p.dtype.type(LOG_THRESHOLD)))


# -- MultinomialLogisticLoss ------------------------------------------------------------

@register("MultinomialLogisticLoss")
class MultinomialLogisticLossLayer(Layer):
    """``loss = -sum_n log(max(p[n, label_n], 1e-20)) / N``.

    bottoms: probabilities ``(N, ...)``, read as ``(N, dim)``; labels, one
    integer (truncated as Caffe does) in [0, dim) per item: ``(N,)``,
    ``(N, 1)`` or ``(N, 1, 1, 1)``.
    top: the loss ``()``.
    Backward: ``dp[n, label_n] = -loss_weight / (N * max(p[n, label_n], 1e-20))``,
    0 elsewhere. The labels take no gradient (asking for one is an error).
    """

    exact_bottoms = 2
    exact_tops = 1
    is_loss = True

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def reshape(self, bottoms, tops):
        check_first_axis(self, bottoms)
        num = bottoms[0].shape[0]
        if legacy_shape(bottoms[1].shape)[1:] != (1, 1, 1):
            raise self.shape_error(1, f"one label per item: ({num},) or ({num}, 1, 1, 1)",
                                   bottoms[1].shape)
        self.num = num
        self.dim = bottoms[0].count // num if num else 0
        tops[0].reshape(())

    def _picked(self, bottoms):
        """(rows, labels, the floored probability of each item's label)."""
        xp = array_module(bottoms[0].data)
        raw = contiguous(bottoms[1].data).reshape(-1)
        _, labels = check_labels(self, 1, raw, raw.astype(np.int64), self.dim, None)
        rows = xp.arange(self.num)
        p = bottoms[0].data.reshape(self.num, self.dim)[rows, labels]
        return rows, labels, xp.maximum(p, p.dtype.type(LOG_THRESHOLD))

    def forward_cpu(self, bottoms, tops):
        _, _, p = self._picked(bottoms)
        xp = array_module(p)
        tops[0].data[...] = -xp.log(p).sum() / max(float(self.num), 1.0)

    def backward_cpu(self, tops, propagate_down, bottoms):
        refuse_gradient(self, propagate_down, 1, "labels")
        if not propagate_down[0]:
            return
        rows, labels, p = self._picked(bottoms)
        grad = array_module(p).zeros((self.num, self.dim), dtype=p.dtype)
        grad[rows, labels] = -tops[0].diff / max(float(self.num), 1.0) / p
        bottoms[0].diff[...] = grad.reshape(bottoms[0].shape)

    # A gather and a sum: the same array math on both devices.
    forward_gpu = forward_cpu
    backward_gpu = backward_cpu


# -- InfogainLoss --------------------------------------------------------------------

def read_infogain_matrix(layer, path):
    """The infogain matrix H of the ``.binaryproto`` in ``path``; DataError
    naming the layer and the file when it is missing, unreadable, not a
    BlobProto or empty."""
    return read_blob_proto(path, f"{layer.where}: infogain_loss_param.source '{path}'")


@register("InfogainLoss")
class InfogainLossLayer(Layer):
    """Infogain loss (BVLC master: a softmax inside, like SoftmaxWithLoss):
    with ``p = softmax(x)`` along ``infogain_loss_param.axis`` (default 1),
    ``loss = -sum_positions sum_c H[label, c] log(max(p_c, 1e-20)) / normalizer``
    over the positions whose label is not ``loss_param.ignore_label``. With
    H the identity it is SoftmaxWithLoss (but for the floor).

    bottoms: scores ``(..., C, ...)`` with the C classes on the axis; labels,
    one integer (truncated as Caffe does) in [0, C) per position of the
    other axes (``outer * inner`` values, first axis that of the scores);
    optionally H as a third bottom, ``C * C`` values (any shape, read row
    by row, e.g. ``(C, C)``), instead of ``infogain_loss_param.source``, a
    binaryproto BlobProto file read once at setup.
    tops: the loss ``()``; optionally the probabilities (shape of the scores).

    ``loss_param``: ``ignore_label``; ``normalization`` FULL, VALID (the
    default), BATCH_SIZE, PRE_FIXED or NONE as in SoftmaxWithLoss, the
    normalizer at least 1. The legacy ``normalize`` is refused, as in Caffe.

    Backward: ``dx_c = (p_c * sum_k H[label, k] - H[label, c]) * loss_weight / normalizer``,
    0 at ignored positions. Labels and H take no gradient (asking is an
    error); the probability top carries none.
    """

    min_bottoms = 2
    max_bottoms = 3
    min_tops = 1
    max_tops = 2
    is_loss = True

    def layer_setup(self, bottoms, tops):
        loss_param = self.param.loss_param
        if loss_param.HasField("normalize"):
            raise self.definition_error("loss_param.normalize is deprecated for InfogainLoss, "
                                        "use loss_param.normalization")
        self.ignore_label = read_ignore_label(loss_param)
        self.normalization = type(loss_param).NormalizationMode.Name(loss_param.normalization)
        self.pre_fixed_normalizer = float(loss_param.pre_fixed_normalizer)
        param = self.param.infogain_loss_param
        self.axis_param = int(param.axis)
        self.stored_infogain = None
        if len(bottoms) < 3:
            if not param.HasField("source"):
                raise self.definition_error(
                    "needs the infogain matrix H: set infogain_loss_param.source to a "
                    "binaryproto file or give H as a third bottom")
            self.stored_infogain = self.device.xp.asarray(read_infogain_matrix(self, param.source),
                                                          dtype=self.dtype)
        # Work arrays, sized in reshape.
        self.prob = self.position_loss = self.position_valid = None

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def reshape(self, bottoms, tops):
        shape = tuple(bottoms[0].shape)
        if not -len(shape) <= self.axis_param < len(shape):
            raise self.shape_error(0, f"an axis {self.axis_param} (infogain_loss_param.axis) "
                                   f"among its {len(shape)} axes", shape)
        self.axis, self.outer, self.channels, self.inner = split_at_axis(self, shape, self.axis_param)
        check_first_axis(self, bottoms)
        check_label_count(self, bottoms)
        positions = self.outer * self.inner
        self._check_infogain(bottoms)
        xp, dtype = array_module(bottoms[0].data), bottoms[0].data.dtype
        self.prob = work_buffer(self.prob, xp, shape, dtype)
        self.position_loss = work_buffer(self.position_loss, xp, (positions,), dtype)
        self.position_valid = work_buffer(self.position_valid, xp, (positions,), dtype)
        tops[0].reshape(())
        if len(tops) >= 2:
            tops[1].reshape(shape)

    def _check_infogain(self, bottoms):
        c = self.channels
        if len(bottoms) >= 3:
            if bottoms[2].count != c * c:
                raise self.shape_error(2, f"the infogain matrix H ({c}, {c}) ({c * c} values) "
                                       f"for the {c} classes of '{self.bottom_name(0)}'",
                                       bottoms[2].shape)
        elif self.stored_infogain.size != c * c:
            raise self.definition_error(
                f"infogain_loss_param.source '{self.param.infogain_loss_param.source}' holds H "
                f"of shape {tuple(self.stored_infogain.shape)}, expected ({c}, {c}) "
                f"({c * c} values) for the {c} classes of '{self.bottom_name(0)}'")

    # -- shared pieces ---------------------------------------------------------------
    def _infogain(self, bottoms):
        matrix = bottoms[2].data if len(bottoms) >= 3 else self.stored_infogain
        return matrix.reshape(self.channels, self.channels)

    def _labels(self, bottoms):
        """(truncated labels with ignored ones set to 0, 1 where counted) (any device)."""
        raw = contiguous(bottoms[1].data).reshape(-1)
        _, labels = check_labels(self, 1, raw, raw.astype(np.int64), self.channels,
                                 self.ignore_label)
        xp = array_module(labels)
        if self.ignore_label is None:
            return labels, xp.ones(labels.shape, dtype=self.prob.dtype)
        ignored = labels == self.ignore_label
        return xp.where(ignored, 0, labels), (~ignored).astype(self.prob.dtype)

    def _by_position(self, array):
        """``(outer, C, inner)`` data as ``(positions, C)``."""
        view = array.reshape(self.outer, self.channels, self.inner)
        return view.transpose(0, 2, 1).reshape(-1, self.channels)

    def _normalizer(self):
        return loss_normalizer(self.normalization, full=self.outer * self.inner, batch=self.outer,
                               valid=self.position_valid.sum(), pre_fixed=self.pre_fixed_normalizer)

    # -- forward: the softmax per device, the rest shared ---------------------------------
    def forward_cpu(self, bottoms, tops):
        view = (self.outer, self.channels, self.inner)
        self.prob[...] = softmax_numpy(bottoms[0].data.reshape(view)).reshape(self.prob.shape)
        self._finish_forward(bottoms, tops)

    def forward_gpu(self, bottoms, tops):
        x = contiguous(bottoms[0].data)
        positions = self.outer * self.inner
        launch("softmax.cu", "softmax_forward", x.dtype, positions,
               (np.int64(positions), np.int32(self.channels), np.int64(self.inner), x, self.prob))
        self._finish_forward(bottoms, tops)

    def _finish_forward(self, bottoms, tops):
        labels, valid = self._labels(bottoms)
        rows = self._infogain(bottoms)[labels]
        self.position_loss[...] = -(rows * floored_log(self._by_position(self.prob))).sum(axis=1) * valid
        self.position_valid[...] = valid
        tops[0].data[...] = self.position_loss.sum() / self._normalizer()
        if len(tops) >= 2:
            tops[1].data[...] = self.prob

    # -- backward (the same array math on both devices) ---------------------------------
    def backward_cpu(self, tops, propagate_down, bottoms):
        refuse_gradient(self, propagate_down, 1, "labels")
        if len(bottoms) >= 3:
            refuse_gradient(self, propagate_down, 2, "infogain matrix")
        if not propagate_down[0]:
            return
        labels, valid = self._labels(bottoms)
        infogain = self._infogain(bottoms)
        row_sums = infogain.sum(axis=1)[labels]
        grad = self._by_position(self.prob) * row_sums[:, None] - infogain[labels]
        grad *= valid[:, None] * (tops[0].diff / self._normalizer())
        per_class = grad.reshape(self.outer, self.inner, self.channels).transpose(0, 2, 1)
        bottoms[0].diff[...] = per_class.reshape(bottoms[0].shape)

    backward_gpu = backward_cpu
