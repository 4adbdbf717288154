"""A Net prepared for visualization: inputs, targets and detections.

    model = VisualModel("prototxt/rfcn_tiny.prototxt", "rfcn_tiny_iter_4000.caffemodel")
    target = model.target(image_rgb, detection=0)     # detection 0's class score, RoI pinned
    prepared = model.prepare(image_rgb)
    model.forward(prepared, rois=target.rois)

Two kinds of net are understood. A **classifier** scores one image: the
image is resized to the input blob's height and width. A **detector** (an
``im_info`` input and a layer producing ``rois``) is run as
``detection.detector`` runs test images (shorter side to ``scale``, longer
at most ``max_size``), and its targets are per detection: the detection's
RoI is pinned (the net runs to the layer producing ``rois``, the RoI is
written over them, the rest runs) so the class score depends on that one
RoI only.

The target of every gradient method is a **pre-softmax class score**: an
element of ``score_blob``, the bottom of the (last) Softmax layer.
"""
import dataclasses
import os

import numpy as np

from detection.detector import (DEFAULT_MAX_PER_IMAGE, DEFAULT_NMS_THRESH, DEFAULT_SCORE_THRESH,
                                BoxNormalization,
                                find_data_layer_scale, generic_classes, im_detect, load_weights,
                                resolve_test_net)
from layers.input_pipeline.preprocess import PIXEL_MEANS, prepare_image, resize_image
from layers.nms import nms
from netdef.device import to_numpy
from netdef.errors import DataError, NetDefinitionError
from netdef.net import Net

__all__ = ["VisualModel", "Prepared", "Detection", "Target"]


@dataclasses.dataclass(frozen=True)
class Prepared:
    """One image made ready for the net.

    inputs: input blob name -> array (``data`` ``(1, 3, h, w)``, a
        detector's ``im_info`` ``(1, 3)``);
    scale: input-blob pixels per image pixel (a classifier's image is
        resized to the blob, so there it is the height's factor);
    image_shape: ``(H, W)`` of the image;
    input_shape: ``(h, w)`` of the image's part of the input blob.
    """
    inputs: dict
    scale: float
    image_shape: tuple
    input_shape: tuple


@dataclasses.dataclass(frozen=True)
class Detection:
    """Detection ``index`` of an image, as ``solver.detect`` lists them.

    box: ``(4,)`` ``[x1, y1, x2, y2]`` in the image's pixels;
    roi: ``(1, 5)`` ``[batch, x1, y1, x2, y2]`` in input-blob pixels, the
        RoI whose scores and box deltas gave the detection.
    """
    index: int
    class_index: int
    class_name: str
    score: float
    box: np.ndarray
    roi: np.ndarray


@dataclasses.dataclass(frozen=True)
class Target:
    """What a gradient method explains: ``blob[index]`` after a forward
    with ``rois`` pinned (None: the net's own). ``label`` is a caption for
    pictures; ``detection`` the Detection (detectors) or None."""
    blob: str
    index: tuple
    rois: object
    label: str
    detection: object = None


class VisualModel:
    """A Net prepared for visualization.

    VisualModel(net, weights=None, *, device=None, classes=None, scale=None,
                max_size=None, pixel_means=PIXEL_MEANS)

    pixel_means: BGR means a classifier's input has subtracted (a detector
      always uses ``PIXEL_MEANS``, as ``detection.detector`` does).
    net: a prototxt path (a training file is paired with its test file as
      ``solver.test`` does) or text, built in TEST with
      ``force_backward=True`` and the default memory plan so every blob
      stays readable; or an already-built Net (it must run backward to the
      score: built with ``force_backward=True``).
    weights: a ``.caffemodel``, native weights or solver snapshot
      (``detection.detector.load_weights``); its metadata gives a detector's
      test scale, class names and box normalization when they are stored.

    Attributes: net, kind ("detector" or "classifier"), input_blob,
    classes (names; background first for detectors: the weights' names,
    else ``__background__, class1, ...`` as ``solver.detect`` names them;
    classifiers: ``class 0 .. class C-1``), score_blob, score_layer (the
    layer writing it last), rois_layer (detectors: the layer producing
    ``rois``, else None), scale and max_size (detectors), bbox_normalization.
    """

    def __init__(self, net, weights=None, *, device=None, classes=None, scale=None,
                 max_size=None, pixel_means=PIXEL_MEANS):
        files = []                # where a detector's test scale may be written
        if isinstance(net, Net):
            if device is not None and device != net.device:
                raise DataError(f"{net.source}: the net lives on {net.device}, not {device}")
            self.net = net
            files = [net.source] if os.path.isfile(str(net.source)) else []
        else:
            model = os.fspath(net)
            if "\n" not in model and "{" not in model:
                files = [model, resolve_test_net(model)[0]]
                model = files[1]
            self.net = Net(model, "TEST", device=device, force_backward=True)
        metadata, normalized = {}, False
        if weights is not None:
            loaded = load_weights(self.net, weights)
            metadata, normalized = loaded.metadata, loaded.normalized
        self.bbox_normalization = (BoxNormalization.from_dict(metadata["bbox_normalization"])
                                   if normalized else None)
        self.input_blob = "data" if "data" in self.net.inputs else self._first_input()
        self.rois_layer = self._find_rois_layer()
        self.kind = "detector" if self.rois_layer is not None else "classifier"
        self.pixel_means = tuple(float(m) for m in pixel_means)
        if self.kind == "detector" and self.pixel_means != tuple(PIXEL_MEANS):
            raise DataError(f"{self.net.source}: a detector is fed as detection.detector feeds "
                            f"it, with PIXEL_MEANS {PIXEL_MEANS}; other means are for "
                            "classifiers")
        self.score_blob = self._find_score_blob()
        self.score_layer = self.producer(self.score_blob)
        self._check_backward()
        self.classes = self._class_names(classes, metadata)
        self.scale = self.max_size = None
        if self.kind == "detector":
            stored = metadata.get("test_scale")
            found = tuple(stored) if stored else find_data_layer_scale(*files)
            self.scale = int(found[0] if scale is None else scale)
            self.max_size = int(found[1] if max_size is None else max_size)

    # -- the net's structure -------------------------------------------------------------
    def _first_input(self):
        if not self.net.inputs:
            raise NetDefinitionError(f"{self.net.source}: the net has no Input layer to feed "
                                     "an image into")
        return self.net.inputs[0]

    def _find_rois_layer(self):
        if "im_info" not in self.net.inputs:
            return None
        for lp in self.net.layer_params:
            if "rois" in lp.top and "rois" not in lp.bottom and lp.type != "Input":
                return lp.name
        return None

    def _find_score_blob(self):
        softmaxes = [lp for lp in self.net.layer_params if lp.type == "Softmax"]
        if not softmaxes:
            raise NetDefinitionError(
                f"{self.net.source}: no Softmax layer, so no class scores to explain (the "
                "pre-softmax scores are the bottom of the Softmax giving the probabilities)")
        return softmaxes[-1].bottom[0]

    def producer(self, blob):
        """The name of the layer writing ``blob`` last (in-place layers
        write again); DataError naming the net's blobs when there is none."""
        self.check_blob(blob)
        writers = [lp.name for lp in self.net.layer_params if blob in lp.top]
        if not writers:
            raise DataError(f"{self.net.source}: blob '{blob}' is a net input, no layer "
                            "produces it")
        return writers[-1]

    def layer_index(self, name):
        """The position of layer ``name`` in the net."""
        return list(self.net.layer_dict).index(name)

    def check_blob(self, blob):
        """DataError naming ``blob`` and listing the net's blobs when it has none such."""
        if blob not in self.net.blobs:
            raise DataError(f"{self.net.source}: the net has no blob '{blob}' (blobs: "
                            f"{', '.join(self.visible_blobs())})")

    def visible_blobs(self):
        """The net's blob names, without the copies its Split layers make."""
        splits = {t for lp in self.net.layer_params if lp.type == "Split" for t in lp.top}
        return [name for name in self.net.blobs if name not in splits]

    def _check_backward(self):
        if self.net.memory is not None:
            raise NetDefinitionError(
                f"{self.net.source}: the net uses the lean memory plan, so the activations the "
                "visualizations read are reused; build it without keep= (or give VisualModel "
                "the prototxt path)")
        index = self.layer_index(self.score_layer)
        if not self.net.layer_need_backward[index]:
            raise NetDefinitionError(
                f"{self.net.source}: layer '{self.score_layer}' runs no backward, so no "
                "gradient reaches the input; build the Net with force_backward=True (or give "
                "the prototxt path to VisualModel)")

    def _class_names(self, classes, metadata):
        count = int(self.net.blobs[self.score_blob].shape[1])
        if classes is None and metadata.get("classes"):
            classes = metadata["classes"]
        if classes is None:
            return list(generic_classes(count)) if self.kind == "detector" else \
                [f"class {i}" for i in range(count)]
        classes = [str(c) for c in classes]
        if self.kind == "detector" and len(classes) == count - 1:
            classes = ["__background__"] + classes
        if len(classes) != count:
            raise DataError(f"{self.net.source}: {len(classes)} class names given, the net "
                            f"scores {count} classes (blob '{self.score_blob}')")
        return classes

    def class_index(self, class_name):
        """The index of ``class_name``; DataError listing the classes."""
        if class_name not in self.classes:
            raise DataError(f"the net has no class '{class_name}' (classes: "
                            f"{', '.join(self.classes)})")
        return self.classes.index(class_name)

    # -- running ------------------------------------------------------------------------
    def prepare(self, image):
        """``image`` ``(H, W, 3)`` uint8 RGB -> ``Prepared`` (see the class
        docstring for how each kind scales it)."""
        bgr = _bgr(image)
        height, width = bgr.shape[:2]
        if self.kind == "detector":
            blob, scale = prepare_image(bgr, self.scale, self.max_size, self.pixel_means)
            im_info = np.array([[blob.shape[2], blob.shape[3], scale]], dtype=np.float32)
            inputs = {self.input_blob: blob, "im_info": im_info}
            return Prepared(inputs, float(scale), (height, width), tuple(blob.shape[2:]))
        shape = self.net.blobs[self.input_blob].shape
        if len(shape) != 4 or shape[1] != 3:
            raise NetDefinitionError(f"{self.net.source}: input blob '{self.input_blob}' has "
                                     f"shape {shape}; an image needs (N, 3, h, w)")
        centred = bgr - np.asarray(self.pixel_means, np.float32)
        resized = resize_image(centred, shape[2], shape[3])
        blob = np.ascontiguousarray(resized.transpose(2, 0, 1)[None])
        return Prepared({self.input_blob: blob}, shape[2] / height, (height, width),
                        (shape[2], shape[3]))

    def forward(self, prepared, rois=None):
        """Run the net on ``prepared``; ``rois`` ``(R, 5)`` in input-blob
        pixels (detectors): run to ``rois_layer``, write ``rois``, run the
        rest. Returns output blob name -> NumPy array (copies)."""
        if rois is None:
            out = self.net.forward(**prepared.inputs)
        else:
            if self.kind != "detector":
                raise DataError(f"{self.net.source}: a classifier has no RoIs to pin")
            rois = np.asarray(to_numpy(rois), dtype=np.float32).reshape(-1, 5)
            self.net.forward(end=self.rois_layer, **prepared.inputs)
            with self.net.device.context():
                self.net.blobs["rois"].set_data(rois)
            following = self.net.layer_params[self.layer_index(self.rois_layer) + 1].name
            out = self.net.forward(start=following)
        return {name: np.array(to_numpy(value)) for name, value in out.items()}

    def blob_data(self, name):
        """A NumPy copy of blob ``name``'s data."""
        self.check_blob(name)
        return np.array(to_numpy(self.net.blobs[name].data))

    def blob_diff(self, name):
        """A NumPy copy of blob ``name``'s diff."""
        self.check_blob(name)
        return np.array(to_numpy(self.net.blobs[name].diff))

    # -- detections and targets -----------------------------------------------------------
    def detections(self, image, threshold=0.5):
        """The detections of ``image`` scoring at least ``threshold``,
        highest score first, exactly as ``solver.detect`` lists them at that
        threshold (its NMS, score floor and per-image cap)."""
        self._need_detector("detections")
        bgr = _bgr(image)
        scores, boxes = im_detect(self.net, bgr, self.scale, self.max_size,
                                  self.bbox_normalization)
        rois = self.blob_data("rois").reshape(-1, 5)
        return ranked_detections(scores, boxes, rois, self.classes, threshold)

    def _need_detector(self, what):
        if self.kind != "detector":
            raise DataError(f"{self.net.source}: {what} needs a detector (an im_info input "
                            "and a layer producing 'rois'); this net is a classifier")

    def target(self, image, class_name=None, detection=None, threshold=0.5):
        """The score to explain (see ``Target``). Classifier: class
        ``class_name`` (default: the top class). Detector: detection
        ``detection`` (default 0; with only ``class_name``, the first
        detection of that class), RoI pinned, the score of its class (or of
        ``class_name`` when both are given)."""
        if self.kind == "classifier":
            if detection is not None:
                raise DataError(f"{self.net.source}: a classifier has no detections; choose "
                                f"a class (classes: {', '.join(self.classes)})")
            return self._classifier_target(image, class_name)
        return self._detector_target(image, class_name, detection, threshold)

    def _score_index(self, class_index):
        ndim = len(self.net.blobs[self.score_blob].shape)
        return (0, int(class_index)) + (0,) * (ndim - 2)

    def _classifier_target(self, image, class_name):
        wanted = None if class_name is None else self.class_index(class_name)
        self.forward(self.prepare(image))
        scores = self.blob_data(self.score_blob).reshape(
            self.net.blobs[self.score_blob].shape[0], -1)[0]
        index = int(np.argmax(scores)) if wanted is None else wanted
        label = f"{self.classes[index]} (score {scores[index]:.3g})"
        return Target(self.score_blob, self._score_index(index), None, label, None)

    def _detector_target(self, image, class_name, detection, threshold):
        wanted = None if class_name is None else self.class_index(class_name)
        found = self.detections(image, threshold)
        if not found:
            raise DataError(f"no detection scores at least {threshold:g} in this image; lower "
                            "the threshold")
        listing = ", ".join(f"{d.index}: {d.class_name} {d.score:.2f}" for d in found)
        if detection is None and wanted is not None:
            matches = [d for d in found if d.class_index == wanted]
            if not matches:
                raise DataError(f"no detection of class '{class_name}' scores at least "
                                f"{threshold:g} (detections: {listing})")
            detection = matches[0].index
        detection = 0 if detection is None else int(detection)
        if not 0 <= detection < len(found):
            raise DataError(f"detection {detection} is out of range: {len(found)} detection(s) "
                            f"score at least {threshold:g}, 0..{len(found) - 1} ({listing})")
        chosen = found[detection]
        index = chosen.class_index if wanted is None else wanted
        label = f"det {chosen.index}: {chosen.class_name} {chosen.score:.2f}"
        if index != chosen.class_index:
            label += f", score of {self.classes[index]}"
        return Target(self.score_blob, self._score_index(index), chosen.roi, label, chosen)

    # -- maps back to the image ---------------------------------------------------------------
    def to_image(self, map_2d, prepared):
        """A map over the input blob's pixels, or over a feature map's grid
        (upsampled by its stride first), cropped to the image's part of the
        blob and resized to the image's own ``(H, W)``: float32."""
        heat = np.asarray(to_numpy(map_2d), dtype=np.float32)
        if heat.ndim != 2:
            raise DataError(f"expected a 2-D map, found shape {heat.shape}")
        blob_h, blob_w = prepared.inputs[self.input_blob].shape[2:]
        if heat.shape != (blob_h, blob_w):
            stride_h = max(1, int(round(blob_h / heat.shape[0])))
            stride_w = max(1, int(round(blob_w / heat.shape[1])))
            heat = _resize(heat, heat.shape[0] * stride_h, heat.shape[1] * stride_w)
            padded = np.zeros((max(blob_h, heat.shape[0]), max(blob_w, heat.shape[1])),
                              np.float32)
            padded[:heat.shape[0], :heat.shape[1]] = heat
            heat = padded[:blob_h, :blob_w]
        in_h, in_w = prepared.input_shape
        return _resize(heat[:in_h, :in_w], *prepared.image_shape)


def _bgr(image):
    """``(H, W, 3)`` RGB (uint8, or floats on the 0..255 scale) -> float32 BGR."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise DataError(f"expected an (H, W, 3) RGB image, found shape {image.shape}")
    return image[:, :, ::-1].astype(np.float32)


def _resize(heat, height, width):
    """A 2-D float map resized bilinearly (Pillow) to ``(height, width)``."""
    return resize_image(heat[:, :, None], int(height), int(width))[:, :, 0]


def ranked_detections(scores, boxes, rois, classes, threshold):
    """``Detection`` s from ``im_detect``'s ``scores`` ``(R, C)`` and
    ``boxes`` ``(R, 4C)`` and the RoIs ``(R, 5)``: per class the RoIs above
    the score floor, NMS, the per-image cap (``detection.detector.postprocess``
    with ``solver.detect``'s settings), then those scoring at least
    ``threshold``, highest score first (scores equal to 5 decimals: class
    order, then NMS order), the order ``solver.detect`` prints."""
    floor = min(float(threshold), DEFAULT_SCORE_THRESH)
    kept = []                                             # (class, RoI index, score)
    # One NMS per class: a loop over the (few) classes, each step vectorized.
    for c in range(1, scores.shape[1]):
        candidates = np.flatnonzero(scores[:, c] > floor)
        order = nms(boxes[candidates, 4 * c:4 * c + 4], scores[candidates, c],
                    DEFAULT_NMS_THRESH)
        kept += [(c, int(r), scores[r, c]) for r in candidates[order]]
    if len(kept) > DEFAULT_MAX_PER_IMAGE:
        cut = np.sort(np.array([s for _, _, s in kept], np.float32))[-DEFAULT_MAX_PER_IMAGE]
        kept = [k for k in kept if k[2] >= cut]
    # solver.detect orders by the score it prints, rounded to 5 decimals.
    kept = sorted((k for k in kept if k[2] >= threshold), key=lambda k: -round(float(k[2]), 5))
    return [Detection(i, c, classes[c], float(s), np.array(boxes[r, 4 * c:4 * c + 4],
                                                           np.float32),
                      np.array(rois[r:r + 1], np.float32)) for i, (c, r, s) in enumerate(kept)]
