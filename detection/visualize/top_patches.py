"""Maximally activating patches: what a unit of a blob responds to.

    records = top_activations(model, images, "conv5", units=[3, 17], k=9)
    top_patches(model, images, "conv5", units=[3, 17], k=9).save("conv5.png")

For each chosen unit (a channel of ``blob``) every image gives one
candidate: the unit's largest value over the blob's positions in that
image. The ``k`` highest candidates over all images are kept (ties: the
earlier image first), so a unit's patches come from ``k`` different
images. Each is cut from its image by the receptive field of that position
(``receptive_field``: the window of input pixels the unit reads, brought
back to the image's own pixels; parts outside the image are grey) and the
picture tiles them, one row per unit, highest first.

The net runs only up to the layer producing ``blob`` (a detector's RPN and
RoI head do not run), one image at a time.
"""
import dataclasses
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from detection.visualize.occlusion import input_factors
from detection.visualize.overlay import tile
from detection.visualize.receptive_field import receptive_field
from netdef.device import to_numpy
from netdef.errors import DataError

__all__ = ["Activation", "top_activations", "top_patches", "crop_field", "read_image"]

#: Grey of the parts of a field outside its image.
OUTSIDE = 128


@dataclasses.dataclass(frozen=True)
class Activation:
    """One kept candidate: ``unit``'s value ``value`` at ``position``
    ``(y, x)`` of the blob in image ``image_index``; ``box`` ``[x1, y1, x2,
    y2]`` (floats) is that position's receptive field in the image's own
    pixels (inclusive; may reach outside the image)."""
    unit: int
    value: float
    image_index: int
    position: tuple
    box: tuple


def read_image(item):
    """An ``(H, W, 3)`` uint8 RGB array from an array or an image path."""
    if isinstance(item, (str, os.PathLike)):
        try:
            with Image.open(item) as opened:
                return np.asarray(opened.convert("RGB"))
        except (OSError, Image.DecompressionBombError) as exc:
            raise DataError(f"{os.fspath(item)}: cannot read the image: {exc}") from None
    return np.asarray(item)


def _check_units(model, blob, units, k):
    field = receptive_field(model, blob)
    channels = model.net.blobs[blob].shape[1]
    units = [int(u) for u in units]
    bad = [u for u in units if not 0 <= u < channels]
    if not units or bad:
        raise DataError(f"top patches: blob '{blob}' has {channels} channels; units must be "
                        f"in 0..{channels - 1}, found {bad or 'none'}")
    if int(k) < 1:
        raise DataError(f"top patches: k must be at least 1, found {k}")
    return field, units


def _image_box(field, y, x, prepared, kind):
    """The field of position ``(y, x)`` in the image's own pixels."""
    sy, sx = input_factors(prepared, kind)
    x1, y1, x2, y2 = field.box(y, x)
    return (x1 / sx, y1 / sy, (x2 + 1) / sx - 1, (y2 + 1) / sy - 1)


def _image_maxima(model, image, blob, units):
    """``(values (U,), positions (U, 2))``: each unit's largest value in one image."""
    prepared = model.prepare(image)
    model.net.forward(end=model.producer(blob), **prepared.inputs)
    maps = model.net.blobs[blob].data[0, units]
    flat = maps.reshape(len(units), -1)
    values = np.asarray(to_numpy(flat.max(axis=1)), np.float64)
    best = to_numpy(flat.argmax(axis=1))
    return prepared, values, np.stack(np.unravel_index(best, maps.shape[1:]), axis=1)


def top_activations(model, images, blob, units, k=9, progress=None):
    """For each of ``units`` (channels of ``blob``), its ``k`` highest
    per-image maxima over ``images`` (``(H, W, 3)`` uint8 RGB arrays or
    paths): a list per unit of :class:`Activation`, highest first.
    progress: ``callable(done, total)`` after each image."""
    field, units = _check_units(model, blob, units, k)
    images = list(images)
    if not images:
        raise DataError("top patches: no images to search")
    values = np.full((len(units), 0), -np.inf)
    records = np.zeros((len(units), 0), dtype=object)
    for index, item in enumerate(images):
        prepared, found, positions = _image_maxima(model, read_image(item), blob, units)
        new = np.empty((len(units), 1), dtype=object)
        new[:, 0] = [Activation(u, float(v), index, tuple(int(p) for p in pos),
                                _image_box(field, *pos, prepared, model.kind))
                     for u, v, pos in zip(units, found, positions)]
        values = np.concatenate([values, found[:, None]], axis=1)
        records = np.concatenate([records, new], axis=1)
        keep = np.argsort(-values, axis=1, kind="stable")[:, :k]
        values = np.take_along_axis(values, keep, axis=1)
        records = np.take_along_axis(records, keep, axis=1)
        if progress is not None:
            progress(index + 1, len(images))
    return [list(row) for row in records]


def crop_field(image, box):
    """The pixels of ``image`` ``(H, W, 3)`` inside ``box`` ``[x1, y1, x2,
    y2]`` (rounded to whole pixels), ``OUTSIDE`` grey where the box leaves
    the image: ``(y2 - y1 + 1, x2 - x1 + 1, 3)`` uint8."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    height, width = image.shape[:2]
    out = np.full((max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1), 3), OUTSIDE, np.uint8)
    top, left = max(y1, 0), max(x1, 0)
    bottom, right = min(y2, height - 1), min(x2, width - 1)
    if bottom >= top and right >= left:
        out[top - y1:bottom - y1 + 1, left - x1:right - x1 + 1] = image[top:bottom + 1,
                                                                        left:right + 1]
    return out


def _cell(size, text, picture=None):
    cell = picture.resize((size, size), Image.BILINEAR) if picture is not None else \
        Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(cell)
    font = ImageFont.load_default()
    x1, y1, x2, y2 = draw.textbbox((0, 0), text, font=font)
    at = (2, size - (y2 - y1) - 4) if picture is not None else (2, (size - (y2 - y1)) // 2)
    if picture is not None:
        draw.rectangle((at[0] - 1, at[1] - 1, at[0] + x2 - x1 + 1, at[1] + y2 + 1), fill=(0, 0, 0))
    draw.text(at, text, fill=(255, 255, 255) if picture is not None else (0, 0, 0), font=font)
    return cell


def top_patches(model, images, blob, units, k=9, progress=None, size=64):
    """The picture of :func:`top_activations`: one row per unit, a label
    cell (``unit U``) then its ``k`` patches, highest first, each resized to
    ``size`` x ``size`` pixels with its value written on it (a unit with
    fewer candidates than ``k`` leaves blank cells). Returns a PIL image."""
    images = list(images)
    rows = top_activations(model, images, blob, units, k, progress)
    loaded = {}
    cells = []
    for row in rows:
        cells.append(_cell(size, f"{blob}\nunit {row[0].unit}"))
        for record in row:
            if record.image_index not in loaded:
                loaded[record.image_index] = read_image(images[record.image_index])
            patch = crop_field(loaded[record.image_index], record.box)
            cells.append(_cell(size, f"{record.value:.3g}", Image.fromarray(patch)))
        cells += [_cell(size, "")] * (int(k) - len(row))
    return tile(cells, columns=int(k) + 1)
