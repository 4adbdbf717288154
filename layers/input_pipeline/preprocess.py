"""Image preprocessing as py-faster-rcnn and py-R-FCN do it.

An image is read as BGR float32 (OpenCV's channel order, which the
reference models were trained with), the pixel means are subtracted, and it
is resized so that its shorter side is ``target_size`` pixels unless that
makes the longer side exceed ``max_size``, in which case the longer side is
``max_size``. The network input is NCHW; several images are padded with
zeros at the bottom and right to the largest of them.

    image = load_image_bgr(record.path)               # (H, W, 3) float32 BGR
    blob, im_scale = prepare_image(image, 600, 1000)  # (1, 3, h, w), float
    im_info = [h, w, im_scale]

Resizing uses Pillow's bilinear filter on float32 channels (Pillow averages
over the whole footprint when shrinking, where OpenCV's INTER_LINEAR samples
four pixels; the two agree when enlarging). Horizontal flips map a box
``[x1, y1, x2, y2]`` of an image ``W`` pixels wide to
``[W - x2 - 1, y1, W - x1 - 1, y2]`` (inclusive pixel coordinates).
"""
import numpy as np

from netdef.errors import DataError

__all__ = ["PIXEL_MEANS", "load_image_bgr", "decode_rgb", "image_scale", "resized_shape",
           "resize_image", "prepare_image", "flip_image", "flip_boxes", "images_to_blob"]

#: Per-channel means subtracted from every pixel, BGR (py-faster-rcnn's cfg.PIXEL_MEANS).
PIXEL_MEANS = (102.9801, 115.9465, 122.7717)


def load_image_bgr(path):
    """The image at ``path`` as ``(H, W, 3)`` float32, channels B, G, R.

    The pixels are those of ``decode_rgb`` (every mode with its real range).
    No EXIF rotation is applied: annotations refer to the stored pixel
    grid. Raises ``DataError`` naming the file when it is missing, cannot
    be decoded (a truncated or corrupt file) or has a mode without a known
    range.
    """
    from PIL import Image
    try:
        with Image.open(path) as image:
            rgb = decode_rgb(image)
    except FileNotFoundError:
        raise DataError(f"image file '{path}' does not exist") from None
    except Exception as exc:  # Pillow raises OSError, ValueError, DecompressionBombError ...
        raise DataError(f"cannot read image '{path}': {type(exc).__name__}: {exc}") from exc
    return np.ascontiguousarray(rgb[:, :, ::-1])


# Pillow's modes of one 16-bit unsigned channel (byte orders); "I" is how
# some Pillow versions open the same 16-bit grey PNG.
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def decode_rgb(image):
    """The pixels of an open Pillow ``image`` as ``(H, W, 3)`` float32 RGB on
    the 0-255 scale, decoding it completely.

    8-bit modes (grey, palette, RGB(A), CMYK, YCbCr ...) go through
    Pillow's RGB conversion. One 16-bit channel (``I;16*``, and ``I`` with
    values in 0..65535) is scaled by 255/65535 and repeated in the three
    channels: ``convert("RGB")`` would clip it at 255 instead, turning
    anything above 255 white. Raises ``ValueError`` for a mode whose range
    is unknown (float ``F``, ``I`` outside 0..65535) and Pillow's errors
    for a file that does not decode.
    """
    if image.mode == "F":
        raise ValueError("32-bit floating-point pixels (mode F) have no known range; "
                         "convert the image to 8 or 16 bits")
    if image.mode not in _SIXTEEN_BIT:
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    grey = np.asarray(image).astype(np.float32)
    if grey.size and (grey.min() < 0 or grey.max() > 65535):
        raise ValueError(f"32-bit integer pixels (mode {image.mode}) from {grey.min():g} to "
                         f"{grey.max():g}: outside the 16-bit range 0..65535, no known scale")
    grey *= np.float32(255.0 / 65535.0)
    return np.repeat(grey[:, :, None], 3, axis=2)


def prefetched_images(records):
    """``(record, image)`` for each of ``records`` in order, ``image`` its
    BGR array (``load_image_bgr``). The next record's image is read in a
    background thread while the caller works on this one, so reading
    overlaps the net's forward pass."""
    from concurrent.futures import ThreadPoolExecutor
    records = list(records)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load_image_bgr, records[0].path) if records else None
        for i, record in enumerate(records):
            image = pending.result()
            if i + 1 < len(records):
                pending = pool.submit(load_image_bgr, records[i + 1].path)
            yield record, image


def image_scale(height, width, target_size=600, max_size=1000):
    """py-faster-rcnn's scale factor: ``target_size / shorter side``, or
    ``max_size / longer side`` when ``round(scale * longer side) > max_size``."""
    short, long_ = float(min(height, width)), float(max(height, width))
    if short <= 0:
        raise DataError(f"image of {height} x {width} pixels (height x width) has no pixels")
    scale = float(target_size) / short
    if np.round(scale * long_) > max_size:
        scale = float(max_size) / long_
    return scale


def resized_shape(height, width, scale):
    """``(h, w)`` of an image scaled by ``scale``: each side rounded half to
    even (as OpenCV's ``resize(fx, fy)``), at least 1."""
    return (max(int(np.round(height * scale)), 1), max(int(np.round(width * scale)), 1))


def resize_image(image, height, width):
    """``image`` ``(H, W, C)`` float resized to ``(height, width, C)`` float32
    with Pillow's bilinear filter, one float channel at a time (Pillow
    releases the GIL while resampling, so a background thread can do this)."""
    from PIL import Image
    if image.shape[:2] == (height, width):
        return np.array(image, dtype=np.float32)
    out = np.empty((height, width, image.shape[2]), dtype=np.float32)
    for c in range(image.shape[2]):
        channel = Image.fromarray(np.ascontiguousarray(image[:, :, c], dtype=np.float32))
        out[:, :, c] = np.asarray(channel.resize((width, height), Image.BILINEAR))
    return out


def prepare_image(image_bgr, target_size=600, max_size=1000, pixel_means=PIXEL_MEANS):
    """Mean-subtracted, rescaled network input of one image.

    Args:
        image_bgr: ``(H, W, 3)`` BGR pixels (``load_image_bgr``).
        target_size: length of the shorter side after scaling.
        max_size: upper bound of the longer side after scaling.

    Returns:
        ``(blob, im_scale)``: blob ``(1, 3, h, w)`` float32 (BGR minus
        ``pixel_means``) and the scale factor; the net's ``im_info`` is
        ``[h, w, im_scale]``.
    """
    image = np.asarray(image_bgr)
    if image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"expected an (H, W, 3) BGR image, found shape {image.shape}")
    height, width = image.shape[:2]
    scale = image_scale(height, width, target_size, max_size)
    # Means first, as the reference does (the filter's weights sum to 1, so
    # the order changes nothing but rounding).
    centred = image.astype(np.float32) - np.asarray(pixel_means, dtype=np.float32)
    resized = resize_image(centred, *resized_shape(height, width, scale))
    return np.ascontiguousarray(resized.transpose(2, 0, 1)[None]), scale


def flip_image(image):
    """``(H, W, C)`` image mirrored left to right (a contiguous copy)."""
    return np.ascontiguousarray(np.asarray(image)[:, ::-1])


def flip_boxes(boxes, width):
    """Boxes ``(G, 4+)`` ``[x1, y1, x2, y2, ...]`` of an image ``width``
    pixels wide, mirrored: ``x1' = W - x2 - 1``, ``x2' = W - x1 - 1``; other
    columns are kept."""
    boxes = np.asarray(boxes)
    flipped = boxes.copy()
    flipped[:, 0] = width - boxes[:, 2] - 1
    flipped[:, 2] = width - boxes[:, 0] - 1
    return flipped


def images_to_blob(blobs):
    """Stack ``(1, 3, h_i, w_i)`` blobs into ``(N, 3, max h, max w)``,
    zero-padded at the bottom and right (py-faster-rcnn's im_list_to_blob)."""
    height = max(b.shape[2] for b in blobs)
    width = max(b.shape[3] for b in blobs)
    out = np.zeros((len(blobs), blobs[0].shape[1], height, width), dtype=np.float32)
    for i, blob in enumerate(blobs):
        out[i, :, :blob.shape[2], :blob.shape[3]] = blob[0]
    return out
