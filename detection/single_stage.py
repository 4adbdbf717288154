"""Inference of single-stage test nets (SSD, RetinaNet, YOLO): the net's
own final detections in a ``detection_out`` blob.

    labels = label_map(net)                         # classes, label offset
    transform = input_transform("prototxt/ssd_tiny.prototxt")
    labels_, scores, boxes = im_detect_single(net, image_bgr, transform, labels)
    per_class = per_class_detections(labels_, scores, boxes, labels.classes, 0.05)

``detection.detector.Detector`` takes this path by itself for a net with a
``detection_out`` blob; this module is what it runs. One image:

1. warp the whole BGR image to the TEST net's ``data`` Input ``(1, 3, H,
   W)`` (Pillow's bilinear filter: ``layers.input_pipeline.preprocess.
   resize_image``, as training warps to ``resize_param``), then subtract
   ``transform_param.mean_value`` and multiply by ``transform_param.scale``
   as Caffe's data transformer does (``(pixel - mean) * scale``). Those two
   come from the net file's TRAIN-phase ``AnnotatedData`` layer
   (``input_transform``); a pure deploy file without one gets SSD's mean
   ``(104, 117, 123)`` and scale 1;
2. forward ``data``; read ``detection_out`` ``(1, 1, K, 7)``, Caffe-SSD's
   rows ``[image, label, score, xmin, ymin, xmax, ymax]`` normalized to the
   input, keep image 0's rows with a label (Caffe-SSD's filler rows of -1
   are dropped);
3. labels become dataset classes (``label_map``): a ``DetectionOutput``
   with ``background_label_id`` -1 (sigmoid nets, no background column)
   numbers class c as c - 1, so 1 is added; otherwise the label is the
   class (1..C-1); boxes become our inclusive pixel boxes of the original
   image with ``layers.boxes.pixel_boxes`` (the warp covers the whole
   image, so coordinates normalized to the input are normalized to it);
4. per class: the rows scoring above the score threshold, highest first
   (``per_class_detections``); the Detector then caps the image at
   ``max_per_image``.

No second NMS: the net's own (``DetectionOutput``'s ``nms_param``) is the
one. A further pass at the two-stage default 0.3 would suppress boxes
that the net's threshold (SSD: 0.45) kept, so the evaluation would no
longer score the detections the net gives (Caffe-SSD's evaluation takes
``detection_out`` as it is).

The image scale of two-stage nets (shorter side, longer cap) plays no part:
the Input shape decides the size.
"""
import dataclasses
import os

import numpy as np

from layers.boxes import pixel_boxes, stable_argsort
from layers.input_pipeline.preprocess import resize_image
from layers.input_pipeline.ssd_minibatch import input_blob
from netdef import caffe_pb2
from netdef.device import to_numpy
from netdef.errors import DataError, NetDefinitionError
from netdef.schema import read_net

__all__ = ["DETECTION_OUT", "SSD_MEAN", "InputTransform", "LabelMap", "is_single_stage",
           "input_transform", "label_map", "scored_classes", "check_dataset_classes",
           "input_size", "warp_input", "detection_rows", "im_detect_single", "read_rows",
           "per_class_detections"]

#: The blob holding a single-stage net's final detections.
DETECTION_OUT = "detection_out"
#: Caffe-SSD's BGR mean_value, for nets whose file has no AnnotatedData layer.
SSD_MEAN = (104.0, 117.0, 123.0)


def is_single_stage(net):
    """Whether ``net`` gives its detections in a ``detection_out`` blob."""
    return DETECTION_OUT in net.blobs


# -- the input: warp, mean, scale --------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class InputTransform:
    """``(pixel - mean) * scale`` of the warped image; ``mean`` BGR (3,),
    ``source`` says where the values come from (for messages)."""
    mean: tuple = SSD_MEAN
    scale: float = 1.0
    source: str = "SSD's default mean (no AnnotatedData layer in the net file)"

    def describe(self):
        mean = ", ".join(f"{v:g}" for v in self.mean)
        return f"minus mean [{mean}] times {self.scale:g} ({self.source})"


def _is_train_layer(lp):
    """A layer of the TRAIN phase, or of both (no phase in its rules)."""
    phases = [r.phase for r in lp.include if r.HasField("phase")]
    excluded = [r.phase for r in lp.exclude if r.HasField("phase")]
    return (not phases or caffe_pb2.TRAIN in phases) and caffe_pb2.TRAIN not in excluded


def _transform_of(path, lp):
    """The InputTransform of the AnnotatedData layer ``lp`` of file ``path``."""
    t = lp.transform_param
    where = f"{path}: layer '{lp.name}' (AnnotatedData)"
    if t.HasField("mean_file"):
        raise NetDefinitionError(f"{where}: single-stage evaluation reads "
                                 "transform_param.mean_value only; found a mean_file")
    resize = t.resize_param
    if t.HasField("resize_param") and resize.resize_mode != caffe_pb2.ResizeParameter.WARP:
        mode = caffe_pb2.ResizeParameter.Resize_mode.Name(resize.resize_mode)
        raise NetDefinitionError(f"{where}: evaluation warps the whole image to the Input size "
                                 f"(resize_mode WARP); found resize_mode {mode}")
    values = list(t.mean_value)
    if len(values) not in (0, 1, 3):
        raise NetDefinitionError(f"{where}: transform_param.mean_value needs 1 value or 3 "
                                 f"(B, G, R); found {len(values)}")
    # Caffe's transformer subtracts nothing without mean_value.
    mean = tuple(float(v) for v in (values * 3 if len(values) == 1 else values or [0.0] * 3))
    return InputTransform(mean, float(t.scale), where)


def input_transform(*paths):
    """The InputTransform of the first ``AnnotatedData`` layer of the net
    files ``paths`` (None and missing files skipped): a TRAIN-phase one
    first (the transform training used), else one of any phase; without
    any, SSD's mean ``(104, 117, 123)`` and scale 1."""
    found = []
    for path in paths:
        if path is None or not os.path.isfile(os.fspath(path)):
            continue
        for lp in read_net(os.fspath(path)).layer:
            if lp.type == "AnnotatedData":
                found.append((not _is_train_layer(lp), len(found), os.fspath(path), lp))
    if not found:
        return InputTransform()
    _, _, path, lp = min(found, key=lambda item: item[:2])
    return _transform_of(path, lp)


def input_size(net):
    """``(H, W)`` of the ``data`` Input of a single-stage test net."""
    if "data" not in net.inputs or len(net.inputs) != 1:
        raise NetDefinitionError(
            f"{net.source}: a single-stage test net takes one Input, 'data' (1, 3, H, W); its "
            f"inputs: {', '.join(net.inputs) or 'none'}")
    shape = tuple(net.blobs["data"].shape)
    if len(shape) != 4 or shape[1] != 3:
        raise NetDefinitionError(f"{net.source}: the Input 'data' of a single-stage test net "
                                 f"is (1, 3, H, W) BGR; found {shape}")
    return int(shape[2]), int(shape[3])


def warp_input(image_bgr, height, width, transform):
    """``(1, 3, height, width)`` float32 input of ``image_bgr`` ``(h, w, 3)``:
    the whole image warped (bilinear), ``(pixel - mean) * scale``."""
    image = np.asarray(image_bgr)
    if image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"expected an (H, W, 3) BGR image, found shape {image.shape}")
    warped = resize_image(image.astype(np.float32, copy=False), height, width)
    return input_blob(warped, transform.mean, transform.scale)


# -- labels and classes ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LabelMap:
    """How ``detection_out``'s labels map to dataset classes: ``class =
    label + offset``; ``classes`` counts background (class 0) too;
    ``what`` names the count's source for messages, ``layer`` the layer
    writing ``detection_out``."""
    classes: int
    offset: int
    what: str
    layer: str = DETECTION_OUT


def _producer(net):
    """The LayerParameter that last writes ``detection_out``."""
    producers = [lp for lp in net.layer_params if DETECTION_OUT in lp.top]
    if not producers:
        raise NetDefinitionError(f"{net.source}: no layer writes '{DETECTION_OUT}'")
    return producers[-1]


def label_map(net):
    """The LabelMap of single-stage ``net`` (module docstring, step 3): a
    DetectionOutput producer counts ``num_classes`` (+1 with
    ``background_label_id`` -1); another producer (YOLO's) its layer's
    ``num_classes`` attribute, background included, labels = classes."""
    lp = _producer(net)
    where = f"{net.source}: layer '{lp.name}' ({lp.type})"
    if lp.type == "DetectionOutput":
        p = lp.detection_output_param
        background = int(p.background_label_id)
        if background not in (0, -1):
            raise NetDefinitionError(
                f"{where}: background_label_id {background}: evaluation needs 0 (our "
                f"datasets' background class) or -1 (no background column)")
        if background == -1:
            return LabelMap(int(p.num_classes) + 1, 1,
                            f"{lp.name}'s num_classes {p.num_classes} + background "
                            f"(background_label_id -1)", lp.name)
        return LabelMap(int(p.num_classes), 0, f"{lp.name}'s num_classes", lp.name)
    count = getattr(net.layer_dict[lp.name], "num_classes", None)
    if count is None:
        raise NetDefinitionError(
            f"{where} writes '{DETECTION_OUT}' but has no num_classes (the classes it labels, "
            f"background included) to evaluate it by")
    return LabelMap(int(count), 0, f"{lp.name}'s num_classes", lp.name)


def scored_classes(net):
    """The classes ``net`` detects, background included: ``label_map``'s
    for a single-stage net, the width of ``cls_prob`` for a two-stage one,
    else None."""
    if is_single_stage(net):
        return label_map(net).classes
    if "cls_prob" in net.blobs:
        return int(net.blobs["cls_prob"].shape[-1])
    return None


def check_dataset_classes(net, dataset, labels=None):
    """DataError unless single-stage ``net`` detects the classes of
    ``dataset`` (background included)."""
    labels = label_map(net) if labels is None else labels
    if labels.classes != dataset.num_classes:
        raise DataError(
            f"{net.source}: the net detects {labels.classes} classes, background included "
            f"({labels.what}), dataset '{dataset.name}' has {dataset.num_classes} "
            f"({', '.join(dataset.classes)}); a net for this dataset has num_classes "
            f"{dataset.num_classes - labels.offset} in layer '{labels.layer}'")


# -- one image ---------------------------------------------------------------------------------

def detection_rows(net):
    """``detection_out`` as ``(K, 7)`` float64 rows (checked shape)."""
    out = to_numpy(net.blobs[DETECTION_OUT].data)
    if out.ndim != 4 or out.shape[:2] != (1, 1) or out.shape[3] != 7:
        raise NetDefinitionError(
            f"{net.source}: '{DETECTION_OUT}' holds Caffe-SSD's rows (1, 1, K, 7) [image, "
            f"label, score, xmin, ymin, xmax, ymax]; found shape {out.shape}")
    return out.reshape(-1, 7).astype(np.float64)


def im_detect_single(net, image_bgr, transform, labels=None):
    """The detections of single-stage ``net`` on one image.

    Returns ``(classes (K,) int64, scores (K,) float32, boxes (K, 4)
    float32)``: dataset classes (1..C-1), and ``[x1, y1, x2, y2]``
    inclusive pixels of ``image_bgr``, clipped to it; the net's row order.
    """
    labels = label_map(net) if labels is None else labels
    height, width = input_size(net)
    net.forward(data=warp_input(image_bgr, height, width, transform))
    image_h, image_w = np.asarray(image_bgr).shape[:2]
    return read_rows(detection_rows(net), labels, image_w, image_h, net.source)


def read_rows(rows, labels, width, height, source="<net>"):
    """``(classes, scores, boxes)`` as ``im_detect_single`` returns them from
    Caffe-SSD rows ``(K, 7)`` of an image ``width`` x ``height``: image 0's
    rows with a label, labels mapped by LabelMap ``labels``. A label outside
    the classes is a NetDefinitionError naming ``source``."""
    rows = np.asarray(rows, np.float64).reshape(-1, 7)
    rows = rows[(rows[:, 0] == 0) & (rows[:, 1] >= 0)]   # image 0; -1: Caffe-SSD's filler
    classes = np.rint(rows[:, 1]).astype(np.int64) + labels.offset
    bad = (classes < 1) | (classes >= labels.classes)
    if bad.any():
        raise NetDefinitionError(
            f"{source}: '{DETECTION_OUT}' has label {rows[bad][0, 1]:g} (class "
            f"{classes[bad][0]}); classes 1..{labels.classes - 1} exist ({labels.what})")
    boxes = pixel_boxes(rows[:, 3:7], width, height)
    return classes, rows[:, 2].astype(np.float32), boxes.astype(np.float32)


def per_class_detections(classes, scores, boxes, num_classes, score_thresh):
    """``im_detect_single``'s rows as ``[c] -> (N, 5)`` float32 ``[x1, y1,
    x2, y2, score]`` (entry 0 empty), the rows scoring above
    ``score_thresh``, highest score first (ties in the net's order)."""
    order = stable_argsort(-np.asarray(scores, np.float64))
    classes, scores, boxes = classes[order], scores[order], boxes[order]
    dets = np.concatenate([boxes, scores[:, None]], axis=1).astype(np.float32)
    keep = scores > score_thresh
    # A loop over the (few) classes, each step vectorized.
    return [np.zeros((0, 5), np.float32)] + [np.ascontiguousarray(dets[keep & (classes == c)])
                                             for c in range(1, num_classes)]
