"""Broadcast multiply and add: Scale and Bias (Caffe's semantics).

Both apply an operand ``w`` (a learned blob, or bottom[1]) to bottom[0]
with ``w.shape == bottom[0].shape[axis:axis + w.ndim]``: bottom[0] is seen
as ``(outer, dim, inner)`` with ``outer = prod(shape[:axis])``,
``dim = w.size`` and ``inner = prod(shape[axis + w.ndim:])``. A scalar
operand (``num_axes: 0``, or a 0-D bottom[1]) applies to every element.
"""
import numpy as np

from layers.base import Layer, register
from layers.kernels import launch
from netdef.device import array_module
from netdef.errors import ShapeError
from netdef.fillers import fill


def _prod(values):
    return int(np.prod(values, dtype=np.int64)) if len(values) else 1


def canonical_axis(layer, axis, shape, field):
    """Caffe's CanonicalAxisIndex: ``axis`` in [-ndim, ndim), negative
    counting from the end, checked against bottom[0]'s ``shape``."""
    ndim = len(shape)
    if not -ndim <= axis < ndim:
        raise layer.shape_error(
            0, f"{field} {axis} to name one of its axes ({-ndim} to {ndim - 1})", shape)
    return axis + ndim if axis < 0 else axis


def learned_shape(layer, shape, param, field):
    """Shape of the learned operand: ``shape[axis:axis + num_axes]``."""
    axis = canonical_axis(layer, param.axis, shape, f"{field}.axis")
    num_axes = param.num_axes
    if num_axes < -1:
        raise layer.definition_error(
            f"{field}.num_axes must be >= 0, or -1 for all axes from axis, found {num_axes}")
    if num_axes == -1:
        return tuple(shape[axis:])
    if axis + num_axes > len(shape):
        raise layer.shape_error(
            0, f"at least {axis + num_axes} axes for {field}.axis {param.axis} and "
            f"num_axes {num_axes}", shape)
    return tuple(shape[axis:axis + num_axes])


def broadcast_geometry(layer, bottom_shape, operand_shape, axis_param, field, operand):
    """``(outer, dim, inner)`` for applying an operand of ``operand_shape``
    to bottom[0] from ``axis_param``; ``operand`` names it in errors: a
    bottom index, or a string describing a parameter blob."""
    k = len(operand_shape)
    # Caffe ignores the axis of a scalar operand (any axis is equivalent).
    axis = 0 if k == 0 else canonical_axis(layer, axis_param, bottom_shape, f"{field}.axis")
    covered = tuple(bottom_shape[axis:axis + k])
    if axis + k > len(bottom_shape) or covered != tuple(operand_shape):
        expected = (f"shape {covered} (bottom '{layer.bottom_name(0)}' shape "
                    f"{tuple(bottom_shape)}[{axis}:{axis + k}] for {field}.axis {axis_param})"
                    if axis + k <= len(bottom_shape) else
                    f"at most {len(bottom_shape) - axis} axes from {field}.axis {axis_param} "
                    f"of bottom '{layer.bottom_name(0)}' shape {tuple(bottom_shape)}")
        if isinstance(operand, int):
            raise layer.shape_error(operand, expected, operand_shape)
        raise ShapeError(f"{layer.where}: {operand} expected {expected}, found shape "
                         f"{tuple(operand_shape)} (were the weights loaded from a different net?)")
    return (_prod(bottom_shape[:axis]), _prod(operand_shape), _prod(bottom_shape[axis + k:]))


def _reduce_to_operand(values, geometry, xp):
    """Sum an array of bottom[0]'s shape over outer and inner: shape (dim,)."""
    return xp.sum(values.reshape(geometry), axis=(0, 2))


def _fill_blob(layer, blob, filler, salt):
    blob.data[...] = layer.device.xp.asarray(fill(filler, blob.shape, layer.rng(salt)),
                                             dtype=layer.dtype)


@register("Scale")
class ScaleLayer(Layer):
    """y = x * w (+ b), w broadcast over bottom[0] (see the module docstring).

    bottoms: x of any shape, and optionally w (then not learned, and
    backward propagates into it); top: x's shape; works in place.

    scale_param: axis (1), num_axes (1; -1 = all remaining axes; the
    learned w has shape ``x.shape[axis:axis + num_axes]``), filler (constant
    1), bias_term (false), bias_filler (constant 0).

    Parameter blobs: [w] (one-bottom form) then [b] when bias_term, b having
    w's shape.
    """

    min_bottoms = 1
    max_bottoms = 2
    exact_tops = 1

    def layer_setup(self, bottoms, tops):
        p = self.param.scale_param
        self.bias_term = bool(p.bias_term)
        shape = bottoms[0].shape
        self.blobs = []
        if len(bottoms) == 1:
            scale_shape = learned_shape(self, shape, p, "scale_param")
            filler = type(p.filler)()
            if p.HasField("filler"):
                filler.CopyFrom(p.filler)
            else:
                # Caffe's default: ones, so an untrained Scale is the identity.
                filler.type = "constant"
                filler.value = 1
            self.blobs.append(self.new_param_blob(scale_shape))
            _fill_blob(self, self.blobs[0], filler, 0)
        if self.bias_term:
            # Caffe's internal Bias layer covers the scale's axes: num_axes
            # from scale_param, or all of bottom[1]'s axes.
            if len(bottoms) == 1:
                bias_shape = self.blobs[0].shape
            else:
                bias_shape = tuple(bottoms[1].shape)
                broadcast_geometry(self, shape, bias_shape, p.axis, "scale_param", 1)
            self.blobs.append(self.new_param_blob(bias_shape))
            _fill_blob(self, self.blobs[-1], p.bias_filler, 1)

    def reshape(self, bottoms, tops):
        p = self.param.scale_param
        shape = bottoms[0].shape
        if len(bottoms) == 2:
            self.geometry = broadcast_geometry(self, shape, bottoms[1].shape, p.axis,
                                               "scale_param", 1)
        else:
            self.geometry = broadcast_geometry(self, shape, self.blobs[0].shape, p.axis,
                                               "scale_param", "param blob 0 (scale)")
        if self.bias_term:
            bias_geometry = broadcast_geometry(self, shape, self.blobs[-1].shape, p.axis,
                                               "scale_param",
                                               f"param blob {len(self.blobs) - 1} (bias)")
            if bias_geometry != self.geometry:
                raise ShapeError(
                    f"{self.where}: param blob {len(self.blobs) - 1} (bias) expected the "
                    f"scale's shape {self._scale(bottoms).shape}, found shape "
                    f"{self.blobs[-1].shape}")
        # In place, forward overwrites x, which backward needs for dw: keep a
        # copy, as Caffe does (only when dw is needed: not for a frozen w).
        if bottoms[0] is tops[0] and self._needs_scale_gradient(bottoms):
            current = getattr(self, "x_copy", None)
            if current is None or tuple(current.shape) != tuple(shape):
                current = self.device.xp.zeros(shape, dtype=self.dtype)
            self.x_copy = current
        else:
            self.x_copy = None
            tops[0].reshape(shape)

    def _scale(self, bottoms):
        return bottoms[1] if len(bottoms) == 2 else self.blobs[0]

    def _needs_scale_gradient(self, bottoms):
        """Whether backward may compute dw (bottom[1]'s, or a learned w)."""
        return len(bottoms) == 2 or self.param_needs_gradient(0)

    def frozen_affine(self):
        """``(a, b)``, each of the learned scale's shape: y = x * a + b with
        the layer's own w and b (zero without bias_term), for the graph
        plan to fold into a neighbour."""
        w = self.blobs[0].data
        b = self.blobs[1].data if self.bias_term else self.device.xp.zeros_like(w)
        return w, b

    def _x(self, bottoms):
        """Bottom data as it was in forward."""
        return self.x_copy if self.x_copy is not None else bottoms[0].data

    # -- CPU ---------------------------------------------------------------------
    def forward_cpu(self, bottoms, tops):
        x = bottoms[0].data
        if self.x_copy is not None:
            self.x_copy[...] = x
        outer, dim, inner = self.geometry
        w = self._scale(bottoms).data.reshape(1, dim, 1)
        y = x.reshape(self.geometry) * w
        if self.bias_term:
            y = y + self.blobs[-1].data.reshape(1, dim, 1)
        tops[0].data[...] = y.reshape(tops[0].data.shape)

    def backward_cpu(self, tops, propagate_down, bottoms):
        self._backward_operands(tops, propagate_down, bottoms, np)
        if propagate_down[0]:
            dim = self.geometry[1]
            dy = tops[0].diff
            w = self._scale(bottoms).data.reshape(1, dim, 1)
            bottoms[0].diff[...] = (dy.reshape(self.geometry) * w).reshape(dy.shape)

    def _backward_operands(self, tops, propagate_down, bottoms, xp):
        """Gradients of b and w: sums over outer and inner, done before the
        bottom diff is written (in place it is the top diff). Parameter
        gradients accumulate (Caffe's contract); bottom[1]'s is overwritten."""
        dy = tops[0].diff
        if self.bias_term and self.param_needs_gradient(len(self.blobs) - 1):
            bias = self.blobs[-1]
            bias.diff += _reduce_to_operand(dy, self.geometry, xp).reshape(bias.shape)
        if (len(bottoms) == 1 and self.param_needs_gradient(0)) or \
                (len(bottoms) == 2 and propagate_down[1]):
            w = self._scale(bottoms)
            dw = _reduce_to_operand(dy * self._x(bottoms), self.geometry, xp).reshape(w.shape)
            if len(bottoms) == 1:
                w.diff += dw
            else:
                w.diff[...] = dw

    # -- GPU ---------------------------------------------------------------------
    def forward_gpu(self, bottoms, tops):
        x = bottoms[0].data
        if self.x_copy is not None:
            self.x_copy[...] = x
        _, dim, inner = self.geometry
        w = self._scale(bottoms).data
        if self.bias_term:
            launch("scale.cu", "scale_bias_forward", x.dtype, x.size,
                   (np.int64(x.size), x, w, self.blobs[-1].data, tops[0].data,
                    np.int64(dim), np.int64(inner)))
        else:
            launch("scale.cu", "scale_forward", x.dtype, x.size,
                   (np.int64(x.size), x, w, tops[0].data, np.int64(dim), np.int64(inner)))

    def backward_gpu(self, tops, propagate_down, bottoms):
        dy = tops[0].diff
        self._backward_operands(tops, propagate_down, bottoms, array_module(dy))
        if propagate_down[0]:
            _, dim, inner = self.geometry
            # dx = dy * w: the forward kernel applied to dy.
            launch("scale.cu", "scale_forward", dy.dtype, dy.size,
                   (np.int64(dy.size), dy, self._scale(bottoms).data, bottoms[0].diff,
                    np.int64(dim), np.int64(inner)))


@register("Bias")
class BiasLayer(Layer):
    """y = x + b, b broadcast over bottom[0] (see the module docstring).

    bottoms: x of any shape, and optionally b (then not learned, and
    backward propagates into it); top: x's shape; works in place.

    bias_param: axis (1), num_axes (1; -1 = all remaining axes; the learned
    b has shape ``x.shape[axis:axis + num_axes]``), filler (constant 0).

    Parameter blobs: [b] in the one-bottom form, none otherwise.
    """

    min_bottoms = 1
    max_bottoms = 2
    exact_tops = 1

    def layer_setup(self, bottoms, tops):
        p = self.param.bias_param
        self.blobs = []
        if len(bottoms) == 1:
            shape = learned_shape(self, bottoms[0].shape, p, "bias_param")
            self.blobs.append(self.new_param_blob(shape))
            _fill_blob(self, self.blobs[0], p.filler, 0)

    def reshape(self, bottoms, tops):
        p = self.param.bias_param
        shape = bottoms[0].shape
        if len(bottoms) == 2:
            self.geometry = broadcast_geometry(self, shape, bottoms[1].shape, p.axis,
                                               "bias_param", 1)
        else:
            self.geometry = broadcast_geometry(self, shape, self.blobs[0].shape, p.axis,
                                               "bias_param", "param blob 0 (bias)")
        if bottoms[0] is not tops[0]:
            tops[0].reshape(shape)

    def _bias(self, bottoms):
        return bottoms[1] if len(bottoms) == 2 else self.blobs[0]

    def forward_cpu(self, bottoms, tops):
        dim = self.geometry[1]
        x = bottoms[0].data
        y = x.reshape(self.geometry) + self._bias(bottoms).data.reshape(1, dim, 1)
        tops[0].data[...] = y.reshape(x.shape)

    def backward_cpu(self, tops, propagate_down, bottoms):
        self._backward_common(tops, propagate_down, bottoms, np)

    def _backward_common(self, tops, propagate_down, bottoms, xp):
        # db and dx = dy are plain reductions and copies: the same on both
        # devices. In place, dx is dy already.
        dy = tops[0].diff
        if len(bottoms) == 1 or propagate_down[1]:
            b = self._bias(bottoms)
            db = _reduce_to_operand(dy, self.geometry, xp).reshape(b.shape)
            if len(bottoms) == 1:
                b.diff += db
            else:
                b.diff[...] = db
        if propagate_down[0] and bottoms[0] is not tops[0]:
            bottoms[0].diff[...] = dy

    def forward_gpu(self, bottoms, tops):
        _, dim, inner = self.geometry
        x = bottoms[0].data
        launch("scale.cu", "bias_forward", x.dtype, x.size,
               (np.int64(x.size), x, self._bias(bottoms).data, tops[0].data,
                np.int64(dim), np.int64(inner)))

    def backward_gpu(self, tops, propagate_down, bottoms):
        self._backward_common(tops, propagate_down, bottoms, array_module(tops[0].diff))
