"""Detection datasets: records of images with ground-truth boxes.

A dataset is a list of :class:`ImageRecord` (one per image) plus the class
names, whatever the source format. Readers validate every annotation on load
(see :mod:`detection.datasets.voc` and :mod:`detection.datasets.coco`) and name the
file, the object and the reason for what they reject.

Coordinates follow py-faster-rcnn: boxes are ``[x1, y1, x2, y2]`` in 0-based
inclusive pixel coordinates (width = ``x2 - x1 + 1``); label 0 is background.
"""
import os

from netdef.errors import DataError

from .coco import find_coco_json, load_coco
from .records import (VOC_CLASSES, DataWarning, DetectionDataset,  # noqa: F401
                      ImageRecord)
from .voc import find_voc_years, is_voc_layout, load_voc

__all__ = ["ImageRecord", "DetectionDataset", "DataWarning", "VOC_CLASSES",
           "load_dataset"]


def load_dataset(path, split="trainval", on_error="raise", **options):
    """Load a detection dataset, detecting its format.

    ``path`` may be:

    - a ``VOCdevkit`` folder holding ``VOC2007``, ``VOC2012``...; ``split`` is
      then ``"2007:trainval"``, a union ``"2007:trainval+2012:trainval"``
      (py-faster-rcnn's ``"voc_2007_trainval"`` works too), or a plain
      ``"trainval"`` when the devkit holds a single year;
    - a single VOC-layout folder (``Annotations/``, ``JPEGImages/``,
      ``ImageSets/Main/<split>.txt``), a ``VOC20xx`` folder or the user's own
      dataset with a ``classes.txt`` (one class per line) beside ``ImageSets``;
    - a COCO-style instances JSON file (``split`` is ignored), or a COCO root
      folder holding ``annotations/instances_<split>.json`` and ``<split>/``.

    ``on_error``: ``"raise"`` raises :class:`netdef.errors.DataError` at the
    first invalid annotation; ``"skip"`` drops the bad object (or the whole
    image when the image itself is bad) with a :class:`DataWarning`.
    Further keyword options go to the reader (:func:`detection.datasets.voc.load_voc`,
    :func:`detection.datasets.coco.load_coco`): ``keep_empty``, ``classes``,
    ``cache``, ``cache_dir``, ``check_images`` (decode every image now)...
    The dataset keeps ``on_error``: the training data layer applies it to an
    image that fails when first drawn.
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        if path.lower().endswith(".json"):
            return load_coco(path, on_error=on_error, **options)
        raise DataError(f"{path}: not a dataset: expected a COCO instances "
                        ".json file or a VOC-layout folder")
    if not os.path.isdir(path):
        raise DataError(f"{path}: dataset path does not exist")
    if is_voc_layout(path) or find_voc_years(path):
        return load_voc(path, split, on_error=on_error, **options)
    json_path = find_coco_json(path, split)
    if json_path is not None:
        return load_coco(json_path, on_error=on_error, **options)
    raise DataError(
        f"{path}: no dataset found: expected a VOCdevkit folder (VOC2007/, "
        "VOC2012/...), a VOC-layout folder (Annotations/, JPEGImages/, "
        "ImageSets/Main/), or a COCO root with annotations/instances_"
        f"{split}.json")
