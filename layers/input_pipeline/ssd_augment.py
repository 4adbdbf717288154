"""Caffe-SSD's data augmentation, as pure functions of an image, its boxes
and a NumPy generator.

Images are ``(H, W, 3)`` float32 BGR on the 0-255 scale (``load_image_bgr``);
boxes are ``(G, 4)`` float64 ``[xmin, ymin, xmax, ymax]`` normalized to the
image (``layers.boxes.normalized_boxes``). Every function returns new arrays
and, for boxes, the mask of the boxes it kept, so the caller keeps their
labels in step. AnnotatedData (layers/annotated_data.py) applies them in
Caffe-SSD's order, each switched on by its parameter:

1. ``distort`` (transform_param.distort_param): brightness, contrast,
   saturation and hue changes, each applied with its probability, in one of
   Caffe-SSD's two orders (brightness, contrast, saturation, hue; or
   brightness, saturation, hue, contrast; each order with probability 1/2),
   then a random permutation of the channels with ``random_order_prob``;
2. ``expand`` (expand_param): with probability ``prob`` the image is placed
   at a random offset on a canvas ``ratio`` times its size (ratio uniform in
   ``[1, max_expand_ratio]``) filled with the mean, which zooms out;
3. ``sample_windows`` + ``crop`` (annotated_data_param.batch_sampler): each
   sampler draws up to ``max_trials`` windows (scale and aspect ratio
   uniform in its ranges) and keeps those meeting its sample_constraint
   (IoU / coverage with at least one box), at most ``max_sample``; one window
   is then drawn among all samplers' kept ones and the image cropped to it;
4. ``mirror_boxes`` / a flip of the pixels (transform_param.mirror, drawn
   with probability 1/2 after the warp).

Boxes follow every geometric step through ``project_boxes``: a box is kept
when it overlaps the new window, and, with an emit_constraint, when its
centre lies in the window (CENTER) or more than ``emit_overlap`` of it is
covered by the window (MIN_OVERLAP); its coordinates are re-expressed in
the window and clipped to ``[0, 1]``.

Departures from Caffe-SSD (which works on 8-bit OpenCV images): the pixels
stay float and are clipped to 0..255 after each photometric step but not
rounded; HSV is computed in floating point (hue in degrees, saturation in
0..1); a hue shift wraps around the colour circle (OpenCV's 8-bit hue,
0..179, saturates at 0 and 255 before wrapping, so Caffe-SSD's negative
shifts of red hues stop at 0). ``hue_delta`` keeps Caffe-SSD's unit,
OpenCV's 8-bit hue (2 degrees), so 18 means +-36 degrees. The draws come
from a NumPy generator in a fixed order, so a run repeats, but not
Caffe's random stream.

Everything is vectorized over pixels and over sampling trials.
"""
import numpy as np

from layers.multibox_match import iou_matrix

__all__ = ["CENTER", "MIN_OVERLAP", "bgr_to_hsv", "hsv_to_bgr", "adjust_brightness",
           "adjust_contrast", "adjust_saturation", "adjust_hue", "distort", "project_boxes",
           "expand", "sample_windows", "satisfies_constraint", "crop", "mirror_boxes"]

#: EmitConstraint.EmitType values (caffe.proto).
CENTER, MIN_OVERLAP = 0, 1


# -- photometric ----------------------------------------------------------------------------

def bgr_to_hsv(image):
    """``(H, W, 3)`` BGR (0..255) -> hue in degrees ``[0, 360)``, saturation
    ``[0, 1]``, value ``0..255``, each ``(H, W)`` float64 (the hexcone
    model: V = max, S = (max - min) / max, H from the largest channel)."""
    image = np.asarray(image, np.float64)
    b, g, r = image[..., 0], image[..., 1], image[..., 2]
    value = image.max(axis=-1)
    chroma = value - image.min(axis=-1)
    saturation = np.where(value > 0, chroma / np.where(value > 0, value, 1), 0.0)
    safe = np.where(chroma > 0, chroma, 1)
    hue = np.where(value == r, (g - b) / safe,
                   np.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue = np.where(chroma > 0, np.mod(60.0 * hue, 360.0), 0.0)
    return hue, saturation, value


def hsv_to_bgr(hue, saturation, value):
    """The inverse of ``bgr_to_hsv``: ``(H, W, 3)`` float32 BGR."""
    chroma = value * saturation
    sector = np.mod(hue, 360.0) / 60.0
    second = chroma * (1.0 - np.abs(np.mod(sector, 2.0) - 1.0))
    low = value - chroma
    index = np.floor(sector).astype(np.int64) % 6
    zero = np.zeros_like(chroma)
    # (r, g, b) before adding the minimum, per 60-degree sector
    r = np.choose(index, [chroma, second, zero, zero, second, chroma])
    g = np.choose(index, [second, chroma, chroma, second, zero, zero])
    b = np.choose(index, [zero, zero, second, chroma, chroma, second])
    return np.stack([b + low, g + low, r + low], axis=-1).astype(np.float32)


def adjust_brightness(image, delta):
    """``image + delta``, clipped to 0..255."""
    return np.clip(image + np.float32(delta), 0, 255).astype(np.float32)


def adjust_contrast(image, factor):
    """``image * factor``, clipped to 0..255 (Caffe-SSD scales the pixels
    themselves, not their distance to the mean)."""
    return np.clip(image * np.float32(factor), 0, 255).astype(np.float32)


def adjust_saturation(image, factor):
    """Saturation times ``factor`` (capped at 1), hue and value kept."""
    hue, saturation, value = bgr_to_hsv(image)
    return np.clip(hsv_to_bgr(hue, np.minimum(saturation * factor, 1.0), value), 0, 255)


def adjust_hue(image, delta):
    """Hue shifted by ``delta`` OpenCV 8-bit hue units (2 degrees each),
    wrapping around the circle."""
    hue, saturation, value = bgr_to_hsv(image)
    return np.clip(hsv_to_bgr(hue + 2.0 * delta, saturation, value), 0, 255)


def _maybe(rng, prob):
    """One uniform draw: True with probability ``prob``."""
    return rng.uniform(0.0, 1.0) < prob


def _random_step(image, rng, prob, low, high, adjust, identity, tolerance):
    """One distortion step: with probability ``prob``, an amount drawn from
    [low, high) and ``adjust(image, amount)`` unless the amount is within
    ``tolerance`` of the ``identity`` (the no-op amount), as Caffe-SSD skips
    it."""
    if _maybe(rng, prob):
        amount = rng.uniform(low, high)
        if abs(amount - identity) > tolerance:
            image = adjust(image, amount)
    return image


def _brightness(image, rng, p):
    return _random_step(image, rng, p.brightness_prob, -p.brightness_delta, p.brightness_delta,
                        adjust_brightness, 0.0, 0.0)


def _contrast(image, rng, p):
    return _random_step(image, rng, p.contrast_prob, p.contrast_lower, p.contrast_upper,
                        adjust_contrast, 1.0, 1e-3)


def _saturation(image, rng, p):
    return _random_step(image, rng, p.saturation_prob, p.saturation_lower, p.saturation_upper,
                        adjust_saturation, 1.0, 1e-3)


def _hue(image, rng, p):
    return _random_step(image, rng, p.hue_prob, -p.hue_delta, p.hue_delta, adjust_hue, 0.0, 0.0)


def distort(image, rng, p):
    """Caffe-SSD's ApplyDistort: ``p`` is a DistortionParameter (or any
    object with its fields). The first draw picks the order (contrast
    before or after saturation and hue); each step then draws whether it
    applies and, when it does, its amount; last, the channels are permuted
    with probability ``random_order_prob``. With every probability 0 the
    image comes back unchanged."""
    image = np.asarray(image, np.float32)
    if rng.uniform(0.0, 1.0) > 0.5:
        steps = (_brightness, _contrast, _saturation, _hue)
    else:
        steps = (_brightness, _saturation, _hue, _contrast)
    for step in steps:
        image = step(image, rng, p)
    if _maybe(rng, p.random_order_prob):
        image = np.ascontiguousarray(image[..., rng.permutation(3)])
    return image


# -- geometry -------------------------------------------------------------------------------

def _areas(boxes):
    """Width x height of normalized boxes, 0 for inverted ones."""
    width = boxes[..., 2] - boxes[..., 0]
    height = boxes[..., 3] - boxes[..., 1]
    return np.where((width < 0) | (height < 0), 0.0, width * height)


def _intersections(a, b):
    """``(A, B)`` intersection areas of normalized boxes ``(A, 4)``, ``(B, 4)``."""
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.maximum(width, 0) * np.maximum(height, 0)


def project_boxes(boxes, window, emit_type=None, emit_overlap=0.0):
    """Boxes of an image re-expressed in ``window`` (``(4,)``, normalized
    in the same image; it may reach outside it, as an expansion's canvas
    does). Returns ``(projected (K, 4), kept (G,) bool)``.

    A box is kept when it meets the emit constraint (``emit_type`` CENTER:
    its centre inside the window, borders included; MIN_OVERLAP: the part
    of it inside the window larger than ``emit_overlap``; None: no
    constraint), overlaps the window, and has a positive width and height
    once projected and clipped to ``[0, 1]``.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    window = np.asarray(window, np.float64).reshape(4)
    keep = np.ones(len(boxes), bool)
    if emit_type == CENTER:
        cx = 0.5 * (boxes[:, 0] + boxes[:, 2])
        cy = 0.5 * (boxes[:, 1] + boxes[:, 3])
        keep &= (cx >= window[0]) & (cx <= window[2]) & (cy >= window[1]) & (cy <= window[3])
    elif emit_type == MIN_OVERLAP:
        area = _areas(boxes)
        inside = _intersections(boxes, window[None])[:, 0]
        keep &= np.where(area > 0, inside / np.where(area > 0, area, 1), 0.0) > emit_overlap
    keep &= ~((boxes[:, 0] >= window[2]) | (boxes[:, 2] <= window[0])
              | (boxes[:, 1] >= window[3]) | (boxes[:, 3] <= window[1]))
    size = np.tile(window[2:] - window[:2], 2)
    projected = np.clip((boxes - np.tile(window[:2], 2)) / size, 0.0, 1.0)
    keep &= (projected[:, 2] > projected[:, 0]) & (projected[:, 3] > projected[:, 1])
    return projected[keep], keep


def expand(image, boxes, rng, prob, max_ratio, fill, emit_type=None, emit_overlap=0.0):
    """Caffe-SSD's ExpandImage: with probability ``prob`` (and unless
    ``max_ratio`` is within 0.01 of 1) the image is placed on a canvas of
    ``int(H * r) x int(W * r)`` pixels, ``r`` uniform in ``[1, max_ratio]``,
    filled with ``fill`` (the BGR mean), at offsets drawn uniformly and
    rounded down. Returns ``(image, boxes, kept)``."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    unchanged = (np.asarray(image, np.float32), boxes, np.ones(len(boxes), bool))
    if rng.uniform(0.0, 1.0) > prob or abs(max_ratio - 1.0) < 1e-2:
        return unchanged
    ratio = rng.uniform(1.0, max_ratio)
    height, width = image.shape[:2]
    out_h, out_w = int(height * ratio), int(width * ratio)
    top = int(np.floor(rng.uniform(0.0, out_h - height)))
    left = int(np.floor(rng.uniform(0.0, out_w - width)))
    canvas = np.empty((out_h, out_w, image.shape[2]), np.float32)
    canvas[...] = np.asarray(fill, np.float32)
    canvas[top:top + height, left:left + width] = image
    # The canvas in the original image's normalized coordinates.
    window = np.array([-left / width, -top / height, (out_w - left) / width,
                       (out_h - top) / height])
    projected, kept = project_boxes(boxes, window, emit_type, emit_overlap)
    return canvas, projected, kept


def satisfies_constraint(windows, boxes, constraint):
    """``(T,)`` bool: window ``t`` meets ``constraint`` (a SampleConstraint:
    min/max jaccard overlap, sample coverage = intersection / window area,
    object coverage = intersection / box area; only the fields set count)
    with at least one of ``boxes``. A constraint with no field set is met
    by every window; one with fields is met by none when there is no box."""
    fields = [("min_jaccard_overlap", "max_jaccard_overlap", "iou"),
              ("min_sample_coverage", "max_sample_coverage", "sample"),
              ("min_object_coverage", "max_object_coverage", "object")]
    set_fields = [f for f in fields if constraint.HasField(f[0]) or constraint.HasField(f[1])]
    if not set_fields:
        return np.ones(len(windows), bool)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    inter = _intersections(windows, boxes)
    values = {"iou": iou_matrix(windows, boxes),
              "sample": inter / np.maximum(_areas(windows), 1e-12)[:, None],
              "object": inter / np.maximum(_areas(boxes), 1e-12)[None, :]}
    ok = np.ones(inter.shape, bool)
    for low, high, key in set_fields:
        if constraint.HasField(low):
            ok &= values[key] >= getattr(constraint, low)
        if constraint.HasField(high):
            ok &= values[key] <= getattr(constraint, high)
    return ok.any(axis=1)


def sample_windows(rng, batch_sampler, boxes):
    """The windows ``(K, 4)`` (normalized) one BatchSampler accepts:
    ``max_trials`` draws of scale ``s`` in ``[min_scale, max_scale]``, aspect
    ratio in ``[max(min_aspect_ratio, s^2), min(max_aspect_ratio, 1 / s^2)]``
    (so the window fits the image), width ``s * sqrt(ar)``, height
    ``s / sqrt(ar)`` and a uniform top-left corner; those meeting the
    sample_constraint with ``boxes``, the first ``max_sample`` of them when
    it is set. A sampler with ``use_original_image`` false samples nothing
    (as in Caffe-SSD, whose other source boxes are not part of SSD)."""
    if not batch_sampler.use_original_image:
        return np.zeros((0, 4))
    s = batch_sampler.sampler
    trials = int(batch_sampler.max_trials)
    scale = rng.uniform(s.min_scale, s.max_scale, size=trials)
    low = np.maximum(s.min_aspect_ratio, scale ** 2)
    high = np.minimum(s.max_aspect_ratio, 1.0 / scale ** 2)
    ratio = rng.uniform(low, high)
    width, height = scale * np.sqrt(ratio), scale / np.sqrt(ratio)
    left = rng.uniform(0.0, 1.0 - width)
    top = rng.uniform(0.0, 1.0 - height)
    windows = np.stack([left, top, left + width, top + height], axis=1)
    windows = windows[satisfies_constraint(windows, boxes, batch_sampler.sample_constraint)]
    if batch_sampler.HasField("max_sample"):
        windows = windows[:int(batch_sampler.max_sample)]
    return windows


def crop(image, boxes, window, emit_type=None, emit_overlap=0.0):
    """The pixels of ``window`` (normalized, clipped to the image): columns
    from ``int(xmin * W)``, ``int((xmax - xmin) * W)`` of them (at least 1),
    rows likewise, as Caffe-SSD cuts them; the boxes projected into the
    pixels actually cut (Caffe-SSD projects them into the unrounded window,
    which puts them up to a source pixel off the pixels). Returns
    ``(image, boxes, kept)``."""
    height, width = image.shape[:2]
    window = np.clip(np.asarray(window, np.float64).reshape(4), 0.0, 1.0)
    left, top = int(window[0] * width), int(window[1] * height)
    cols = min(max(int((window[2] - window[0]) * width), 1), width - left)
    rows = min(max(int((window[3] - window[1]) * height), 1), height - top)
    pixels = np.ascontiguousarray(image[top:top + rows, left:left + cols])
    cut = np.array([left / width, top / height, (left + cols) / width, (top + rows) / height])
    projected, kept = project_boxes(boxes, cut, emit_type, emit_overlap)
    return pixels, projected, kept


def mirror_boxes(boxes):
    """Normalized boxes of a horizontally mirrored image:
    ``xmin' = 1 - xmax``, ``xmax' = 1 - xmin``."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([1.0 - boxes[:, 2], boxes[:, 1], 1.0 - boxes[:, 0], boxes[:, 3]], axis=1)
