"""Reporting: a plain-text table of a result, and detections to and from
a JSON file."""
import json
import math
import os

import numpy as np

from netdef.errors import DataError
from netdef.snapshot_format import atomic_writer
from detection.evaluation.coco import COCOResult
from detection.evaluation.flat import dataset_name, dataset_parts, gather_detections, nanmean
from detection.evaluation.voc import VOCResult

__all__ = ["format_table", "dump_detections", "load_detections"]


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
                f"{int(result.num_detections.sum()):>7d} {_fmt(nanmean(result.recall), 7)} "
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
    classes, records = dataset_parts(dataset)
    dets = gather_detections(dataset, all_boxes)
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
    classes, records = dataset_parts(dataset)
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
                            f"{dataset_name(dataset)}?)") from None
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
