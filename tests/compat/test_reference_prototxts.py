"""py-faster-rcnn's and py-R-FCN's prototxts load unchanged.

The files are reproduced from their facts by our generators in the
``--python-layers`` form (see reference_nets.py). Each is built with
netdef.Net given inputs of the reference shapes; the headline nets are built
at the reference 600 x 1000 and their key shapes checked against what
py-R-FCN / py-faster-rcnn report; every net is built at a reduced 192 x 256
(map 12 x 16, large enough for RPN anchors to fall inside the image), and a
representative subset runs forward, and backward in TRAIN, on random data
with a few ground-truth boxes.
"""
import math
from pathlib import Path

import numpy as np
import pytest

from netdef import Net
from netdef.errors import NetDefinitionError
from netdef.inspect import main as inspect_main
from netdef.schema import read_net
from prototxt.rfcn import committed_files
from tests.compat.reference_nets import (
    CLASSES, FASTER_RCNN_NETS, GT_BOXES, REFERENCE_NETS, RFCN_NETS, ROIS, input_shapes,
    is_roi_data_layer, net_param, random_inputs, randomize_params, with_inputs)

PROTOTXT = Path(__file__).resolve().parents[2] / "prototxt"
FULL = (600, 1000)
SMALL = (192, 256)
A = 9  # anchors per position


def by_name(nets):
    return pytest.mark.parametrize("reference", nets, ids=[r.name for r in nets])


def resnet_map(size):
    """Height or width of res4 (stride 16): conv1 7x7/2 pad 3, pool1 3x3/2
    (Caffe's ceil), res3 and res4 1x1/2."""
    size = (size + 6 - 7) // 2 + 1
    size = math.ceil((size - 3) / 2) + 1
    for _ in range(2):
        size = (size - 1) // 2 + 1
    return size


def vgg_map(size):
    """Height or width of conv5_3: four 2x2/2 max poolings (ceil)."""
    for _ in range(4):
        size = math.ceil((size - 2) / 2) + 1
    return size


def feature_map(reference, image):
    mapping = resnet_map if reference.project == "py-R-FCN" else vgg_map
    return tuple(mapping(s) for s in image)


def build(reference, image, rois=ROIS):
    return Net(net_param(reference, image, rois), reference.phase)


def expected_shapes(reference, image):
    """Blob name -> shape that py-R-FCN / py-faster-rcnn give this net for
    one image of ``image`` (height, width) with GT_BOXES boxes. RoI counts
    are the layers' maxima: the Proposal layer's post-NMS count (Python-form
    files carry only feat_stride, so py-faster-rcnn's defaults apply:
    12000 / 2000 in TRAIN, 6000 / 300 in TEST) and ProposalTarget's batch of
    128."""
    options = dict(reference.options)
    h, w = feature_map(reference, image)
    shapes = {"rpn_cls_score": (1, 2 * A, h, w), "rpn_bbox_pred": (1, 4 * A, h, w),
              "rpn_cls_score_reshape": (1, 2, A * h, w)}
    if not (reference.kind == "rpn_stage" and reference.phase == "TRAIN"):
        shapes["rpn_cls_prob_reshape"] = (1, 2 * A, h, w)
    if reference.kind == "fast_rcnn_stage":
        shapes = {"conv5_3": (1, 512, h, w), "pool5": (ROIS, 512, 7, 7),
                  "cls_score": (ROIS, CLASSES), "bbox_pred": (ROIS, 4 * CLASSES),
                  "rpn_cls_score": (1, 2 * A, h, w)}
        return shapes
    proposals = min(2000 if reference.phase == "TRAIN" else 300, h * w * A)
    if reference.phase == "TRAIN":
        shapes["rpn_labels"] = (1, 1, A * h, w)
        shapes["rpn_bbox_targets"] = (1, 4 * A, h, w)
        if reference.kind != "rpn_stage":
            shapes["rpn_rois"] = (proposals, 5)
            rois = min(ROIS, proposals + GT_BOXES)
    else:
        rois = proposals
        shapes["rois"] = (rois, 5)
        if reference.kind == "rpn_stage":
            shapes["scores"] = (rois, 1)
    if reference.kind == "rpn_stage":
        return shapes
    if reference.kind == "rfcn":
        box = 4 * CLASSES if options.get("class_aware") else 8
        k = 7
        shapes.update({
            "rfcn_cls": (1, CLASSES * k * k, h, w), "rfcn_bbox": (1, box * k * k, h, w),
            "psroipooled_cls_rois": (rois, CLASSES, k, k),
            "psroipooled_loc_rois": (rois, box, k, k),
            "cls_score": (rois, CLASSES, 1, 1)})
        if reference.phase == "TRAIN":
            # labels (R, 1, 1, 1) as py-R-FCN's ProposalTarget writes them.
            shapes.update({"rois": (rois, 5), "labels": (rois, 1, 1, 1),
                           "bbox_pred": (rois, box, 1, 1),
                           "bbox_targets": (rois, box)})
        else:
            shapes.update({"cls_prob": (rois, CLASSES), "bbox_pred": (rois, box)})
    else:
        shapes.update({"pool5": (rois, 512, 7, 7), "fc7": (rois, 4096),
                       "cls_score": (rois, CLASSES), "bbox_pred": (rois, 4 * CLASSES)})
        if reference.phase == "TRAIN":
            shapes.update({"rois": (rois, 5), "bbox_targets": (rois, 4 * CLASSES)})
        else:
            shapes["cls_prob"] = (rois, CLASSES)
    return shapes


def check_shapes(net, reference, image):
    found = {name: net.blobs[name].shape for name in expected_shapes(reference, image)}
    assert found == expected_shapes(reference, image)


# -- the files themselves ---------------------------------------------------------------------

@by_name(REFERENCE_NETS)
def test_reference_text_uses_the_shipped_python_layers(reference):
    """The Python-form text names py-faster-rcnn's modules with their
    param_str, and no native detection layer type."""
    net = read_net(reference.text())
    python = {(l.python_param.module, l.python_param.layer): l.python_param.param_str
              for l in net.layer if l.type == "Python"}
    assert not {l.type for l in net.layer} & {"AnchorTarget", "Proposal", "ProposalTarget"}
    assert python.get(("rpn.proposal_layer", "ProposalLayer"), "'feat_stride': 16") == \
        "'feat_stride': 16"
    if reference.phase == "TRAIN":
        assert is_roi_data_layer(net.layer[0])
        classes = {"py-R-FCN": 21, "py-faster-rcnn": 21}[reference.project]
        assert net.layer[0].python_param.param_str == f"'num_classes': {classes}"
    else:
        assert net.layer[0].type == "Input"  # upgraded from the legacy input fields
        assert list(net.layer[0].top) == ["data", "im_info"]


def test_with_inputs_replaces_only_the_data_layer():
    reference = RFCN_NETS[0]
    original = read_net(reference.text())
    replaced = with_inputs(original, input_shapes())
    first = replaced.layer[0]
    assert (first.name, first.type, list(first.top)) == ("input-data", "Input",
                                                         ["data", "im_info", "gt_boxes"])
    assert [list(s.dim) for s in first.input_param.shape] == [[1, 3, 600, 1000], [1, 3], [3, 5]]
    assert list(replaced.layer)[1:] == list(original.layer)[1:]


# -- building at the reference size --------------------------------------------------------------

FULL_SIZE = [RFCN_NETS[0], RFCN_NETS[2], FASTER_RCNN_NETS[1]]


@by_name(FULL_SIZE)
def test_reference_shapes_at_600x1000(reference):
    net = build(reference, FULL)
    check_shapes(net, reference, FULL)
    if reference.project == "py-R-FCN":
        # The numbers the brief and py-R-FCN quote.
        assert net.blobs["rpn_cls_score"].shape == (1, 18, 38, 63)
        assert net.blobs["rfcn_cls"].shape == (1, 1029, 38, 63)
        rois = 128 if reference.phase == "TRAIN" else 300
        assert net.blobs["psroipooled_cls_rois"].shape == (rois, 21, 7, 7)
        assert net.blobs["cls_score"].shape == (rois, 21, 1, 1)
        bbox = net.blobs["bbox_pred"].shape
        assert bbox[:2] == (rois, 8)
    else:
        assert net.blobs["rpn_cls_score"].shape == (1, 18, 38, 63)
        assert net.blobs["pool5"].shape[1:] == (512, 7, 7)


# -- building every net at a reduced size ---------------------------------------------------------

@by_name(REFERENCE_NETS)
def test_builds_with_reference_shapes(reference):
    net = build(reference, SMALL)
    check_shapes(net, reference, SMALL)
    if reference.phase == "TRAIN":
        check_frozen_and_trained(net, reference)


def check_frozen_and_trained(net, reference):
    """Frozen layers have lr_mult 0 on every parameter, and those with
    nothing trainable below them skip backward; trained layers learn."""
    project, name = reference.project, dict(reference.options).get("net", "")
    if project == "py-R-FCN":
        frozen = ["conv1", "bn_conv1", "scale_conv1", "res2a_branch1", "res2c_branch2c",
                  "bn3a_branch2a", "scale4a_branch2a", "bn5c_branch2b"]
        skipped = ["conv1", "res2a_branch2a", "res2c_branch2c"]
        trained = ["res3a_branch2a", "res5c_branch2b", "rfcn_cls", "rfcn_bbox", "conv_new_1",
                   "rpn_conv/3x3", "rpn_cls_score"]
    else:
        frozen = skipped = ["conv1_1", "conv1_2", "conv2_1", "conv2_2"]
        trained = ["conv3_1", "conv5_3"]
        if name.startswith("stage2"):
            frozen = skipped = frozen + ["conv3_1", "conv5_3"]
            trained = []
        if name.endswith("rpn_train"):
            frozen, skipped = frozen + ["fc6", "fc7"], skipped + ["fc6", "fc7"]
            trained = trained + ["rpn_conv/3x3", "rpn_cls_score", "rpn_bbox_pred"]
        else:
            trained = trained + ["fc6", "fc7", "cls_score", "bbox_pred"]
        if name.endswith("fast_rcnn_train"):
            frozen = frozen + ["rpn_conv/3x3", "rpn_cls_score", "rpn_bbox_pred"]
            skipped = skipped + ["rpn_conv/3x3", "rpn_cls_score", "rpn_bbox_pred"]
    rates = {}
    for param in net.learnable_params:
        rates.setdefault(param.layer, []).append(param.lr_mult)
    needs = dict(zip(net.layer_dict, net.layer_need_backward))
    assert {n: rates[n] for n in frozen if any(rates[n])} == {}
    assert [n for n in trained if not all(rates[n])] == []
    assert [n for n in skipped if needs[n]] == []
    assert [n for n in trained if not needs[n]] == []


# -- running on random data ---------------------------------------------------------------------

RUN = [RFCN_NETS[0], RFCN_NETS[4], RFCN_NETS[5], RFCN_NETS[6],
       FASTER_RCNN_NETS[0], FASTER_RCNN_NETS[3], FASTER_RCNN_NETS[6]]


@by_name(RUN)
def test_forward_backward_on_random_data(reference):
    # 32 precomputed RoIs for the Fast R-CNN stage keep its fc6 cheap.
    net = build(reference, SMALL, rois=32)
    randomize_params(net, seed=1)
    out = net.forward(**random_inputs(net, seed=2))
    for name, value in out.items():
        assert np.all(np.isfinite(value)), name
    if reference.phase == "TEST":
        rois = net.blobs["rois"].shape[0]
        assert 0 < rois <= 300
        if "cls_prob" in out:
            np.testing.assert_allclose(out["cls_prob"].sum(axis=1), 1, rtol=1e-5)
            assert out["cls_prob"].shape == (rois, CLASSES)
        return
    assert np.isfinite(out.loss) and out.loss > 0
    if "rpn_cls_loss" in out:
        # The image is large enough for anchors inside it: the RPN learns too.
        assert out["rpn_cls_loss"] > 0
    net.backward()
    diff = {name: float(np.abs(blobs[0].diff).sum()) for name, blobs in net.params.items()}
    trained = ["rpn_conv/3x3", "rfcn_cls", "rfcn_bbox", "res3a_branch2a", "conv3_1", "fc6",
               "cls_score", "bbox_pred"]
    for name in trained:
        if name in diff and net.layer_need_backward[list(net.layer_dict).index(name)]:
            assert diff[name] > 0, name
    for name in ("conv1", "conv1_1", "res2a_branch2a"):
        if name in diff:
            assert diff[name] == 0, name


# -- errors ---------------------------------------------------------------------------------------

def test_roi_data_layer_needs_a_dataset():
    """Built as shipped, the net builds (the data layer sizes its tops at the
    reference shapes) and its first forward refuses with the explicit message."""
    net = Net(RFCN_NETS[0].text(), "TRAIN")
    assert net.blobs["data"].shape[:2] == (1, 3) and net.blobs["gt_boxes"].shape[1] == 5
    with pytest.raises(NetDefinitionError, match="needs a dataset") as error:
        net.forward()
    assert "input-data" in str(error.value) and "solver.train" in str(error.value)


def test_unknown_python_module_is_refused_with_the_registry_message():
    text = RFCN_NETS[2].text().replace("rpn.proposal_layer", "my_rpn.proposal_layer")
    with pytest.raises(NetDefinitionError) as error:
        Net(text, "TEST")
    message = str(error.value)
    assert "layer 'proposal'" in message
    assert "my_rpn.proposal_layer.ProposalLayer is not a known native layer" in message
    assert "rpn.proposal_layer.ProposalLayer" in message  # the known ones are listed
    assert "refused" in message and "allow_python_modules=['my_rpn.proposal_layer']" in message


def test_param_str_key_of_another_layer_is_refused():
    text = RFCN_NETS[2].text().replace("'feat_stride': 16", "'feat_stride': 16, 'sigma': 3")
    with pytest.raises(NetDefinitionError, match="'sigma' is not a setting"):
        Net(with_inputs(read_net(text), input_shapes(SMALL)), "TEST")


# -- the committed native nets, through netdef.inspect --------------------------------------

def test_inspect_prints_every_blob_of_rfcn_resnet101_train(capsys):
    path = PROTOTXT / "rfcn_resnet101.prototxt"
    assert inspect_main([str(path), "--phase", "TRAIN"]) == 0
    out = capsys.readouterr().out
    for text in ("data 1x3x600x1000", "im_info 1x3", "gt_boxes 1x5",
                 "rpn_cls_score 1x18x38x63", "rpn_cls_score_reshape 1x2x342x63",
                 "rpn_labels 1x1x342x63", "rpn_rois 300x5", "rois 128x5", "labels 128x1x1x1",
                 "bbox_targets 128x8", "res4b22 1x1024x38x63", "res5c 1x2048x38x63",
                 "conv_new_1 1x1024x38x63", "rfcn_cls 1x1029x38x63", "rfcn_bbox 1x392x38x63",
                 "psroipooled_cls_rois 128x21x7x7", "psroipooled_loc_rois 128x8x7x7",
                 "cls_score 128x21x1x1", "bbox_pred 128x8x1x1", "loss_cls scalar",
                 "loss_bbox scalar", "accuracy scalar"):
        assert text in out, text
    net = read_net(str(path))
    # Every top of every TRAIN-phase layer appears in the report with its shape.
    for layer in net.layer:
        if any(rule.phase == 1 for rule in layer.include):  # TEST only
            continue
        for top in layer.top:
            assert f" {top} " in out, top


# -- the committed native nets build and run too --------------------------------------------------

# The ResNet nets prototxt.rfcn keeps in prototxt/, each holding both phases.
NATIVE = sorted(name for name in committed_files() if name.startswith("rfcn_resnet"))


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
@pytest.mark.parametrize("name", NATIVE)
def test_committed_native_nets_build_and_run(name, phase):
    """Native typed layers, R-FCN's own settings: 300 proposals in TRAIN as in
    TEST, 128 sampled RoIs (all of them with OHEM). The ResNet-50 nets also
    run forward (and backward in TRAIN) on random data."""
    net = Net(with_inputs(read_net(str(PROTOTXT / name)), input_shapes(SMALL)), phase)
    h, w = (resnet_map(s) for s in SMALL)
    assert net.blobs["rpn_cls_score"].shape == (1, 18, h, w)
    assert net.blobs["rfcn_cls"].shape == (1, 1029, h, w)
    rois = {"TEST": 300, "TRAIN": 300 + GT_BOXES if "ohem" in name else 128}[phase]
    assert net.blobs["psroipooled_cls_rois"].shape == (rois, 21, 7, 7)
    if phase == "TRAIN":
        assert net.blobs["rpn_rois"].shape == (300, 5)
        assert net.blobs["bbox_targets"].shape == (rois, 8)
    else:
        assert net.blobs["cls_prob"].shape == (300, 21)
        assert net.blobs["bbox_pred"].shape == (300, 8)
    if "resnet50" not in name:
        return
    randomize_params(net, seed=3)
    out = net.forward(**random_inputs(net, seed=4))
    assert all(np.all(np.isfinite(v)) for v in out.values())
    if phase == "TRAIN":
        assert out.loss > 0
        net.backward()
        assert np.abs(net.params["rfcn_cls"][0].diff).sum() > 0
