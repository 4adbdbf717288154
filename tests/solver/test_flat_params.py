"""The solver's flat buffers (solver.flat_params, Blob.adopt): the update on
flat buffers equals a plain per-parameter update for all six rules (with
clipping, iter_size, lr/decay multipliers, lr_mult 0 and shared parameters),
resume stays exact, and the solver's array operations and host syncs per
iteration do not grow with the number of parameters (counted on the stand-in
CuPy of bench.standin_cupy), all of them on the solver's device."""
import contextlib

import numpy as np
import pytest

from bench.standin_cupy import COUNTS, installed
from netdef import caffe_pb2
from netdef.device import Device, to_numpy
from netdef.errors import NumericalError
from netdef.blob import Blob
from netdef.net import LearnableParam, Net
from solver.flat_params import FlatParams, flatten_params
from solver.sgd import Solver
from solver.update_rules import RULES
from tests.solver.test_update_rules import FIELDS, TYPES, caffe_update, f32, solver_fields

# Shared weights (ip2 and ip3 by name "shared"), lr_mult 0 (ip3's bias),
# and lr/decay multipliers that are neither 0, 1 nor 2.
MLP = """
name: "mlp"
layer { name: "input" type: "Input" top: "data" top: "target"
  input_param { shape { dim: 4 dim: 5 } shape { dim: 4 dim: 3 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "h1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.4 }
                        bias_filler { type: "gaussian" std: 0.2 } } }
layer { name: "tanh1" type: "TanH" bottom: "h1" top: "h1" }
layer { name: "ip2" type: "InnerProduct" bottom: "h1" top: "h2"
  param { name: "shared" lr_mult: 0.5 decay_mult: 3 } param { lr_mult: 3 decay_mult: 0.5 }
  inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.4 }
                        bias_filler { type: "gaussian" std: 0.2 } } }
layer { name: "ip3" type: "InnerProduct" bottom: "h2" top: "h3"
  param { name: "shared" } param { lr_mult: 0 }
  inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.4 }
                        bias_filler { type: "gaussian" std: 0.2 } } }
layer { name: "ip4" type: "InnerProduct" bottom: "h3" top: "pred"
  param { lr_mult: 1.5 decay_mult: 2 } param { lr_mult: 1 decay_mult: 0 }
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.4 }
                        bias_filler { type: "gaussian" std: 0.2 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "pred" bottom: "target" top: "loss" }
"""


def mlp_net(dtype=np.float64, device=None):
    net = Net(MLP, "TRAIN", dtype=dtype, seed=3, device=device or Device("cpu"))
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = net.device.asarray(rng.uniform(-1, 1, (4, 5)), dtype=dtype)
    net.blobs["target"].data[...] = net.device.asarray(rng.uniform(-1, 1, (4, 3)), dtype=dtype)
    return net


def mlp_solver(kind, clip=-1.0, regularization="L2", net=None, iter_size=2):
    text = (f'lr_policy: "step" gamma: 0.5 stepsize: 2 weight_decay: 0.05 '
            f'iter_size: {iter_size} clip_gradients: {clip} '
            f'regularization_type: "{regularization}" max_iter: 10 {solver_fields(kind)}\n')
    return Solver(text, net=net or mlp_net(), stream=None, seed=0)


class PlainSolver:
    """The update written out per parameter, from Caffe's description, on a
    second copy of the net: accumulate the iter_size gradients, clip by the
    global norm, divide by iter_size, weight decay x decay_mult, the rule
    (tests.solver.test_update_rules.caffe_update) with lr x lr_mult,
    data -= update."""

    def __init__(self, kind, clip, regularization, iter_size=2):
        self.kind, self.clip, self.l1 = kind, clip, regularization == "L1"
        self.iter_size, self.it = iter_size, 0
        self.net = mlp_net()
        self.params = [lp for lp in self.net.learnable_params if lp.lr_mult != 0]
        slots = len(RULES[kind].suffixes)
        self.history = [[np.zeros(lp.blob.shape)] * slots for lp in self.params]

    def step(self):
        self.net.clear_param_diffs()
        for _ in range(self.iter_size):
            self.net.forward()
            self.net.backward()
        grads = [lp.blob.diff.copy() for lp in self.params]
        norm = np.sqrt(sum((g ** 2).sum() for g in grads))
        if 0 <= self.clip < norm:
            grads = [g * (self.clip / norm) for g in grads]
        lr = f32(FIELDS[self.kind]["base_lr"]) * 0.5 ** (self.it // 2)
        for k, (lp, g) in enumerate(zip(self.params, grads)):
            w = lp.blob.data
            g = g / self.iter_size + f32(0.05) * lp.decay_mult * (np.sign(w) if self.l1 else w)
            update, self.history[k] = caffe_update(self.kind, g, self.history[k],
                                                   lr * lp.lr_mult, self.it)
            w -= update
        self.it += 1
        return norm


def first_gradient_norm():
    net = mlp_net()
    net.forward()
    net.backward()
    return 2 * np.sqrt(sum((lp.blob.diff ** 2).sum() for lp in net.learnable_params
                           if lp.lr_mult != 0))


@pytest.mark.parametrize("regularization", ["L2", "L1"])
@pytest.mark.parametrize("kind", TYPES)
def test_flat_update_equals_the_per_parameter_update(kind, regularization):
    # A threshold the first iterations' norms exceed, so clipping is tested.
    clip = f32(0.8 * first_gradient_norm())
    solver = mlp_solver(kind, clip, regularization)
    plain = PlainSolver(kind, clip, regularization)
    clipped = []
    for _ in range(5):
        clipped.append(plain.step() > clip)
        solver.step(1)
        for mine, theirs in zip(solver.net.learnable_params, plain.net.learnable_params):
            np.testing.assert_allclose(mine.blob.data, theirs.blob.data, rtol=1e-11,
                                       atol=1e-14, err_msg=f"{mine.layer}/{mine.index}")
        for lp, history in zip(plain.params, plain.history):
            keys = solver.rule.history_keys(f"{lp.layer}/{lp.index}")
            for key, expected in zip(keys, history):
                np.testing.assert_allclose(solver.history[key], expected, rtol=1e-11,
                                           atol=1e-14, err_msg=key)
    assert any(clipped)
    # lr_mult 0: untouched and without history; the shared weight: one
    # parameter (the owner's multipliers), seen by both layers.
    net = solver.net
    assert np.array_equal(net.params["ip3"][1].data, mlp_net().params["ip3"][1].data)
    assert net.params["ip3"][0] is net.params["ip2"][0]
    trained = ("ip1/0", "ip1/1", "ip2/0", "ip2/1", "ip4/0", "ip4/1")
    assert sorted(solver.history) == sorted(k for name in trained
                                            for k in solver.rule.history_keys(name))


def random_flat(kind, dtype, seed=1):
    """FlatParams over the MLP's trained parameters with random diffs and
    (positive where it must be) history."""
    net = mlp_net(dtype)
    params = [lp for lp in net.learnable_params if lp.lr_mult != 0]
    flat = FlatParams(params, len(RULES[kind].suffixes), net.device)
    rng = np.random.default_rng(seed)
    flat.diff[...] = rng.normal(size=flat.diff.shape)
    for history in flat.history:
        history[...] = rng.uniform(0.01, 1.0, size=history.shape)
    return flat


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", TYPES)
def test_runs_give_bit_for_bit_the_per_parameter_rule(kind, dtype):
    """The rule on the flat buffer with runs of rates equals, bit for bit,
    the rule applied to each parameter with its own rate (the update before
    flat buffers)."""
    param = caffe_pb2.SolverParameter()
    for field, value in FIELDS[kind].items():
        setattr(param, field, value)
    rule = RULES[kind](param, "test")
    flat, reference = random_flat(kind, dtype), random_flat(kind, dtype)
    lr = 0.037
    rule.compute_update_value(flat.diff, flat.history, flat.rates(lr), 3)
    for lp in reference.params:
        views = reference.history_views(lp)
        rule.compute_update_value(lp.blob.diff, views, lr * lp.lr_mult, 3)
    assert np.array_equal(flat.diff, reference.diff)
    for mine, theirs in zip(flat.history, reference.history):
        assert np.array_equal(mine, theirs)


def test_layout_runs_and_views():
    net = mlp_net()
    solver = mlp_solver("SGD", net=net)
    (flat,) = solver._flat
    trained = [lp for lp in net.learnable_params if lp.lr_mult != 0]
    assert flat.data.shape == (sum(lp.blob.count for lp in trained),)
    # Sorted by (lr_mult, decay_mult): one run per lr_mult, none for decay 0.
    assert [m for _, m in flat.lr_runs] == [0.5, 1, 1.5, 2, 3]
    assert [m for _, m in flat.decay_runs] == [3, 1, 2, 0.5]
    for lp in trained:
        assert lp.blob.adopted and np.shares_memory(lp.blob.data, flat.data)
        assert np.shares_memory(lp.blob.diff, flat.diff)
    for key, array in solver.history.items():
        assert np.shares_memory(array, flat.history[0]), key
    assert not net.params["ip3"][1].adopted     # lr_mult 0 stays outside
    assert "5 lr run(s), 4 decay run(s)" in repr(flat)


def test_layout_continues_a_decay_run_across_lr_mults():
    params = [LearnableParam(Blob((2,)), name, 0, lr, decay) for name, lr, decay in
              [("a", 2, 0), ("b", 1, 1), ("c", 2, 1), ("d", 1, 1)]]
    flat = FlatParams(params, 0, Device("cpu"))
    assert [lp.layer for lp in flat.params] == ["b", "d", "c", "a"]
    assert flat.lr_runs == [(slice(0, 4), 1), (slice(4, 8), 2)]
    assert flat.decay_runs == [(slice(0, 6), 1)]


def test_one_flat_buffer_per_dtype_and_each_blob_once():
    net32, net64 = mlp_net(np.float32), mlp_net(np.float64)
    params = [lp for lp in net32.learnable_params + net64.learnable_params if lp.lr_mult]
    flats = flatten_params(params, 1, Device("cpu"))
    assert [f.data.dtype for f in flats] == [np.float32, np.float64]
    with pytest.raises(ValueError, match="parameter 0 of layer 'ip1' is listed twice"):
        flatten_params(params[:1] * 2, 1, Device("cpu"))


# ---------------------------------------------------------------------------
# Blob.adopt


def test_adopt_keeps_values_and_refuses_to_let_go():
    blob = mlp_net().params["ip1"][0]
    before = blob.data.copy()
    blob.diff[...] = 2.0
    data, diff = np.zeros(blob.shape), np.zeros(blob.shape)
    blob.adopt(data, diff)
    assert blob.data is data and blob.diff is diff and blob.adopted
    assert np.array_equal(data, before) and np.all(diff == 2)
    blob.data = np.ones(blob.shape)         # copies into the adopted array
    blob.diff = np.full(blob.shape, 3.0)
    assert blob.data is data and np.all(data == 1) and np.all(diff == 3)
    blob.zero_diff()
    assert not diff.any()
    blob.reshape(blob.shape)                # the same shape: nothing to do
    with pytest.raises(ValueError, match=r"adopted storage .*cannot reshape it to \(2, 2\)"):
        blob.reshape(2, 2)
    with pytest.raises(ValueError, match="cannot release its data"):
        blob.release_data()
    with pytest.raises(ValueError, match="cannot release its diff"):
        blob.release_diff()
    with pytest.raises(ValueError, match=r"cannot assign an array of shape \(3,\)"):
        blob.data = np.ones(3)
    with pytest.raises(ValueError, match=r"cannot adopt a diff array of shape \(6, 5\) and "
                                         r"dtype float32"):
        blob.adopt(data, np.zeros(blob.shape, np.float32))


def test_two_solvers_on_one_net_take_turns():
    """A second solver on the same net moves the parameters into its
    buffers; the first takes them back, with their values, when it steps."""
    one, twin = mlp_solver("SGD"), mlp_solver("SGD")
    one.step(1)
    twin.step(1)
    other = mlp_solver("Adam", net=one.net)
    other.step(1)
    # The twin: the same history as ``one``, the weights ``other`` left.
    for mine, theirs in zip(twin.net.learnable_params, one.net.learnable_params):
        mine.blob.data[...] = theirs.blob.data
    one.step(1)
    twin.step(1)
    for mine, theirs in zip(twin.net.learnable_params, one.net.learnable_params):
        assert np.array_equal(mine.blob.data, theirs.blob.data)
    assert np.shares_memory(one.net.params["ip1"][0].data, one._flat[0].data)


# ---------------------------------------------------------------------------
# Resume and the guard


def test_resume_is_bit_exact_with_shared_and_frozen_parameters(tmp_path):
    def fresh():
        solver = mlp_solver("Adam", clip=0.5)
        solver.snapshot_prefix = str(tmp_path / "mlp")
        return solver

    straight = fresh()
    straight.step(6)
    first = fresh()
    first.step(3)
    path = first.snapshot()
    resumed = fresh()
    resumed.step(1)          # moved away, then restored
    resumed.restore(path)
    resumed.step(3)
    for a, b in zip(straight.net.learnable_params, resumed.net.learnable_params):
        assert np.array_equal(a.blob.data, b.blob.data)
    for key in straight.history:
        assert np.array_equal(straight.history[key], resumed.history[key]), key


def overflowing_backward(layer, value):
    original = layer.backward_cpu

    def backward(tops, propagate_down, bottoms):
        original(tops, propagate_down, bottoms)
        layer.blobs[0].diff[0, 0] = value
    return backward


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_guard_tells_an_overflowing_norm_from_a_non_finite_gradient(monkeypatch):
    solver = mlp_solver("SGD", clip=1.0, net=mlp_net(np.float32), iter_size=1)
    layer = solver.net.layer_dict["ip4"]
    # 1e20 squared overflows float32: the sum of squares is inf, yet every
    # gradient is finite, so training goes on (clipped by clip / inf = 0).
    monkeypatch.setattr(layer, "backward_cpu", overflowing_backward(layer, 1e20))
    weights = solver.net.params["ip4"][0].data.copy()
    solver.step(1)
    assert solver.iter == 1
    # Only the weight decay moved them: rate 0.2 x 1.5, decay 0.05 x 2.
    np.testing.assert_allclose(solver.net.params["ip4"][0].data, weights * (1 - 0.3 * 0.1),
                               rtol=1e-6)
    monkeypatch.setattr(layer, "backward_cpu", overflowing_backward(layer, np.nan))
    with pytest.raises(NumericalError, match=r"iteration 1: non-finite values \(nan\) in the "
                       r"gradient of parameter 0 of layer 'ip4' \(type InnerProduct\)"):
        solver.step(1)
    assert solver.iter == 1


# ---------------------------------------------------------------------------
# Counts on the stand-in CuPy

def deep_mlp(layers):
    """An MLP with ``layers`` InnerProduct layers (2 parameters each)."""
    text = MLP[:MLP.index('layer { name: "ip1"')]
    bottom = "data"
    for i in range(layers):
        out = 3 if i == layers - 1 else 6
        text += (f'layer {{ name: "ip{i}" type: "InnerProduct" bottom: "{bottom}" '
                 f'top: "h{i}" param {{ lr_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }} '
                 f'inner_product_param {{ num_output: {out} weight_filler {{ type: "gaussian" '
                 f'std: 0.3 }} }} }}\n')
        bottom = f"h{i}"
    return text + (f'layer {{ name: "loss" type: "EuclideanLoss" bottom: "{bottom}" '
                   f'bottom: "target" top: "loss" }}\n')


@contextlib.contextmanager
def labelled(net):
    """Count the net's own work apart from the solver's."""
    forward, backward = net.forward, net.backward

    def run(function, label):
        def call(*args, **kwargs):
            with COUNTS.at(label):
                return function(*args, **kwargs)
        return call
    net.forward, net.backward = run(forward, "net"), run(backward, "net")
    yield


def solver_counts(layers, kind, iter_size, device_count=1, index=0, on_event=None):
    """Per-iteration events of the solver alone (not its net), on the
    stand-in GPU ``index``: a Counter."""
    with installed(device_count) as cupy:
        net = Net(deep_mlp(layers), "TRAIN", device=Device("gpu", index), seed=0)
        net.blobs["data"].data[...] = 0.5
        net.blobs["target"].data[...] = 0.1
        solver = Solver(f'lr_policy: "fixed" weight_decay: 0.001 clip_gradients: 0.01 '
                        f'iter_size: {iter_size} {solver_fields(kind)}\n', net=net,
                        stream=None, seed=0)
        with labelled(net):
            solver.step(1)                  # warm-up
            COUNTS.reset()
            add = COUNTS.add
            if on_event is not None:
                COUNTS.add = lambda event, n=1: (on_event(cupy, event), add(event, n))
            try:
                with COUNTS.at("solver"):
                    solver.step(2)
            finally:
                COUNTS.add = add
        return {event: n / 2 for event, n in COUNTS.table["solver"].items()}


# Array operations per iteration (iter_size 1, clipping on, one decay run,
# two lr runs): clear, the sum of squares, clip, decay (x, +), lr (2 runs),
# the rule's own operations, data -= diff.
OPS = {"SGD": 11, "Nesterov": 15, "AdaGrad": 13, "RMSProp": 15, "AdaDelta": 21, "Adam": 18}


@pytest.mark.parametrize("kind", TYPES)
def test_solver_work_per_iteration_does_not_grow_with_the_parameters(kind):
    small, large = solver_counts(2, kind, 1), solver_counts(12, kind, 1)
    assert small == large
    syncs = sum(small.get(e, 0) for e in ("d2h", "scalar_sync", "explicit_sync"))
    assert syncs == 1                    # the guard's (and clipping's) sum of squares
    assert small["array_op"] <= OPS[kind]
    # The guard runs after each forward/backward pass: one sync each.
    assert sum(solver_counts(2, kind, 3).get(e, 0) for e in ("scalar_sync", "d2h")) == 3


def test_every_solver_operation_runs_on_the_solvers_device():
    wrong = []

    def check(cupy, event):
        if COUNTS.where() == "solver" and cupy.cuda.runtime.getDevice() != 1:
            wrong.append(event)

    counts = solver_counts(3, "SGD", 1, device_count=2, index=1, on_event=check)
    assert counts["array_op"] > 0 and wrong == []


@pytest.mark.gpu
def test_gpu_flat_update_matches_cpu():
    cpu = mlp_solver("Adam", clip=0.5)
    gpu = mlp_solver("Adam", clip=0.5, net=mlp_net(device=Device("gpu")))
    cpu.step(3)
    gpu.step(3)
    for a, b in zip(cpu.net.learnable_params, gpu.net.learnable_params):
        np.testing.assert_allclose(to_numpy(b.blob.data), a.blob.data, rtol=1e-10, atol=1e-13)
