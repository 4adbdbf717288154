"""Caffe's recurrent layers RNN and LSTM, computed step by step.

Caffe builds each as an unrolled Net of InnerProduct, Scale, Eltwise, TanH
and LSTMUnit layers. A layer here may not build a Net, so the recurrence is
written directly: one loop over the T time steps (each needs the previous
one), matmuls with ``xp`` that both devices share, and for LSTM the cell of
layers/lstm_unit.py (NumPy on the CPU, the recurrent.cu kernel on the GPU).
The parameter blobs are those of the unrolled net, in its order and shapes,
so a ``.caffemodel`` trained in Caffe loads into them.

bottoms: x (T, N, ...), cont (T, N), optionally x_static (N, ...), and
with ``expose_hidden`` the initial state(s) (1, N, num_output): h_0 (and
c_0 for LSTM). tops: the output (T, N, num_output), then with
``expose_hidden`` the final state(s) h_T (and c_T), (1, N, num_output).
``cont[t, n]`` multiplies the state stream n carries into step t: 0 starts
a new sequence there.

Without ``expose_hidden`` the final state of one forward pass is the
initial state of the next (zero at first, as in Caffe), taken as a constant:
no gradient flows from one batch into the previous one. With it, h_0 (c_0)
receive their gradients and the diffs of h_T (c_T) flow back through the
steps; BVLC Caffe shares only the data of those blobs with its unrolled
net, so there they give and take no gradient. Unlike Caffe, T may change
from one reshape to the next (Caffe's unrolled net is built for one T).
"""
import numpy as np

from layers.base import Layer, register
from layers.lstm_unit import (cell_backward_kernel, cell_backward_numpy, cell_forward_kernel,
                              cell_forward_numpy)
from layers.softmax import work_buffer
from netdef.device import array_module
from netdef.errors import ShapeError
from netdef.fillers import fill


def _flat_size(dims):
    return int(np.prod(dims, dtype=np.int64)) if len(dims) else 1


class _RecurrentLayer(Layer):
    """What RNN and LSTM share: parameters, shapes, the input transform
    ``x W_x^T + b (+ x_static W_static^T)`` and the carried state.

    Subclasses give ``states`` (the names of the initial states), ``gates``
    (rows of W_x per output unit: 1 for RNN, 4 for LSTM), and
    ``recurrent_params()``, the (filler field, shape) of each parameter
    after W_x, b and W_static.
    """

    min_bottoms = 2
    min_tops = 1
    states = ()
    gates = 1

    # -- setup --------------------------------------------------------------------
    def layer_setup(self, bottoms, tops):
        p = self.param.recurrent_param
        self.num_output = int(p.num_output)
        if self.num_output < 1:
            raise self.definition_error(
                f"recurrent_param.num_output must be >= 1, found {self.num_output}")
        # recurrent_param.debug_info makes Caffe log its unrolled net; there
        # is none here, so it has no effect.
        self.expose_hidden = bool(p.expose_hidden)
        self._read_layout(len(bottoms), len(tops))
        self.blobs = []
        self._add_param(p.weight_filler, (self.gates * self.num_output,
                                          self._input_size(bottoms[0].shape)))
        self._add_param(p.bias_filler, (self.gates * self.num_output,))
        if self.static:
            if len(bottoms[2].shape) < 2:
                raise self.shape_error(2, "(N, ...) with at least 2 axes", bottoms[2].shape)
            self._add_param(p.weight_filler, (self.gates * self.num_output,
                                              _flat_size(bottoms[2].shape[1:])))
        self.first_recurrent_param = len(self.blobs)
        for filler_name, shape in self.recurrent_params():
            self._add_param(getattr(p, filler_name), shape)
        # Work arrays, sized in reshape; the carried state lives across passes.
        self.hidden = self.carry = None

    def _read_layout(self, num_bottoms, num_tops):
        """Whether x_static is given, from the bottom count (as Caffe); the
        top count must match expose_hidden."""
        exposed = len(self.states) if self.expose_hidden else 0
        names = ", ".join(self.states)
        if num_bottoms not in (2 + exposed, 3 + exposed):
            given = f" and {names}" if exposed else ""
            raise self.definition_error(
                f"takes {2 + exposed} bottoms (x, cont{given}) or {3 + exposed} (x, cont, "
                f"x_static{given}) with expose_hidden {str(self.expose_hidden).lower()}, "
                f"found {num_bottoms}")
        if num_tops != 1 + exposed:
            finals = ", ".join(s[:-1] + "T" for s in self.states)
            expected = f"1 + {exposed} (the output, {finals})" if exposed else "1"
            raise self.definition_error(
                f"takes {expected} tops with expose_hidden {str(self.expose_hidden).lower()}, "
                f"found {num_tops}")
        self.static = num_bottoms == 3 + exposed
        self.first_state_bottom = 2 + self.static

    def _add_param(self, filler, shape):
        blob = self.new_param_blob(shape)
        blob.data[...] = self.device.xp.asarray(fill(filler, shape, self.rng(len(self.blobs))))
        self.blobs.append(blob)

    def _input_size(self, x_shape):
        if len(x_shape) < 3:
            raise self.shape_error(
                0, "(T, N, ...) with at least 3 axes: time steps, streams, then the input", x_shape)
        return _flat_size(x_shape[2:])

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    # -- shapes -------------------------------------------------------------------
    def reshape(self, bottoms, tops):
        x = tuple(bottoms[0].shape)
        self._check_input_size(0, self._input_size(x), self.blobs[0], "from axis 2 on", x)
        steps, n = x[:2]
        if tuple(bottoms[1].shape) != (steps, n):
            raise self.shape_error(
                1, f"(T, N) = ({steps}, {n}), the first two axes of '{self.bottom_name(0)}' {x}",
                bottoms[1].shape)
        if self.static:
            self._check_static(bottoms[2].shape, n)
        state_shape = (1, n, self.num_output)
        if self.expose_hidden:
            for k, name in enumerate(self.states):
                b = self.first_state_bottom + k
                if tuple(bottoms[b].shape) != state_shape:
                    raise self.shape_error(
                        b, f"{name} of shape (1, N, num_output) = {state_shape}", bottoms[b].shape)
        tops[0].reshape((steps, n, self.num_output))
        for top in tops[1:]:
            top.reshape(state_shape)
        xp, dtype = array_module(bottoms[0].data), self.dtype
        self.hidden = work_buffer(self.hidden, xp, (steps + 1, n, self.num_output), dtype)
        if self.carry is None or self.carry[0].shape != (n, self.num_output):
            self.carry = [xp.zeros((n, self.num_output), dtype) for _ in self.states]
        self.reshape_buffers(xp, steps, n)

    def _check_input_size(self, index, size, weight, where, shape):
        if size != weight.shape[1]:
            raise ShapeError(
                f"{self.where}: bottom '{self.bottom_name(index)}' expected {weight.shape[1]} "
                f"input values per stream (its dims {where}, flattened, as the weights "
                f"{weight.shape} require), found {size} (shape {tuple(shape)})")

    def _check_static(self, shape, n):
        shape = tuple(shape)
        if len(shape) < 2 or shape[0] != n:
            raise self.shape_error(
                2, f"(N, ...) with N = {n} streams and at least 2 axes", shape)
        self._check_input_size(2, _flat_size(shape[1:]), self.blobs[2], "from axis 1 on", shape)

    def reset(self):
        """Zero the carried state (Caffe's RecurrentLayer::Reset)."""
        for state in self.carry or ():
            state.fill(0)

    # -- pieces of forward and backward -------------------------------------------
    @staticmethod
    def _cont(bottoms):
        """cont as a contiguous (T, N) array of the data's dtype."""
        data = bottoms[0].data
        return array_module(data).ascontiguousarray(bottoms[1].data, dtype=data.dtype)

    def _initial_states(self, bottoms):
        """The state(s) entering step 0, each (N, num_output)."""
        if self.expose_hidden:
            return [bottoms[self.first_state_bottom + k].data[0] for k in range(len(self.states))]
        return self.carry

    def _final_states(self, tops, finals):
        """Hand the state(s) leaving the last step on: to the exposed tops,
        or to the next forward pass."""
        for k, final in enumerate(finals):
            if self.expose_hidden:
                tops[1 + k].data[0] = final
            else:
                self.carry[k][...] = final

    def _input_transform(self, bottoms):
        """``x W_x^T + b (+ x_static W_static^T)``: (T, N, gates * num_output),
        workspace scratch."""
        x = bottoms[0].data
        steps, n = x.shape[:2]
        xp, width = array_module(x), self.gates * self.num_output
        pre = self.workspace.array("recurrent_pre", (steps, n, width), x.dtype)
        xp.matmul(x.reshape(steps * n, -1), self.blobs[0].data.T, out=pre.reshape(steps * n, width))
        pre += self.blobs[1].data
        if self.static:
            pre += xp.matmul(bottoms[2].data.reshape(n, -1), self.blobs[2].data.T)
        return pre

    def _input_backward(self, bottoms, propagate_down, dpre):
        """Gradients of ``_input_transform`` given ``dpre`` (T, N, width)."""
        x = bottoms[0].data
        steps, n, width = dpre.shape
        xp = array_module(x)
        flat, x_flat = dpre.reshape(steps * n, width), x.reshape(steps * n, -1)
        if self.param_needs_gradient(0):
            self.blobs[0].diff += xp.matmul(flat.T, x_flat)
        if self.param_needs_gradient(1):
            self.blobs[1].diff += flat.sum(axis=0)
        if propagate_down[0]:
            xp.matmul(flat, self.blobs[0].data, out=bottoms[0].diff.reshape(x_flat.shape))
        if propagate_down[1]:
            bottoms[1].diff.fill(0)  # the sequence indicators take no gradient
        if self.static:
            # x_static enters every step alike: its gradient sums over time.
            summed, static = dpre.sum(axis=0), bottoms[2].data.reshape(n, -1)
            if self.param_needs_gradient(2):
                self.blobs[2].diff += xp.matmul(summed.T, static)
            if propagate_down[2]:
                xp.matmul(summed, self.blobs[2].data, out=bottoms[2].diff.reshape(static.shape))

    def _conted_hidden(self, cont):
        """``cont_t * h_{t-1}`` for every step: (T * N, num_output)."""
        conted = cont[:, :, None] * self.hidden[:-1]
        return conted.reshape(-1, self.num_output)

    def _initial_state_diffs(self, propagate_down, bottoms, diffs):
        """Give the exposed initial states the gradient that reached them."""
        if not self.expose_hidden:
            return
        for k, diff in enumerate(diffs):
            b = self.first_state_bottom + k
            if propagate_down[b]:
                bottoms[b].diff[0] = diff

    def _final_state_diff(self, tops, k, name):
        """The diff arriving at final state k: from its top, or zero (nothing
        flows back from the next batch). Workspace scratch (N, num_output)."""
        n = tops[0].shape[1]
        out = self.workspace.array(name, (n, self.num_output), tops[0].diff.dtype)
        if self.expose_hidden:
            out[...] = tops[1 + k].diff[0]
        else:
            out.fill(0)
        return out


@register("RNN")
class RNNLayer(_RecurrentLayer):
    """Caffe's RNN: ``h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h
    [+ W_xh_static x_static])``, output ``o_t = tanh(W_ho h_t + b_o)``.

    recurrent_param: num_output, weight_filler (the four weights),
    bias_filler (b_h, b_o), expose_hidden, debug_info (no effect: there is
    no unrolled net to log). Parameters, in Caffe's order: W_xh (H, input),
    b_h (H,), [W_xh_static (H, static input)], W_hh (H, H), W_ho (H, H),
    b_o (H,). tops: o (T, N, H), [h_T (1, N, H)].
    """

    max_bottoms = 4
    max_tops = 2
    states = ("h_0",)
    output = None  # o, sized in reshape

    def recurrent_params(self):
        h = self.num_output
        return [("weight_filler", (h, h)), ("weight_filler", (h, h)), ("bias_filler", (h,))]

    def reshape_buffers(self, xp, steps, n):
        # o, kept for backward apart from the top, which later layers may
        # change in place.
        self.output = work_buffer(self.output, xp,
                                  (steps, n, self.num_output), self.dtype)

    def forward_cpu(self, bottoms, tops):
        w_hh, w_ho, b_o = (b.data for b in self.blobs[self.first_recurrent_param:])
        xp, cont = array_module(bottoms[0].data), self._cont(bottoms)
        pre = self._input_transform(bottoms)
        hidden = self.hidden
        hidden[0] = self._initial_states(bottoms)[0]
        for t in range(pre.shape[0]):
            xp.tanh(pre[t] + xp.matmul(cont[t][:, None] * hidden[t], w_hh.T), out=hidden[t + 1])
        out = self.output.reshape(-1, self.num_output)
        xp.matmul(hidden[1:].reshape(out.shape), w_ho.T, out=out)
        out += b_o
        xp.tanh(out, out=out)
        tops[0].data[...] = self.output
        self._final_states(tops, [hidden[-1]])

    def backward_cpu(self, tops, propagate_down, bottoms):
        first = self.first_recurrent_param
        xp, cont, hidden = array_module(bottoms[0].data), self._cont(bottoms), self.hidden
        steps, n, h = self.output.shape
        flat_h = hidden[1:].reshape(steps * n, h)
        d_out = (tops[0].diff * (1 - self.output * self.output)).reshape(steps * n, h)
        if self.param_needs_gradient(first + 1):
            self.blobs[first + 1].diff += xp.matmul(d_out.T, flat_h)
        if self.param_needs_gradient(first + 2):
            self.blobs[first + 2].diff += d_out.sum(axis=0)
        dh_out = xp.matmul(d_out, self.blobs[first + 1].data).reshape(steps, n, h)
        dpre = self.workspace.array("rnn_dpre", (steps, n, h), hidden.dtype)
        dh_next = self._final_state_diff(tops, 0, "rnn_dh")
        w_hh = self.blobs[first].data
        for t in reversed(range(steps)):
            dpre[t] = (dh_out[t] + dh_next) * (1 - hidden[t + 1] * hidden[t + 1])
            dh_next = cont[t][:, None] * xp.matmul(dpre[t], w_hh)
        self._initial_state_diffs(propagate_down, bottoms, [dh_next])
        if self.param_needs_gradient(first):
            self.blobs[first].diff += xp.matmul(dpre.reshape(-1, h).T, self._conted_hidden(cont))
        self._input_backward(bottoms, propagate_down, dpre)

    # Matmuls and tanh only: the same code through cuBLAS and CuPy.
    forward_gpu = forward_cpu
    backward_gpu = backward_cpu


@register("LSTM")
class LSTMLayer(_RecurrentLayer):
    """Caffe's LSTM: gate pre-activations ``W_hc (cont_t h_{t-1}) + W_xc x_t
    + b_c [+ W_xc_static x_static]`` in the order i, f, o, g, then the
    LSTMUnit cell ``c_t = cont_t f_t c_{t-1} + i_t g_t``,
    ``h_t = o_t tanh(c_t)``.

    recurrent_param: num_output, weight_filler, bias_filler, expose_hidden,
    debug_info (no effect). Parameters, in Caffe's order: W_xc (4H, input),
    b_c (4H,), [W_xc_static (4H, static input)], W_hc (4H, H). tops:
    h (T, N, H), [h_T (1, N, H), c_T (1, N, H)]; bottoms h_0 then c_0.
    """

    max_bottoms = 5
    max_tops = 3
    states = ("h_0", "c_0")
    gates = 4
    cell = acts = None  # sized in reshape

    def recurrent_params(self):
        return [("weight_filler", (4 * self.num_output, self.num_output))]

    def reshape_buffers(self, xp, steps, n):
        # The cell states c_0..c_T and the gate values of every step, for
        # backward.
        h = self.num_output
        self.cell = work_buffer(self.cell, xp, (steps + 1, n, h), self.dtype)
        self.acts = work_buffer(self.acts, xp, (steps, n, 4 * h), self.dtype)

    def _forward(self, bottoms, tops, cell_forward):
        w_hc = self.blobs[self.first_recurrent_param].data
        xp, cont = array_module(bottoms[0].data), self._cont(bottoms)
        gates = self._input_transform(bottoms)
        hidden, cell = self.hidden, self.cell
        hidden[0], cell[0] = self._initial_states(bottoms)
        for t in range(gates.shape[0]):
            gates[t] += xp.matmul(cont[t][:, None] * hidden[t], w_hc.T)
            cell_forward(cell[t], gates[t], cont[t], self.acts[t], cell[t + 1], hidden[t + 1])
        tops[0].data[...] = hidden[1:]
        self._final_states(tops, [hidden[-1], cell[-1]])

    def _backward(self, tops, propagate_down, bottoms, cell_backward):
        w_hc = self.blobs[self.first_recurrent_param].data
        xp, cont = array_module(bottoms[0].data), self._cont(bottoms)
        hidden, cell, acts = self.hidden, self.cell, self.acts
        steps, n, h = tops[0].shape
        dgates = self.workspace.array("lstm_dgates", (steps, n, 4 * h), hidden.dtype)
        dh_next = self._final_state_diff(tops, 0, "lstm_dh")
        dc_next = self._final_state_diff(tops, 1, "lstm_dc")
        dc_prev = self.workspace.array("lstm_dc_prev", (n, h), hidden.dtype)
        dh = self.workspace.array("lstm_dh_step", (n, h), hidden.dtype)
        for t in reversed(range(steps)):
            xp.add(tops[0].diff[t], dh_next, out=dh)
            cell_backward(cell[t], acts[t], cont[t], cell[t + 1], dc_next, dh, dc_prev, dgates[t])
            dh_next = cont[t][:, None] * xp.matmul(dgates[t], w_hc)
            dc_next, dc_prev = dc_prev, dc_next
        self._initial_state_diffs(propagate_down, bottoms, [dh_next, dc_next])
        if self.param_needs_gradient(self.first_recurrent_param):
            self.blobs[self.first_recurrent_param].diff += xp.matmul(
                dgates.reshape(-1, 4 * h).T, self._conted_hidden(cont))
        self._input_backward(bottoms, propagate_down, dgates)

    def forward_cpu(self, bottoms, tops):
        self._forward(bottoms, tops, cell_forward_numpy)

    def backward_cpu(self, tops, propagate_down, bottoms):
        self._backward(tops, propagate_down, bottoms, cell_backward_numpy)

    def forward_gpu(self, bottoms, tops):
        self._forward(bottoms, tops, cell_forward_kernel)

    def backward_gpu(self, tops, propagate_down, bottoms):
        self._backward(tops, propagate_down, bottoms, cell_backward_kernel)
