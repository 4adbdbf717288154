"""Caffe's six solver types: each update against a plainly written reference
of Caffe's formula, exact resume for each, the tiny R-FCN trained by
``python -m solver.train --solver FILE`` with each, and the solver-file
errors of the types' fields."""
import json
from pathlib import Path

import numpy as np
import pytest

from netdef import caffe_pb2
from netdef.device import Device, to_numpy
from netdef.errors import NetDefinitionError
from netdef.net import Net
from solver import train
from detection.datasets.synthetic import generate
from solver.sgd import SGDSolver, Solver, create_solver
from solver.snapshot import SolverState
from tests.solver.test_sgd import CLASSIFIER  # draws every forward (DummyData, Dropout)
from solver.update_rules import RULES, Adam, create_rule

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "prototxt" / "rfcn_tiny.prototxt")
TYPES = ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"]

# The fields of each type in the tests: delta is large enough that where
# it is added (outside the square root, to both AdaDelta histories) matters.
FIELDS = {
    "SGD": dict(base_lr=0.2, momentum=0.9),
    "Nesterov": dict(base_lr=0.2, momentum=0.9),
    "AdaGrad": dict(base_lr=0.1, delta=1e-3),
    "RMSProp": dict(base_lr=0.05, rms_decay=0.9, delta=1e-3),
    "AdaDelta": dict(base_lr=1.0, momentum=0.9, delta=1e-3),
    "Adam": dict(base_lr=0.05, momentum=0.9, momentum2=0.99, delta=1e-3),
}


def solver_fields(kind, **changes):
    fields = {**FIELDS[kind], **changes}
    return f'type: "{kind}" ' + " ".join(f"{k}: {v}" for k, v in fields.items())


def f32(value):
    """A solver field as the solver reads it (float32, as in Caffe)."""
    return float(np.float32(value))


# ---------------------------------------------------------------------------
# One update against Caffe's formula

REGRESSOR = """
name: "regressor"
layer { name: "input" type: "Input" top: "data" top: "target"
  input_param { shape { dim: 3 dim: 4 } shape { dim: 3 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "pred"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.2 }
                        bias_filler { type: "gaussian" std: 0.2 } } }
layer { name: "loss" type: "SmoothL1Loss" bottom: "pred" bottom: "target" top: "loss" }
"""


def regressor_solver(kind, device=None):
    net = Net(REGRESSOR, "TRAIN", dtype=np.float64, seed=3, device=device or Device("cpu"))
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.uniform(-0.5, 0.5, (3, 4))
    net.blobs["target"].data[...] = rng.uniform(-0.5, 0.5, (3, 2))
    text = (f'lr_policy: "step" gamma: 0.5 stepsize: 2 weight_decay: 0.05 iter_size: 2 '
            f'max_iter: 10 {solver_fields(kind)}\n')
    return SGDSolver(text, net=net, stream=None, seed=0)


def gradients(x, t, w, b):
    """SmoothL1 (sigma 1, every |d| < 1 here) of pred = x W^T + b:
    d pred = d / N."""
    d = x @ w.T + b - t
    assert np.all(np.abs(d) < 1)
    n = x.shape[0]
    return (d / n).T @ x, (d / n).sum(axis=0)


def caffe_update(kind, g, history, rate, it):
    """Caffe's ComputeUpdateValue for one parameter, written out:
    ``(update value, new history list)``."""
    f = {k: f32(v) for k, v in FIELDS[kind].items()}
    if kind == "SGD":
        v = f["momentum"] * history[0] + rate * g
        return v, [v]
    if kind == "Nesterov":
        m, v = f["momentum"], history[0]
        new = m * v + rate * g
        return (1 + m) * new - m * v, [new]
    if kind == "AdaGrad":
        s = history[0] + g ** 2
        return rate * g / (np.sqrt(s) + f["delta"]), [s]
    if kind == "RMSProp":
        s = f["rms_decay"] * history[0] + (1 - f["rms_decay"]) * g ** 2
        return rate * g / (np.sqrt(s) + f["delta"]), [s]
    if kind == "AdaDelta":
        m, eps = f["momentum"], f["delta"]
        s = m * history[0] + (1 - m) * g ** 2
        dx = g * np.sqrt((history[1] + eps) / (s + eps))
        d = m * history[1] + (1 - m) * dx ** 2
        return rate * dx, [s, d]
    b1, b2, eps, t = f["momentum"], f["momentum2"], f["delta"], it + 1
    m = b1 * history[0] + (1 - b1) * g
    v = b2 * history[1] + (1 - b2) * g ** 2
    correction = np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    return rate * correction * m / (np.sqrt(v) + eps), [m, v]


@pytest.mark.parametrize("kind", TYPES)
def test_update_matches_caffes_formula(kind):
    solver = regressor_solver(kind)
    net = solver.net
    x, t = net.blobs["data"].data.copy(), net.blobs["target"].data.copy()
    w, b = (blob.data.copy() for blob in net.params["ip"])
    w0 = w
    slots = len(RULES[kind].suffixes)
    hw, hb = [np.zeros_like(w)] * slots, [np.zeros_like(b)] * slots
    base_lr, decay = f32(FIELDS[kind]["base_lr"]), f32(0.05)
    for it in range(5):
        gw, gb = gradients(x, t, w, b)   # two passes summed, then / iter_size
        gw = gw + decay * w              # L2 weight decay x decay_mult (0 for b)
        lr = base_lr * 0.5 ** (it // 2)  # step policy
        uw, hw = caffe_update(kind, gw, hw, lr * 1, it)
        ub, hb = caffe_update(kind, gb, hb, lr * 2, it)
        w, b = w - uw, b - ub
        solver.step(1)
        np.testing.assert_allclose(net.params["ip"][0].data, w, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(net.params["ip"][1].data, b, rtol=1e-12, atol=1e-15)
        # Caffe leaves the update value in the diff.
        np.testing.assert_allclose(net.params["ip"][0].diff, uw, rtol=1e-12, atol=1e-15)
        for key, expected in zip(solver.rule.history_keys("ip/0"), hw):
            np.testing.assert_allclose(solver.history[key], expected, rtol=1e-12, atol=1e-15)
        for key, expected in zip(solver.rule.history_keys("ip/1"), hb):
            np.testing.assert_allclose(solver.history[key], expected, rtol=1e-12, atol=1e-15)
    assert np.abs(w - w0).max() > 1e-3  # the weights moved


def test_history_keys_say_which_rule_kept_them():
    keys = {kind: sorted(regressor_solver(kind).history) for kind in TYPES}
    assert keys["SGD"] == keys["Nesterov"] == ["ip/0", "ip/1"]   # the keys snapshots always had
    assert keys["AdaGrad"] == ["ip/0/grad_sq_sum", "ip/1/grad_sq_sum"]
    assert keys["RMSProp"] == ["ip/0/grad_sq_mean", "ip/1/grad_sq_mean"]
    assert keys["AdaDelta"] == ["ip/0/grad_sq_mean", "ip/0/update_sq_mean",
                                "ip/1/grad_sq_mean", "ip/1/update_sq_mean"]
    assert keys["Adam"] == ["ip/0/m", "ip/0/v", "ip/1/m", "ip/1/v"]


# ---------------------------------------------------------------------------
# Exact resume


def write_classifier(folder, kind, **changes):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "net.prototxt").write_text(CLASSIFIER)
    path = folder / f"{kind}_solver.prototxt"
    path.write_text(f'net: "net.prototxt"\nlr_policy: "fixed"\nweight_decay: 0.001\n'
                    f'iter_size: 2\nclip_gradients: 2.0\nmax_iter: 6\n'
                    f'snapshot_prefix: "snaps/{kind}"\n{solver_fields(kind, **changes)}\n')
    return path


def state_of(solver):
    weights = {f"{name}/{i}": to_numpy(blob.data).copy()
               for name, layer in solver.net.layer_dict.items() for i, blob in enumerate(layer.blobs)}
    history = {key: to_numpy(array).copy() for key, array in solver.history.items()}
    return weights, history, solver.iter, list(solver.loss_window)


def assert_same_state(a, b):
    (wa, ha, ia, la), (wb, hb, ib, lb) = state_of(a), state_of(b)
    assert (ia, la) == (ib, lb)
    assert wa.keys() == wb.keys() and ha.keys() == hb.keys()
    for key in wa:
        assert np.array_equal(wa[key], wb[key]), key
    for key in ha:
        assert np.array_equal(ha[key], hb[key]), key


@pytest.mark.parametrize("kind", TYPES)
def test_resume_is_bit_exact(kind, tmp_path):
    path = write_classifier(tmp_path, kind)
    straight = Solver(path, stream=None, seed=4)
    straight.step(6)
    first = Solver(path, stream=None, seed=4)
    first.step(3)
    snapshot = first.snapshot()
    stored = SolverState.load(snapshot).history
    assert set(stored) == set(first.history)
    resumed = Solver(path, stream=None)
    resumed.restore(snapshot)
    resumed.step(3)
    assert_same_state(straight, resumed)
    assert resumed.rule.type == kind


def test_a_snapshot_of_another_rule_resumes_with_a_note(tmp_path):
    sgd = Solver(write_classifier(tmp_path, "SGD"), stream=None, seed=1)
    sgd.step(1)
    snapshot = sgd.snapshot()
    log = tmp_path / "log.jsonl"
    adam = Solver(write_classifier(tmp_path, "Adam"), stream=None, log=str(log))
    adam.restore(snapshot)
    assert adam.iter == 1
    assert all(not array.any() for array in adam.history.values())
    record = [json.loads(line) for line in log.read_text().splitlines()][-1]
    assert "is not the history of solver type 'Adam'" in record["message"]


# ---------------------------------------------------------------------------
# The solver file

def test_type_by_string_legacy_enum_and_factory(tmp_path):
    path = write_classifier(tmp_path, "SGD")
    for text, kind in [('type: "Adam" momentum: 0.9', "Adam"),
                       ("solver_type: ADADELTA momentum: 0.95", "AdaDelta"),
                       ("solver_type: NESTEROV momentum: 0.9", "Nesterov"),
                       ("base_lr: 0.1", "SGD")]:
        solver = create_solver(f'net: "{path.parent / "net.prototxt"}" lr_policy: "fixed" '
                               f'{text}\n', stream=None, seed=0)
        assert isinstance(solver, Solver) and solver.rule.type == kind
        assert f"type={kind!r}" in repr(solver)
    assert SGDSolver is Solver


@pytest.mark.parametrize("kind, change, message", [
    ("Adam", {"momentum": 1.0}, r"solver type 'Adam' needs momentum in \[0, 1\), found 1"),
    ("Adam", {"momentum2": 1.5}, r"solver type 'Adam' needs momentum2 in \[0, 1\), found 1.5"),
    ("Adam", {"delta": 0}, r"solver type 'Adam' needs delta > 0, found 0"),
    ("RMSProp", {"rms_decay": 1}, r"needs rms_decay in \[0, 1\), found 1"),
    ("RMSProp", {"momentum": 0.9},
     r"needs momentum 0 \(momentum cannot be used with RMSProp\), found 0.9"),
    ("AdaGrad", {"momentum": 0.5}, r"needs momentum 0 \(momentum cannot be used with AdaGrad\)"),
    ("AdaDelta", {"momentum": -0.1}, r"'AdaDelta' needs momentum in \[0, 1\), found -0.1"),
    ("Nesterov", {"momentum": 1.2}, r"'Nesterov' needs momentum in \[0, 1\), found 1.2"),
    ("SGD", {"momentum": 1.0}, r"'SGD' needs momentum in \[0, 1\), found 1"),
])
def test_invalid_fields_name_the_file_type_and_field(tmp_path, kind, change, message):
    path = write_classifier(tmp_path, kind, **change)
    with pytest.raises(NetDefinitionError, match=message) as info:
        Solver(path, stream=None, seed=0)
    assert str(info.value).startswith(f"{path}: ")


def test_unknown_type_lists_the_known_ones():
    param = caffe_pb2.SolverParameter(type="adam")
    with pytest.raises(NetDefinitionError, match=r"^s.prototxt: unknown solver type 'adam' "
                       r"\(known: SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam\); "
                       r"did you mean 'Adam'"):
        create_rule(param, "s.prototxt")
    assert isinstance(create_rule(caffe_pb2.SolverParameter(type="Adam"), "x"), Adam)


def test_a_message_can_be_named_for_errors(tmp_path):
    param = caffe_pb2.SolverParameter(type="Adam", momentum=1.0, base_lr=0.1)
    net = Net(REGRESSOR, "TRAIN", dtype=np.float64, seed=0)
    with pytest.raises(NetDefinitionError, match=r"^<SolverParameter>: solver type 'Adam'"):
        Solver(param, net=net, stream=None)
    with pytest.raises(NetDefinitionError, match=r"^--solver adam.prototxt: solver type 'Adam' "
                       r"needs momentum"):
        Solver(param, net=net, stream=None, source="--solver adam.prototxt")


# ---------------------------------------------------------------------------
# The tiny R-FCN, through python -m solver.train

SOLVER_FILES = {
    "SGD": 'type: "SGD" base_lr: 0.005 momentum: 0.9',
    "Nesterov": 'type: "Nesterov" base_lr: 0.005 momentum: 0.9',
    "AdaGrad": 'type: "AdaGrad" base_lr: 0.001',
    "RMSProp": 'type: "RMSProp" base_lr: 0.0001 rms_decay: 0.98',
    "AdaDelta": 'solver_type: ADADELTA base_lr: 1.0 momentum: 0.95 delta: 1e-6',
    "Adam": 'type: "Adam" base_lr: 0.001 momentum: 0.9 momentum2: 0.999',
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("data") / "shapes", num_train=8, num_test=4, seed=3)


@pytest.mark.parametrize("kind", TYPES)
def test_tiny_rfcn_trains_with_each_type(kind, data, tmp_path):
    solver = tmp_path / f"{kind}.prototxt"
    solver.write_text(f'{SOLVER_FILES[kind]}\nlr_policy: "fixed"\nweight_decay: 0.0005\n'
                      f'max_iter: 3\ndisplay: 1\nrandom_seed: 0\n')
    out = tmp_path / "out"
    assert train.main([TINY, "--solver", str(solver), "--data", data, "--out", str(out),
                       "--no-eval"]) == 0
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["event"] == "train"]
    assert len(losses) == 3 and all(np.isfinite(losses))
    state = SolverState.load(out / "rfcn_tiny_iter_3.solverstate.npz")
    # The rule's history went into the snapshot: as many arrays per
    # parameter as it keeps, under its suffixes.
    suffixes = RULES[kind].suffixes

    def parameter(key):
        return next((key[:-len(s)] for s in suffixes if s and key.endswith(s)), key)

    parameters = {parameter(key) for key in state.history}
    assert parameters and parameters <= set(state.weights)
    assert len(state.history) == len(parameters) * len(suffixes)


# ---------------------------------------------------------------------------
# GPU

@pytest.mark.gpu
@pytest.mark.parametrize("kind", TYPES)
def test_gpu_update_matches_cpu(kind):
    cpu, gpu = regressor_solver(kind), regressor_solver(kind, device=Device("gpu"))
    cpu.step(4)
    gpu.step(4)
    for name in ("ip",):
        for a, b in zip(cpu.net.params[name], gpu.net.params[name]):
            np.testing.assert_allclose(to_numpy(b.data), a.data, rtol=1e-10, atol=1e-13)
    for key, array in cpu.history.items():
        np.testing.assert_allclose(to_numpy(gpu.history[key]), array, rtol=1e-10, atol=1e-13)
