"""COCO-style box AP (AP@[.5:.95], AP50, AP75).

COCO rules (pycocotools' ``evaluateImg`` / ``accumulate``, bounding boxes,
area range "all", ``maxDets`` 100): difficult boxes play the part of COCO's
crowd boxes (ignored: never counted, detections matched to them ignored,
IoU with them is intersection over the detection's area, and they can absorb
any number of detections). Per image and class the detections are ranked by
score (stable) and cut to ``max_dets``; each, in rank order, takes the
unmatched non-ignored box of highest IoU ``>= t`` (the last in order on ties,
as pycocotools' ``<`` comparison does), or failing that an ignored box the
same way. That greedy choice does depend on what is already matched, so it
runs as a loop over the rank within an image (at most ``max_dets`` steps),
each step vectorized over every image, class and IoU threshold at once.
Precision is interpolated at the 101 recall points ``0, 0.01, ..., 1`` and
averaged; classes with no non-ignored box are left out of the means.
"""
import dataclasses
import math

import numpy as np

from detection.evaluation.flat import (dataset_parts, gather_detections, gather_ground_truth,
                                    nanmean, pair_iou, pairs)

__all__ = ["evaluate_coco", "COCOResult", "COCO_IOU_THRESHOLDS", "COCO_RECALL_POINTS"]

#: pycocotools' ``iouThrs``: 0.5, 0.55, ..., 0.95.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)
#: pycocotools' ``recThrs``: 0, 0.01, ..., 1.
COCO_RECALL_POINTS = np.linspace(0.0, 1.0, int(np.round(1.0 / 0.01)) + 1)


@dataclasses.dataclass(frozen=True, eq=False)
class COCOResult:
    """COCO-style box AP of every foreground class (K = C - 1 of them).

    Attributes:
        classes: the K foreground class names.
        iou_thresholds: ``(T,)`` 0.5, 0.55, ..., 0.95.
        precision: ``(T, 101, K)`` interpolated precision at the recall points
            ``0, 0.01, ..., 1``; ``nan`` for a class with no non-ignored box.
        recall: ``(T, K)`` recall after the last detection (``nan`` likewise).
        num_gt: ``(K,)`` non-ignored (non-difficult / non-crowd) boxes.
        num_detections: ``(K,)`` detections scored (after the per-image cut).
        max_dets: detections kept per image and class.
    """
    classes: tuple
    iou_thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    num_gt: np.ndarray
    num_detections: np.ndarray
    max_dets: int

    @property
    def ap_per_class(self):
        """``(K,)`` AP averaged over IoU 0.5:0.95."""
        return self.precision.mean(axis=(0, 1))

    @property
    def ap50_per_class(self):
        return self.precision[self._threshold_index(0.5)].mean(axis=0)

    @property
    def ap75_per_class(self):
        return self.precision[self._threshold_index(0.75)].mean(axis=0)

    @property
    def ar_per_class(self):
        """``(K,)`` recall averaged over the IoU thresholds (AR@max_dets)."""
        return self.recall.mean(axis=0)

    @property
    def ap(self):
        """AP@[.5:.95]: the mean over classes with a box."""
        return nanmean(self.ap_per_class)

    @property
    def ap50(self):
        return nanmean(self.ap50_per_class)

    @property
    def ap75(self):
        return nanmean(self.ap75_per_class)

    @property
    def ar(self):
        return nanmean(self.ar_per_class)

    def _threshold_index(self, value):
        return int(np.argmin(np.abs(self.iou_thresholds - value)))

    def as_dict(self):
        def clean(values):
            return [None if math.isnan(v) else float(v) for v in np.asarray(values, float)]
        return {
            "metric": "coco", "max_dets": self.max_dets,
            "ap": clean([self.ap])[0], "ap50": clean([self.ap50])[0],
            "ap75": clean([self.ap75])[0], "ar": clean([self.ar])[0],
            "classes": list(self.classes),
            "ap_per_class": clean(self.ap_per_class),
            "ap50_per_class": clean(self.ap50_per_class),
            "ap75_per_class": clean(self.ap75_per_class),
            "num_gt": [int(n) for n in self.num_gt],
            "num_detections": [int(n) for n in self.num_detections],
        }


def evaluate_coco(dataset, all_boxes, max_dets=100, iou_thresholds=COCO_IOU_THRESHOLDS):
    """COCO box AP (AP@[.5:.95], AP50, AP75) of every class; rules in the
    module docstring. Returns a COCOResult."""
    classes, records = dataset_parts(dataset)
    num_classes, num_images = len(classes), len(records)
    if int(max_dets) < 1:
        raise ValueError(f"max_dets must be at least 1; got {max_dets}")
    max_dets = int(max_dets)
    thresholds = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
    dets = gather_detections(dataset, all_boxes)
    gts = gather_ground_truth(dataset)
    ignored_gt = np.asarray(gts.extra, dtype=bool)
    kept, d_rank = _keep_best(dets, num_images, max_dets)
    det_matched, det_ignored = _match(dets, kept, d_rank, gts, num_images, thresholds, max_dets)
    num_gt = np.bincount(gts.cls[~ignored_gt], minlength=num_classes)[1:] if gts.cls.size \
        else np.zeros(num_classes - 1, dtype=np.int64)
    precision, recall, num_det = _accumulate(dets, kept, d_rank, det_matched, det_ignored,
                                             num_gt, num_classes)
    return COCOResult(classes=classes[1:], iou_thresholds=thresholds, precision=precision,
                      recall=recall, num_gt=np.asarray(num_gt, dtype=np.int64),
                      num_detections=np.asarray(num_det, dtype=np.int64), max_dets=max_dets)


def _keep_best(dets, num_images, max_dets):
    """The detections kept (the best ``max_dets`` of each (class, image) by
    score, stable) in process order, and the rank of each within its
    (class, image)."""
    key = dets.cls * num_images + dets.img
    by_group = np.lexsort((-dets.extra, key))
    group_sorted = key[by_group]
    rank = np.empty(key.size, dtype=np.int64)
    rank[by_group] = np.arange(key.size) - np.searchsorted(group_sorted, group_sorted, side="left")
    kept = np.flatnonzero(rank < max_dets)
    # Process order: rank-major, so each step of the greedy loop below is one
    # contiguous block holding at most one detection per (class, image).
    kept = kept[np.lexsort((key[kept], rank[kept]))]
    return kept, rank[kept]


def _match(dets, kept, d_rank, gts, num_images, thresholds, max_dets):
    """The greedy matching of the kept detections at every IoU threshold:
    ``(matched, ignored)``, each ``(T, kept)`` bool."""
    d_key = (dets.cls * num_images + dets.img)[kept]
    d_box = dets.box[kept]
    ignored_gt = np.asarray(gts.extra, dtype=bool)
    num_t = thresholds.size
    # Boxes of a (class, image): non-ignored first, then record order.
    g_key = gts.cls * num_images + gts.img
    pair_det, pair_gt, counts, offsets = pairs(d_key, g_key, np.lexsort((ignored_gt, g_key)))
    iou = pair_iou(d_box[pair_det], gts.box[pair_gt], crowd=ignored_gt[pair_gt])
    limits = np.minimum(thresholds, 1 - 1e-10)[:, None]          # as pycocotools

    gt_taken = np.zeros((num_t, gts.cls.size), dtype=bool)
    det_matched = np.zeros((num_t, kept.size), dtype=bool)
    det_ignored = np.zeros((num_t, kept.size), dtype=bool)
    step_bounds = np.searchsorted(d_rank, np.arange(max_dets + 1))
    for step in range(max_dets):                 # at most max_dets steps
        lo, hi = step_bounds[step], step_bounds[step + 1]
        active = lo + np.flatnonzero(counts[lo:hi] > 0)
        if active.size == 0:
            continue
        p_lo = offsets[active[0]]
        p_hi = offsets[active[-1]] + counts[active[-1]]
        g = pair_gt[p_lo:p_hi]
        v = iou[p_lo:p_hi]
        starts = offsets[active] - p_lo
        owner = np.repeat(np.arange(active.size), counts[active])   # pair -> active det
        ig = ignored_gt[g]
        # crowd (ignored) boxes can take any number of detections
        eligible = (v[None, :] >= limits) & (ig[None, :] | ~gt_taken[:, g])     # (T, P)
        level = np.where(eligible, np.where(ig, 1, 2), 0)  # 2: real box, 1: crowd
        best_level = np.maximum.reduceat(level, starts, axis=1)               # (T, A)
        choice = eligible & (level == best_level[:, owner])
        masked = np.where(choice, v[None, :], -np.inf)
        best_iou = np.maximum.reduceat(masked, starts, axis=1)
        choice &= masked == best_iou[:, owner]
        last = np.maximum.reduceat(np.where(choice, np.arange(g.size), -1), starts, axis=1)
        t_idx, a_idx = np.nonzero(best_level > 0)
        won = g[last[t_idx, a_idx]]
        det_matched[t_idx, active[a_idx]] = True
        det_ignored[t_idx, active[a_idx]] = ignored_gt[won]
        gt_taken[t_idx, won] = True
    return det_matched, det_ignored


def _accumulate(dets, kept, d_rank, det_matched, det_ignored, num_gt, num_classes):
    """Interpolated precision ``(T, 101, K)``, recall ``(T, K)`` and the
    detections scored per class ``(K,)``; per class, score descending, ties
    in image order, then rank."""
    num_t = det_matched.shape[0]
    d_cls, d_img, d_score = dets.cls[kept], dets.img[kept], dets.extra[kept]
    order = np.lexsort((d_rank, d_img, -d_score, d_cls))
    bounds = np.searchsorted(d_cls[order], np.arange(1, num_classes + 1))
    precision = np.full((num_t, COCO_RECALL_POINTS.size, num_classes - 1), np.nan)
    recall = np.full((num_t, num_classes - 1), np.nan)
    for k in range(num_classes - 1):            # per class: a small fixed count
        if num_gt[k] == 0:
            continue
        columns = order[bounds[k]:bounds[k + 1]]
        counted = ~det_ignored[:, columns]
        tp = np.cumsum(det_matched[:, columns] & counted, axis=1, dtype=np.float64)
        fp = np.cumsum(~det_matched[:, columns] & counted, axis=1, dtype=np.float64)
        n = columns.size
        if n == 0:
            precision[:, :, k] = 0.0
            recall[:, k] = 0.0
            continue
        rc = tp / num_gt[k]
        pr = tp / (tp + fp + np.spacing(1))
        pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
        recall[:, k] = rc[:, -1]
        for t in range(num_t):                  # T = 10 thresholds
            at = np.searchsorted(rc[t], COCO_RECALL_POINTS, side="left")
            precision[t, :, k] = np.where(at < n, pr[t, np.minimum(at, n - 1)], 0.0)
    return precision, recall, np.diff(bounds)
