"""Embed: a lookup table of learned rows, indexed by the bottom's values."""
import numpy as np

from layers.base import Layer, register
from layers.indexing import checked_rows, refuse_index_gradient
from layers.kernels import launch
from netdef.fillers import fill


@register("Embed")
class EmbedLayer(Layer):
    """Caffe's Embed: ``top[..., :] = weight[index] + bias``.

    embed_param: num_output N (>= 1), input_dim K (>= 1), bias_term
    (true), weight_filler, bias_filler. Parameters: weight ``(K, N)`` (row
    k is the vector of index k; the transpose of InnerProduct's layout) and
    bias ``(N,)``. bottom: any shape, integer indices in ``[0, K)`` stored as
    floats (checked in forward); top: the bottom's shape plus ``(N,)``.
    Gradients go to the parameters only; asking for one to the indices is
    an error.
    """

    exact_bottoms = 1
    exact_tops = 1

    def layer_setup(self, bottoms, tops):
        p = self.param.embed_param
        self.num_output, self.input_dim = int(p.num_output), int(p.input_dim)
        for field, value in (("num_output", self.num_output), ("input_dim", self.input_dim)):
            if value < 1:
                raise self.definition_error(f"embed_param.{field} must be >= 1, found {value}")
        shape = (self.input_dim, self.num_output)
        weight = self.new_param_blob(shape)
        weight.data[...] = self.device.xp.asarray(fill(p.weight_filler, shape, self.rng(0)))
        self.blobs = [weight]
        self.bias_term = bool(p.bias_term)
        if self.bias_term:
            bias = self.new_param_blob((self.num_output,))
            bias.data[...] = self.device.xp.asarray(fill(p.bias_filler, bias.shape, self.rng(1)))
            self.blobs.append(bias)

    def allow_force_backward(self, bottom_index):
        return False

    def reshape(self, bottoms, tops):
        tops[0].reshape(bottoms[0].shape + (self.num_output,))

    def forward_cpu(self, bottoms, tops):
        rows = checked_rows(self, 0, bottoms[0].data, self.input_dim, integral=True).reshape(-1)
        top = tops[0].data.reshape(-1, self.num_output)
        top[...] = self.blobs[0].data[rows]
        if self.bias_term:
            top += self.blobs[1].data

    forward_gpu = forward_cpu

    def backward_cpu(self, tops, propagate_down, bottoms):
        refuse_index_gradient(self, propagate_down, 0, "indices")
        if self.param_needs_gradient(0):
            rows = bottoms[0].data.reshape(-1).astype(np.int64)
            np.add.at(self.blobs[0].diff, rows, tops[0].diff.reshape(-1, self.num_output))
        self._bias_backward(tops)

    def backward_gpu(self, tops, propagate_down, bottoms):
        refuse_index_gradient(self, propagate_down, 0, "indices")
        if self.param_needs_gradient(0):
            dy = tops[0].diff
            launch("tensor_ops.cu", "scatter_add_rows", dy.dtype, dy.size,
                   (np.int64(dy.size), bottoms[0].data, dy, self.blobs[0].diff,
                    np.int64(self.num_output)))
        self._bias_backward(tops)

    def _bias_backward(self, tops):
        if self.bias_term and self.param_needs_gradient(1):
            self.blobs[1].diff += tops[0].diff.reshape(-1, self.num_output).sum(axis=0)
