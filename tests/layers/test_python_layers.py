"""``type: "Python"`` layers of py-faster-rcnn / py-R-FCN: the registry
mapping, param_str reading (a literal, never evaluated) and a small net."""
import numpy as np
import pytest

from layers.anchor_target import AnchorTargetLayer
from layers.base import layer_class, python_layer_table
from layers.proposal import ProposalLayer
from layers.proposal_target import ProposalTargetLayer
from layers.python_compat import ParamStrError, parse_param_str
from layers.roi_data import RoIDataLayer
from netdef import caffe_pb2
from netdef.errors import NetDefinitionError
from netdef.gradcheck import build_layer, setup_layer
from netdef.schema import parse_text


@pytest.mark.parametrize("text,expected", [
    ("'feat_stride': 16", {"feat_stride": 16}),
    ("'num_classes': 21", {"num_classes": 21}),
    ("{'feat_stride': 16, 'scales': (8, 16, 32)}", {"feat_stride": 16, "scales": (8, 16, 32)}),
    ('"feat_stride": 8', {"feat_stride": 8}),
    ("feat_stride: 16", {"feat_stride": 16}),
    ("feat_stride: 16\nscales: [4, 8]\nclass_agnostic: true", {"feat_stride": 16, "scales": [4, 8],
                                                                "class_agnostic": True}),
    ("{feat_stride: 16, mode: fast}", {"feat_stride": 16, "mode": "fast"}),
    # as in several py-faster-rcnn prototxts (a newline, or a written \\n)
    ("'feat_stride': 16 \n'scales': !!python/tuple [8, 16, 32]",
     {"feat_stride": 16, "scales": (8, 16, 32)}),
    ("'feat_stride': 16\\n'scales': !!python/list [4, 8]", {"feat_stride": 16, "scales": [4, 8]}),
    ("'min_size': !!float 8", {"min_size": 8.0}),
    ("", {}),
    ("   ", {}),
])
def test_parse_param_str(text, expected):
    assert parse_param_str(text) == expected


@pytest.mark.parametrize("text,match", [
    ("__import__('os').system('echo hacked')", "not 'key: value'"),
    ("'a': __import__('os')", "is not a literal"),
    ("'a': open('x')", "is not a literal"),
    ("[1, 2]", "not 'key: value'"),
    ("'a': (1, 2", "unclosed"),
    ("{1: 2}", "is not a string"),
    ("x" * 20000, "characters long"),
    ("'scales': !!python/object:os.system [1]", "YAML tag '!!python/object:os.system'"),
    ("'scales': !!int [1, 2]", "value '\\[1, 2\\]' of 'scales'"),
])
def test_parse_param_str_refuses_what_is_not_a_literal_dict(text, match):
    with pytest.raises(ParamStrError, match=match):
        parse_param_str(text)


def layer_param(text):
    return parse_text(text, caffe_pb2.LayerParameter(), "<test>")


def python_layer(module, layer, param_str="", name="py"):
    return layer_param(f'name: "{name}" type: "Python" python_param {{ module: "{module}" '
                       f'layer: "{layer}" param_str: "{param_str}" }}')


@pytest.mark.parametrize("module,layer,cls", [
    ("rpn.anchor_target_layer", "AnchorTargetLayer", AnchorTargetLayer),
    ("rpn.proposal_layer", "ProposalLayer", ProposalLayer),
    ("rpn.proposal_target_layer", "ProposalTargetLayer", ProposalTargetLayer),
    ("roi_data_layer.layer", "RoIDataLayer", RoIDataLayer),
])
def test_reference_modules_map_to_native_layers(module, layer, cls):
    assert layer_class(python_layer(module, layer)) is cls
    assert python_layer_table()[(module, layer)] is cls


def test_unknown_python_module_is_refused_by_name():
    with pytest.raises(NetDefinitionError,
                       match=r"layer 'py': Python layer my_project\.layers\.Mine is not a known "
                             r"native layer.*rpn\.proposal_layer\.ProposalLayer"):
        layer_class(python_layer("my_project.layers", "Mine"))


ROI_DATA_E2E = ('name: "input-data" type: "Python" top: "data" top: "im_info" top: "gt_boxes" '
                'python_param { module: "roi_data_layer.layer" layer: "RoIDataLayer" '
                "param_str: \"'num_classes': 21\" }")


def test_roi_data_layer_reads_num_classes_and_sizes_reference_tops():
    layer = build_layer(ROI_DATA_E2E)
    _, tops = setup_layer(layer, [])
    assert isinstance(layer, RoIDataLayer) and layer.num_classes == 21 and layer.has_rpn
    assert [t.shape for t in tops] == [(1, 3, 600, 1000), (1, 3), (1, 5)]


def test_roi_data_layer_precomputed_form_from_its_tops():
    """py-faster-rcnn's Fast R-CNN stages carry no flag: six tops mean
    precomputed RoIs; other param_str keys are roi_data_param fields."""
    text = ('name: "data" type: "Python" top: "data" top: "rois" top: "labels" '
            'top: "bbox_targets" top: "bbox_inside_weights" top: "bbox_outside_weights" '
            'python_param { module: "roi_data_layer.layer" layer: "RoIDataLayer" '
            "param_str: \"'num_classes': 5, 'ims_per_batch': 2, 'scales': (500, 600)\" }")
    layer = build_layer(text)
    _, tops = setup_layer(layer, [])
    assert not layer.has_rpn and layer.num_classes == 5 and layer.scales == (500, 600)
    assert [t.shape for t in tops] == [(2, 3, 600, 1000), (128, 5), (128, 1, 1, 1), (128, 20),
                                       (128, 20), (128, 20)]


def test_roi_data_layer_explains_that_it_needs_a_dataset():
    layer = build_layer(ROI_DATA_E2E)
    bottoms, tops = setup_layer(layer, [])
    with pytest.raises(NetDefinitionError,
                       match=r"layer 'input-data'.*RoIDataLayer needs a dataset.*"
                             r"python -m solver\.train"):
        layer.forward(bottoms, tops)


def test_roi_data_layer_without_num_classes_is_refused():
    text = ROI_DATA_E2E.replace("'num_classes': 21", "'max_size': 800")
    with pytest.raises(NetDefinitionError, match=r"layer 'input-data'.*needs num_classes >= 2"):
        setup_layer(build_layer(text), [])


def test_unknown_param_str_key_lists_the_accepted_ones():
    text = ('name: "proposal" type: "Python" bottom: "p" bottom: "d" bottom: "i" top: "r" '
            'python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" '
            "param_str: \"'feat_strid': 16\" }")
    with pytest.raises(NetDefinitionError,
                       match=r"layer 'proposal'.*key 'feat_strid' is not a setting of "
                             r"rpn\.proposal_layer\.ProposalLayer \(accepted: .*feat_stride"):
        setup_layer(build_layer(text), [np.zeros((1, 18, 2, 2)), np.zeros((1, 36, 2, 2)),
                                        np.array([[32.0, 32.0, 1.0]])])


@pytest.mark.parametrize("param_str,match", [
    ("'num_classes': 'many'", r"key 'num_classes': value 'many' does not fit "
                              r"proposal_target_param\.num_classes"),
    ("'num_classes' 21", "is not a dictionary literal"),
])
def test_bad_param_str_values(param_str, match):
    text = ('name: "roi-data" type: "Python" bottom: "r" bottom: "g" top: "a" top: "b" top: "c" '
            'top: "d" top: "e" python_param { module: "rpn.proposal_target_layer" '
            f'layer: "ProposalTargetLayer" param_str: "{param_str}" }}')
    with pytest.raises(NetDefinitionError, match=f"layer 'roi-data'.*{match}"):
        setup_layer(build_layer(text), [np.zeros((3, 5)), np.zeros((1, 5))])


NET = """
name: "rpn-heads"
layer { name: "input" type: "Input" top: "rpn_cls_score" top: "rpn_cls_prob_reshape"
        top: "rpn_bbox_pred" top: "gt_boxes" top: "im_info"
        input_param { shape { dim: 1 dim: 18 dim: 10 dim: 12 }
                      shape { dim: 1 dim: 18 dim: 10 dim: 12 }
                      shape { dim: 1 dim: 36 dim: 10 dim: 12 }
                      shape { dim: 2 dim: 5 } shape { dim: 1 dim: 3 } } }
layer { name: 'rpn-data' type: 'Python' bottom: 'rpn_cls_score' bottom: 'gt_boxes'
        bottom: 'im_info' top: 'rpn_labels' top: 'rpn_bbox_targets'
        top: 'rpn_bbox_inside_weights' top: 'rpn_bbox_outside_weights'
        python_param { module: 'rpn.anchor_target_layer' layer: 'AnchorTargetLayer'
                       param_str: "'feat_stride': 16" } }
layer { name: 'proposal' type: 'Python' bottom: 'rpn_cls_prob_reshape'
        bottom: 'rpn_bbox_pred' bottom: 'im_info' top: 'rpn_rois'
        python_param { module: 'rpn.proposal_layer' layer: 'ProposalLayer'
                       param_str: "'feat_stride': 16" } }
layer { name: 'roi-data' type: 'Python' bottom: 'rpn_rois' bottom: 'gt_boxes'
        top: 'rois' top: 'labels' top: 'bbox_targets' top: 'bbox_inside_weights'
        top: 'bbox_outside_weights'
        python_param { module: 'rpn.proposal_target_layer' layer: 'ProposalTargetLayer'
                       param_str: "'num_classes': 21" } }
"""


def test_reference_style_net_builds_and_runs():
    from netdef.net import Net
    net = Net(NET, "TRAIN", seed=1, dtype=np.float64)
    # shape report: the most RoIs each layer can output
    assert net.blobs["rpn_rois"].shape == (1080, 5)          # 10 * 12 * 9 anchors < 2000
    assert net.blobs["rois"].shape == (128, 5)
    rng = np.random.default_rng(0)
    prob = rng.uniform(0, 1, (1, 18, 10, 12))
    out = net.forward(rpn_cls_score=np.zeros((1, 18, 10, 12)), rpn_cls_prob_reshape=prob,
                      rpn_bbox_pred=rng.normal(0, 0.2, (1, 36, 10, 12)),
                      gt_boxes=np.array([[20.0, 30.0, 120.0, 140.0, 5],
                                         [90.0, 40.0, 180.0, 150.0, 12]]),
                      im_info=np.array([[160.0, 192.0, 1.0]]))
    labels = out["rpn_labels"]
    assert labels.shape == (1, 1, 90, 12) and np.sum(labels == 1) > 0
    assert 0 < net.blobs["rpn_rois"].shape[0] <= 1080
    rois = out["rois"]
    assert rois.shape[0] <= 128 and out["bbox_targets"].shape == (rois.shape[0], 84)
    assert out["labels"].shape == (rois.shape[0], 1, 1, 1)
    assert set(np.unique(out["labels"])) <= {0, 5, 12}
