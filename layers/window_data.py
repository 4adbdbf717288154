"""WindowData: R-CNN's training batches of warped region crops (Caffe's
WindowDataLayer), read from a window file.

The window file (what R-CNN's ``rcnn_make_window_file`` writes), per image::

    # 0                      image index (0, 1, 2 ... in order)
    /path/to/image.jpg       the image (prefixed by root_folder)
    3                        channels
    375                      height
    500                      width
    12                       number of windows
    1 1.000 48 240 195 371   class overlap x1 y1 x2 y2 (0-based inclusive pixels)
    ...

A window with ``overlap >= fg_threshold`` is foreground (its class must be
positive), one with ``overlap < bg_threshold`` background (class and
overlap set to 0), the others are never drawn. A batch holds
``int(batch_size * fg_fraction)`` foreground windows and the rest
background, background first, each drawn uniformly with replacement, each
mirrored with probability 1/2 when ``mirror`` is set (in either phase, as
Caffe does).

The crop (``crop_geometry``, Caffe's rule): with ``context_pad`` p > 0 or
``crop_mode: "square"``, the window is grown about its centre by
``crop / (crop - 2p)`` (squared first in "square" mode), rounded (halves
away from zero, C's ``round``); the part inside the image is warped to
where it falls in the ``crop x crop`` output, the part outside stays 0
(the mean, once subtracted). Without context padding in "warp" mode the
window is warped to the whole crop. Warping is bilinear with OpenCV's
INTER_LINEAR sampling (half-pixel centres, edges clamped), done for the
whole batch as one gather (``warp_regions``); departure: the value stays
a float where OpenCV's uint8 resize rounds it. Then, as Caffe: the mean
(``mean_file`` read at the crop's canvas position offset to the mean
image's centre, or ``mean_value``) is subtracted on the warped pixels and
the result multiplied by ``scale``.

The native form (4 tops: data, label, bbox_targets, bbox_weights) adds
R-CNN's per-class box-regression targets: every foreground window is
matched to the ground-truth window of its class in its image with the
highest IoU (ground-truth windows are those of overlap 1, as R-CNN's
window files list them, and ``write_window_file`` writes them), and its
target is ``bbox_transform(window, gt) / BBOX_STDS`` in the 4 columns of
its class (weights 1 there, 0 elsewhere; mirrored crops negate ``dx``).
The class count is the largest class in the file plus one.
``write_window_file`` turns a dataset's records and proposals into such a
file (``python -m detection.window_file``).
"""
import dataclasses
import os

import numpy as np

from layers.base import register
from layers.boxes import bbox_overlaps, bbox_transform
from layers.host_batches import HostBatchLayer
from layers.input_pipeline.caffe_transform import decode_image, read_mean_file
from netdef.errors import DataError

__all__ = ["WindowFile", "read_window_file", "write_window_file", "crop_geometry",
           "warp_regions", "region_crops", "window_targets", "WindowDataLayer", "BBOX_STDS", "round_half_away"]

#: Box-regression targets are divided by these (py-faster-rcnn's stds).
BBOX_STDS = np.array([0.1, 0.1, 0.2, 0.2])

# Salt of the layer's random stream (with its seed and batch position).
_BATCH_SALT = 11
# Windows of at least this overlap are ground truth (the native form).
_GT_OVERLAP = 1.0 - 1e-6


def round_half_away(x):
    """C's ``round``: halves away from zero (NumPy's ``round`` takes them to even)."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


# -- the window file ------------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class WindowFile:
    """A parsed window file.

    Attributes:
        source: its path (for messages).
        images: list of ``(path, channels, height, width, line)`` per image.
        windows: ``(W, 7)`` float64 ``[image, class, overlap, x1, y1, x2, y2]``.
        lines: ``(W,)`` int64 line number of every window.
    """
    source: str
    images: list
    windows: np.ndarray
    lines: np.ndarray


def _header(source, lines, cursor, index):
    """``(path, channels, height, width, count, next cursor)`` of image ``index``."""
    def line(k, what):
        if cursor + k >= len(lines):
            raise DataError(f"window file '{source}' ends at line {len(lines)} inside image "
                            f"{index}: expected {what}")
        return lines[cursor + k].strip()

    tag = line(0, "'# index'").split()
    if len(tag) != 2 or tag[0] != "#" or tag[1] != str(index):
        raise DataError(f"window file '{source}' line {cursor + 1}: expected '# {index}', "
                        f"found {lines[cursor].strip()!r}")
    path = line(1, "the image path")
    numbers = []
    for k, what in ((2, "channels"), (3, "height"), (4, "width"), (5, "the window count")):
        text = line(k, what)
        try:
            value = int(text)
            if value < (0 if k == 5 else 1):
                raise ValueError
        except ValueError:
            raise DataError(f"window file '{source}' line {cursor + k + 1}: expected {what} "
                            f"(a {'non-negative' if k == 5 else 'positive'} integer), found "
                            f"{text!r}") from None
        numbers.append(value)
    return (path, *numbers, cursor + 6)


def _window_block(source, lines, cursor, count, index, size):
    """``(count, 6)`` windows of one image starting at ``lines[cursor]``."""
    block = lines[cursor:cursor + count]
    if len(block) < count:
        raise DataError(f"window file '{source}' ends at line {len(lines)}: image {index} "
                        f"announces {count} windows, found {len(block)}")
    fields = [text.split() for text in block]
    bad = [k for k, f in enumerate(fields) if len(f) != 6]
    if bad:
        k = bad[0]
        raise DataError(f"window file '{source}' line {cursor + k + 1}: expected 'class "
                        f"overlap x1 y1 x2 y2' (6 numbers), found {block[k].strip()!r}")
    try:
        values = np.array(fields, dtype=np.float64).reshape(count, 6)
    except ValueError:
        k = next(k for k, f in enumerate(fields) if not _all_numbers(f))
        raise DataError(f"window file '{source}' line {cursor + k + 1}: expected numbers, "
                        f"found {block[k].strip()!r}") from None
    height, width = size
    x1, y1, x2, y2 = values[:, 2:].T
    wrong = ((values[:, 0] < 0) | (values[:, 0] != np.floor(values[:, 0]))
             | (values[:, 1] < 0) | (values[:, 1] > 1) | (x1 < 0) | (y1 < 0) | (x2 < x1)
             | (y2 < y1) | (x2 > width - 1) | (y2 > height - 1) | ~np.isfinite(values).all(1))
    if wrong.any():
        k = int(np.flatnonzero(wrong)[0])
        raise DataError(
            f"window file '{source}' line {cursor + k + 1}: expected a class >= 0, an overlap "
            f"in [0, 1] and a box with 0 <= x1 <= x2 <= {width - 1}, 0 <= y1 <= y2 <= "
            f"{height - 1} (image {index} is {width} x {height}), found {block[k].strip()!r}")
    return values


def _all_numbers(fields):
    try:
        [float(f) for f in fields]
        return True
    except ValueError:
        return False


def read_window_file(source):
    """Parse a window file (module docstring) into a ``WindowFile``; a
    DataError names the file, the line, what was expected and found."""
    try:
        with open(source, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise DataError(f"cannot read the window file '{source}': "
                        f"{exc.strerror or exc}") from None
    images, blocks, numbers = [], [], []
    cursor = 0
    while cursor < len(lines):
        if not lines[cursor].strip():
            cursor += 1
            continue
        index = len(images)
        path, channels, height, width, count, cursor = _header(source, lines, cursor, index)
        images.append((path, channels, height, width, cursor - 5))
        values = _window_block(source, lines, cursor, count, index, (height, width))
        blocks.append(np.concatenate([np.full((count, 1), index, np.float64), values], 1))
        numbers.append(np.arange(cursor + 1, cursor + count + 1))
        cursor += count
    if not images:
        raise DataError(f"window file '{source}' lists no images")
    return WindowFile(source, images, np.concatenate(blocks), np.concatenate(numbers))


def write_window_file(path, records, proposals, channels=3):
    """Write R-CNN's window file for ``records`` (objects with ``path``,
    ``width``, ``height``, ``boxes (G, 4)``, ``labels (G,)``) and one
    ``(R, 4)`` proposal array per record: per image its ground-truth boxes
    (overlap 1) then every proposal with the class and IoU of the ground
    truth it overlaps most (class 0, overlap 0 where it overlaps none).
    Returns the number of windows written."""
    if len(records) != len(proposals):
        raise DataError(f"window file '{path}': {len(records)} images but {len(proposals)} "
                        "proposal arrays")
    out, total = [], 0
    for index, (record, boxes) in enumerate(zip(records, proposals)):
        gt = np.asarray(record.boxes, np.float64).reshape(-1, 4)
        labels = np.asarray(record.labels).reshape(-1)
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        overlaps = bbox_overlaps(boxes, gt) if len(gt) else np.zeros((len(boxes), 0))
        best = overlaps.argmax(1) if len(gt) else np.zeros(len(boxes), np.int64)
        iou = overlaps.max(1) if len(gt) else np.zeros(len(boxes))
        cls = np.where(iou > 0, labels[best] if len(gt) else 0, 0)
        rows = np.concatenate([np.stack([labels, np.ones(len(gt))], 1), gt], 1)
        rows = np.concatenate([rows, np.concatenate([np.stack([cls, iou], 1), boxes], 1)])
        out.append(f"# {index}\n{os.path.abspath(record.path)}\n{channels}\n{record.height}\n"
                   f"{record.width}\n{len(rows)}\n")
        out.extend(f"{int(r[0])} {r[1]:.6f} {r[2]:g} {r[3]:g} {r[4]:g} {r[5]:g}\n" for r in rows)
        total += len(rows)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("".join(out))
    return total


# -- the crops --------------------------------------------------------------------------------

def crop_geometry(boxes, sizes, crop_size, context_pad=0, square=False, mirror=None):
    """Caffe's crop rule for ``(N, 4)`` windows in images of ``(N, 2)``
    ``(height, width)``: returns ``(src, out, pad)`` int64 arrays, ``src
    (N, 4)`` the clipped source box ``[x1, y1, x2, y2]``, ``out (N, 2)`` the
    warped ``(height, width)``, ``pad (N, 2)`` its ``(top, left)`` offset in
    the crop (the left offset of a mirrored crop is its right padding)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    n = len(boxes)
    mirror = np.zeros(n, bool) if mirror is None else np.asarray(mirror, bool)
    height, width = np.asarray(sizes, np.float64).reshape(-1, 2).T
    if not (context_pad > 0 or square):
        full = np.full((n, 2), crop_size, np.int64)
        return boxes.astype(np.int64), full, np.zeros((n, 2), np.int64)
    scale = crop_size / (crop_size - 2.0 * context_pad)
    half_h = (boxes[:, 3] - boxes[:, 1] + 1) / 2.0
    half_w = (boxes[:, 2] - boxes[:, 0] + 1) / 2.0
    cx, cy = boxes[:, 0] + half_w, boxes[:, 1] + half_h
    if square:
        half_h = half_w = np.maximum(half_h, half_w)
    x1, x2 = round_half_away(cx - half_w * scale), round_half_away(cx + half_w * scale)
    y1, y2 = round_half_away(cy - half_h * scale), round_half_away(cy + half_h * scale)
    scale_x, scale_y = crop_size / (x2 - x1 + 1), crop_size / (y2 - y1 + 1)
    pad_x1, pad_y1 = np.maximum(0, -x1), np.maximum(0, -y1)
    pad_x2, pad_y2 = np.maximum(0, x2 - width + 1), np.maximum(0, y2 - height + 1)
    x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
    out_w = round_half_away((x2 - x1 + 1) * scale_x)
    out_h = round_half_away((y2 - y1 + 1) * scale_y)
    pad_h = round_half_away(pad_y1 * scale_y)
    pad_w = np.where(mirror, round_half_away(pad_x2 * scale_x), round_half_away(pad_x1 * scale_x))
    # Rounding may push the warped part past the crop: Caffe shortens it.
    out_h = np.minimum(out_h, crop_size - pad_h)
    out_w = np.minimum(out_w, crop_size - pad_w)
    # A sliver rounding to nothing keeps one pixel (OpenCV refuses size 0).
    out = np.maximum(np.stack([out_h, out_w], 1), 1).astype(np.int64)
    src = np.stack([x1, y1, x2, y2], 1).astype(np.int64)
    return src, out, np.stack([pad_h, pad_w], 1).astype(np.int64)


def _axis_samples(canvas, pad, out, lo, hi, flip):
    """Bilinear sampling along one axis for every region: ``(index0,
    index1, frac, valid)`` each ``(N, canvas)`` (OpenCV INTER_LINEAR)."""
    d = np.arange(canvas)[None, :] - pad[:, None]
    valid = (d >= 0) & (d < out[:, None])
    d = np.where(flip[:, None], out[:, None] - 1 - d, d)
    size = (hi - lo + 1)[:, None]
    f = (d + 0.5) * (size / out[:, None]) - 0.5
    s = np.floor(f)
    frac = f - s
    low, high = s < 0, s >= size - 1
    s = np.where(low, 0, np.where(high, size - 1, s))
    frac = np.where(low | high, 0.0, frac)
    s = np.clip(s, 0, size - 1).astype(np.int64)
    first = lo[:, None] + s
    second = lo[:, None] + np.minimum(s + 1, size - 1)
    return first, second, frac, valid


def warp_regions(images, image_index, src, out, pad, crop_size, mirror=None):
    """Warp every region into a ``crop x crop`` canvas in one gather.

    images: ``(I, H, W, C)`` (zero-padded to the largest); image_index
    ``(N,)``; ``src``, ``out``, ``pad`` from ``crop_geometry``; mirror
    ``(N,)`` bool flips the warped region. Returns ``(N, C, crop, crop)``
    float64 and the ``(N, crop, crop)`` bool mask of warped pixels."""
    n = len(image_index)
    mirror = np.zeros(n, bool) if mirror is None else np.asarray(mirror, bool)
    y0, y1, fy, vy = _axis_samples(crop_size, pad[:, 0], out[:, 0], src[:, 1], src[:, 3],
                                   np.zeros(n, bool))
    x0, x1, fx, vx = _axis_samples(crop_size, pad[:, 1], out[:, 1], src[:, 0], src[:, 2],
                                   mirror)
    i = np.asarray(image_index)[:, None, None]
    fy, fx = fy[:, :, None, None], fx[:, None, :, None]
    y0, y1, x0, x1 = y0[:, :, None], y1[:, :, None], x0[:, None, :], x1[:, None, :]
    def at(y, x):
        return images[i, y, x].astype(np.float64)

    top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx
    bottom = at(y1, x0) * (1 - fx) + at(y1, x1) * fx
    mask = vy[:, :, None] & vx[:, None, :]
    warped = (top * (1 - fy) + bottom * fy) * mask[..., None]
    return warped.transpose(0, 3, 1, 2), mask


def region_crops(images, image_index, boxes, crop_size, context_pad=0, square=False,
                 mirror=None, mean=None, scale=1.0):
    """The WindowData crops of ``boxes`` ``(N, 4)`` (box ``n`` in
    ``images[image_index[n]]``, each ``(H, W, C)``): ``(N, C, crop, crop)``
    float64, warped (``crop_geometry``, ``warp_regions``), minus ``mean``
    (``(C, crop, crop)`` or ``(C, 1, 1)``, on warped pixels only) and times
    ``scale``. R-CNN's test-time warp is the same call without mirroring."""
    sizes = np.array([image.shape[:2] for image in images], np.int64)
    height, width = sizes.max(0)
    # Stacked in the images' own type (uint8): the gather reads 4 x N x crop^2
    # pixels, so converting whole images to float first would cost more.
    stack = np.zeros((len(images), height, width, images[0].shape[2]), images[0].dtype)
    for k, image in enumerate(images):  # one copy per image
        stack[k, :image.shape[0], :image.shape[1]] = image
    image_index = np.asarray(image_index, np.int64)
    src, out, pad = crop_geometry(boxes, sizes[image_index], crop_size, context_pad, square,
                                  mirror)
    data, mask = warp_regions(stack, image_index, src, out, pad, crop_size, mirror)
    if mean is not None:
        data = (data - np.asarray(mean)[None]) * mask[:, None]
    return data * scale


def window_targets(windows, num_classes):
    """Per-window regression targets for the native form: ``(W, 4)``
    normalized deltas to the best same-class ground-truth window of its
    image, and ``(W,)`` bool (True where it has one; foreground only)."""
    targets = np.zeros((len(windows), 4))
    has = np.zeros(len(windows), bool)
    images = windows[:, 0].astype(np.int64)
    # Window files are grouped by image: one vectorized match per image.
    bounds = np.flatnonzero(np.diff(images)) + 1
    for rows in np.split(np.arange(len(windows)), bounds):
        w = windows[rows]
        gt = w[w[:, 2] >= _GT_OVERLAP]
        fg = rows[w[:, 1] > 0]
        if not len(gt) or not len(fg):
            continue
        iou = bbox_overlaps(windows[fg, 3:], gt[:, 3:])
        iou = np.where(windows[fg, 1][:, None] == gt[None, :, 1], iou, -1)
        best = iou.argmax(1)
        ok = iou[np.arange(len(fg)), best] > 0
        targets[fg[ok]] = bbox_transform(windows[fg[ok], 3:], gt[best[ok], 3:]) / BBOX_STDS
        has[fg[ok]] = True
    return targets, has


# -- the layer ----------------------------------------------------------------------------------

@register("WindowData")
class WindowDataLayer(HostBatchLayer):
    """Caffe's WindowData (module docstring).

    window_data_param: source (the window file), root_folder, batch_size,
    fg_threshold (0.5), bg_threshold (0.5), fg_fraction (0.25), context_pad
    (0), crop_mode ("warp" | "square"), cache_images (keep decoded images).
    transform_param: crop_size (required), mirror, mean_file or mean_value,
    scale; Caffe's deprecated window_data_param crop_size, mirror,
    mean_file and scale are read too (a value set in both places must agree).

    tops: data ``(N, C, crop, crop)``, label ``(N,)``; the native form adds
    bbox_targets and bbox_weights ``(N, 4K)``. ``position`` (windows served)
    is the random state: batch ``b``'s draws are keyed by (seed, position),
    so a run repeats and a snapshot resumes. The GPU path is the host code,
    the batch copied to the tops' device. No backward.
    """

    random_state_attributes = ("position",)
    min_tops = 2
    max_tops = 4

    def layer_setup(self, bottoms, tops):
        p = self.param.window_data_param
        if len(tops) == 3:
            raise self.definition_error(
                "expected 2 tops (data, label) or 4 (data, label, bbox_targets, bbox_weights), "
                "found 3")
        self._read_settings(p)
        try:
            self.file = read_window_file(p.source)
        except DataError as exc:
            raise DataError(f"{self.where}: {exc}") from None
        self._split_windows(p)
        channels = {c for _, c, _, _, _ in self.file.images}
        if len(channels) != 1:
            raise DataError(f"{self.where}: window file '{p.source}' mixes images of "
                            f"{sorted(channels)} channels")
        self.channels = channels.pop()
        self._read_mean()
        self.cache = {}
        self.position = 0
        tops[0].reshape((self.batch_size, self.channels, self.crop_size, self.crop_size))
        tops[1].reshape((self.batch_size,))
        for top in tops[2:]:
            top.reshape((self.batch_size, 4 * self.num_classes))

    def _setting(self, name, transform_default):
        """A field Caffe moved to transform_param: one value from either place."""
        p, t = self.param.window_data_param, self.param.transform_param
        if p.HasField(name) and t.HasField(name) and getattr(p, name) != getattr(t, name):
            raise self.definition_error(
                f"window_data_param {name} ({getattr(p, name)!r}) and transform_param {name} "
                f"({getattr(t, name)!r}) disagree; set it in transform_param only")
        return getattr(p, name) if p.HasField(name) else getattr(t, name, transform_default)

    def _read_settings(self, p):
        self.batch_size = int(p.batch_size)
        self.crop_size = int(self._setting("crop_size", 0))
        self.mirror = bool(self._setting("mirror", False))
        self.scale = float(self._setting("scale", 1.0))
        self.context_pad = int(p.context_pad)
        self.fg_fraction = float(p.fg_fraction)
        self.root_folder = p.root_folder
        self.cache_images = bool(p.cache_images)
        checks = (
            (self.batch_size >= 1, "window_data_param batch_size must be positive",
             self.batch_size),
            (self.crop_size >= 1, "crop_size (transform_param) must be positive",
             self.crop_size),
            (0 <= self.fg_fraction <= 1, "window_data_param fg_fraction must be in [0, 1]",
             self.fg_fraction),
            (p.crop_mode in ("warp", "square"),
             "window_data_param crop_mode must be \"warp\" or \"square\"", repr(p.crop_mode)),
            (self.crop_size - 2 * self.context_pad > 0,
             f"window_data_param context_pad must be below crop_size / 2 ({self.crop_size})",
             self.context_pad))
        for ok, message, found in checks:
            if not ok:
                raise self.definition_error(f"{message}, found {found}")
        self.square = p.crop_mode == "square"
        self.num_fg = int(self.batch_size * self.fg_fraction)

    def _split_windows(self, p):
        w = self.file.windows
        fg = w[:, 2] >= p.fg_threshold
        unlabeled = fg & (w[:, 1] <= 0)
        if unlabeled.any():
            line = self.file.lines[np.flatnonzero(unlabeled)[0]]
            raise DataError(f"{self.where}: window file '{p.source}' line {line}: a window of "
                            f"overlap >= fg_threshold {p.fg_threshold} must have a class > 0, "
                            "found class 0")
        bg = ~fg & (w[:, 2] < p.bg_threshold)
        self.fg_windows = w[fg]
        self.bg_windows = w[bg].copy()
        self.bg_windows[:, 1:3] = 0
        self.num_classes = int(w[:, 1].max()) + 1
        if len(self.fg_windows) == 0 and self.num_fg > 0:
            raise DataError(f"{self.where}: window file '{p.source}' has no foreground window "
                            f"(overlap >= {p.fg_threshold}) but a batch takes {self.num_fg}")
        if len(self.bg_windows) == 0 and self.num_fg < self.batch_size:
            raise DataError(f"{self.where}: window file '{p.source}' has no background window "
                            f"(overlap < {p.bg_threshold}) but a batch takes "
                            f"{self.batch_size - self.num_fg}")
        self.fg_targets, self.fg_has_target = window_targets(self.fg_windows, self.num_classes)

    def _read_mean(self):
        t = self.param.transform_param
        mean_file = self._setting("mean_file", "")
        if mean_file and len(t.mean_value):
            raise self.definition_error("give a mean_file or mean_value, not both")
        self.mean = None
        if mean_file:
            mean = read_mean_file(mean_file)
            off = (mean.shape[2] - self.crop_size) // 2
            if (mean.shape[1] != mean.shape[2] or mean.shape[1] < self.crop_size
                    or mean.shape[0] != self.channels):
                raise DataError(f"{self.where}: mean_file '{mean_file}' must be a square "
                                f"{self.channels}-channel image of at least crop_size "
                                f"{self.crop_size}, found shape {mean.shape}")
            # Caffe reads the mean at canvas position + the centre offset.
            self.mean = mean[:, off:off + self.crop_size, off:off + self.crop_size]
        elif len(t.mean_value):
            if len(t.mean_value) not in (1, self.channels):
                raise self.definition_error(
                    f"mean_value must be given once or once per channel ({self.channels}), "
                    f"found {len(t.mean_value)}")
            values = np.array(t.mean_value, np.float64)
            self.mean = np.broadcast_to(values, (self.channels,))[:, None, None]

    # -- running -----------------------------------------------------------------------------
    def _image(self, index):
        """Image ``index`` of the window file, ``(H, W, C)`` uint8."""
        if index in self.cache:
            return self.cache[index]
        path, channels, height, width, line = self.file.images[index]
        what = (f"{self.where}: image '{self.root_folder}{path}' (window file "
                f"'{self.file.source}' line {line})")
        image = decode_image(self.root_folder + path, channels != 1, what=what)
        if image.shape[:2] != (height, width):
            raise DataError(f"{what}: the window file says {width} x {height}, the image is "
                            f"{image.shape[1]} x {image.shape[0]}")
        if self.cache_images:
            self.cache[index] = image
        return image

    def draw(self, position):
        """``(windows (N, 7), fg (N,) bool, rows (N,), mirror (N,))`` of the
        batch at ``position``: background first, then foreground."""
        rng = np.random.default_rng([self.seed, _BATCH_SALT, int(position)])
        num_bg = self.batch_size - self.num_fg
        bg_rows = rng.integers(len(self.bg_windows), size=num_bg) if num_bg else np.zeros(0, int)
        fg_rows = (rng.integers(len(self.fg_windows), size=self.num_fg) if self.num_fg
                   else np.zeros(0, int))
        mirror = (rng.random(self.batch_size) < 0.5) if self.mirror else \
            np.zeros(self.batch_size, bool)
        windows = np.concatenate([self.bg_windows[bg_rows], self.fg_windows[fg_rows]])
        fg = np.arange(self.batch_size) >= num_bg
        return windows, fg, np.concatenate([bg_rows, fg_rows]), mirror

    def crops(self, windows, mirror):
        """``(N, C, crop, crop)`` float64 crops of ``windows``, mean
        subtracted and scaled (module docstring)."""
        used, index = np.unique(windows[:, 0].astype(np.int64), return_inverse=True)
        loaded = [self._image(int(i)) for i in used]
        return region_crops(loaded, index, windows[:, 3:], self.crop_size, self.context_pad,
                            self.square, mirror, self.mean, self.scale)

    def next_batch(self):
        """The next batch: data, label (and bbox_targets, bbox_weights)."""
        windows, fg, rows, mirror = self.draw(self.position)
        data = self.crops(windows, mirror).astype(self.dtype)
        labels = windows[:, 1].astype(self.dtype)
        self.position += self.batch_size
        targets = np.zeros((self.batch_size, 4 * self.num_classes), self.dtype)
        weights = np.zeros_like(targets)
        items = np.flatnonzero(fg)
        have = items[self.fg_has_target[rows[items]]]
        deltas = self.fg_targets[rows[have]].copy()
        deltas[mirror[have], 0] *= -1   # a mirrored crop moves the other way in x
        columns = 4 * windows[have, 1].astype(np.int64)[:, None] + np.arange(4)
        targets[have[:, None], columns] = deltas
        weights[have[:, None], columns] = 1
        return data, labels, targets, weights
