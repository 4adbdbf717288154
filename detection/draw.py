"""Draw labelled detection boxes on an image with Pillow.

    from detection.draw import draw_detections
    draw_detections("street.jpg", [("car", 0.97, [48, 120, 310, 260])], "out.png")

Boxes are ``[x1, y1, x2, y2]`` in inclusive pixel coordinates (the outline
runs along those pixels, its width growing inwards). Each class has a fixed
colour: by its position in ``classes`` when given (so the 20 VOC classes get
20 different colours), else by a hash of its name (stable across runs and
images). The label ``"name 0.97"`` sits on a filled tag of the class colour
above the box, or inside its top edge when there is no room above.
"""
import math
import numbers
import os
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from netdef.errors import DataError
from netdef.snapshot_format import atomic_writer

__all__ = ["draw_detections", "class_colour", "PALETTE"]

#: 20 well separated colours (RGB).
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
           (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
           (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128))


def class_colour(name, classes=None):
    """The RGB colour of class ``name``: ``PALETTE[k % 20]`` with ``k`` its
    foreground index in ``classes`` (``__background__`` not counted) when it
    is there, else chosen by the CRC-32 of the name."""
    if classes is not None:
        names = [c for c in classes if c != "__background__"]
        if name in names:
            return PALETTE[names.index(name) % len(PALETTE)]
    return PALETTE[zlib.crc32(str(name).encode("utf-8")) % len(PALETTE)]


def _to_image(image):
    """A path, a PIL image, or an (H, W, 3) BGR / (H, W) gray array (uint8,
    or floats on the 0..255 scale as layers.input_pipeline.preprocess.load_image_bgr gives)
    -> an RGB PIL image (a copy)."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        try:
            with Image.open(path) as opened:
                return opened.convert("RGB")
        except (OSError, Image.DecompressionBombError) as exc:
            raise DataError(f"{path}: cannot read the image: {exc}") from None
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 3:
        array = array[:, :, ::-1]                     # BGR -> RGB
    elif array.ndim != 2:
        raise DataError(f"draw_detections: image array must be (H, W, 3) BGR or (H, W); "
                        f"got shape {array.shape}")
    if array.dtype != np.uint8:
        if array.dtype.kind not in "iuf":
            raise DataError(f"draw_detections: image array must be numeric; got {array.dtype}")
        array = np.clip(np.round(array.astype(np.float64)), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


def _font(size):
    try:
        return ImageFont.load_default(size=size)       # Pillow >= 10.1: scalable
    except TypeError:
        return ImageFont.load_default()


def _checked(detections):
    """[(name, score, (x1, y1, x2, y2))] with every entry validated."""
    out = []
    for k, det in enumerate(detections):
        try:
            name, score, box = det
        except (TypeError, ValueError):
            raise DataError(f"draw_detections: detection {k} must be (class_name, score, "
                            f"box); got {det!r:.80}") from None
        box = np.asarray(box, dtype=np.float64).reshape(-1) if _numeric(box) else None
        if box is None or box.size != 4 or not np.isfinite(box).all():
            raise DataError(f"draw_detections: detection {k} ({name}): box must be 4 finite "
                            f"numbers [x1, y1, x2, y2]; got {det[2]!r:.80}")
        if not isinstance(score, numbers.Real) or isinstance(score, bool) \
                or not math.isfinite(score):
            raise DataError(f"draw_detections: detection {k} ({name}): score must be a "
                            f"finite number; got {score!r:.40}")
        out.append((str(name), float(score), box))
    return out


def _numeric(box):
    try:
        return np.asarray(box).dtype.kind in "iuf"
    except (TypeError, ValueError):
        return False


def draw_detections(image, detections, out_path=None, classes=None, min_score=0.0,
                    line_width=None):
    """Draw ``detections`` on ``image`` and optionally write the result.

    Args:
        image: an image path, a PIL image, or an ``(H, W, 3)`` BGR array.
        detections: iterable of ``(class_name, score, [x1, y1, x2, y2])``.
        out_path: where to write (format from the extension, written
            atomically); None: do not write.
        classes: class names fixing the colours (see :func:`class_colour`).
        min_score: detections scoring below it are left out.
        line_width: outline width in pixels (default: grows with the image,
            2 px up to 400 px on the short side).

    Returns the drawn RGB ``PIL.Image``. Higher scores are drawn last, on top.
    """
    canvas = _to_image(image)
    width, height = canvas.size
    dets = [d for d in _checked(detections) if d[1] >= min_score]
    line_width = int(line_width) if line_width is not None else max(2, round(min(width, height) / 200))
    if line_width < 1:
        raise ValueError(f"line_width must be at least 1; got {line_width}")
    font = _font(max(10, min(width, height) // 40))
    draw = ImageDraw.Draw(canvas)
    # Drawing is one Pillow call per box: a loop over the detections to show.
    for name, score, box in sorted(dets, key=lambda d: d[1]):
        colour = class_colour(name, classes)
        x1, y1 = max(box[0], 0.0), max(box[1], 0.0)
        x2, y2 = min(box[2], width - 1.0), min(box[3], height - 1.0)
        if x2 < x1 or y2 < y1:
            continue                                   # entirely outside the image
        x1, y1, x2, y2 = (int(round(v)) for v in (x1, y1, x2, y2))
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=line_width)
        text = f"{name} {score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tag_w, tag_h = right - left + 6, bottom - top + 4
        tag_y = y1 - tag_h if y1 - tag_h >= 0 else y1  # above the box, else inside
        tag_x = min(x1, max(width - tag_w, 0))
        draw.rectangle([tag_x, tag_y, tag_x + tag_w - 1, tag_y + tag_h - 1], fill=colour)
        luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        draw.text((tag_x + 3 - left, tag_y + 2 - top), text, font=font,
                  fill=(0, 0, 0) if luminance > 140 else (255, 255, 255))
    if out_path is not None:
        out_path = os.fspath(out_path)
        extension = os.path.splitext(out_path)[1].lower()
        fmt = Image.registered_extensions().get(extension)
        if fmt is None:
            raise ValueError(f"{out_path}: unknown image extension {extension!r} "
                             f"(use .png or .jpg)")
        with atomic_writer(out_path) as handle:
            canvas.save(handle, format=fmt)
    return canvas
