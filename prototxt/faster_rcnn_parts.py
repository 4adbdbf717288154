"""Backbone trunks and detector heads of the Faster R-CNN / Fast R-CNN
generators (``prototxt.faster_rcnn``); other generators (R-CNN, SPPNet)
take their trunks from here too:

    trunk = faster_rcnn_trunk("zf")            # Trunk(text, top, stride, channels)
    text, top = trunk.text, trunk.top          # "conv5", stride 16, 256 channels

The backbones, with the layer names and settings of the files that made
them known (so ImageNet ``.caffemodel`` files load by name):

- ``tiny``: the tiny R-FCN's trunk (``prototxt.rfcn.tiny_trunk``: five 3x3
  convolutions, stride 8, 64 channels) for the built-in synthetic dataset.
- ``zf``: py-faster-rcnn's ZF (Zeiler & Fergus): conv1 96 7x7/2 pad 3,
  LRN WITHIN_CHANNEL (local_size 3, alpha 5e-5, beta 0.75), max pool 3/2
  pad 1, conv2 256 5x5/2 pad 2, LRN, pool, conv3 384, conv4 384, conv5 256
  (3x3 pad 1); stride 16; every convolution trains.
- ``vgg_cnn_m_1024``: conv1 96 7x7/2 (frozen, as py-faster-rcnn's files),
  LRN ACROSS_CHANNELS (local_size 5, alpha 5e-4, beta 0.75, k 2), max pool
  3/2, conv2 256 5x5/2 pad 1, LRN, pool, conv3-5 512 (3x3 pad 1); stride 16.
- ``vgg16``: conv1_1 .. conv5_3 with conv1 and conv2 frozen; stride 16.
- ``resnet50`` / ``resnet101``: Kaiming He's ResNet through res4 (frozen
  BatchNorm, conv1 and res2 frozen), stride 16, 1024 channels.

The heads (``HEADS``): py-faster-rcnn's RoI max pooling and two fully
connected layers (ZF and VGG-M 6x6 with fc7 4096 / 1024, VGG16 7x7 with
4096 / 4096, tiny 7x7 with 256 / 256 and no dropout: its fc layers are
small and it trains for minutes, not days), and for ResNet the form of the
ResNet paper's Faster R-CNN (He et al. 2016, appendix A): RoI pooling on
res4 to 14 x 14, res5 as the head with its first block at stride 2 (so
7 x 7, as Detectron's "C4" nets do), 7 x 7 average pooling; then
cls_score (classes) and bbox_pred (4 x classes) on every backbone.
"""
from collections import namedtuple

from prototxt.resnet import Word, layer, resnet_stage, resnet_trunk, specs
from prototxt.rfcn import TINY_ANCHORS, TINY_IMAGE, TINY_STRIDE, tiny_trunk
from prototxt.rpn_parts import (CONSTANT_0, RPN_CHANNELS, TRAIN_IMAGE, gaussian, python_layer,
                                rpn_head, rpn_losses, rpn_proposals, rpn_score_reshape)

__all__ = ["BACKBONES", "HEADS", "Trunk", "Head", "faster_rcnn_trunk", "roi_head",
           "vgg16", "param_specs", "rpn_train_layers", "rpn_test_layers", "fast_rcnn_data",
           "fast_rcnn_losses", "FAST_RCNN_SAMPLING", "FAST_RCNN_TOPS"]

BACKBONES = ("tiny", "zf", "vgg_cnn_m_1024", "vgg16", "resnet50", "resnet101")

#: A trunk: its prototxt text, its top blob, its stride and channels.
Trunk = namedtuple("Trunk", "text top stride channels")

#: What goes on a trunk: the RPN's channels and anchors (None: the
#: reference's 16-pixel stride set), the RoI pooling layer and top names and
#: grid, the two fc layers' outputs (None: the ResNet res5 head), dropout,
#: the net's name and the image size the data layer scales to.
Head = namedtuple("Head", "rpn_channels anchors roi_layer roi_top pooled fc dropout name image")

HEADS = {
    "tiny": Head(64, TINY_ANCHORS, "roi_pool5", "pool5", 7, (256, 256), False,
                 "Faster R-CNN tiny", TINY_IMAGE),
    "zf": Head(256, None, "roi_pool_conv5", "roi_pool_conv5", 6, (4096, 4096), True, "ZF",
               TRAIN_IMAGE),
    "vgg_cnn_m_1024": Head(256, None, "roi_pool5", "pool5", 6, (4096, 1024), True,
                           "VGG_CNN_M_1024", TRAIN_IMAGE),
    "vgg16": Head(RPN_CHANNELS, None, "roi_pool5", "pool5", 7, (4096, 4096), True,
                  "VGG_ILSVRC_16_layers", TRAIN_IMAGE),
    "resnet50": Head(RPN_CHANNELS, None, "roi_pool5", "roi_pool5", 14, None, False,
                     "ResNet-50", TRAIN_IMAGE),
    "resnet101": Head(RPN_CHANNELS, None, "roi_pool5", "roi_pool5", 14, None, False,
                      "ResNet-101", TRAIN_IMAGE),
}

# Param spec styles: trainable weight / bias lr_mult 1 / 2 (py-faster-rcnn's
# test files also spell out decay_mult 1 / 0), frozen lr_mult 0 / decay_mult
# 0, none (deploy nets).
_PARAMS = {"train": specs((1, None), (2, None)), "test": specs((1, 1), (2, 0)),
           "frozen": specs((0, 0), (0, 0)), None: []}


def param_specs(style):
    """The two ParamSpecs (weight, bias) of a layer in ``style``: "train",
    "test", "frozen" or None (no specs)."""
    return _PARAMS[style]


# (name, output channels) per block; max pooling between blocks.
VGG16_BLOCKS = ((("conv1_1", 64), ("conv1_2", 64)),
                (("conv2_1", 128), ("conv2_2", 128)),
                (("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256)),
                (("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512)),
                (("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512)))


def vgg16(frozen_blocks, style):
    """conv1_1 .. relu5_3 from data; ``frozen_blocks`` block numbers (1..5)
    get frozen specs, the others ``style`` ("train", "test" or None)."""
    parts, bottom = [], "data"
    for number, block in enumerate(VGG16_BLOCKS, start=1):
        param = _PARAMS["frozen" if number in frozen_blocks and style else style]
        for name, channels in block:
            parts.append(layer(name, "Convolution", [bottom], [name], param=param,
                               convolution_param=dict(num_output=channels, pad=1, kernel_size=3)))
            parts.append(layer(f"relu{name[4:]}", "ReLU", [name], [name]))
            bottom = name
        if number < len(VGG16_BLOCKS):
            parts.append(layer(f"pool{number}", "Pooling", [bottom], [f"pool{number}"],
                               pooling_param=dict(pool=Word("MAX"), kernel_size=2, stride=2)))
            bottom = f"pool{number}"
    return "".join(parts)


# The five-convolution nets of py-faster-rcnn: (conv outputs, kernel,
# stride, pad) of conv1..conv5, the pooling pad, and the LRN settings.
_LRN_ZF = dict(local_size=3, alpha=0.00005, beta=0.75, norm_region=Word("WITHIN_CHANNEL"))
_LRN_M = dict(local_size=5, alpha=0.0005, beta=0.75, k=2.0)
_FIVE_CONV = {
    "zf": (((96, 7, 2, 3), (256, 5, 2, 2), (384, 3, 1, 1), (384, 3, 1, 1), (256, 3, 1, 1)),
           1, _LRN_ZF),
    "vgg_cnn_m_1024": (((96, 7, 2, 0), (256, 5, 2, 1), (512, 3, 1, 1), (512, 3, 1, 1),
                        (512, 3, 1, 1)), 0, _LRN_M),
}


def five_conv(backbone, frozen, style):
    """conv1 .. relu5 of ZF or VGG_CNN_M_1024 from data: conv1 and conv2
    each followed by ReLU, LRN (norm1, norm2) and max pooling 3/2;
    ``frozen``: convolution numbers (1..5) with frozen specs."""
    convs, pool_pad, lrn = _FIVE_CONV[backbone]
    parts, bottom = [], "data"
    for number, (channels, kernel, stride, pad) in enumerate(convs, start=1):
        name = f"conv{number}"
        param = _PARAMS["frozen" if number in frozen and style else style]
        parts.append(layer(name, "Convolution", [bottom], [name], param=param,
                           convolution_param=dict(num_output=channels, kernel_size=kernel,
                                                  pad=pad or None, stride=stride if stride != 1
                                                  else None)))
        parts.append(layer(f"relu{number}", "ReLU", [name], [name]))
        bottom = name
        if number <= 2:
            parts.append(layer(f"norm{number}", "LRN", [bottom], [f"norm{number}"],
                               lrn_param=lrn))
            parts.append(layer(f"pool{number}", "Pooling", [f"norm{number}"], [f"pool{number}"],
                               pooling_param=dict(pool=Word("MAX"), kernel_size=3, stride=2,
                                                  pad=pool_pad or None)))
            bottom = f"pool{number}"
    return "".join(parts)


#: Convolutions frozen in py-faster-rcnn's training files (VGG16: blocks).
FROZEN = {"zf": set(), "vgg_cnn_m_1024": {1}, "vgg16": {1, 2}}
ALL_FROZEN = {1, 2, 3, 4, 5}


def faster_rcnn_trunk(backbone, *, style="train", frozen=None):
    """The convolutional trunk of ``backbone`` (one of ``BACKBONES``) from
    the blob ``data``, as a ``Trunk(text, top, stride, channels)``.

    ``style``: the param specs of the trainable layers, "train" (lr_mult 1 /
    2), "test" (also decay_mult 1 / 0) or None (no specs, deploy nets; the
    tiny trunk always writes its specs). ``frozen``: the convolutions
    (VGG16: blocks; ResNet: stages) with lr_mult 0, default the reference's
    (``FROZEN``; ResNet conv1 and res2; tiny none)."""
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, found {backbone!r}")
    if backbone == "tiny":
        text, top = tiny_trunk()
        return Trunk(text, top, TINY_STRIDE, 64)
    if backbone.startswith("resnet"):
        depth = int(backbone[len("resnet"):])
        text, outputs = resnet_trunk(
            depth, last_stage=4, conv1_bias=depth == 50,
            frozen_stages=None if style is None else ({1, 2} if frozen is None else frozen))
        return Trunk(text, outputs[4], 16, 1024)
    frozen = FROZEN[backbone] if frozen is None else frozen
    if backbone == "vgg16":
        return Trunk(vgg16(frozen, style), "conv5_3", 16, 512)
    channels = _FIVE_CONV[backbone][0][-1][0]
    return Trunk(five_conv(backbone, frozen, style), "conv5", 16, channels)


def _fc(name, bottom, num_output, style, std=None):
    fillers = dict(weight_filler=gaussian(std), bias_filler=CONSTANT_0) if std else {}
    return layer(name, "InnerProduct", [bottom], [name], param=_PARAMS[style],
                 inner_product_param=dict(num_output=num_output, **fillers))


#: Backbones whose reference files keep dropout unscaled in training
#: (``scale_train: false``: the test pass multiplies by 1 - ratio instead),
#: so their ImageNet / py-faster-rcnn weights expect it.
UNSCALED_DROPOUT = {"ZF"}


def _relu_dropout(index, dropout, scale_train=True):
    blob = f"fc{index}"
    text = layer(f"relu{index}", "ReLU", [blob], [blob])
    if dropout:
        settings = dict(dropout_ratio=0.5) if scale_train else \
            dict(dropout_ratio=0.5, scale_train=False)
        text += layer(f"drop{index}", "Dropout", [blob], [blob], dropout_param=settings)
    return text


def fc_layers(head, bottom, style, *, dropout=None, fc_fillers=False):
    """fc6 and fc7 (ReLU, and dropout 0.5 where ``head`` has it and
    ``dropout`` is not False) from ``bottom``. ``fc_fillers``: MSRA weight
    fillers (the tiny net's, trained from scratch; the others start from
    ImageNet weights, as py-faster-rcnn's files, which name no filler)."""
    six, seven = head.fc
    drop = head.dropout if dropout is None else dropout
    fillers = dict(weight_filler=dict(type="msra"), bias_filler=CONSTANT_0) if fc_fillers else {}

    def fc(name, bottom_, num_output):
        return layer(name, "InnerProduct", [bottom_], [name], param=_PARAMS[style],
                     inner_product_param=dict(num_output=num_output, **fillers))

    scale_train = head.name not in UNSCALED_DROPOUT
    return "".join([fc("fc6", bottom, six), _relu_dropout(6, drop, scale_train),
                    fc("fc7", "fc6", seven), _relu_dropout(7, drop, scale_train)])


def predictions(bottom, classes, style, fillers=True):
    """cls_score (classes) and bbox_pred (4 x classes) from ``bottom``."""
    return (_fc("cls_score", bottom, classes, style, 0.01 if fillers else None) +
            _fc("bbox_pred", bottom, 4 * classes, style, 0.001 if fillers else None))


def roi_head(backbone, trunk, classes, style, *, dropout=None, fillers=True):
    """RoI pooling of ``trunk`` at ``rois``, the head of ``backbone`` and
    cls_score / bbox_pred; returns the text."""
    head = HEADS[backbone]
    pool = layer(head.roi_layer, "ROIPooling", [trunk.top, "rois"], [head.roi_top],
                 roi_pooling_param=dict(pooled_w=head.pooled, pooled_h=head.pooled,
                                        spatial_scale=1.0 / trunk.stride))
    if head.fc is None:
        depth = int(backbone[len("resnet"):])
        res5, top = resnet_stage(depth, 5, head.roi_top, frozen_stages=None if style is None
                                 else set())
        features = res5 + layer("pool5", "Pooling", [top], ["pool5"], pooling_param=dict(
            pool=Word("AVE"), kernel_size=head.pooled // 2, stride=1))
        return pool + features + predictions("pool5", classes, style, fillers)
    features = fc_layers(head, head.roi_top, style, dropout=dropout,
                         fc_fillers=backbone == "tiny")
    return pool + features + predictions("fc7", classes, style, fillers)


# -- the RPN, the data layer and the losses ---------------------------------------------

def rpn_test_layers(backbone, trunk, python_layers, tops, style="test", fillers=True):
    """The RPN of a test net: head, score reshape, Proposal (tops ``tops``)."""
    head = HEADS[backbone]
    return (rpn_head(trunk.top, param_style=style, fillers=fillers, channels=head.rpn_channels,
                     anchors=head.anchors) + rpn_score_reshape() +
            rpn_proposals(python_layers, tops, None, head.anchors))


def rpn_train_layers(backbone, trunk, python_layers):
    """The RPN of a training net: head, score reshape, AnchorTarget, losses."""
    head = HEADS[backbone]
    return (rpn_head(trunk.top, channels=head.rpn_channels, anchors=head.anchors) +
            rpn_score_reshape() + rpn_losses(python_layers, head.anchors))


#: Fast R-CNN's hierarchical sampling (Girshick 2015, section 2.3): 2 images
#: per minibatch, 64 RoIs from each, a quarter foreground at IoU >= 0.5,
#: background at IoU in [0.1, 0.5).
FAST_RCNN_SAMPLING = dict(ims_per_batch=2, batch_size=2 * 64, fg_fraction=0.25, fg_thresh=0.5,
                          bg_thresh_hi=0.5, bg_thresh_lo=0.1)
FAST_RCNN_TOPS = ("data", "rois", "labels", "bbox_targets", "bbox_inside_weights",
                  "bbox_outside_weights")


def fast_rcnn_losses(propagate_down):
    extra = dict(propagate_down=[True, False]) if propagate_down else {}
    return "".join([
        layer("loss_cls", "SoftmaxWithLoss", ["cls_score", "labels"], ["loss_cls"],
              loss_weight=[1.0], **extra),
        layer("loss_bbox", "SmoothL1Loss",
              ["bbox_pred", "bbox_targets", "bbox_inside_weights", "bbox_outside_weights"],
              ["loss_bbox"], loss_weight=[1.0]),
    ])


def fast_rcnn_data(python_layers, classes, image=TRAIN_IMAGE, name="data"):
    """The data layer of a Fast R-CNN net: images and sampled precomputed
    RoIs with their targets (tops ``FAST_RCNN_TOPS``). Native form: the
    RoIData layer's precomputed-RoI form (``has_rpn: false``) with Fast
    R-CNN's sampling (``FAST_RCNN_SAMPLING``); the proposals come from a
    file (``solver.train NET --proposals FILE``) or a staged schedule."""
    if python_layers:
        return python_layer(name, [], list(FAST_RCNN_TOPS), "roi_data_layer.layer",
                            "RoIDataLayer", f"'num_classes': {classes}")
    return layer(name, "RoIData", [], list(FAST_RCNN_TOPS), roi_data_param=dict(
        num_classes=classes, scales=[min(image)], max_size=max(image), has_rpn=False,
        **FAST_RCNN_SAMPLING))
