"""RPN inside: what the region proposal network of a detector works with,
drawn over one image.

    picture = rpn_inside(model, image, gt_boxes=record.boxes)
    picture.save("rpn.png")

Four panels, each over the image (boxes mapped back to the image's pixels):

1. the anchors at one location of the RPN's map (default: the location of
   the best-scoring anchor), one colour per anchor size, the location's
   centre marked;
2. the anchors AnchorTarget would label for the image given its
   ground-truth boxes (``layers.detection_targets.AnchorTargetCreator``
   with the settings of the net file's AnchorTarget layer, of any phase, or
   the schema's defaults when the file has none (a test-only file); its seed,
   else 0, so the sampling is repeatable): foreground
   boxes, background anchors as dots at their centres, the ground truth in
   white;
3. the ``top`` best-scoring proposals before NMS (the Proposal layer's own
   steps: decode, clip, drop small boxes, sort), brighter for higher scores;
4. the ``top`` first proposals after NMS (the Proposal layer's output).
"""
import dataclasses

import numpy as np
from PIL import Image, ImageDraw

from detection.visualize.browser import titled
from detection.visualize.overlay import tile
from layers.boxes import bbox_transform_inv, clip_boxes, filter_small_boxes
from layers.detection_targets import LABEL_BG, LABEL_FG, AnchorTargetCreator
from layers.proposal import top_scores
from netdef import caffe_pb2
from netdef.device import to_numpy
from netdef.errors import DataError

__all__ = ["rpn_inside", "RPNState", "rpn_state", "anchor_labels"]

GT_COLOUR = (255, 255, 255)
FG_COLOUR = (60, 220, 60)
BG_COLOUR = (230, 40, 40)
# Anchor colours at a location, by size (one per scale; cycled if more).
SIZE_COLOURS = ((255, 210, 0), (0, 200, 255), (255, 80, 200), (120, 255, 120), (255, 140, 0))


@dataclasses.dataclass
class RPNState:
    """What the Proposal layer saw and gave for one image, in input-blob
    pixels: ``anchors`` ``(H*W*A, 4)``, ``scores`` ``(H*W*A,)`` foreground
    probabilities, ``boxes`` ``(H*W*A, 4)`` decoded and clipped, ``order``
    the candidates kept before NMS (best first), ``rois`` ``(R, 4)`` the
    proposals after NMS, ``map_shape`` ``(H, W)``, ``num_anchors`` A,
    ``base_anchors`` ``(A, 4)``, ``feat_stride``, ``im_info`` ``(3,)``."""
    anchors: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    order: np.ndarray
    rois: np.ndarray
    map_shape: tuple
    num_anchors: int
    base_anchors: np.ndarray
    feat_stride: int
    im_info: np.ndarray


def _proposal_layer(model):
    """The index of the Proposal layer producing the detector's RoIs."""
    net = model.net
    if model.kind != "detector":
        raise DataError(f"rpn: {net.source} is a classifier (no im_info input and no layer "
                        "producing 'rois'); RPN inside needs a detector with a Proposal layer")
    index = list(net.layer_dict).index(model.rois_layer)
    if net.layers[index].type != "Proposal":
        raise DataError(f"rpn: the RoIs of {net.source} come from layer '{model.rois_layer}' "
                        f"of type {net.layers[index].type}, not a Proposal layer (no RPN)")
    return index


def rpn_state(model, prepared):
    """Run the net on ``prepared`` (a ``VisualModel.prepare`` result) and
    redo the Proposal layer's steps before NMS on the host: an
    ``RPNState``."""
    index = _proposal_layer(model)
    model.forward(prepared)
    layer = model.net.layers[index]
    prob, deltas, info = (to_numpy(b.data) for b in model.net.bottom_blobs[index])
    a = layer.num_anchors
    height, width = prob.shape[2:]
    im_height, im_width, im_scale = (float(v) for v in info[0])
    # The Proposal layer's anchor order: (y, x, a) flattened.
    scores = prob[0, a:].transpose(1, 2, 0).reshape(-1).astype(np.float64)
    deltas = deltas[0].transpose(1, 2, 0).reshape(-1, 4).astype(np.float64)
    anchors = to_numpy(layer.anchors).astype(np.float64)
    boxes = clip_boxes(bbox_transform_inv(anchors, deltas), im_height, im_width)
    candidates = np.flatnonzero(filter_small_boxes(boxes, layer.min_size * im_scale))
    order = top_scores(scores, candidates, layer.pre_nms_top_n)
    rois = to_numpy(model.net.top_blobs[index][0].data)[:, 1:5].astype(np.float64)
    return RPNState(anchors, scores, boxes, order, rois, (height, width), a,
                    np.asarray(layer.base_anchors, np.float64), layer.feat_stride,
                    info[0].astype(np.float64))


def _anchor_target_settings(net):
    """The ``anchor_target_param`` of the net file's AnchorTarget layer (any
    phase), else the defaults."""
    for lp in net.param.layer:
        if lp.type == "AnchorTarget":
            return lp.anchor_target_param
    return caffe_pb2.AnchorTargetParameter()


def anchor_labels(model, state, gt_boxes):
    """AnchorTarget's labels ``(H*W*A,)`` (1 fg, 0 bg, -1 ignored) of the
    anchors of ``state`` for ``gt_boxes`` ``(G, 4)`` in input-blob pixels,
    with the net file's AnchorTarget settings and its seed (0 when unset)."""
    p = _anchor_target_settings(model.net)
    creator = AnchorTargetCreator(
        batch_size=p.batch_size, fg_fraction=p.fg_fraction,
        positive_overlap=p.positive_overlap, negative_overlap=p.negative_overlap,
        clobber_positives=p.clobber_positives, positive_weight=p.positive_weight,
        allowed_border=p.allowed_border)
    rng = np.random.default_rng(int(p.seed) if p.seed >= 0 else 0)
    labels, _, _, _ = creator(state.anchors, np.asarray(gt_boxes, np.float64).reshape(-1, 4),
                              state.im_info[:2], rng)
    return to_numpy(labels)


def _check_location(location, state):
    height, width = state.map_shape
    if location is None:
        best = int(state.order[0]) if state.order.size else 0
        return divmod(best // state.num_anchors, width)
    try:
        row, col = (int(v) for v in location)
    except (TypeError, ValueError):
        raise DataError(f"rpn: location must be (row, column) on the RPN's map; got "
                        f"{location!r}") from None
    if not (0 <= row < height and 0 <= col < width):
        raise DataError(f"rpn: location ({row}, {col}) is outside the RPN's {height} x {width} "
                        f"map: rows 0..{height - 1}, columns 0..{width - 1}")
    return row, col


def _boxes_on(canvas, boxes, colours, width):
    """Outline ``boxes`` ``(n, 4)`` (image pixels) on ``canvas`` in place."""
    draw = ImageDraw.Draw(canvas)
    # One Pillow call per box: a loop over the (few) boxes shown.
    for box, colour in zip(boxes, colours):
        draw.rectangle([float(v) for v in box], outline=tuple(colour), width=width)


def _score_colours(count):
    """``count`` colours from bright yellow (best) to dim blue (last)."""
    t = np.linspace(0.0, 1.0, max(count, 1))[:, None]
    best, worst = np.array([255, 240, 40]), np.array([40, 90, 255])
    return np.round(best * (1 - t) + worst * t).astype(int)[:count]


def _anchors_panel(image, state, location, scale):
    row, col = location
    first = (row * state.map_shape[1] + col) * state.num_anchors
    anchors = state.anchors[first:first + state.num_anchors] / scale
    sizes = np.sqrt(np.prod(state.base_anchors[:, 2:] - state.base_anchors[:, :2] + 1, axis=1))
    rank = np.unique(np.round(sizes), return_inverse=True)[1]
    canvas = image.copy()
    _boxes_on(canvas, anchors, [SIZE_COLOURS[r % len(SIZE_COLOURS)] for r in rank], 1)
    stride = state.feat_stride
    cx, cy = (col * stride + (stride - 1) / 2) / scale, (row * stride + (stride - 1) / 2) / scale
    ImageDraw.Draw(canvas).ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=(255, 255, 255))
    return titled(canvas, f"{state.num_anchors} anchors at map cell ({row}, {col}), "
                          f"stride {stride}")


def _checked_boxes(gt_boxes):
    """``gt_boxes`` as ``(G, 4)`` float64 (a class column dropped)."""
    gt = np.asarray(gt_boxes, np.float64)
    if gt.size == 0:
        return np.zeros((0, 4))
    if gt.ndim != 2 or gt.shape[1] not in (4, 5):
        raise DataError(f"rpn: gt_boxes must be (G, 4) [x1, y1, x2, y2] or (G, 5) with the "
                        f"class; got shape {gt.shape}")
    return gt[:, :4]


def _labels_panel(image, model, state, gt_boxes, scale):
    canvas = image.copy()
    if gt_boxes is None:
        return titled(canvas, "AnchorTarget labels: no ground-truth boxes given")
    gt = _checked_boxes(gt_boxes)
    labels = anchor_labels(model, state, gt * scale)
    fg, bg = np.flatnonzero(labels == LABEL_FG), np.flatnonzero(labels == LABEL_BG)
    draw = ImageDraw.Draw(canvas)
    centres = (state.anchors[bg, :2] + state.anchors[bg, 2:]) / (2 * scale)
    # One Pillow call per dot: a loop over the sampled background anchors.
    for x, y in centres:
        draw.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=BG_COLOUR)
    _boxes_on(canvas, state.anchors[fg] / scale, [FG_COLOUR] * fg.size, 1)
    _boxes_on(canvas, gt, [GT_COLOUR] * len(gt), 2)
    return titled(canvas, f"AnchorTarget: {fg.size} fg (green), {bg.size} bg (red dots), "
                          f"{len(gt)} gt (white)")


def rpn_inside(model, image, location=None, gt_boxes=None, top=20):
    """The four-panel RPN picture (see the module docstring) of ``image``
    ``(H, W, 3)`` uint8 RGB for ``model`` (a detector ``VisualModel`` whose
    RoIs come from a Proposal layer).

    location: ``(row, column)`` on the RPN's score map (default: where the
    best anchor sits); gt_boxes: ``(G, 4)`` (or ``(G, 5)`` with classes)
    ``[x1, y1, x2, y2]`` in the image's pixels, or None; top: proposals
    drawn before and after NMS. Returns a PIL image.
    """
    prepared = model.prepare(image)
    state = rpn_state(model, prepared)
    location = _check_location(location, state)
    scale = float(state.im_info[2])
    picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).convert("RGB")
    before = state.boxes[state.order[:top]] / scale
    after = state.rois[:top] / scale
    shown_before, shown_after = picture.copy(), picture.copy()
    _boxes_on(shown_before, before[::-1], _score_colours(len(before))[::-1], 1)
    _boxes_on(shown_after, after[::-1], _score_colours(len(after))[::-1], 1)
    panels = [
        _anchors_panel(picture, state, location, scale),
        _labels_panel(picture, model, state, gt_boxes, scale),
        titled(shown_before, f"top {len(before)} of {state.order.size} proposals before NMS"),
        titled(shown_after, f"top {len(after)} of {len(state.rois)} proposals after NMS"),
    ]
    return tile(panels, 2)
