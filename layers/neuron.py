"""Element-wise activation layers: ReLU, Sigmoid, TanH; the ReLU backward
rules of the visualization modes (``RELU_MODES``)."""
import numpy as np

from layers.base import Layer, register
from layers.kernels import launch
from netdef.device import array_module

# How a ReLU's backward treats the gradient, chosen per backward call by the
# Net (``Net.backward(relu_mode=...)``): "normal" is Caffe's rule; the two
# others are visualization rules (Springenberg et al.'s guided backprop,
# Zeiler and Fergus's deconvnet) that only ever pass positive gradients
# (a negative_slope plays no part in them).
RELU_MODES = ("normal", "guided", "deconvnet")


def relu_mode_backward(x, dy, dx, mode):
    """The ReLU backward of a visualization mode, written once for NumPy and
    CuPy: "guided" ``dx = dy * (x > 0) * (dy > 0)``, "deconvnet"
    ``dx = dy * (dy > 0)`` whatever ``x``. ``x`` may be the ReLU's input or
    its output (the same sign for a slope >= 0, so in-place ReLUs and fused
    steps pass the output); all three arrays have one shape; ``dx`` may be
    ``dy``."""
    if mode not in RELU_MODES[1:]:
        raise ValueError(f"relu_mode_backward: mode must be one of {RELU_MODES[1:]}, "
                         f"found {mode!r}")
    passed = dy > 0
    if mode == "guided":
        passed &= x > 0
    array_module(dy).multiply(dy, passed, out=dx)


@register("ReLU")
class ReLULayer(Layer):
    """y = x if x > 0 else negative_slope * x; works in place.

    bottom: any shape; top: the same shape.
    """

    exact_bottoms = 1
    exact_tops = 1

    def layer_setup(self, bottoms, tops):
        self.negative_slope = float(self.param.relu_param.negative_slope)

    def reshape(self, bottoms, tops):
        tops[0].reshape(bottoms[0].shape)

    def forward_cpu(self, bottoms, tops):
        x = bottoms[0].data
        # np.where builds the result before it is stored, so this is also
        # right in place (top and bottom one Blob).
        tops[0].data[...] = np.where(x > 0, x, x * self.negative_slope)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        # In place, bottom data already holds y; y > 0 exactly where x > 0 for
        # slope >= 0, which is Caffe's in-place contract as well.
        x = bottoms[0].data
        bottoms[0].diff[...] = np.where(x > 0, tops[0].diff, tops[0].diff * self.negative_slope)

    def forward_gpu(self, bottoms, tops):
        x = bottoms[0].data
        launch("neuron.cu", "relu_forward", x.dtype, x.size,
               (np.int64(x.size), x, tops[0].data, x.dtype.type(self.negative_slope)))

    def backward_gpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        x = bottoms[0].data
        launch("neuron.cu", "relu_backward", x.dtype, x.size,
               (np.int64(x.size), x, tops[0].diff, bottoms[0].diff,
                x.dtype.type(self.negative_slope)))

    def backward_in_mode(self, tops, propagate_down, bottoms, mode):
        """``backward`` under a ``RELU_MODES`` rule: "normal" is Caffe's
        (``backward`` itself), the others ``relu_mode_backward``."""
        if mode == "normal":
            self.backward(tops, propagate_down, bottoms)
        elif propagate_down[0]:
            relu_mode_backward(bottoms[0].data, tops[0].diff, bottoms[0].diff, mode)


class _TopDerivedActivation(Layer):
    """An activation whose derivative is a function of its output ``y``, so
    backward reads the top's data and works in place (as in Caffe).

    bottom: any shape; top: the same shape. Subclasses give the NumPy
    forward and derivative and the kernel names in neuron.cu.
    """

    exact_bottoms = 1
    exact_tops = 1
    kernel = None  # "<name>": kernels <name>_forward / <name>_backward

    def reshape(self, bottoms, tops):
        tops[0].reshape(bottoms[0].shape)

    def forward_cpu(self, bottoms, tops):
        tops[0].data[...] = self.function(bottoms[0].data)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            bottoms[0].diff[...] = tops[0].diff * self.derivative(tops[0].data)

    def forward_gpu(self, bottoms, tops):
        x = bottoms[0].data
        launch("neuron.cu", f"{self.kernel}_forward", x.dtype, x.size,
               (np.int64(x.size), x, tops[0].data))

    def backward_gpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        y = tops[0].data
        launch("neuron.cu", f"{self.kernel}_backward", y.dtype, y.size,
               (np.int64(y.size), y, tops[0].diff, bottoms[0].diff))


@register("Sigmoid")
class SigmoidLayer(_TopDerivedActivation):
    """y = 1 / (1 + exp(-x)), computed as 0.5 * tanh(0.5 * x) + 0.5, which
    never overflows; dy/dx = y * (1 - y)."""

    kernel = "sigmoid"

    @staticmethod
    def function(x):
        return 0.5 * np.tanh(0.5 * x) + 0.5

    @staticmethod
    def derivative(y):
        return y * (1 - y)


@register("TanH")
class TanHLayer(_TopDerivedActivation):
    """y = tanh(x); dy/dx = 1 - y^2."""

    kernel = "tanh"

    @staticmethod
    def function(x):
        return np.tanh(x)

    @staticmethod
    def derivative(y):
        return 1 - y * y
