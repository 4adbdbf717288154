"""Occlusion sensitivity (Zeiler and Fergus): slide a grey patch over the
image and map how much the target score drops.

    target = model.target(image_rgb, detection=0)
    heat = occlusion(model, image_rgb, target, patch=24, stride=12)   # (H, W)

Patch side and stride are given in the image's own pixels and applied to
the net's input blob (the image as the net sees it: a detector's image
scaled to its test scale, a classifier's resized to the blob), scaled by
the same factors (at least 1 pixel), where the grey of the mean pixel is
0: the input has the means subtracted. Patches start every stride along
each axis of the image's part of the blob, plus one flush with its far
edge, so every pixel is covered. A pixel's value is the mean score drop (unoccluded score minus
occluded score) over the patches covering it: positive where hiding the
pixels lowers the score. The map is then brought to the image's own
pixels (``VisualModel.to_image``).

Occluded copies run through the net ``batch`` at a time. For a detector
every copy keeps the target's RoI (in input-blob pixels, so it moves with
the image's scale): the net runs to the layer before the proposal layer,
the RoIs (one per copy, the same box) are written, the rest runs.
"""
import numpy as np

from netdef.device import to_numpy
from netdef.errors import DataError

__all__ = ["occlusion", "patch_corners", "default_patch", "input_factors", "pinned_forward"]


def default_patch(height, width):
    """The default patch side for an image of ``(height, width)``: an eighth
    of its shorter side, at least 1 pixel."""
    return max(1, int(round(min(height, width) / 8)))


def input_factors(prepared, kind):
    """``(sy, sx)``: input-blob pixels per image pixel along each axis (a
    detector's one scale; a classifier's image is resized to the blob)."""
    if kind == "detector":
        return (prepared.scale, prepared.scale)
    return tuple(i / n for i, n in zip(prepared.input_shape, prepared.image_shape))


def _starts(extent, patch, stride):
    starts = np.arange(0, max(extent - patch, 0) + 1, stride)
    if starts[-1] != max(extent - patch, 0):
        starts = np.append(starts, extent - patch)
    return starts


def patch_corners(height, width, patch, stride):
    """``(P, 2)`` int ``(y, x)`` top-left corners of the patches (``patch``
    and ``stride``: ``(h, w)`` pixels) over an image part of ``(height,
    width)``: every stride, plus one flush with the far edge; row-major."""
    ys, xs = (_starts(n, min(p, n), s) for n, p, s in zip((height, width), patch, stride))
    grid = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1)
    return grid.reshape(-1, 2)


def _masks(corners, patch, shape, xp):
    """``(B, h, w)`` bool: True inside each corner's patch."""
    corners = xp.asarray(corners)
    rows, cols = xp.arange(shape[0]), xp.arange(shape[1])
    in_rows = (rows >= corners[:, :1]) & (rows < corners[:, :1] + patch[0])
    in_cols = (cols >= corners[:, 1:]) & (cols < corners[:, 1:] + patch[1])
    return in_rows[:, :, None] & in_cols[:, None, :]


def pinned_forward(model, inputs, rois):
    """Run ``model``'s net on ``inputs`` (name -> array, any batch size)
    with the detector's ``rois`` ``(R, 5)`` written over the proposal
    layer's: the proposal layer (one image only) does not run."""
    net, names = model.net, list(model.net.layer_dict)
    at = names.index(model.rois_layer)
    net.forward(end=names[at - 1], **inputs)
    net.blobs["rois"].set_data(np.asarray(to_numpy(rois), dtype=np.float32).reshape(-1, 5))
    net.forward(start=names[at + 1])


def _scores(model, prepared, data, target):
    """``(B,)`` target scores of the input batch ``data`` ``(B, 3, h, w)``."""
    count = data.shape[0]
    inputs = {name: np.repeat(to_numpy(array), count, axis=0)
              for name, array in prepared.inputs.items() if name != model.input_blob}
    inputs[model.input_blob] = data
    if target.rois is None:
        model.net.forward(**inputs)
    else:
        rois = np.repeat(np.asarray(to_numpy(target.rois), np.float32).reshape(1, 5), count, 0)
        rois[:, 0] = np.arange(count)  # copy b's RoI reads image b
        pinned_forward(model, inputs, rois)
    scores = model.net.blobs[target.blob].data
    # a copy: the next batch overwrites the blob (a CuPy index is a view)
    return scores[(slice(None),) + tuple(target.index[1:])].copy()


def _check(name, value):
    if int(value) != value or value < 1:
        raise DataError(f"occlusion: {name} must be a whole number of pixels >= 1, "
                        f"found {value}")
    return int(value)


def occlusion(model, image, target, patch=None, stride=None, batch=8, progress=None):
    """The occlusion sensitivity map of ``target`` (``model.target(...)``)
    for ``image`` ``(H, W, 3)`` uint8 RGB: ``(H, W)`` float32 score drops.

    patch: side of the square grey patch in image pixels (default
    ``default_patch``: an eighth of the image's shorter side); stride:
    image pixels between patch starts (default half the patch); batch:
    occluded copies per forward; progress: ``callable(done, total)`` after
    each batch, counting patches."""
    prepared = model.prepare(image)
    patch = _check("patch", default_patch(*prepared.image_shape) if patch is None else patch)
    stride = _check("stride", max(1, patch // 2) if stride is None else stride)
    batch = _check("batch", batch)
    height, width = prepared.input_shape
    factors = input_factors(prepared, model.kind)
    size = tuple(min(max(1, int(round(patch * f))), n) for f, n in zip(factors, (height, width)))
    step = tuple(max(1, int(round(stride * f))) for f in factors)
    xp = model.net.device.xp
    data = xp.asarray(prepared.inputs[model.input_blob])
    base = _scores(model, prepared, data, target)[0]
    corners = patch_corners(height, width, size, step)
    drops = xp.zeros(data.shape[2:], dtype=data.dtype)
    covered = xp.zeros(data.shape[2:], dtype=data.dtype)
    for start in range(0, len(corners), batch):
        masks = _masks(corners[start:start + batch], size, data.shape[2:], xp)
        occluded = xp.where(masks[:, None], xp.zeros((), data.dtype), data)
        drop = base - _scores(model, prepared, occluded, target)
        weights = masks.astype(data.dtype)
        drops += xp.tensordot(drop.astype(data.dtype), weights, axes=1)
        covered += weights.sum(axis=0)
        if progress is not None:
            progress(min(start + batch, len(corners)), len(corners))
    heat = drops / xp.maximum(covered, 1)
    return model.to_image(to_numpy(heat), prepared)
