"""One device, decided once: a Net, its weights and its solver built on GPU 1
do all their work on GPU 1, even while the process's current device is
GPU 0 (issue 9, item 1).

Without a GPU, the stand-in of ``tests/fake_device.py`` plays two GPUs:
every use of an array while another GPU is current raises ``WrongDevice``
(a kernel launch with an array of another GPU: the launcher's own
``KernelError``), and its kernels run the host build of ``layers/cuda``, so
the results are also compared with the same work on the CPU.
"""
import numpy as np
import pytest

from netdef.device import CPU, Device, to_numpy
from netdef.errors import KernelError
from netdef.net import Net
from solver.sgd import SGDSolver
from tests.fake_device import WrongDevice, fake_gpus
from tests.kernel_harness import requires_cxx

pytestmark = requires_cxx  # the stand-in GPUs run the host build of the kernels

NET = """
name: "routing"
force_backward: true
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } shape { dim: 2 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 4 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""

SOLVER = ('base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.01 '
          'clip_gradients: 0.5 max_iter: 5\n')


def inputs():
    rng = np.random.default_rng(0)
    return dict(data=rng.standard_normal((2, 3, 6, 6)), label=np.array([0.0, 2.0]))


def params(net):
    return {f"{name}/{i}": to_numpy(blob.data).copy()
            for name, layer in net.layer_dict.items() for i, blob in enumerate(layer.blobs)}


def param_diffs(net):
    return {f"{name}/{i}": to_numpy(blob.diff).copy()
            for name, layer in net.layer_dict.items() for i, blob in enumerate(layer.blobs)}


def assert_close(found, expected):
    assert found.keys() == expected.keys()
    for key in expected:
        np.testing.assert_allclose(found[key], expected[key], rtol=1e-9, atol=1e-12,
                                   err_msg=key)


def build(device):
    return Net(NET, "TRAIN", dtype=np.float64, seed=5, device=device)


@pytest.fixture
def gpus():
    with fake_gpus(2) as fake:
        yield fake


def assert_only_gpu1(fake):
    """Work ran, all of it on GPU 1 (so a test cannot pass by doing nothing)."""
    assert fake.work[1] > 0 and fake.launches[1] > 0
    assert fake.work[0] == 0 and fake.launches[0] == 0


# -- the stand-in itself: it must catch what the routing tests rely on it to catch

def test_stand_in_catches_work_on_the_wrong_gpu(gpus):
    gpu1 = Device("gpu", 1)
    with gpu1.context():
        a = gpu1.xp.zeros((2, 3), np.float32)
        a += 1
        view = a[1:]
    assert view.device.id == 1
    assert a.get().sum() == 6  # a host copy needs no current device, as in CuPy
    for use in (lambda: a + 1, lambda: a.sum(), lambda: a.fill(0),
                lambda: a.__setitem__(Ellipsis, 2), lambda: view.copy(),
                lambda: gpu1.xp.matmul(a, a.T), lambda: a[np.array([0])]):
        with pytest.raises(WrongDevice, match="on GPU 1 was used while GPU 0 was current"):
            use()
    assert gpus.work[0] == 0 and gpus.work[1] > 0  # only the two uses inside the block


def test_stand_in_catches_a_kernel_launched_on_the_wrong_gpu(gpus):
    from layers import kernels
    gpu1 = Device("gpu", 1)
    with gpu1.context():
        x = gpu1.xp.asarray(np.array([-1.0, 2.0], np.float32))
        y = gpu1.xp.empty_like(x)
        kernels.launch("neuron.cu", "relu_forward", np.float32, 2,
                       (np.int64(2), x, y, np.float32(0.5)))
    np.testing.assert_array_equal(y.get(), [-0.5, 2.0])
    with pytest.raises((WrongDevice, KernelError), match="GPU 1"):
        kernels.launch("neuron.cu", "relu_forward", np.float32, 2,
                       (np.int64(2), x, y, np.float32(0.5)))


# -- the Net, its weights and its solver on GPU 1 ----------------------------------------

def test_net_forward_backward_run_on_their_gpu(gpus):
    reference = build(CPU)
    expected_loss = reference.forward(**inputs()).loss
    reference.backward()
    net = build(Device("gpu", 1))
    assert net.forward(**inputs()).loss == pytest.approx(expected_loss, rel=1e-12)
    net.backward()
    assert_close(param_diffs(net), param_diffs(reference))
    assert_only_gpu1(gpus)


def test_net_input_copies_and_clearing_diffs_run_on_their_gpu(gpus):
    net = build(Device("gpu", 1))
    net.set_input_arrays(**inputs())
    net.reshape()
    net.forward()
    net.backward()
    net.clear_param_diffs()
    assert all(not to_numpy(d).any() for d in param_diffs(net).values())
    assert_only_gpu1(gpus)


def test_weights_load_and_save_on_their_gpu(gpus, tmp_path):
    source = Net(NET, "TRAIN", dtype=np.float64, seed=11)  # different weights
    source.save(str(tmp_path / "w.caffemodel"))
    source.save_weights(str(tmp_path / "w.native"))
    for path in ("w.caffemodel", "w.native"):
        net = build(Device("gpu", 1))
        report = net.copy_from(str(tmp_path / path))
        assert report.loaded == ["conv", "fc"]
        assert_close(params(net), params(source))
        net.save(str(tmp_path / "again.caffemodel"))
        net.save_weights(str(tmp_path / "again.native"))
    assert gpus.work[1] > 0 and gpus.work[0] == 0


def solver_on(device):
    net = build(device)
    with device.context():  # the test's own copies, on the net's device
        net.set_input_arrays(**inputs())
    return SGDSolver(SOLVER, net=net, stream=None, seed=0)


def test_one_solver_step_runs_on_its_gpu(gpus):
    reference = solver_on(CPU)
    reference.step(1)
    solver = solver_on(Device("gpu", 1))
    solver.step(1)
    assert_close(params(solver.net), params(reference.net))
    assert_only_gpu1(gpus)


# -- real GPUs: the last one visible, while GPU 0 stays current -------------------------

def last_real_gpu():
    import cupy
    return Device("gpu", cupy.cuda.runtime.getDeviceCount() - 1)


@pytest.mark.gpu
def test_net_and_solver_on_a_real_gpu_equal_the_cpu():
    device = last_real_gpu()
    reference = build(CPU)
    expected_loss = reference.forward(**inputs()).loss
    reference.backward()
    net = build(device)
    assert net.forward(**inputs()).loss == pytest.approx(expected_loss, rel=1e-9)
    net.backward()
    assert_close(param_diffs(net), param_diffs(reference))
    cpu_solver, gpu_solver = solver_on(CPU), solver_on(device)
    cpu_solver.step(2)
    gpu_solver.step(2)
    for key, expected in params(cpu_solver.net).items():
        np.testing.assert_allclose(params(gpu_solver.net)[key], expected, rtol=1e-7,
                                   atol=1e-9, err_msg=key)
