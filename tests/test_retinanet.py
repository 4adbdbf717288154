"""The tiny RetinaNet generator (prototxt.retinanet): both phases build,
the pyramid's upsampling and shared subnets are what the docstring says,
the heads' flattened layout lines up with PriorBox's anchors, the prior
bias, a TRAIN loss that goes down on a few iterations with Input stand-ins,
a TRAIN pass on the stand-in GPU and on a GPU equal to the CPU's, the
command line and the committed files, and solver.train / test / detect on
the committed net (2 iterations on an 8-image dataset)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from detection.datasets import load_dataset
from detection.datasets.synthetic import ensure_dataset
from netdef.device import CPU
from netdef.net import Net
from netdef.schema import read_net
from prototxt import retinanet
from prototxt.rfcn import TINY_CLASSES
from solver import detect as detect_cli
from solver import test as test_cli
from solver import train
from solver.sgd import SGDSolver

PROTOTXT = Path(retinanet.__file__).resolve().parent
SMALL = (96, 128)   # a smaller input for the training test: three levels of 12x16, 6x8, 3x4


def level_sizes(image):
    return [(image[0] // stride, image[1] // stride) for _, _, stride, _ in retinanet.LEVELS]


def test_both_phases_build_with_the_expected_shapes():
    text = retinanet.generated_file(TINY_CLASSES, "BOTH")
    train, test = Net(text, "TRAIN", device=CPU), Net(text, "TEST", device=CPU)
    priors = sum(h * w for h, w in level_sizes(retinanet.TINY_IMAGE)) * 9
    assert priors == 9 * (24 * 32 + 12 * 16 + 6 * 8)
    batch = retinanet.BATCH_SIZE
    assert train.layers[0].type == "AnnotatedData"
    assert train.blobs["cls_score"].shape == (batch, priors * 6)
    assert train.blobs["bbox_pred"].shape == (batch, priors * 4)
    assert train.blobs["priors"].shape == (1, 2, priors * 4)
    assert train.blobs["labels"].shape == (batch, priors)
    assert set(train.outputs) == {"loss_cls", "loss_bbox"}
    assert test.blobs["data"].shape == (1, 3) + retinanet.TINY_IMAGE
    assert test.outputs == ["detection_out"] and test.blobs["detection_out"].shape[-1] == 7
    out = test.layer_dict["detection_out"]
    assert (out.num_classes, out.background) == (6, -1)   # label l is dataset class l + 1
    assert test.layer_dict["detection_out"].threshold == pytest.approx(0.05)


@pytest.mark.parametrize("classes", [TINY_CLASSES, 3])
def test_both_file_holds_exactly_each_phase(classes):
    text = retinanet.generated_file(classes, "BOTH")
    for phase in ("TRAIN", "TEST"):
        both = read_net(text)
        alone = read_net(retinanet.retinanet_net(classes, phase=phase)).layer
        kept = [l for l in both.layer
                if not l.include or any(r.phase == (0 if phase == "TRAIN" else 1)
                                        for r in l.include)]
        for layer in kept:
            del layer.include[:]
        assert kept == list(alone), phase
    both = read_net(text)
    assert sum(1 for l in both.layer if not l.include) > len(both.layer) / 2


def test_pyramid_upsampling_is_nearest_neighbour_and_fixed():
    net = Net(retinanet.retinanet_net(phase="TEST", image=SMALL), "TEST", device=CPU)
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape)
    net.forward()
    top = net.blobs["lateral_p5"].data
    up = net.blobs["up_p4"].data
    np.testing.assert_allclose(up, top.repeat(2, axis=2).repeat(2, axis=3), rtol=1e-6)
    np.testing.assert_allclose(net.blobs["topdown_p4"].data,
                               net.blobs["lateral_p4"].data + up, rtol=1e-5, atol=1e-6)
    spec = read_net(retinanet.retinanet_net()).layer
    deconv = [l for l in spec if l.type == "Deconvolution"]
    assert len(deconv) == 2 and all(l.param[0].lr_mult == 0 for l in deconv)


def test_subnets_share_their_weights_across_levels():
    net = Net(retinanet.retinanet_net(phase="TEST", image=SMALL), "TEST", device=CPU)
    for kind in ("cls_conv1", "cls_conv2", "cls_out", "bbox_conv1", "bbox_conv2", "bbox_out"):
        blobs = [net.params[f"{kind}_p{level}"] for level in (3, 4, 5)]
        for i in range(2):
            assert blobs[0][i] is blobs[1][i] is blobs[2][i], kind
    assert net.params["p3"][0] is not net.params["p4"][0]   # the smoothing convs are not


def test_classification_bias_starts_at_the_prior():
    net = Net(retinanet.retinanet_net(phase="TEST", image=SMALL), "TEST", device=CPU)
    bias = net.params["cls_out_p3"][1].data
    assert bias.shape == (9 * 6,)
    np.testing.assert_allclose(bias, -math.log(99), rtol=1e-6)
    np.testing.assert_allclose(1 / (1 + np.exp(-bias)), 0.01, rtol=1e-5)
    np.testing.assert_array_equal(net.params["bbox_out_p3"][1].data, 0)
    net.blobs["data"].data[...] = 0
    net.forward()
    # every score starts near 0.01, below the 0.05 threshold: no detection yet
    rows = net.blobs["detection_out"].data
    assert rows.shape == (1, 1, 1, 7) and np.all(rows[..., 1:] == -1)


def test_flattened_heads_line_up_with_the_priors():
    """Anchor p of level L at cell (h, w), slot a: its K scores are
    cls_score[p * K: (p + 1) * K] = cls_out_pL[a * K: (a + 1) * K, h, w] and
    its prior is PriorBox's p-th box (rows, columns, then slots)."""
    net = Net(retinanet.retinanet_net(phase="TEST", image=SMALL), "TEST", device=CPU)
    net.blobs["data"].data[...] = np.random.default_rng(1).standard_normal((1, 3) + SMALL)
    net.forward()
    k, a = TINY_CLASSES - 1, retinanet.ANCHORS
    scores = net.blobs["cls_score"].data[0]
    boxes = net.blobs["bbox_pred"].data[0]
    priors = net.blobs["priors"].data[0, 0].reshape(-1, 4)
    offset = 0
    for (level, _, stride, base), (height, width) in zip(retinanet.LEVELS, level_sizes(SMALL)):
        cls_map = net.blobs[f"cls_out_p{level}"].data[0]
        box_map = net.blobs[f"bbox_out_p{level}"].data[0]
        for h, w, slot in ((0, 0, 0), (height - 1, 1, 4), (1, width - 1, 8)):
            p = offset + (h * width + w) * a + slot
            np.testing.assert_array_equal(scores[p * k:(p + 1) * k],
                                          cls_map[slot * k:(slot + 1) * k, h, w])
            np.testing.assert_array_equal(boxes[p * 4:(p + 1) * 4],
                                          box_map[slot * 4:(slot + 1) * 4, h, w])
            centre = ((priors[p, 0] + priors[p, 2]) / 2 * SMALL[1],
                      (priors[p, 1] + priors[p, 3]) / 2 * SMALL[0])
            assert centre == pytest.approx(((w + 0.5) * stride, (h + 0.5) * stride), abs=1e-3)
        # slot 0 of a cell is the base size, square
        side = (priors[offset, 2] - priors[offset, 0]) * SMALL[1]
        assert side == pytest.approx(base, rel=1e-5)
        offset += height * width * a
    assert offset == len(priors)


def synthetic_batch(rng, num, image):
    """Noise images with 1-2 bright boxes each (class = colour channel + 1)
    and their label rows (normalized, as AnnotatedData gives them)."""
    data = rng.standard_normal((num, 3) + image) * 0.3
    rows = []
    for i in range(num):
        for g in range(1 + i % 2):
            size = rng.integers(20, 32)
            y, x = rng.integers(0, image[0] - size), rng.integers(0, image[1] - size)
            cls = int(rng.integers(1, 4))
            data[i, cls - 1, y:y + size, x:x + size] += 2.0
            rows.append([i, cls, g, x / image[1], y / image[0], (x + size) / image[1],
                         (y + size) / image[0], 0])
    return data, np.array(rows)[None, None]


def test_train_loss_goes_down_with_input_stand_ins():
    text, data, label = _small_train_case()
    net = Net(text, "TRAIN", device=CPU, seed=3)
    net.blobs["data"].data[...] = data
    net.blobs["label"].data[...] = label
    solver = SGDSolver('base_lr: 0.005 lr_policy: "fixed" momentum: 0.9 max_iter: 30 '
                       'clip_gradients: 20\n', net=net, stream=None, seed=0)
    losses = []
    for _ in range(30):
        solver.step(1)
        losses.append(float(net.blobs["loss_cls"].data) + float(net.blobs["loss_bbox"].data))
    assert float(net.blobs["fg_num"].data[0]) >= 3
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.5 * losses[0], losses


def test_option_errors():
    with pytest.raises(ValueError, match="classes counts the background"):
        retinanet.retinanet_net(1)
    with pytest.raises(ValueError, match="phase must be TRAIN or TEST"):
        retinanet.retinanet_net(phase="DEPLOY")
    with pytest.raises(ValueError, match="data must be 'annotated' or 'input'"):
        retinanet.retinanet_net(data="lmdb")


def test_cli_prints_and_refuses(capsys):
    assert retinanet.main(["--classes", "4", "--phase", "test"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# Generated by: python -m prototxt.retinanet --classes 4 "
                           "--phase TEST\n")
    net = {l.name: l for l in read_net(text).layer}
    assert net["cls_out_p3"].convolution_param.num_output == 9 * 3
    assert net["detection_out"].detection_output_param.num_classes == 3
    assert retinanet.main(["--phase", "TRAIN", "--data", "input"]) == 0
    assert read_net(capsys.readouterr().out).layer[0].type == "Input"
    with pytest.raises(SystemExit):
        retinanet.main(["--classes", "1"])


def test_committed_files_are_the_generators_output():
    files = retinanet.committed_files()
    assert sorted(files) == ["retinanet_tiny.prototxt", "retinanet_tiny_solver.prototxt"]
    for name, text in files.items():
        assert (PROTOTXT / name).read_text() == text, f"regenerate {name}"
    from netdef.schema import read_solver
    solver = read_solver(str(PROTOTXT / "retinanet_tiny_solver.prototxt"))
    assert solver.net == "retinanet_tiny.prototxt" and solver.max_iter > 0


def _train_pass(device, text, data, label):
    """Losses and two parameter gradients of one float64 TRAIN pass."""
    net = Net(text, "TRAIN", device=device, seed=1, dtype=np.float64)
    net.blobs["data"].data[...] = net.device.xp.asarray(data)
    net.blobs["label"].data[...] = net.device.xp.asarray(label)
    net.forward()
    net.backward()
    return [np.array(net.blobs[b].data) for b in ("loss_cls", "loss_bbox", "fg_num")] + \
        [np.array(net.params[p][0].diff) for p in ("conv1", "cls_out_p3", "bbox_conv1_p4")]


def _small_train_case():
    image = (64, 96)
    text = retinanet.retinanet_net(4, phase="TRAIN", data="input", image=image, batch_size=2)
    text = text.replace("dim: 4\n      dim: 8", "dim: 3\n      dim: 8")
    return (text,) + synthetic_batch(np.random.default_rng(0), 2, image)


def test_train_pass_on_the_standin_gpu_equals_the_cpu():
    """Every layer of the TRAIN net has its device path (bench.standin_cupy:
    kernels host-compiled, no host array given to a device operation)."""
    from bench.standin_cupy import COUNTS, installed
    from netdef.device import Device
    text, data, label = _small_train_case()
    cpu = _train_pass(CPU, text, data, label)
    with installed():
        COUNTS.reset()
        gpu = _train_pass(Device("gpu", 0), text, data, label)
        assert COUNTS.totals()["host_mix"] == 0 and COUNTS.totals()["launch"] > 0
    for c, g in zip(cpu, gpu):
        np.testing.assert_allclose(g, c, rtol=1e-9, atol=1e-12)


@pytest.mark.gpu
def test_train_pass_on_a_gpu_equals_the_cpu():
    from netdef.device import Device
    text, data, label = _small_train_case()
    for c, g in zip(_train_pass(CPU, text, data, label),
                    _train_pass(Device("gpu", 0), text, data, label)):
        np.testing.assert_allclose(g, c, rtol=1e-7, atol=1e-10)


# -- the commands ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 8 training images: two batches of the tiny net's 4
    return ensure_dataset(str(tmp_path_factory.mktemp("synthetic") / "set"), num_train=8,
                          num_test=2)


def test_train_test_and_detect_run_the_tiny_net(data, tmp_path, capsys):
    """solver.train feeds AnnotatedData, the class count comes from
    RetinaNetTarget, the in-training evaluation reads detection_out; then
    solver.test and solver.detect on the weights."""
    net = str(PROTOTXT / "retinanet_tiny.prototxt")
    out = tmp_path / "run"
    status = train.main([net, "--data", data, "--iters", "2", "--out", str(out), "--seed", "1"])
    printed, errors = capsys.readouterr()
    assert status == 0, printed + errors
    result = json.loads((out / "eval_iter_2.json").read_text())
    assert result["iter"] == 2 and 0 <= result["map_07"] <= 1
    model = str(next(out.glob("*_iter_2.caffemodel")))
    assert test_cli.main([net, "--weights", model, "--data", data]) == 0
    image = load_dataset(data, "test", cache=False).records[0].path
    assert detect_cli.main([net, "--weights", model, image, "--no-draw", "--data", data,
                            "--threshold", "0"]) == 0
    assert '"detections"' in capsys.readouterr().out
