"""Caffe-SSD's VGG16 SSD300 VOC0712 deploy net, rebuilt from its facts.

The file Caffe-SSD's ssd_pascal.py writes (models/VGGNet/VOC0712/
SSD_300x300/deploy.prototxt, which Caffe importers test with) is not
committed here; ``deploy_text()`` writes a net of the same layers, names,
parameters and field spellings:

- VGG16's conv1_1 .. conv5_3 with ReLUs, pool1..pool4 (MAX 2x2 stride 2)
  and pool5 (MAX 3x3 stride 1 pad 1); fc6 as a 3x3 convolution of 1024
  outputs with pad 6 and dilation 6, fc7 a 1x1 convolution of 1024;
- the extra layers conv6_1 (256, 1x1) / conv6_2 (512, 3x3 pad 1 stride 2),
  conv7_1 (128) / conv7_2 (256, 3x3 pad 1 stride 2), conv8_1 (128) /
  conv8_2 (256, 3x3 pad 0), conv9_1 (128) / conv9_2 (256, 3x3 pad 0);
- conv4_3_norm: Normalize, across_spatial false, channel_shared false,
  scale 20;
- per source layer (conv4_3_norm, fc7, conv6_2, conv7_2, conv8_2, conv9_2):
  ``<src>_mbox_loc`` / ``<src>_mbox_conf`` 3x3 convolutions, their Permute
  (0, 2, 3, 1) and Flatten (axis 1), and ``<src>_mbox_priorbox`` with
  min_size 30, 60, 111, 162, 213, 264, max_size 60, 111, 162, 213, 264, 315,
  aspect ratios [2], [2, 3], [2, 3], [2, 3], [2], [2] (flip), steps 8, 16, 32,
  64, 100, 300, offset 0.5, variances 0.1 0.1 0.2 0.2, clip false;
- mbox_loc and mbox_conf (Concat axis 1), mbox_priorbox (Concat axis 2),
  mbox_conf_reshape (0, -1, 21), mbox_conf_softmax (Softmax axis 2),
  mbox_conf_flatten, and detection_out (DetectionOutput: 21 classes,
  background 0, NMS 0.45 over the top 400, keep_top_k 200, confidence 0.01,
  CENTER_SIZE, the file's save_output_param with its resize_param).
"""
NUM_CLASSES = 21
SOURCES = ("conv4_3_norm", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2")
MIN_SIZES = (30, 60, 111, 162, 213, 264)
MAX_SIZES = (60, 111, 162, 213, 264, 315)
ASPECT_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
STEPS = (8, 16, 32, 64, 100, 300)
FEATURE_SIZES = (38, 19, 10, 5, 3, 1)

VGG = [("conv1", 2, 64), ("conv2", 2, 128), ("conv3", 3, 256), ("conv4", 3, 512),
       ("conv5", 3, 512)]
# name, outputs, kernel, pad, stride
EXTRAS = [("conv6_1", 256, 1, 0, 1), ("conv6_2", 512, 3, 1, 2),
          ("conv7_1", 128, 1, 0, 1), ("conv7_2", 256, 3, 1, 2),
          ("conv8_1", 128, 1, 0, 1), ("conv8_2", 256, 3, 0, 1),
          ("conv9_1", 128, 1, 0, 1), ("conv9_2", 256, 3, 0, 1)]

PARAMS = "param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }"


def conv(name, bottom, outputs, kernel, pad=0, stride=1, dilation=1, relu=True):
    extra = f" stride: {stride}" if stride != 1 else ""
    extra += f" dilation: {dilation}" if dilation != 1 else ""
    text = (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
            f"{PARAMS} convolution_param {{ num_output: {outputs} pad: {pad} "
            f"kernel_size: {kernel}{extra} weight_filler {{ type: \"xavier\" }} "
            f'bias_filler {{ type: "constant" value: 0 }} }} }}\n')
    if relu:
        relu_name = "relu" + name[4:] if name.startswith("conv") else "relu" + name[2:]
        text += (f'layer {{ name: "{relu_name}" type: "ReLU" bottom: "{name}" '
                 f'top: "{name}" }}\n')
    return text


def pool(name, bottom, kernel, stride, pad=0):
    return (f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}" '
            f"pooling_param {{ pool: MAX kernel_size: {kernel} stride: {stride} "
            f"pad: {pad} }} }}\n")


def trunk(narrow=1):
    text, bottom = "", "data"
    for block, count, outputs in VGG:
        for i in range(1, count + 1):
            name = f"{block}_{i}"
            text += conv(name, bottom, outputs // narrow, 3, pad=1)
            bottom = name
        index = block[-1]
        if index == "5":
            text += pool("pool5", bottom, 3, 1, pad=1)
        else:
            text += pool(f"pool{index}", bottom, 2, 2)
        bottom = f"pool{index}"
    text += conv("fc6", "pool5", 1024 // narrow, 3, pad=6, dilation=6)
    text += conv("fc7", "fc6", 1024 // narrow, 1)
    bottom = "fc7"
    for name, outputs, kernel, pad, stride in EXTRAS:
        text += conv(name, bottom, outputs // narrow, kernel, pad=pad, stride=stride)
        bottom = name
    text += ('layer { name: "conv4_3_norm" type: "Normalize" bottom: "conv4_3" '
             'top: "conv4_3_norm" norm_param { across_spatial: false scale_filler { '
             'type: "constant" value: 20 } channel_shared: false } }\n')
    return text


def head_branch(source, kind, outputs):
    name = f"{source}_mbox_{kind}"
    text = conv(name, source, outputs, 3, pad=1, relu=False)
    text += (f'layer {{ name: "{name}_perm" type: "Permute" bottom: "{name}" '
             f'top: "{name}_perm" permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}\n')
    text += (f'layer {{ name: "{name}_flat" type: "Flatten" bottom: "{name}_perm" '
             f'top: "{name}_flat" flatten_param {{ axis: 1 }} }}\n')
    return text


def num_priors(ratios):
    return 2 + 2 * len(ratios)  # 1, sqrt(min*max), and r, 1/r per ratio (flip)


def priorbox(i, source):
    ratios = "".join(f" aspect_ratio: {r}" for r in ASPECT_RATIOS[i])
    return (f'layer {{ name: "{source}_mbox_priorbox" type: "PriorBox" bottom: "{source}" '
            f'bottom: "data" top: "{source}_mbox_priorbox" prior_box_param {{ '
            f"min_size: {MIN_SIZES[i]} max_size: {MAX_SIZES[i]}{ratios} flip: true "
            f"clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 "
            f"step: {STEPS[i]} offset: 0.5 }} }}\n")


def concat(name, parts, axis):
    bottoms = " ".join(f'bottom: "{p}"' for p in parts)
    return (f'layer {{ name: "{name}" type: "Concat" {bottoms} top: "{name}" '
            f"concat_param {{ axis: {axis} }} }}\n")


def heads():
    text = ""
    for i, source in enumerate(SOURCES):
        priors = num_priors(ASPECT_RATIOS[i])
        text += head_branch(source, "loc", priors * 4)
        text += head_branch(source, "conf", priors * NUM_CLASSES)
        text += priorbox(i, source)
    text += concat("mbox_loc", [f"{s}_mbox_loc_flat" for s in SOURCES], 1)
    text += concat("mbox_conf", [f"{s}_mbox_conf_flat" for s in SOURCES], 1)
    text += concat("mbox_priorbox", [f"{s}_mbox_priorbox" for s in SOURCES], 2)
    text += ('layer { name: "mbox_conf_reshape" type: "Reshape" bottom: "mbox_conf" '
             f'top: "mbox_conf_reshape" reshape_param {{ shape {{ dim: 0 dim: -1 '
             f"dim: {NUM_CLASSES} }} }} }}\n"
             'layer { name: "mbox_conf_softmax" type: "Softmax" bottom: "mbox_conf_reshape" '
             'top: "mbox_conf_softmax" softmax_param { axis: 2 } }\n'
             'layer { name: "mbox_conf_flatten" type: "Flatten" bottom: "mbox_conf_softmax" '
             'top: "mbox_conf_flatten" flatten_param { axis: 1 } }\n')
    text += (
        'layer { name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc" '
        'bottom: "mbox_conf_flatten" bottom: "mbox_priorbox" top: "detection_out" '
        'include { phase: TEST } detection_output_param { '
        f"num_classes: {NUM_CLASSES} share_location: true background_label_id: 0 "
        "nms_param { nms_threshold: 0.45 top_k: 400 } save_output_param { "
        'output_directory: "data/VOCdevkit/results/VOC2007/SSD_300x300/Main" '
        'output_name_prefix: "comp4_det_test_" output_format: "VOC" '
        'label_map_file: "data/VOC0712/labelmap_voc.prototxt" '
        'name_size_file: "data/VOC0712/test_name_size.txt" num_test_image: 4952 '
        "resize_param { prob: 1 resize_mode: WARP height: 300 width: 300 "
        "interp_mode: LINEAR } } code_type: CENTER_SIZE "
        "keep_top_k: 200 confidence_threshold: 0.01 } }\n")
    return text


def deploy_text(narrow=1):
    """The deploy net. ``narrow`` > 1 divides the trunk's and the extra
    layers' widths (a fast stand-in with the same head, priors and shapes
    of the SSD outputs; 1 is the real net)."""
    header = ('name: "VGG_VOC0712_SSD_300x300_deploy"\n'
              'input: "data"\ninput_shape { dim: 1 dim: 3 dim: 300 dim: 300 }\n')
    return header + trunk(narrow) + heads()
