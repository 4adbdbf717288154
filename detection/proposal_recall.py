"""How well proposals cover the ground truth: the recall of the objects at
IoU thresholds (Hosang et al.'s measure, the one the Faster R-CNN paper
plots for the RPN against Selective Search).

    table = proposal_recall(boxes, dataset.records, thresholds=(0.5, 0.7))
    # {"objects": 812, "images": 200, "boxes_per_image": 263.4,
    #  "recall": {"0.5": 0.97, "0.7": 0.81}, "best_iou_mean": 0.83}

An object counts as recalled at threshold t when some proposal of its image
overlaps it with IoU >= t (inclusive pixels, ``layers.boxes.bbox_overlaps``);
difficult objects are left out, as the VOC evaluation does.
"""
import numpy as np

from layers.boxes import bbox_overlaps

__all__ = ["proposal_recall", "DEFAULT_THRESHOLDS"]

DEFAULT_THRESHOLDS = (0.5, 0.7)


def proposal_recall(boxes, records, thresholds=DEFAULT_THRESHOLDS):
    """Recall of the objects of ``records`` (ImageRecords; non-difficult
    objects) by ``boxes`` (one ``(R, 4)`` array per record) at each IoU of
    ``thresholds``. Returns a JSON-ready dict (see the module docstring)."""
    best = []
    # One vectorized overlap matrix per image: a loop over images only.
    for record, proposals in zip(records, boxes):
        gt = np.asarray(record.boxes, np.float64).reshape(-1, 4)
        if record.difficult is not None and len(record.difficult):
            gt = gt[~np.asarray(record.difficult, bool)]
        if not len(gt):
            continue
        proposals = np.asarray(proposals, np.float64).reshape(-1, 4)
        if not len(proposals):
            best.append(np.zeros(len(gt)))
            continue
        best.append(bbox_overlaps(gt, proposals).max(axis=1))
    best = np.concatenate(best) if best else np.zeros(0)
    counts = [len(b) for b in boxes]
    return {
        "objects": int(best.size), "images": len(counts),
        "boxes_per_image": round(float(np.mean(counts)) if counts else 0.0, 1),
        "recall": {f"{t:g}": round(float((best >= t).mean()) if best.size else 0.0, 4)
                   for t in thresholds},
        "best_iou_mean": round(float(best.mean()) if best.size else 0.0, 4)}
