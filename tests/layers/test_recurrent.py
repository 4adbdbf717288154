"""RNN and LSTM: forward against plain step-by-step references (cont resets
in mid-sequence, x_static, expose_hidden), the state carried from one
forward pass to the next, parameter blobs in Caffe's order and shapes,
float64 gradient checks, propagate_down, the LSTM cell kernel host-run,
GPU parity, and the errors."""
import numpy as np
import pytest

from netdef.errors import NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, check_layer, setup_layer
from netdef.net import Net
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host

FILLERS = ('weight_filler { type: "uniform" min: -0.6 max: 0.6 } '
           'bias_filler { type: "uniform" min: -0.4 max: 0.4 }')
STATES = {"RNN": ["h_0"], "LSTM": ["h_0", "c_0"]}
OUTPUT = {"RNN": "o", "LSTM": "h"}


def spec(kind, num_output=3, static=False, expose=False, extra=FILLERS):
    bottoms = ["x", "cont"] + (["x_static"] if static else []) + (STATES[kind] if expose else [])
    tops = [OUTPUT[kind]] + ([s[:-1] + "T" for s in STATES[kind]] if expose else [])
    names = " ".join(f'bottom: "{b}"' for b in bottoms) + " " + " ".join(f'top: "{t}"' for t in tops)
    return (f'name: "rec" type: "{kind}" {names} recurrent_param {{ num_output: {num_output} '
            f'expose_hidden: {str(expose).lower()} {extra} }}')


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def split_params(params, static):
    """(W_x, b, W_static or None, the recurrent parameters)."""
    if static:
        return params[0], params[1], params[2], params[3:]
    return params[0], params[1], None, params[2:]


def input_term(params, x, x_static, t, n, static):
    w_x, b, w_static, _ = split_params(params, static)
    value = w_x @ x[t, n].ravel() + b
    if static:
        value = value + w_static @ x_static[n].ravel()
    return value


def rnn_reference(params, x, cont, x_static=None, h_0=None):
    """Caffe's RNN one time step and one stream at a time: (o, h_T)."""
    static = x_static is not None
    w_hh, w_ho, b_o = split_params(params, static)[3]
    steps, streams = cont.shape
    h = np.zeros((streams, w_hh.shape[0])) if h_0 is None else h_0[0].copy()
    o = np.empty((steps, streams, w_hh.shape[0]))
    for t in range(steps):
        for n in range(streams):
            pre = input_term(params, x, x_static, t, n, static) + w_hh @ (cont[t, n] * h[n])
            h[n] = np.tanh(pre)
            o[t, n] = np.tanh(w_ho @ h[n] + b_o)
    return o, h[None]


def lstm_reference(params, x, cont, x_static=None, h_0=None, c_0=None):
    """Caffe's LSTM one time step and one stream at a time: (h, h_T, c_T)."""
    static = x_static is not None
    (w_hc,) = split_params(params, static)[3]
    steps, streams = cont.shape
    units = w_hc.shape[1]
    h = np.zeros((streams, units)) if h_0 is None else h_0[0].copy()
    c = np.zeros((streams, units)) if c_0 is None else c_0[0].copy()
    out = np.empty((steps, streams, units))
    for t in range(steps):
        for n in range(streams):
            pre = input_term(params, x, x_static, t, n, static) + w_hc @ (cont[t, n] * h[n])
            i, f, o, g = (pre[k * units:(k + 1) * units] for k in range(4))
            c[n] = cont[t, n] * sigmoid(f) * c[n] + sigmoid(i) * np.tanh(g)
            h[n] = sigmoid(o) * np.tanh(c[n])
            out[t, n] = h[n]
    return out, h[None], c[None]


REFERENCES = {"RNN": rnn_reference, "LSTM": lstm_reference}


def make_inputs(kind, steps, streams, input_shape=(2,), static_shape=None, expose=False,
                cont=None, seed=0, num_output=3):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((steps, streams) + input_shape)]
    if cont is None:
        cont = np.ones((steps, streams))
        cont[0] = 0
    arrays.append(np.asarray(cont, dtype=np.float64))
    if static_shape is not None:
        arrays.append(rng.standard_normal((streams,) + static_shape))
    if expose:
        arrays += [rng.uniform(-1, 1, (1, streams, num_output)) for _ in STATES[kind]]
    return arrays


def run(kind_spec, arrays, dtype=np.float64):
    layer = build_layer(kind_spec, dtype=dtype)
    bottoms, tops = setup_layer(layer, arrays)
    layer.forward(bottoms, tops)
    return layer, bottoms, tops


def reference_of(kind, layer, arrays, static, expose):
    params = [b.data for b in layer.blobs]
    x, cont = arrays[:2]
    x_static = arrays[2] if static else None
    states = arrays[2 + static:] if expose else []
    return REFERENCES[kind](params, x, cont, x_static, *states)


# -- forward --------------------------------------------------------------------------

MID_RESETS = [[0, 0, 0], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]]  # (T=5, N=3)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("expose", [False, True])
@pytest.mark.parametrize("input_shape, cont", [((4,), MID_RESETS), ((2, 3), MID_RESETS),
                                               ((1,), [[0, 0, 0]])])
def test_forward_matches_reference(kind, static, expose, input_shape, cont):
    cont = np.asarray(cont, dtype=np.float64)
    steps, streams = cont.shape
    arrays = make_inputs(kind, steps, streams, input_shape, (2, 2) if static else None,
                         expose, cont, num_output=4)
    layer, _, tops = run(spec(kind, 4, static, expose), arrays)
    expected = reference_of(kind, layer, arrays, static, expose)
    assert tops[0].shape == (steps, streams, 4)
    for top, want in zip(tops, expected):
        np.testing.assert_allclose(top.data, want, rtol=1e-12, atol=1e-14)
    assert len(tops) == (1 + len(STATES[kind]) if expose else 1)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_fractional_cont_scales_the_carried_state(kind):
    arrays = make_inputs(kind, 3, 2, expose=True, cont=[[0.5, 1], [0.25, 0], [1, 0.75]])
    layer, _, tops = run(spec(kind, expose=True), arrays)
    for top, want in zip(tops, reference_of(kind, layer, arrays, False, True)):
        np.testing.assert_allclose(top.data, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_state_carries_to_the_next_forward(kind):
    """Without expose_hidden, the whole sequence at once equals one step
    per forward pass (Caffe's own check), and a pass with cont 0 at every
    step forgets what came before."""
    arrays = make_inputs(kind, 4, 2, seed=3)
    _, _, whole = run(spec(kind), arrays)
    for cont, same in ((arrays[1], True), (np.zeros((4, 2)), False)):
        layer = build_layer(spec(kind))  # same seed, so the same parameters
        bottoms, tops = setup_layer(layer, [arrays[0][:1].copy(), cont[:1].copy()])
        for t in range(4):
            bottoms[0].data[...] = arrays[0][t:t + 1]
            bottoms[1].data[...] = cont[t:t + 1]
            layer.forward(bottoms, tops)
            if same or t == 0:
                np.testing.assert_allclose(tops[0].data[0], whole[0].data[t], rtol=1e-13, atol=1e-15)
            else:
                assert not np.allclose(tops[0].data[0], whole[0].data[t])


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_reset_zeroes_the_carried_state(kind):
    arrays = make_inputs(kind, 2, 2, cont=np.ones((2, 2)))
    layer, bottoms, tops = run(spec(kind), arrays)
    first = tops[0].data.copy()
    layer.forward(bottoms, tops)
    assert not np.allclose(tops[0].data, first)
    layer.reset()
    layer.forward(bottoms, tops)
    np.testing.assert_array_equal(tops[0].data, first)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_number_of_steps_may_change(kind):
    layer, bottoms, tops = run(spec(kind), make_inputs(kind, 2, 3))
    arrays = make_inputs(kind, 5, 3, seed=1)
    for blob, array in zip(bottoms, arrays):
        blob.reshape(array.shape)
        blob.data[...] = array
    layer.reshape(bottoms, tops)
    layer.forward(bottoms, tops)
    np.testing.assert_allclose(tops[0].data, reference_of(kind, layer, arrays, False, False)[0],
                               rtol=1e-12, atol=1e-14)


def test_exposed_final_states_are_the_last_step():
    arrays = make_inputs("LSTM", 3, 2, expose=True)
    _, _, (h, h_t, c_t) = run(spec("LSTM", expose=True), arrays)
    np.testing.assert_array_equal(h_t.data[0], h.data[-1])
    assert c_t.shape == (1, 2, 3)


# -- parameters -------------------------------------------------------------------------

@pytest.mark.parametrize("kind, static, shapes", [
    ("RNN", False, [(5, 6), (5,), (5, 5), (5, 5), (5,)]),
    ("RNN", True, [(5, 6), (5,), (5, 8), (5, 5), (5, 5), (5,)]),
    ("LSTM", False, [(20, 6), (20,), (20, 5)]),
    ("LSTM", True, [(20, 6), (20,), (20, 8), (20, 5)]),
])
def test_parameter_blobs_in_caffes_order(kind, static, shapes):
    """The unrolled net's unique parameters in creation order: RNN W_xh,
    b_h, [W_xh_static], W_hh, W_ho, b_o; LSTM W_xc, b_c, [W_xc_static], W_hc.
    Weights take weight_filler and biases bias_filler."""
    fillers = ('weight_filler { type: "constant" value: 2 } '
               'bias_filler { type: "constant" value: 3 }')
    arrays = make_inputs(kind, 2, 4, (2, 3), (2, 4) if static else None)
    layer = build_layer(spec(kind, 5, static, extra=fillers))
    setup_layer(layer, arrays)
    assert [b.shape for b in layer.blobs] == shapes
    assert [float(b.data.flat[0]) for b in layer.blobs] == [2.0 if len(s) == 2 else 3.0
                                                            for s in shapes]


NET = """name: "seq"
layer { name: "in" type: "Input" top: "x" top: "cont" top: "x_static"
        input_param { shape { dim: 3 dim: 2 dim: 4 } shape { dim: 3 dim: 2 }
                      shape { dim: 2 dim: 5 } } }
layer { name: "rec" type: "%s" bottom: "x" bottom: "cont" bottom: "x_static" top: "out"
        recurrent_param { num_output: 3 %s } }
"""


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_weights_round_trip_through_a_caffemodel(kind, tmp_path):
    rng = np.random.default_rng(8)
    inputs = {"x": rng.standard_normal((3, 2, 4)), "cont": np.array([[0, 0], [1, 1], [1, 0.0]]),
              "x_static": rng.standard_normal((2, 5))}
    trained = Net(NET % (kind, FILLERS), "TRAIN", dtype=np.float64)
    expected = trained.forward(**inputs)["out"].copy()
    trained.save(tmp_path / "seq.caffemodel")
    loaded = Net(NET % (kind, ""), "TEST", tmp_path / "seq.caffemodel", dtype=np.float64)
    np.testing.assert_array_equal(loaded.forward(**inputs)["out"], expected)


# -- gradients ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
@pytest.mark.parametrize("static", [False, True])
def test_gradient(kind, static):
    # cont 0 at the first step: the state carried in from the previous
    # pass (which the checker's repeated passes would change) is cut off.
    arrays = make_inputs(kind, 3, 2, (2,), (2,) if static else None,
                         cont=[[0, 0], [1, 0], [1, 1]], seed=4)
    result = check_layer(spec(kind, 3, static), arrays)
    assert result.passed, result.report()


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_gradient_with_exposed_hidden(kind):
    """Gradients reach h_0 (and c_0) where cont carries them in, and flow
    back from the final-state tops."""
    arrays = make_inputs(kind, 3, 2, (2,), (3,), expose=True,
                         cont=[[1, 0], [1, 1], [0, 1]], seed=5)
    result = check_layer(spec(kind, 3, True, True), arrays)
    assert result.passed, result.report()
    checked = {label.split("'")[1] for label in result.worst_per_blob if "'" in label}
    assert checked == {"x", "x_static"} | set(STATES[kind])


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_backward_respects_propagate_down_and_param_flags(kind):
    arrays = make_inputs(kind, 3, 2, (2,), (2,), expose=True)
    layer, bottoms, tops = run(spec(kind, 3, True, True), arrays)
    for blob in bottoms + layer.blobs:
        blob.diff[...] = 7.0
    for top in tops:
        top.diff[...] = 1.0
    layer.param_propagate_down = [False] + [True] * (len(layer.blobs) - 1)
    down = [False, True, True] + [False] * len(STATES[kind])
    layer.backward(tops, down, bottoms)
    assert np.all(bottoms[0].diff == 7.0) and np.all(layer.blobs[0].diff == 7.0)
    assert np.all(bottoms[1].diff == 0)  # cont asked for: no gradient
    assert all(np.all(b.diff == 7.0) for b in bottoms[3:])
    assert not np.all(bottoms[2].diff == 7.0) and not np.all(layer.blobs[1].diff == 7.0)
    assert [layer.allow_force_backward(i) for i in range(3)] == [True, False, True]


# -- the GPU path -------------------------------------------------------------------

@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("static, expose", [(False, False), (True, True)])
def test_lstm_gpu_path_on_host(static, expose, dtype):
    arrays = make_inputs("LSTM", 4, 3, (2, 2), (3,) if static else None, expose,
                         MID_RESETS[:4], seed=6)
    propagate = [True, False] + [True] * (len(arrays) - 2)
    run_gpu_path_on_host(spec("LSTM", 3, static, expose), arrays, dtype=dtype,
                         propagate=propagate)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
@pytest.mark.parametrize("static, expose", [(False, False), (True, True)])
def test_gpu_matches_cpu(kind, static, expose, dtype):
    arrays = make_inputs(kind, 5, 3, (4,), (2,) if static else None, expose, MID_RESETS,
                         seed=7, num_output=8)
    propagate = [True, False] + [True] * (len(arrays) - 2)
    compare_devices(spec(kind, 8, static, expose), arrays, dtype=dtype, propagate=propagate)


# -- errors -------------------------------------------------------------------------

def setup_error(kind_spec, shapes):
    layer = build_layer(kind_spec)
    setup_layer(layer, [np.zeros(s) for s in shapes])


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_num_output_must_be_positive(kind):
    with pytest.raises(NetDefinitionError,
                       match=r"layer 'rec'.*recurrent_param.num_output must be >= 1, found 0"):
        setup_error(spec(kind, 0), [(2, 1, 3), (2, 1)])


@pytest.mark.parametrize("kind, expose, shapes, message", [
    ("RNN", False, [(2, 1, 3)] * 4, r"takes 2 bottoms \(x, cont\) or 3 \(x, cont, x_static\) "
                                    r"with expose_hidden false, found 4"),
    ("LSTM", True, [(2, 1, 3), (2, 1), (1, 1, 3)],
     r"takes 4 bottoms \(x, cont and h_0, c_0\) or 5 .* with expose_hidden true, found 3"),
])
def test_wrong_bottom_count(kind, expose, shapes, message):
    layer = build_layer(spec(kind, 3, expose=expose))
    with pytest.raises(NetDefinitionError, match=message):
        setup_layer(layer, [np.zeros(s) for s in shapes], num_tops=len(layer.param.top))


def test_wrong_top_count():
    text = spec("LSTM", 3, expose=True).replace('top: "c_T"', "")
    with pytest.raises(NetDefinitionError,
                       match=r"takes 1 \+ 2 \(the output, h_T, c_T\) tops with expose_hidden "
                             r"true, found 2"):
        setup_error(text, [(2, 1, 3), (2, 1), (1, 1, 3), (1, 1, 3)])


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
@pytest.mark.parametrize("shapes, message", [
    ([(2, 3), (2, 3)], r"bottom 'x' expected \(T, N, \.\.\.\) with at least 3 axes.*\(2, 3\)"),
    ([(2, 3, 4), (3, 2)], r"bottom 'cont' expected \(T, N\) = \(2, 3\), the first two axes of "
                          r"'x' \(2, 3, 4\), found shape \(3, 2\)"),
    ([(2, 3, 4), (2, 3, 1)], r"bottom 'cont' expected \(T, N\) = \(2, 3\).*\(2, 3, 1\)"),
    ([(2, 3, 4), (2, 3), (2, 5)], r"bottom 'x_static' expected \(N, \.\.\.\) with N = 3.*\(2, 5\)"),
    ([(2, 3, 4), (2, 3), (3,)], r"bottom 'x_static' expected \(N, \.\.\.\) with at least 2 axes"),
])
def test_input_shape_errors(kind, shapes, message):
    with pytest.raises(ShapeError, match=r"layer 'rec' \(type " + kind + r"\): " + message):
        setup_error(spec(kind, 3, static=len(shapes) == 3), shapes)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
@pytest.mark.parametrize("which, wrong", [(0, (1, 2, 5)), (-1, (3, 5)), (-1, (1, 3, 4))])
def test_initial_state_shape_errors(kind, which, wrong):
    states = [(1, 3, 5)] * len(STATES[kind])
    states[which] = wrong
    name = STATES[kind][which]
    with pytest.raises(ShapeError, match=rf"bottom '{name}' expected {name} of shape \(1, N, "
                                         rf"num_output\) = \(1, 3, 5\), found shape"):
        setup_error(spec(kind, 5, expose=True), [(2, 3, 4), (2, 3)] + states)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_input_size_must_stay_that_of_the_weights(kind):
    layer = build_layer(spec(kind, 3, static=True))
    bottoms, tops = setup_layer(layer, [np.zeros((2, 1, 4)), np.zeros((2, 1)), np.zeros((1, 6))])
    bottoms[0].reshape((2, 1, 5))
    with pytest.raises(ShapeError, match=r"layer 'rec' .*bottom 'x' expected 4 input values per "
                                         r"stream \(its dims from axis 2 on, flattened, as the "
                                         r"weights \((3|12), 4\) require\), found 5 \(shape \(2, 1, 5\)\)"):
        layer.reshape(bottoms, tops)
    bottoms[0].reshape((2, 1, 4))
    bottoms[2].reshape((1, 2, 2))
    with pytest.raises(ShapeError, match=r"bottom 'x_static' expected 6 input values per stream "
                                         r"\(its dims from axis 1 on.*found 4 \(shape \(1, 2, 2\)\)"):
        layer.reshape(bottoms, tops)
