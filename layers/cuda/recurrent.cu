// The LSTM cell of Caffe's LSTMUnit, also run at every time step of LSTM.
//
// Per stream n and unit d, with the 4D pre-activations of row n laid out as
// [i' | f' | o' | g'] (D each):
//   i = sigmoid(i'), f = sigmoid(f'), o = sigmoid(o'), g = tanh(g')
//   c = cont_n * f * c_prev + i * g,   h = o * tanh(c)
// cont_n (0 at the start of a sequence) cuts the forget path, so nothing of
// the previous sequence's cell reaches c. One thread per (n, d) element of c
// handles the four gates of that unit.
#include "common.cuh"

// 0.5 * tanh(0.5 * x) + 0.5 equals 1 / (1 + exp(-x)) and never overflows.
DEVICE real lstm_sigmoid(const real x) { return (real)0.5 * tanh((real)0.5 * x) + (real)0.5; }

// c_prev, c, h: (N, D); gates (pre-activations) and acts (i, f, o, g after
// their nonlinearities, kept for backward): (N, 4D); cont: (N,).
KERNEL void FN(lstm_cell_forward)(const long long n, const int dim, const real* c_prev,
                                  const real* gates, const real* cont, real* acts,
                                  real* c, real* h) {
  CUDA_KERNEL_LOOP(index, n) {
    const long long row = index / dim;
    const long long at = row * 4 * dim + index % dim;  // gate i of this unit
    const real i = lstm_sigmoid(gates[at]);
    const real f = lstm_sigmoid(gates[at + dim]);
    const real o = lstm_sigmoid(gates[at + 2 * dim]);
    const real g = tanh(gates[at + 3 * dim]);
    acts[at] = i;
    acts[at + dim] = f;
    acts[at + 2 * dim] = o;
    acts[at + 3 * dim] = g;
    const real cell = cont[row] * f * c_prev[index] + i * g;
    c[index] = cell;
    h[index] = o * tanh(cell);
  }
}

// Gradients of the cell given dc, dh (N, D) on its outputs: dc_prev (N, D)
// and dgates (N, 4D), the latter with respect to the pre-activations.
KERNEL void FN(lstm_cell_backward)(const long long n, const int dim, const real* c_prev,
                                   const real* acts, const real* cont, const real* c,
                                   const real* dc, const real* dh, real* dc_prev,
                                   real* dgates) {
  CUDA_KERNEL_LOOP(index, n) {
    const long long row = index / dim;
    const long long at = row * 4 * dim + index % dim;
    const real i = acts[at];
    const real f = acts[at + dim];
    const real o = acts[at + 2 * dim];
    const real g = acts[at + 3 * dim];
    const real tanh_c = tanh(c[index]);
    // Everything that reaches c: its own top diff and the path through h.
    const real dcell = dc[index] + dh[index] * o * (1 - tanh_c * tanh_c);
    const real kept = cont[row] * dcell;
    dc_prev[index] = kept * f;
    dgates[at] = dcell * g * i * (1 - i);
    dgates[at + dim] = kept * c_prev[index] * f * (1 - f);
    dgates[at + 2 * dim] = dh[index] * tanh_c * o * (1 - o);
    dgates[at + 3 * dim] = dcell * i * (1 - g * g);
  }
}
