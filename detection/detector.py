"""Inference shared by training, ``solver.test`` and ``solver.detect``.

    net, info = load_test_net("prototxt/rfcn_tiny.prototxt", "out/rfcn_tiny/rfcn_tiny_iter_4000.caffemodel")
    detector = Detector(net, scale=info.scale, max_size=info.max_size,
                        bbox_normalization=info.bbox_normalization)
    per_class = detector.detect(load_image_bgr("street.jpg"))   # [c] -> (N, 5)
    all_boxes = detector.detect_dataset(dataset)               # all_boxes[c][i]

One image, as py-faster-rcnn's / py-R-FCN's ``im_detect`` and ``test_net``:

1. scale the image (shorter side ``scale``, longer at most ``max_size``),
   subtract the pixel means, forward ``data`` and ``im_info``; a Fast
   R-CNN test net (an input ``rois``) gets the image's proposals from a
   file as ``rois`` ``[0, x1, y1, x2, y2]`` times the scale instead
   (``Detector(..., proposals={image id: (R, 4)})``, as py-faster-rcnn's
   ``im_detect(net, im, boxes)``);
2. read ``rois`` ``(R, 5)``, ``cls_prob`` ``(R, C)`` and ``bbox_pred``
   ``(R, 4C)`` (class-aware) or ``(R, 8)`` (class-agnostic: background box,
   then the one foreground box every class uses);
3. weights trained with normalized box targets predict
   ``(t - mean) / std``: when they are still in that form (a native
   snapshot, or the weights of a net being trained) the deltas are first
   mapped back, ``t = d * std + mean``; a ``.caffemodel`` written by the
   solver has this folded into its weights already (see
   ``bbox_export_transform``), as py-faster-rcnn's snapshots do;
4. decode the RoIs (divided by the image scale) with the deltas and clip
   them to the image;
5. per foreground class: the boxes scoring above ``score_thresh``, greedy
   NMS at ``nms_thresh`` (layers.nms); then at most ``max_per_image``
   detections over all classes (the highest scores).

Single-stage nets (SSD, RetinaNet, YOLO: a ``detection_out`` blob holding
the net's own final detections) take detection.single_stage's path
instead: the whole image warped to the ``data`` Input's size, the mean and
scale of the net file's TRAIN-phase AnnotatedData layer, the rows of
``detection_out`` as pixel boxes per class, the score threshold and the
cap, no second NMS. ``Detector`` chooses the path by the net; ``scale`` and
``max_size`` play no part there (the Input shape decides).

Which test net: a file holding both phases (include rules, as
``python -m prototxt.rfcn --phase BOTH`` writes) gives its TEST phase; a
training file (one with a RoIData data layer, or Caffe-SSD's AnnotatedData,
and no TEST-phase layers) is paired with its test file beside it by name:
the last "train" in the file name becomes "test" (py-R-FCN's
train_agnostic.prototxt -> test_agnostic.prototxt), then the same without
"_ohem" (train_agnostic_ohem.prototxt -> test_agnostic.prototxt); any
other file is a test net itself.
"""
import dataclasses
import os
import zipfile

import numpy as np

from layers.boxes import bbox_transform_inv, clip_boxes
from layers.nms import nms
from layers.python_compat import parse_param_str
from netdef import caffe_pb2
from netdef.device import to_numpy
from netdef.snapshot_format import load_meta
from netdef.errors import DataError, NetDefinitionError, WeightsError
from netdef.net import Net
from netdef.schema import read_net
from netdef.weights import copy_layers, group_param_keys
from detection.single_stage import (DETECTION_OUT, check_dataset_classes, im_detect_single,
                                    is_single_stage, label_map, per_class_detections)
from detection.single_stage import input_transform as file_input_transform
from layers.input_pipeline.preprocess import prefetched_images, prepare_image
from solver.snapshot import SolverState

__all__ = ["Detector", "im_detect", "postprocess", "cap_per_image", "BoxNormalization",
           "TestNetInfo", "resolve_test_net", "load_test_net", "load_weights",
           "find_data_layer_scale", "bbox_param_layer", "bbox_export_transform", "read_class_names",
           "generic_classes", "DEFAULT_SCORE_THRESH", "DEFAULT_NMS_THRESH",
           "DEFAULT_MAX_PER_IMAGE"]

DEFAULT_SCORE_THRESH = 0.05   # py-faster-rcnn's test_net
DEFAULT_NMS_THRESH = 0.3      # cfg.TEST.NMS
DEFAULT_MAX_PER_IMAGE = 100
DEFAULT_SCALE, DEFAULT_MAX_SIZE = 600, 1000


@dataclasses.dataclass(frozen=True)
class BoxNormalization:
    """Box-target normalization ``(t - means) / stds`` (4 values each)."""
    means: tuple = (0.0, 0.0, 0.0, 0.0)
    stds: tuple = (0.1, 0.1, 0.2, 0.2)

    def as_dict(self):
        return {"means": [float(v) for v in self.means], "stds": [float(v) for v in self.stds]}

    @classmethod
    def from_dict(cls, value):
        if not value:
            return None
        return cls(tuple(float(v) for v in value["means"]), tuple(float(v) for v in value["stds"]))

    def unnormalize(self, deltas):
        """``deltas`` ``(R, 4K)`` mapped back: ``d * std + mean`` per column."""
        reps = deltas.shape[1] // 4
        stds = np.tile(np.asarray(self.stds, deltas.dtype), reps)
        means = np.tile(np.asarray(self.means, deltas.dtype), reps)
        return deltas * stds + means


# -- one image ---------------------------------------------------------------------------

#: The blobs ``im_detect`` reads from a test net.
DETECTION_BLOBS = ("rois", "cls_prob", "bbox_pred")


def keep_detection_blobs(net):
    """Give ``net`` the lean memory plan, keeping what ``im_detect`` reads
    (a single-stage net: ``detection_out``): every other activation's
    storage is reused as soon as it is consumed."""
    net.lean_memory([name for name in DETECTION_BLOBS + (DETECTION_OUT,) if name in net.blobs])


def _blob(net, name):
    if name not in net.blobs:
        raise NetDefinitionError(
            f"{net.source}: the test net has no blob '{name}' (a detection test net gives "
            f"'rois', 'cls_prob' and 'bbox_pred'; blobs: {', '.join(net.blobs)})")
    return to_numpy(net.blobs[name].data)


def _external_rois(net, boxes, im_scale):
    """The ``rois`` input ``(R, 5)`` ``[0, x1, y1, x2, y2]`` of a Fast
    R-CNN test net for proposals ``boxes`` ``(R, 4)`` in the image's pixels
    (py-faster-rcnn's ``_get_rois_blob`` at one scale)."""
    if "rois" not in net.inputs:
        raise NetDefinitionError(
            f"{net.source}: proposals from a file need a Fast R-CNN test net with the inputs "
            f"data and rois; this net's inputs: {', '.join(net.inputs) or 'none'} (an RPN "
            f"test net makes its own rois: drop --proposals)")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    rois = np.zeros((len(boxes), 5), np.float32)
    rois[:, 1:] = boxes * im_scale
    return rois


def im_detect(net, image_bgr, scale=DEFAULT_SCALE, max_size=DEFAULT_MAX_SIZE,
              bbox_normalization=None, proposals=None):
    """Scores and boxes of every RoI of one image.

    Args:
        net: a TEST-phase detection Net (inputs ``data``, ``im_info``).
        image_bgr: ``(H, W, 3)`` BGR pixels (``layers.input_pipeline.preprocess.load_image_bgr``).
        scale, max_size: the image scaling rule (shorter side, longer cap).
        bbox_normalization: a ``BoxNormalization`` when the net predicts
            normalized deltas, else None.
        proposals: None (the net makes its RoIs: RPN), or ``(R, 4)``
            boxes in the image's pixels fed to a Fast R-CNN test net's
            ``rois`` input (``im_info`` too when the net has that input).

    Returns ``(scores (R, C), boxes (R, 4C))`` float32: class probabilities
    and, per class, the decoded box ``[x1, y1, x2, y2]`` in the image's
    pixels, clipped to it (class-agnostic nets: the foreground box for every
    class, column block 0 the background box).
    """
    height, width = image_bgr.shape[:2]
    if proposals is not None and np.asarray(proposals).size == 0 and "cls_prob" in net.blobs:
        classes = net.blobs["cls_prob"].shape[-1]     # nothing to score: no RoI
        return np.zeros((0, classes), np.float32), np.zeros((0, 4 * classes), np.float32)
    blob, im_scale = prepare_image(image_bgr, scale, max_size)
    im_info = np.array([[blob.shape[2], blob.shape[3], im_scale]], dtype=np.float32)
    if proposals is None:
        net.forward(data=blob, im_info=im_info)
    else:
        inputs = {"data": blob, "rois": _external_rois(net, proposals, im_scale)}
        if "im_info" in net.inputs:
            inputs["im_info"] = im_info
        net.forward(**inputs)
    rois = _blob(net, "rois").reshape(-1, 5)
    scores = _blob(net, "cls_prob").reshape(rois.shape[0], -1).astype(np.float32)
    deltas = _blob(net, "bbox_pred").reshape(rois.shape[0], -1).astype(np.float32)
    classes = scores.shape[1]
    if deltas.shape[1] not in (8, 4 * classes):
        raise NetDefinitionError(
            f"{net.source}: bbox_pred has {deltas.shape[1]} values per RoI; expected 8 "
            f"(class-agnostic) or 4 x {classes} classes = {4 * classes}")
    if bbox_normalization is not None:
        deltas = bbox_normalization.unnormalize(deltas)
    boxes = rois[:, 1:5].astype(np.float32) / np.float32(im_scale)
    boxes = clip_boxes(bbox_transform_inv(boxes, deltas), height, width)
    if deltas.shape[1] == 8 and classes != 2:
        boxes = np.concatenate([boxes[:, :4]] + [boxes[:, 4:8]] * (classes - 1), axis=1)
    return scores, boxes


def postprocess(scores, boxes, score_thresh=DEFAULT_SCORE_THRESH, nms_thresh=DEFAULT_NMS_THRESH,
                max_per_image=DEFAULT_MAX_PER_IMAGE):
    """Detections of one image from ``im_detect``'s output: a list indexed
    by class (entry 0 empty) of ``(N, 5)`` float32 ``[x1, y1, x2, y2,
    score]``, highest score first."""
    classes = scores.shape[1]
    out = [np.zeros((0, 5), np.float32)]
    # One NMS per class: a loop over the (few) classes, each step vectorized.
    for c in range(1, classes):
        keep = np.flatnonzero(scores[:, c] > score_thresh)
        dets = np.concatenate([boxes[keep, 4 * c:4 * c + 4], scores[keep, c:c + 1]], axis=1)
        kept = nms(dets[:, :4], dets[:, 4], nms_thresh)
        out.append(np.ascontiguousarray(dets[kept], dtype=np.float32))
    return cap_per_image(out, max_per_image)


def cap_per_image(per_class, max_per_image):
    """``per_class`` (``[c] -> (N, 5)``, entry 0 background) cut to the
    ``max_per_image`` highest scores over all classes (ties at the cut
    kept); 0 or None: no cap."""
    if max_per_image and max_per_image > 0:
        all_scores = np.concatenate([d[:, 4] for d in per_class[1:]])
        if all_scores.size > max_per_image:
            cut = np.sort(all_scores)[-max_per_image]
            return [per_class[0]] + [d[d[:, 4] >= cut] for d in per_class[1:]]
    return per_class


class Detector:
    """``im_detect`` + ``postprocess`` with fixed settings (see the module
    docstring); ``detect_dataset`` runs a whole dataset, loading the next
    image in a background thread while the net works.

    A single-stage net (a ``detection_out`` blob) runs
    detection.single_stage's path: ``scale``, ``max_size``,
    ``bbox_normalization``, ``nms_thresh`` and ``proposals`` play no part
    (the Input shape decides the size; the net did its NMS);
    ``input_transform`` (a single_stage.InputTransform) gives the mean and
    scale, by default those of the AnnotatedData layer of the net's file
    (``net.source``), else SSD's mean.
    """

    def __init__(self, net, *, scale=DEFAULT_SCALE, max_size=DEFAULT_MAX_SIZE,
                 bbox_normalization=None, score_thresh=DEFAULT_SCORE_THRESH,
                 nms_thresh=DEFAULT_NMS_THRESH, max_per_image=DEFAULT_MAX_PER_IMAGE,
                 proposals=None, input_transform=None):
        self.net = net
        self.single_stage = is_single_stage(net)
        self.labels = label_map(net) if self.single_stage else None
        if self.single_stage and input_transform is None:
            input_transform = file_input_transform(net.source)
        self.input_transform = input_transform
        # {image id: (R, 4) boxes} for a Fast R-CNN test net (detection.proposal_checks)
        self.proposals = proposals
        self.scale, self.max_size = int(scale), int(max_size)
        self.bbox_normalization = bbox_normalization
        self.score_thresh, self.nms_thresh = float(score_thresh), float(nms_thresh)
        self.max_per_image = int(max_per_image)

    def im_detect(self, image_bgr, proposals=None):
        """``im_detect``'s ``(scores (R, C), boxes (R, 4C))``; a single-stage
        net: ``single_stage.im_detect_single``'s ``(classes (K,), scores
        (K,), boxes (K, 4))``."""
        if self.single_stage:
            return im_detect_single(self.net, image_bgr, self.input_transform, self.labels)
        return im_detect(self.net, image_bgr, self.scale, self.max_size, self.bbox_normalization,
                         proposals)

    def detect(self, image_bgr, proposals=None):
        """``postprocess`` of one image: ``[c] -> (N, 5)``; ``proposals``
        ``(R, 4)`` for a Fast R-CNN test net. A single-stage net: its rows
        per class above the score threshold, then the cap per image."""
        if self.single_stage:
            classes, scores, boxes = self.im_detect(image_bgr)
            return cap_per_image(per_class_detections(classes, scores, boxes,
                                                      self.labels.classes, self.score_thresh),
                                 self.max_per_image)
        scores, boxes = self.im_detect(image_bgr, proposals)
        return postprocess(scores, boxes, self.score_thresh, self.nms_thresh, self.max_per_image)

    def detect_dataset(self, dataset, progress=None):
        """``all_boxes[c][i]`` for every record of ``dataset``;
        ``progress(done, total)`` is called after each image."""
        records = list(dataset.records)
        classes = len(dataset.classes)
        if self.single_stage:
            check_dataset_classes(self.net, dataset, self.labels)
        all_boxes = [[None] * len(records) for _ in range(classes)]
        for i, (record, image) in enumerate(prefetched_images(records)):
            dets = self.detect(image, None if self.proposals is None
                               else self._proposals_of(record))
            if len(dets) != classes:
                raise DataError(
                    f"{self.net.source}: the net scores {len(dets)} classes (background "
                    f"included), dataset '{dataset.name}' has {classes}")
            for c in range(classes):
                all_boxes[c][i] = dets[c]
            if progress is not None:
                progress(i + 1, len(records))
        return all_boxes

    def _proposals_of(self, record):
        if record.image_id not in self.proposals:
            raise DataError(f"no proposals for image '{record.image_id}' ({record.path})")
        return self.proposals[record.image_id]


# -- box-target normalization in exported weights ------------------------------------------

def bbox_param_layer(net, blob="bbox_pred"):
    """``(layer name, repeat)`` of the layer whose parameters produce the
    box deltas of ``net``: the producer of ``blob`` when it has parameters
    (Faster R-CNN's bbox_pred InnerProduct, repeat 1), else followed back
    through parameter-free layers (R-FCN: bbox_pred <- voting Pooling <-
    PSROIPooling <- the rfcn_bbox convolution, whose ``repeat`` = k*k
    consecutive channels hold each box value, as PSROIPooling's channel
    layout ``(c * k + ph) * k + pw`` has it). None when there is no such
    blob or layer."""
    if blob not in net.blobs:
        return None
    width = int(np.prod(net.blobs[blob].shape[1:]))
    producers = {}
    for lp in net.layer_params:
        for top in lp.top:
            producers[top] = lp          # the last writer (in-place layers write again)
    seen = set()
    name = blob
    while name in producers and name not in seen:
        seen.add(name)
        lp = producers[name]
        layer = net.layer_dict[lp.name]
        if layer.blobs:
            outputs = layer.blobs[0].shape[0]
            if outputs % width:
                return None
            return lp.name, outputs // width
        if not lp.bottom:
            return None
        name = lp.bottom[0]
    return None


def bbox_export_transform(layer_name, repeat, normalization):
    """An ``export_transform`` for SGDSolver: the weights of ``layer_name``
    (output channel ``o`` predicts box value ``(o // repeat) % 4``) are
    un-normalized, ``W *= std`` and ``b = b * std + mean``, so the exported
    net predicts plain deltas (py-faster-rcnn's / py-R-FCN's snapshot)."""
    stds_4 = np.asarray(normalization.stds, np.float64)
    means_4 = np.asarray(normalization.means, np.float64)

    def transform(name, arrays):
        if name != layer_name:
            return arrays
        weight = arrays[0]
        index = (np.arange(weight.shape[0]) // repeat) % 4
        stds, means = stds_4[index], means_4[index]
        out = [(weight * stds.reshape((-1,) + (1,) * (weight.ndim - 1))).astype(weight.dtype)]
        if len(arrays) > 1:
            bias = arrays[1]
            out.append((bias * stds.reshape(bias.shape) + means.reshape(bias.shape))
                       .astype(bias.dtype))
        return out + list(arrays[2:])

    return transform


# -- weights and metadata --------------------------------------------------------------------

@dataclasses.dataclass
class LoadedWeights:
    """What ``load_weights`` read: the WeightsReport, the training metadata
    (from the snapshot, or from the solver state beside a ``.caffemodel``),
    and whether the box deltas are still normalized."""
    report: object
    metadata: dict
    normalized: bool
    kind: str            # "solverstate", "native" or "caffemodel"


def _meta_only(path):
    """The JSON metadata of a native archive, without reading its arrays
    (checked as every archive is read: netdef.snapshot_format.load_meta)."""
    meta = load_meta(path)
    return meta if isinstance(meta, dict) else {}


def load_weights(net, path):
    """Load ``path`` into ``net`` by layer name: a solver snapshot
    (``.solverstate.npz``), a native weights file (``Net.save_weights``) or
    a ``.caffemodel``. Returns ``LoadedWeights``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: no such weights file")
    if zipfile.is_zipfile(path):
        meta = _meta_only(path)
        if meta.get("kind") == "solverstate":
            state = SolverState.load(path)
            report = copy_layers(net, group_param_keys(state.weights), path)
            metadata = dict(state.metadata or {})
            return LoadedWeights(report, metadata, bool(metadata.get("bbox_normalization")),
                                 "solverstate")
        report = net.copy_from(path)
        # Net.save_weights(path, meta) stores the caller's keys beside net / phase.
        metadata = dict(meta.get("metadata") or {k: v for k, v in meta.items()
                                                  if k not in ("net", "phase")})
        normalized = bool(metadata.get("bbox_normalization")) and not meta.get("unnormalized")
        return LoadedWeights(report, metadata, normalized, "native")
    report = net.copy_from(path)
    metadata = {}
    stem = path[:-len(".caffemodel")] if path.endswith(".caffemodel") else None
    if stem and os.path.isfile(stem + ".solverstate.npz"):
        metadata = dict(_meta_only(stem + ".solverstate.npz").get("metadata") or {})
    return LoadedWeights(report, metadata, False, "caffemodel")


# -- which test net, at which scale ------------------------------------------------------------

def _is_data_layer(lp):
    return lp.type == "RoIData" or (
        lp.type == "Python" and lp.python_param.module == "roi_data_layer.layer")


def _is_training_input(lp):
    """A data layer of a training file (the two-stage ones, AnnotatedData)."""
    return _is_data_layer(lp) or lp.type == "AnnotatedData"


def _phases(lp):
    """Phases named by ``lp``'s include rules ("TRAIN"/"TEST"), and those
    excluded."""
    names = {caffe_pb2.TRAIN: "TRAIN", caffe_pb2.TEST: "TEST"}
    include = {names[r.phase] for r in lp.include if r.HasField("phase")}
    exclude = {names[r.phase] for r in lp.exclude if r.HasField("phase")}
    return include, exclude


def resolve_test_net(path):
    """The prototxt holding the test net for ``path`` (see the module
    docstring): ``(test path, phase-split)`` where phase-split says the
    file holds both phases. Raises NetDefinitionError when a training file
    has no test file beside it."""
    path = os.fspath(path)
    param = read_net(path)
    has_test_layers = False
    has_data_layer = False
    for lp in param.layer:
        include, exclude = _phases(lp)
        if "TEST" in include or "TRAIN" in exclude:
            has_test_layers = True
        if _is_training_input(lp) and "TEST" not in include:
            has_data_layer = True
    if has_test_layers or not has_data_layer:
        return path, has_test_layers
    folder, name = os.path.split(path)
    candidates = []
    at = name.rfind("train")
    if at >= 0:
        renamed = name[:at] + "test" + name[at + len("train"):]
        candidates.append(renamed)
        if "_ohem" in renamed:
            candidates.append(renamed.replace("_ohem", ""))
    for candidate in candidates:
        if os.path.isfile(os.path.join(folder, candidate)):
            return os.path.join(folder, candidate), False
    tried = ", ".join(os.path.join(folder, c) for c in candidates) or "(no 'train' in the name)"
    raise NetDefinitionError(
        f"{path}: a training net without a TEST phase, and no test net beside it (looked for "
        f"{tried}); give one with --test-net (solver.train also runs without evaluating, "
        f"--no-eval), or write both phases in one file (python -m prototxt.rfcn ... "
        f"--phase BOTH)")


def find_data_layer_scale(*paths):
    """``(scale, max_size)`` from the first RoIData / roi_data_layer layer
    found in ``paths`` (its first scale), else (600, 1000)."""
    for path in paths:
        if path is None:
            continue
        for lp in read_net(path).layer:
            if not _is_data_layer(lp):
                continue
            if lp.type == "RoIData":
                p = lp.roi_data_param
                scales = list(p.scales) or [DEFAULT_SCALE]
                return int(scales[0]), int(p.max_size)
            values = parse_param_str(lp.python_param.param_str)
            scales = values.get("scales") or [DEFAULT_SCALE]
            scales = [scales] if np.isscalar(scales) else list(scales)
            return int(scales[0]), int(values.get("max_size", DEFAULT_MAX_SIZE))
    return DEFAULT_SCALE, DEFAULT_MAX_SIZE


@dataclasses.dataclass
class TestNetInfo:
    """How to run a test net: its file, image scale, box normalization,
    class names (None when unknown), the weights' metadata, and for a
    single-stage net the single_stage.InputTransform (else None)."""
    path: str
    scale: int
    max_size: int
    bbox_normalization: object
    classes: tuple
    metadata: dict
    weights: object
    input_transform: object = None


def load_test_net(net_path, weights, *, device=None, test_net=None, scale=None, max_size=None,
                  classes=None, stream=None):
    """Build the TEST net of ``net_path`` (``test_net`` overrides which
    file) and load ``weights``. The scale comes from ``scale`` / ``max_size``,
    else the training metadata, else the net file's data layer, else
    600 / 1000 (a single-stage net ignores them: its Input shape decides;
    its mean and scale come from the AnnotatedData layer of ``net_path`` or
    the test file, single_stage.input_transform). Class names: ``classes``,
    else the metadata's. The weights report goes to ``stream``. Returns
    ``(net, TestNetInfo)``."""
    test_path = os.fspath(test_net) if test_net else resolve_test_net(net_path)[0]
    net = Net(test_path, "TEST", device=device)
    keep_detection_blobs(net)
    loaded = load_weights(net, weights)
    if stream is not None:
        print(loaded.report.summary(), file=stream)
    meta = loaded.metadata
    if scale is None or max_size is None:
        stored = meta.get("test_scale")
        found = tuple(stored) if stored else find_data_layer_scale(net_path, test_path)
        scale = found[0] if scale is None else scale
        max_size = found[1] if max_size is None else max_size
    normalization = None
    if loaded.normalized:
        normalization = BoxNormalization.from_dict(meta["bbox_normalization"])
    names = tuple(classes) if classes else (tuple(meta["classes"]) if meta.get("classes")
                                            else None)
    transform = file_input_transform(net_path, test_path) if is_single_stage(net) else None
    return net, TestNetInfo(test_path, int(scale), int(max_size), normalization, names, meta,
                            loaded, transform)


def read_class_names(path):
    """Class names from a text file, one per line (blank lines and ``#``
    comments skipped); ``__background__`` is put first when missing."""
    try:
        with open(path, encoding="utf-8") as handle:
            names = [line.strip() for line in handle]
    except OSError as exc:
        raise DataError(f"{path}: cannot read the class list: {exc.strerror or exc}") from None
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise DataError(f"{path}: the class list is empty")
    if names[0] != "__background__":
        names.insert(0, "__background__")
    return tuple(names)


def generic_classes(count):
    """``("__background__", "class1", ...)`` for ``count`` classes."""
    return ("__background__",) + tuple(f"class{i}" for i in range(1, count))
