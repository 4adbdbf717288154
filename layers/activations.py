"""Caffe's other element-wise activations: ELU, Swish, Clip, Power, Exp,
Log, AbsVal, BNLL and Threshold (ReLU, Sigmoid and TanH live in
``layers.neuron``, PReLU in ``layers.prelu``).

Each takes one bottom of any shape and gives one top of the same shape;
the CPU path is NumPy, the GPU path ``layers/cuda/activations.cu``.

Backward never reads the top's data: it reads the input ``x`` (or, for
Swish, the slope forward stored). So a later layer working in place on
the top (Dropout after ELU, say) cannot change this layer's gradient, as
it can in Caffe, where ELU, Exp and Swish read their top.

In place (top and bottom one Blob): Caffe lets every one of them run in
place except AbsVal, which it refuses; so does this module, with a
definition error. An in-place layer whose backward needs ``x`` copies it
before overwriting it, as Caffe's PReLU does (Caffe's Clip, Power, Log and
BNLL do not, and give wrong gradients in place). Swish and Threshold need
no copy; neither do Power's constant and affine cases.
"""
import math

import numpy as np

from layers.base import Layer, NoGradientLayer, register
from layers.kernels import launch


class _Elementwise(Layer):
    """One bottom, one top of its shape, ``y = f(x)`` element by element.

    Subclasses give ``function(x)`` and ``gradient(x, dy)`` (NumPy),
    ``kernel`` (the name prefix in activations.cu, whose entry points take
    ``(n, x, y, *forward_scalars)`` and ``(n, x, dy, dx,
    *backward_scalars)``; backward's default to forward's), and
    ``reads_input()``: whether backward needs ``x`` (then a copy is kept
    when in place).
    """

    exact_bottoms = 1
    exact_tops = 1
    kernel = None
    forward_scalars = ()
    backward_scalars = None
    allows_in_place = True

    def layer_setup(self, bottoms, tops):
        if tops[0] is bottoms[0] and not self.allows_in_place:
            raise self.definition_error(
                f"does not work in place (as in Caffe): give its top a name other than "
                f"its bottom '{self.bottom_name(0)}'")
        self.saved_bottom = None  # x, kept for backward when in place
        self.read_param()

    def read_param(self):
        """Read and check the layer's parameters."""

    def reads_input(self):
        return True

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        tops[0].reshape(shape)
        if tops[0] is bottoms[0] and self.reads_input():
            if self.saved_bottom is None or self.saved_bottom.shape != tuple(shape):
                self.saved_bottom = self.device.xp.empty(shape, dtype=self.dtype)
        else:
            self.saved_bottom = None

    def _input(self, bottoms):
        """x as backward must see it: the saved copy when one is kept."""
        return bottoms[0].data if self.saved_bottom is None else self.saved_bottom

    def _save_input(self, bottoms):
        if self.saved_bottom is not None:
            self.saved_bottom[...] = bottoms[0].data

    @staticmethod
    def _typed(values, dtype):
        return tuple(dtype.type(v) for v in values)

    def forward_cpu(self, bottoms, tops):
        self._save_input(bottoms)
        tops[0].data[...] = self.function(bottoms[0].data)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            bottoms[0].diff[...] = self.gradient(self._input(bottoms), tops[0].diff)

    def forward_gpu(self, bottoms, tops):
        self._save_input(bottoms)
        x = bottoms[0].data
        launch("activations.cu", f"{self.kernel}_forward", x.dtype, x.size,
               (np.int64(x.size), x, tops[0].data,
                *self._typed(self.forward_scalars, x.dtype)))

    def backward_gpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        dy = tops[0].diff
        scalars = self.forward_scalars if self.backward_scalars is None else self.backward_scalars
        launch("activations.cu", f"{self.kernel}_backward", dy.dtype, dy.size,
               (np.int64(dy.size), self._input(bottoms), dy, bottoms[0].diff,
                *self._typed(scalars, dy.dtype)))


@register("ELU")
class ELULayer(_Elementwise):
    """``y = x`` for ``x > 0``, else ``alpha * (exp(x) - 1)`` (computed with
    expm1); elu_param.alpha (1). Backward: ``dx = dy`` for ``x > 0``, else
    ``dy * alpha * exp(x)``, which is Caffe's ``dy * (alpha + y)`` computed
    from x (at ``x == 0`` the slope is alpha, as Caffe's)."""

    kernel = "elu"

    def read_param(self):
        self.alpha = float(self.param.elu_param.alpha)
        self.forward_scalars = (self.alpha,)

    def function(self, x):
        negative = np.minimum(x, x.dtype.type(0))
        return np.where(x > 0, x, x.dtype.type(self.alpha) * np.expm1(negative))

    def gradient(self, x, dy):
        negative = np.minimum(x, x.dtype.type(0))
        return dy * np.where(x > 0, x.dtype.type(1), x.dtype.type(self.alpha) * np.exp(negative))


@register("Swish")
class SwishLayer(_Elementwise):
    """``y = x * s``, ``s = sigmoid(beta * x)``; swish_param.beta (1)
    (field 8010 in this schema, see caffe.proto). The sigmoid is computed
    as ``0.5 * tanh(0.5 * beta * x) + 0.5``, which never overflows.

    Forward also stores the slope ``dy/dx = beta * y + s * (1 - beta * y)``
    (Caffe's backward expression; Caffe stores ``s`` instead and evaluates
    it in backward from its top), so backward is ``dx = dy * slope``,
    needs neither x nor y and works in place without a copy.
    """

    kernel = "swish"

    def read_param(self):
        self.beta = float(self.param.swish_param.beta)
        self.slope = None  # dy/dx, the bottom's shape, written by forward

    def reads_input(self):
        return False

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        shape = tuple(bottoms[0].shape)
        if self.slope is None or self.slope.shape != shape:
            self.slope = self.device.xp.empty(shape, dtype=self.dtype)

    def forward_cpu(self, bottoms, tops):
        x = bottoms[0].data
        half, beta = x.dtype.type(0.5), x.dtype.type(self.beta)
        s = half * np.tanh(half * (beta * x)) + half
        y = x * s
        by = beta * y
        self.slope[...] = by + s * (1 - by)
        tops[0].data[...] = y

    def forward_gpu(self, bottoms, tops):
        x = bottoms[0].data
        launch("activations.cu", "swish_forward", x.dtype, x.size,
               (np.int64(x.size), x, self.slope, tops[0].data, x.dtype.type(self.beta)))

    def backward_cpu(self, tops, propagate_down, bottoms):
        # The same array expression on either device.
        if propagate_down[0]:
            bottoms[0].diff[...] = tops[0].diff * self.slope

    backward_gpu = backward_cpu


@register("Clip")
class ClipLayer(_Elementwise):
    """``y = max(min, min(x, max))``; clip_param.min and .max, both
    required (Caffe declares them so), ``min <= max``. NaN stays NaN.
    Backward: ``dx = dy`` where ``min <= x <= max`` (ends included, as
    Caffe), else 0."""

    kernel = "clip"

    def read_param(self):
        p = self.param.clip_param
        missing = [f for f in ("min", "max") if not p.HasField(f)]
        if missing:
            raise self.definition_error(
                f"clip_param needs min and max; {' and '.join(missing)} not given")
        self.min, self.max = float(p.min), float(p.max)
        if not self.min <= self.max:
            raise self.definition_error(
                f"clip_param.min ({self.min:g}) must not exceed clip_param.max ({self.max:g})")
        self.forward_scalars = (self.min, self.max)

    def function(self, x):
        return np.maximum(x.dtype.type(self.min), np.minimum(x, x.dtype.type(self.max)))

    def gradient(self, x, dy):
        inside = (x >= x.dtype.type(self.min)) & (x <= x.dtype.type(self.max))
        return dy * inside


@register("Power")
class PowerLayer(_Elementwise):
    """``y = (shift + scale * x) ^ power``; power_param: power (1), scale
    (1), shift (0). Caffe's special cases: when ``power * scale == 0`` the
    output ignores x (1 for power 0, even 0^0, else shift^power) and the
    gradient is 0; power 1 is affine (``dx = scale * dy``); power 2 has the
    linear derivative ``2 * scale * (shift + scale * x)``. Otherwise
    ``dx = dy * power * scale * (shift + scale * x)^(power - 1)``, the value
    Caffe computes as ``power * scale * y / (shift + scale * x)`` except
    where that is 0/0 (a zero base), where Caffe gives NaN and this gives
    the derivative's value (0 for power > 1)."""

    kernel = "power"

    def read_param(self):
        p = self.param.power_param
        self.power, self.scale, self.shift = float(p.power), float(p.scale), float(p.shift)
        self.diff_scale = self.power * self.scale
        self.forward_scalars = (self.power, self.scale, self.shift)

    def reads_input(self):
        return self.diff_scale != 0 and self.power != 1

    def _constant(self):
        """The output when it ignores x: C's pow(shift, power), 1 for power 0."""
        with np.errstate(all="ignore"):
            return 1.0 if self.power == 0 else float(np.power(np.float64(self.shift), self.power))

    def _base(self, x):
        return x * x.dtype.type(self.scale) + x.dtype.type(self.shift)

    def function(self, x):
        if self.diff_scale == 0:
            return np.full(x.shape, self._constant(), dtype=x.dtype)
        base = self._base(x)
        return base if self.power == 1 else np.power(base, x.dtype.type(self.power))

    def gradient(self, x, dy):
        typed = dy.dtype.type
        if self.diff_scale == 0:
            return typed(0)
        if self.power == 1:
            return dy * typed(self.diff_scale)
        base = self._base(x)
        if self.power == 2:
            return dy * (typed(self.diff_scale) * base)
        return dy * (typed(self.diff_scale) * np.power(base, typed(self.power - 1)))

    def forward_gpu(self, bottoms, tops):
        if self.diff_scale == 0:
            tops[0].data.fill(self._constant())
            return
        super().forward_gpu(bottoms, tops)

    def backward_gpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        # Caffe's constant cases, the same array code as the CPU path's.
        if self.diff_scale == 0 or self.power == 1:
            bottoms[0].diff[...] = self.gradient(None, tops[0].diff)
            return
        super().backward_gpu(tops, propagate_down, bottoms)


def _log_base(layer, base):
    """ln(base) for Exp and Log: 1 for base -1 (e), else base must be > 0."""
    if base == -1:
        return 1.0
    if not base > 0 or math.isinf(base):
        raise layer.definition_error(
            f"base must be -1 (for e) or a finite number > 0, found {base:g}")
    return math.log(base)


@register("Exp")
class ExpLayer(_Elementwise):
    """``y = base ^ (shift + scale * x)``; exp_param: base (-1, meaning e),
    scale (1), shift (0). Computed as Caffe does:
    ``y = outer * exp(inner * x)`` with ``inner = ln(base) * scale`` and
    ``outer = base ^ shift``. Backward is Caffe's ``dx = dy * y * inner``
    with y computed again from x (the same expression, so the same value)
    rather than read from the top."""

    kernel = "exp"

    def read_param(self):
        p = self.param.exp_param
        base, scale, shift = float(p.base), float(p.scale), float(p.shift)
        self.inner = _log_base(self, base) * scale
        self.outer = 1.0 if shift == 0 else (math.exp(shift) if base == -1 else base ** shift)
        self.forward_scalars = (self.inner, self.outer)

    def function(self, x):
        typed = x.dtype.type
        return typed(self.outer) * np.exp(typed(self.inner) * x)

    def gradient(self, x, dy):
        return dy * self.function(x) * x.dtype.type(self.inner)


@register("Log")
class LogLayer(_Elementwise):
    """``y = log_base(shift + scale * x)``; log_param: base (-1, meaning e;
    else > 0 and not 1), scale (1), shift (0). Backward:
    ``dx = dy * scale / ln(base) / (shift + scale * x)``."""

    kernel = "log"

    def read_param(self):
        p = self.param.log_param
        log_base = _log_base(self, float(p.base))
        if log_base == 0:
            raise self.definition_error("log_param.base must not be 1 (log base 1 is undefined)")
        self.scale, self.shift = float(p.scale), float(p.shift)
        self.base_scale = 1.0 / log_base
        self.backward_scale = self.scale / log_base
        self.forward_scalars = (self.scale, self.shift, self.base_scale)
        self.backward_scalars = (self.scale, self.shift, self.backward_scale)

    def _base(self, x):
        return x * x.dtype.type(self.scale) + x.dtype.type(self.shift)

    def function(self, x):
        return np.log(self._base(x)) * x.dtype.type(self.base_scale)

    def gradient(self, x, dy):
        return dy * (dy.dtype.type(self.backward_scale) / self._base(x))


@register("AbsVal")
class AbsValLayer(_Elementwise):
    """``y = |x|``; ``dx = dy * sign(x)`` with sign(0) = 0. Not in place
    (Caffe refuses it too: backward needs the sign of x)."""

    kernel = "absval"
    allows_in_place = False

    def function(self, x):
        return np.abs(x)

    def gradient(self, x, dy):
        return dy * np.sign(x)


# Caffe's kBNLL_THRESHOLD: backward evaluates exp(min(x, 50)).
BNLL_THRESHOLD = 50.0


@register("BNLL")
class BNLLLayer(_Elementwise):
    """The binomial normal log likelihood ``y = log(1 + exp(x))``, in
    Caffe's form that never overflows: ``x + log(1 + exp(-x))`` for
    ``x > 0``, else ``log(1 + exp(x))`` (with log1p, so tiny values keep
    their precision where Caffe's log(1 + ...) rounds them to 0). Backward
    (Caffe's): ``e = exp(min(x, 50))``, ``dx = dy * e / (e + 1)``."""

    kernel = "bnll"

    def function(self, x):
        # x + log1p(exp(-x)) for x > 0, log1p(exp(x)) (+ 0) otherwise.
        return np.maximum(x, x.dtype.type(0)) + np.log1p(np.exp(-np.abs(x)))

    def gradient(self, x, dy):
        e = np.exp(np.minimum(x, x.dtype.type(BNLL_THRESHOLD)))
        return dy * e / (e + 1)


@register("Threshold")
class ThresholdLayer(NoGradientLayer):
    """``y = 1`` where ``x > threshold``, else 0; threshold_param.threshold
    (0). bottom: any shape; top: the same shape; works in place.

    No gradient: Caffe defines no backward for this layer (it aborts if
    asked). The output is piecewise constant, so, as for the other
    non-differentiable layers (Accuracy, ArgMax), the bottom allows no
    forced backward, and a Net that runs backward through it anyway gets
    zeros for the bottom diff, the derivative everywhere but at the step.
    """

    exact_bottoms = 1
    exact_tops = 1

    def layer_setup(self, bottoms, tops):
        self.threshold = float(self.param.threshold_param.threshold)

    def reshape(self, bottoms, tops):
        tops[0].reshape(bottoms[0].shape)

    def forward_cpu(self, bottoms, tops):
        x = bottoms[0].data
        tops[0].data[...] = x > x.dtype.type(self.threshold)

    def forward_gpu(self, bottoms, tops):
        x = bottoms[0].data
        launch("activations.cu", "threshold_forward", x.dtype, x.size,
               (np.int64(x.size), x, tops[0].data, x.dtype.type(self.threshold)))
