"""python -m prototxt.faster_rcnn --backbone ...: Faster R-CNN and Fast R-CNN
nets on every backbone (layout facts, blob shapes of a built net, both
phases in one file, the Python-layer form), the committed files, the CLI,
a few training iterations of the tiny nets, and the class-count hint."""
import io
import warnings

import numpy as np
import pytest

from detection.classes import class_mismatch_hint
from detection.datasets import DataWarning, load_dataset
from detection.datasets.synthetic import ensure_dataset
from netdef import caffe_pb2, graph
from netdef.device import CPU
from netdef.net import Net
from netdef.schema import read_net
from prototxt.generator_cli import HERE
from prototxt import faster_rcnn
from prototxt.faster_rcnn_backbone import detector_net, detector_net_both
from prototxt.faster_rcnn_files import committed_files
from prototxt.faster_rcnn_parts import BACKBONES, FAST_RCNN_SAMPLING, faster_rcnn_trunk
from solver.session import find_data_layer
from solver.sgd import SGDSolver



def layers(text):
    return {layer.name: layer for layer in read_net(text).layer}


def _rates(layer):
    return [p.lr_mult for p in layer.param]


# -- layout facts ---------------------------------------------------------------------------

# backbone: (trunk top, stride, channels, RPN channels, RoI layer, pooled, fc6, fc7)
FACTS = {
    "tiny": ("conv5", 8, 64, 64, "roi_pool5", 7, 256, 256),
    "zf": ("conv5", 16, 256, 256, "roi_pool_conv5", 6, 4096, 4096),
    "vgg_cnn_m_1024": ("conv5", 16, 512, 256, "roi_pool5", 6, 4096, 1024),
    "vgg16": ("conv5_3", 16, 512, 512, "roi_pool5", 7, 4096, 4096),
    "resnet50": ("res4f", 16, 1024, 512, "roi_pool5", 14, None, None),
    "resnet101": ("res4b22", 16, 1024, 512, "roi_pool5", 14, None, None),
}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_backbone_layout(backbone):
    top, stride, channels, rpn, roi, pooled, fc6, fc7 = FACTS[backbone]
    trunk = faster_rcnn_trunk(backbone)
    assert (trunk.top, trunk.stride, trunk.channels) == (top, stride, channels)
    net = layers(detector_net(backbone, 5))
    assert net["rpn_conv/3x3"].convolution_param.num_output == rpn
    assert list(net["rpn_conv/3x3"].bottom) == [top]
    pool = net[roi].roi_pooling_param
    assert (pool.pooled_h, pool.pooled_w, pool.spatial_scale) == (pooled, pooled, 1 / stride)
    assert list(net[roi].bottom) == [top, "rois"]
    assert net["cls_score"].inner_product_param.num_output == 5
    assert net["bbox_pred"].inner_product_param.num_output == 20
    target = net["roi-data"].proposal_target_param
    assert (target.num_classes, target.class_agnostic, target.bg_thresh_lo) == (5, False, 0.0)
    if fc6:
        assert [net[n].inner_product_param.num_output for n in ("fc6", "fc7")] == [fc6, fc7]
        assert list(net["cls_score"].bottom) == ["fc7"]
    else:  # ResNet: res5 on the 14 x 14 RoIs at stride 2, then 7 x 7 average pooling
        assert list(net["res5a_branch1"].bottom) == [roi]
        assert net["res5a_branch1"].convolution_param.stride == [2]
        assert net["pool5"].pooling_param.kernel_size == 7
        assert list(net["cls_score"].bottom) == ["pool5"]


def test_lrn_and_frozen_layers_of_the_py_faster_rcnn_backbones():
    zf, vgg_m = layers(detector_net("zf")), layers(detector_net("vgg_cnn_m_1024"))
    lrn = zf["norm1"].lrn_param
    assert (lrn.local_size, lrn.alpha, lrn.beta, lrn.norm_region) == \
        (3, pytest.approx(5e-5), 0.75, caffe_pb2.LRNParameter.WITHIN_CHANNEL)
    lrn = vgg_m["norm2"].lrn_param
    assert (lrn.local_size, lrn.alpha, lrn.beta, lrn.k) == (5, pytest.approx(5e-4), 0.75, 2)
    conv1 = zf["conv1"].convolution_param
    assert (conv1.num_output, conv1.kernel_size, conv1.stride, conv1.pad) == (96, [7], [2], [3])
    assert zf["pool1"].pooling_param.pad == 1 and vgg_m["pool1"].pooling_param.pad == 0
    assert _rates(zf["conv1"]) == [1, 2] and _rates(vgg_m["conv1"]) == [0, 0]
    assert _rates(vgg_m["conv2"]) == [1, 2]
    vgg16 = layers(detector_net("vgg16"))
    assert _rates(vgg16["conv2_2"]) == [0, 0] and _rates(vgg16["conv3_1"]) == [1, 2]
    resnet = layers(detector_net("resnet50"))
    assert _rates(resnet["res2a_branch2a"]) == [0] and _rates(resnet["res3a_branch2a"]) == [1]
    assert _rates(resnet["res5a_branch2a"]) == [1]
    assert resnet["bn5a_branch2a"].batch_norm_param.use_global_stats


def _small(text, rois=8, fc=16):
    """``text`` parsed, with 8 RoIs and fc layers of 16 outputs, so that a
    build allocates megabytes, not gigabytes."""
    net = read_net(text)
    for lp in net.layer:
        if lp.type == "Proposal":
            lp.proposal_param.train_post_nms_top_n = rois
            lp.proposal_param.test_post_nms_top_n = rois
        if lp.type == "ProposalTarget":
            lp.proposal_target_param.batch_size = rois
        if lp.name in ("fc6", "fc7"):
            lp.inner_product_param.num_output = fc
    return net


# The trunk's output at a 96 x 128 input, by Caffe's size rules (convolution
# floor, pooling ceil): ZF 96 -> 48 -> 25 -> 13 -> 7, VGG-M 128 -> 61 -> 30 ->
# 14 -> 7, ResNet 96 -> 48 -> 24 -> 12 -> 6.
TRUNK_SIZE = {"tiny": (12, 16), "zf": (7, 9), "vgg_cnn_m_1024": (5, 7), "vgg16": (6, 8),
              "resnet50": (6, 8), "resnet101": (6, 8)}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_builds_in_both_phases(backbone):
    top, _, channels, _, roi, pooled, _, _ = FACTS[backbone]
    for phase in ("TRAIN", "TEST"):
        net = Net(_small(detector_net(backbone, 5, phase=phase, image=(96, 128),
                                      test_input="layer")), phase, device=CPU)
        assert net.blobs[top].shape == (1, channels) + TRUNK_SIZE[backbone], phase
        assert net.blobs["rois"].shape == (8, 5)
        assert net.blobs[roi if roi in net.blobs else "pool5"].shape[2:] in \
            ((pooled, pooled), (1, 1))
        assert net.blobs["cls_score"].shape == (8, 5)
        assert net.blobs["bbox_pred"].shape == (8, 20)
        if phase == "TEST":
            assert net.blobs["cls_prob"].shape == (8, 5)
            assert set(net.inputs) == {"data", "im_info"}


# -- phases, forms --------------------------------------------------------------------------

def _phase_layers(text, phase):
    filtered, _ = graph.filter_net(read_net(text), phase, 0, ())
    out = []
    for lp in filtered.layer:
        copy = caffe_pb2.LayerParameter()
        copy.CopyFrom(lp)
        copy.ClearField("include")
        out.append(copy)
    return out


@pytest.mark.parametrize("backbone,proposals", [("tiny", "rpn"), ("tiny", "external"),
                                                ("zf", "rpn"), ("resnet50", "external")])
def test_both_phases_file_holds_exactly_each_phase(backbone, proposals):
    both = detector_net_both(backbone, 4, proposals=proposals)
    for phase in ("TRAIN", "TEST"):
        alone = detector_net(backbone, 4, phase=phase, proposals=proposals, test_input="layer")
        assert _phase_layers(both, phase) == list(read_net(alone).layer), phase
    net = read_net(both)
    assert len([lp for lp in net.layer if not lp.include]) > len(net.layer) / 2
    assert net.layer[0].type == "RoIData" and net.layer[1].type == "Input"


def test_fast_rcnn_form_reads_external_proposals_with_fast_rcnn_sampling():
    train = layers(detector_net("tiny", proposals="external"))
    data = train["input-data"]
    assert list(data.top) == ["data", "rois", "labels", "bbox_targets", "bbox_inside_weights",
                              "bbox_outside_weights"]
    p = data.roi_data_param
    assert not p.has_rpn and (p.ims_per_batch, p.batch_size) == (2, 128)
    assert (p.fg_fraction, p.fg_thresh, p.bg_thresh_hi, p.bg_thresh_lo) == \
        pytest.approx((0.25, 0.5, 0.5, 0.1))
    assert FAST_RCNN_SAMPLING["batch_size"] == 2 * 64
    assert not any(lp.type in ("AnchorTarget", "Proposal", "ProposalTarget")
                   for lp in train.values())
    test = read_net(detector_net("tiny", proposals="external", phase="TEST", test_input="layer"))
    assert list(test.layer[0].top) == ["data", "im_info", "rois"]
    assert [list(s.dim) for s in test.layer[0].input_param.shape] == [[1, 3, 192, 256], [1, 3],
                                                                       [1, 5]]
    assert read_net(detector_net("tiny", proposals="external")).name == "Fast R-CNN tiny"


def test_python_layer_form():
    train = layers(detector_net("zf", phase="TRAIN", python_layers=True))
    modules = {lp.python_param.module for lp in train.values() if lp.type == "Python"}
    assert modules == {"roi_data_layer.layer", "rpn.anchor_target_layer", "rpn.proposal_layer",
                       "rpn.proposal_target_layer"}
    test = detector_net("zf", phase="TEST", python_layers=True)
    assert test.startswith('name: "ZF"\ninput: "data"\ninput_shape {\n  dim: 1\n  dim: 3\n'
                           '  dim: 224\n  dim: 224\n}\ninput: "im_info"')
    with pytest.raises(ValueError, match="native form only"):
        detector_net("tiny", python_layers=True)
    with pytest.raises(ValueError, match="backbone must be one of"):
        detector_net("alexnet")
    with pytest.raises(ValueError, match="classes counts the background"):
        detector_net("zf", 1)


@pytest.mark.parametrize("backbone", ["zf", "vgg_cnn_m_1024"])
def test_py_faster_rcnn_nets_for_zf_and_vgg_m(backbone):
    rpn_stage = layers(faster_rcnn.faster_rcnn_net("stage1_rpn_train", backbone=backbone))
    channels, pooled = FACTS[backbone][2], FACTS[backbone][5]
    assert list(rpn_stage["dummy_roi_pool_conv5"].dummy_data_param.shape[0].dim) == \
        [1, channels * pooled * pooled]
    stage2 = layers(faster_rcnn.faster_rcnn_net("stage2_fast_rcnn_train", backbone=backbone))
    assert all(_rates(stage2[f"conv{i}"]) == [0, 0] for i in range(1, 6))
    assert stage2["data"].type == "RoIData" and not stage2["data"].roi_data_param.has_rpn
    with pytest.raises(ValueError, match="py-faster-rcnn's nets"):
        faster_rcnn.faster_rcnn_net("end2end_train", backbone="resnet50")


# -- files and the command line -------------------------------------------------------------

def test_regenerate_reproduces_the_committed_files():
    files = committed_files()
    assert {"faster_rcnn_tiny.prototxt", "faster_rcnn_tiny_solver.prototxt",
            "fast_rcnn_tiny.prototxt", "fast_rcnn_tiny_solver.prototxt",
            "faster_rcnn_tiny_staged_schedule.prototxt"} <= set(files)
    for name, text in files.items():
        assert (HERE / name).read_text() == text, name


def test_the_committed_schedule_reads_and_its_stage_nets_cut_the_tiny_net():
    from solver.schedule_file import Schedule
    schedule = Schedule(str(HERE / "faster_rcnn_tiny_staged_schedule.prototxt"))
    assert [stage.name for stage in schedule.stages] == [
        "stage1_rpn", "stage1_rpn_proposals", "stage1_fast_rcnn", "stage2_rpn",
        "stage2_rpn_proposals", "stage2_fast_rcnn", "detector"]
    detector = layers((HERE / "faster_rcnn_tiny_staged_detector_train.prototxt").read_text())
    assert "rpn_conv/3x3" not in detector and "fc7" in detector
    assert not detector["input-data"].roi_data_param.has_rpn


def test_cli(tmp_path, capsys):
    assert faster_rcnn.main(["--backbone", "tiny", "--phase", "BOTH"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Generated by: python -m prototxt.faster_rcnn --backbone tiny "
                          "--phase BOTH\n")
    assert out == (HERE / "faster_rcnn_tiny.prototxt").read_text()
    assert faster_rcnn.main(["--backbone", "resnet101", "--classes", "81", "--phase", "test"]) == 0
    assert layers(capsys.readouterr().out)["bbox_pred"].inner_product_param.num_output == 324
    assert faster_rcnn.main(["--backbone", "zf", "--out-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir())[0] == "faster_rcnn_zf_end2end_test.prototxt"
    for bad in (["--backbone", "tiny", "--python-layers"], ["--net", "rpn_test", "--phase", "BOTH"],
                ["--backbone", "resnet50", "--net", "rpn_test"], ["--backbone", "zf",
                                                                  "--python-layers", "--phase",
                                                                  "BOTH"]):
        with pytest.raises(SystemExit):
            faster_rcnn.main(bad)


# -- training -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    root = ensure_dataset(str(tmp_path_factory.mktemp("synthetic") / "set"), num_train=4,
                          num_test=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return load_dataset(root, "trainval", cache=False)


def _jittered_proposals(dataset, seed=0):
    """Per image its ground truth boxes shifted by up to 8 pixels and 30
    random boxes, clipped to the image."""
    rng = np.random.default_rng(seed)
    out = []
    for record in dataset.records:
        gt = np.repeat(record.boxes, 4, axis=0) + rng.uniform(-8, 8, (4 * len(record.boxes), 4))
        corner = rng.uniform(0, [record.width - 20, record.height - 20], (30, 2))
        boxes = np.concatenate([gt, np.concatenate([corner, corner + 40], axis=1)])
        boxes = np.clip(boxes, 0, [record.width - 1, record.height - 1] * 2)
        out.append(boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])])
    return out


@pytest.mark.parametrize("stem", ["faster_rcnn_tiny", "fast_rcnn_tiny"])
def test_two_iterations_of_the_tiny_nets_give_finite_losses(small_dataset, stem):
    path = str(HERE / f"{stem}.prototxt")
    net = Net(path, "TRAIN", device=CPU, seed=0)
    solver = SGDSolver(str(HERE / f"{stem}_solver.prototxt"), net=net, test_nets=[], seed=0,
                       stream=io.StringIO())
    layer = find_data_layer(net, path)
    proposals = _jittered_proposals(small_dataset) if stem.startswith("fast_") else None
    try:
        layer.set_dataset(small_dataset, proposals=proposals)
        losses = []
        for _ in range(2):
            solver.step(1)
            losses.append([float(np.asarray(net.blobs[n].data)) for n in ("loss_cls",
                                                                           "loss_bbox")])
    finally:
        layer.close()
    assert np.all(np.isfinite(losses)) and losses[0][0] > 0
    if stem.startswith("fast_"):  # two images per minibatch, at most 64 RoIs each
        assert set(np.unique(np.asarray(net.blobs["rois"].data)[:, 0])) == {0.0, 1.0}
        assert net.blobs["rois"].shape[0] <= 128


def test_class_count_hint_names_the_faster_rcnn_generator(tmp_path):
    five = tmp_path / "five.prototxt"
    five.write_text(faster_rcnn.generated_file_for("tiny", 5, phase="BOTH"))
    assert class_mismatch_hint(str(five), 7).startswith(
        "python -m prototxt.faster_rcnn --backbone tiny --classes 7 --phase BOTH > ")
    bare = tmp_path / "bare.prototxt"  # no "Generated by" line: known by its name
    bare.write_text(detector_net("tiny", 5, proposals="external"))
    assert "--backbone tiny --classes 7 --proposals external" in class_mismatch_hint(str(bare), 7)
    legacy = tmp_path / "vgg.prototxt"
    legacy.write_text(faster_rcnn.faster_rcnn_net("end2end_train", 5))
    assert class_mismatch_hint(str(legacy), 7).startswith("python -m prototxt.faster_rcnn")
    staged = str(HERE / "faster_rcnn_tiny_staged_rpn_train.prototxt")
    assert class_mismatch_hint(staged, 3).startswith("python -m prototxt.faster_rcnn --backbone "
                                                     "tiny --classes 3")
    assert class_mismatch_hint(str(HERE / "rfcn_tiny.prototxt"), 3).startswith(
        "python -m prototxt.rfcn --depth tiny --classes 3")
