"""Caffe-SSD's ``DetectionOutput``: decode, per-class NMS, keep the best.

bottoms: ``loc`` (N, P * L * 4) box offsets (L = 1 with ``share_location``,
else ``num_classes``), ``conf`` (N, P * num_classes) class probabilities
(SSD: softmax over mbox_conf_reshape, flattened), ``prior`` (1, 2, P * 4)
from PriorBox (boxes, then variances). top: (1, 1, K, 7), one row per
detection ``[image, label, score, xmin, ymin, xmax, ymax]`` with
coordinates normalized to the input image (as Caffe-SSD writes them); rows
run by image, then label ascending, then score descending. When no image
has a detection, the top is (1, 1, N, 7) of -1 with column 0 the image
index (Caffe-SSD's rows). The three bottoms must agree on the image count
and the prior count P (PriorBox's); a disagreement is a ShapeError that
says whether num_classes disagrees with loc or conf or the prior counts
differ (giving the count each bottom implies).

detection_output_param (Caffe-SSD's defaults):
- ``code_type`` (CORNER): CORNER adds (variance x) offsets to the corners;
  CENTER_SIZE (SSD's) moves the centre by offset x prior size and scales the
  size by exp(offset); CORNER_SIZE adds offsets x prior size to the corners.
  ``variance_encoded_in_target`` (false): the offsets already include the
  variances (not multiplied again).
- per image and class other than ``background_label_id`` (0; -1: none):
  boxes with a score above ``confidence_threshold`` (unset: all), the
  ``nms_param.top_k`` best (unset: all), greedy NMS at
  ``nms_param.nms_threshold`` (0.3; a box is dropped when its overlap with
  a kept box is above it), then the ``keep_top_k`` best of the image over
  all classes (-1: all). Overlaps of normalized boxes take no "+1".
  ``nms_param.eta`` below 1 is Caffe-SSD's adaptive NMS: after each kept
  box, while the threshold is above 0.5, it is multiplied by eta, and each
  later box is tested against the kept boxes at the threshold of its turn.
- ``save_output_param`` and ``visualize`` are accepted and not acted on.

NMS is ``layers.nms`` (its IoU counts a "+1" pixel, so it is given the boxes
with xmax, ymax lowered by 1 in float64, which gives the overlap without
it); adaptive NMS is ``adaptive_nms_sorted`` below (array math, one step
per kept box). Decoding is array math shared by both devices; on the GPU the NMS runs
as CUDA kernels (layers/cuda/nms.cu). The per-image, per-class loop is over
a small count (classes), never over boxes. No gradient.
"""
import numpy as np

from layers.base import NoGradientLayer, register
from layers.boxes import stable_argsort
from layers.nms import nms_sorted
from netdef.device import array_module

# PriorBoxParameter.CodeType (values of caffe.proto).
CORNER, CENTER_SIZE, CORNER_SIZE = 1, 2, 3
CODE_NAMES = {CORNER: "CORNER", CENTER_SIZE: "CENTER_SIZE", CORNER_SIZE: "CORNER_SIZE"}


def decode_boxes(priors, variances, loc, code_type, variance_encoded_in_target):
    """Caffe-SSD's DecodeBBox for every prior: priors, variances (P, 4),
    loc (..., P, 4) broadcast against them; returns (..., P, 4) corners."""
    xp = array_module(loc)
    offsets = loc if variance_encoded_in_target else loc * variances
    if code_type == CORNER:
        return priors + offsets
    pw = priors[:, 2] - priors[:, 0]
    ph = priors[:, 3] - priors[:, 1]
    if code_type == CORNER_SIZE:
        return priors + offsets * xp.stack([pw, ph, pw, ph], axis=1)
    cx = (priors[:, 0] + priors[:, 2]) / 2 + offsets[..., 0] * pw
    cy = (priors[:, 1] + priors[:, 3]) / 2 + offsets[..., 1] * ph
    w = xp.exp(offsets[..., 2]) * pw
    h = xp.exp(offsets[..., 3]) * ph
    return xp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def normalized_overlaps(box, boxes):
    """Caffe-SSD's JaccardOverlap of normalized boxes: ``box`` (4,) against
    ``boxes`` (K, 4); no "+1", an inverted box has size 0."""
    xp = array_module(boxes)
    iw = xp.maximum(xp.minimum(box[2], boxes[:, 2]) - xp.maximum(box[0], boxes[:, 0]), 0)
    ih = xp.maximum(xp.minimum(box[3], boxes[:, 3]) - xp.maximum(box[1], boxes[:, 1]), 0)
    inter = iw * ih
    def size(b):
        w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
        return xp.where((w < 0) | (h < 0), 0, w * h)
    union = size(box) + size(boxes) - inter
    return xp.where(union > 0, inter / xp.where(union > 0, union, 1), 0)


def adaptive_nms_sorted(boxes, thresh, eta):
    """Caffe-SSD's ApplyNMSFast with eta < 1 on boxes (K, 4) sorted by
    decreasing score: positions kept, increasing. A box is kept when its
    largest overlap with the boxes kept before it is <= the threshold at its
    turn; after each kept box the threshold is multiplied by eta while it is
    above 0.5. The threshold only falls, so a box suppressed once stays
    suppressed: one vectorized step per kept box, never one per box."""
    xp = array_module(boxes)
    worst = xp.zeros(boxes.shape[0], dtype=boxes.dtype)  # largest overlap with a kept box
    kept, current, start = [], float(thresh), 0
    while start < boxes.shape[0]:
        free = xp.flatnonzero(worst[start:] <= current)
        if free.size == 0:
            break
        i = start + int(free[0])
        kept.append(i)
        worst[i + 1:] = xp.maximum(worst[i + 1:], normalized_overlaps(boxes[i], boxes[i + 1:]))
        if eta < 1 and current > 0.5:
            current *= eta
        start = i + 1
    return xp.asarray(kept, dtype=np.int64)


@register("DetectionOutput")
class DetectionOutputLayer(NoGradientLayer):
    """See the module docstring. bottoms: loc, conf, prior; top (1, 1, K, 7)."""

    exact_bottoms = 3
    exact_tops = 1

    def layer_setup(self, bottoms, tops):
        p = self.param.detection_output_param
        if not p.HasField("num_classes") or p.num_classes < 1:
            raise self.definition_error(
                "detection_output_param.num_classes is required (the classes of conf, "
                "background included)")
        self.num_classes = int(p.num_classes)
        self.share_location = bool(p.share_location)
        self.background = int(p.background_label_id)
        if not -1 <= self.background < self.num_classes:
            raise self.definition_error(
                f"detection_output_param.background_label_id {self.background} is not a "
                f"class of num_classes {self.num_classes} (or -1 for none)")
        self.code_type = int(p.code_type)
        self.variance_in_target = bool(p.variance_encoded_in_target)
        self.keep_top_k = int(p.keep_top_k)
        self.threshold = float(p.confidence_threshold) if p.HasField(
            "confidence_threshold") else -np.inf
        nms = p.nms_param
        self.nms_threshold = float(nms.nms_threshold)
        self.top_k = int(nms.top_k) if nms.HasField("top_k") else -1
        self.eta = float(nms.eta)
        if not 0 < self.eta <= 1:
            raise self.definition_error(
                f"nms_param.eta must lie in (0, 1] (1: plain NMS), found {nms.eta:g}")

    def reshape(self, bottoms, tops):
        loc, conf, prior = (tuple(int(d) for d in b.shape) for b in bottoms)
        if len(prior) != 3 or prior[1] != 2 or prior[2] % 4 or prior[2] == 0:
            raise self.shape_error(2, "(1, 2, P * 4), P >= 1: PriorBox's boxes and variances",
                                   prior)
        self.num_priors = prior[2] // 4
        for index, shape, what in ((0, loc, "box offsets"), (1, conf, "scores")):
            if len(shape) < 2:
                raise self.shape_error(index, f"(N, ...) {what}: at least 2 axes", shape)
        if conf[0] != loc[0]:
            raise self.shape_error(1, f"{loc[0]} images, as loc '{self.bottom_name(0)}' has",
                                   conf)
        self._check_prior_counts(loc, conf, prior)
        tops[0].reshape((1, 1, 1, 7))

    def _check_prior_counts(self, loc, conf, prior):
        """Caffe-SSD's two checks (loc holds P * L * 4 values per image, conf
        P * num_classes, P from the prior bottom), with the error saying what
        disagrees: num_classes with loc (one box per class and prior when
        share_location is false) or with conf, or the prior count of the
        three bottoms (loc and conf agreeing on another P than prior's)."""
        priors, classes = self.num_priors, self.num_classes
        loc_classes = 1 if self.share_location else classes
        loc_values, conf_values = int(np.prod(loc[1:])), int(np.prod(conf[1:]))
        loc_priors, conf_priors = loc_values / (4 * loc_classes), conf_values / classes
        other_count = loc_priors == conf_priors == int(loc_priors)
        counts = (f"the prior count disagrees: loc '{self.bottom_name(0)}' holds "
                  f"{loc_priors:g} priors' offsets, conf '{self.bottom_name(1)}' "
                  f"{conf_priors:g} priors' scores (num_classes {classes}), prior "
                  f"'{self.bottom_name(2)}' {priors} priors")
        if loc_values != priors * loc_classes * 4:
            per_prior = loc_values / (4 * priors)
            hints = []
            if not self.share_location and per_prior == int(per_prior):
                hints.append(f"num_classes {classes} disagrees with loc: {per_prior:g} boxes "
                             "per prior (share_location false: one box per class)")
            if other_count or not hints:
                hints.append(counts)
            raise self.shape_error(
                0, f"P * {loc_classes} * 4 = {priors * loc_classes * 4} values per image "
                   f"({priors} priors); {', or '.join(hints)}", loc)
        if conf_values != priors * classes:
            per_prior = conf_values / priors
            hints = []
            if per_prior == int(per_prior):
                hints.append(f"num_classes disagrees with the inputs: {per_prior:g} scores "
                             "per prior")
            if conf_priors == int(conf_priors) or not hints:
                hints.append(counts)
            raise self.shape_error(
                1, f"{conf[0]} images x {priors} priors x num_classes {classes} = "
                   f"{priors * classes} scores per image ({', or '.join(hints)})", conf)

    def forward_cpu(self, bottoms, tops):
        self._forward(bottoms, tops, use_kernel=False)

    def forward_gpu(self, bottoms, tops):
        self._forward(bottoms, tops, use_kernel=True)

    def _decoded(self, bottoms):
        """Boxes (N, P, L, 4) and scores (N, P, C)."""
        num = bottoms[0].shape[0]
        priors = bottoms[2].data.reshape(2, self.num_priors, 4)
        loc = bottoms[0].data.reshape(num, self.num_priors, -1, 4).transpose(0, 2, 1, 3)
        boxes = decode_boxes(priors[0], priors[1], loc, self.code_type,
                             self.variance_in_target)
        return boxes.transpose(0, 2, 1, 3), bottoms[1].data.reshape(num, self.num_priors, -1)

    def _class_detections(self, boxes, scores, use_kernel):
        """Kept prior indices of one image and class, best first."""
        xp = array_module(scores)
        candidates = xp.flatnonzero(scores > scores.dtype.type(self.threshold))
        if candidates.size == 0:
            return candidates
        order = stable_argsort(-scores[candidates])
        if self.top_k > -1:
            order = order[:self.top_k]
        chosen = candidates[order]
        if self.eta < 1:
            return chosen[adaptive_nms_sorted(boxes[chosen], self.nms_threshold, self.eta)]
        shifted = boxes[chosen].astype(np.float64)
        shifted[:, 2:] -= 1.0  # layers.nms counts +1 pixel; this cancels it
        return chosen[nms_sorted(shifted, self.nms_threshold, use_kernel=use_kernel)]

    def _image_rows(self, image, boxes, scores, use_kernel):
        """Rows (K, 7) of one image after NMS and keep_top_k."""
        xp = array_module(scores)
        parts = []
        for label in range(self.num_classes):
            if label == self.background:
                continue
            class_boxes = boxes[:, 0 if self.share_location else label]
            kept = self._class_detections(class_boxes, scores[:, label], use_kernel)
            if kept.size:
                rows = xp.empty((kept.size, 7), dtype=scores.dtype)
                rows[:, 0], rows[:, 1] = image, label
                rows[:, 2] = scores[kept, label]
                rows[:, 3:] = class_boxes[kept]
                parts.append(rows)
        if not parts:
            return xp.zeros((0, 7), dtype=scores.dtype)
        rows = xp.concatenate(parts)
        if -1 < self.keep_top_k < rows.shape[0]:
            best = stable_argsort(-rows[:, 2])[:self.keep_top_k]
            rows = rows[xp.sort(best)]  # back to label, then score order
        return rows

    def _forward(self, bottoms, tops, use_kernel):
        boxes, scores = self._decoded(bottoms)
        xp = array_module(scores)
        num = scores.shape[0]
        rows = [self._image_rows(i, boxes[i], scores[i], use_kernel) for i in range(num)]
        rows = xp.concatenate(rows) if rows else xp.zeros((0, 7), dtype=scores.dtype)
        if rows.shape[0] == 0:
            rows = xp.full((num, 7), -1, dtype=scores.dtype)
            rows[:, 0] = xp.arange(num)
        tops[0].reshape((1, 1, rows.shape[0], 7))
        tops[0].data[...] = rows.reshape(1, 1, -1, 7)
