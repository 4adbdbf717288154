"""Pictures of maps: heat maps over images, colour bars, tiles, saved maps.

    picture = heatmap_overlay(image_rgb, heat, title="det 0: car 0.97")
    save_overlay("out/visualize", "street", "gradcam", picture, detection=0)
    save_map("out/visualize", "street", "gradcam", heat, detection=0)
        # out/visualize/street_gradcam_det0.png, street_gradcam_det0.npy

A map's colours run from its minimum (dark blue) to its maximum (dark red)
along a jet-like colour map; the colour bar beside the image is labelled
with those two values, so pictures of unnormalized maps (saliency) still
say what they show.
"""
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from netdef.errors import DataError
from netdef.snapshot_format import atomic_writer

__all__ = ["colour_map", "heatmap_overlay", "save_map", "save_overlay", "tile", "map_name"]

#: The colour map's control points (position, RGB): dark blue, blue, cyan,
#: yellow, red, dark red, as the familiar "jet" runs.
_STOPS = np.array([0.0, 0.125, 0.375, 0.625, 0.875, 1.0])
_COLOURS = np.array([[0, 0, 128], [0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0],
                     [128, 0, 0]], dtype=np.float64)

_BAR_WIDTH, _BAR_MARGIN, _LABEL_WIDTH, _TITLE_HEIGHT = 14, 6, 64, 18


def colour_map(values):
    """``values`` in [0, 1] (any shape; clipped) -> uint8 RGB, shape + (3,)."""
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    channels = [np.interp(values, _STOPS, _COLOURS[:, k]) for k in range(3)]
    return np.round(np.stack(channels, axis=-1)).astype(np.uint8)


def _normalized(heat, percentile=100.0):
    """``heat`` scaled to [0, 1] by its minimum and its ``percentile``-th
    percentile (the maximum at 100; values above it saturate). Returns
    ``(scaled, low, high)``; a constant map gives zeros."""
    low = float(heat.min())
    high = float(heat.max()) if percentile >= 100 else float(np.percentile(heat, percentile))
    if not high > low:
        return np.zeros_like(heat, dtype=np.float64), low, high
    return np.clip((heat.astype(np.float64) - low) / (high - low), 0.0, 1.0), low, high


def _rgb_array(image):
    """A PIL image or an ``(H, W, 3)`` / ``(H, W)`` array (uint8, or floats
    on the 0..255 scale) -> ``(H, W, 3)`` uint8 RGB."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise DataError(f"expected an (H, W, 3) RGB image, found shape {array.shape}")
    return np.clip(np.round(array), 0, 255).astype(np.uint8) if array.dtype != np.uint8 \
        else array


def _font():
    return ImageFont.load_default()


def heatmap_overlay(image, heat, alpha=0.5, colorbar=True, title=None, percentile=100.0):
    """The colour-mapped ``heat`` ``(H, W)`` blended over ``image``
    (``(H, W, 3)`` RGB, the same size) with weight ``alpha``, a colour bar
    on the right labelled with the values its ends stand for when
    ``colorbar``, and ``title`` above when given. Colours run from the
    map's minimum to its ``percentile``-th percentile (100: the maximum; a
    lower one, e.g. 99, makes sparse gradient maps visible, the top 1 %
    saturating). Returns a PIL image."""
    rgb = _rgb_array(image)
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape != rgb.shape[:2]:
        raise DataError(f"the map has shape {heat.shape}, the image {rgb.shape[:2]}; they "
                        "must be the same size")
    if not 0.0 <= alpha <= 1.0:
        raise DataError(f"alpha must lie in [0, 1], found {alpha}")
    if not 0.0 < percentile <= 100.0:
        raise DataError(f"percentile must lie in (0, 100], found {percentile}")
    unit, low, high = _normalized(np.nan_to_num(heat), percentile)
    blended = (1.0 - alpha) * rgb + alpha * colour_map(unit).astype(np.float64)
    picture = Image.fromarray(np.round(blended).astype(np.uint8))
    if colorbar:
        picture = _with_colour_bar(picture, low, high)
    if title:
        picture = _with_title(picture, str(title))
    return picture


def _with_colour_bar(picture, low, high):
    """``picture`` with a vertical colour bar (maximum at the top) and its
    end values to the right of it."""
    width, height = picture.size
    extra = _BAR_MARGIN + _BAR_WIDTH + _LABEL_WIDTH
    canvas = Image.new("RGB", (width + extra, max(height, 24)), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    ramp = np.linspace(1.0, 0.0, height)[:, None].repeat(_BAR_WIDTH, axis=1)
    canvas.paste(Image.fromarray(colour_map(ramp)), (width + _BAR_MARGIN, 0))
    draw = ImageDraw.Draw(canvas)
    x = width + _BAR_MARGIN + _BAR_WIDTH + 3
    draw.text((x, 0), f"{high:.3g}", fill=(0, 0, 0), font=_font())
    draw.text((x, max(height - 12, 12)), f"{low:.3g}", fill=(0, 0, 0), font=_font())
    return canvas


def _with_title(picture, title):
    width, height = picture.size
    canvas = Image.new("RGB", (width, height + _TITLE_HEIGHT), (255, 255, 255))
    canvas.paste(picture, (0, _TITLE_HEIGHT))
    ImageDraw.Draw(canvas).text((3, 3), title, fill=(0, 0, 0), font=_font())
    return canvas


def map_name(stem, method, detection=None, suffix=".npy"):
    """``<stem>_<method>[_det<K>]<suffix>``; ``detection`` is K or an
    object with an ``index`` (a ``Detection``)."""
    name = f"{stem}_{method}"
    if detection is not None:
        name += f"_det{int(getattr(detection, 'index', detection))}"
    return name + suffix


def save_map(out_dir, stem, method, heat, detection=None):
    """Write ``heat`` as a float32 ``.npy`` (``map_name``) in ``out_dir``
    (created when missing). Returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, map_name(stem, method, detection, ".npy"))
    with atomic_writer(path) as handle:
        np.save(handle, np.asarray(heat, dtype=np.float32), allow_pickle=False)
    return path


def save_overlay(out_dir, stem, method, picture, detection=None):
    """Write ``picture`` (a PIL image) as PNG (``map_name`` with ``.png``)
    in ``out_dir`` (created when missing). Returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, map_name(stem, method, detection, ".png"))
    with atomic_writer(path) as handle:
        picture.save(handle, format="PNG")
    return path


def tile(pictures, columns, gap=4, background=(255, 255, 255)):
    """``pictures`` (PIL images) in a grid ``columns`` wide, row by row,
    each in a cell the size of the largest, ``gap`` pixels apart."""
    pictures = list(pictures)
    if not pictures:
        raise DataError("no pictures to tile")
    columns = int(columns)
    if columns < 1:
        raise DataError(f"columns must be at least 1, found {columns}")
    columns = min(columns, len(pictures))
    rows = -(-len(pictures) // columns)
    cell_w = max(p.size[0] for p in pictures)
    cell_h = max(p.size[1] for p in pictures)
    canvas = Image.new("RGB", (columns * cell_w + (columns - 1) * gap,
                               rows * cell_h + (rows - 1) * gap), background)
    for i, picture in enumerate(pictures):
        row, column = divmod(i, columns)
        canvas.paste(picture.convert("RGB"), (column * (cell_w + gap), row * (cell_h + gap)))
    return canvas
