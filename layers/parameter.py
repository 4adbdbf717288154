"""Parameter: a learned blob offered to the net as a top."""
from layers.base import Layer, register


@register("Parameter")
class ParameterLayer(Layer):
    """Caffe's Parameter.

    parameter_param.shape: the shape of the one parameter blob, which starts
    at zero (Caffe fills it with nothing; weights come from a
    ``.caffemodel`` or training). No bottoms; the top has the blob's shape
    and its values. Backward adds the top's diff into the blob's diff.

    Caffe's top shares the blob's data and diff; here the top holds a copy
    of the data, made in forward, and backward adds the diff over, so the
    Net's handling of top diffs never touches the parameter's gradient.
    """

    exact_bottoms = 0
    exact_tops = 1

    def layer_setup(self, bottoms, tops):
        shape = tuple(int(d) for d in self.param.parameter_param.shape.dim)
        if any(d < 0 for d in shape):
            raise self.definition_error(
                f"parameter_param.shape dims must be >= 0, found {list(shape)}")
        self.blobs = [self.new_param_blob(shape)]

    def reshape(self, bottoms, tops):
        tops[0].reshape(self.blobs[0].shape)

    def forward_cpu(self, bottoms, tops):
        tops[0].data[...] = self.blobs[0].data

    def backward_cpu(self, tops, propagate_down, bottoms):
        if self.param_needs_gradient(0):
            self.blobs[0].diff += tops[0].diff

    forward_gpu = forward_cpu
    backward_gpu = backward_cpu
