"""Detection metrics: PASCAL VOC AP (VOC07 11-point and area) and COCO AP.

Detections come in py-faster-rcnn's ``all_boxes`` layout: ``all_boxes[c][i]``
is an ``(N, 5)`` array ``[x1, y1, x2, y2, score]`` for class ``c``
(``1 .. C-1``; ``all_boxes[0]`` is unused) and image ``i`` (an index into
``dataset.records``). Ground truth is read from the dataset's records
(``boxes`` ``(G, 4)`` inclusive pixels, ``labels`` ``(G,)`` in ``1 .. C-1``,
``difficult`` ``(G,)``).

Boxes are in inclusive pixel coordinates, so widths are ``x2 - x1 + 1`` and
the IoU is computed with the ``+1`` convention (as the VOC devkit and
py-faster-rcnn's ``voc_eval`` do; for COCO it reproduces the IoU of the
``[x, y, w, h]`` boxes the inclusive boxes came from).

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
import json
import math
import os

import numpy as np

from netdef.errors import DataError
from netdef.snapshot_format import atomic_writer

__all__ = ["voc_ap", "evaluate_voc", "evaluate_coco", "VOCResult", "COCOResult",
           "format_table", "dump_detections", "load_detections",
           "COCO_IOU_THRESHOLDS", "COCO_RECALL_POINTS", "VOC07_RECALL_POINTS"]

#: The 11 recall thresholds of the VOC07 metric, computed as ``voc_eval``
#: does (``np.arange(0., 1.1, 0.1)``), so threshold 3 is 0.30000000000000004
#: and a recall of exactly 3/10 does not reach it -- the same numbers as
#: py-faster-rcnn reports.
VOC07_RECALL_POINTS = np.arange(0.0, 1.1, 0.1)
#: pycocotools' ``iouThrs``: 0.5, 0.55, ..., 0.95.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)
#: pycocotools' ``recThrs``: 0, 0.01, ..., 1.
COCO_RECALL_POINTS = np.linspace(0.0, 1.0, int(np.round(1.0 / 0.01)) + 1)


# ----------------------------------------------------------------------------
# AP from a precision/recall curve


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


# ----------------------------------------------------------------------------
# Gathering detections and ground truth into flat arrays


@dataclasses.dataclass(eq=False)
class _Flat:
    """Detections or boxes of every class and image, one row each.

    ``cls`` (n,) class index, ``img`` (n,) image index, ``box`` (n, 4)
    float64, ``score`` (n,) (detections) or ``difficult`` (n,) (ground truth).
    Detections are in (class, image, row) order; boxes in (image, row) order.
    """
    cls: np.ndarray
    img: np.ndarray
    box: np.ndarray
    extra: np.ndarray


def _dataset_parts(dataset):
    try:
        classes = tuple(dataset.classes)
        records = dataset.records
    except AttributeError as exc:
        raise DataError(f"evaluation needs a DetectionDataset (classes, records); "
                        f"got {type(dataset).__name__}: {exc}") from None
    return classes, records


def _dataset_name(dataset):
    return getattr(dataset, "name", "dataset")


def _gather_detections(dataset, all_boxes):
    """all_boxes -> _Flat with extra = score, validated."""
    classes, records = _dataset_parts(dataset)
    num_classes, num_images = len(classes), len(records)
    name = _dataset_name(dataset)
    try:
        num_lists = len(all_boxes)
    except TypeError:
        raise DataError(f"all_boxes must be a list of {num_classes} per-class lists; "
                        f"got {type(all_boxes).__name__}") from None
    if num_lists != num_classes:
        raise DataError(f"all_boxes has {num_lists} class lists; expected {num_classes} "
                        f"(one per class of {name}, index 0 unused)")
    chunks, cls_ids, img_ids, counts = [], [], [], []
    # A loop over the (class, image) cells of the list-of-lists layout is
    # inherent to it; everything inside is whole-array work.
    for c in range(1, num_classes):
        per_image = all_boxes[c]
        try:
            n = len(per_image)
        except TypeError:
            raise DataError(f"all_boxes[{c}] (class '{classes[c]}') must be a list of "
                            f"{num_images} arrays; got {type(per_image).__name__}") from None
        if n != num_images:
            raise DataError(f"all_boxes[{c}] (class '{classes[c]}') has {n} entries; "
                            f"expected {num_images} (one per image of {name})")
        for i, dets in enumerate(per_image):
            if dets is None:
                continue
            try:
                dets = np.asarray(dets, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise DataError(f"all_boxes[{c}][{i}] (class '{classes[c]}', image "
                                f"'{records[i].image_id}') is not a numeric array: {exc}") from None
            if dets.size == 0:
                continue
            if dets.ndim != 2 or dets.shape[1] != 5:
                raise DataError(f"all_boxes[{c}][{i}] (class '{classes[c]}', image "
                                f"'{records[i].image_id}') has shape {dets.shape}; expected "
                                f"(N, 5) rows [x1, y1, x2, y2, score]")
            chunks.append(dets)
            cls_ids.append(c)
            img_ids.append(i)
            counts.append(dets.shape[0])
    if chunks:
        rows = np.concatenate(chunks)
        counts = np.asarray(counts)
        cls = np.repeat(np.asarray(cls_ids, dtype=np.int64), counts)
        img = np.repeat(np.asarray(img_ids, dtype=np.int64), counts)
    else:
        rows = np.zeros((0, 5))
        cls = img = np.zeros(0, dtype=np.int64)
    bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
    if bad.size:
        k = bad[0]
        raise DataError(f"all_boxes[{cls[k]}][{img[k]}] (class '{classes[cls[k]]}', image "
                        f"'{records[img[k]].image_id}') has a non-finite value: {rows[k].tolist()}")
    return _Flat(cls=cls, img=img, box=rows[:, :4], extra=rows[:, 4])


def _gather_ground_truth(dataset):
    """records -> _Flat with extra = difficult (bool), validated."""
    classes, records = _dataset_parts(dataset)
    num_classes = len(classes)
    boxes = [np.asarray(r.boxes, dtype=np.float64).reshape(-1, 4) for r in records]
    labels = [np.asarray(r.labels).reshape(-1) for r in records]
    difficult = [np.asarray(r.difficult, dtype=bool).reshape(-1) for r in records]
    counts = np.asarray([b.shape[0] for b in boxes], dtype=np.int64)
    for i, r in enumerate(records):
        if labels[i].size != counts[i] or difficult[i].size != counts[i]:
            raise DataError(f"image '{r.image_id}' of {_dataset_name(dataset)}: {counts[i]} "
                            f"boxes but {labels[i].size} labels and {difficult[i].size} "
                            f"difficult flags; expected one of each per box")
    if counts.sum():
        box = np.concatenate(boxes)
        cls = np.concatenate(labels).astype(np.int64)
        diff = np.concatenate(difficult)
    else:
        box, cls, diff = np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, bool)
    img = np.repeat(np.arange(len(records), dtype=np.int64), counts)
    bad = np.flatnonzero((cls < 1) | (cls >= num_classes))
    if bad.size:
        k = bad[0]
        raise DataError(f"image '{records[img[k]].image_id}' of {_dataset_name(dataset)} has a "
                        f"box labelled {cls[k]}; expected a class in 1..{num_classes - 1}")
    return _Flat(cls=cls, img=img, box=box, extra=diff)


def _pairs(det_key, gt_key, gt_order):
    """Every (detection, box) pair with equal keys, detection-major.

    ``gt_order`` sorts ``gt_key`` ascending (and fixes the order of a
    detection's boxes). Returns ``pair_det`` (P,), ``pair_gt`` (P,) (indices
    into the unsorted boxes), ``counts`` (D,) boxes per detection and
    ``offsets`` (D,) where each detection's pairs start.
    """
    sorted_keys = gt_key[gt_order]
    first = np.searchsorted(sorted_keys, det_key, side="left")
    counts = np.searchsorted(sorted_keys, det_key, side="right") - first
    offsets = np.cumsum(counts) - counts
    total = int(counts.sum())
    pair_det = np.repeat(np.arange(det_key.size), counts)
    within = np.arange(total) - np.repeat(offsets, counts)
    pair_gt = gt_order[np.repeat(first, counts) + within]
    return pair_det, pair_gt, counts, offsets


def _pair_iou(det_boxes, gt_boxes, crowd=None):
    """IoU of row-aligned ``(P, 4)`` boxes, +1 convention; where ``crowd``
    is set the union is the detection's area (COCO's crowd rule)."""
    iw = np.minimum(det_boxes[:, 2], gt_boxes[:, 2]) - np.maximum(det_boxes[:, 0], gt_boxes[:, 0]) + 1
    ih = np.minimum(det_boxes[:, 3], gt_boxes[:, 3]) - np.maximum(det_boxes[:, 1], gt_boxes[:, 1]) + 1
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    det_area = (det_boxes[:, 2] - det_boxes[:, 0] + 1) * (det_boxes[:, 3] - det_boxes[:, 1] + 1)
    gt_area = (gt_boxes[:, 2] - gt_boxes[:, 0] + 1) * (gt_boxes[:, 3] - gt_boxes[:, 1] + 1)
    union = det_area + gt_area - inter
    if crowd is not None:
        union = np.where(crowd, det_area, union)
    # Degenerate boxes can give 0 / 0; NaN then matches nothing (as in voc_eval).
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def _nanmean(values):
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


# ----------------------------------------------------------------------------
# VOC


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
        return _nanmean(self.ap)

    @property
    def mean_ap_07(self):
        return _nanmean(self.ap_07)

    @property
    def mean_ap_area(self):
        return _nanmean(self.ap_area)

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
    classes, records = _dataset_parts(dataset)
    num_classes, num_images = len(classes), len(records)
    dets = _gather_detections(dataset, all_boxes)
    gts = _gather_ground_truth(dataset)
    num_dets = dets.cls.size

    # Each detection's best box: among the boxes of its class in its image, in
    # record order, the highest IoU (first on ties, like np.argmax).
    det_key = dets.cls * num_images + dets.img
    gt_key = gts.cls * num_images + gts.img
    pair_det, pair_gt, counts, offsets = _pairs(det_key, gt_key, np.argsort(gt_key, kind="stable"))
    iou = _pair_iou(dets.box[pair_det], gts.box[pair_gt])
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

    # Rank: class-major, score descending, input order on ties.
    rank = np.lexsort((-dets.extra, dets.cls))
    claims_ranked = claims[rank]
    claimers = np.flatnonzero(claims_ranked)
    tp_ranked = np.zeros(num_dets, dtype=bool)
    # The first claim of a box in rank order is its true positive; boxes are
    # per class, so ranking classes one after another changes nothing.
    _, first_claim = np.unique(jmax[rank][claimers], return_index=True)
    tp_ranked[claimers[first_claim]] = True
    fp_ranked = ~above[rank] | (claims_ranked & ~tp_ranked)

    npos = np.bincount(gts.cls[~difficult], minlength=num_classes)[1:] if gts.cls.size \
        else np.zeros(num_classes - 1, dtype=np.int64)
    cls_ranked = dets.cls[rank]
    bounds = np.searchsorted(cls_ranked, np.arange(1, num_classes + 1))
    ap_07, ap_area, recall, num_det, curves = [], [], [], [], []
    eps = np.finfo(np.float64).eps
    for k in range(num_classes - 1):            # per class: a small fixed count
        lo, hi = bounds[k], bounds[k + 1]
        tp = np.cumsum(tp_ranked[lo:hi], dtype=np.float64)
        fp = np.cumsum(fp_ranked[lo:hi], dtype=np.float64)
        n = npos[k]
        with np.errstate(divide="ignore", invalid="ignore"):
            rec = tp / float(n) if n else np.full(tp.shape, np.nan)
        prec = tp / np.maximum(tp + fp, eps)
        curves.append((rec, prec))
        num_det.append(hi - lo)
        if n == 0:
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


# ----------------------------------------------------------------------------
# COCO


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
        return _nanmean(self.ap_per_class)

    @property
    def ap50(self):
        return _nanmean(self.ap50_per_class)

    @property
    def ap75(self):
        return _nanmean(self.ap75_per_class)

    @property
    def ar(self):
        return _nanmean(self.ar_per_class)

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
    classes, records = _dataset_parts(dataset)
    num_classes, num_images = len(classes), len(records)
    if int(max_dets) < 1:
        raise ValueError(f"max_dets must be at least 1; got {max_dets}")
    max_dets = int(max_dets)
    thresholds = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
    dets = _gather_detections(dataset, all_boxes)
    gts = _gather_ground_truth(dataset)
    ignored_gt = np.asarray(gts.extra, dtype=bool)
    num_t = thresholds.size

    # Rank within (class, image) by score, stable; keep the best max_dets.
    key = dets.cls * num_images + dets.img
    by_group = np.lexsort((-dets.extra, key))
    group_sorted = key[by_group]
    rank = np.empty(key.size, dtype=np.int64)
    rank[by_group] = np.arange(key.size) - np.searchsorted(group_sorted, group_sorted, side="left")
    kept = np.flatnonzero(rank < max_dets)
    # Process order: rank-major, so each step of the greedy loop below is one
    # contiguous block holding at most one detection per (class, image).
    kept = kept[np.lexsort((key[kept], rank[kept]))]
    d_key, d_rank, d_box = key[kept], rank[kept], dets.box[kept]
    num_kept = kept.size

    # Boxes of a (class, image): non-ignored first, then record order.
    g_key = gts.cls * num_images + gts.img
    pair_det, pair_gt, counts, offsets = _pairs(d_key, g_key, np.lexsort((ignored_gt, g_key)))
    iou = _pair_iou(d_box[pair_det], gts.box[pair_gt], crowd=ignored_gt[pair_gt])
    limits = np.minimum(thresholds, 1 - 1e-10)[:, None]          # as pycocotools

    gt_taken = np.zeros((num_t, gts.cls.size), dtype=bool)
    det_matched = np.zeros((num_t, num_kept), dtype=bool)
    det_ignored = np.zeros((num_t, num_kept), dtype=bool)
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

    # Accumulate per class: score descending; ties in image order, then rank.
    d_cls, d_img, d_score = dets.cls[kept], dets.img[kept], dets.extra[kept]
    order = np.lexsort((d_rank, d_img, -d_score, d_cls))
    bounds = np.searchsorted(d_cls[order], np.arange(1, num_classes + 1))
    num_gt = np.bincount(gts.cls[~ignored_gt], minlength=num_classes)[1:] if gts.cls.size \
        else np.zeros(num_classes - 1, dtype=np.int64)
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
    num_det = np.diff(bounds)
    return COCOResult(classes=classes[1:], iou_thresholds=thresholds, precision=precision,
                      recall=recall, num_gt=np.asarray(num_gt, dtype=np.int64),
                      num_detections=np.asarray(num_det, dtype=np.int64), max_dets=max_dets)


# ----------------------------------------------------------------------------
# Reporting and files


def _fmt(value, width):
    return f"{'-':>{width}}" if value is None or math.isnan(value) else f"{value:>{width}.4f}"


def format_table(result, classes=None):
    """A plain-text table of a VOCResult or COCOResult: one row per class and
    a mean row. ``classes`` overrides the names (the dataset's ``classes``,
    with ``__background__`` first, or the K foreground names); ``-`` marks a
    class that has no ground truth."""
    if not isinstance(result, (VOCResult, COCOResult)):
        raise TypeError(f"format_table takes a VOCResult or COCOResult; got "
                        f"{type(result).__name__}")
    names = list(result.classes if classes is None else classes)
    if names and names[0] == "__background__":
        names = names[1:]
    if len(names) != len(result.classes):
        raise ValueError(f"format_table: {len(names)} class names for a result of "
                         f"{len(result.classes)} classes")
    width = max([len(n) for n in names] + [5])
    if isinstance(result, VOCResult):
        chosen = "VOC07" if result.use_07_metric else "area"
        head = (f"{'class':<{width}} {'gt':>6} {'dets':>7} {'recall':>7} "
                f"{'AP07':>7} {'AParea':>7}")
        rows = [f"{n:<{width}} {int(g):>6d} {int(d):>7d} {_fmt(r, 7)} {_fmt(a, 7)} {_fmt(b, 7)}"
                for n, g, d, r, a, b in zip(names, result.npos, result.num_detections,
                                            result.recall, result.ap_07, result.ap_area)]
        mean = (f"{'mean':<{width}} {int(result.npos.sum()):>6d} "
                f"{int(result.num_detections.sum()):>7d} {_fmt(_nanmean(result.recall), 7)} "
                f"{_fmt(result.mean_ap_07, 7)} {_fmt(result.mean_ap_area, 7)}")
        title = (f"PASCAL VOC AP at IoU > {result.iou_threshold:g} "
                 f"(mAP {_fmt(result.mean_ap, 0).strip()}, {chosen} metric)")
    else:
        head = (f"{'class':<{width}} {'gt':>6} {'dets':>7} {'AP':>7} {'AP50':>7} "
                f"{'AP75':>7} {'AR':>7}")
        rows = [f"{n:<{width}} {int(g):>6d} {int(d):>7d} {_fmt(a, 7)} {_fmt(b, 7)} "
                f"{_fmt(c, 7)} {_fmt(r, 7)}"
                for n, g, d, a, b, c, r in zip(names, result.num_gt, result.num_detections,
                                               result.ap_per_class, result.ap50_per_class,
                                               result.ap75_per_class, result.ar_per_class)]
        mean = (f"{'mean':<{width}} {int(result.num_gt.sum()):>6d} "
                f"{int(result.num_detections.sum()):>7d} {_fmt(result.ap, 7)} "
                f"{_fmt(result.ap50, 7)} {_fmt(result.ap75, 7)} {_fmt(result.ar, 7)}")
        title = (f"COCO box AP, IoU 0.50:0.95, maxDets {result.max_dets} "
                 f"(AP {_fmt(result.ap, 0).strip()})")
    rule = "-" * len(head)
    return "\n".join([title, head, rule, *rows, rule, mean])


def dump_detections(path, dataset, all_boxes):
    """Write every detection as a JSON list of ``{"image_id", "class",
    "score", "box": [x1, y1, x2, y2]}`` (0-based inclusive pixels), in
    (class, image, row) order, atomically (temporary file, then rename).
    Returns the number of detections written."""
    classes, records = _dataset_parts(dataset)
    dets = _gather_detections(dataset, all_boxes)
    image_ids = [str(r.image_id) for r in records]
    # JSON is a list of objects: building it walks the rows once.
    entries = [{"image_id": image_ids[i], "class": classes[c], "score": s, "box": b}
               for c, i, s, b in zip(dets.cls.tolist(), dets.img.tolist(),
                                     dets.extra.tolist(), dets.box.tolist())]
    text = json.dumps(entries, separators=(",", ":"))
    with atomic_writer(os.fspath(path)) as handle:
        handle.write(text.encode("utf-8"))
    return len(entries)


def load_detections(path, dataset):
    """Read a file written by :func:`dump_detections` back into the
    ``all_boxes`` layout of ``dataset`` (rows of a (class, image) cell in file
    order). Unknown images or classes and malformed entries raise DataError
    naming the file and the entry."""
    classes, records = _dataset_parts(dataset)
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            entries = json.load(handle)
    except OSError as exc:
        raise DataError(f"{path}: cannot read detections: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} "
                        f"column {exc.colno}") from None
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected a JSON list of detections; found "
                        f"{type(entries).__name__}")
    image_index = {str(r.image_id): i for i, r in enumerate(records)}
    class_index = {name: c for c, name in enumerate(classes) if c > 0}
    cls = np.empty(len(entries), dtype=np.int64)
    img = np.empty(len(entries), dtype=np.int64)
    rows = np.empty((len(entries), 5), dtype=np.float64)
    for n, entry in enumerate(entries):
        try:
            img[n] = image_index[str(entry["image_id"])]
            cls[n] = class_index[entry["class"]]
            rows[n, :4] = [float(v) for v in entry["box"]]
            rows[n, 4] = float(entry["score"])
        except KeyError as exc:
            raise DataError(f"{path}: detection {n} ({json.dumps(entry)[:200]}): unknown or "
                            f"missing {exc} (not an image or class of "
                            f"{_dataset_name(dataset)}?)") from None
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}: detection {n} ({json.dumps(entry)[:200]}): expected "
                            f"numeric 'score' and 4-number 'box': {exc}") from None
    order = np.lexsort((img, cls))
    cells = cls[order] * len(records) + img[order]
    starts = np.searchsorted(cells, np.arange(len(classes) * len(records) + 1))
    empty = np.zeros((0, 5), dtype=np.float64)
    all_boxes = [[empty for _ in records] for _ in classes]
    for cell in np.unique(cells).tolist():
        c, i = divmod(cell, len(records))
        all_boxes[c][i] = rows[order[starts[cell]:starts[cell + 1]]]
    return all_boxes
