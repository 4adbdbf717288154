"""Concat and Slice: blobs joined along an axis, and one blob cut along an
axis. Each is the other's backward.

Both are written once with the blobs' array module: a copy between a blob
and a range of the joined blob along the axis, which on CuPy arrays is one
strided device copy per blob. Each layer keeps, from ``reshape``, the index
of every part in the joined layout (``self.parts``).
"""
from layers.base import Layer, register
from layers.shape_ops import canonical_axis


def _axis(layer, param, legacy_field, shape):
    """The joining axis: ``axis`` (may be negative) or the legacy non-negative
    ``concat_dim`` / ``slice_dim``; they exclude each other (checked in setup)."""
    if param.HasField(legacy_field):
        value = int(getattr(param, legacy_field))
        if value >= len(shape):
            raise layer.shape_error(
                0, f"{legacy_field} {value} to be below its number of axes {len(shape)}", shape)
        return value
    return canonical_axis(layer, int(param.axis), shape, field="axis")


def _check_axis_fields(layer, param, legacy_field, param_name):
    if param.HasField("axis") and param.HasField(legacy_field):
        raise layer.definition_error(
            f"{param_name} gives both axis and {legacy_field}; give one of them")


def _parts(axis, sizes):
    """Index tuples selecting consecutive ranges of ``sizes`` along ``axis``."""
    parts, offset = [], 0
    for size in sizes:
        parts.append((slice(None),) * axis + (slice(offset, offset + size),))
        offset += size
    return parts


@register("Concat")
class ConcatLayer(Layer):
    """Bottoms joined along ``axis``.

    concat_param: axis (default 1, negative counts from the end) or the legacy
    concat_dim. bottoms: equal shapes except along the axis, e.g. (N, C_i, H, W);
    top: (N, sum C_i, H, W). backward: each bottom's diff is its range of the
    top diff.
    """

    min_bottoms = 1
    exact_tops = 1

    def layer_setup(self, bottoms, tops):
        _check_axis_fields(self, self.param.concat_param, "concat_dim", "concat_param")

    def reshape(self, bottoms, tops):
        first = bottoms[0].shape
        axis = _axis(self, self.param.concat_param, "concat_dim", first)
        for i, bottom in enumerate(bottoms[1:], start=1):
            shape = bottom.shape
            if len(shape) != len(first) or any(
                    a != b for j, (a, b) in enumerate(zip(shape, first)) if j != axis):
                raise self.shape_error(
                    i, f"the shape of bottom '{self.bottom_name(0)}' {first} except "
                    f"along the concat axis {axis}", shape)
        sizes = [b.shape[axis] for b in bottoms]
        self.parts = _parts(axis, sizes)
        tops[0].reshape(first[:axis] + (sum(sizes),) + first[axis + 1:])

    def forward_cpu(self, bottoms, tops):
        top = tops[0].data
        for bottom, part in zip(bottoms, self.parts):
            top[part] = bottom.data

    def backward_cpu(self, tops, propagate_down, bottoms):
        diff = tops[0].diff
        for bottom, part, down in zip(bottoms, self.parts, propagate_down):
            if down:
                bottom.diff[...] = diff[part]

    forward_gpu = forward_cpu
    backward_gpu = backward_cpu


@register("Slice")
class SliceLayer(Layer):
    """One bottom cut along ``axis`` into the tops.

    slice_param: axis (default 1, negative counts from the end) or the legacy
    slice_dim; slice_point: the len(tops) - 1 increasing positions where a
    new top starts, or none for equal parts. bottom: e.g. (N, C, H, W);
    tops: (N, C_k, H, W) with sum C_k = C. backward: the tops' diffs joined.
    """

    exact_bottoms = 1
    min_tops = 1

    def layer_setup(self, bottoms, tops):
        p = self.param.slice_param
        _check_axis_fields(self, p, "slice_dim", "slice_param")
        self.points = [int(s) for s in p.slice_point]
        if self.points:
            if len(self.points) != len(tops) - 1:
                raise self.definition_error(
                    f"slice_param gives {len(self.points)} slice_point(s) {self.points} for "
                    f"{len(tops)} tops; expected {len(tops) - 1} (one fewer than the tops)")
            if any(b <= a for a, b in zip([0] + self.points, self.points)):
                raise self.definition_error(
                    f"slice_param slice_point {self.points} must be positive and "
                    "strictly increasing")

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        axis = _axis(self, self.param.slice_param, "slice_dim", shape)
        length = shape[axis]
        if self.points:
            if self.points[-1] >= length:
                raise self.shape_error(
                    0, f"slice_point {self.points} to lie inside its axis {axis} of "
                    f"length {length} (every top non-empty)", shape)
            sizes = [b - a for a, b in zip([0] + self.points, self.points + [length])]
        else:
            if length % len(tops):
                raise self.shape_error(
                    0, f"axis {axis} divisible into {len(tops)} equal parts "
                    f"(one per top; no slice_point given)", shape)
            sizes = [length // len(tops)] * len(tops)
        self.parts = _parts(axis, sizes)
        for top, size in zip(tops, sizes):
            top.reshape(shape[:axis] + (size,) + shape[axis + 1:])

    def forward_cpu(self, bottoms, tops):
        data = bottoms[0].data
        for top, part in zip(tops, self.parts):
            top.data[...] = data[part]

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        diff = bottoms[0].diff
        for top, part in zip(tops, self.parts):
            diff[part] = top.diff

    forward_gpu = forward_cpu
    backward_gpu = backward_cpu
