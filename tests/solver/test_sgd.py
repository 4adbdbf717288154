"""SGDSolver: Caffe's update order against a hand computation, exact resume,
the NaN/Inf guard, Ctrl-C, testing, logging and solver-file errors."""
import io
import json
import os
import signal

import numpy as np
import pytest

from netdef.device import Device, to_numpy
from netdef.errors import NetDefinitionError, NumericalError
from netdef.net import Net
from solver.progress import Progress, format_duration
from solver.sgd import SGDSolver

# A classifier whose every forward draws: DummyData (fresh gaussian data and
# uniform labels truncated to 0..2) and Dropout (a fresh mask).
CLASSIFIER = """
name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 5 } shape { dim: 4 }
    data_filler { type: "gaussian" std: 1 }
    data_filler { type: "uniform" min: 0 max: 2.99 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.3 }
                        bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "drop" type: "Dropout" bottom: "ip1" top: "ip1" dropout_param { dropout_ratio: 0.3 } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc"
  include { phase: TEST } }
"""

CLASSIFIER_SOLVER = """
net: "net.prototxt"
base_lr: 0.05
lr_policy: "multistep"
stepvalue: 3
stepvalue: 5
gamma: 0.5
momentum: 0.9
weight_decay: 0.001
iter_size: 2
average_loss: 3
clip_gradients: 2.0
display: 1
max_iter: 8
snapshot: 0
snapshot_prefix: "snaps/tiny"
test_iter: 2
test_interval: 3
"""


def write_classifier(folder, solver_text=CLASSIFIER_SOLVER, net_text=CLASSIFIER):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "net.prototxt").write_text(net_text)
    path = folder / "solver.prototxt"
    path.write_text(solver_text)
    return path


def make_solver(path, **kwargs):
    kwargs.setdefault("stream", None)
    kwargs.setdefault("dtype", np.float64)
    return SGDSolver(path, **kwargs)


def weights(solver):
    return {f"{name}/{i}": to_numpy(blob.data).copy()
            for name, layer in solver.net.layer_dict.items() for i, blob in enumerate(layer.blobs)}


def assert_same_state(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert np.array_equal(wa[key], wb[key]), key
    assert a.history.keys() == b.history.keys()
    for key in a.history:
        assert np.array_equal(to_numpy(a.history[key]), to_numpy(b.history[key])), key
    assert a.iter == b.iter
    assert list(a.loss_window) == list(b.loss_window)
    assert a.rng.bit_generator.state == b.rng.bit_generator.state


# ---------------------------------------------------------------------------
# The update, by hand

REGRESSOR = """
name: "regressor"
layer { name: "input" type: "Input" top: "data" top: "target"
  input_param { shape { dim: 3 dim: 4 } shape { dim: 3 dim: 2 } } }
layer { name: "frozen" type: "InnerProduct" bottom: "data" top: "hidden"
  param { lr_mult: 0 } param { lr_mult: 0 }
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 }
                        bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "ip" type: "InnerProduct" bottom: "hidden" top: "pred"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.2 }
                        bias_filler { type: "gaussian" std: 0.2 } } }
layer { name: "loss" type: "SmoothL1Loss" bottom: "pred" bottom: "target" top: "loss" }
"""


def regressor_solver(extra, iter_size=2, regularization="L2", device=None):
    net = Net(REGRESSOR, "TRAIN", dtype=np.float64, seed=3, device=device or Device("cpu"))
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.uniform(-0.5, 0.5, (3, 4))
    net.blobs["target"].data[...] = rng.uniform(-0.5, 0.5, (3, 2))
    text = (f'base_lr: 0.2 lr_policy: "step" gamma: 0.5 stepsize: 2 momentum: 0.9 '
            f'weight_decay: 0.05 iter_size: {iter_size} regularization_type: "{regularization}" '
            f'max_iter: 10 {extra}\n')
    return SGDSolver(text, net=net, stream=None, seed=0)


def hand_gradients(x, t, w1, b1, w, b):
    """SmoothL1 (sigma 1, every |d| < 1 here) of pred = h W^T + b,
    h = x W1^T + b1: loss = sum(0.5 d^2) / N; d pred = d / N."""
    h = x @ w1.T + b1
    d = h @ w.T + b - t
    assert np.all(np.abs(d) < 1)
    n = x.shape[0]
    return 0.5 * (d ** 2).sum() / n, (d / n).T @ h, (d / n).sum(axis=0)


@pytest.mark.parametrize("regularization", ["L2", "L1"])
def test_update_follows_caffe_order(regularization):
    solver = regressor_solver("", regularization=regularization)
    net = solver.net
    x, t = net.blobs["data"].data.copy(), net.blobs["target"].data.copy()
    w1, b1 = (blob.data.copy() for blob in net.params["frozen"])
    w, b = (blob.data.copy() for blob in net.params["ip"])
    _, gw, gb = hand_gradients(x, t, w1, b1, w, b)
    # Clip between |g| and |2g|: the accumulated (iter_size = 2) gradient is
    # clipped before it is divided by iter_size, as in Caffe.
    norm = np.sqrt((gw ** 2).sum() + (gb ** 2).sum())
    clip = 1.5 * norm
    clip = float(np.float32(clip))  # the solver's fields are float32, as in Caffe
    solver.param.clip_gradients = clip
    momentum, decay_rate, base_lr, gamma = (float(np.float32(v)) for v in (0.9, 0.05, 0.2, 0.5))

    hw, hb = np.zeros_like(w), np.zeros_like(b)
    for it in range(5):
        loss, gw, gb = hand_gradients(x, t, w1, b1, w, b)
        gw, gb = 2 * gw, 2 * gb                       # two forward/backward passes
        total = np.sqrt((gw ** 2).sum() + (gb ** 2).sum())
        if total > clip:                              # clip
            gw, gb = gw * (clip / total), gb * (clip / total)
        gw, gb = gw * 0.5, gb * 0.5                   # normalize by iter_size
        decay = np.sign(w) if regularization == "L1" else w
        gw = gw + decay_rate * 1 * decay              # weight decay x decay_mult (0 for b)
        lr = base_lr * gamma ** (it // 2)             # step policy
        hw = momentum * hw + lr * 1 * gw              # momentum, lr x lr_mult
        hb = momentum * hb + lr * 2 * gb
        w, b = w - hw, b - hb
        solver.step(1)
        assert solver.loss_window[-1] == pytest.approx(loss, rel=1e-12)
        np.testing.assert_allclose(net.params["ip"][0].data, w, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(net.params["ip"][1].data, b, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(solver.history["ip/0"], hw, rtol=1e-12, atol=1e-15)
        # Caffe leaves the update value in the diff.
        np.testing.assert_allclose(net.params["ip"][0].diff, hw, rtol=1e-12, atol=1e-15)
    # lr_mult 0: untouched, and no history kept for it.
    assert np.array_equal(net.params["frozen"][0].data, w1)
    assert set(solver.history) == {"ip/0", "ip/1"}
    assert solver.iter == 5


def test_no_clipping_below_the_threshold_and_iter_size_one():
    solver = regressor_solver("clip_gradients: 1000", iter_size=1)
    net = solver.net
    x, t = net.blobs["data"].data.copy(), net.blobs["target"].data.copy()
    w1, b1 = (blob.data.copy() for blob in net.params["frozen"])
    w, b = (blob.data.copy() for blob in net.params["ip"])
    _, gw, gb = hand_gradients(x, t, w1, b1, w, b)
    solver.step(1)
    lr = float(np.float32(0.2))  # base_lr is a float32 field, as in Caffe
    np.testing.assert_allclose(net.params["ip"][0].data,
                               w - lr * (gw + float(np.float32(0.05)) * w), rtol=1e-12)
    np.testing.assert_allclose(net.params["ip"][1].data, b - lr * 2 * gb, rtol=1e-12)


# ---------------------------------------------------------------------------
# Exact resume

def test_resume_is_exact_with_dropout_and_dummy_data(tmp_path):
    path = write_classifier(tmp_path)
    straight = make_solver(path, seed=11)
    straight.step(8)

    first = make_solver(path, seed=11)
    first.step(4)
    snapshot = first.snapshot()
    assert snapshot == str(tmp_path / "snaps" / "tiny_iter_4.solverstate.npz")
    # A fresh solver with another seed (random_seed is unset in the file):
    # restore brings back the weights, momentum, loss window and every
    # layer's seed and random state.
    saved_rng = first.rng.bit_generator.state
    resumed = make_solver(path)
    assert resumed.seed != 11
    assert resumed.rng.bit_generator.state != saved_rng
    resumed.restore(snapshot)
    assert resumed.iter == 4
    # the solver's own generator is restored as saved (another seed made it
    # differ before)
    assert resumed.rng.bit_generator.state == saved_rng
    resumed.step(4)
    assert_same_state(straight, resumed)
    # The test net's draws resume too.
    assert straight.test() == resumed.test()


def test_resume_float32_by_solve(tmp_path):
    path = write_classifier(tmp_path, CLASSIFIER_SOLVER.replace("snapshot: 0", "snapshot: 3"))
    straight = make_solver(path, seed=5, dtype=np.float32)
    straight.solve()
    assert straight.iter == 8
    # snapshot_after_train: the final iteration is saved too.
    assert straight.last_snapshot.endswith("tiny_iter_8.solverstate.npz")
    resumed = make_solver(path, seed=5, dtype=np.float32)
    resumed.solve(resume=str(tmp_path / "snaps" / "tiny_iter_6.solverstate.npz"))
    assert_same_state(straight, resumed)


class Counter:
    """A state provider standing for a data sampler's position."""

    def __init__(self):
        self.position = 0

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


def test_state_providers_and_metadata_travel_with_the_snapshot(tmp_path):
    path = write_classifier(tmp_path)
    counter = Counter()
    solver = make_solver(path, seed=1, state_providers={"sampler": counter},
                         metadata={"bbox_means": [0, 0, 0, 0], "classes": ["a", "b"]})
    solver.step(2)
    counter.position = 17
    snapshot = solver.snapshot()

    fresh = Counter()
    resumed = make_solver(path, state_providers={"sampler": fresh})
    metadata = resumed.restore(snapshot)
    assert fresh.position == 17
    assert metadata == {"bbox_means": [0, 0, 0, 0], "classes": ["a", "b"]}
    assert resumed.metadata == metadata


def test_a_provider_state_must_be_json(tmp_path):
    path = write_classifier(tmp_path)

    class Bad:
        def get_state(self):
            return {"position": np.int64(3)}

        def set_state(self, state):
            pass

    solver = make_solver(path, seed=1, state_providers={"sampler": Bad()})
    with pytest.raises(TypeError, match="state of provider 'sampler' is not JSON-serialisable"):
        solver.step(1)


# ---------------------------------------------------------------------------
# The NaN / Inf guard

def guarded_solver(tmp_path, **kwargs):
    net = Net(REGRESSOR, "TRAIN", dtype=np.float32, seed=3)
    net.blobs["data"].data[...] = 0.1
    net.blobs["target"].data[...] = 0.0
    text = (f'base_lr: 0.01 lr_policy: "fixed" momentum: 0.9 snapshot: 2 '
            f'snapshot_prefix: "{tmp_path / "guard"}" max_iter: 100\n')
    return SGDSolver(text, net=net, stream=None, seed=0, **kwargs)


@pytest.mark.filterwarnings("ignore:.*encountered:RuntimeWarning")
def test_nan_guard_names_the_blob_and_layer_and_keeps_the_last_snapshot(tmp_path):
    solver = guarded_solver(tmp_path)
    solver.step(4)
    last = str(tmp_path / "guard_iter_4.solverstate.npz")
    assert solver.last_snapshot == last
    before = open(last, "rb").read()
    # Inputs that overflow float32 in the first InnerProduct.
    solver.net.blobs["data"].data[...] = 3e38
    with pytest.raises(NumericalError) as info:
        solver.step(2)
    message = str(info.value)
    assert "iteration 4" in message
    assert "blob 'hidden', the output of layer 'frozen' (type InnerProduct)" in message
    assert f"The last good snapshot is {last} (iteration 4)" in message
    assert (info.value.blob, info.value.layer) == ("hidden", "frozen")
    assert solver.iter == 4
    assert open(last, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == [
        "guard_iter_2.caffemodel", "guard_iter_2.solverstate.npz",
        "guard_iter_4.caffemodel", "guard_iter_4.solverstate.npz"]


def test_nan_guard_finds_a_gradient_made_in_backward(tmp_path, monkeypatch):
    solver = guarded_solver(tmp_path)
    layer = solver.net.layer_dict["loss"]
    original = layer.backward_cpu

    def broken_backward(tops, propagate_down, bottoms):
        original(tops, propagate_down, bottoms)
        bottoms[0].diff[0, 0] = np.nan

    monkeypatch.setattr(layer, "backward_cpu", broken_backward)
    with pytest.raises(NumericalError, match="no snapshot was written|No snapshot") as info:
        solver.step(1)
    assert ("non-finite values (nan) in the gradient of blob 'pred', computed by the "
            "backward of layer 'loss' (type SmoothL1Loss)") in str(info.value)
    assert solver.iter == 0


@pytest.mark.filterwarnings("ignore:.*encountered:RuntimeWarning")
def test_after_the_guard_fires_the_solver_is_at_the_failing_iterations_start(
        tmp_path, monkeypatch):
    path = write_classifier(tmp_path)
    straight = make_solver(path, seed=6)
    straight.step(4)
    solver = make_solver(path, seed=6)
    layer = solver.net.layer_dict["loss"]
    original, calls = layer.backward_cpu, [0]

    def broken_backward(tops, propagate_down, bottoms):
        original(tops, propagate_down, bottoms)
        calls[0] += 1
        if calls[0] == 4:  # iteration 1, second pass
            bottoms[0].diff[...] = np.inf

    monkeypatch.setattr(layer, "backward_cpu", broken_backward)
    with pytest.raises(NumericalError, match="iteration 1: non-finite values \\(inf\\) in the "
                       "gradient of blob 'ip2', computed by the backward of layer 'loss'"):
        solver.step(4)
    monkeypatch.undo()
    assert solver.iter == 1
    solver.step(3)
    assert_same_state(straight, solver)


@pytest.mark.filterwarnings("ignore:.*encountered:RuntimeWarning")
def test_huge_learning_rate_is_caught(tmp_path):
    solver = guarded_solver(tmp_path)
    solver.param.base_lr = 1e38
    solver.lr_policy.base_lr = 1e38
    with pytest.raises(NumericalError, match="non-finite values") as info:
        solver.step(10)
    assert info.value.layer is not None
    # Weights that overflowed are never saved.
    assert not any(name.endswith(".solverstate.npz") and name != "guard_iter_2.solverstate.npz"
                   for name in os.listdir(tmp_path))


def test_a_snapshot_of_non_finite_weights_is_refused(tmp_path):
    solver = guarded_solver(tmp_path)
    solver.step(2)
    solver.net.params["ip"][1].data[1] = np.inf
    with pytest.raises(NumericalError, match=r"parameter 1 of layer 'ip' \(type InnerProduct\) "
                       r"holds non-finite values \(inf\).*last good snapshot is .*guard_iter_2"):
        solver.snapshot()
    assert solver.last_snapshot.endswith("guard_iter_2.solverstate.npz")


# ---------------------------------------------------------------------------
# Ctrl-C

def interrupt_on_call(monkeypatch, layer, call, action):
    """Make ``layer``'s forward run ``action`` on its ``call``-th run (1-based)."""
    original = layer.forward_cpu
    count = [0]

    def forward(bottoms, tops):
        count[0] += 1
        if count[0] == call:
            action()
        return original(bottoms, tops)

    monkeypatch.setattr(layer, "forward_cpu", forward)


def test_keyboard_interrupt_mid_iteration_saves_the_last_completed_one(tmp_path, monkeypatch):
    path = write_classifier(tmp_path)
    straight = make_solver(path, seed=3)
    straight.step(8)

    solver = make_solver(path, seed=3)

    def stop():
        raise KeyboardInterrupt

    # iter_size 2: forwards 1-8 are iterations 0-3; the 10th is the second
    # pass of iteration 4, after its first pass drew data and a mask.
    interrupt_on_call(monkeypatch, solver.net.layer_dict["ip2"], 10, stop)
    with pytest.raises(KeyboardInterrupt):
        solver.step(8)
    expected = str(tmp_path / "snaps" / "tiny_iter_4.solverstate.npz")
    assert solver.interrupt_snapshot == expected
    assert solver.iter == 4
    resumed = make_solver(path)
    resumed.restore(expected)
    resumed.step(4)
    assert_same_state(straight, resumed)


def test_ctrl_c_signal_finishes_the_iteration_then_snapshots(tmp_path, monkeypatch):
    path = write_classifier(tmp_path)
    straight = make_solver(path, seed=3)
    straight.step(8)

    before = signal.getsignal(signal.SIGINT)
    stream = io.StringIO()
    solver = make_solver(path, seed=3, stream=stream)
    # During iteration 2 (forwards 5 and 6).
    interrupt_on_call(monkeypatch, solver.net.layer_dict["ip2"], 5,
                      lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        solver.step(8)
    assert solver.iter == 3
    assert solver.interrupt_snapshot.endswith("tiny_iter_3.solverstate.npz")
    assert "Ctrl-C: stopping after this iteration" in stream.getvalue()
    assert "the snapshot of iteration 3 (the last completed one)" in stream.getvalue()
    assert signal.getsignal(signal.SIGINT) is before
    resumed = make_solver(path)
    resumed.restore(solver.interrupt_snapshot)
    resumed.step(5)
    assert_same_state(straight, resumed)


# ---------------------------------------------------------------------------
# Testing, display, the log

def test_test_averages_outputs_over_test_iter(tmp_path):
    path = write_classifier(tmp_path)
    solver = make_solver(path, seed=2)
    solver.step(2)
    # An identical test net, run by hand with the train weights.
    twin = Net(tmp_path / "net.prototxt", "TEST", dtype=np.float64, seed=solver.seed + 1)
    for name, blobs in solver.net.params.items():
        for src, dst in zip(blobs, twin.params[name]):
            dst.data[...] = src.data
    for _ in range(2):
        twin.forward()  # the draws of the test at iteration 0 (test_initialization)
    runs = [{k: float(v) for k, v in twin.forward().items()} for _ in range(2)]
    result = solver.test(0)
    assert result["acc"] == pytest.approx(np.mean([r["acc"] for r in runs]), rel=1e-12)
    assert result["loss"] == pytest.approx(np.mean([r["loss"] for r in runs]), rel=1e-12)
    assert result.loss == pytest.approx(result["loss"], rel=1e-12)
    assert isinstance(solver.test(), list) and len(solver.test()) == 1
    with pytest.raises(IndexError, match="no test net 1"):
        solver.test(1)


def test_display_log_records(tmp_path):
    path = write_classifier(tmp_path)
    log = tmp_path / "logs" / "train.jsonl"
    stream = io.StringIO()
    solver = make_solver(path, seed=2, log=str(log), stream=stream)
    passes = []                                       # the loss of every train forward pass
    forward = solver.net.forward

    def recording_forward(*args, **kwargs):
        outputs = forward(*args, **kwargs)
        passes.append(float(outputs.loss))
        return outputs

    solver.net.forward = recording_forward
    solver.step(5)
    assert len(passes) == 5 * 2                       # iter_size 2
    records = [json.loads(line) for line in log.read_text().splitlines()]
    train = [r for r in records if r["event"] == "train"]
    assert [r["iter"] for r in train] == [0, 1, 2, 3, 4]
    losses = [r["loss"] for r in train]
    for k, record in enumerate(train):
        window = losses[max(0, k - 2):k + 1]          # average_loss 3
        assert record["smoothed_loss"] == pytest.approx(np.mean(window), rel=1e-12)
        # the loss is the mean of the iteration's iter_size passes; the
        # outputs are those of its last pass (as Caffe displays them)
        assert record["loss"] == pytest.approx(np.mean(passes[2 * k:2 * k + 2]), rel=1e-12)
        assert record["outputs"]["loss"] == pytest.approx(passes[2 * k + 1], rel=1e-12)
        assert {"lr", "wall_time", "elapsed_s", "grad_norm", "clipped"} <= set(record)
    assert [r["lr"] for r in train] == pytest.approx([0.05] * 3 + [0.025] * 2, rel=1e-6)
    tests = [r for r in records if r["event"] == "test"]
    assert [r["iter"] for r in tests] == [0, 3]   # test_initialization, then every 3
    assert set(tests[0]["outputs"]) == {"loss", "acc"}
    lines = stream.getvalue().splitlines()
    assert any(line.startswith("iter 4/8  loss ") and "ETA" in line for line in lines)
    assert any(line.startswith("test net #0 at iter 3: ") for line in lines)


def test_format_duration():
    assert [format_duration(s) for s in (None, 5, 65, 3 * 3600 + 7 * 60, 2 * 86400 + 4 * 3600)] \
        == ["?", "5s", "1m05s", "3h07m", "2d04h"]


def test_progress_appends_to_an_existing_log(tmp_path):
    log = tmp_path / "log.jsonl"
    with Progress(log, stream=None) as progress:
        progress.record("info", value=np.float32(1.5))
    with Progress(log, stream=None) as progress:
        progress.record("info", value=np.arange(2))
    values = [json.loads(line)["value"] for line in log.read_text().splitlines()]
    assert values == [1.5, [0, 1]]


# ---------------------------------------------------------------------------
# The solver file

def test_paths_are_relative_to_the_solver_file_then_the_current_directory(tmp_path, monkeypatch):
    path = write_classifier(tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    solver = make_solver(path, seed=0)
    assert solver.net.name == "tiny"
    # The solver folder's "snaps" does not exist, the current directory's does.
    (tmp_path / "snaps").mkdir()
    assert solver.snapshot_prefix == os.path.join(str(tmp_path / "models"), "snaps/tiny")
    solver = make_solver(path, seed=0)
    assert solver.snapshot_prefix == "snaps/tiny"
    # A net path relative to the current directory (Caffe's rule) works too.
    other = tmp_path / "solver2.prototxt"
    other.write_text(CLASSIFIER_SOLVER.replace('net: "net.prototxt"', 'net: "models/net.prototxt"'))
    (tmp_path / "elsewhere").mkdir()
    assert make_solver(other, seed=0).net.name == "tiny"


def test_solver_as_message_and_text(tmp_path):
    from netdef import caffe_pb2
    from netdef.schema import parse_text
    net_path = tmp_path / "net.prototxt"
    net_path.write_text(CLASSIFIER)
    text = f'net: "{net_path}" base_lr: 0.1 lr_policy: "fixed" max_iter: 2'
    solver = make_solver(parse_text(text, caffe_pb2.SolverParameter), seed=0)
    assert solver.source == "<SolverParameter>" and solver.snapshot_prefix is None
    solver.step(2)
    with pytest.raises(NetDefinitionError, match="no snapshot_prefix"):
        solver.snapshot()
    assert make_solver(text + "\n", seed=0).source == "<string>"


@pytest.mark.parametrize("change, message", [
    (('lr_policy: "multistep"', 'lr_policy: "multi"'), "unknown lr_policy 'multi'"),
    (('net: "net.prototxt"', ''), "no train net: give one of net, net_param, train_net"),
    (('net: "net.prototxt"', 'net: "missing.prototxt"'), "net 'missing.prototxt' not found"),
    (('net: "net.prototxt"', 'net: "net.prototxt" train_net: "net.prototxt"'),
     "give exactly one train net, found net and train_net"),
    (('momentum: 0.9', 'momentum: 0.9 type: "Adamm"'),
     r"unknown solver type 'Adamm' \(known: SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, "
     r"Adam\); did you mean 'Adam'"),
    (('momentum: 0.9', 'momentum: 0.9 solver_type: ADAGRAD'),
     r"solver type 'AdaGrad' needs momentum 0 \(momentum cannot be used with AdaGrad\), "
     r"found 0.9"),
    (('momentum: 0.9', 'regularization_type: "L3"'), "unknown regularization_type 'L3'"),
    (('test_interval: 3', 'test_interval: 0'), "test_interval must be > 0"),
    (('test_iter: 2', 'test_iter: 0'), r"test_iter\[0\] must be > 0"),
    (('iter_size: 2', 'iter_size: 0'), "iter_size must be >= 1"),
])
def test_solver_file_errors_name_the_file(tmp_path, change, message):
    path = write_classifier(tmp_path, CLASSIFIER_SOLVER.replace(*change))
    with pytest.raises(NetDefinitionError) as info:
        make_solver(path, seed=0)
    assert str(info.value).startswith(f"{path}: ")
    assert pytest.importorskip("re").search(message, str(info.value)), str(info.value)


def test_test_iter_count_must_match_test_nets(tmp_path):
    path = write_classifier(tmp_path, CLASSIFIER_SOLVER + 'test_net: "net.prototxt"\n')
    # One test_net file and no test_iter left for the generic net: fine.
    assert len(make_solver(path, seed=0).test_nets) == 1
    path = write_classifier(tmp_path, CLASSIFIER_SOLVER + 'test_net: "net.prototxt"\n'
                            'test_net: "net.prototxt"\n')
    with pytest.raises(NetDefinitionError, match="test_iter must be given for each test net"):
        make_solver(path, seed=0)


def test_given_nets_are_used(tmp_path):
    path = write_classifier(tmp_path)
    net = Net(tmp_path / "net.prototxt", "TRAIN", dtype=np.float64, seed=9)
    test_net = Net(tmp_path / "net.prototxt", "TEST", dtype=np.float64, seed=9)
    solver = make_solver(path, net=net, test_nets=[test_net], seed=0)
    assert solver.net is net and solver.test_nets == [test_net]
    solver.step(1)
    with pytest.raises(NetDefinitionError, match="must be built in phase TRAIN"):
        make_solver(path, net=test_net)
    with pytest.raises(NetDefinitionError, match="2 test net"):
        make_solver(path, net=net, test_nets=[test_net, test_net])


# ---------------------------------------------------------------------------
# GPU

@pytest.mark.gpu
def test_gpu_update_matches_cpu():
    cpu = regressor_solver("clip_gradients: 0.05")
    gpu = regressor_solver("clip_gradients: 0.05", device=Device("gpu"))
    cpu.step(4)
    gpu.step(4)
    for key, array in weights(cpu).items():
        np.testing.assert_allclose(weights(gpu)[key], array, rtol=1e-10, atol=1e-13)
    for key in cpu.history:
        np.testing.assert_allclose(to_numpy(gpu.history[key]), cpu.history[key],
                                   rtol=1e-10, atol=1e-13)


@pytest.mark.gpu
def test_gpu_resume_is_exact(tmp_path):
    path = write_classifier(tmp_path)
    straight = make_solver(path, seed=11, device=Device("gpu"), dtype=np.float32)
    straight.step(6)
    first = make_solver(path, seed=11, device=Device("gpu"), dtype=np.float32)
    first.step(3)
    snapshot = first.snapshot()
    resumed = make_solver(path, device=Device("gpu"), dtype=np.float32)
    resumed.restore(snapshot)
    resumed.step(3)
    assert_same_state(straight, resumed)
