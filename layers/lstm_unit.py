"""LSTMUnit (Caffe's): one step of an LSTM cell, and the cell math that the
LSTM layer (layers/recurrent.py) runs at each of its time steps.

The cell, per stream n and unit d, with the 4D gate pre-activations of
stream n laid out as ``[i' | f' | o' | g']``::

    i = sigmoid(i'), f = sigmoid(f'), o = sigmoid(o'), g = tanh(g')
    c = cont_n * f * c_prev + i * g
    h = o * tanh(c)

``cont_n`` is 0 where a new sequence starts: the previous cell is then
forgotten. The cell comes as two pairs of functions with one signature, a
vectorized NumPy pair and a pair launching layers/cuda/recurrent.cu.
"""
import numpy as np

from layers.base import Layer, register
from layers.kernels import launch
from layers.softmax import work_buffer
from netdef.device import array_module


def _sigmoid(xp, v):
    # Equal to 1 / (1 + exp(-v)) and never overflows.
    return 0.5 * xp.tanh(0.5 * v) + 0.5


def cell_forward_numpy(c_prev, gates, cont, acts, c, h):
    """c_prev, c, h: (N, D); gates (pre-activations), acts (gate values,
    written for backward): (N, 4D); cont: (N,). Writes acts, c and h."""
    xp = array_module(gates)
    n, dim = c_prev.shape
    pre = gates.reshape(n, 4, dim)
    out = acts.reshape(n, 4, dim)
    out[:, :3] = _sigmoid(xp, pre[:, :3])
    out[:, 3] = xp.tanh(pre[:, 3])
    i, f, o, g = out[:, 0], out[:, 1], out[:, 2], out[:, 3]
    c[...] = cont[:, None] * f * c_prev + i * g
    h[...] = o * xp.tanh(c)


def cell_backward_numpy(c_prev, acts, cont, c, dc, dh, dc_prev, dgates):
    """Given the diffs dc, dh (N, D) of the cell's outputs, write dc_prev
    (N, D) and dgates (N, 4D), the diff of the pre-activations."""
    xp = array_module(acts)
    n, dim = c_prev.shape
    gate = acts.reshape(n, 4, dim)
    i, f, o, g = gate[:, 0], gate[:, 1], gate[:, 2], gate[:, 3]
    tanh_c = xp.tanh(c)
    # Everything that reaches c: its own diff and the path through h.
    dcell = dc + dh * o * (1 - tanh_c * tanh_c)
    kept = cont[:, None] * dcell
    dc_prev[...] = kept * f
    out = dgates.reshape(n, 4, dim)
    out[:, 0] = dcell * g * i * (1 - i)
    out[:, 1] = kept * c_prev * f * (1 - f)
    out[:, 2] = dh * tanh_c * o * (1 - o)
    out[:, 3] = dcell * i * (1 - g * g)


def cell_forward_kernel(c_prev, gates, cont, acts, c, h):
    """``cell_forward_numpy`` as the CUDA kernel (all arrays C-contiguous)."""
    n, dim = c_prev.shape
    launch("recurrent.cu", "lstm_cell_forward", c.dtype, c.size,
           (np.int64(c.size), np.int32(dim), c_prev, gates, cont, acts, c, h))


def cell_backward_kernel(c_prev, acts, cont, c, dc, dh, dc_prev, dgates):
    """``cell_backward_numpy`` as the CUDA kernel (all arrays C-contiguous)."""
    n, dim = c_prev.shape
    launch("recurrent.cu", "lstm_cell_backward", c.dtype, c.size,
           (np.int64(c.size), np.int32(dim), c_prev, acts, cont, c, dc, dh, dc_prev, dgates))


@register("LSTMUnit")
class LSTMUnitLayer(Layer):
    """One LSTM cell step, as Caffe's LSTMUnit.

    bottoms: c_prev (1, N, D), gate pre-activations x (1, N, 4D) in the
    order i, f, o, g, cont (1, N). tops: c (1, N, D), h (1, N, D).
    No parameters. Backward gives c_prev and x their gradients; cont takes
    none (asking for one is an error, as in Caffe).
    """

    exact_bottoms = 3
    exact_tops = 2

    def layer_setup(self, bottoms, tops):
        # Gate values from forward, read by backward; sized in reshape.
        self.acts = None

    def allow_force_backward(self, bottom_index):
        return bottom_index < 2

    def reshape(self, bottoms, tops):
        c_prev, x, cont = (b.shape for b in bottoms)
        if len(c_prev) != 3 or c_prev[0] != 1:
            raise self.shape_error(0, "(1, N, D): one time step of N streams of D units", c_prev)
        _, n, dim = c_prev
        if tuple(x) != (1, n, 4 * dim):
            raise self.shape_error(
                1, f"(1, N, 4D) = (1, {n}, {4 * dim}): the i, f, o, g pre-activations of "
                f"the {dim} units of '{self.bottom_name(0)}' {tuple(c_prev)}", x)
        if tuple(cont) != (1, n):
            raise self.shape_error(
                2, f"(1, N) = (1, {n}), one flag per stream of '{self.bottom_name(0)}'", cont)
        tops[0].reshape(c_prev)
        tops[1].reshape(c_prev)
        self.acts = work_buffer(self.acts, array_module(bottoms[1].data), (n, 4 * dim),
                                bottoms[1].data.dtype)

    @staticmethod
    def _matrices(bottoms, tops):
        """The blobs' data as (N, D), (N, 4D), (N,), (N, D), (N, D) views;
        cont cast to the data's dtype (the kernels read it as ``real``)."""
        xp = array_module(bottoms[1].data)
        c_prev, x = bottoms[0].data[0], bottoms[1].data[0]
        cont = xp.ascontiguousarray(bottoms[2].data[0], dtype=x.dtype)
        return c_prev, x, cont, tops[0].data[0], tops[1].data[0]

    def _forward(self, bottoms, tops, cell_forward):
        c_prev, x, cont, c, h = self._matrices(bottoms, tops)
        cell_forward(c_prev, x, cont, self.acts, c, h)

    def _backward(self, tops, propagate_down, bottoms, cell_backward):
        if propagate_down[2]:
            raise self.definition_error(
                f"cannot back-propagate to the sequence indicators '{self.bottom_name(2)}'; "
                "set propagate_down: false for it")
        if not (propagate_down[0] or propagate_down[1]):
            return
        c_prev, x, cont, c, _ = self._matrices(bottoms, tops)
        # A bottom whose diff is not wanted gets scratch written instead.
        dc_prev = bottoms[0].diff[0] if propagate_down[0] else \
            self.workspace.array("lstm_unit_dc_prev", c_prev.shape, c.dtype)
        dx = bottoms[1].diff[0] if propagate_down[1] else \
            self.workspace.array("lstm_unit_dx", x.shape, c.dtype)
        cell_backward(c_prev, self.acts, cont, c, tops[0].diff[0], tops[1].diff[0], dc_prev, dx)

    def forward_cpu(self, bottoms, tops):
        self._forward(bottoms, tops, cell_forward_numpy)

    def backward_cpu(self, tops, propagate_down, bottoms):
        self._backward(tops, propagate_down, bottoms, cell_backward_numpy)

    def forward_gpu(self, bottoms, tops):
        self._forward(bottoms, tops, cell_forward_kernel)

    def backward_gpu(self, tops, propagate_down, bottoms):
        self._backward(tops, propagate_down, bottoms, cell_backward_kernel)
