"""py-R-FCN's alternating 5-step OHEM stage files, and the reference projects'
experiment configs (solver.defaults.reference_config).

- The layout of every stage file (VOC ResNet-50 and -101, COCO ResNet-101)
  from its facts, at the text level; the VOC ResNet-101 ones build with the
  reference shapes at a small image.
- Each yml mapping for a net of its kind, and what apply_reference_config
  writes (and leaves alone).
- The first three stages of the 5-step schedule (stage-1 RPN, its proposals,
  stage-1 R-FCN with OHEM on them) train through solver.schedule on the
  built-in dataset (ResNet-50 at 144 pixels, where 128-pixel anchors fit, one
  iteration each) with finite
  losses; the whole schedule file parses with the seven files beside it.
  (The whole schedule, run by hand, is in the README text of this work.)
"""
import io
import math

import numpy as np
import pytest

from netdef import Net
from netdef.schema import read_net
from prototxt.faster_rcnn import faster_rcnn_net
from prototxt.rfcn import rfcn_net
from prototxt.rfcn_alt_opt import (ALT_OPT_NETS, ALT_OPT_RPN_CHANNELS, alt_opt_schedule,
                                   rfcn_alt_opt_net)
from solver.defaults import NOT_MAPPED, REFERENCE_CONFIGS, apply_reference_config, \
    reference_config
from solver.schedule import Schedule, run_schedule
from tests.compat.reference_nets import (FASTER_RCNN_NETS, RFCN_ALT_OPT_NETS, RFCN_NETS,
                                         is_roi_data_layer, net_param, randomize_params)

SMALL = (96, 128)
ROIS = 32


def by_name(nets):
    return pytest.mark.parametrize("reference", nets, ids=[r.name for r in nets])


def layers_of(reference):
    return {lp.name: lp for lp in read_net(reference.text()).layer}


def lr_mults(lp):
    return [spec.lr_mult for spec in lp.param]


def resnet_map(size):
    """res4's size (stride 16): conv1 7x7/2 pad 3, pool1 3x3/2 (ceil), two 1x1/2."""
    size = (size + 6 - 7) // 2 + 1
    size = math.ceil((size - 3) / 2) + 1
    for _ in range(2):
        size = (size - 1) // 2 + 1
    return size


# -- the stage files' layout ---------------------------------------------------------------

@by_name(RFCN_ALT_OPT_NETS)
def test_stage_file_layout(reference):
    options = dict(reference.options)
    classes, net = options["classes"], options["net"]
    layers = layers_of(reference)
    types = {lp.type for lp in layers.values()}
    first = next(iter(layers.values()))
    assert layers["conv1"].param[0].lr_mult == 0
    assert all(not any(lr_mults(lp)) for lp in layers.values()
               if lp.type in ("BatchNorm", "Scale"))
    if "rpn" in net:
        assert not types & {"PSROIPooling", "BoxAnnotatorOHEM"}
        assert not [n for n in layers if n.startswith("res5")]       # the trunk ends at res4
        assert layers["rpn_conv/3x3"].convolution_param.num_output == ALT_OPT_RPN_CHANNELS
        assert layers["rpn_cls_score"].convolution_param.num_output == 18
        assert lr_mults(layers["rpn_cls_score"]) == [1, 2]
        trunk_fixed = net in ("stage2_rpn_train", "stage3_rpn_train")
        for name in ("res3a_branch2a", "res4a_branch2a"):
            assert lr_mults(layers[name]) == [0 if trunk_fixed else 1], name
    if net.endswith("rpn_train"):
        assert is_roi_data_layer(first) and list(first.top) == ["data", "im_info", "gt_boxes"]
        assert first.python_param.param_str == f"'num_classes': {classes}"
        assert layers["rpn-data"].python_param.module == "rpn.anchor_target_layer"
    elif net == "rpn_test":
        assert list(first.top) == ["data", "im_info"]
        assert list(layers["proposal"].top) == ["rois", "scores"]
    else:
        assert not [n for n in layers if n.startswith("rpn")]        # no RPN at all
        assert layers["rfcn_cls"].convolution_param.num_output == classes * 49
        assert layers["rfcn_bbox"].convolution_param.num_output == 8 * 49
        assert layers["res5a_branch2b"].convolution_param.dilation == [2]
        assert lr_mults(layers["res3a_branch2a"]) == [1]
    if net.endswith("rfcn_ohem_train"):
        assert is_roi_data_layer(first) and first.name == "data"
        assert list(first.top) == ["data", "rois", "labels", "bbox_targets",
                                   "bbox_inside_weights", "bbox_outside_weights"]
        assert first.python_param.param_str == f"'num_classes': {classes}"
        ohem = layers["annotator_detector"].box_annotator_ohem_param
        assert (ohem.roi_per_img, ohem.ignore_label) == (128, -1)
    elif net == "rfcn_test":
        assert list(first.top) == ["data", "rois"]
        assert list(layers["cls_prob_reshape"].reshape_param.shape.dim) == [-1, classes]
        assert list(layers["bbox_pred_reshape"].reshape_param.shape.dim) == [-1, 8]


VOC_101 = [r for r in RFCN_ALT_OPT_NETS if "pascal_voc/ResNet-101" in r.path
           and not r.path.endswith(("stage2_rpn_train.pt", "stage3_rpn_train.pt",
                                    "stage2_rfcn_ohem_train.pt"))]


@by_name(VOC_101)
def test_stage_nets_build_with_the_reference_shapes(reference):
    net = Net(net_param(reference, SMALL, rois=ROIS), reference.phase)
    h, w = (resnet_map(s) for s in SMALL)
    name = dict(reference.options)["net"]
    shapes = {n: b.shape for n, b in net.blobs.items()}
    if "rpn" in name:
        assert shapes["rpn/output"] == (1, ALT_OPT_RPN_CHANNELS, h, w)
        assert shapes["rpn_cls_score"] == (1, 18, h, w)
    if name == "stage1_rpn_train":
        assert shapes["rpn_labels"] == (1, 1, 9 * h, w)
    elif name == "rpn_test":
        count = shapes["rois"][0]
        assert 0 < count <= 300 and shapes["scores"] == (count, 1)
    elif name == "stage1_rfcn_ohem_train":
        expected = {"psroipooled_cls_rois": (ROIS, 21, 7, 7), "cls_score": (ROIS, 21, 1, 1),
                    "bbox_pred": (ROIS, 8, 1, 1), "per_roi_loss_cls": (ROIS, 1, 1, 1),
                    "per_roi_loss": (ROIS, 1, 1, 1), "labels_ohem": (ROIS, 1, 1, 1),
                    "bbox_loss_weights_ohem": (ROIS, 8, 1, 1)}
        assert {n: shapes[n] for n in expected} == expected
    elif name == "rfcn_test":
        assert (shapes["cls_prob"], shapes["bbox_pred"]) == ((ROIS, 21), (ROIS, 8))


# -- the experiment configs ---------------------------------------------------------------------

def alt(name, depth=101):
    return next(r for r in RFCN_ALT_OPT_NETS if r.path == f"models/pascal_voc/ResNet-{depth}/"
                f"rfcn_alt_opt_5step_ohem/{name}.pt")


def frcnn(name):
    return next(r for r in FASTER_RCNN_NETS if dict(r.options)["net"] == name)


CONFIG_CASES = [
    (RFCN_NETS[0], "py-R-FCN", "rfcn_end2end.yml"),
    (RFCN_NETS[1], "py-R-FCN", "rfcn_end2end_ohem.yml"),
    (RFCN_NETS[2], "py-R-FCN", "rfcn_end2end.yml"),            # its test net
    (alt("stage1_rpn_train"), "py-R-FCN", "rfcn_alt_opt_5step_ohem.yml"),
    (alt("rpn_test", 50), "py-R-FCN", "rfcn_alt_opt_5step_ohem.yml"),
    (alt("stage2_rfcn_ohem_train"), "py-R-FCN", "rfcn_alt_opt_5step_ohem.yml"),
    (frcnn("end2end_train"), "py-faster-rcnn", "faster_rcnn_end2end.yml"),
    (frcnn("end2end_test"), "py-faster-rcnn", "faster_rcnn_end2end.yml"),
    (frcnn("stage1_rpn_train"), "py-faster-rcnn", "faster_rcnn_alt_opt.yml"),
    (frcnn("stage2_fast_rcnn_train"), "py-faster-rcnn", "faster_rcnn_alt_opt.yml"),
    (frcnn("rpn_test"), "py-faster-rcnn", "faster_rcnn_alt_opt.yml"),
]


@pytest.mark.parametrize("reference, project, file", CONFIG_CASES,
                         ids=[c[0].name for c in CONFIG_CASES])
def test_each_net_is_recognised_with_its_yml_file(reference, project, file):
    config = reference_config(read_net(reference.text()))
    assert (config.project, config.file) == (project, file)
    assert config.path == "experiments/cfgs/" + file
    assert config.values is REFERENCE_CONFIGS[file]


def test_native_nets_carry_their_settings_and_get_no_config():
    """Nor does rfcn_test.pt, which has no Python layer (its RoIs are given)."""
    for text in (rfcn_net(50), faster_rcnn_net("end2end_train"), alt("rfcn_test").text()):
        net = read_net(text)
        before = net.SerializeToString()
        assert reference_config(net) is None and apply_reference_config(net) == []
        assert net.SerializeToString() == before


def param_strs(net):
    return {lp.name: lp.python_param.param_str for lp in net.layer if lp.type == "Python"}


def test_alt_opt_detector_stage_gets_the_yml_sampling():
    """rfcn_alt_opt_5step_ohem.yml's AGONISTIC, BATCH_SIZE -1 and BG_THRESH_LO
    0.0 go to the precomputed-RoI data layer, which then sizes its tops as
    the OHEM head needs them; the RPN stage's end-to-end data layer gets none."""
    net = read_net(alt("stage1_rfcn_ohem_train").text())
    applied = apply_reference_config(net)
    assert applied == [("data", "batch_size", -1), ("data", "bg_thresh_lo", 0.0),
                       ("data", "class_agnostic", True)]
    assert param_strs(net)["data"] == ("'num_classes': 21, 'batch_size': -1, "
                                       "'bg_thresh_lo': 0.0, 'class_agnostic': True")
    rpn = read_net(alt("stage1_rpn_train").text())
    assert apply_reference_config(rpn) == []


def test_faster_rcnn_end2end_yml_reaches_the_layers():
    net = read_net(frcnn("end2end_train").text())
    applied = apply_reference_config(net)
    assert ("roi-data", "bg_thresh_lo", 0.0) in applied
    assert param_strs(net)["rpn-data"] == \
        "'feat_stride': 16, 'batch_size': 256, 'positive_overlap': 0.7"
    assert param_strs(net)["roi-data"] == \
        "'num_classes': 21, 'bg_thresh_lo': 0.0, 'bbox_normalize_targets': True"
    # The alternating config changes nothing: its values are the layers' defaults.
    stage = read_net(frcnn("stage1_fast_rcnn_train").text())
    assert apply_reference_config(stage) == []


def test_a_value_in_the_file_wins_over_the_yml():
    net = read_net(alt("stage1_rfcn_ohem_train").text())
    data = next(lp for lp in net.layer if lp.name == "data")
    data.python_param.param_str = "{'num_classes': 21, 'bg_thresh_lo': 0.05}"
    applied = apply_reference_config(net)
    assert [key for _, key, _ in applied] == ["batch_size", "class_agnostic"]
    assert data.python_param.param_str == \
        "{'num_classes': 21, 'bg_thresh_lo': 0.05, 'batch_size': -1, 'class_agnostic': True}"


def test_settings_without_a_native_place_are_named():
    assert {file for file, _ in NOT_MAPPED} <= set(REFERENCE_CONFIGS)
    assert ("rfcn_alt_opt_5step_ohem.yml", "RPN_NORMALIZE_TARGETS") in NOT_MAPPED


# -- training through the schedule -------------------------------------------------------------

def write_stage_files(folder, depth=50, classes=7, scale=144, max_size=192):
    """The seven stage files, their data layers at a small scale (the
    built-in dataset has 7 classes with the background)."""
    folder.mkdir(parents=True, exist_ok=True)
    for net in ALT_OPT_NETS:
        text = rfcn_alt_opt_net(depth, classes, net, image=(scale, max_size))
        (folder / f"{net}.pt").write_text(text)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from detection.datasets.synthetic import generate
    return generate(tmp_path_factory.mktemp("alt_opt_data") / "synthetic", num_train=2,
                    num_test=1, seed=5)


def test_the_schedule_file_parses_beside_the_stage_files(tmp_path):
    folder = write_stage_files(tmp_path / "rfcn_alt_opt_5step_ohem")
    for dataset in ("pascal_voc", "coco"):
        path = folder / f"{dataset}_schedule.prototxt"
        path.write_text(alt_opt_schedule(dataset, 101))
        schedule = Schedule(str(path))
        assert [s.name for s in schedule.stages] == [
            "stage1_rpn", "stage1_proposals", "stage1_rfcn", "stage2_rpn", "stage2_proposals",
            "stage2_rfcn", "stage3_rpn", "stage3_test_proposals"]
        assert [s.kind for s in schedule.stages].count("train") == 5
        init = {s.name: list(s.param.init_from) for s in schedule.stages if s.kind == "train"}
        assert init == {"stage1_rpn": ["pretrained"], "stage1_rfcn": ["pretrained"],
                        "stage2_rpn": ["stage:stage1_rfcn"], "stage2_rfcn": ["pretrained"],
                        "stage3_rpn": ["stage:stage2_rfcn"]}
        lengths = {s.name: s.param.solver.max_iter for s in schedule.stages if s.kind == "train"}
        rfcn = 120000 if dataset == "pascal_voc" else 480000
        assert lengths["stage1_rfcn"] == lengths["stage2_rfcn"] == rfcn


def stand_in_imagenet_weights(folder, path):
    """A .caffemodel for the trunk and head of the stage files: random
    values that keep activations finite and varied (the ResNet files have
    no weight fillers: from their fillers the trunk would output zeros)."""
    net_param_ = read_net(str(folder / "stage1_rfcn_ohem_train.pt"))
    apply_reference_config(net_param_)
    net = Net(net_param_, "TRAIN")
    randomize_params(net, seed=7)
    net.save(str(path))
    return path


def test_the_first_stages_train_on_the_built_in_dataset(data, tmp_path):
    """stage-1 RPN, its proposals, then the stage-1 R-FCN with OHEM on them,
    with py-R-FCN's files as they ship (ResNet-50, scaled down), from
    stand-in ImageNet weights; solver.schedule applies the yml config to
    each stage net."""
    folder = write_stage_files(tmp_path / "files")
    weights = stand_in_imagenet_weights(folder, tmp_path / "imagenet.caffemodel")
    text = alt_opt_schedule("pascal_voc", 50)
    text = text[:text.index('stage {\n  name: "stage2_rpn"')]
    path = folder / "schedule.prototxt"
    path.write_text(text)
    stream = io.StringIO()
    runner = run_schedule(str(path), data=data, out=str(tmp_path / "out"), iters=1, seed=0,
                          stream=stream, evaluate=False, weights=str(weights))
    log = stream.getvalue()
    stages = runner.state["stages"]
    assert [stages[s]["status"] for s in ("stage1_rpn", "stage1_proposals", "stage1_rfcn")] \
        == ["done"] * 3
    losses = [float(v) for v in __import__("re").findall(r"iter 0/1  loss (\S+)", log)]
    assert len(losses) == 2 and all(np.isfinite(losses)) and all(v > 0 for v in losses)
    # Not the loss of all-zero features (ln 7 for 7 classes and no box loss).
    assert abs(losses[1] - math.log(7)) > 1e-3


def test_the_command_writes_the_stage_files_and_the_schedule(tmp_path, capsys):
    from prototxt.rfcn_alt_opt import main
    assert main(["--out-dir", str(tmp_path), "--depth", "50", "--dataset", "coco",
                 "--image", "192", "256"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([f"{n}.pt" for n in ALT_OPT_NETS] + ["schedule.prototxt"])
    for name in ("stage1_rpn_train.pt", "stage2_rfcn_ohem_train.pt"):
        assert "param_str: \"'num_classes': 81, 'scales': (192,), 'max_size': 256\"" in \
            (tmp_path / name).read_text()
    assert (tmp_path / "rfcn_test.pt").read_text() == rfcn_alt_opt_net(50, 81, "rfcn_test")
    assert len(Schedule(str(tmp_path / "schedule.prototxt")).stages) == 8
    assert f"wrote {tmp_path / 'schedule.prototxt'}" in capsys.readouterr().out


@pytest.mark.parametrize("call, message", [
    (lambda: rfcn_alt_opt_net(101, 21, "stage4_rpn_train"),
     "net must be one of stage1_rpn_train, .*rfcn_test, found 'stage4_rpn_train'"),
    (lambda: rfcn_alt_opt_net(101, 1), "classes counts the background too .* found 1"),
    (lambda: rfcn_alt_opt_net(34, 21), "depth must be one of"),
    (lambda: rfcn_alt_opt_net(50, 21, image=(0, 256)), "image sizes must be positive, found"),
    (lambda: alt_opt_schedule("kitti"), "dataset must be one of \\['coco', 'pascal_voc'\\], "
                                        "found 'kitti'"),
])
def test_bad_options_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_without_its_yml_config_the_detector_stage_names_the_mismatch():
    """What users met before: the data layer class-aware, its targets
    (128, 4 x classes) against the class-agnostic bbox_pred."""
    from netdef.errors import ShapeError
    with pytest.raises(ShapeError, match=r"layer 'per_roi_loss_bbox' .* \(128, 8, 1, 1\) .*"
                                         r"found shape \(128, 84\)"):
        Net(rfcn_alt_opt_net(50, 21, "stage1_rfcn_ohem_train"), "TRAIN")
