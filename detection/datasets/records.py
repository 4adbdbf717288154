"""The records of a detection dataset, and what the readers share.

:class:`ImageRecord` (one image and its ground truth) and
:class:`DetectionDataset` (class names plus records), whatever the source
format; the error policy (``Issues``) and the box rules the VOC and COCO
readers apply. Coordinates follow py-faster-rcnn: boxes are ``[x1, y1, x2,
y2]`` in 0-based inclusive pixel coordinates (width = ``x2 - x1 + 1``);
label 0 is background.
"""
import dataclasses
import difflib
import os
import re
import warnings

import numpy as np

from netdef.errors import DataError, DataWarning

__all__ = ["ImageRecord", "DetectionDataset", "DataWarning", "VOC_CLASSES", "BACKGROUND",
           "Issues", "ON_ERROR_CHOICES", "box_problems", "read_image_size", "path_problem",
           "unknown_class_reason", "empty_images_note"]

# The 20 PASCAL VOC classes in the order of the devkit (and py-faster-rcnn).
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

BACKGROUND = "__background__"


# eq=False: field-wise == on arrays has no single truth value.
@dataclasses.dataclass(eq=False)
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
        on_error: the error policy it was loaded with (``"raise"`` or
            ``"skip"``); the training data layer applies it to images that
            fail when drawn (a truncated file the header check passed).
    """

    def __init__(self, name, classes, records, on_error="raise"):
        classes = tuple(classes)
        if not classes or classes[0] != BACKGROUND:
            classes = (BACKGROUND,) + classes
        if len(set(classes)) != len(classes):
            raise ValueError(f"dataset '{name}': duplicate class names in {classes}")
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
        self.name = name
        self.classes = classes
        self.records = list(records)
        self.on_error = on_error

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
        return DetectionDataset(self.name, self.classes, records, on_error=self.on_error)


# ----------------------------------------------------------------------------
# Shared by the readers: one place for the error policy and the box rules.

ON_ERROR_CHOICES = ("raise", "skip")


class Issues:
    """The error policy of one load: raise at the first problem, or skip the
    bad object/image with a :class:`DataWarning`.

    ``messages`` keeps every warning emitted, so that a cached load can show
    them again.
    """

    def __init__(self, on_error):
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, "
                             f"got {on_error!r}")
        self.on_error = on_error
        self.messages = []

    def object(self, message):
        """A bad object: raise, or warn and let the caller drop the object."""
        self._problem(message, "object")

    def image(self, message):
        """A bad image or annotation file: raise, or warn and drop the image."""
        self._problem(message, "image")

    def note(self, message):
        """Not an error (e.g. an image without objects left out): always warn."""
        self.warn(message)

    def _problem(self, message, what):
        if self.on_error == "raise":
            raise DataError(message)
        self.warn(f"skipped {what}: {message}")

    def warn(self, message):
        self.messages.append(message)
        warnings.warn(message, DataWarning, stacklevel=4)


def box_problems(boxes, widths, heights):
    """Why each box is invalid, or None when it is valid.

    Args:
        boxes: ``(G, 4)`` ``[x1, y1, x2, y2]``, 0-based inclusive.
        widths, heights: image size, scalars or ``(G,)`` arrays.

    Returns:
        list of G strings or None. A box is valid when its coordinates are
        finite, ``x1 >= 0``, ``y1 >= 0``, ``x2 < width``, ``y2 < height``,
        ``x1 <= x2`` and ``y1 <= y2``.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w = np.broadcast_to(np.asarray(widths, dtype=np.float64), (len(b),))
    h = np.broadcast_to(np.asarray(heights, dtype=np.float64), (len(b),))
    x1, y1, x2, y2 = b.T
    with np.errstate(invalid="ignore"):
        rules = [
            (~np.isfinite(b).all(axis=1), "a coordinate is not a finite number"),
            (x1 < 0, "x1 < 0"),
            (y1 < 0, "y1 < 0"),
            (x2 >= w, "x2 >= image width"),
            (y2 >= h, "y2 >= image height"),
            (x1 > x2, "x1 > x2 (empty box)"),
            (y1 > y2, "y1 > y2 (empty box)"),
        ]
    bad = np.zeros(len(b), dtype=bool)
    for mask, _ in rules:
        bad |= mask
    reasons = [None] * len(b)
    for i in np.flatnonzero(bad):     # formatting only the (rare) bad boxes
        broken = ", ".join(text for mask, text in rules if mask[i])
        coords = ", ".join(f"{v:g}" for v in b[i])
        reasons[i] = (f"box [x1, y1, x2, y2] = [{coords}] (0-based) is invalid "
                      f"in a {w[i]:g}x{h[i]:g} (width x height) image: {broken}")
    return reasons


def read_image_size(path, decode=False):
    """``(width, height)`` from the image header via Pillow; with
    ``decode`` the whole image is decoded too, as training will (a
    truncated or corrupt file, or a pixel mode without a known range, is
    then found now rather than when the image is first drawn).

    Raises FileNotFoundError when missing, OSError (with the reason) when
    Pillow cannot identify, read or decode it.
    """
    from PIL import Image
    from layers.input_pipeline.preprocess import decode_rgb
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    try:
        with Image.open(path) as im:
            if decode:
                decode_rgb(im)
            return im.size
    except FileNotFoundError:
        raise
    except Exception as exc:   # Pillow raises several types for bad files
        raise OSError(f"{type(exc).__name__}: {exc}") from exc


# Absolute on any system: POSIX root, Windows drive or UNC/backslash root.
_ABSOLUTE = re.compile(r"[/\\]|[A-Za-z]:[/\\]")


def path_problem(relative):
    """Why ``relative`` (a path read from an annotation or split file) may
    not be joined to the dataset root, or None when it may.

    The rule is lexical, so a dataset folder that is a symlink (as
    py-faster-rcnn's ``data/VOCdevkit2007`` usually is) keeps working: no
    absolute path (``/x``, ``\\x``, ``C:\\x``), no ``..`` component (either
    separator), no NUL character.
    """
    if "\0" in relative:
        return "contains a NUL character"
    if os.path.isabs(relative) or _ABSOLUTE.match(relative):
        return ("is an absolute path; paths in annotation and split files are relative to "
                "the dataset folder")
    if ".." in relative.replace("\\", "/").split("/"):
        return ("has a '..' component; paths in annotation and split files must stay inside "
                "the dataset folder")
    return None


def unknown_class_reason(name, known):
    """The message for a class name that is not in the class list."""
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(known[:25]) + (", ..." if len(known) > 25 else "")
    return f"unknown class {name!r} (known classes: {shown}){hint}"


def empty_images_note(source, image_ids):
    """The warning for images left out because they have no objects."""
    shown = ", ".join(repr(i) for i in image_ids[:10])
    more = f" and {len(image_ids) - 10} more" if len(image_ids) > 10 else ""
    return (f"{source}: {len(image_ids)} image(s) without objects left out "
            f"(keep_empty=True keeps them): {shown}{more}")
