"""Caffe's DataTransformer (transform_param) over a whole batch, and the
image decoding of Caffe's data layers.

    transform = CaffeTransform(layer.param.transform_param, layer.phase, layer.where)
    out = transform(images, rng, dtype)        # (N, C, h, w) in dtype

For every image, in Caffe's order: a crop of ``crop_size`` x ``crop_size``
(offsets drawn uniformly in TRAIN, centred in TEST, rounding down), a
horizontal mirror drawn with probability 1/2 when ``mirror`` is set (in
either phase, as Caffe draws it), the mean subtracted (``mean_file``: a
BlobProto image of the uncropped size, read at the crop's own source
pixels; or ``mean_value``: one value, or one per channel) and the result
multiplied by ``scale``: ``out = (pixel - mean) * scale``. The draws for a
batch come from the generator the layer passes, so a run repeats.

Images of one batch may differ in size only when cropped: they arrive
zero-padded to the largest (``pad_images``) with their true ``sizes``.

``decode_image`` reads an encoded image (a file or bytes) as Caffe's
OpenCV calls do: uint8, channels B, G, R (colour) or one grey channel.
Pillow decodes; its grey conversion uses the same ITU-R 601 weights as
OpenCV's, and its bilinear resize averages over the footprint when
shrinking where OpenCV's samples four pixels (they agree when enlarging).
"""
import io

import numpy as np

from netdef.caffemodel import read_blob_proto
from netdef.errors import DataError, NetDefinitionError

__all__ = ["CaffeTransform", "decode_image", "pad_images", "read_mean_file"]


def read_mean_file(path):
    """The mean image ``(C, H, W)`` float32 of a ``.binaryproto`` BlobProto
    (as Caffe's compute_image_mean writes it, ``(1, C, H, W)``)."""
    mean = read_blob_proto(path, f"mean_file '{path}'")
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim != 3 or mean.size == 0:
        raise DataError(f"mean_file '{path}': expected a (1, C, H, W) mean image, "
                        f"found shape {mean.shape}")
    return np.ascontiguousarray(mean, dtype=np.float32)


def decode_image(source, color=True, size=None, what="image"):
    """Decode ``source`` (a path or the bytes of an encoded image) as uint8
    ``(H, W, C)``: ``color`` True gives 3 channels BGR, False one grey
    channel, None the file's own (grey stays grey, anything else BGR).
    ``size`` ``(height, width)`` resizes bilinearly. ``what`` names the
    image in a ``DataError``."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            if color is None:
                color = image.mode not in ("1", "L", "I", "I;16", "F")
            image = image.convert("RGB" if color else "L")
            if size is not None:
                image = image.resize((int(size[1]), int(size[0])), Image.BILINEAR)
            pixels = np.asarray(image, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{what}: no such file") from None
    except Exception as exc:  # Pillow raises OSError, ValueError, DecompressionBombError ...
        raise DataError(f"{what}: cannot decode the image ({type(exc).__name__}: {exc})") from None
    if pixels.ndim == 2:
        return pixels[:, :, None]
    return np.ascontiguousarray(pixels[:, :, ::-1])


def pad_images(images, where="batch", describe=lambda i: f"image {i}"):
    """Stack ``(C, H_i, W_i)`` arrays into ``(N, C, max H, max W)`` (zeros
    at the bottom and right) and return it with their ``(N, 2)`` sizes.
    Images with another channel count than the first are refused
    (``describe(i)`` names image ``i``, ``where`` the owner)."""
    channels = np.array([image.shape[0] for image in images])
    other = np.flatnonzero(channels != channels[0])
    if len(other):
        i = other[0]
        raise DataError(f"{where}: {describe(i)} has {channels[i]} channel(s), {describe(0)} "
                        f"has {channels[0]}: the images of a batch must have the same count")
    sizes = np.array([image.shape[1:] for image in images], dtype=np.int64)
    if (sizes == sizes[0]).all():
        return np.stack(images), sizes
    height, width = sizes.max(axis=0)
    dtype = np.result_type(*images)
    out = np.zeros((len(images), images[0].shape[0], height, width), dtype=dtype)
    for i, image in enumerate(images):  # one copy per decoded image
        out[i, :, :image.shape[1], :image.shape[2]] = image
    return out, sizes


class CaffeTransform:
    """transform_param as Caffe applies it (module docstring).

    Args:
        param: a ``caffe_pb2.TransformationParameter``.
        phase: "TRAIN" (random crop offsets) or "TEST" (centred crops).
        where: how messages name the owner (the layer).
    """

    def __init__(self, param, phase, where="transform_param"):
        self.where = where
        self.scale = float(param.scale)
        self.mirror = bool(param.mirror)
        self.crop_size = int(param.crop_size)
        self.training = phase == "TRAIN"
        self.force_color = bool(param.force_color)
        self.force_gray = bool(param.force_gray)
        if self.force_color and self.force_gray:
            raise NetDefinitionError(
                f"{where}: transform_param sets both force_color and force_gray; set one")
        if param.HasField("mean_file") and len(param.mean_value):
            raise NetDefinitionError(
                f"{where}: transform_param gives both mean_file and mean_value; give one")
        self.mean_values = np.array(param.mean_value, dtype=np.float32)
        self.mean_image = None
        if param.HasField("mean_file"):
            try:
                self.mean_image = read_mean_file(param.mean_file)
            except DataError as exc:
                raise DataError(f"{where}: {exc}") from None

    @property
    def decode_color(self):
        """What ``decode_image`` is asked for an encoded Datum: colour
        (force_color), grey (force_gray), else the image's own (None)."""
        return True if self.force_color else False if self.force_gray else None

    def output_shape(self, channels, height, width):
        """``(C, h, w)`` of a transformed ``(C, H, W)`` image."""
        if self.crop_size:
            return (channels, self.crop_size, self.crop_size)
        return (channels, height, width)

    def check(self, channels, sizes, describe):
        """Refuse a batch the settings cannot transform. ``sizes``: ``(N, 2)``
        heights and widths; ``describe(i)`` names image ``i`` in messages."""
        sizes = np.asarray(sizes).reshape(-1, 2)
        values = len(self.mean_values)
        if values not in (0, 1, channels):
            raise NetDefinitionError(
                f"{self.where}: transform_param mean_value must be given once or once per "
                f"channel ({channels}), found {values}")
        if self.crop_size:
            small = np.flatnonzero((sizes < self.crop_size).any(axis=1))
            if len(small):
                i = small[0]
                raise DataError(
                    f"{self.where}: {describe(i)} is {sizes[i][0]} x {sizes[i][1]} pixels "
                    f"(height x width), smaller than crop_size {self.crop_size}")
        else:
            other = np.flatnonzero((sizes != sizes[0]).any(axis=1))
            if len(other):
                i = other[0]
                raise DataError(
                    f"{self.where}: {describe(i)} is {sizes[i][0]} x {sizes[i][1]} pixels "
                    f"(height x width), {describe(0)} is {sizes[0][0]} x {sizes[0][1]}: the "
                    "images of a batch must have one size unless cropped (set crop_size, or "
                    "resize them)")
        if self.mean_image is not None:
            want = self.mean_image.shape
            wrong = np.flatnonzero((sizes != want[1:]).any(axis=1)) if channels == want[0] \
                else np.arange(len(sizes))
            if len(wrong):
                i = wrong[0]
                raise DataError(
                    f"{self.where}: {describe(i)} is {channels} x {sizes[i][0]} x "
                    f"{sizes[i][1]} (channels x height x width), the mean_file's image is "
                    f"{want[0]} x {want[1]} x {want[2]}: they must match")

    def draw(self, rng, sizes):
        """The random choices for a batch: ``(h_off, w_off, mirrored)``,
        each ``(N,)``."""
        sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
        n = len(sizes)
        mirrored = rng.integers(0, 2, size=n).astype(bool) if self.mirror \
            else np.zeros(n, dtype=bool)
        if not self.crop_size:
            zeros = np.zeros(n, dtype=np.int64)
            return zeros, zeros, mirrored
        room = sizes - self.crop_size
        if self.training:
            h_off = rng.integers(0, room[:, 0] + 1)
            w_off = rng.integers(0, room[:, 1] + 1)
        else:
            h_off, w_off = room[:, 0] // 2, room[:, 1] // 2
        return h_off.astype(np.int64), w_off.astype(np.int64), mirrored

    def __call__(self, images, rng, dtype=np.float32, sizes=None):
        """Transform a batch ``(N, C, H, W)`` (uint8 or float; zero-padded
        when ``sizes`` ``(N, 2)`` gives smaller true sizes) into
        ``(N, C, h, w)`` of ``dtype``. Call ``check`` first."""
        images = np.asarray(images)
        n, channels = images.shape[:2]
        if sizes is None:
            sizes = np.tile(images.shape[2:], (n, 1))
        h_off, w_off, mirrored = self.draw(rng, sizes)
        _, height, width = self.output_shape(channels, *images.shape[2:])
        rows = (h_off[:, None] + np.arange(height))[:, None, :, None]
        cols = w_off[:, None] + np.arange(width)
        # A mirrored image reads its crop's columns right to left.
        cols = np.where(mirrored[:, None], cols[:, ::-1], cols)[:, None, None, :]
        chan = np.arange(channels)[None, :, None, None]
        out = images[np.arange(n)[:, None, None, None], chan, rows, cols].astype(dtype)
        if self.mean_image is not None:
            out -= self.mean_image[chan, rows, cols].astype(dtype)
        elif len(self.mean_values):
            means = np.broadcast_to(self.mean_values, (channels,)).astype(dtype)
            out -= means[None, :, None, None]
        if self.scale != 1:
            out *= np.dtype(dtype).type(np.float32(self.scale))
        return out
