"""Classification accuracy: Accuracy (Caffe's).

The layer runs the same array code on both devices (NumPy or CuPy through
``xp``); it has no kernel of its own.
"""
import numpy as np

from layers.base import NoGradientLayer, register
from layers.softmax import check_label_count, check_labels, read_ignore_label, split_at_axis
from netdef.device import array_module


@register("Accuracy")
class AccuracyLayer(NoGradientLayer):
    """Top-k accuracy of scores against integer labels.

    bottoms: scores with the classes on ``accuracy_param.axis`` (default 1),
    e.g. ``(N, C)`` or ``(N, C, H, W)``; labels with one value per position
    of the other axes (``outer * inner`` values, any shape), integers
    (truncated as Caffe does) in ``[0, C)`` or ``accuracy_param.ignore_label``.
    tops: the accuracy, shape ``()``; optionally the per-class accuracy
    ``(C,)`` (0 for a class with no sample).

    Caffe's rule, ties included: a sample is correct when fewer than
    ``top_k`` *other* classes score greater than or equal to the true class
    (so a tie with the true class counts against it). Positions with the
    ignore label are skipped; with none left the accuracy is 0.

    No gradient: the accuracy is piecewise constant in the scores. Caffe
    aborts when asked for one; this layer allows no forced backward, and a
    Net that calls backward anyway gets zeros for the diffs it asks for.
    """

    exact_bottoms = 2
    min_tops = 1
    max_tops = 2

    def layer_setup(self, bottoms, tops):
        param = self.param.accuracy_param
        self.top_k = int(param.top_k)
        self.axis_param = int(param.axis)
        self.ignore_label = read_ignore_label(param)
        if self.top_k < 1:
            raise self.definition_error(f"accuracy_param.top_k must be >= 1, found {self.top_k}")

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        self.axis, self.outer, self.channels, self.inner = split_at_axis(self, shape, self.axis_param)
        if self.top_k > self.channels:
            raise self.definition_error(
                f"accuracy_param.top_k ({self.top_k}) must not exceed the number of classes, "
                f"{self.channels} along axis {self.axis} of '{self.bottom_name(0)}' {tuple(shape)}")
        check_label_count(self, bottoms)
        tops[0].reshape(())
        if len(tops) >= 2:
            tops[1].reshape((self.channels,))

    def forward_cpu(self, bottoms, tops):
        scores = bottoms[0].data.reshape(self.outer, self.channels, self.inner)
        xp = array_module(scores)
        raw = bottoms[1].data.reshape(-1)
        _, labels = check_labels(self, 1, raw, raw.astype(np.int64), self.channels,
                                 self.ignore_label)
        valid = xp.ones(labels.shape, dtype=bool) if self.ignore_label is None \
            else labels != self.ignore_label
        safe = xp.where(valid, labels, 0)
        true_score = xp.take_along_axis(scores, safe.reshape(self.outer, 1, self.inner), axis=1)
        # The true class compares >= with itself; Caffe starts its count at -1.
        better = (scores >= true_score).sum(axis=1).reshape(-1) - 1
        correct = valid & (better < self.top_k)
        count = valid.sum()
        tops[0].data[...] = xp.where(count > 0, correct.sum() / xp.maximum(count, 1), 0)
        if len(tops) >= 2:
            per_class = xp.bincount(safe, weights=correct.astype(np.float64), minlength=self.channels)
            totals = xp.bincount(safe, weights=valid.astype(np.float64), minlength=self.channels)
            tops[1].data[...] = xp.where(totals > 0, per_class / xp.maximum(totals, 1), 0)

    forward_gpu = forward_cpu
