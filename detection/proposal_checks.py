"""Checks of external proposals against the dataset they are used with, and
their loading for training and testing (``--proposals FILE``).

    boxes = proposals_for_dataset("ss_trainval.npz", dataset, max_per_image=2000)
    data_layer.set_dataset(dataset, proposals=boxes)      # one (R, 4) array per record

A proposals file is refused, with a DataError naming the file, the image
and the reason, when it holds no proposals at all, names an image the
split does not have (or one twice), lacks an image of the dataset, or an
image's boxes are not ``(K, 4)`` finite numbers with ``x1 <= x2``,
``y1 <= y2``, inside the image: ``0 <= x1``, ``0 <= y1``, ``x2 < width``,
``y2 < height`` (inclusive pixels; a box may end anywhere inside the last
pixel, as an RPN's boxes divided by the image scale do).
"""
import warnings

import numpy as np

from netdef.errors import DataError, DataWarning
from detection.proposals import Proposals

__all__ = ["image_box_problem", "check_proposals", "record_index", "proposals_for_dataset",
           "DEFAULT_MAX_PROPOSALS"]

DEFAULT_MAX_PROPOSALS = 2000     # Fast R-CNN's ~2000 Selective Search boxes per image


def _shown(box):
    return "[" + " ".join(f"{v:g}" for v in np.asarray(box, np.float64).tolist()) + "]"


def image_box_problem(boxes, width, height):
    """Why ``boxes`` cannot be proposals of a ``width`` x ``height`` image
    (a sentence naming the first bad box), or None when they can."""
    boxes = np.asarray(boxes)
    if boxes.size == 0:
        return None
    if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.dtype.kind not in "iuf":
        return (f"expected (K, 4) numbers [x1 y1 x2 y2], found {boxes.dtype} "
                f"{boxes.shape}")
    boxes = boxes.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(boxes).all(axis=1))
    if len(bad):
        return f"box {bad[0]} {_shown(boxes[bad[0]])} holds NaN or Inf"
    bad = np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
    if len(bad):
        return f"box {bad[0]} {_shown(boxes[bad[0]])} has x2 < x1 or y2 < y1"
    bad = np.flatnonzero((boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] >= width)
                         | (boxes[:, 3] >= height))
    if len(bad):
        return (f"box {bad[0]} {_shown(boxes[bad[0]])} lies outside the image of "
                f"{width} x {height} pixels (width x height; 0 <= x1, 0 <= y1, "
                f"x2 < {width}, y2 < {height})")
    return None


def _listed(names, limit=5):
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def record_index(image_ids, dataset, source, on_unknown="raise"):
    """``{image id: record}`` of ``dataset`` for ``image_ids`` (a file's
    ids); DataError naming ``source`` for an id given twice, and for an id
    the dataset does not have (with ``on_unknown`` "skip": left out with a
    DataWarning, for images the dataset itself left out as bad)."""
    records = {r.image_id: r for r in dataset.records}
    name = getattr(dataset, "name", "dataset")
    unknown = [i for i in image_ids if i not in records]
    if unknown:
        text = (f"{source}: {len(unknown)} image id(s) that dataset '{name}' does not have "
                f"({_listed(unknown)}); the file holds {len(image_ids)} images, the dataset "
                f"{len(records)}")
        if on_unknown != "skip":
            raise DataError(text + ": proposals of another dataset or split?")
        warnings.warn(text + ": left out", DataWarning, stacklevel=3)
    seen, twice = set(), []
    for image_id in image_ids:
        if image_id in seen:
            twice.append(image_id)
        seen.add(image_id)
    if twice:
        raise DataError(f"{source}: image(s) listed more than once ({_listed(twice)})")
    return {i: records[i] for i in image_ids if i in records}


def check_proposals(proposals, dataset, source, on_unknown="raise"):
    """Check ``proposals`` (a Proposals) against ``dataset`` (the whole
    split): some proposals at all, every image id known (``record_index``)
    and given once, every image's boxes sound (``image_box_problem``).
    DataError naming ``source``, the image and the reason. Images of the
    dataset without proposals are found where the proposals are used
    (``Proposals.for_dataset``): a file may hold more images than a
    training set that leaves some out."""
    if not len(proposals) or proposals.total == 0:
        raise DataError(f"{source}: the proposals file is empty ({len(proposals)} images, "
                        f"{proposals.total} boxes)")
    index = record_index(proposals.image_ids, dataset, source, on_unknown)
    # One vectorized check per image: a loop over images, not boxes.
    for image_id, boxes in zip(proposals.image_ids, proposals.boxes):
        record = index.get(image_id)
        problem = record and image_box_problem(boxes, int(record.width), int(record.height))
        if problem:
            raise DataError(f"{source}: image '{image_id}' ({record.path}): {problem}")


def proposals_for_dataset(path, dataset, max_per_image=DEFAULT_MAX_PROPOSALS, *, split=None,
                          on_unknown="raise"):
    """The proposals file ``path`` (``Proposals.load``), checked
    (``check_proposals``) against ``split`` (the whole split the file was
    made for, images without objects included; default ``dataset``), for
    the records of ``dataset`` in their order, each image's first
    ``max_per_image`` boxes (the best ranked: RPN score or Selective Search
    rank order; 0 or None: all): one ``(R, 4)`` float32 array per record,
    as the RoIData layer and the Detector take them."""
    if max_per_image is not None and max_per_image < 0:
        raise DataError(f"the proposals cap per image must be positive (0: no cap), found "
                        f"{max_per_image}")
    proposals = Proposals.load(path)
    check_proposals(proposals, split if split is not None else dataset, path, on_unknown)
    boxes = proposals.for_dataset(dataset, path)
    if max_per_image:
        boxes = [b[:int(max_per_image)] for b in boxes]
    return boxes
