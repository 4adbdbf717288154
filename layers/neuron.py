"""Element-wise activation layers: ReLU."""
import numpy as np

from layers.base import Layer, register
from layers.kernels import launch


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
        # In place, the top and bottom share data, so compute from a copy of x.
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
