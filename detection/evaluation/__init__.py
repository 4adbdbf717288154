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

The rules: :mod:`detection.evaluation.voc` (VOC07 11-point and area AP, as
``voc_eval``) and :mod:`detection.evaluation.coco` (pycocotools' box AP);
both read flat arrays gathered by :mod:`detection.evaluation.flat`;
:mod:`detection.evaluation.report` formats tables and reads and writes
detection files.
"""
from detection.evaluation.coco import COCO_IOU_THRESHOLDS, COCO_RECALL_POINTS, COCOResult, evaluate_coco
from detection.evaluation.report import dump_detections, format_table, load_detections
from detection.evaluation.voc import VOC07_RECALL_POINTS, VOCResult, evaluate_voc, voc_ap

__all__ = ["voc_ap", "evaluate_voc", "evaluate_coco", "VOCResult", "COCOResult",
           "format_table", "dump_detections", "load_detections",
           "COCO_IOU_THRESHOLDS", "COCO_RECALL_POINTS", "VOC07_RECALL_POINTS"]
