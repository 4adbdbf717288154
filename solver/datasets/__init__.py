"""Detection datasets: records of images with ground-truth boxes.

A dataset is a list of :class:`ImageRecord` (one per image) plus the class
names, whatever the source format. Readers validate every annotation on load
(see :mod:`solver.datasets.voc` and :mod:`solver.datasets.coco`) and name the
file, the object and the reason for what they reject.

Coordinates follow py-faster-rcnn: boxes are ``[x1, y1, x2, y2]`` in 0-based
inclusive pixel coordinates (width = ``x2 - x1 + 1``); label 0 is background.
"""
import dataclasses
import os

import numpy as np

__all__ = ["ImageRecord", "DetectionDataset", "DataWarning", "VOC_CLASSES",
           "load_dataset"]

# The 20 PASCAL VOC classes in the order of the devkit (and py-faster-rcnn).
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

BACKGROUND = "__background__"


class DataWarning(UserWarning):
    """An annotation or image was skipped (``on_error="skip"``) or an image
    without objects was left out; the message names file, object and reason."""


@dataclasses.dataclass
class ImageRecord:
    """One image and its ground truth.

    Attributes:
        image_id: stable identifier (VOC: file stem; COCO: ``str(id)``).
        path: absolute path of the image file.
        width, height: image size in pixels.
        boxes: ``(G, 4)`` float32 ``[x1, y1, x2, y2]``, 0-based inclusive.
        labels: ``(G,)`` int32 in ``1..num_classes-1``.
        difficult: ``(G,)`` bool; VOC ``difficult`` or COCO ``iscrowd``.
            Evaluation ignores these objects; training usually drops them
            (:meth:`DetectionDataset.without_difficult`).
    """
    image_id: str
    path: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int32).reshape(-1)
        self.difficult = np.asarray(self.difficult, dtype=bool).reshape(-1)
        if not len(self.boxes) == len(self.labels) == len(self.difficult):
            raise ValueError(
                f"image '{self.image_id}': boxes {self.boxes.shape}, labels "
                f"{self.labels.shape} and difficult {self.difficult.shape} "
                "must have the same length")

    @property
    def num_objects(self):
        return len(self.labels)


class DetectionDataset:
    """Class names plus image records.

    Attributes:
        name: a human-readable name (e.g. ``voc_2007_trainval``).
        classes: tuple of class names; ``classes[0] == "__background__"``.
        records: list of :class:`ImageRecord`.
    """

    def __init__(self, name, classes, records):
        classes = tuple(classes)
        if not classes or classes[0] != BACKGROUND:
            classes = (BACKGROUND,) + classes
        if len(set(classes)) != len(classes):
            raise ValueError(f"dataset '{name}': duplicate class names in {classes}")
        self.name = name
        self.classes = classes
        self.records = list(records)

    @property
    def num_classes(self):
        """Number of classes including background."""
        return len(self.classes)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        return self.records[index]

    def __iter__(self):
        return iter(self.records)

    def __repr__(self):
        return (f"DetectionDataset(name={self.name!r}, images={len(self)}, "
                f"classes={self.num_classes - 1} + background)")

    def num_objects(self):
        """Total number of ground-truth objects (difficult included)."""
        return sum(r.num_objects for r in self.records)

    def without_difficult(self, keep_empty=False):
        """A copy for training: difficult (or crowd) objects dropped.

        Images left without objects are dropped too unless ``keep_empty``
        (a training image needs at least one box to sample foreground from).
        """
        records = []
        for r in self.records:
            keep = ~r.difficult
            if not keep.any() and not keep_empty:
                continue
            records.append(dataclasses.replace(
                r, boxes=r.boxes[keep], labels=r.labels[keep],
                difficult=r.difficult[keep]))
        return DetectionDataset(self.name, self.classes, records)


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
    Further keyword options go to the reader (:func:`solver.datasets.voc.load_voc`,
    :func:`solver.datasets.coco.load_coco`): ``keep_empty``, ``classes``,
    ``cache``, ``cache_dir``...
    """
    from netdef.errors import DataError

    path = os.fspath(path)
    if os.path.isfile(path):
        if path.lower().endswith(".json"):
            from .coco import load_coco
            return load_coco(path, on_error=on_error, **options)
        raise DataError(f"{path}: not a dataset: expected a COCO instances "
                        ".json file or a VOC-layout folder")
    if not os.path.isdir(path):
        raise DataError(f"{path}: dataset path does not exist")
    from .voc import is_voc_layout, find_voc_years
    if is_voc_layout(path) or find_voc_years(path):
        from .voc import load_voc
        return load_voc(path, split, on_error=on_error, **options)
    from .coco import find_coco_json
    json_path = find_coco_json(path, split)
    if json_path is not None:
        from .coco import load_coco
        return load_coco(json_path, on_error=on_error, **options)
    raise DataError(
        f"{path}: no dataset found: expected a VOCdevkit folder (VOC2007/, "
        "VOC2012/...), a VOC-layout folder (Annotations/, JPEGImages/, "
        "ImageSets/Main/), or a COCO root with annotations/instances_"
        f"{split}.json")
