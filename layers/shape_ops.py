"""Data-movement layers that change no values: Reshape, Flatten, Split,
Silence, Crop.

The math is the same on both devices (views, copies and sums written with
the array module of the blobs), so each layer's GPU path is its CPU path run
on CuPy arrays.

Reshape and Flatten give their top a *view* of the bottom's data (Caffe's
ShareData); the top's diff is its own array and backward copies it back,
reshaped. Keeping the diffs apart means zeroing a bottom diff never wipes a
top diff that was already written. Neither layer works in place.
"""
from layers.base import Layer, register


def canonical_axis(layer, axis, shape, bottom_index=0, field="axis"):
    """``axis`` counted from the end when negative, as Caffe's
    CanonicalAxisIndex; out of [-N, N) is a ShapeError naming the bottom."""
    n = len(shape)
    if not -n <= axis < n:
        raise layer.shape_error(
            bottom_index, f"{field} {axis} to lie in [{-n}, {n}) for a {n}-D blob", shape)
    return axis + n if axis < 0 else axis


def _refuse_in_place(layer, bottoms, tops):
    for i, top in enumerate(tops):
        if any(top is b for b in bottoms) or layer.top_name(i) in layer.param.bottom:
            raise layer.definition_error(
                f"top '{layer.top_name(i)}' is also a bottom; this layer does not "
                "work in place")


class _ViewLayer(Layer):
    """One bottom, one top holding the bottom's data under another shape.

    Subclasses define ``top_shape(bottom_shape)``; it validates and raises.
    """

    exact_bottoms = 1
    exact_tops = 1

    def layer_setup(self, bottoms, tops):
        _refuse_in_place(self, bottoms, tops)
        self.read_params()

    def read_params(self):
        """Read and check the layer's parameters. Override."""

    def top_shape(self, bottom_shape):
        raise NotImplementedError

    def reshape(self, bottoms, tops):
        bottom, top = bottoms[0], tops[0]
        shape = self.output_shape = self.top_shape(bottom.shape)
        # The diff is the top's own, allocated when first used (Blob.diff).
        top.data = bottom.data.reshape(shape)

    def forward_cpu(self, bottoms, tops):
        # Re-take the view: the bottom's array may have been replaced since
        # reshape (a Net input set by the user); the view costs nothing.
        tops[0].data = bottoms[0].data.reshape(self.output_shape)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            bottoms[0].diff[...] = tops[0].diff.reshape(bottoms[0].diff.shape)

    forward_gpu = forward_cpu
    backward_gpu = backward_cpu


@register("Reshape")
class ReshapeLayer(_ViewLayer):
    """Caffe's Reshape: the top holds the bottom's data under a new shape.

    reshape_param:
      shape: the new dims of the replaced range; 0 copies the bottom dim at
        the same position (counted from ``axis``), -1 (at most once) is
        inferred from the element count;
      axis (default 0, negative counts from the end, -1 = after the last
        axis) and num_axes (default -1 = to the end): the range of bottom
        axes replaced by ``shape``; the others are kept.

    Example (py-faster-rcnn's RPN): shape { dim: 0 dim: 2 dim: -1 dim: 0 }
    turns (1, 18, H, W) into (1, 2, 9H, W).
    """

    def read_params(self):
        p = self.param.reshape_param
        self.dims = tuple(int(d) for d in p.shape.dim)
        self.axis = int(p.axis)
        self.num_axes = int(p.num_axes)
        if sum(d == -1 for d in self.dims) > 1:
            raise self.definition_error(
                f"reshape_param shape {self.dims} has more than one -1; at most "
                "one dim can be inferred")
        if any(d < -1 for d in self.dims):
            raise self.definition_error(
                f"reshape_param shape {self.dims} has a dim below -1; dims are "
                "positive, 0 (copy) or -1 (infer)")
        if self.num_axes < -1:
            raise self.definition_error(
                f"reshape_param num_axes must be >= 0, or -1 for all, found {self.num_axes}")

    def _requested(self):
        return (f"requested shape {self.dims} (reshape_param axis {self.axis}, "
                f"num_axes {self.num_axes})")

    def top_shape(self, bottom_shape):
        n = len(bottom_shape)
        # axis -1 means "after the last axis", hence the + 1.
        start = self.axis if self.axis >= 0 else n + self.axis + 1
        if not 0 <= start <= n:
            raise self.shape_error(
                0, f"reshape_param axis {self.axis} to lie in [{-n - 1}, {n}] for a "
                f"{n}-D blob ({self._requested()})", bottom_shape)
        end = n if self.num_axes == -1 else start + self.num_axes
        if end > n:
            raise self.shape_error(
                0, f"axis + num_axes = {end} to be at most its {n} axes "
                f"({self._requested()})", bottom_shape)
        middle = list(self.dims)
        for j, d in enumerate(self.dims):
            if d == 0:
                if start + j >= n:
                    raise self.shape_error(
                        0, f"an axis {start + j} to copy for the 0 at position {j} "
                        f"of the {self._requested()}", bottom_shape)
                middle[j] = bottom_shape[start + j]
        count = 1
        for s in bottom_shape:
            count *= s
        shape = list(bottom_shape[:start]) + middle + list(bottom_shape[end:])
        if -1 in self.dims:
            known = 1
            for s in shape:
                known *= s if s != -1 else 1
            if known == 0 or count % known:
                raise self.shape_error(
                    0, f"a count divisible by {known}, the product of the known dims of "
                    f"the {self._requested()}; its count is {count}", bottom_shape)
            shape[shape.index(-1)] = count // known
        result = 1
        for s in shape:
            result *= s
        if result != count:
            raise self.shape_error(
                0, f"{result} elements to fit the {self._requested()}, which makes "
                f"{tuple(shape)}; its count is {count}", bottom_shape)
        return tuple(shape)


@register("Flatten")
class FlattenLayer(_ViewLayer):
    """Caffe's Flatten: axes ``axis`` .. ``end_axis`` (inclusive) merged into one.

    flatten_param: axis (default 1), end_axis (default -1, the last); both
    may count from the end. (N, C, H, W) -> (N, C*H*W) with the defaults.
    """

    def read_params(self):
        p = self.param.flatten_param
        self.axis = int(p.axis)
        self.end_axis = int(p.end_axis)

    def top_shape(self, bottom_shape):
        start = canonical_axis(self, self.axis, bottom_shape, field="flatten_param axis")
        end = canonical_axis(self, self.end_axis, bottom_shape, field="flatten_param end_axis")
        if end < start:
            raise self.shape_error(
                0, f"flatten_param end_axis {self.end_axis} (axis {end}) not before "
                f"axis {self.axis} (axis {start})", bottom_shape)
        merged = 1
        for s in bottom_shape[start:end + 1]:
            merged *= s
        return tuple(bottom_shape[:start]) + (merged,) + tuple(bottom_shape[end + 1:])


@register("Split")
class SplitLayer(Layer):
    """One bottom copied to every top; backward sums the tops' diffs.

    The Net inserts these where one blob feeds several layers. Each top gets
    its own copy, so a later in-place layer on one top cannot change another.
    bottom: any shape; tops: the same shape.
    """

    exact_bottoms = 1
    min_tops = 1

    def layer_setup(self, bottoms, tops):
        _refuse_in_place(self, bottoms, tops)

    def reshape(self, bottoms, tops):
        for top in tops:
            top.reshape(bottoms[0].shape)

    def forward_cpu(self, bottoms, tops):
        for top in tops:
            top.data[...] = bottoms[0].data

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        diff = bottoms[0].diff
        diff[...] = tops[0].diff
        for top in tops[1:]:
            diff += top.diff

    forward_gpu = forward_cpu
    backward_gpu = backward_cpu


@register("Silence")
class SilenceLayer(Layer):
    """Consumes its bottoms (so they are not net outputs); no tops.

    backward writes zero diffs to the bottoms that propagate.
    """

    min_bottoms = 1
    exact_tops = 0

    def reshape(self, bottoms, tops):
        pass

    def forward_cpu(self, bottoms, tops):
        pass

    def backward_cpu(self, tops, propagate_down, bottoms):
        for bottom, down in zip(bottoms, propagate_down):
            if down:
                bottom.diff.fill(0)

    forward_gpu = forward_cpu
    backward_gpu = backward_cpu


@register("Crop")
class CropLayer(Layer):
    """Caffe's Crop: bottom 0 cut to the shape of bottom 1 from ``axis`` on.

    crop_param: axis (default 2; negative counts from the end); offset: none
    (0), one for every cropped axis, or one per cropped axis.
    bottoms: A (d_0 .. d_n) and B with as many axes; top: A's dims before
    ``axis`` and B's from it, taken from A at the offsets. backward: A's diff
    is zero outside the crop; B only supplies a shape and gets no gradient.
    """

    exact_bottoms = 2
    exact_tops = 1

    def layer_setup(self, bottoms, tops):
        self.offsets_param = [int(o) for o in self.param.crop_param.offset]

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def reshape(self, bottoms, tops):
        a, b = bottoms[0].shape, bottoms[1].shape
        start = canonical_axis(self, int(self.param.crop_param.axis), a, field="crop_param axis")
        if len(b) != len(a):
            raise self.shape_error(
                1, f"as many axes as bottom '{self.bottom_name(0)}' {a}", b)
        cropped = len(a) - start
        given = self.offsets_param
        if len(given) > 1 and len(given) != cropped:
            raise self.definition_error(
                f"crop_param gives {len(given)} offsets {given}; expected none, one, or one "
                f"per cropped axis ({cropped}: axes {start}..{len(a) - 1} of bottom "
                f"'{self.bottom_name(0)}' {a})")
        offsets = [0] * start + [given[0] if len(given) == 1 else given[i] if given else 0
                                 for i in range(cropped)]
        for axis in range(start, len(a)):
            if offsets[axis] + b[axis] > a[axis]:
                raise self.shape_error(
                    0, f"room along axis {axis} for a crop of size {b[axis]} (from bottom "
                    f"'{self.bottom_name(1)}' {b}) at offset {offsets[axis]}", a)
        shape = a[:start] + b[start:]
        self.window = tuple(slice(o, o + s) for o, s in zip(offsets, shape))
        tops[0].reshape(shape)

    def forward_cpu(self, bottoms, tops):
        tops[0].data[...] = bottoms[0].data[self.window]

    def backward_cpu(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            diff = bottoms[0].diff
            diff.fill(0)
            diff[self.window] = tops[0].diff

    forward_gpu = forward_cpu
    backward_gpu = backward_cpu
