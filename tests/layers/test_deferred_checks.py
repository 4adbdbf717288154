"""layers.deferred_checks: on the GPU path, input checks that need a device
value are read with the loss at the end of a Net's forward pass (one
transfer), the layers meanwhile run on safe stand-ins for the bad entries,
and the pass raises the same error the immediate check raises on the CPU.
The GPU path runs on the stand-in CuPy (bench.standin_cupy), which counts
every synchronization."""
import numpy as np
import pytest

from bench.standin_cupy import COUNTS, SYNC_EVENTS, installed
from layers import deferred_checks, kernels
from netdef import Net
from netdef.device import Device
from netdef.errors import DataError
from tests.kernel_harness import requires_cxx


def fail(where):
    def report(*details):
        raise DataError(f"{where}: {[d.tolist() for d in details]}")
    return report


def test_on_numpy_a_check_runs_at_once_even_inside_a_pass():
    with deferred_checks.deferring() as pending:
        assert deferred_checks.check(np, np.bool_(False), tuple, fail("a")) is False
        with pytest.raises(DataError, match=r"a: \[3\]"):
            deferred_checks.check(np, np.bool_(True), lambda: (np.int64(3),), fail("a"))
    assert pending.items == []


def test_deferred_checks_are_read_with_the_loss_and_the_first_failure_raises():
    with installed() as cupy:
        with deferred_checks.deferring() as pending:
            assert deferred_checks.check(cupy, cupy.asarray(False), tuple, fail("first")) is True
            assert deferred_checks.check(cupy, cupy.asarray(True), lambda: (cupy.asarray(7),),
                                         fail("second")) is True
            assert deferred_checks.check(cupy, cupy.asarray(True), tuple, fail("third")) is True
        COUNTS.reset()
        with pytest.raises(DataError, match=r"second: \[7\]"):
            pending.resolve(cupy, cupy.asarray(2.5))
        assert sum(COUNTS.totals()[e] for e in SYNC_EVENTS) == 2  # outcomes, then details
        ok = deferred_checks.PendingChecks()
        ok.add(cupy.asarray(False), (), fail("never"))
        assert ok.resolve(cupy, cupy.asarray(2.5)) == 2.5


def test_outside_a_pass_a_device_check_runs_at_once():
    with installed() as cupy:
        with pytest.raises(DataError, match="alone"):
            deferred_checks.check(cupy, cupy.asarray(True), tuple, fail("alone"))


LOSS_NET = """
layer { name: "in" type: "Input" top: "score" top: "label"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
        loss_param { ignore_label: -1 } }
layer { name: "accuracy" type: "Accuracy" bottom: "score" bottom: "label" top: "accuracy"
        accuracy_param { ignore_label: -1 } }
"""

PS_NET = """
layer { name: "in" type: "Input" top: "maps" top: "rois" top: "target"
        input_param { shape { dim: 1 dim: 8 dim: 6 dim: 6 } shape { dim: 3 dim: 5 }
                      shape { dim: 3 dim: 2 dim: 2 dim: 2 } } }
layer { name: "pool" type: "PSROIPooling" bottom: "maps" bottom: "rois" top: "pooled"
        psroi_pooling_param { spatial_scale: 1 output_dim: 2 group_size: 2 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "pooled" bottom: "target" top: "loss" }
"""


@pytest.fixture
def gpu_net(monkeypatch):
    """Build a net on the stand-in GPU 0 (kernels compiled for the host)."""
    monkeypatch.setattr(kernels, "_gpu_modules", {})
    monkeypatch.setattr(kernels, "_gpu_functions", {})
    with installed():
        yield lambda text: Net(text, "TRAIN", device=Device("gpu", 0))


def syncs_of_forward(net, **inputs):
    COUNTS.reset()
    out = net.forward(**inputs)
    return out, sum(COUNTS.totals()[e] for e in SYNC_EVENTS)


@requires_cxx
def test_label_checks_cost_no_synchronization_of_their_own(gpu_net):
    net = gpu_net(LOSS_NET)
    score = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    out, syncs = syncs_of_forward(net, score=score, label=np.array([0, 2, -1, 1], np.float32))
    assert syncs == 1                  # the loss, with both checks' outcomes
    assert np.isfinite(out.loss) and out.loss > 0


@requires_cxx
def test_a_bad_label_raises_at_the_end_of_the_pass_as_on_the_cpu(gpu_net):
    net = gpu_net(LOSS_NET)
    score = np.zeros((4, 3), np.float32)
    with pytest.raises(DataError) as on_gpu:
        net.forward(score=score, label=np.array([0, 2, 7, 1], np.float32))
    cpu = Net(LOSS_NET, "TRAIN")
    with pytest.raises(DataError) as on_cpu:
        cpu.forward(score=score, label=np.array([0, 2, 7, 1], np.float32))
    assert str(on_gpu.value) == str(on_cpu.value)
    assert "layer 'loss'" in str(on_gpu.value) and "label 7 at flat index 2" in str(on_gpu.value)


@requires_cxx
def test_a_bad_roi_reaches_no_kernel_and_raises_after_the_pass(gpu_net):
    net = gpu_net(PS_NET)
    maps = np.ones((1, 8, 6, 6), np.float32)
    good = np.array([[0, 0, 0, 3, 3], [0, 1, 1, 5, 5], [0, 2, 2, 4, 4]], np.float32)
    out, syncs = syncs_of_forward(net, maps=maps, rois=good)
    assert syncs == 1 and np.isfinite(out.loss)
    bad = good.copy()
    bad[1, 0] = 1e9                    # an image that does not exist
    with pytest.raises(DataError, match=r"layer 'pool'.*RoI 1 is \[1000000000\.0"):
        net.forward(maps=maps, rois=bad)
    np.testing.assert_array_equal(net.blobs["rois"].data.get(), bad)  # the input is untouched
