"""YOLOv2's ground-truth assignment for the Region loss (darknet's
region layer), as pure functions on host NumPy arrays (used by
layers/region.py).

Darknet decides these on the host too; here they are vectorized over
ground-truth boxes and predictions, with one loop over the images of the
batch (a small count), never over boxes.

Slots: one per (image b, anchor n, row j, column i), flattened in that
order, ``s = ((b * A + n) * H + j) * W + i`` (the layout of the Region
input's channels). Boxes are normalized ``[xmin, ymin, xmax, ymax]``.

The targets come back as one float64 array ``(TARGET_ROWS, S)``:

====  ===========================================================
row   meaning
====  ===========================================================
0     1 where the slot is responsible for a ground truth, else 0
1-4   tx ty tw th: the ground truth in the slot's terms (cell
      offsets of the centre, log of size over anchor)
5     coordinate weight ``coord_scale * (2 - w * h)`` (gt size)
6     objectness target: 1, or with rescore the IoU of the slot's
      predicted box with its ground truth
7     class, 0-based (dataset class - 1)
8     1 where the no-object term applies: best IoU with every
      ground truth of the image <= thresh
====  ===========================================================
"""
from collections import namedtuple

import numpy as np

from layers.multibox_match import iou_matrix, label_rows, refuse_bad_rows

TARGET_ROWS = 9
RESPONSIBLE, TX, TY, TW, TH, COORD_WEIGHT, OBJECT, CLASS, NO_OBJECT = range(TARGET_ROWS)

#: Ground truth of one batch: ``image`` (G,) int64, ``label`` (G,) int64
#: dataset classes 1..C, ``boxes`` (G, 4) float64, ``difficult`` (G,) bool.
GroundTruth = namedtuple("GroundTruth", "image label boxes difficult")

#: The hyperparameters the assignment reads (RegionParameter's).
Assignment = namedtuple("Assignment", "anchors thresh coord_scale rescore bias_match")


def read_ground_truth(rows, num, classes, where):
    """Rows ``(..., 8)`` of the AnnotatedData label blob ``[image, class,
    instance, xmin, ymin, xmax, ymax, difficult]`` -> GroundTruth.

    Rows with image -1 (AnnotatedData's filler) are skipped. ``where``
    names the layer and bottom in the DataError raised for an image index
    outside [0, num), a class outside 1..classes, or a box that is not
    finite with xmax > xmin and ymax > ymin.
    """
    rows = label_rows(np.asarray(rows))
    image, label = rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64)
    boxes = rows[:, 3:7]
    with np.errstate(invalid="ignore"):
        problems = [
            ((image < 0) | (image >= num) | (rows[:, 0] != image),
             f"an image index in [0, {num}) or -1"),
            ((label < 1) | (label > classes) | (rows[:, 1] != label),
             f"a class in 1..{classes} (the layer's classes; 0 is background)"),
            (~np.isfinite(boxes).all(axis=1) | ~(boxes[:, 2] > boxes[:, 0])
             | ~(boxes[:, 3] > boxes[:, 1]),
             "a finite box with xmax > xmin and ymax > ymin"),
        ]
    refuse_bad_rows(rows, problems, where)
    return GroundTruth(image, label, boxes, rows[:, 7] != 0)


def best_overlaps(boxes, gt):
    """Per slot, the largest IoU of its predicted box with any ground truth
    of its image (0 without one). boxes (N, A, H, W, 4) -> (N * A * H * W,)."""
    num = boxes.shape[0]
    best = np.zeros(boxes.shape[:-1])
    for b in range(num):  # one image at a time, vectorized inside
        here = gt.boxes[gt.image == b]
        if len(here):
            best[b] = iou_matrix(boxes[b].reshape(-1, 4), here).max(axis=1).reshape(best.shape[1:])
    return best.reshape(-1)


def paired_overlaps(a, b):
    """IoU of box ``a[k]`` with box ``b[k]``: (K, 4) and (K, 4) -> (K,)."""
    iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return np.where(inter > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def shape_overlaps(widths, heights, gt_w, gt_h):
    """IoU of boxes sharing one centre: (G, A) from candidate sizes (G, A)
    and ground-truth sizes (G,) (darknet's box_iou with x = y = 0)."""
    inter = np.minimum(widths, gt_w[:, None]) * np.minimum(heights, gt_h[:, None])
    union = widths * heights + (gt_w * gt_h)[:, None] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def responsible_slots(boxes, gt, anchors, bias_match):
    """For each ground truth: (slot, cell column i, cell row j, anchor n).

    The cell holds the box's centre; the anchor is the one (bias_match) or
    the prediction of the cell (otherwise) whose shape best overlaps the
    box's, the first on ties (darknet's strict ``>``).
    """
    num, count, height, width = boxes.shape[:4]
    cx = (gt.boxes[:, 0] + gt.boxes[:, 2]) / 2
    cy = (gt.boxes[:, 1] + gt.boxes[:, 3]) / 2
    gw, gh = gt.boxes[:, 2] - gt.boxes[:, 0], gt.boxes[:, 3] - gt.boxes[:, 1]
    i = np.clip(np.floor(cx * width), 0, width - 1).astype(np.int64)
    j = np.clip(np.floor(cy * height), 0, height - 1).astype(np.int64)
    if bias_match:
        widths = np.broadcast_to(anchors[:, 0] / width, (len(gw), count))
        heights = np.broadcast_to(anchors[:, 1] / height, (len(gw), count))
    else:
        cell = boxes[gt.image, :, j, i]  # (G, A, 4): the cell's predictions
        widths, heights = cell[..., 2] - cell[..., 0], cell[..., 3] - cell[..., 1]
    n = shape_overlaps(widths, heights, gw, gh).argmax(axis=1)
    slot = ((gt.image * count + n) * height + j) * width + i
    return slot, i, j, n


def last_per_slot(slot):
    """Positions of the ground truths kept when several share a slot: the
    last one (darknet overwrites the slot's deltas truth after truth)."""
    reversed_slots = slot[::-1]
    _, first_in_reversed = np.unique(reversed_slots, return_index=True)
    return np.sort(len(slot) - 1 - first_in_reversed)


def region_targets(boxes, gt, settings):
    """The targets ``(TARGET_ROWS, S)`` of one pass (see the module
    docstring). boxes: the decoded predictions (N, A, H, W, 4), float64;
    gt: GroundTruth; settings: Assignment (anchors (A, 2) in grid cells)."""
    num, count, height, width = boxes.shape[:4]
    targets = np.zeros((TARGET_ROWS, num * count * height * width))
    targets[NO_OBJECT] = best_overlaps(boxes, gt) <= settings.thresh
    easy = GroundTruth(*(field[~gt.difficult] for field in gt))
    if len(easy.image) == 0:
        return targets
    slot, i, j, n = responsible_slots(boxes, easy, settings.anchors, settings.bias_match)
    keep = last_per_slot(slot)
    slot, i, j, n = slot[keep], i[keep], j[keep], n[keep]
    kept = easy.boxes[keep]
    cx, cy = (kept[:, 0] + kept[:, 2]) / 2, (kept[:, 1] + kept[:, 3]) / 2
    gw, gh = kept[:, 2] - kept[:, 0], kept[:, 3] - kept[:, 1]
    targets[RESPONSIBLE, slot] = 1
    targets[TX, slot] = cx * width - i
    targets[TY, slot] = cy * height - j
    targets[TW, slot] = np.log(gw * width / settings.anchors[n, 0])
    targets[TH, slot] = np.log(gh * height / settings.anchors[n, 1])
    targets[COORD_WEIGHT, slot] = settings.coord_scale * (2 - gw * gh)
    if settings.rescore:
        targets[OBJECT, slot] = paired_overlaps(boxes.reshape(-1, 4)[slot], kept)
    else:
        targets[OBJECT, slot] = 1
    targets[CLASS, slot] = easy.label[keep] - 1
    return targets
