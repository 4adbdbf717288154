"""Class model visualization: the input a class score likes best.

    image, objectives = class_model(model, "circle", steps=200)

Simonyan, Vedaldi and Zisserman (2014): gradient ascent on the input ``I``
(the net's input blob: BGR with the pixel means subtracted) from a blank
image (``I = 0``, the mean image) of the L2-regularized objective

    J(I) = S_c(I) - l2 * ||I||^2

with ``S_c`` the pre-softmax score of class ``c`` (``model.score_blob``),
one step ``I <- I + lr * (dS_c/dI - 2 * l2 * I)`` per iteration. The
scale of ``dS_c/dI`` differs from net to net by orders of magnitude, so by
default ``lr`` is set from the first gradient: the first step moves the
input by ``FIRST_STEP`` pixel values (root mean square). ``l2``'s default
suits the tiny R-FCN; tune it per net, as Simonyan et al. did. For a
detector the score is that of one RoI pinned to the whole input (the RPN's
proposals play no part).

Yosinski et al. (2015)'s regularizers, both off by default: ``jitter``
rolls the image by a random shift of up to ``jitter`` pixels per axis
before each forward (and the gradient back after it); ``blur_every``
blurs the image with a Gaussian of ``blur_sigma`` pixels every that many
steps. With both off ``J`` rises at every step for a small enough ``lr``
where the net is smooth; the blank image itself can sit on a kink (max
pooling over equal values, ReLUs at exactly 0), so with such nets the
first step may not rise.
"""
import math

import numpy as np

from detection.visualize.occlusion import pinned_forward
from netdef.device import array_module, to_numpy
from netdef.errors import DataError

__all__ = ["class_model", "gaussian_blur", "FIRST_STEP"]

#: RMS change of the input (pixel values) of the first step when lr is None.
FIRST_STEP = 0.25


def gaussian_blur(images, sigma):
    """``images`` ``(N, C, H, W)`` (NumPy or CuPy) blurred by a Gaussian of
    ``sigma`` pixels, separably, edges reflected; the kernel reaches
    ``ceil(3 sigma)`` pixels each way."""
    xp = array_module(images)
    radius = int(math.ceil(3 * sigma))
    if sigma <= 0 or radius == 0:
        return images.copy()
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = images
    for axis in (2, 3):
        width = [(0, 0)] * 4
        width[axis] = (radius, radius)
        padded = xp.pad(out, width, mode="reflect" if out.shape[axis] > radius else "edge")
        size = out.shape[axis]
        # One shifted view per tap (2 * radius + 1 of them), each a whole-image step.
        out = sum(float(w) * xp.take(padded, xp.arange(k, k + size), axis=axis)
                  for k, w in enumerate(taps))
    return out.astype(images.dtype)


def _canvas_shape(model):
    """``(h, w)`` of the input blob as the net declares it."""
    for lp in model.net.layer_params:
        if lp.type == "Input" and model.input_blob in lp.top:
            dims = list(lp.input_param.shape[list(lp.top).index(model.input_blob)].dim)
            if len(dims) == 4:
                return int(dims[2]), int(dims[3])
    return tuple(model.net.blobs[model.input_blob].shape[2:])


def _class(model, class_index):
    if isinstance(class_index, str):
        return model.class_index(class_index)
    if not 0 <= int(class_index) < len(model.classes):
        raise DataError(f"class_model: class index {class_index} is out of range 0.."
                        f"{len(model.classes) - 1} (classes: {', '.join(model.classes)})")
    return int(class_index)


class _Ascent:
    """Forward and input gradient of one class score, for a fixed canvas."""

    def __init__(self, model, class_index, shape):
        self.model, self.net = model, model.net
        h, w = shape
        self.inputs = {}
        if model.kind == "detector":
            self.inputs["im_info"] = np.array([[h, w, 1.0]], np.float32)
            self.rois = np.array([[0, 0, 0, w - 1, h - 1]], np.float32)
        ndim = len(self.net.blobs[model.score_blob].shape)
        self.index = (0, class_index) + (0,) * (ndim - 2)

    def _fed(self, image):
        return dict(self.inputs, **{self.model.input_blob: image})

    def score_and_gradient(self, image):
        """``(S_c(image), dS_c/dimage)`` for ``image`` ``(1, 3, h, w)``."""
        if self.model.kind == "detector":
            pinned_forward(self.model, self._fed(image), self.rois)
        else:
            self.net.forward(**self._fed(image))
        blob = self.net.blobs[self.model.score_blob]
        seed = self.net.device.xp.zeros(blob.shape, self.net.dtype)
        seed[self.index] = 1
        score = float(blob.data[self.index])
        self.net.backward(start=self.model.score_layer, **{self.model.score_blob: seed})
        return score, self.net.blobs[self.model.input_blob].diff.copy()


def _first_lr(gradient, name):
    rms = float((gradient * gradient).mean()) ** 0.5
    if rms == 0:
        raise DataError(f"class_model: the score of '{name}' has no gradient at the blank "
                        "image (every path to it is cut, e.g. ReLUs at 0); give lr")
    return FIRST_STEP / rms


def _to_rgb(image, means):
    """``(1, 3, h, w)`` BGR minus means -> ``(h, w, 3)`` uint8 RGB."""
    bgr = to_numpy(image)[0].transpose(1, 2, 0) + np.asarray(means, np.float32)
    return np.clip(np.rint(bgr[:, :, ::-1]), 0, 255).astype(np.uint8)


def class_model(model, class_index, steps=200, lr=None, l2=1e-7, jitter=0, blur_every=0,
                blur_sigma=0.5, callback=None, seed=0):
    """Ascend class ``class_index`` (an index into ``model.classes`` or a
    name)'s L2-regularized score from a blank input (see the module).

    steps: iterations; lr: step size (None: ``FIRST_STEP`` over the RMS
    of the first score gradient); l2: the regularizer's weight; jitter:
    largest random shift in pixels (0: none); blur_every, blur_sigma: blur
    period in steps (0: never) and width in pixels; callback:
    ``callable(step, objective)`` after each step's forward; seed: the
    jitter's random generator. Returns ``(image, objectives)``: the input as
    ``(h, w, 3)`` uint8 RGB (means added back, clipped) and ``J`` at each
    step, measured before that step's update."""
    index = _class(model, class_index)
    if steps < 1 or (lr is not None and lr <= 0) or min(l2, jitter, blur_every, blur_sigma) < 0:
        raise DataError(f"class_model: need steps >= 1, lr > 0 and l2, jitter, blur_every, "
                        f"blur_sigma >= 0; found steps {steps}, lr {lr}, l2 {l2}, jitter "
                        f"{jitter}, blur_every {blur_every}, blur_sigma {blur_sigma}")
    shape = _canvas_shape(model)
    ascent = _Ascent(model, index, shape)
    xp, rng = model.net.device.xp, np.random.default_rng(seed)
    image = xp.zeros((1, 3) + shape, model.net.dtype)
    objectives = []
    for step in range(steps):
        shift = tuple(int(s) for s in rng.integers(-jitter, jitter + 1, 2)) if jitter else (0, 0)
        score, gradient = ascent.score_and_gradient(xp.roll(image, shift, axis=(2, 3)))
        objectives.append(score - l2 * float((image * image).sum()))
        if callback is not None:
            callback(step, objectives[-1])
        gradient = xp.roll(gradient, (-shift[0], -shift[1]), axis=(2, 3))
        if lr is None:
            lr = _first_lr(gradient, model.classes[index])
        image += lr * (gradient - 2 * l2 * image)
        if blur_every and (step + 1) % blur_every == 0:
            image = gaussian_blur(image, blur_sigma)
    return _to_rgb(image, model.pixel_means), objectives
