"""Classic Caffe nets as their authors ship them, rebuilt from their facts.

BVLC's AlexNet and GoogLeNet deploy nets, DeepScale's SqueezeNet v1.1
deploy net, and py-faster-rcnn's ZF and VGG_CNN_M_1024 end-to-end test nets:
the layer types, names, parameters and legacy ``input``/``input_shape``
declarations those files use, written out here by small builders (other
projects' files are not committed). ``CAFFE_SHAPES`` holds the blob shapes
Caffe reports when it builds each file at its declared input size
(worked out from Caffe's size rules: convolution floor, pooling ceil with
the last window dropped when it would start in the padding).
"""

_FILLERS = ('weight_filler { type: "gaussian" std: 0.01 } '
            'bias_filler { type: "constant" value: 0 }')


def legacy_inputs(*inputs):
    """``input:`` / ``input_shape`` declarations, as deploy files of that
    time write them."""
    return "".join(f'input: "{name}"\ninput_shape {{ {" ".join(f"dim: {d}" for d in dims)} }}\n'
                   for name, dims in inputs)


def layer(name, type_, bottoms, tops, body=""):
    bottoms = [bottoms] if isinstance(bottoms, str) else bottoms
    tops = [tops] if isinstance(tops, str) else tops
    return (f'layer {{ name: "{name}" type: "{type_}" '
            + "".join(f'bottom: "{b}" ' for b in bottoms)
            + "".join(f'top: "{t}" ' for t in tops) + body + " }\n")


def conv(name, bottom, num_output, kernel, stride=1, pad=0, group=1, top=None):
    group_text = f" group: {group}" if group != 1 else ""
    return layer(name, "Convolution", bottom, top or name,
                 f"convolution_param {{ num_output: {num_output} kernel_size: {kernel} "
                 f"stride: {stride} pad: {pad}{group_text} {_FILLERS} }}")


def relu(name, blob):
    return layer(name, "ReLU", blob, blob)


def conv_relu(name, bottom, num_output, kernel, stride=1, pad=0, group=1, relu_name=None):
    return (conv(name, bottom, num_output, kernel, stride, pad, group)
            + relu(relu_name or name.replace("conv", "relu", 1), name))


def pool(name, bottom, kernel, stride, method="MAX", pad=0, top=None):
    return layer(name, "Pooling", bottom, top or name,
                 f"pooling_param {{ pool: {method} kernel_size: {kernel} stride: {stride} "
                 f"pad: {pad} }}")


def lrn(name, bottom, local_size, alpha, beta, k=None, region=None):
    extra = (f" k: {k}" if k is not None else "") + (f" norm_region: {region}" if region else "")
    return layer(name, "LRN", bottom, name,
                 f"lrn_param {{ local_size: {local_size} alpha: {alpha} beta: {beta}{extra} }}")


def fc(name, bottom, num_output):
    return layer(name, "InnerProduct", bottom, name,
                 f"inner_product_param {{ num_output: {num_output} {_FILLERS} }}")


def dropout(name, blob, ratio):
    return layer(name, "Dropout", blob, blob, f"dropout_param {{ dropout_ratio: {ratio} }}")


# ---------------------------------------------------------------------------
# BVLC AlexNet (models/bvlc_alexnet/deploy.prototxt)

def alexnet():
    return ('name: "AlexNet"\n' + legacy_inputs(("data", (10, 3, 227, 227)))
            + conv_relu("conv1", "data", 96, 11, stride=4)
            + lrn("norm1", "conv1", 5, 0.0001, 0.75) + pool("pool1", "norm1", 3, 2)
            + conv_relu("conv2", "pool1", 256, 5, pad=2, group=2)
            + lrn("norm2", "conv2", 5, 0.0001, 0.75) + pool("pool2", "norm2", 3, 2)
            + conv_relu("conv3", "pool2", 384, 3, pad=1)
            + conv_relu("conv4", "conv3", 384, 3, pad=1, group=2)
            + conv_relu("conv5", "conv4", 256, 3, pad=1, group=2)
            + pool("pool5", "conv5", 3, 2)
            + fc("fc6", "pool5", 4096) + relu("relu6", "fc6") + dropout("drop6", "fc6", 0.5)
            + fc("fc7", "fc6", 4096) + relu("relu7", "fc7") + dropout("drop7", "fc7", 0.5)
            + fc("fc8", "fc7", 1000) + layer("prob", "Softmax", "fc8", "prob"))


# ---------------------------------------------------------------------------
# BVLC GoogLeNet (models/bvlc_googlenet/deploy.prototxt)

#: Inception modules: name -> (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj).
INCEPTIONS = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64), "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128), "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def inception(name, bottom):
    n1, r3, n3, r5, n5, proj = INCEPTIONS[name]
    p = f"inception_{name}/"

    def branch(suffix, source, num_output, kernel, pad=0):
        return (conv(p + suffix, source, num_output, kernel, pad=pad)
                + relu(p + "relu_" + suffix, p + suffix))

    return (branch("1x1", bottom, n1, 1)
            + branch("3x3_reduce", bottom, r3, 1) + branch("3x3", p + "3x3_reduce", n3, 3, 1)
            + branch("5x5_reduce", bottom, r5, 1) + branch("5x5", p + "5x5_reduce", n5, 5, 2)
            + pool(p + "pool", bottom, 3, 1, pad=1) + branch("pool_proj", p + "pool", proj, 1)
            + layer(p + "output", "Concat",
                    [p + "1x1", p + "3x3", p + "5x5", p + "pool_proj"], p + "output"))


def googlenet():
    text = ('name: "GoogleNet"\n' + legacy_inputs(("data", (10, 3, 224, 224)))
            + conv("conv1/7x7_s2", "data", 64, 7, stride=2, pad=3)
            + relu("conv1/relu_7x7", "conv1/7x7_s2")
            + pool("pool1/3x3_s2", "conv1/7x7_s2", 3, 2)
            + lrn("pool1/norm1", "pool1/3x3_s2", 5, 0.0001, 0.75)
            + conv("conv2/3x3_reduce", "pool1/norm1", 64, 1)
            + relu("conv2/relu_3x3_reduce", "conv2/3x3_reduce")
            + conv("conv2/3x3", "conv2/3x3_reduce", 192, 3, pad=1)
            + relu("conv2/relu_3x3", "conv2/3x3")
            + lrn("conv2/norm2", "conv2/3x3", 5, 0.0001, 0.75)
            + pool("pool2/3x3_s2", "conv2/norm2", 3, 2))
    text += inception("3a", "pool2/3x3_s2") + inception("3b", "inception_3a/output")
    text += pool("pool3/3x3_s2", "inception_3b/output", 3, 2)
    previous = "pool3/3x3_s2"
    for name in ("4a", "4b", "4c", "4d", "4e"):
        text += inception(name, previous)
        previous = f"inception_{name}/output"
    text += pool("pool4/3x3_s2", previous, 3, 2)
    text += inception("5a", "pool4/3x3_s2") + inception("5b", "inception_5a/output")
    return (text + pool("pool5/7x7_s1", "inception_5b/output", 7, 1, method="AVE")
            + dropout("pool5/drop_7x7_s1", "pool5/7x7_s1", 0.4)
            + fc("loss3/classifier", "pool5/7x7_s1", 1000)
            + layer("prob", "Softmax", "loss3/classifier", "prob"))


# ---------------------------------------------------------------------------
# DeepScale SqueezeNet v1.1 (SqueezeNet_v1.1/deploy.prototxt)

#: Fire modules: name -> (squeeze 1x1, expand 1x1, expand 3x3).
FIRES = {2: (16, 64, 64), 3: (16, 64, 64), 4: (32, 128, 128), 5: (32, 128, 128),
         6: (48, 192, 192), 7: (48, 192, 192), 8: (64, 256, 256), 9: (64, 256, 256)}


def fire(index, bottom):
    squeeze, expand1, expand3 = FIRES[index]
    p = f"fire{index}/"
    return (conv(p + "squeeze1x1", bottom, squeeze, 1)
            + relu(p + "relu_squeeze1x1", p + "squeeze1x1")
            + conv(p + "expand1x1", p + "squeeze1x1", expand1, 1)
            + relu(p + "relu_expand1x1", p + "expand1x1")
            + conv(p + "expand3x3", p + "squeeze1x1", expand3, 3, pad=1)
            + relu(p + "relu_expand3x3", p + "expand3x3")
            + layer(p + "concat", "Concat", [p + "expand1x1", p + "expand3x3"], p + "concat"))


def squeezenet_v1_1():
    text = (legacy_inputs(("data", (10, 3, 227, 227)))
            + conv("conv1", "data", 64, 3, stride=2) + relu("relu_conv1", "conv1")
            + pool("pool1", "conv1", 3, 2) + fire(2, "pool1") + fire(3, "fire2/concat")
            + pool("pool3", "fire3/concat", 3, 2) + fire(4, "pool3") + fire(5, "fire4/concat")
            + pool("pool5", "fire5/concat", 3, 2) + fire(6, "pool5"))
    for index in (7, 8, 9):
        text += fire(index, f"fire{index - 1}/concat")
    return (text + dropout("drop9", "fire9/concat", 0.5)
            + conv("conv10", "fire9/concat", 1000, 1) + relu("relu_conv10", "conv10")
            + layer("pool10", "Pooling", "conv10", "pool10",
                    "pooling_param { pool: AVE global_pooling: true }")
            + layer("prob", "Softmax", "pool10", "prob"))


# ---------------------------------------------------------------------------
# py-faster-rcnn's ZF and VGG_CNN_M_1024 end-to-end test nets
# (models/pascal_voc/<net>/faster_rcnn_end2end/test.prototxt)

def faster_rcnn_head(trunk_top, roi_name, roi_top, fc7_outputs, classes=21):
    """The RPN, its Python proposal layer, RoI pooling and the Fast R-CNN
    head, as both files write them."""
    return (conv("rpn_conv/3x3", trunk_top, 256, 3, pad=1, top="rpn/output")
            + relu("rpn_relu/3x3", "rpn/output")
            + conv("rpn_cls_score", "rpn/output", 18, 1)
            + conv("rpn_bbox_pred", "rpn/output", 36, 1)
            + layer("rpn_cls_score_reshape", "Reshape", "rpn_cls_score", "rpn_cls_score_reshape",
                    "reshape_param { shape { dim: 0 dim: 2 dim: -1 dim: 0 } }")
            + layer("rpn_cls_prob", "Softmax", "rpn_cls_score_reshape", "rpn_cls_prob")
            + layer("rpn_cls_prob_reshape", "Reshape", "rpn_cls_prob", "rpn_cls_prob_reshape",
                    "reshape_param { shape { dim: 0 dim: 18 dim: -1 dim: 0 } }")
            + layer("proposal", "Python", ["rpn_cls_prob_reshape", "rpn_bbox_pred", "im_info"],
                    "rois", "python_param { module: 'rpn.proposal_layer' "
                    "layer: 'ProposalLayer' param_str: \"'feat_stride': 16\" }")
            + layer(roi_name, "ROIPooling", [trunk_top, "rois"], roi_top,
                    "roi_pooling_param { pooled_w: 6 pooled_h: 6 spatial_scale: 0.0625 }")
            + fc("fc6", roi_top, 4096) + relu("relu6", "fc6") + dropout("drop6", "fc6", 0.5)
            + fc("fc7", "fc6", fc7_outputs) + relu("relu7", "fc7")
            + dropout("drop7", "fc7", 0.5)
            + fc("cls_score", "fc7", classes) + fc("bbox_pred", "fc7", 4 * classes)
            + layer("cls_prob", "Softmax", "cls_score", "cls_prob"))


def zf_test():
    lrn_zf = dict(local_size=3, alpha=0.00005, beta=0.75, region="WITHIN_CHANNEL")
    return ('name: "ZF"\n' + legacy_inputs(("data", (1, 3, 224, 224)), ("im_info", (1, 3)))
            + conv_relu("conv1", "data", 96, 7, stride=2, pad=3) + lrn("norm1", "conv1", **lrn_zf)
            + pool("pool1", "norm1", 3, 2, pad=1)
            + conv_relu("conv2", "pool1", 256, 5, stride=2, pad=2)
            + lrn("norm2", "conv2", **lrn_zf) + pool("pool2", "norm2", 3, 2, pad=1)
            + conv_relu("conv3", "pool2", 384, 3, pad=1)
            + conv_relu("conv4", "conv3", 384, 3, pad=1)
            + conv_relu("conv5", "conv4", 256, 3, pad=1)
            + faster_rcnn_head("conv5", "roi_pool_conv5", "roi_pool_conv5", 4096))


def vgg_cnn_m_1024_test():
    lrn_m = dict(local_size=5, alpha=0.0005, beta=0.75, k=2)
    return ('name: "VGG_CNN_M_1024"\n'
            + legacy_inputs(("data", (1, 3, 224, 224)), ("im_info", (1, 3)))
            + conv_relu("conv1", "data", 96, 7, stride=2) + lrn("norm1", "conv1", **lrn_m)
            + pool("pool1", "norm1", 3, 2)
            + conv_relu("conv2", "pool1", 256, 5, stride=2, pad=1)
            + lrn("norm2", "conv2", **lrn_m) + pool("pool2", "norm2", 3, 2)
            + conv_relu("conv3", "pool2", 512, 3, pad=1)
            + conv_relu("conv4", "conv3", 512, 3, pad=1)
            + conv_relu("conv5", "conv4", 512, 3, pad=1)
            + faster_rcnn_head("conv5", "roi_pool5", "pool5", 1024))


def _inception_shapes(batch, size, names):
    out = {}
    for name in names:
        n1, _, n3, _, n5, proj = INCEPTIONS[name]
        out[f"inception_{name}/output"] = (batch, n1 + n3 + n5 + proj, size, size)
    return out


#: Caffe's blob shapes of each file at its declared inputs (a selection:
#: every stage's output and the heads).
CAFFE_SHAPES = {
    "alexnet": {
        "conv1": (10, 96, 55, 55), "norm1": (10, 96, 55, 55), "pool1": (10, 96, 27, 27),
        "conv2": (10, 256, 27, 27), "pool2": (10, 256, 13, 13), "conv3": (10, 384, 13, 13),
        "conv4": (10, 384, 13, 13), "conv5": (10, 256, 13, 13), "pool5": (10, 256, 6, 6),
        "fc6": (10, 4096), "fc7": (10, 4096), "fc8": (10, 1000), "prob": (10, 1000)},
    "googlenet": {
        "conv1/7x7_s2": (10, 64, 112, 112), "pool1/3x3_s2": (10, 64, 56, 56),
        "pool1/norm1": (10, 64, 56, 56), "conv2/3x3": (10, 192, 56, 56),
        "pool2/3x3_s2": (10, 192, 28, 28), "pool3/3x3_s2": (10, 480, 14, 14),
        "pool4/3x3_s2": (10, 832, 7, 7), "pool5/7x7_s1": (10, 1024, 1, 1),
        "loss3/classifier": (10, 1000), "prob": (10, 1000),
        **_inception_shapes(10, 28, ("3a", "3b")),
        **_inception_shapes(10, 14, ("4a", "4b", "4c", "4d", "4e")),
        **_inception_shapes(10, 7, ("5a", "5b"))},
    "squeezenet_v1_1": {
        "conv1": (10, 64, 113, 113), "pool1": (10, 64, 56, 56),
        "fire2/squeeze1x1": (10, 16, 56, 56), "fire2/concat": (10, 128, 56, 56),
        "fire3/concat": (10, 128, 56, 56), "pool3": (10, 128, 28, 28),
        "fire4/concat": (10, 256, 28, 28), "fire5/concat": (10, 256, 28, 28),
        "pool5": (10, 256, 14, 14), "fire6/concat": (10, 384, 14, 14),
        "fire7/concat": (10, 384, 14, 14), "fire8/concat": (10, 512, 14, 14),
        "fire9/concat": (10, 512, 14, 14), "conv10": (10, 1000, 14, 14),
        "pool10": (10, 1000, 1, 1), "prob": (10, 1000, 1, 1)},
    "zf_test": {
        "conv1": (1, 96, 112, 112), "norm1": (1, 96, 112, 112), "pool1": (1, 96, 57, 57),
        "conv2": (1, 256, 29, 29), "pool2": (1, 256, 15, 15), "conv5": (1, 256, 15, 15),
        "rpn/output": (1, 256, 15, 15), "rpn_cls_score": (1, 18, 15, 15),
        "rpn_cls_score_reshape": (1, 2, 135, 15), "rpn_bbox_pred": (1, 36, 15, 15),
        "roi_pool_conv5": (None, 256, 6, 6), "fc6": (None, 4096), "fc7": (None, 4096),
        "cls_prob": (None, 21), "bbox_pred": (None, 84)},
    "vgg_cnn_m_1024_test": {
        "conv1": (1, 96, 109, 109), "pool1": (1, 96, 54, 54), "conv2": (1, 256, 26, 26),
        "pool2": (1, 256, 13, 13), "conv5": (1, 512, 13, 13),
        "rpn_cls_score_reshape": (1, 2, 117, 13), "pool5": (None, 512, 6, 6),
        "fc6": (None, 4096), "fc7": (None, 1024), "cls_prob": (None, 21),
        "bbox_pred": (None, 84)},
}

BUILDERS = {"alexnet": alexnet, "googlenet": googlenet, "squeezenet_v1_1": squeezenet_v1_1,
            "zf_test": zf_test, "vgg_cnn_m_1024_test": vgg_cnn_m_1024_test}
