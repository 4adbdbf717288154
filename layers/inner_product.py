"""InnerProduct (Caffe's fully connected layer).

bottom (d0, ..., d(axis-1), d(axis), ..., dn) is read as a matrix (M, K)
with M = d0 * ... * d(axis-1) and K = d(axis) * ... * dn; top is
(d0, ..., d(axis-1), num_output). Parameters: weight (num_output, K), or
(K, num_output) with ``transpose: true``, and with ``bias_term`` a bias
(num_output,).

The whole layer is three GEMMs, the same on both devices, so it is written
once with ``xp`` (numpy: OpenBLAS, cupy: cuBLAS).
"""
from layers.base import Layer, register
from netdef.device import array_module
from netdef.errors import ShapeError
from netdef.fillers import fill


@register("InnerProduct")
class InnerProductLayer(Layer):
    """y = x W^T + b (x W + b when ``transpose``), x flattened from ``axis``.

    inner_product_param: num_output, bias_term (true), weight_filler,
    bias_filler, axis (1; negative counts from the end), transpose (false).
    """

    exact_bottoms = 1
    exact_tops = 1

    def layer_setup(self, bottoms, tops):
        p = self.param.inner_product_param
        self.num_output = int(p.num_output)
        if self.num_output < 1:
            raise self.definition_error(f"inner_product_param.num_output must be >= 1, found {self.num_output}")
        self.bias_term = bool(p.bias_term)
        self.transpose = bool(p.transpose)
        _, k = self._matrix_shape(bottoms[0].shape)
        shape = (k, self.num_output) if self.transpose else (self.num_output, k)
        weight = self.new_param_blob(shape)
        weight.data[...] = self.device.xp.asarray(fill(p.weight_filler, shape, self.rng(0)))
        self.blobs = [weight]
        if self.bias_term:
            bias = self.new_param_blob((self.num_output,))
            bias.data[...] = self.device.xp.asarray(fill(p.bias_filler, bias.shape, self.rng(1)))
            self.blobs.append(bias)

    def _axis(self, shape):
        axis = self.param.inner_product_param.axis
        canonical = axis + len(shape) if axis < 0 else axis
        if not 0 <= canonical < len(shape):
            raise self.shape_error(
                0, f"at least {axis + 1 if axis >= 0 else -axis} axes for inner_product_param.axis {axis}",
                shape)
        return canonical

    def _matrix_shape(self, shape):
        """(M, K) of a bottom of ``shape``."""
        axis = self._axis(shape)
        m, k = 1, 1
        for d in shape[:axis]:
            m *= d
        for d in shape[axis:]:
            k *= d
        return m, k

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        _, k = self._matrix_shape(shape)
        expected = self.blobs[0].shape[0 if self.transpose else 1]
        if k != expected:
            raise ShapeError(
                f"{self.where}: bottom '{self.bottom_name(0)}' expected K = {expected} (its dims "
                f"from axis {self._axis(shape)} on, flattened, as the weights {self.blobs[0].shape} "
                f"require), found K = {k} (shape {tuple(shape)})")
        tops[0].reshape(shape[:self._axis(shape)] + (self.num_output,))

    def _weight_nk(self):
        """The weight as an (N, K) matrix (a transposed view when stored (K, N))."""
        weight = self.blobs[0].data
        return weight.T if self.transpose else weight

    def forward_cpu(self, bottoms, tops):
        m, k = self._matrix_shape(bottoms[0].shape)
        xp = array_module(bottoms[0].data)
        out = tops[0].data.reshape(m, self.num_output)
        xp.matmul(bottoms[0].data.reshape(m, k), self._weight_nk().T, out=out)
        if self.bias_term:
            out += self.blobs[1].data

    def backward_cpu(self, tops, propagate_down, bottoms):
        m, k = self._matrix_shape(bottoms[0].shape)
        xp = array_module(bottoms[0].data)
        diff = tops[0].diff.reshape(m, self.num_output)
        x = bottoms[0].data.reshape(m, k)
        if self.transpose:
            self.blobs[0].diff += xp.matmul(x.T, diff)      # (K, N)
        else:
            self.blobs[0].diff += xp.matmul(diff.T, x)      # (N, K)
        if self.bias_term:
            self.blobs[1].diff += diff.sum(axis=0)
        if propagate_down[0]:
            xp.matmul(diff, self._weight_nk(), out=bottoms[0].diff.reshape(m, k))

    # The same GEMMs through cuBLAS.
    forward_gpu = forward_cpu
    backward_gpu = backward_cpu
