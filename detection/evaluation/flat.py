"""Detections and ground truth gathered into flat arrays, and the pairwise
IoU the VOC and COCO rules share.

Detections come in py-faster-rcnn's ``all_boxes`` layout: ``all_boxes[c][i]``
is an ``(N, 5)`` array ``[x1, y1, x2, y2, score]`` for class ``c``
(``1 .. C-1``; ``all_boxes[0]`` is unused) and image ``i``. Boxes are in
inclusive pixel coordinates, so the IoU uses the ``+1`` convention.
"""
import dataclasses
import math

import numpy as np

from netdef.errors import DataError

__all__ = ["Flat", "dataset_parts", "dataset_name", "gather_detections",
           "gather_ground_truth", "pairs", "pair_iou", "nanmean"]


@dataclasses.dataclass(eq=False)
class Flat:
    """Detections or boxes of every class and image, one row each.

    ``cls`` (n,) class index, ``img`` (n,) image index, ``box`` (n, 4)
    float64, ``score`` (n,) (detections) or ``difficult`` (n,) (ground truth).
    Detections are in (class, image, row) order; boxes in (image, row) order.
    """
    cls: np.ndarray
    img: np.ndarray
    box: np.ndarray
    extra: np.ndarray


def dataset_parts(dataset):
    try:
        classes = tuple(dataset.classes)
        records = dataset.records
    except AttributeError as exc:
        raise DataError(f"evaluation needs a DetectionDataset (classes, records); "
                        f"got {type(dataset).__name__}: {exc}") from None
    return classes, records


def dataset_name(dataset):
    return getattr(dataset, "name", "dataset")


def gather_detections(dataset, all_boxes):
    """all_boxes -> Flat with extra = score, validated."""
    classes, records = dataset_parts(dataset)
    num_classes, num_images = len(classes), len(records)
    name = dataset_name(dataset)
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
    return Flat(cls=cls, img=img, box=rows[:, :4], extra=rows[:, 4])


def gather_ground_truth(dataset):
    """records -> Flat with extra = difficult (bool), validated."""
    classes, records = dataset_parts(dataset)
    num_classes = len(classes)
    boxes = [np.asarray(r.boxes, dtype=np.float64).reshape(-1, 4) for r in records]
    labels = [np.asarray(r.labels).reshape(-1) for r in records]
    difficult = [np.asarray(r.difficult, dtype=bool).reshape(-1) for r in records]
    counts = np.asarray([b.shape[0] for b in boxes], dtype=np.int64)
    for i, r in enumerate(records):
        if labels[i].size != counts[i] or difficult[i].size != counts[i]:
            raise DataError(f"image '{r.image_id}' of {dataset_name(dataset)}: {counts[i]} "
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
        raise DataError(f"image '{records[img[k]].image_id}' of {dataset_name(dataset)} has a "
                        f"box labelled {cls[k]}; expected a class in 1..{num_classes - 1}")
    return Flat(cls=cls, img=img, box=box, extra=diff)


def pairs(det_key, gt_key, gt_order):
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


def pair_iou(det_boxes, gt_boxes, crowd=None):
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


def nanmean(values):
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan
