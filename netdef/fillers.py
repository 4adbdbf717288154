"""Weight fillers with Caffe's semantics, drawn from a seeded generator.

``fill(filler_param, shape, rng)`` returns a float64 NumPy array; the caller
casts it and moves it to its device. Fan-in is ``count / shape[0]`` and
fan-out ``count / shape[1]``, as in Caffe (for a convolution weight
``(out, in/groups, kh, kw)``).

A fan of 0 (a weight with a zero axis: a layer whose input has no channels
or features) leaves xavier and msra without a variance: a
``NetDefinitionError`` naming the filler, the fan and the shape (the Net
adds the layer). Other fillers give an empty array for an empty shape.
"""
import numpy as np

from .errors import NetDefinitionError


def _fans(shape):
    count = int(np.prod(shape))
    fan_in = count / shape[0] if len(shape) > 0 and shape[0] else count
    fan_out = count / shape[1] if len(shape) > 1 and shape[1] else count
    return fan_in, fan_out


def _variance_denominator(param, shape, kind):
    fan_in, fan_out = _fans(shape)
    norm = param.variance_norm
    if norm == param.FAN_OUT:
        name, value = "fan_out", fan_out
    elif norm == param.AVERAGE:
        name, value = "(fan_in + fan_out) / 2", (fan_in + fan_out) / 2.0
    else:
        name, value = "fan_in", fan_in
    if value <= 0:
        raise NetDefinitionError(
            f"{kind} filler: expected a weight shape with a positive {name}, found {name} = "
            f"{value:g} for shape {tuple(shape)} (a zero axis: does the layer's input have "
            "no channels or features?)")
    return value


def _bilinear(shape):
    # Upsampling kernel for deconvolution; Caffe's definition.
    if len(shape) != 4 or shape[2] != shape[3]:
        raise NetDefinitionError(f"bilinear filler needs a square 4-D shape, found {tuple(shape)}")
    k = shape[3]
    f = np.ceil(k / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    grid = np.arange(k)
    weights_1d = 1 - np.abs(grid / f - c)
    kernel = weights_1d[:, None] * weights_1d[None, :]
    return np.broadcast_to(kernel, shape).copy()


def fill(param, shape, rng):
    """Values for a blob of ``shape`` per ``param`` (a FillerParameter)."""
    shape = tuple(int(s) for s in shape)
    kind = param.type or "constant"
    if kind == "constant":
        return np.full(shape, param.value, dtype=np.float64)
    if kind == "gaussian":
        values = rng.normal(param.mean, param.std, size=shape)
        if param.sparse >= 0 and len(shape) >= 2 and shape[1]:
            # Keep each weight with probability sparse / num_outputs.
            keep = rng.random(shape) < param.sparse / shape[1]
            values = values * keep
        return values
    if kind == "uniform":
        return rng.uniform(param.min, param.max, size=shape)
    if kind == "xavier":
        scale = np.sqrt(3.0 / _variance_denominator(param, shape, kind))
        return rng.uniform(-scale, scale, size=shape)
    if kind == "msra":
        return rng.normal(0.0, np.sqrt(2.0 / _variance_denominator(param, shape, kind)),
                          size=shape)
    if kind == "positive_unitball":
        if not int(np.prod(shape)):
            return np.zeros(shape)
        values = rng.uniform(0.0, 1.0, size=shape).reshape(shape[0], -1)
        return (values / values.sum(axis=1, keepdims=True)).reshape(shape)
    if kind == "bilinear":
        return _bilinear(shape)
    raise NetDefinitionError(
        f"unknown filler type {kind!r}; known: constant, gaussian, uniform, xavier, "
        "msra, positive_unitball, bilinear")
