"""The dataset browser: a dataset's images with their ground-truth boxes and
class names, tiled into pages, to check annotations before training. No net.

    from detection.datasets import load_dataset
    from detection.visualize.browser import browse
    pages = browse(load_dataset("data/VOCdevkit/VOC2007", "trainval"), "out/browse")

Each image is drawn with its boxes (one colour per class, as
``detection.draw``; difficult or crowd objects dashed and labelled so),
shrunk to fit a thumbnail and captioned with its id and object count; the
thumbnails are tiled ``columns`` wide, ``per_page`` to a page, written as
``<dataset name>_page<NNN>.png``.
"""
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from detection.draw import class_colour
from detection.visualize.overlay import tile
from netdef.errors import DataError
from netdef.snapshot_format import atomic_writer

__all__ = ["browse", "draw_ground_truth", "thumbnail", "titled"]

CAPTION_HEIGHT = 18


def _font(size):
    try:
        return ImageFont.load_default(size=size)       # Pillow >= 10.1: scalable
    except TypeError:
        return ImageFont.load_default()


def _dashed_rectangle(draw, box, colour, width, dash=6):
    """A rectangle outline drawn in dashes of ``dash`` pixels."""
    x1, y1, x2, y2 = box
    for start in range(int(x1), int(x2) + 1, 2 * dash):
        end = min(start + dash, x2)
        draw.line([(start, y1), (end, y1)], fill=colour, width=width)
        draw.line([(start, y2), (end, y2)], fill=colour, width=width)
    for start in range(int(y1), int(y2) + 1, 2 * dash):
        end = min(start + dash, y2)
        draw.line([(x1, start), (x1, end)], fill=colour, width=width)
        draw.line([(x2, start), (x2, end)], fill=colour, width=width)


def draw_ground_truth(image, boxes, labels, classes, difficult=None):
    """``image`` (a PIL image, copied) with the boxes ``(G, 4)`` ``[x1, y1,
    x2, y2]`` (inclusive pixels) of classes ``labels`` ``(G,)`` (indices into
    ``classes``) drawn and named; ``difficult`` ``(G,)`` bool objects dashed.
    Returns an RGB PIL image."""
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    line = max(2, round(min(width, height) / 200))
    font = _font(max(10, min(width, height) // 30))
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    hard = np.zeros(len(labels), bool) if difficult is None else np.asarray(difficult, bool)
    # One Pillow call per box: a loop over the objects to show.
    for box, label, is_hard in zip(boxes, labels, hard):
        name = classes[int(label)] if 0 <= int(label) < len(classes) else f"class {label}"
        colour = class_colour(name, classes)
        corners = [int(round(v)) for v in box]
        if is_hard:
            _dashed_rectangle(draw, corners, colour, line)
        else:
            draw.rectangle(corners, outline=colour, width=line)
        text = f"{name} (difficult)" if is_hard else name
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tag_w, tag_h = right - left + 4, bottom - top + 4
        tag_x = min(max(corners[0], 0), max(width - tag_w, 0))
        tag_y = corners[1] - tag_h if corners[1] - tag_h >= 0 else max(corners[1], 0)
        draw.rectangle([tag_x, tag_y, tag_x + tag_w - 1, tag_y + tag_h - 1], fill=colour)
        luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        draw.text((tag_x + 2 - left, tag_y + 2 - top), text, font=font,
                  fill=(0, 0, 0) if luminance > 140 else (255, 255, 255))
    return canvas


def thumbnail(picture, size, caption):
    """``picture`` shrunk (never enlarged) to fit ``size`` ``(w, h)``, at the
    top of a white cell of that size plus a caption strip, centred across,
    with ``caption`` right below it."""
    width, height = size
    shrunk = picture.copy()
    shrunk.thumbnail((width, height), Image.Resampling.LANCZOS)
    cell = Image.new("RGB", (width, height + CAPTION_HEIGHT), (255, 255, 255))
    cell.paste(shrunk, ((width - shrunk.width) // 2, 0))
    draw = ImageDraw.Draw(cell)
    font = _font(12)
    text = caption
    while text and draw.textlength(text, font=font) > width - 4:
        text = text[:-1]          # cut a caption wider than the cell
    draw.text(((width - draw.textlength(text, font=font)) // 2, shrunk.height + 3), text,
              font=font, fill=(0, 0, 0))
    return cell


def _wrapped(draw, text, font, width):
    """``text`` split into lines no wider than ``width`` pixels (at word
    breaks; a single over-long word stays whole)."""
    lines = []
    for word in text.split():
        if lines and draw.textlength(lines[-1] + " " + word, font=font) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


def titled(picture, title, size=12):
    """``picture`` with ``title`` written above it on white (wrapped to the
    picture's width)."""
    font = _font(size)
    probe = ImageDraw.Draw(picture)
    lines = _wrapped(probe, title, font, picture.width - 6)
    strip = len(lines) * (size + 3) + 6
    canvas = Image.new("RGB", (picture.width, picture.height + strip), (255, 255, 255))
    canvas.paste(picture.convert("RGB"), (0, strip))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((3, 3 + i * (size + 3)), line, font=font, fill=(0, 0, 0))
    return canvas


def _record_picture(record, classes, size):
    try:
        with Image.open(record.path) as opened:
            image = opened.convert("RGB")
    except (OSError, Image.DecompressionBombError) as exc:
        raise DataError(f"{record.path}: cannot read the image of '{record.image_id}': "
                        f"{exc}") from None
    drawn = draw_ground_truth(image, record.boxes, record.labels, classes, record.difficult)
    count = record.num_objects
    caption = f"{record.image_id}: {count} object{'s' if count != 1 else ''}"
    return thumbnail(drawn, size, caption)


def browse(dataset, out_dir, *, per_page=12, columns=4, size=(320, 240), start=0,
           limit=None, progress=None):
    """Write pages of ``dataset``'s images with their ground truth.

    Args:
        dataset: a ``detection.datasets.DetectionDataset``.
        out_dir: folder for the pages (created).
        per_page, columns: thumbnails per page and per row.
        size: ``(width, height)`` of a thumbnail (images are shrunk to fit).
        start, limit: browse records ``start`` .. ``start + limit - 1``
            (``limit`` None: to the end).
        progress: ``callable(done, total)`` called after each image.

    Returns the paths of the pages written, in order.
    """
    if per_page < 1 or columns < 1:
        raise DataError(f"browse: per_page and columns must be at least 1; got "
                        f"{per_page} and {columns}")
    total = len(dataset)
    if total == 0:
        raise DataError(f"browse: dataset '{dataset.name}' has no images")
    if not 0 <= start < total:
        raise DataError(f"browse: dataset '{dataset.name}' has {total} images: start must "
                        f"lie in 0..{total - 1}; got {start}")
    stop = total if limit is None else min(total, start + int(limit))
    records = dataset.records[start:stop]
    os.makedirs(out_dir, exist_ok=True)
    paths, cells = [], []
    for done, record in enumerate(records, 1):
        cells.append(_record_picture(record, dataset.classes, size))
        if len(cells) == per_page or done == len(records):
            path = os.path.join(out_dir, f"{_safe(dataset.name)}_page{len(paths) + 1:03d}.png")
            with atomic_writer(path) as handle:
                tile(cells, min(columns, len(cells))).save(handle, format="PNG")
            paths.append(path)
            cells = []
        if progress is not None:
            progress(done, len(records))
    return paths


def _safe(name):
    """``name`` with every character other than letters, digits, ``-`` and
    ``_`` replaced by ``_`` (a file name part)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(name)) or "dataset"
