"""Anchor-target and proposal-target sampling as pure functions.

Box arrays in, targets out: no layer, no blob. The AnchorTarget and
ProposalTarget layers call these, and so does the RoIData layer's input
pipeline for the precomputed-RoI form, so both forms sample with the same
code. As ChainerCV's target creators, each is a plain class holding its
hyperparameters (checked in ``__init__``; a bad value raises ``ValueError``
with the message the layers turn into a ``NetDefinitionError``), called
with the boxes and the NumPy generator to draw from.

Label codes: ``LABEL_FG`` 1 (foreground), ``LABEL_BG`` 0 (background),
``LABEL_IGNORE`` -1 (ignored). Boxes are ``[x1, y1, x2, y2]`` in inclusive
pixel coordinates. IoU and targets use the array module of the inputs
(NumPy or CuPy, in float64, as the reference); the random choice runs on
the host.
"""
import numpy as np

from layers.boxes import bbox_overlaps, bbox_transform
from netdef.device import array_module, to_numpy
from netdef.errors import DataError

__all__ = ["LABEL_FG", "LABEL_BG", "LABEL_IGNORE", "DEFAULT_MEANS", "DEFAULT_STDS",
           "AnchorTargetCreator", "ProposalTargetCreator"]

LABEL_FG, LABEL_BG, LABEL_IGNORE = 1, 0, -1

#: Box-target normalization of the reference detectors.
DEFAULT_MEANS = (0.0, 0.0, 0.0, 0.0)
DEFAULT_STDS = (0.1, 0.1, 0.2, 0.2)


def _check_fraction(fg_fraction):
    if not 0 <= fg_fraction <= 1:
        raise ValueError(f"fg_fraction must lie in [0, 1], found {fg_fraction}")


class AnchorTargetCreator:
    """The RPN's labels and box targets for the anchors of one image
    (py-faster-rcnn's rpn/anchor_target_layer.py).

    Only anchors inside the image by ``allowed_border`` pixels are labelled
    (others are ignored with zero targets); background where the best IoU <
    ``negative_overlap``; foreground where it is >= ``positive_overlap`` and,
    for each gt box, every anchor whose IoU equals that box's best IoU (all
    ties, as the reference); ``clobber_positives`` applies the background
    rule last. Then foreground is randomly cut down to ``fg_fraction *
    batch_size`` and background to ``batch_size - #fg`` (the cut anchors
    become ignored). Outside weights: ``1 / (labelled anchors)`` for every
    labelled anchor when ``positive_weight < 0``, else ``positive_weight /
    #fg`` and ``(1 - positive_weight) / #bg``.

    One deliberate departure: a gt box whose best IoU is 0 (it overlaps no
    inside anchor) marks no anchor. With no gt boxes, every inside anchor is
    background (subsampled) and all targets are 0.
    """

    def __init__(self, batch_size=256, fg_fraction=0.5, positive_overlap=0.7,
                 negative_overlap=0.3, clobber_positives=False, positive_weight=-1.0,
                 allowed_border=0.0):
        self.batch_size = int(batch_size)
        self.fg_fraction = float(fg_fraction)
        self.positive_overlap = float(positive_overlap)
        self.negative_overlap = float(negative_overlap)
        self.clobber_positives = bool(clobber_positives)
        self.positive_weight = float(positive_weight)
        self.allowed_border = float(allowed_border)
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, found {self.batch_size}")
        _check_fraction(self.fg_fraction)
        if self.positive_weight >= 0 and not 0 < self.positive_weight < 1:
            raise ValueError(
                "positive_weight must be negative (uniform weights) or lie in (0, 1), "
                f"found {self.positive_weight}")

    def __call__(self, anchors, gt_boxes, im_size, rng):
        """Targets of ``anchors`` ``(N, 4)`` float64 for ``gt_boxes``
        ``(G, 4)`` float64 in an image of ``im_size`` ``(height, width)``,
        drawing from ``rng`` (a NumPy Generator).

        Returns ``labels`` ``(N,)`` int8, ``bbox_targets``,
        ``bbox_inside_weights`` and ``bbox_outside_weights`` ``(N, 4)``
        float64, on the device of ``anchors``.
        """
        xp = array_module(anchors)
        im_height, im_width = (float(v) for v in im_size)
        total = anchors.shape[0]
        border = self.allowed_border
        inside = xp.flatnonzero((anchors[:, 0] >= -border) & (anchors[:, 1] >= -border) &
                                (anchors[:, 2] < im_width + border) &
                                (anchors[:, 3] < im_height + border))
        labels = xp.full(total, LABEL_IGNORE, dtype=np.int8)
        targets = xp.zeros((total, 4), dtype=np.float64)
        inside_w = xp.zeros((total, 4), dtype=np.float64)
        outside_w = xp.zeros((total, 4), dtype=np.float64)
        if inside.size:
            anchors_in = anchors[inside]
            lab, matched = self._label(anchors_in, gt_boxes, xp)
            lab = self._subsample(lab, xp, rng)
            labels[inside] = lab
            if matched is not None:
                targets[inside] = bbox_transform(anchors_in, matched)
            fg, bg = lab == LABEL_FG, lab == LABEL_BG
            ones = xp.ones((1, 4), dtype=np.float64)
            inside_w[inside] = fg[:, None] * ones
            outside_w[inside] = self._outside_weights(fg, bg, xp)[:, None] * ones
        return labels, targets, inside_w, outside_w

    def _label(self, anchors, gt, xp):
        """Labels before sampling ``(n,)`` int8 and each anchor's best gt box
        ``(n, 4)`` (None without gt boxes)."""
        n = anchors.shape[0]
        labels = xp.full(n, LABEL_IGNORE, dtype=np.int8)
        if gt.shape[0] == 0:
            labels[:] = LABEL_BG if 0.0 < self.negative_overlap else LABEL_IGNORE
            return labels, None
        overlaps = bbox_overlaps(anchors, gt)                   # (n, G)
        best_gt = overlaps.argmax(axis=1)
        best = overlaps.max(axis=1)
        gt_best = overlaps.max(axis=0)                          # (G,)
        # every anchor tied at some gt box's best IoU (a positive one)
        is_gt_best = ((overlaps == gt_best[None, :]) & (gt_best[None, :] > 0)).any(axis=1)
        negative = best < self.negative_overlap
        if not self.clobber_positives:
            labels[negative] = LABEL_BG
        labels[is_gt_best | (best >= self.positive_overlap)] = LABEL_FG
        if self.clobber_positives:
            labels[negative] = LABEL_BG
        return labels, gt[best_gt]

    def _subsample(self, labels, xp, rng):
        """Disable random foreground beyond ``fg_fraction * batch_size`` and
        background beyond ``batch_size - #fg`` (host-side choice)."""
        host = to_numpy(labels).copy()
        fg = np.flatnonzero(host == LABEL_FG)
        max_fg = int(self.fg_fraction * self.batch_size)
        if fg.size > max_fg:
            host[rng.choice(fg, size=fg.size - max_fg, replace=False)] = LABEL_IGNORE
        bg = np.flatnonzero(host == LABEL_BG)
        max_bg = self.batch_size - int(np.count_nonzero(host == LABEL_FG))
        if bg.size > max_bg:
            host[rng.choice(bg, size=bg.size - max_bg, replace=False)] = LABEL_IGNORE
        return xp.asarray(host)

    def _outside_weights(self, fg, bg, xp):
        num_fg, num_bg = int(fg.sum()), int(bg.sum())
        if self.positive_weight < 0:
            examples = num_fg + num_bg
            w_fg = w_bg = 1.0 / examples if examples else 0.0
        else:
            w_fg = self.positive_weight / num_fg if num_fg else 0.0
            w_bg = (1.0 - self.positive_weight) / num_bg if num_bg else 0.0
        return xp.where(fg, w_fg, xp.where(bg, w_bg, 0.0))


class ProposalTargetCreator:
    """Sample foreground and background RoIs of one image and give them
    labels and box regression targets (py-faster-rcnn's
    rpn/proposal_target_layer.py, py-R-FCN's variant).

    The gt boxes are appended to the RoIs; foreground has best IoU >=
    ``fg_thresh``, background best IoU in ``[bg_thresh_lo, bg_thresh_hi)``
    (RoIs in neither are dropped). Foreground is sampled without replacement
    up to ``round(fg_fraction * batch_size)``, background fills the rest of
    ``batch_size``; ``batch_size`` -1 keeps every foreground and background
    RoI (OHEM), in a random order like the reference. Box targets are
    ``(bbox_transform(roi, gt) - mean) / std`` with ``normalize`` (the
    reference's BBOX_NORMALIZE_TARGETS_PRECOMPUTED), else unnormalized; they
    sit at columns ``4 * slot .. 4 * slot + 3`` of ``C`` columns, ``slot``
    the class (``C = 4 * num_classes``) or, ``class_agnostic``, 1 (``C =
    8``: background box then foreground box, as py-R-FCN).
    """

    def __init__(self, num_classes, batch_size=128, fg_fraction=0.25, fg_thresh=0.5,
                 bg_thresh_hi=0.5, bg_thresh_lo=0.1, normalize=False, means=DEFAULT_MEANS,
                 stds=DEFAULT_STDS, class_agnostic=False):
        self.num_classes = int(num_classes)
        self.batch_size = int(batch_size)
        self.fg_fraction = float(fg_fraction)
        self.fg_thresh = float(fg_thresh)
        self.bg_thresh_hi = float(bg_thresh_hi)
        self.bg_thresh_lo = float(bg_thresh_lo)
        self.normalize = bool(normalize)
        self.means = np.asarray(means, np.float64)
        self.stds = np.asarray(stds, np.float64)
        self.class_agnostic = bool(class_agnostic)
        if self.num_classes < 2:
            raise ValueError(f"needs num_classes >= 2 (background included), "
                             f"found {self.num_classes}")
        if self.batch_size == 0 or self.batch_size < -1:
            raise ValueError(
                f"batch_size must be positive or -1 (keep all), found {self.batch_size}")
        _check_fraction(self.fg_fraction)
        if self.means.shape != (4,) or self.stds.shape != (4,) or np.any(self.stds <= 0):
            raise ValueError(
                "bbox_normalize_means and bbox_normalize_stds need 4 values each, the stds "
                f"positive; found means {self.means.tolist()}, stds {self.stds.tolist()}")
        self.width = 8 if self.class_agnostic else 4 * self.num_classes

    def max_count(self, num_rois, num_gt):
        """The most RoIs a call can return for ``num_rois`` RoIs and
        ``num_gt`` gt boxes."""
        candidates = num_rois + num_gt
        return candidates if self.batch_size < 0 else min(self.batch_size, candidates)

    def __call__(self, rois, gt_boxes, rng, source="gt_boxes"):
        """Sample ``rois`` ``(R, 5)`` ``[batch_index, x1, y1, x2, y2]`` (one
        image) against ``gt_boxes`` ``(G, 5)`` ``[x1, y1, x2, y2, class]``,
        drawing from ``rng`` (a NumPy Generator).

        Returns ``(rois (M, 5), labels (M,), bbox_targets (M, C),
        bbox_inside_weights (M, C), bbox_outside_weights (M, C))``,
        foreground first, on the device of ``rois``: rois in their dtype,
        the rest float64. A foreground gt class outside ``[0, num_classes)``
        (class-aware regression) raises ``DataError`` starting with
        ``source``.
        """
        xp = array_module(rois)
        gt = gt_boxes
        num_gt = gt.shape[0]
        gt_rois = xp.concatenate([xp.zeros((num_gt, 1), dtype=rois.dtype),
                                  gt[:, :4].astype(rois.dtype)], axis=1)
        all_rois = xp.concatenate([rois, gt_rois], axis=0)      # (R + G, 5)
        gt_coords = gt[:, :4].astype(np.float64)
        if num_gt:
            overlaps = bbox_overlaps(all_rois[:, 1:5].astype(np.float64), gt_coords)
            assignment = overlaps.argmax(axis=1)
            best = overlaps.max(axis=1)
        else:
            assignment = xp.zeros(all_rois.shape[0], dtype=np.int64)
            best = xp.zeros(all_rois.shape[0], dtype=np.float64)

        keep, num_fg = self._sample(to_numpy(best), rng)
        gt_classes = to_numpy(gt[:, 4]) if num_gt else np.zeros(1)
        labels = gt_classes[to_numpy(assignment)[keep]] if keep.size else np.zeros(0)
        labels[num_fg:] = 0
        self._check_classes(labels[:num_fg], source)

        keep_x = xp.asarray(keep)
        count = keep.size
        targets = xp.zeros((count, self.width), dtype=np.float64)
        inside = xp.zeros((count, self.width), dtype=np.float64)
        outside = xp.zeros((count, self.width), dtype=np.float64)
        regress = np.flatnonzero(labels[:num_fg] > 0)           # foreground rows with a class
        if regress.size:
            rows_x = xp.asarray(regress)
            sources = all_rois[keep_x[rows_x], 1:5].astype(np.float64)
            deltas = bbox_transform(sources, gt_coords[assignment[keep_x[rows_x]]])
            if self.normalize:
                deltas = (deltas - xp.asarray(self.means)) / xp.asarray(self.stds)
            slots = np.ones(regress.size, np.int64) if self.class_agnostic \
                else labels[regress].astype(np.int64)
            cols = xp.asarray(4 * slots[:, None] + np.arange(4)[None, :])
            targets[rows_x[:, None], cols] = deltas
            inside[rows_x[:, None], cols] = 1
            outside[rows_x[:, None], cols] = 1
        return all_rois[keep_x], xp.asarray(labels), targets, inside, outside

    def _sample(self, best, rng):
        """Host-side sampling: (indices of the kept RoIs, fg first; #fg)."""
        fg = np.flatnonzero(best >= self.fg_thresh)
        bg = np.flatnonzero((best < self.bg_thresh_hi) & (best >= self.bg_thresh_lo))
        if self.batch_size < 0:
            num_fg, num_bg = fg.size, bg.size
        else:
            num_fg = min(int(np.round(self.fg_fraction * self.batch_size)), fg.size)
            num_bg = min(self.batch_size - num_fg, bg.size)
        # choice without replacement even when everything is kept: the order
        # is random, as in the reference
        fg = rng.choice(fg, size=num_fg, replace=False) if fg.size else fg
        bg = rng.choice(bg, size=num_bg, replace=False) if bg.size else bg
        return np.concatenate([fg, bg]).astype(np.int64), num_fg

    def _check_classes(self, fg_labels, source):
        if self.class_agnostic or fg_labels.size == 0:
            return
        bad = (fg_labels < 0) | (fg_labels >= self.num_classes) | (fg_labels != np.round(fg_labels))
        if bad.any():
            raise DataError(
                f"{source} has class {fg_labels[bad][0]:g}, expected an integer in "
                f"[0, {self.num_classes}) (num_classes {self.num_classes})")
