"""The networks py-faster-rcnn and py-R-FCN ship, and how to build them here.

Each ``ReferenceNet`` is one of their prototxt files, reproduced from its
facts by our generators in the ``--python-layers`` form (type "Python"
layers naming their modules, exactly as they ship). ``net_param`` turns it
into a NetParameter "given inputs of the right shape": a file whose first
layer is the RoIDataLayer Python layer (which needs a dataset) gets, in that
one layer's place, an Input layer with the same name and tops and the
reference shapes; a test file's legacy inputs get the same shapes.
Everything else is the file's text, unchanged.

Reference shapes: one 600 x 1000 image (data 1x3x600x1000, im_info 1x3),
3 ground-truth boxes (gt_boxes 3x5), for the Fast R-CNN stages 128 RoIs with
their labels and targets.

``RFCN_ALT_OPT_NETS``: py-R-FCN's alternating 5-step OHEM stage files
(models/{pascal_voc,coco}/ResNet-*/rfcn_alt_opt_5step_ohem/*.pt), written by
prototxt.rfcn_alt_opt (its docstring lists the facts); their precomputed-RoI
inputs take py-R-FCN's layout (``alt_opt_input_shapes``).
"""
import dataclasses

import numpy as np

from netdef import caffe_pb2
from netdef.schema import read_net
from prototxt.faster_rcnn import REFERENCE_FILES, faster_rcnn_net
from prototxt.rfcn import rfcn_net
from prototxt.rfcn_alt_opt import ALT_OPT_NETS, alt_opt_phase, rfcn_alt_opt_net

CLASSES = 21
ROIS = 128
GT_BOXES = 3


@dataclasses.dataclass(frozen=True)
class ReferenceNet:
    """One shipped prototxt: where it lives and how we write it."""
    project: str           # "py-R-FCN" or "py-faster-rcnn"
    path: str              # the file's path in that project
    phase: str             # the phase it is run in
    kind: str              # "rfcn", "rpn_stage", "fast_rcnn_stage", "faster_rcnn",
                           # "rfcn_alt_opt"
    options: tuple         # keyword arguments of the generator, as pairs

    @property
    def name(self):
        return f"{self.project}:{self.path}"

    def text(self):
        options = dict(self.options)
        if self.kind == "rfcn_alt_opt":
            return rfcn_alt_opt_net(**options)
        if self.project == "py-R-FCN":
            return rfcn_net(python_layers=True, phase=self.phase, **options)
        return faster_rcnn_net(python_layers=True, **options)

    @property
    def depth(self):
        return dict(self.options).get("depth")


def _rfcn(depth, file, phase, **options):
    folder = f"models/pascal_voc/ResNet-{depth}/rfcn_end2end/"
    return ReferenceNet("py-R-FCN", folder + file, phase, "rfcn",
                        tuple(sorted(dict(depth=depth, **options).items())))


def _frcnn(net, phase, kind, backbone="vgg16"):
    folder = {"vgg16": "VGG16", "zf": "ZF", "vgg_cnn_m_1024": "VGG_CNN_M_1024"}[backbone]
    options = (("net", net),) if backbone == "vgg16" else (("backbone", backbone), ("net", net))
    return ReferenceNet("py-faster-rcnn", f"models/pascal_voc/{folder}/" + REFERENCE_FILES[net],
                        phase, kind, options)


RFCN_NETS = (
    _rfcn(101, "train_agnostic.prototxt", "TRAIN"),
    _rfcn(101, "train_agnostic_ohem.prototxt", "TRAIN", ohem=True),
    _rfcn(101, "test_agnostic.prototxt", "TEST"),
    _rfcn(50, "train_agnostic.prototxt", "TRAIN"),
    _rfcn(50, "train_agnostic_ohem.prototxt", "TRAIN", ohem=True),
    _rfcn(50, "test_agnostic.prototxt", "TEST"),
    # py-R-FCN's class-aware files feed the RPN from res5c.
    _rfcn(101, "class-aware/train_ohem.prototxt", "TRAIN", ohem=True, class_aware=True,
          rpn_on="res5"),
    _rfcn(101, "class-aware/test.prototxt", "TEST", class_aware=True, rpn_on="res5"),
)

FASTER_RCNN_NETS = (
    _frcnn("end2end_train", "TRAIN", "faster_rcnn"),
    _frcnn("end2end_test", "TEST", "faster_rcnn"),
    _frcnn("stage1_rpn_train", "TRAIN", "rpn_stage"),
    _frcnn("stage1_fast_rcnn_train", "TRAIN", "fast_rcnn_stage"),
    _frcnn("stage2_rpn_train", "TRAIN", "rpn_stage"),
    _frcnn("stage2_fast_rcnn_train", "TRAIN", "fast_rcnn_stage"),
    _frcnn("rpn_test", "TEST", "rpn_stage"),
    _frcnn("faster_rcnn_test", "TEST", "faster_rcnn"),
)

REFERENCE_NETS = RFCN_NETS + FASTER_RCNN_NETS

#: py-faster-rcnn's ZF and VGG_CNN_M_1024 nets (the eight files of each), in
#: FASTER_RCNN_NETS' order; prototxt.faster_rcnn writes them (--backbone).
FASTER_RCNN_BACKBONE_NETS = {
    backbone: tuple(_frcnn(r.options[0][1], r.phase, r.kind, backbone) for r in FASTER_RCNN_NETS)
    for backbone in ("zf", "vgg_cnn_m_1024")}


def _alt_opt(dataset, depth, net):
    classes = {"pascal_voc": 21, "coco": 81}[dataset]
    return ReferenceNet("py-R-FCN", f"models/{dataset}/ResNet-{depth}/rfcn_alt_opt_5step_ohem/"
                        f"{net}.pt", alt_opt_phase(net), "rfcn_alt_opt",
                        (("classes", classes), ("depth", depth), ("net", net)))


#: py-R-FCN's 5-step stage files: VOC ResNet-50 and -101, COCO ResNet-101.
RFCN_ALT_OPT_NETS = tuple(_alt_opt(dataset, depth, net)
                          for dataset, depth in (("pascal_voc", 101), ("pascal_voc", 50),
                                                 ("coco", 101))
                          for net in ALT_OPT_NETS)


def input_shapes(image=(600, 1000), classes=CLASSES, rois=ROIS, gt_boxes=GT_BOXES):
    """Reference shape of every blob a data layer or a test net provides."""
    box = (rois, 4 * classes)
    return {"data": (1, 3) + tuple(image), "im_info": (1, 3), "gt_boxes": (gt_boxes, 5),
            "rois": (rois, 5), "labels": (rois,), "bbox_targets": box,
            "bbox_inside_weights": box, "bbox_outside_weights": box}


def alt_opt_input_shapes(image=(600, 1000), classes=CLASSES, rois=ROIS, gt_boxes=GT_BOXES):
    """``input_shapes`` for py-R-FCN's alternating stage files: the
    precomputed RoIs come with labels ``(R, 1, 1, 1)`` and class-agnostic
    targets ``(R, 8)`` (rfcn_alt_opt_5step_ohem.yml: AGONISTIC), as the
    RoIData layer gives them with that config."""
    shapes = input_shapes(image, classes, rois, gt_boxes)
    box = (rois, 8)
    shapes.update(labels=(rois, 1, 1, 1), bbox_targets=box, bbox_inside_weights=box,
                  bbox_outside_weights=box)
    return shapes


def is_roi_data_layer(layer):
    return (layer.type == "Python" and layer.python_param.module == "roi_data_layer.layer"
            and layer.python_param.layer == "RoIDataLayer")


def is_data_layer(layer):
    return is_roi_data_layer(layer) or layer.type in ("RoIData", "Input")


def with_inputs(net_param, shapes):
    """A copy of ``net_param`` whose data layers (the RoIDataLayer Python
    layer, the native RoIData layer, a test net's Input layer; in a file with
    both phases, each one with its include rules) are Input layers with the
    same name, tops and rules, shaped by ``shapes`` (top name -> shape).
    Other layers are untouched."""
    first = net_param.layer[0]
    if not is_data_layer(first):
        raise ValueError(f"first layer '{first.name}' ({first.type}) is not a data or input layer")
    replaced = caffe_pb2.NetParameter()
    replaced.CopyFrom(net_param)
    for data in replaced.layer:
        if not is_data_layer(data):
            continue
        name, tops = data.name, list(data.top)
        include, exclude = list(data.include), list(data.exclude)
        data.Clear()
        data.name, data.type = name, "Input"
        data.top.extend(tops)
        data.include.extend(include)
        data.exclude.extend(exclude)
        for top in tops:
            data.input_param.shape.add().dim.extend(shapes[top])
    return replaced


def net_param(reference, image=(600, 1000), rois=ROIS):
    """The reference net's NetParameter with inputs of the reference shapes
    (``image`` the data's height and width, ``rois`` the Fast R-CNN stages'
    RoI count)."""
    if reference.kind == "rfcn_alt_opt":
        classes = dict(reference.options)["classes"]
        return with_inputs(read_net(reference.text()),
                           alt_opt_input_shapes(image, classes, rois=rois))
    return with_inputs(read_net(reference.text()), input_shapes(image, rois=rois))


# -- running them on random data ---------------------------------------------------------

def randomize_params(net, seed=0):
    """Give every parameter values that keep a deep net's activations finite
    and varied: BatchNorm the identity (mean 0, variance 1, factor 1), Scale
    a gain of 0.5 (so residual sums stay bounded), weights normal with
    variance 1 / fan-in, biases small."""
    rng = np.random.default_rng(seed)
    for name, blobs in net.params.items():
        kind = net.layer_dict[name].type
        if kind == "BatchNorm":
            blobs[0].data[...] = 0
            blobs[1].data[...] = 1
            blobs[2].data[...] = 1
        elif kind == "Scale":
            blobs[0].data[...] = 0.5
            if len(blobs) > 1:
                blobs[1].data[...] = 0
        else:
            weights = blobs[0].data
            fan_in = weights[0].size if weights.ndim > 1 else 1
            weights[...] = rng.standard_normal(weights.shape, dtype=np.float32) * \
                np.float32(np.sqrt(1.0 / fan_in))
            for bias in blobs[1:]:
                bias.data[...] = rng.normal(0, 0.01, bias.shape)


def random_inputs(net, seed=0, classes=CLASSES):
    """Random arrays for every input blob of ``net`` at its current shapes:
    an image, its im_info, ground-truth boxes of varied classes inside the
    image, and for Fast R-CNN stages RoIs inside the image with labels and
    targets."""
    rng = np.random.default_rng(seed)
    shapes = {name: net.blobs[name].shape for name in net.inputs}
    height, width = shapes["data"][2:]
    arrays = {"data": rng.normal(0, 50, shapes["data"])}
    if "im_info" in shapes:
        arrays["im_info"] = np.array([[height, width, 1.0]])

    def boxes(count):
        x1 = rng.uniform(0, width * 0.6, count)
        y1 = rng.uniform(0, height * 0.6, count)
        w = rng.uniform(16, width * 0.4, count)
        h = rng.uniform(16, height * 0.4, count)
        return np.stack([x1, y1, np.minimum(x1 + w, width - 1),
                         np.minimum(y1 + h, height - 1)], axis=1).round()

    if "gt_boxes" in shapes:
        count = shapes["gt_boxes"][0]
        arrays["gt_boxes"] = np.concatenate(
            [boxes(count), rng.integers(1, classes, (count, 1))], axis=1)
    if "rois" in shapes:
        count = shapes["rois"][0]
        arrays["rois"] = np.concatenate([np.zeros((count, 1)), boxes(count)], axis=1)
        labels = rng.integers(0, classes, count)
        labels[: count // 2] = 0
        arrays["labels"] = labels.astype(np.float64).reshape(shapes["labels"])
        targets = np.zeros(shapes["bbox_targets"])
        weights = np.zeros(shapes["bbox_targets"])
        for column in range(4):  # the 4 columns of each RoI's class
            rows = np.arange(count)
            targets[rows, 4 * labels + column] = rng.normal(0, 1, count) * (labels > 0)
            weights[rows, 4 * labels + column] = (labels > 0)
        arrays.update(bbox_targets=targets, bbox_inside_weights=weights,
                      bbox_outside_weights=weights.copy())
    return arrays
