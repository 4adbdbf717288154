"""``RetinaNetTarget``: RetinaNet's per-anchor training targets (Lin et al.,
"Focal Loss for Dense Object Detection"), for SigmoidFocalLoss and
SmoothL1Loss, from AnnotatedData's ``label`` rows and PriorBox's anchors.

bottoms:
- ``priors`` (1, 2, P * 4): PriorBox's boxes then variances (the levels of
  a pyramid concatenated on axis 2), normalized ``[xmin, ymin, xmax, ymax]``;
- ``label`` (1, 1, G, 8): one row per ground-truth box ``[image, class,
  instance, xmin, ymin, xmax, ymax, difficult]``, normalized coordinates,
  class in ``1..num_classes - 1``; rows with image -1 are skipped
  (AnnotatedData's filler row when the batch has no box);
- ``data`` (N, ...): only its first axis is read, the number of images.

tops (P in PriorBox's order: rows, columns, then the anchors of a cell,
so they line up with Permute (0, 2, 3, 1) + Flatten of the heads):
- ``labels`` (N, P): 0 background, ``c`` in ``1..K`` the matched gt's
  class, -1 ignored (SigmoidFocalLoss's layout for ``(N, P * K)`` logits,
  with ``loss_param { ignore_label: -1 }``);
- ``bbox_targets`` (N, P * 4): the matched gt encoded against its anchor
  (``code_type``, divided by the anchor's variances: what DetectionOutput
  decodes); 0 where the anchor is not positive;
- ``bbox_inside_weights`` (N, P * 4): 1 on the four values of a positive
  anchor, else 0;
- ``bbox_outside_weights`` (N, P * 4): ``N / max(F, 1)`` on a positive
  anchor's values, else 0, with F the positives of the whole batch:
  SmoothL1Loss divides by N, so its loss is the sum over positives / F,
  RetinaNet's normalization of the box loss;
- ``fg_num`` (1,): F, the third bottom of SigmoidFocalLoss (which then
  divides by max(F, 1)).

Parameters, read from ``multibox_loss_param`` (the schema's message for
SSD-style matching; no message of its own):
- ``num_classes`` (required): classes including the background (K + 1);
- ``background_label_id``: must be 0 (labels are Detectron's: 0 background);
- ``overlap_threshold`` (0.5): IoU at or above which an anchor is positive;
- ``neg_overlap`` (proto default 0.5; RetinaNet 0.4): an anchor that is not
  positive is ignored when its largest IoU with a gt is at or above this,
  background below it (RetinaNet's [0.4, 0.5) band);
- ``match_type`` (PER_PREDICTION): Caffe-SSD's matching
  (layers/multibox_match.py): a bipartite step gives every gt its best free
  anchor (RetinaNet's "low-quality" matches, so every gt has a positive
  even below the threshold), then PER_PREDICTION makes every other anchor
  with IoU >= overlap_threshold a positive of its best gt. BIPARTITE keeps
  only the first step (other anchors in the band or above it are ignored);
- ``code_type`` (proto default CORNER; RetinaNet and SSD use CENTER_SIZE);
- ``use_difficult_gt`` (true): false drops the rows marked difficult;
- ``ignore_cross_boundary_bbox`` (false): true ignores (-1) every anchor
  reaching outside [0, 1], in every image.
Other multibox_loss_param fields (mining, loss types, weights) are not read.
Departure from Detectron: a gt's low-quality match is one anchor (the
bipartite step), where Detectron takes every anchor tied at the gt's best
IoU; when two gt boxes share a best anchor the second takes its next best.

An image without a gt box has every anchor background (it still trains
the classifier, as in RetinaNet). ``num_classes`` is exposed as an
attribute (the training session checks the dataset against it).

Devices: matching and encoding run on the host in float64 (as Caffe-SSD's
MultiBoxLoss does; one vectorized step per image and, inside
``match_boxes``, per gt box, never per anchor), and the tops are copied to
the layer's device. There is no CUDA kernel, so no host-run kernel test. No
gradient: the targets are constants of the pass.
"""
import numpy as np

from layers.base import NoGradientLayer, register
from layers.multibox_match import (BIPARTITE, PER_PREDICTION, crosses_boundary, encode_boxes,
                                   iou_matrix, label_rows, match_boxes, refuse_bad_rows)
from netdef.device import array_module, to_numpy


def gt_rows(layer, rows, num, num_classes, use_difficult):
    """Per image of ``num``: (boxes (G_i, 4) float64, classes (G_i,) int64)
    from label rows (..., 8); a DataError naming ``layer`` and the first bad
    row (image index, class, coordinates)."""
    rows = label_rows(rows, use_difficult)
    image, label = rows[:, 0], rows[:, 1]
    problems = (
        ((image < 0) | (image >= num) | (image != np.floor(image)),
         f"an image index in [0, {num}) (the images of the batch) or -1"),
        ((label < 1) | (label >= num_classes) | (label != np.floor(label)),
         f"a class in [1, {num_classes}) (num_classes {num_classes} counts the background "
         "0, which a gt box cannot have)"),
        (~np.isfinite(rows[:, 3:7]).all(axis=1), "finite box coordinates"),
    )
    refuse_bad_rows(rows, problems, f"{layer.where}: bottom '{layer.bottom_name(1)}'")
    image, label = image.astype(np.int64), label.astype(np.int64)
    return [(rows[image == i, 3:7], label[image == i]) for i in range(num)]


@register("RetinaNetTarget")
class RetinaNetTargetLayer(NoGradientLayer):
    """See the module docstring. bottoms: priors (1, 2, P * 4), label
    (1, 1, G, 8), data (N, ...); tops: labels (N, P), bbox_targets,
    bbox_inside_weights, bbox_outside_weights (N, P * 4), fg_num (1,)."""

    exact_bottoms = 3
    exact_tops = 5

    def layer_setup(self, bottoms, tops):
        p = self.param.multibox_loss_param
        if not p.HasField("num_classes") or p.num_classes < 2:
            found = p.num_classes if p.HasField("num_classes") else "none"
            raise self.definition_error(
                "multibox_loss_param.num_classes is required and >= 2 (the object classes "
                f"plus the background), found {found}")
        if p.background_label_id != 0:
            raise self.definition_error(
                "multibox_loss_param.background_label_id must be 0 (labels are 0 background, "
                f"1..K the classes, as SigmoidFocalLoss reads them), found "
                f"{p.background_label_id}")
        self.num_classes = int(p.num_classes)
        self.positive, self.negative = float(p.overlap_threshold), float(p.neg_overlap)
        if not 0 < self.positive <= 1 or not 0 <= self.negative <= self.positive:
            raise self.definition_error(
                "expected 0 <= multibox_loss_param.neg_overlap <= overlap_threshold <= 1 and "
                f"overlap_threshold > 0, found neg_overlap {self.negative:g}, overlap_threshold "
                f"{self.positive:g}")
        self.match_type = int(p.match_type)
        if self.match_type not in (BIPARTITE, PER_PREDICTION):
            raise self.definition_error(f"unknown match_type {self.match_type}")
        self.code_type = int(p.code_type)
        self.use_difficult = bool(p.use_difficult_gt)
        self.ignore_cross = bool(p.ignore_cross_boundary_bbox)

    def reshape(self, bottoms, tops):
        prior, label, data = (tuple(b.shape) for b in bottoms)
        if len(prior) != 3 or prior[:2] != (1, 2) or prior[2] % 4 or prior[2] == 0:
            raise self.shape_error(0, "(1, 2, P * 4): PriorBox's boxes and variances", prior)
        if len(label) != 4 or label[:2] != (1, 1) or label[3] != 8:
            raise self.shape_error(
                1, "(1, 1, G, 8): rows [image, class, instance, xmin, ymin, xmax, ymax, "
                   "difficult]", label)
        if len(data) < 1 or data[0] < 1:
            raise self.shape_error(2, "(N, ...) with N >= 1 images", data)
        self.num, self.num_priors = data[0], prior[2] // 4
        tops[0].reshape((self.num, self.num_priors))
        for top in tops[1:4]:
            top.reshape((self.num, self.num_priors * 4))
        tops[4].reshape((1,))

    def targets(self, priors, rows):
        """Host float64 arrays (labels (N, P), box targets (N, P, 4),
        positive mask (N, P)) from priors (2, P, 4) and label rows."""
        gt = gt_rows(self, rows, self.num, self.num_classes, self.use_difficult)
        labels = np.zeros((self.num, self.num_priors))
        boxes_out = np.zeros((self.num, self.num_priors, 4))
        outside = crosses_boundary(priors[0]) if self.ignore_cross else None
        for i, (boxes, classes) in enumerate(gt):  # per image; vectorized inside
            if not len(boxes):
                continue
            match, best = match_boxes(iou_matrix(priors[0], boxes), self.match_type,
                                      self.positive, outside)
            positive = match >= 0
            ignored = ~positive & ((match == -2) | (best >= self.negative))
            labels[i] = np.where(positive, classes[np.maximum(match, 0)],
                                 np.where(ignored, -1, 0))
            boxes_out[i, positive] = encode_boxes(priors[0][positive], priors[1][positive],
                                                  boxes[match[positive]], self.code_type)
        if outside is not None:
            labels[:, outside] = -1
        return labels, boxes_out, labels > 0

    def _forward(self, bottoms, tops):
        priors = to_numpy(bottoms[0].data).astype(np.float64).reshape(2, self.num_priors, 4)
        labels, boxes, positive = self.targets(priors, to_numpy(bottoms[1].data))
        fg = int(positive.sum())
        inside = np.repeat(positive, 4, axis=1).astype(np.float64)
        xp, dtype = array_module(bottoms[0].data), tops[0].data.dtype
        values = (labels, boxes.reshape(self.num, -1), inside,
                  inside * (self.num / max(fg, 1)), np.array([fg]))
        for top, value in zip(tops, values):
            top.data[...] = xp.asarray(value, dtype=dtype)

    forward_cpu = forward_gpu = _forward
