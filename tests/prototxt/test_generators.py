"""The network generators: options give the right layers and channel counts,
and the committed files are what the generators write today."""
from pathlib import Path

import pytest

from netdef.schema import read_net
from prototxt import faster_rcnn, resnet, rfcn

PROTOTXT = Path(__file__).resolve().parents[2] / "prototxt"


def layers(text):
    return {layer.name: layer for layer in read_net(text).layer}


def conv_outputs(net, name):
    return net[name].convolution_param.num_output


# -- R-FCN: channel counts from the options ------------------------------------------------------

@pytest.mark.parametrize("classes,k,class_aware", [
    (21, 7, False), (21, 7, True), (81, 7, False), (81, 3, True), (2, 1, False), (5, 5, True)])
def test_rfcn_channel_counts(classes, k, class_aware):
    box = 4 * classes if class_aware else 8
    for phase in ("TRAIN", "TEST"):
        net = layers(rfcn.rfcn_net(50, classes, k, class_aware=class_aware, phase=phase))
        assert conv_outputs(net, "rfcn_cls") == classes * k * k
        assert conv_outputs(net, "rfcn_bbox") == box * k * k
        for name, dim in (("psroipooled_cls_rois", classes), ("psroipooled_loc_rois", box)):
            param = net[name].psroi_pooling_param
            assert (param.output_dim, param.group_size) == (dim, k)
            assert param.spatial_scale == pytest.approx(1 / 16)
        for name in ("ave_cls_score_rois", "ave_bbox_pred_rois"):
            pool = net[name].pooling_param
            assert (pool.pool, pool.kernel_size, pool.stride) == (1, k, k)  # AVE
        if phase == "TEST":
            assert list(net["cls_prob_reshape"].reshape_param.shape.dim) == [-1, classes]
            assert list(net["bbox_pred_reshape"].reshape_param.shape.dim) == [-1, box]
        else:
            target = net["roi-data"].proposal_target_param
            assert (target.num_classes, target.class_agnostic) == (classes, not class_aware)


def test_rfcn_voc_numbers():
    """The numbers of py-R-FCN's PASCAL VOC files, computed not typed."""
    assert rfcn.rfcn_channels(21, 7, False) == (1029, 392, 8)
    assert rfcn.rfcn_channels(21, 7, True) == (1029, 4116, 84)
    net = layers(rfcn.rfcn_net())
    assert conv_outputs(net, "rpn_cls_score") == 18 and conv_outputs(net, "rpn_bbox_pred") == 36
    assert conv_outputs(net, "rpn_conv/3x3") == 512 and conv_outputs(net, "conv_new_1") == 1024
    assert list(net["rpn_cls_score_reshape"].reshape_param.shape.dim) == [0, 2, -1, 0]
    assert list(net["rpn_cls_prob_reshape"].reshape_param.shape.dim) == [0, 18, -1, 0]


@pytest.mark.parametrize("depth,res4,blocks", [(101, "res4b22", (3, 4, 23, 3)),
                                               (50, "res4f", (3, 4, 6, 3))])
def test_rfcn_depth_trunk_and_rpn_bottom(depth, res4, blocks):
    net = layers(rfcn.rfcn_net(depth))
    assert list(net["rpn_conv/3x3"].bottom) == [res4]
    assert list(net["conv_new_1"].bottom) == ["res5c"]
    for stage, count in zip((2, 3, 4, 5), blocks):
        eltwise = [n for n, l in net.items() if l.type == "Eltwise" and n.startswith(f"res{stage}")]
        assert len(eltwise) == count
    # Kaiming's names: letters for the three-block stages of the deeper nets too.
    assert {"res2c", "res5a", "res5b", "res5c"} <= set(net)
    assert not {"res2b1", "res5b1"} & set(net)
    # conv1: Kaiming's ResNet-50 has a bias, 101 does not.
    assert net["conv1"].convolution_param.bias_term is (depth == 50)
    assert len(net["conv1"].param) == (2 if depth == 50 else 1)
    assert not layers(rfcn.rfcn_net(101, class_aware=True, rpn_on="res5"))[
        "rpn_conv/3x3"].bottom[0].startswith("res4")


def test_rfcn_res5_is_dilated_at_stride_1():
    net = layers(rfcn.rfcn_net(101))
    for name, layer in net.items():
        if layer.type != "Convolution" or not name.startswith("res"):
            continue
        p = layer.convolution_param
        stride = p.stride[0] if p.stride else 1
        dilation = p.dilation[0] if p.dilation else 1
        if name.startswith("res5") and name.endswith("branch2b"):
            assert (p.kernel_size[0], dilation, p.pad[0], stride) == (3, 2, 2, 1), name
        elif name.startswith("res5"):
            assert (dilation, stride) == (1, 1), name
        elif name in ("res3a_branch1", "res3a_branch2a", "res4a_branch1", "res4a_branch2a"):
            assert stride == 2, name
        else:
            assert (dilation, stride) == (1, 1), name


def test_rfcn_frozen_parameters():
    net = layers(rfcn.rfcn_net(101))
    for name, layer in net.items():
        rates = [(p.lr_mult, p.decay_mult if p.HasField("decay_mult") else None)
                 for p in layer.param]
        if layer.type in ("BatchNorm", "Scale"):
            assert layer.type != "BatchNorm" or layer.batch_norm_param.use_global_stats
            assert rates == [(0, 0)] * (3 if layer.type == "BatchNorm" else 2), name
        elif layer.type == "Convolution" and (name == "conv1" or name.startswith("res2")):
            assert rates == [(0, None)], name
        elif layer.type == "Convolution" and name.startswith("res"):
            assert rates == [(1, None)], name
        elif layer.type == "Convolution":  # RPN and head: weight 1, bias 2
            assert rates == [(1, None), (2, None)], name


def test_rfcn_ohem_losses():
    plain = layers(rfcn.rfcn_net(101))
    ohem = layers(rfcn.rfcn_net(101, ohem=True))
    assert "annotator_detector" not in plain
    annotator = ohem["annotator_detector"]
    assert annotator.type == "BoxAnnotatorOHEM"
    assert list(annotator.bottom) == ["rois", "per_roi_loss", "labels", "bbox_inside_weights"]
    assert list(annotator.top) == ["labels_ohem", "bbox_loss_weights_ohem"]
    assert (annotator.box_annotator_ohem_param.roi_per_img,
            annotator.box_annotator_ohem_param.ignore_label) == (128, -1)
    assert ohem["per_roi_loss_cls"].type == "SoftmaxWithLossOHEM"
    assert list(ohem["per_roi_loss_cls"].loss_weight) == [0, 0, 0]
    assert list(ohem["per_roi_loss_bbox"].loss_weight) == [0, 0]
    assert list(ohem["loss"].bottom) == ["cls_score", "labels_ohem"]
    assert ohem["loss"].loss_param.ignore_label == -1
    assert list(ohem["loss_bbox"].bottom) == ["bbox_pred", "bbox_targets",
                                              "bbox_loss_weights_ohem"]
    for net in (plain, ohem):
        assert net["loss_bbox"].type == "SmoothL1LossOHEM"
        assert net["loss_bbox"].loss_param.pre_fixed_normalizer == 128
    target = ohem["roi-data"].proposal_target_param
    assert (target.batch_size, target.bg_thresh_lo) == (-1, 0)
    target = plain["roi-data"].proposal_target_param
    assert (target.batch_size, target.bg_thresh_lo) == (128, pytest.approx(0.1))
    for net in (plain, ohem):
        proposal = net["proposal"].proposal_param
        assert (proposal.train_pre_nms_top_n, proposal.train_post_nms_top_n) == (6000, 300)


def test_rfcn_test_net_inputs_and_outputs():
    net = read_net(rfcn.rfcn_net(101, phase="TEST"))
    first = net.layer[0]
    assert first.type == "Input" and list(first.top) == ["data", "im_info"]
    assert [list(s.dim) for s in first.input_param.shape] == [[1, 3, 600, 1000], [1, 3]]
    names = {l.name for l in net.layer}
    assert not names & {"rpn-data", "roi-data", "loss", "rpn_loss_cls"}
    assert list(layers(rfcn.rfcn_net(phase="TEST"))["proposal"].top) == ["rois"]
    python = read_net(rfcn.rfcn_net(101, phase="TEST", python_layers=True))
    assert [list(s.dim) for s in python.layer[0].input_param.shape] == [[1, 3, 224, 224], [1, 3]]


def test_rfcn_python_and_native_forms_differ_only_in_the_detection_layers():
    for options in (dict(), dict(ohem=True), dict(phase="TEST"), dict(class_aware=True)):
        native = read_net(rfcn.rfcn_net(101, **options))
        python = read_net(rfcn.rfcn_net(101, python_layers=True, **options))
        assert len(native.layer) == len(python.layer)
        for a, b in zip(native.layer, python.layer):
            name = {"accuracy": "accuarcy"}.get(a.name, a.name)  # py-R-FCN's spelling
            assert name == b.name
            tops = [{"accuracy": "accuarcy"}.get(t, t) for t in a.top]
            assert (list(a.bottom), tops) == (list(b.bottom), list(b.top)), a.name
            if a.type != b.type:
                assert b.type == "Python"
                assert (a.type, b.python_param.module, b.python_param.layer) in {
                    ("RoIData", "roi_data_layer.layer", "RoIDataLayer"),
                    ("AnchorTarget", "rpn.anchor_target_layer", "AnchorTargetLayer"),
                    ("Proposal", "rpn.proposal_layer", "ProposalLayer"),
                    ("ProposalTarget", "rpn.proposal_target_layer", "ProposalTargetLayer")}
    python = layers(rfcn.rfcn_net(101, python_layers=True))
    assert python["roi-data"].python_param.param_str == "'num_classes': 2"
    assert python["input-data"].python_param.param_str == "'num_classes': 21"
    assert python["rpn-data"].python_param.param_str == "'feat_stride': 16"
    aware = layers(rfcn.rfcn_net(101, python_layers=True, class_aware=True))
    assert aware["roi-data"].python_param.param_str == "'num_classes': 21"


def test_rfcn_option_errors():
    for bad in (dict(depth=34), dict(classes=1), dict(k=0), dict(rpn_on="res3"),
                dict(phase="VAL")):
        with pytest.raises(ValueError):
            rfcn.rfcn_net(**bad)


# -- committed files ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(rfcn.committed_files()))
def test_committed_rfcn_prototxt_is_the_generators_output(name):
    """Regenerate with ``python -m prototxt.rfcn --regenerate`` after a
    generator change; never edit the files by hand."""
    assert (PROTOTXT / name).read_text() == rfcn.committed_files()[name]


def test_committed_rfcn_files_are_all_generated():
    """Every rfcn_* file prototxt.rfcn wrote is one it writes today (files
    of other generators name theirs in their header)."""
    on_disk = {p.name for p in PROTOTXT.glob("rfcn_*.prototxt")
               if p.read_text().startswith("# Generated by: python -m prototxt.rfcn ")}
    assert on_disk == set(rfcn.committed_files())


@pytest.mark.parametrize("depth", [50, 101, 152])
def test_committed_resnet_deploy_is_the_generators_output(depth):
    text = (PROTOTXT / f"resnet{depth}_deploy.prototxt").read_text()
    assert text == resnet.resnet_deploy(depth)


def test_resnet_trunk_options():
    text, outputs = resnet.resnet_trunk(101, last_stage=4)
    assert outputs == {1: "pool1", 2: "res2c", 3: "res3b3", 4: "res4b22"}
    assert "res5a" not in text
    text, outputs = resnet.resnet_trunk(152)
    assert outputs[3] == "res3b7" and outputs[4] == "res4b35" and outputs[5] == "res5c"
    assert "\n  param {" not in text  # no param specs in a deploy trunk
    text, _ = resnet.resnet_trunk(50, frozen_stages=set())
    assert "lr_mult: 0" in text  # BatchNorm and Scale stay frozen
    with pytest.raises(ValueError):
        resnet.resnet_trunk(50, last_stage=6)


# -- command lines ----------------------------------------------------------------------------

def test_rfcn_cli_prints_and_writes(tmp_path, capsys):
    assert rfcn.main(["--depth", "50", "--classes", "81", "--phase", "TEST"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Generated by: python -m prototxt.rfcn --depth 50 --classes 81")
    assert layers(out)["rfcn_cls"].convolution_param.num_output == 81 * 49
    assert rfcn.main(["--ohem", "--python-layers", "--out-dir", str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["rfcn_resnet101_python_layers_test.prototxt",
                       "rfcn_resnet101_python_layers_train_ohem.prototxt"]
    train = read_net(str(tmp_path / written[1]))
    assert train.layer[0].type == "Python"
    with pytest.raises(SystemExit):
        rfcn.main(["--classes", "1"])


def test_faster_rcnn_cli_writes_all_nets(tmp_path, capsys):
    assert faster_rcnn.main(["--out-dir", str(tmp_path), "--classes", "5"]) == 0
    assert len(list(tmp_path.iterdir())) == len(faster_rcnn.NETS)
    assert faster_rcnn.main(["--net", "rpn_test", "--python-layers"]) == 0
    assert "rpn.proposal_layer" in capsys.readouterr().out.split("wrote")[-1]


# -- Faster R-CNN ----------------------------------------------------------------------------

@pytest.mark.parametrize("classes", [21, 81, 2])
def test_faster_rcnn_class_counts(classes):
    for net_name in ("end2end_train", "end2end_test", "stage1_fast_rcnn_train",
                     "stage2_fast_rcnn_train", "faster_rcnn_test"):
        net = layers(faster_rcnn.faster_rcnn_net(net_name, classes))
        assert net["cls_score"].inner_product_param.num_output == classes
        assert net["bbox_pred"].inner_product_param.num_output == 4 * classes
        pool = net["roi_pool5"].roi_pooling_param
        assert (pool.pooled_h, pool.pooled_w) == (7, 7)
        assert pool.spatial_scale == pytest.approx(1 / 16)
        assert net["fc6"].inner_product_param.num_output == 4096
    train = layers(faster_rcnn.faster_rcnn_net("end2end_train", classes))
    assert train["roi-data"].proposal_target_param.num_classes == classes
    assert not train["roi-data"].proposal_target_param.class_agnostic


def _rates(layer):
    return [p.lr_mult for p in layer.param]


@pytest.mark.parametrize("name,frozen_convs,trains_rpn,trains_head", [
    ("end2end_train", 4, True, True),
    ("stage1_rpn_train", 4, True, False),
    ("stage1_fast_rcnn_train", 4, False, True),
    ("stage2_rpn_train", 13, True, False),
    ("stage2_fast_rcnn_train", 13, False, True)])
def test_faster_rcnn_stage_learning_rates(name, frozen_convs, trains_rpn, trains_head):
    net = layers(faster_rcnn.faster_rcnn_net(name))
    convs = [l for n, l in net.items() if n.startswith("conv")]
    assert len(convs) == 13
    assert [_rates(l) for l in convs] == [[0, 0]] * frozen_convs + [[1, 2]] * (13 - frozen_convs)
    rpn = [net[n] for n in ("rpn_conv/3x3", "rpn_cls_score", "rpn_bbox_pred")]
    assert all(_rates(l) == ([1, 2] if trains_rpn else [0, 0]) for l in rpn)
    head = [net[n] for n in ("fc6", "fc7") if n in net]
    assert all(_rates(l) == ([1, 2] if trains_head else [0, 0]) for l in head)
    if name.endswith("rpn_train") and name != "end2end_train":
        # fc6 / fc7 ride along on zeros so their weights are saved.
        assert list(net["fc6"].bottom) == ["dummy_roi_pool_conv5"]
        assert list(net["dummy_roi_pool_conv5"].dummy_data_param.shape[0].dim) == [1, 25088]
        assert list(net["silence_fc7"].bottom) == ["fc7"]
        assert "rpn-data" in net and "proposal" not in net
    if name.endswith("fast_rcnn_train"):
        assert list(net["data"].top) == ["data", "rois", "labels", "bbox_targets",
                                         "bbox_inside_weights", "bbox_outside_weights"]
        assert list(net["silence_rpn_cls_score"].bottom) == ["rpn_cls_score"]
        assert list(net["silence_rpn_bbox_pred"].bottom) == ["rpn_bbox_pred"]
        assert "rpn-data" not in net and "proposal" not in net


def test_faster_rcnn_test_nets():
    rpn_test = layers(faster_rcnn.faster_rcnn_net("rpn_test"))
    assert list(rpn_test["proposal"].top) == ["rois", "scores"]
    assert rpn_test["proposal"].proposal_param.output_score
    assert "fc6" not in rpn_test
    full = layers(faster_rcnn.faster_rcnn_net("faster_rcnn_test", python_layers=True))
    assert not any(l.param for l in full.values())
    assert not any(l.type == "Dropout" for l in full.values())
    end2end = layers(faster_rcnn.faster_rcnn_net("end2end_test"))
    assert {"drop6", "drop7", "cls_prob"} <= set(end2end)
    assert [(p.lr_mult, p.decay_mult) for p in end2end["conv3_1"].param] == [(1, 1), (2, 0)]
    with pytest.raises(ValueError):
        faster_rcnn.faster_rcnn_net("stage3_rpn_train")


# -- both phases in one file, and the tiny net -----------------------------------------------

def _phase_layers(text, phase):
    """The layers of ``text`` that phase ``phase`` keeps, include rules dropped."""
    from netdef import caffe_pb2, graph
    filtered, _ = graph.filter_net(read_net(text), phase, 0, ())
    out = []
    for layer in filtered.layer:
        copy = caffe_pb2.LayerParameter()
        copy.CopyFrom(layer)
        copy.ClearField("include")
        out.append(copy)
    return out


@pytest.mark.parametrize("depth,classes,k,ohem", [(101, 21, 7, False), (50, 21, 7, True),
                                                  ("tiny", 7, 3, False), ("tiny", 4, 2, True)])
def test_both_phases_file_holds_exactly_each_phase(depth, classes, k, ohem):
    both = rfcn.rfcn_net_both(depth, classes, k, ohem=ohem)
    for phase in ("TRAIN", "TEST"):
        alone = rfcn.rfcn_net(depth, classes, k, ohem=ohem, phase=phase, test_input="layer")
        assert _phase_layers(both, phase) == list(read_net(alone).layer), phase
    net = read_net(both)
    shared = [l for l in net.layer if not l.include]
    assert len(shared) > len(net.layer) / 2   # the trunk and head are written once
    assert net.layer[0].type == "RoIData" and net.layer[1].type == "Input"


def test_tiny_net_layout():
    train = layers(rfcn.rfcn_net("tiny", 7, 3))
    test = layers(rfcn.rfcn_net("tiny", 7, 3, phase="TEST"))
    assert conv_outputs(train, "rfcn_cls") == 7 * 9 and conv_outputs(train, "rfcn_bbox") == 72
    assert conv_outputs(train, "rpn_cls_score") == 18
    for net in (train, test):
        assert net["psroipooled_cls_rois"].psroi_pooling_param.spatial_scale == 0.125
        assert not any(l.type == "BatchNorm" for l in net.values())
        proposal = net["proposal"].proposal_param
        assert (proposal.feat_stride, proposal.base_size, list(proposal.scales)) == \
            (8, 8, [3, 6, 12])
    anchors = train["rpn-data"].anchor_target_param
    assert (anchors.feat_stride, anchors.base_size, list(anchors.scales)) == (8, 8, [3, 6, 12])
    data = train["input-data"].roi_data_param
    assert (data.num_classes, list(data.scales), data.max_size) == (7, [192], 256)
    first = read_net(rfcn.rfcn_net("tiny", phase="TEST")).layer[0]
    assert [list(s.dim) for s in first.input_param.shape] == [[1, 3, 192, 256], [1, 3]]
    with pytest.raises(ValueError, match="native form only"):
        rfcn.rfcn_net("tiny", python_layers=True)


def test_rfcn_data_layer_forms():
    native = read_net(rfcn.rfcn_net(50)).layer[0]
    assert native.type == "RoIData" and list(native.top) == ["data", "im_info", "gt_boxes"]
    assert (native.roi_data_param.num_classes, list(native.roi_data_param.scales),
            native.roi_data_param.max_size) == (21, [600], 1000)
    placeholder = read_net(rfcn.rfcn_net(50, data="input")).layer[0]
    assert placeholder.type == "Input"
    assert [list(s.dim) for s in placeholder.input_param.shape] == [[1, 3, 600, 1000], [1, 3],
                                                                     [1, 5]]


def test_rfcn_cli_tiny_both_phases(tmp_path, capsys):
    assert rfcn.main(["--tiny", "--classes", "4", "--phase", "BOTH"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Generated by: python -m prototxt.rfcn --depth tiny --classes 4 "
                          "--k 3 --phase BOTH")
    assert layers(out)["rfcn_cls"].convolution_param.num_output == 4 * 9
    assert rfcn.main(["--depth", "50", "--ohem", "--phase", "both", "--out-dir",
                      str(tmp_path)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["rfcn_resnet50_ohem.prototxt"]
    with pytest.raises(SystemExit):
        rfcn.main(["--python-layers", "--phase", "BOTH"])


def test_committed_tiny_solver_names_its_net():
    from netdef.schema import read_solver
    solver = read_solver(str(PROTOTXT / "rfcn_tiny_solver.prototxt"))
    assert solver.net == "rfcn_tiny.prototxt" and solver.max_iter > 0
