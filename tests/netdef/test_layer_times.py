"""Per-layer timing (``python -m netdef.layer_times``) and the net-level
gradient check CLI (``python -m netdef.gradcheck``)."""
from netdef import Net
from netdef import gradcheck
from netdef.layer_times import format_times, main as times_main, time_layers
from tests.netdef.test_net import TINY


def test_time_layers_reports_every_layer_with_backward_where_needed():
    net = Net(TINY.replace("force_backward: true\n", ""), "TRAIN")
    times = time_layers(net, iterations=2)
    assert list(times) == [step.label for step in net.steps]
    kind, forward, backward = times["conv1 + relu1"]
    assert kind == "Convolution+ReLU" and forward > 0 and backward > 0
    assert times["data"][2] == 0.0  # the input layer takes no backward
    table = format_times(times)
    assert "by type" in table and "Convolution" in table


def test_time_layers_times_the_planned_steps():
    from tests.netdef.test_plan import RESIDUAL
    net = Net(RESIDUAL, "TRAIN")
    times = time_layers(net, iterations=1)
    assert list(times) == [step.label for step in net.steps]
    kind, forward, backward = times["conv1 + bn1 + sc1 + relu1"]
    assert kind == "Convolution+BatchNorm+Scale+ReLU" and forward > 0 and backward > 0
    assert "outside convolution steps" in format_times(times)
    plain = time_layers(Net(RESIDUAL, "TRAIN", plan=False), iterations=1)
    assert list(plain) == list(Net(RESIDUAL, "TRAIN").layer_dict)


def test_layer_times_cli(tmp_path, capsys):
    path = tmp_path / "tiny.prototxt"
    path.write_text(TINY)
    assert times_main([str(path), "--iterations", "1", "--input", "data=1,3,8,8",
                       "--input", "label=1"]) == 0
    assert "SoftmaxWithLoss" in capsys.readouterr().out


def test_gradcheck_cli_checks_every_layer(tmp_path, capsys):
    path = tmp_path / "tiny.prototxt"
    path.write_text(TINY)
    assert gradcheck.main([str(path), "--max-per-blob", "5"]) == 0
    out = capsys.readouterr().out
    for name in ("conv1", "relu1", "pool1", "fc", "loss"):
        assert name in out
    assert "0 failed" in out


def test_gradcheck_cli_reports_a_broken_layer(tmp_path, capsys, monkeypatch):
    from layers.neuron import ReLULayer
    original = ReLULayer.backward_cpu

    def wrong(self, tops, propagate_down, bottoms):
        original(self, tops, propagate_down, bottoms)
        bottoms[0].diff[...] *= 1.5
    monkeypatch.setattr(ReLULayer, "backward_cpu", wrong)
    path = tmp_path / "tiny.prototxt"
    path.write_text(TINY)
    assert gradcheck.main([str(path), "--max-per-blob", "5"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "1 failed" in out
