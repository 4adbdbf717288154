"""The minibatches of Caffe-SSD's AnnotatedData layer (layers/annotated_data.py).

- ``SSDTransform``: transform_param and the batch samplers as plain values;
- ``ssd_entries``: the training examples, one per image (images without a
  box stay: Caffe-SSD trains on them as pure background; mirroring is a draw
  per example, not a second copy of the image as in py-faster-rcnn);
- ``SSDBatchBuilder``: one ``BatchPlan`` (layers/input_pipeline/minibatch.py's
  order, seeded and resumable) -> ``data`` ``(N, 3, H, W)`` and ``label``
  ``(1, 1, G, 8)``.

Per example, from a generator seeded by the plan's seed and the example's
position in the batch (so the batch does not depend on the thread, the
timing or the data-parallel rank that builds it): the image is read as BGR
float32, its boxes normalized (``layers.boxes.normalized_boxes``, difficult
ones included, flagged in the label), then Caffe-SSD's steps
(layers/input_pipeline/ssd_augment.py), each only when its parameter is
set: distortion, expansion, a batch-sampler crop; then the warp to
``height x width`` (Pillow's bilinear filter), the mirror (probability 1/2
when ``mirror``), ``(pixel - mean_value) * scale``.

label rows: ``[image index in the batch, class, instance, xmin, ymin, xmax,
ymax, difficult]``; ``instance`` numbers the boxes of one class in the
image's annotation (0, 1, ...), as Caffe-SSD's instance_id; a batch without
any box gives one row of -1 (Caffe-SSD's filler).
"""
import dataclasses

import numpy as np

from layers.boxes import normalized_boxes
from layers.input_pipeline.minibatch import Entries, MinibatchBuilder
from layers.input_pipeline.preprocess import load_image_bgr, resize_image
from layers.input_pipeline import ssd_augment as aug
from netdef.errors import DataError

__all__ = ["SSDTransform", "ssd_entries", "SSDBatchBuilder", "SSD_TOPS", "NO_BOX_ROW",
           "input_blob"]

SSD_TOPS = ("data", "label")
#: The label of a batch without boxes (Caffe-SSD fills one row of -1).
NO_BOX_ROW = np.full((1, 8), -1.0)


@dataclasses.dataclass(frozen=True)
class SSDTransform:
    """What AnnotatedData does to each image.

    height, width: the warp's size; mean: ``(3,)`` BGR subtracted; scale:
    multiplied after; mirror: flip with probability 1/2; distort: a
    DistortionParameter or None; expand: ``(prob, max_expand_ratio)`` or
    None; samplers: BatchSampler messages (empty: no crop); emit:
    ``(emit_type, emit_overlap)`` or None.
    """
    height: int
    width: int
    mean: tuple = (0.0, 0.0, 0.0)
    scale: float = 1.0
    mirror: bool = False
    distort: object = None
    expand: tuple = None
    samplers: tuple = ()
    emit: tuple = None


def ssd_entries(records):
    """One training example per record, in record order: ``Entries`` with
    every box (difficult ones too: they are flagged in the label) and no
    mirrored copies."""
    count = len(records)
    return Entries(
        record=np.arange(count, dtype=np.int64), flipped=np.zeros(count, bool),
        horizontal=np.array([r.width >= r.height for r in records], bool).reshape(-1),
        boxes=[np.asarray(r.boxes, np.float32).reshape(-1, 4) for r in records],
        labels=[np.asarray(r.labels, np.int32).reshape(-1) for r in records], skipped=[])


def input_blob(image, mean, scale):
    """``(1, 3, H, W)`` float32 ``(pixel - mean) * scale`` of a warped
    ``(H, W, 3)`` BGR image (``mean`` (3,) BGR): the data the single-stage
    nets see in training and in evaluation (detection.single_stage)."""
    image = (image - np.asarray(mean, np.float32)) * np.float32(scale)
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)


def instance_ids(labels):
    """``(G,)``: how many earlier boxes have the same class."""
    labels = np.asarray(labels).reshape(-1)
    same = labels[:, None] == labels[None, :]
    return np.tril(same, -1).sum(axis=1)


class SSDBatchBuilder(MinibatchBuilder):
    """Builds ``{"data", "label"}`` for a BatchPlan (callable; runs in the
    prefetch thread). The loading, error and ``on_error`` "skip" handling
    are MinibatchBuilder's; ``transform`` is an ``SSDTransform``."""

    def __init__(self, records, entries, transform, *, name="AnnotatedData", on_error="raise"):
        super().__init__(records, entries, scales=(transform.height,), max_size=transform.width,
                         random_scales=False, tops=SSD_TOPS, pixel_means=transform.mean,
                         name=name, on_error=on_error)
        self.transform = transform

    def __call__(self, plan):
        images, rows = [], []
        for position, example in enumerate(plan.examples):
            blob, _, label = self._example_or_next(example, None, position, plan.seed)
            images.append(blob)
            rows.append(label)
        label = np.concatenate(rows, axis=0)
        if len(label) == 0:
            label = NO_BOX_ROW.copy()
        return {"data": np.concatenate(images, axis=0),
                "label": label.reshape(1, 1, -1, 8)}

    def _one_image(self, record, record_index, flipped, target_size, position, rng):
        """``(blob (1, 3, H, W), 1.0, label rows (K, 8))`` of one example."""
        image = load_image_bgr(record.path)
        if image.shape[:2] != (record.height, record.width):
            raise DataError(
                f"image '{record.path}' is {image.shape[1]} x {image.shape[0]} pixels (width x "
                f"height), its annotation says {record.width} x {record.height}")
        labels = np.asarray(record.labels, np.float64).reshape(-1)
        columns = np.stack([labels, instance_ids(labels),
                            np.asarray(record.difficult, np.float64).reshape(-1)], axis=1)
        boxes = normalized_boxes(record.boxes, record.width, record.height)
        image, boxes, kept = self.augment(image, boxes, rng)
        columns = columns[kept]
        t = self.transform
        image = resize_image(image, t.height, t.width)
        if t.mirror and rng.integers(0, 2):
            image = image[:, ::-1]
            boxes = aug.mirror_boxes(boxes)
        blob = input_blob(image, t.mean, t.scale)
        rows = np.concatenate([np.full((len(boxes), 1), float(position)), columns[:, :2],
                               boxes, columns[:, 2:]], axis=1)
        return blob, 1.0, rows

    def augment(self, image, boxes, rng):
        """Distortion, expansion and a sampled crop, each when configured:
        ``(image, boxes, kept)`` with ``kept`` the mask of the input boxes
        that remain, in order."""
        t = self.transform
        kept = np.ones(len(boxes), bool)
        emit = t.emit or (None, 0.0)
        if t.distort is not None:
            image = aug.distort(image, rng, t.distort)
        if t.expand is not None:
            image, boxes, mask = aug.expand(image, boxes, rng, *t.expand, fill=t.mean,
                                            emit_type=emit[0], emit_overlap=emit[1])
            kept[kept] = mask
        if t.samplers:
            windows = np.concatenate([aug.sample_windows(rng, s, boxes) for s in t.samplers])
            if len(windows):
                window = windows[rng.integers(0, len(windows))]
                image, boxes, mask = aug.crop(image, boxes, window, *emit)
                kept[kept] = mask
        return image, boxes, kept
