"""Box math of the region-proposal layers, written once for NumPy and CuPy.

Conventions (DESIGN.md section 4, as py-faster-rcnn and py-R-FCN):

- a box is ``[x1, y1, x2, y2]`` in inclusive pixel coordinates, so its width
  is ``x2 - x1 + 1`` and its centre ``x1 + 0.5 * width``;
- anchors are generated ratio-major (for each aspect ratio, every scale),
  widths and heights rounded half-to-even (NumPy's rule, which is what the
  reference computes), and shifted by ``feat_stride`` over a feature map laid
  out (positions x anchors): anchor ``a`` at map cell ``(y, x)`` is row
  ``(y * W + x) * A + a``;
- box deltas are ``(dx, dy, dw, dh)``: centre offsets in units of the source
  box size and log size ratios.

Every function takes its array module from its inputs (``numpy`` or
``cupy``), so the layers run the same code on both devices. Nothing here
loops over boxes.
"""
import numpy as np

from netdef.device import array_module, is_gpu_array

DEFAULT_BASE_SIZE = 16
DEFAULT_RATIOS = (0.5, 1.0, 2.0)
DEFAULT_SCALES = (8.0, 16.0, 32.0)


def generate_anchors(base_size=DEFAULT_BASE_SIZE, ratios=DEFAULT_RATIOS, scales=DEFAULT_SCALES):
    """The ``(len(ratios) * len(scales), 4)`` float64 base anchors (host).

    A square ``base_size`` box at the origin is reshaped to each aspect ratio
    (``h / w``) keeping its area, with sides rounded half-to-even, then
    enlarged by each scale, all around the same centre. The defaults give the
    9 anchors of py-faster-rcnn (DESIGN.md section 4).
    """
    ratios = np.asarray(ratios, dtype=np.float64).reshape(-1)
    scales = np.asarray(scales, dtype=np.float64).reshape(-1)
    size = float(base_size)
    centre = 0.5 * (size - 1.0)
    widths = np.round(np.sqrt(size * size / ratios))     # (R,)
    heights = np.round(widths * ratios)                   # (R,)
    # ratio-major: row r * S + s is ratio r at scale s
    ws = (widths[:, None] * scales[None, :]).reshape(-1)
    hs = (heights[:, None] * scales[None, :]).reshape(-1)
    return np.stack([centre - 0.5 * (ws - 1.0), centre - 0.5 * (hs - 1.0),
                     centre + 0.5 * (ws - 1.0), centre + 0.5 * (hs - 1.0)], axis=1)


def shifted_anchors(base_anchors, feat_stride, height, width, xp=np, dtype=np.float64):
    """All anchors of a ``height x width`` map: ``(height * width * A, 4)``.

    Row ``(y * width + x) * A + a`` is base anchor ``a`` shifted by
    ``(x * feat_stride, y * feat_stride)``.
    """
    base = xp.asarray(base_anchors, dtype=dtype)
    shift_x = xp.arange(width, dtype=dtype) * feat_stride
    shift_y = xp.arange(height, dtype=dtype) * feat_stride
    sx = xp.broadcast_to(shift_x[None, :], (height, width)).reshape(-1)
    sy = xp.broadcast_to(shift_y[:, None], (height, width)).reshape(-1)
    shifts = xp.stack([sx, sy, sx, sy], axis=1)           # (K, 4)
    return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)


def stable_argsort(values):
    """Indices sorting a 1-D array ascending, ties in index order, for NumPy
    and CuPy (CuPy's sort is always stable; older CuPy takes no ``kind``)."""
    if is_gpu_array(values):
        return values.argsort()
    return np.argsort(values, kind="stable")


def box_areas(boxes):
    """``(x2 - x1 + 1) * (y2 - y1 + 1)`` per row of ``(N, 4)`` boxes."""
    return (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)


def bbox_overlaps(boxes, query_boxes):
    """IoU of every pair: ``(N, 4)`` x ``(K, 4)`` -> ``(N, K)``.

    Computed in the inputs' (promoted) float type with the reference's
    formula: ``inter = max(min(x2) - max(x1) + 1, 0) * (same in y)``,
    ``iou = inter / (area_a + area_b - inter)``, and 0 where the boxes do not
    intersect. The NMS kernel (layers/cuda/nms.cu) uses the same operations
    in the same order, so both paths make identical threshold decisions.
    """
    xp = array_module(boxes)
    a = boxes[:, None, :]
    b = query_boxes[None, :, :]
    iw = xp.minimum(a[..., 2], b[..., 2]) - xp.maximum(a[..., 0], b[..., 0]) + 1
    ih = xp.minimum(a[..., 3], b[..., 3]) - xp.maximum(a[..., 1], b[..., 1]) + 1
    inter = xp.maximum(iw, 0) * xp.maximum(ih, 0)
    union = box_areas(boxes)[:, None] + box_areas(query_boxes)[None, :] - inter
    # Where nothing intersects the IoU is 0; dividing by 1 there keeps
    # degenerate (zero-area) pairs from producing 0 / 0.
    return inter / xp.where(inter > 0, union, 1)


def bbox_transform(ex_boxes, gt_boxes):
    """Regression targets ``(N, 4)`` taking ``ex_boxes`` to ``gt_boxes``:
    ``dx = (gx - ex) / ew``, ``dy`` likewise, ``dw = log(gw / ew)``,
    ``dh = log(gh / eh)`` (centres and sizes in inclusive pixels)."""
    xp = array_module(ex_boxes)
    ew = ex_boxes[:, 2] - ex_boxes[:, 0] + 1.0
    eh = ex_boxes[:, 3] - ex_boxes[:, 1] + 1.0
    ex = ex_boxes[:, 0] + 0.5 * ew
    ey = ex_boxes[:, 1] + 0.5 * eh
    gw = gt_boxes[:, 2] - gt_boxes[:, 0] + 1.0
    gh = gt_boxes[:, 3] - gt_boxes[:, 1] + 1.0
    gx = gt_boxes[:, 0] + 0.5 * gw
    gy = gt_boxes[:, 1] + 0.5 * gh
    return xp.stack([(gx - ex) / ew, (gy - ey) / eh, xp.log(gw / ew), xp.log(gh / eh)], axis=1)


def bbox_transform_inv(boxes, deltas):
    """Apply deltas ``(N, 4K)`` to boxes ``(N, 4)`` -> boxes ``(N, 4K)``.

    Computed in the deltas' dtype (the reference casts the boxes to it).
    As in the reference, ``x2 = cx + 0.5 * w`` (not ``- 1``): the decoded
    box is one pixel wider than ``w``; ``bbox_transform`` of the result
    therefore does not return the deltas exactly, by design of the original.
    """
    xp = array_module(deltas)
    boxes = boxes.astype(deltas.dtype, copy=False)
    w = (boxes[:, 2] - boxes[:, 0] + 1.0)[:, None]
    h = (boxes[:, 3] - boxes[:, 1] + 1.0)[:, None]
    cx = boxes[:, 0][:, None] + 0.5 * w
    cy = boxes[:, 1][:, None] + 0.5 * h
    pcx = deltas[:, 0::4] * w + cx
    pcy = deltas[:, 1::4] * h + cy
    pw = xp.exp(deltas[:, 2::4]) * w
    ph = xp.exp(deltas[:, 3::4]) * h
    out = xp.empty_like(deltas)
    out[:, 0::4] = pcx - 0.5 * pw
    out[:, 1::4] = pcy - 0.5 * ph
    out[:, 2::4] = pcx + 0.5 * pw
    out[:, 3::4] = pcy + 0.5 * ph
    return out


def clip_boxes(boxes, height, width):
    """Clip ``(N, 4K)`` boxes to ``[0, width - 1] x [0, height - 1]`` (new array)."""
    xp = array_module(boxes)
    out = xp.empty_like(boxes)
    out[:, 0::4] = xp.clip(boxes[:, 0::4], 0, width - 1)
    out[:, 1::4] = xp.clip(boxes[:, 1::4], 0, height - 1)
    out[:, 2::4] = xp.clip(boxes[:, 2::4], 0, width - 1)
    out[:, 3::4] = xp.clip(boxes[:, 3::4], 0, height - 1)
    return out


def filter_small_boxes(boxes, min_size):
    """Boolean mask ``(N,)``: both sides (inclusive) at least ``min_size``."""
    ws = boxes[:, 2] - boxes[:, 0] + 1
    hs = boxes[:, 3] - boxes[:, 1] + 1
    return (ws >= min_size) & (hs >= min_size)


# -- normalized coordinates (the single-stage detectors' convention) --------------------------
# Our boxes are 0-based inclusive pixels [x1, y1, x2, y2]; SSD-style layers
# (PriorBox, MultiBoxLoss, DetectionOutput, AnnotatedData's labels) work in
# coordinates normalized to the image: xmin = x1 / W, xmax = (x2 + 1) / W,
# so a box covering the whole image is [0, 0, 1, 1]. One pair of
# functions converts both ways, for the labels fed to training and the
# detections read back for evaluation and drawing.

def normalized_boxes(boxes, width, height):
    """``boxes`` ``(N, 4)`` inclusive pixels -> ``(N, 4)`` float64
    ``[xmin, ymin, xmax, ymax]`` normalized to a ``width`` x ``height``
    image (see above)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scale = np.array([width, height, width, height], np.float64)
    return (boxes + np.array([0.0, 0.0, 1.0, 1.0])) / scale


def pixel_boxes(normalized, width, height):
    """The inverse of ``normalized_boxes``: ``(N, 4)`` normalized
    coordinates -> inclusive pixels of a ``width`` x ``height`` image,
    clipped to it (float64)."""
    normalized = np.asarray(normalized, np.float64).reshape(-1, 4)
    scale = np.array([width, height, width, height], np.float64)
    boxes = normalized * scale - np.array([0.0, 0.0, 1.0, 1.0])
    return clip_boxes(boxes, height, width)
