"""YOLOv2's region layer (darknet's ``[region]``; Redmon and Farhadi,
"YOLO9000: Better, Faster, Stronger"): the loss ``Region`` and the test-time
decoder ``RegionOutput``. Parameters: ``region_param`` (classes, coords,
num, softmax, anchors, thresh, the four scales, rescore, bias_match,
prior_images, prior_scale; netdef/proto/caffe.proto).

Predictions ``(N, num * (coords + 1 + classes), H, W)``, anchor-major: the
channels of anchor n are ``n * (5 + C) + k`` with k = 0 tx, 1 ty, 2 tw,
3 th, 4 objectness, 5.. class scores (darknet's entry order). The box of
anchor n in cell (row j, column i), normalized to the image:
``x = (i + sigmoid(tx)) / W``, ``y = (j + sigmoid(ty)) / H``,
``w = exp(tw) * anchor_w / W``, ``h = exp(th) * anchor_h / H`` (anchors in
grid cells, darknet's rule), objectness ``sigmoid(to)``, class
probabilities a softmax over the C scores (``softmax``) or a sigmoid each.
"""
from collections import namedtuple

import numpy as np

from layers.base import Layer, register
from layers.detection_output import DetectionOutputLayer
from layers.kernels import launch
from layers.losses import refuse_gradient, scaled_slope
from layers.region_targets import (CLASS, COORD_WEIGHT, NO_OBJECT, OBJECT, RESPONSIBLE,
                                   TARGET_ROWS, TH, TW, TX, TY, Assignment,
                                   read_ground_truth, region_targets)
from layers.softmax import contiguous, work_buffer
from netdef.device import array_module, to_numpy

RegionSettings = namedtuple(
    "RegionSettings", "classes num softmax anchors thresh object_scale noobject_scale "
                      "class_scale coord_scale rescore bias_match prior_images prior_scale")


def read_region_param(layer):
    """RegionSettings of ``layer.param.region_param`` (anchors an (num, 2)
    float64 array; darknet's 0.5 each when none are given); a
    NetDefinitionError naming the layer for values it cannot use."""
    p = layer.param.region_param
    if p.coords != 4:
        raise layer.definition_error(
            f"region_param.coords: only 4 (x, y, w, h) is supported, found {p.coords}")
    if p.classes < 1 or p.num < 1:
        raise layer.definition_error(
            f"region_param.classes and num must be >= 1, found classes {p.classes}, num {p.num}")
    anchors = list(p.anchors) or [0.5] * (2 * p.num)
    if len(anchors) != 2 * p.num:
        raise layer.definition_error(
            f"region_param.anchors must hold 2 x num = {2 * p.num} values (width, height of "
            f"each anchor, in grid cells), found {len(anchors)}")
    if not all(np.isfinite(a) and a > 0 for a in anchors):
        raise layer.definition_error(
            f"region_param.anchors must be positive, found {[float(a) for a in anchors]}")
    scales = {name: float(getattr(p, name))
              for name in ("object_scale", "noobject_scale", "class_scale", "coord_scale",
                           "prior_scale")}
    for name, value in scales.items():
        if not value >= 0:
            raise layer.definition_error(f"region_param.{name} must be >= 0, found {value:g}")
    return RegionSettings(int(p.classes), int(p.num), bool(p.softmax),
                          np.asarray(anchors, np.float64).reshape(-1, 2), float(p.thresh),
                          scales["object_scale"], scales["noobject_scale"],
                          scales["class_scale"], scales["coord_scale"], bool(p.rescore),
                          bool(p.bias_match), int(p.prior_images), scales["prior_scale"])


def check_predictions(layer, shape, settings):
    """(N, H, W) of predictions ``shape``; a ShapeError naming the layer when
    the channels are not num * (coords + 1 + classes)."""
    channels = settings.num * (5 + settings.classes)
    if len(shape) != 4 or shape[1] != channels:
        raise layer.shape_error(
            0, f"(N, num * (coords + 1 + classes) = {settings.num} * (4 + 1 + "
               f"{settings.classes}) = {channels}, H, W) predictions", shape)
    return shape[0], shape[2], shape[3]


def log_sigmoid(v):
    """log(sigmoid(v)), finite for every v (any array module)."""
    xp = array_module(v)
    return xp.minimum(v, 0) - xp.log1p(xp.exp(-xp.abs(v)))


def sigmoid(v):
    """sigmoid(v) as exp(log_sigmoid(v)): the kernel's formula."""
    return array_module(v).exp(log_sigmoid(v))


def region_boxes(x, settings):
    """Predicted boxes of predictions x (N, A*(5+C), H, W): (N, A, H, W, 4)
    normalized ``[xmin, ymin, xmax, ymax]`` (array math, any device)."""
    xp = array_module(x)
    num, _, height, width = x.shape
    v = x.reshape(num, settings.num, 5 + settings.classes, height, width)
    anchors = xp.asarray(settings.anchors, dtype=x.dtype)
    cx = (xp.arange(width, dtype=x.dtype) + sigmoid(v[:, :, 0])) / width
    cy = (xp.arange(height, dtype=x.dtype)[:, None] + sigmoid(v[:, :, 1])) / height
    half_w = xp.exp(v[:, :, 2]) * anchors[:, 0, None, None] / (2 * width)
    half_h = xp.exp(v[:, :, 3]) * anchors[:, 1, None, None] / (2 * height)
    return xp.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)


def region_scores(x, settings):
    """Per box and class, objectness x class probability: (N, A, H, W, C)."""
    xp = array_module(x)
    num, _, height, width = x.shape
    v = x.reshape(num, settings.num, 5 + settings.classes, height, width)
    scores = v[:, :, 5:]
    if settings.softmax:
        shifted = scores - scores.max(axis=2, keepdims=True)
        probs = xp.exp(shifted)
        probs /= probs.sum(axis=2, keepdims=True)
    else:
        probs = sigmoid(scores)
    return (sigmoid(v[:, :, 4:5]) * probs).transpose(0, 1, 3, 4, 2)


def region_loss_numpy(x, targets, settings, prior_scale):
    """Per-slot loss (M, inner) and gradient like x, of predictions viewed
    as (M = N*A, 5 + C, inner = H*W) with targets (TARGET_ROWS, M, inner):
    the formulas of ``region_loss_forward`` in region.cu."""
    real = x.dtype.type
    t = targets
    sx, sy, so = sigmoid(x[:, 0]), sigmoid(x[:, 1]), sigmoid(x[:, 4])
    tw, th = x[:, 2], x[:, 3]
    resp = t[RESPONSIBLE] != 0
    grad = np.empty_like(x)
    # responsible slots: coordinates, objectness, classes
    w = t[COORD_WEIGHT]
    dx, dy, dw, dh = t[TX] - sx, t[TY] - sy, t[TW] - tw, t[TH] - th
    d_obj = t[OBJECT] - so
    loss_resp = (real(0.5) * w * (dx * dx + dy * dy + dw * dw + dh * dh)
                 + real(0.5 * settings.object_scale) * d_obj * d_obj)
    class_loss, class_grad = _class_terms(x[:, 5:], t[CLASS].astype(np.int64), settings)
    # the others: darknet's early prior term and the no-object term
    px, py = real(0.5) - sx, real(0.5) - sy
    ps, nos = real(prior_scale), real(settings.noobject_scale)
    noobj = t[NO_OBJECT] != 0
    loss_other = (real(0.5) * ps * (px * px + py * py + tw * tw + th * th)
                  + np.where(noobj, real(0.5) * nos * so * so, real(0)))
    loss = np.where(resp, loss_resp + class_loss, loss_other)
    grad[:, 0] = np.where(resp, -w * dx, -ps * px) * sx * (real(1) - sx)
    grad[:, 1] = np.where(resp, -w * dy, -ps * py) * sy * (real(1) - sy)
    grad[:, 2] = np.where(resp, -w * dw, ps * tw)
    grad[:, 3] = np.where(resp, -w * dh, ps * th)
    grad[:, 4] = np.where(resp, -real(settings.object_scale) * d_obj,
                          np.where(noobj, nos * so, real(0))) * so * (real(1) - so)
    grad[:, 5:] = np.where(resp[:, None], class_grad, real(0))
    return loss, grad


def _class_terms(scores, classes, settings):
    """class_scale x (cross-entropy (M, inner), its gradient (M, C, inner))
    of class scores (M, C, inner) against 0-based classes (M, inner)."""
    real = scores.dtype.type
    onehot = classes[:, None] == np.arange(scores.shape[1])[None, :, None]
    scale = real(settings.class_scale)
    if settings.softmax:
        shifted = scores - scores.max(axis=1, keepdims=True)
        log_prob = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss = -np.take_along_axis(log_prob, classes[:, None], axis=1)[:, 0]
        return scale * loss, scale * (np.exp(log_prob) - onehot)
    loss = -np.where(onehot, log_sigmoid(scores), log_sigmoid(-scores)).sum(axis=1)
    return scale * loss, scale * (sigmoid(scores) - onehot)


@register("Region")
class RegionLayer(Layer):
    """YOLOv2's loss. bottoms: predictions (N, num*(coords+1+classes), H, W);
    labels (1, 1, G, 8) rows ``[image, class, instance, xmin, ymin, xmax,
    ymax, difficult]`` (AnnotatedData's, normalized, class 1..classes; image
    -1 rows skipped). top: the loss (), summed over the batch and divided by
    N (darknet's cost is the sum, but its weight update divides by the
    batch: the same step for the same learning rate).

    Per pass (targets on the host, layers/region_targets.py, as Caffe-SSD's
    MultiBoxLoss matches on the host): each ground truth (not difficult)
    makes responsible the prediction of its centre's cell whose anchor shape
    (bias_match; else predicted shape) best matches it; the last box wins a
    shared slot (darknet overwrites). Terms, each 0.5 x scale x squared
    error unless said otherwise (so the gradient is darknet's delta):
    - responsible: coord_scale (2 - w h) on (sigmoid(tx), sigmoid(ty), tw,
      th) against the box's cell offsets and log(size / anchor);
      object_scale on sigmoid(to) against 1, or the predicted box's IoU
      with the truth (rescore); class_scale x cross-entropy of the softmax
      (or the sum of per-class binary cross-entropies without softmax):
      darknet's class delta (onehot - p) is this gradient;
    - every other prediction: noobject_scale on sigmoid(to) against 0 when
      its best IoU with the image's ground truths (difficult ones included)
      is <= thresh; and while fewer than prior_images images were seen in
      TRAIN (counted as darknet's net.seen: before the pass), prior_scale on
      (sigmoid(tx), sigmoid(ty), tw, th) against (0.5, 0.5, 0, 0).

    Backward: the exact gradient of that loss with darknet's constants held
    fixed: the assignment, the best-IoU no-object mask and the rescore IoU
    target are not differentiated (darknet's deltas treat them as targets).
    The loss and gradient run in layers/cuda/region.cu on the GPU and as
    the same formulas in NumPy on the CPU. The images-seen count is saved
    in snapshots with the layer's draw state; it counts this layer's own
    passes (in data-parallel training, one rank's images, where darknet
    counts the whole batch).
    """

    exact_bottoms = 2
    exact_tops = 1
    is_loss = True
    random_state_attributes = ("images_seen",)

    def layer_setup(self, bottoms, tops):
        self.settings = read_region_param(self)
        # Background included: what solver.session compares with the dataset.
        self.num_classes = self.settings.classes + 1
        self.images_seen = 0
        self.element_loss = self.grad = None

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def reshape(self, bottoms, tops):
        self.num, height, width = check_predictions(self, bottoms[0].shape, self.settings)
        labels = tuple(bottoms[1].shape)
        if not labels or labels[-1] != 8:
            raise self.shape_error(1, "(1, 1, G, 8) label rows [image, class, instance, xmin, "
                                      "ymin, xmax, ymax, difficult]", labels)
        self.inner = height * width
        self.slots = self.num * self.settings.num * self.inner
        xp, dtype = array_module(bottoms[0].data), bottoms[0].data.dtype
        self.element_loss = work_buffer(self.element_loss, xp, (self.slots,), dtype)
        self.grad = work_buffer(self.grad, xp, bottoms[0].shape, dtype)
        tops[0].reshape(())

    def _prepare(self, bottoms):
        """(targets (TARGET_ROWS, S) float64 on the host, prior scale)."""
        if self.phase == "TRAIN":
            self.images_seen += self.num
        s = self.settings
        prior = s.prior_scale if self.images_seen < s.prior_images else 0.0
        boxes = region_boxes(to_numpy(bottoms[0].data).astype(np.float64), s)
        gt = read_ground_truth(to_numpy(bottoms[1].data), self.num, s.classes,
                               f"{self.where}: bottom '{self.bottom_name(1)}'")
        settings = Assignment(s.anchors, s.thresh, s.coord_scale, s.rescore, s.bias_match)
        return region_targets(boxes, gt, settings), prior

    def forward_cpu(self, bottoms, tops):
        targets, prior = self._prepare(bottoms)
        x = contiguous(bottoms[0].data).reshape(-1, 5 + self.settings.classes, self.inner)
        targets = targets.astype(x.dtype).reshape(TARGET_ROWS, x.shape[0], self.inner)
        loss, grad = region_loss_numpy(x, targets, self.settings, prior)
        self.element_loss[...] = loss.reshape(-1)
        self.grad[...] = grad.reshape(self.grad.shape)
        tops[0].data[...] = self.element_loss.sum() / self.num

    def forward_gpu(self, bottoms, tops):
        targets, prior = self._prepare(bottoms)
        x = contiguous(bottoms[0].data)
        real, s = x.dtype.type, self.settings
        targets = array_module(x).asarray(targets, dtype=x.dtype)
        launch("region.cu", "region_loss_forward", x.dtype, self.slots,
               (np.int64(self.slots), np.int32(s.classes), np.int64(self.inner), x, targets,
                real(s.object_scale), real(s.noobject_scale), real(s.class_scale), real(prior),
                np.int32(s.softmax), self.element_loss, self.grad))
        tops[0].data[...] = self.element_loss.sum() / self.num

    def backward_cpu(self, tops, propagate_down, bottoms):
        refuse_gradient(self, propagate_down, 1, "labels")
        if propagate_down[0]:
            bottoms[0].diff[...] = scaled_slope(self.grad, tops[0], self.num, bottoms[0].shape)

    backward_gpu = backward_cpu


@register("RegionOutput")
class RegionOutputLayer(DetectionOutputLayer):
    """YOLOv2's detections, in Caffe-SSD DetectionOutput's rows.

    bottom: predictions (N, num*(coords+1+classes), H, W) (region_param as
    for Region). top: (1, 1, K, 7) rows ``[image, label, score, xmin, ymin,
    xmax, ymax]`` normalized, label the dataset class 1..classes, score =
    objectness x class probability (darknet's); -1 rows when nothing is
    found. Thresholding, per-class NMS (overlaps without "+1"), top_k and
    keep_top_k are DetectionOutput's, read from ``detection_output_param``
    (confidence_threshold, nms_param, keep_top_k); its num_classes, when
    given, must be classes + 1 and background_label_id 0 (class 0 is the
    empty background column the labels count from). Boxes and scores are
    array math on the predictions' device; on the GPU the NMS runs as
    layers/cuda/nms.cu. No gradient.
    """

    exact_bottoms = 1

    def layer_setup(self, bottoms, tops):
        self.settings = read_region_param(self)
        expected = self.settings.classes + 1
        given = self.param.detection_output_param
        if given.HasField("num_classes") and given.num_classes != expected:
            raise self.definition_error(
                f"detection_output_param.num_classes must be region_param.classes + 1 = "
                f"{expected}, found {given.num_classes}")
        if given.background_label_id != 0:
            raise self.definition_error(
                "detection_output_param.background_label_id must be 0 (labels count from 1), "
                f"found {given.background_label_id}")
        # DetectionOutput reads num_classes from the message: a private copy
        # with it filled in, so the caller's message is left as written.
        param = type(self.param)()
        param.CopyFrom(self.param)
        param.detection_output_param.num_classes = expected
        self.param = param
        super().layer_setup(bottoms, tops)

    def reshape(self, bottoms, tops):
        _, height, width = check_predictions(self, bottoms[0].shape, self.settings)
        self.num_priors = self.settings.num * height * width
        tops[0].reshape((1, 1, 1, 7))

    def _decoded(self, bottoms):
        """Boxes (N, P, 1, 4) and scores (N, P, 1 + C), column 0 zero."""
        x = bottoms[0].data
        xp, num = array_module(x), x.shape[0]
        boxes = region_boxes(x, self.settings).reshape(num, self.num_priors, 1, 4)
        scores = xp.zeros((num, self.num_priors, self.num_classes), dtype=x.dtype)
        scores[:, :, 1:] = region_scores(x, self.settings).reshape(num, self.num_priors, -1)
        return boxes, scores
