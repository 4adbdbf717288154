"""The SPPNet-style detector (prototxt.sppnet): the SPP-on-RoIs head against
a plainly written per-RoI pyramid, its float64 gradient by central
differences through the whole head, GPU parity of the head, the generator's
phases, options and errors, the committed files, and two training
iterations with finite losses."""
import io
import math
import warnings

import numpy as np
import pytest

from detection.datasets import DataWarning, load_dataset
from detection.datasets.synthetic import ensure_dataset
from netdef.device import CPU
from netdef.net import Net
from prototxt.generator_cli import HERE
from prototxt import sppnet
from prototxt.rfcn import TINY_CLASSES
from solver.sgd import SGDSolver
from solver.session import find_data_layer

LEVELS = (3, 2, 1)
SCALE = 0.5
FEATURE = (2, 3, 9, 11)
# [image, x1, y1, x2, y2] in input pixels (the map is at 1/2): windows of
# 1 to 11 cells, one smaller than the 3x3 level, one past the map's edge,
# none with a coordinate whose scaled value is a half (rounding ties).
ROIS = np.array([[0, 0, 0, 21, 17],
                 [1, 4, 2, 13, 15],
                 [0, 6, 6, 7, 7],
                 [1, 10.2, 3.8, 30, 24],
                 [0, 3, 9, 11, 9]], np.float64)


def head_net(levels=LEVELS, rois=len(ROIS)):
    """A net of Input (feat, rois) and the head, gradients forced."""
    text = ('name: "head" force_backward: true\n'
            'layer { name: "in" type: "Input" top: "feat" top: "rois" input_param { '
            f'shape {{ {" ".join(f"dim: {d}" for d in FEATURE)} }} '
            f'shape {{ dim: {rois} dim: 5 }} }} }}\n')
    return text + sppnet.spp_roi_head("feat", "rois", levels, SCALE)


def round_half_away(x):
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def reference_head(feat, rois, levels, scale):
    """Per RoI, per level, per bin, plain loops: the window
    ``round(x * scale)`` .. ``round(x2 * scale)`` (at least one cell), bin
    ``p`` of ``n`` is ``[floor(p * a / n), ceil((p + 1) * a / n))`` from
    the window's start, clipped to the map; max over the bin, 0 if empty;
    each level flattened channel-major, levels concatenated."""
    _, channels, height, width = feat.shape
    out = []
    for roi in rois:
        image = int(roi[0])
        x1, y1, x2, y2 = (round_half_away(v * scale) for v in roi[1:])
        roi_w, roi_h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        row = []
        for n in levels:
            pooled = np.zeros((channels, n, n))
            for c in range(channels):
                for i in range(n):
                    for j in range(n):
                        top = min(max(math.floor(i * roi_h / n) + y1, 0), height)
                        bottom = min(max(math.ceil((i + 1) * roi_h / n) + y1, 0), height)
                        left = min(max(math.floor(j * roi_w / n) + x1, 0), width)
                        right = min(max(math.ceil((j + 1) * roi_w / n) + x1, 0), width)
                        if bottom > top and right > left:
                            pooled[c, i, j] = feat[image, c, top:bottom, left:right].max()
            row.append(pooled.reshape(-1))
        out.append(np.concatenate(row))
    return np.array(out)


def feature(seed=0):
    return np.random.default_rng(seed).standard_normal(FEATURE)


@pytest.mark.parametrize("levels", [LEVELS, (6, 3, 2, 1), (1,)])
def test_head_matches_the_per_roi_pyramid(levels):
    net = Net(head_net(levels), "TEST", device=CPU, dtype=np.float64)
    feat = feature()
    out = net.forward(feat=feat, rois=ROIS)["spp"]
    assert out.shape == (len(ROIS), FEATURE[1] * sum(n * n for n in levels))
    np.testing.assert_allclose(out, reference_head(feat, ROIS, levels, SCALE), rtol=0, atol=0)


def test_head_gradient_by_central_differences():
    """d sum(w * spp) / d feat through the whole head (three ROIPooling
    levels, Flatten, Concat) against central differences in float64."""
    net = Net(head_net(), "TRAIN", device=CPU, dtype=np.float64)
    feat = feature(1)  # Gaussian values: no ties, so max picks are stable under eps
    weights = np.random.default_rng(2).standard_normal(
        (len(ROIS), FEATURE[1] * sum(n * n for n in LEVELS)))

    def objective(x):
        return float((net.forward(feat=x, rois=ROIS)["spp"] * weights).sum())

    objective(feat)
    analytic = np.array(net.backward(spp=weights)["feat"], copy=True)
    eps = 1e-6
    numeric = np.zeros_like(feat)
    for index in np.ndindex(feat.shape):
        plus, minus = feat.copy(), feat.copy()
        plus[index] += eps
        minus[index] -= eps
        numeric[index] = (objective(plus) - objective(minus)) / (2 * eps)
    assert np.abs(analytic).sum() > 0  # the RoIs read the map
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.gpu
def test_head_gpu_matches_cpu():
    from netdef.device import Device
    feat, weights = feature(3), None
    results = []
    for device in (CPU, Device("gpu", 0)):
        net = Net(head_net(), "TRAIN", device=device, dtype=np.float64)
        out = np.asarray(_host(net.forward(feat=feat, rois=ROIS)["spp"]))
        if weights is None:
            weights = np.random.default_rng(4).standard_normal(out.shape)
        grad = _host(net.backward(spp=weights)["feat"])
        results.append((out, grad))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-12, atol=1e-12)


def _host(array):
    from netdef.device import to_numpy
    return np.array(to_numpy(array), copy=True)


def test_head_option_errors():
    with pytest.raises(ValueError, match=r"levels must be bin counts >= 1, found \[2, 0\]"):
        sppnet.spp_roi_head("feat", levels=(2, 0))
    with pytest.raises(ValueError, match=r"levels must be bin counts >= 1, found \[\]"):
        sppnet.spp_roi_head("feat", levels=())


# -- the generator ---------------------------------------------------------------------


def shapes(net, *names):
    return [tuple(net.blobs[n].shape) for n in names]


@pytest.mark.parametrize("levels", [sppnet.TINY_LEVELS, (6, 3, 2, 1)])
def test_phases_build_with_their_shapes(levels):
    width = 64 * sum(n * n for n in levels)
    train = Net(sppnet.generated_file(TINY_CLASSES, levels, "TRAIN"), "TRAIN", device=CPU)
    rois = sppnet.IMS_PER_BATCH * sppnet.ROIS_PER_IMAGE
    assert shapes(train, "spp", "cls_score", "bbox_pred") == [
        (rois, width), (rois, TINY_CLASSES), (rois, 4 * TINY_CLASSES)]
    assert train.layer_dict["input-data"].type == "RoIData"
    assert {"loss_cls", "loss_bbox", "accuracy"} <= set(train.outputs)
    test = Net(sppnet.generated_file(TINY_CLASSES, levels, "TEST"), "TEST", device=CPU)
    assert test.inputs == ["data", "rois"]
    assert set(test.outputs) == {"cls_prob", "bbox_pred"}
    assert shapes(test, "spp", "cls_prob") == [(sppnet.TEST_ROIS, width),
                                               (sppnet.TEST_ROIS, TINY_CLASSES)]


def test_both_phases_file_holds_each_phase():
    both = sppnet.generated_file(5, (2, 1), "BOTH")
    for phase in ("TRAIN", "TEST"):
        alone = Net(sppnet.sppnet_net(5, (2, 1), phase=phase), phase, device=CPU)
        merged = Net(both, phase, device=CPU)
        assert [lp.name for lp in merged.layer_params] == [lp.name for lp in alone.layer_params]
        assert merged.blobs["cls_score"].shape == alone.blobs["cls_score"].shape


def test_generator_option_errors():
    with pytest.raises(ValueError, match="phase must be TRAIN or TEST, found 'DEPLOY'"):
        sppnet.sppnet_net(phase="DEPLOY")
    with pytest.raises(ValueError, match="classes counts the background too and must be >= 2, "
                                         "found 1"):
        sppnet.sppnet_net(1)


def test_cli_prints_the_net_and_refuses_bad_levels(capsys):
    assert sppnet.main(["--classes", "4", "--levels", "2", "1", "--phase", "test"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# Generated by: python -m prototxt.sppnet --classes 4 --levels 2 1 "
                           "--phase TEST\n")
    assert text.count('type: "ROIPooling"') == 2 and "num_output: 16" in text
    with pytest.raises(SystemExit) as exit_info:
        sppnet.main(["--levels", "0"])
    assert exit_info.value.code == 2
    assert "levels must be bin counts >= 1, found [0]" in capsys.readouterr().err


def test_committed_files_are_the_generators_output():
    for name, text in sppnet.committed_files().items():
        assert (HERE / name).read_text() == text, f"prototxt/{name}: run python -m " \
                                                         "prototxt.sppnet --regenerate"
    assert sppnet.TINY_SOLVER["net"] == "sppnet_tiny.prototxt"


# -- training ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    root = ensure_dataset(str(tmp_path_factory.mktemp("synthetic") / "set"), num_train=4,
                          num_test=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return load_dataset(root, "trainval", cache=False)


def jittered_proposals(dataset, seed=0):
    """Per image, its ground truth boxes shifted by up to 8 pixels and 40
    random boxes, clipped to the image: foreground and background RoIs."""
    rng = np.random.default_rng(seed)
    out = []
    for record in dataset.records:
        gt = np.repeat(record.boxes, 5, axis=0) + rng.uniform(-8, 8, (5 * len(record.boxes), 4))
        corner = rng.uniform(0, [record.width - 20, record.height - 20], (40, 2))
        size = rng.uniform(8, 80, (40, 2))
        boxes = np.concatenate([gt, np.concatenate([corner, corner + size], axis=1)])
        limit = [record.width - 1, record.height - 1] * 2
        boxes = np.clip(boxes, 0, limit)
        out.append(boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])])
    return out


def test_two_iterations_give_finite_losses(small_dataset):
    path = str(HERE / "sppnet_tiny.prototxt")
    net = Net(path, "TRAIN", device=CPU, seed=0)
    solver = SGDSolver(str(HERE / "sppnet_tiny_solver.prototxt"), net=net,
                       test_nets=[], seed=0, stream=io.StringIO())
    layer = find_data_layer(net, path)
    try:
        layer.set_dataset(small_dataset, proposals=jittered_proposals(small_dataset))
        losses = []
        for _ in range(2):
            solver.step(1)
            losses.append([float(np.asarray(net.blobs[n].data)) for n in ("loss_cls",
                                                                           "loss_bbox")])
    finally:
        layer.close()
    assert np.all(np.isfinite(losses)) and losses[0][0] > 0
    # At most 64 RoIs per image: fewer when an image has fewer candidates
    # (sampling without replacement, as py-faster-rcnn's minibatch).
    assert 0 < net.blobs["rois"].shape[0] <= sppnet.IMS_PER_BATCH * sppnet.ROIS_PER_IMAGE
    assert set(np.unique(np.asarray(net.blobs["rois"].data)[:, 0])) == {0.0, 1.0}
