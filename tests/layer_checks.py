"""Small helpers shared by the layer tests (tests/layers): setting a layer up
on arrays, random inputs, and Caffe's backward contract for parameter
gradients."""
import numpy as np

from netdef.gradcheck import build_layer, setup_layer


def make(spec, arrays, num_tops=None, dtype=np.float64):
    """The layer of prototxt ``spec`` set up on ``arrays`` (cast to
    ``dtype``): ``(layer, bottoms, tops)``."""
    layer = build_layer(spec, dtype=dtype)
    bottoms, tops = setup_layer(layer, [np.asarray(a, dtype=dtype) for a in arrays], num_tops)
    return layer, bottoms, tops


def rand(*shape, seed=0):
    """Standard normal values of ``shape``, seeded."""
    return np.random.default_rng(seed).standard_normal(shape)


def check_param_diffs_accumulate(layer, bottoms, tops, seed, sentinel):
    """Caffe's backward contract for a layer with parameters: a second
    backward adds its parameter gradients to the first's, and
    propagate_down False leaves bottom 0's diff (set to ``sentinel``) as it
    is. The top diff is standard normal from ``seed``."""
    layer.forward(bottoms, tops)
    tops[0].diff[...] = np.random.default_rng(seed).standard_normal(tops[0].shape)
    layer.backward(tops, [True], bottoms)
    once = [p.diff.copy() for p in layer.blobs]
    bottoms[0].diff[...] = sentinel
    layer.backward(tops, [False], bottoms)
    for p, d in zip(layer.blobs, once):
        np.testing.assert_allclose(p.diff, 2 * d, rtol=1e-12)
    assert np.all(bottoms[0].diff == sentinel)


def outer_channels_inner(shape, axis):
    """``(axis, outer, channels, inner)`` of an array of ``shape`` around
    ``axis`` (negative counts from the end): the positions the references of
    the class-axis layers (Accuracy, Softmax) loop over."""
    axis = axis % len(shape)
    outer = int(np.prod(shape[:axis]))
    channels = shape[axis]
    inner = int(np.prod(shape[axis + 1:]))
    return axis, outer, channels, inner
