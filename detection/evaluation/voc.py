"""PASCAL VOC AP: the VOC07 11-point and the area metric.

VOC rules (``voc_eval`` / VOCevaldet):

- the detections of a class are ranked by score, descending; equal scores
  keep their input order (image order, then row order), a stable sort;
- a detection is compared with every ground-truth box of its class in its
  image (difficult or not, matched or not) and takes the one of highest IoU
  (the first in record order on ties);
- IoU ``> iou_threshold`` (strictly, as ``ovmax > ovthresh``): if that box is
  difficult the detection is ignored (neither TP nor FP); if it is already
  matched by a higher-ranked detection, FP; otherwise TP and the box becomes
  matched. IoU ``<= iou_threshold`` or no box: FP;
- ``npos`` counts the non-difficult boxes. Recall is ``tp / npos``,
  precision ``tp / max(tp + fp, eps)`` (ignored detections stay on the curve
  as repeated points, as in ``voc_eval``).
- A class with ``npos == 0`` has recall and AP ``nan`` under both metrics,
  and the mean AP is taken over the classes with ``npos > 0``. (``voc_eval``
  itself gives recall ``0 / 0 = nan`` there, and then AP 0 under the VOC07
  metric but ``nan`` under the area metric; reporting ``nan`` for both keeps
  a class that cannot be scored out of the mean instead of counting it as 0.
  With no detections and ``npos > 0`` the AP is 0, as in ``voc_eval``.)

Why the VOC matching vectorizes: the box a detection is compared with (the
highest-IoU box of its class in its image) does not depend on which boxes are
already matched. So the whole decision is: compute each detection's best box
with one segmented max over (detection, box) pairs, then, in rank order, the
first detection that claims a given non-difficult box is its TP and every
later one is a duplicate FP -- a ``np.unique(..., return_index=True)`` over
the ranked claims. No loop over images or detections.
"""
import dataclasses
import math

import numpy as np

from detection.evaluation.flat import (dataset_parts, gather_detections, gather_ground_truth,
                                    nanmean, pair_iou, pairs)

__all__ = ["voc_ap", "evaluate_voc", "VOCResult", "VOC07_RECALL_POINTS"]

#: The 11 recall thresholds of the VOC07 metric, computed as ``voc_eval``
#: does (``np.arange(0., 1.1, 0.1)``), so threshold 3 is 0.30000000000000004
#: and a recall of exactly 3/10 does not reach it -- the same numbers as
#: py-faster-rcnn reports.
VOC07_RECALL_POINTS = np.arange(0.0, 1.1, 0.1)


def voc_ap(recall, precision, use_07_metric=True):
    """Average precision of one precision/recall curve.

    Args:
        recall, precision: ``(n,)`` arrays, one point per ranked detection.
        use_07_metric: True for VOC2007's 11-point interpolated AP (the mean
            over ``t = 0, 0.1, ..., 1`` of the highest precision at a recall
            ``>= t``, 0 where no point reaches ``t``); False for the area
            metric of VOC2010 and later (the area under the precision
            envelope, summed over the steps of recall, with the curve
            extended to recall 0 and 1 at precision 0).

    Returns a float. As in ``voc_eval``: NaN recalls never reach a threshold
    (VOC07) and propagate into the area metric.
    """
    recall = np.asarray(recall, dtype=np.float64).reshape(-1)
    precision = np.asarray(precision, dtype=np.float64).reshape(-1)
    if recall.shape != precision.shape:
        raise ValueError(f"voc_ap: recall has {recall.size} points and precision "
                         f"{precision.size}; expected the same number")
    if use_07_metric:
        reached = recall[None, :] >= VOC07_RECALL_POINTS[:, None]      # (11, n)
        best = np.where(reached, precision[None, :], -np.inf).max(axis=1, initial=-np.inf)
        return float(np.where(np.isneginf(best), 0.0, best).sum() / 11.0)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    # precision envelope: the best precision at this recall or any higher one
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


@dataclasses.dataclass(frozen=True, eq=False)
class VOCResult:
    """PASCAL VOC evaluation of every foreground class (K = C - 1 of them).

    Attributes:
        classes: the K foreground class names (``dataset.classes[1:]``).
        ap_07, ap_area: ``(K,)`` AP under the VOC07 11-point and the area
            metric; ``nan`` for a class with no non-difficult box.
        recall: ``(K,)`` recall after the last detection (``nan`` where
            ``npos == 0``).
        npos: ``(K,)`` non-difficult ground-truth boxes.
        num_detections: ``(K,)`` detections scored.
        curves: K ``(recall (n,), precision (n,))`` pairs, in rank order.
        iou_threshold: a detection needs IoU strictly above it.
        use_07_metric: which metric ``ap`` and ``mean_ap`` report.
    """
    classes: tuple
    ap_07: np.ndarray
    ap_area: np.ndarray
    recall: np.ndarray
    npos: np.ndarray
    num_detections: np.ndarray
    curves: tuple
    iou_threshold: float
    use_07_metric: bool

    @property
    def ap(self):
        """``(K,)`` AP under the chosen metric."""
        return self.ap_07 if self.use_07_metric else self.ap_area

    @property
    def mean_ap(self):
        """mAP under the chosen metric, over classes with ``npos > 0``."""
        return nanmean(self.ap)

    @property
    def mean_ap_07(self):
        return nanmean(self.ap_07)

    @property
    def mean_ap_area(self):
        return nanmean(self.ap_area)

    def as_dict(self):
        """A JSON-ready summary (NaN written as None)."""
        def clean(values):
            return [None if math.isnan(v) else float(v) for v in np.asarray(values, float)]
        return {
            "metric": "voc07" if self.use_07_metric else "voc_area",
            "iou_threshold": self.iou_threshold,
            "mean_ap": clean([self.mean_ap])[0],
            "mean_ap_07": clean([self.mean_ap_07])[0],
            "mean_ap_area": clean([self.mean_ap_area])[0],
            "classes": list(self.classes),
            "ap_07": clean(self.ap_07),
            "ap_area": clean(self.ap_area),
            "recall": clean(self.recall),
            "npos": [int(n) for n in self.npos],
            "num_detections": [int(n) for n in self.num_detections],
        }


def evaluate_voc(dataset, all_boxes, iou_threshold=0.5, use_07_metric=True):
    """PASCAL VOC AP of every class (rules in the module docstring).

    Args:
        dataset: a DetectionDataset (``classes``, ``records`` with ``boxes``,
            ``labels``, ``difficult``).
        all_boxes: ``all_boxes[c][i]`` ``(N, 5)`` ``[x1, y1, x2, y2, score]``.
        iou_threshold: a match needs IoU strictly greater than this.
        use_07_metric: the metric of ``result.ap`` / ``result.mean_ap``; both
            metrics are always computed.

    Returns a VOCResult.
    """
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1]; got {iou_threshold}")
    classes, records = dataset_parts(dataset)
    num_classes, num_images = len(classes), len(records)
    dets = gather_detections(dataset, all_boxes)
    gts = gather_ground_truth(dataset)
    tp_ranked, fp_ranked, rank = _match(dets, gts, num_images, iou_threshold)
    difficult = np.asarray(gts.extra, dtype=bool)
    npos = np.bincount(gts.cls[~difficult], minlength=num_classes)[1:] if gts.cls.size \
        else np.zeros(num_classes - 1, dtype=np.int64)
    bounds = np.searchsorted(dets.cls[rank], np.arange(1, num_classes + 1))
    ap_07, ap_area, recall, num_det, curves = [], [], [], [], []
    for k in range(num_classes - 1):            # per class: a small fixed count
        lo, hi = bounds[k], bounds[k + 1]
        rec, prec = _curve(tp_ranked[lo:hi], fp_ranked[lo:hi], npos[k])
        curves.append((rec, prec))
        num_det.append(hi - lo)
        if npos[k] == 0:
            ap_07.append(math.nan)
            ap_area.append(math.nan)
            recall.append(math.nan)
            continue
        ap_07.append(voc_ap(rec, prec, use_07_metric=True))
        ap_area.append(voc_ap(rec, prec, use_07_metric=False))
        recall.append(float(rec[-1]) if rec.size else 0.0)
    return VOCResult(classes=classes[1:], ap_07=np.asarray(ap_07, dtype=np.float64),
                     ap_area=np.asarray(ap_area, dtype=np.float64),
                     recall=np.asarray(recall, dtype=np.float64),
                     npos=np.asarray(npos, dtype=np.int64),
                     num_detections=np.asarray(num_det, dtype=np.int64),
                     curves=tuple(curves), iou_threshold=float(iou_threshold),
                     use_07_metric=bool(use_07_metric))


def _match(dets, gts, num_images, iou_threshold):
    """Every detection as TP or FP (``tp_ranked``, ``fp_ranked``: (D,) bool,
    in rank order) and the ranking ``rank`` (D,): class-major, score
    descending, input order on ties. Ignored detections are neither."""
    num_dets = dets.cls.size
    # Each detection's best box: among the boxes of its class in its image, in
    # record order, the highest IoU (first on ties, like np.argmax).
    det_key = dets.cls * num_images + dets.img
    gt_key = gts.cls * num_images + gts.img
    pair_det, pair_gt, counts, offsets = pairs(det_key, gt_key, np.argsort(gt_key, kind="stable"))
    iou = pair_iou(dets.box[pair_det], gts.box[pair_gt])
    has_gt = counts > 0
    starts = offsets[has_gt]
    ovmax = np.full(num_dets, -np.inf)
    jmax = np.zeros(num_dets, dtype=np.int64)
    if starts.size:
        ovmax[has_gt] = np.maximum.reduceat(iou, starts)
        position = np.where(iou == ovmax[pair_det], np.arange(iou.size), iou.size)
        first_best = np.minimum(np.minimum.reduceat(position, starts), iou.size - 1)
        jmax[has_gt] = pair_gt[first_best]
    above = ovmax > iou_threshold
    difficult = np.asarray(gts.extra, dtype=bool)
    ignored = above & difficult[jmax] if difficult.size else np.zeros(num_dets, bool)
    claims = above & ~ignored

    rank = np.lexsort((-dets.extra, dets.cls))
    claims_ranked = claims[rank]
    claimers = np.flatnonzero(claims_ranked)
    tp_ranked = np.zeros(num_dets, dtype=bool)
    # The first claim of a box in rank order is its true positive; boxes are
    # per class, so ranking classes one after another changes nothing.
    _, first_claim = np.unique(jmax[rank][claimers], return_index=True)
    tp_ranked[claimers[first_claim]] = True
    fp_ranked = ~above[rank] | (claims_ranked & ~tp_ranked)
    return tp_ranked, fp_ranked, rank


def _curve(tp_ranked, fp_ranked, npos):
    """Recall and precision ``(n,)`` of one class's ranked detections."""
    tp = np.cumsum(tp_ranked, dtype=np.float64)
    fp = np.cumsum(fp_ranked, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = tp / float(npos) if npos else np.full(tp.shape, np.nan)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return rec, prec
