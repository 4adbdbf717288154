"""Generator of SSD networks (Liu et al. 2016) in Caffe-SSD's layout.

    python -m prototxt.ssd --phase BOTH > ssd300.prototxt       # VGG16 SSD300, VOC
    python -m prototxt.ssd --phase TEST                          # its deploy net
    python -m prototxt.ssd --tiny --classes 7 --phase BOTH > my_ssd.prototxt
    python -m prototxt.ssd --regenerate          # prototxt/ssd_tiny.prototxt + solver

Every channel count is computed here from the options: a source layer with
A priors per cell gets ``A * 4`` box offsets and ``A * classes`` scores;
A = 1 + (1 with a max_size) + 2 per aspect ratio (flipped), as PriorBox
counts them. Change the options and regenerate; do not edit the numbers in
a generated file.

SSD300 (``model="ssd300"``), the net Caffe-SSD's ssd_pascal.py writes
(models/VGGNet/VOC0712/SSD_300x300): VGG16's conv1_1 .. conv5_3, pool5 3x3
stride 1, fc6 as a 3x3 convolution of 1024 with dilation 6, fc7 1x1; the
extra layers conv6_1/6_2 .. conv9_1/9_2; conv4_3_norm (Normalize, scale 20
per channel); priors on conv4_3_norm, fc7, conv6_2, conv7_2, conv8_2,
conv9_2 with min sizes 30, 60, 111, 162, 213, 264, max sizes 60 .. 315,
aspect ratios [2], [2, 3], [2, 3], [2, 3], [2], [2], steps 8, 16, 32, 64,
100, 300, variances 0.1 0.1 0.2 0.2. (tests/compat/ssd300_deploy.py
rebuilds the deploy file from the same facts; tests/test_ssd_generator.py
checks that this generator's TEST net is the same net.)

TRAIN: AnnotatedData with ssd_pascal.py's transform (mean 104, 117, 123,
mirror, warp to 300 x 300, distortion, expansion up to 4x with probability
1/2, emit CENTER) and its seven batch samplers (the whole image; windows of
scale 0.3-1 and aspect ratio 1/2-2 with a minimum IoU of 0.1, 0.3, 0.5,
0.7, 0.9 with some object, or a maximum of 1), 32 images per batch;
MultiBoxLoss (SMOOTH_L1, SOFTMAX, IoU 0.5 matching per prediction, hard
negatives 3:1 below IoU 0.5, CENTER_SIZE, difficult objects used, VALID
normalization). TEST: Input ``data`` (1, 3, H, W), Reshape + Softmax over
the classes, DetectionOutput (NMS 0.45 over the best 400, 200 kept,
confidence 0.01) into ``detection_out``.

The tiny SSD (``model="tiny"``, ``--tiny``) for the built-in dataset (192 x
256 images, objects 24-96 pixels; 7 classes with the background): five
3x3 convolutions with BatchNorm + Scale + ReLU, the first with stride 2,
the others after a max pooling (``TINY_TRUNK``), priors on the maps at
strides 8, 16 and 32 (``TINY_SOURCES``), images warped to their
own 192 x 256, the same head, loss and outputs as SSD300, a lighter
augmentation (``TINY_AUGMENT``: mirror, expansion up to 2x, the seven
samplers; no photometric distortion, which the colour-coded classes of the
dataset would confuse), 8 images per batch; its solver is
ssd_tiny_solver.prototxt (``TINY_SOLVER``).
"""
import argparse
import dataclasses
import sys

from prototxt.generator_cli import (add_phase_argument, add_regenerate_argument, generated_header,
                                    regenerate)
from prototxt.resnet import Word, layer, message_lines
from prototxt.rfcn import merge_phases

MEAN = (104.0, 117.0, 123.0)
VARIANCES = (0.1, 0.1, 0.2, 0.2)
PARAMS = [dict(lr_mult=1.0, decay_mult=1.0), dict(lr_mult=2.0, decay_mult=0.0)]
XAVIER = dict(type="xavier")
ZERO = dict(type="constant", value=0.0)


@dataclasses.dataclass(frozen=True)
class Source:
    """A feature map with priors: its blob, min / max size (pixels), aspect
    ratios (flipped), step (pixels)."""
    blob: str
    min_size: float
    max_size: float
    ratios: tuple
    step: float

    @property
    def priors(self):
        return 1 + (1 if self.max_size else 0) + 2 * len(self.ratios)


@dataclasses.dataclass(frozen=True)
class Model:
    """What differs between SSD300 and the tiny SSD."""
    name: str
    image: tuple            # (height, width) of the warp and the test input
    sources: tuple
    batch_size: int
    augment: dict           # transform_param additions and batch samplers
    keep_top_k: int


# -- SSD300's facts (Caffe-SSD's ssd_pascal.py) -----------------------------------------------

SSD300_CLASSES = 21
VGG = [("conv1", 2, 64), ("conv2", 2, 128), ("conv3", 3, 256), ("conv4", 3, 512),
       ("conv5", 3, 512)]
# name, outputs, kernel, pad, stride
EXTRAS = [("conv6_1", 256, 1, 0, 1), ("conv6_2", 512, 3, 1, 2),
          ("conv7_1", 128, 1, 0, 1), ("conv7_2", 256, 3, 1, 2),
          ("conv8_1", 128, 1, 0, 1), ("conv8_2", 256, 3, 0, 1),
          ("conv9_1", 128, 1, 0, 1), ("conv9_2", 256, 3, 0, 1)]
SSD300_SOURCES = tuple(Source(*s) for s in [
    ("conv4_3_norm", 30, 60, (2,), 8), ("fc7", 60, 111, (2, 3), 16),
    ("conv6_2", 111, 162, (2, 3), 32), ("conv7_2", 162, 213, (2, 3), 64),
    ("conv8_2", 213, 264, (2,), 100), ("conv9_2", 264, 315, (2,), 300)])


def batch_samplers():
    """ssd_pascal.py's seven samplers: the whole image, then windows of
    scale 0.3-1 and aspect ratio 1/2-2 with IoU >= 0.1, 0.3, 0.5, 0.7, 0.9
    with some object, or <= 1 (any window touching one); one try for the
    whole image, 50 for the others, one window kept per sampler."""
    window = dict(min_scale=0.3, max_scale=1.0, min_aspect_ratio=0.5, max_aspect_ratio=2.0)
    samplers = [dict(max_sample=1, max_trials=1)]   # the default sampler: scale 1
    for overlap in (0.1, 0.3, 0.5, 0.7, 0.9):
        samplers.append(dict(sampler=window, sample_constraint=dict(min_jaccard_overlap=overlap),
                             max_sample=1, max_trials=50))
    samplers.append(dict(sampler=window, sample_constraint=dict(max_jaccard_overlap=1.0),
                         max_sample=1, max_trials=50))
    return samplers


SSD300_AUGMENT = dict(
    distort_param=dict(brightness_prob=0.5, brightness_delta=32.0, contrast_prob=0.5,
                       contrast_lower=0.5, contrast_upper=1.5, hue_prob=0.5, hue_delta=18.0,
                       saturation_prob=0.5, saturation_lower=0.5, saturation_upper=1.5,
                       random_order_prob=0.0),
    expand_param=dict(prob=0.5, max_expand_ratio=4.0),
    batch_sampler=batch_samplers())
SSD300 = Model("VGG_VOC0712_SSD_300x300", (300, 300), SSD300_SOURCES, 32, SSD300_AUGMENT, 200)


# -- the tiny SSD ------------------------------------------------------------------------------

TINY_CLASSES = 7           # the built-in dataset's 6 shapes + background
# (name, channels, stride, 2x2/2 max pooling before it): conv1 halves the
# input, then conv2 .. conv5 at strides 4, 8, 16, 32.
TINY_TRUNK = (("conv1", 16, 2, False), ("conv2", 32, 1, True), ("conv3", 64, 1, True),
              ("conv4", 96, 1, True), ("conv5", 128, 1, True))
# Priors on the stride 8, 16 and 32 maps, sized for objects of 24-96 pixels.
TINY_SOURCES = (Source("conv3", 24, 40, (2,), 8), Source("conv4", 40, 68, (2, 3), 16),
                Source("conv5", 68, 110, (2, 3), 32))
TINY_AUGMENT = dict(expand_param=dict(prob=0.5, max_expand_ratio=2.0),
                    batch_sampler=batch_samplers())
TINY = Model("SSD_tiny_192x256", (192, 256), TINY_SOURCES, 8, TINY_AUGMENT, 100)
MODELS = {"ssd300": SSD300, "tiny": TINY}


# -- layers ------------------------------------------------------------------------------------

def conv(name, bottom, outputs, kernel, pad=0, stride=1, dilation=1, relu=True):
    """A Convolution (Xavier weights, zero bias; Caffe-SSD's param specs) and
    its in-place ReLU (relu1_1 for conv1_1, relu6 for fc6)."""
    text = layer(name, "Convolution", [bottom], [name], param=PARAMS, convolution_param=dict(
        num_output=outputs, pad=pad, kernel_size=kernel, stride=stride if stride != 1 else None,
        dilation=dilation if dilation != 1 else None, weight_filler=XAVIER, bias_filler=ZERO))
    if relu:
        suffix = name[4:] if name.startswith("conv") else name[2:]
        text += layer(f"relu{suffix}", "ReLU", [name], [name])
    return text


def max_pool(name, bottom, kernel, stride, pad=0):
    return layer(name, "Pooling", [bottom], [name], pooling_param=dict(
        pool=Word("MAX"), kernel_size=kernel, stride=stride, pad=pad))


def vgg_trunk():
    """VGG16 reduced as SSD uses it, the extra layers and conv4_3_norm."""
    text, bottom = "", "data"
    for block, count, outputs in VGG:
        for i in range(1, count + 1):
            text += conv(f"{block}_{i}", bottom, outputs, 3, pad=1)
            bottom = f"{block}_{i}"
        index = block[-1]
        text += max_pool(f"pool{index}", bottom, *((3, 1, 1) if index == "5" else (2, 2)))
        bottom = f"pool{index}"
    text += conv("fc6", "pool5", 1024, 3, pad=6, dilation=6)
    text += conv("fc7", "fc6", 1024, 1)
    bottom = "fc7"
    for name, outputs, kernel, pad, stride in EXTRAS:
        text += conv(name, bottom, outputs, kernel, pad=pad, stride=stride)
        bottom = name
    text += layer("conv4_3_norm", "Normalize", ["conv4_3"], ["conv4_3_norm"], norm_param=dict(
        across_spatial=False, scale_filler=dict(type="constant", value=20.0),
        channel_shared=False))
    return text


def tiny_trunk():
    """3x3 convolutions (MSRA weights, no bias; the first with stride 2) with
    BatchNorm + Scale + ReLU, 2x2 max pooling before all but the first
    (BatchNorm in training mode: the batch statistics, with moving averages
    for the test net)."""
    text, bottom = "", "data"
    for name, channels, stride, pool in TINY_TRUNK:
        if pool:
            pooled = "pool" + name[len("conv"):]
            text += max_pool(pooled, bottom, 2, 2)
            bottom = pooled
        text += layer(name, "Convolution", [bottom], [name], param=[dict(lr_mult=1.0)],
                      convolution_param=dict(
                          num_output=channels, pad=1, kernel_size=3,
                          stride=stride if stride != 1 else None, bias_term=False,
                          weight_filler=dict(type="msra")))
        text += layer(f"{name}_bn", "BatchNorm", [name], [name],
                      param=[dict(lr_mult=0.0, decay_mult=0.0)] * 3)
        text += layer(f"{name}_scale", "Scale", [name], [name],
                      param=[dict(lr_mult=1.0, decay_mult=0.0)] * 2,
                      scale_param=dict(bias_term=True))
        text += layer(f"{name}_relu", "ReLU", [name], [name])
        bottom = name
    return text


def head_branch(source, kind, outputs):
    """``<src>_mbox_<kind>``: a 3x3 convolution, permuted to (N, H, W, C)
    and flattened, so each prior's outputs are consecutive."""
    name = f"{source}_mbox_{kind}"
    return (conv(name, source, outputs, 3, pad=1, relu=False)
            + layer(f"{name}_perm", "Permute", [name], [f"{name}_perm"],
                    permute_param=dict(order=[0, 2, 3, 1]))
            + layer(f"{name}_flat", "Flatten", [f"{name}_perm"], [f"{name}_flat"],
                    flatten_param=dict(axis=1)))


def prior_box(source):
    name = f"{source.blob}_mbox_priorbox"
    return layer(name, "PriorBox", [source.blob, "data"], [name], prior_box_param=dict(
        min_size=float(source.min_size), max_size=float(source.max_size),
        aspect_ratio=[float(r) for r in source.ratios], flip=True, clip=False,
        variance=list(VARIANCES), step=float(source.step), offset=0.5))


def concat(name, parts, axis):
    return layer(name, "Concat", parts, [name], concat_param=dict(axis=axis))


def heads(model, classes):
    """Per source the loc / conf branches and the priors, then their
    concatenations mbox_loc (N, P * 4), mbox_conf (N, P * classes),
    mbox_priorbox (1, 2, P * 4)."""
    text = ""
    for source in model.sources:
        text += head_branch(source.blob, "loc", source.priors * 4)
        text += head_branch(source.blob, "conf", source.priors * classes)
        text += prior_box(source)
    blobs = [s.blob for s in model.sources]
    text += concat("mbox_loc", [f"{b}_mbox_loc_flat" for b in blobs], 1)
    text += concat("mbox_conf", [f"{b}_mbox_conf_flat" for b in blobs], 1)
    text += concat("mbox_priorbox", [f"{b}_mbox_priorbox" for b in blobs], 2)
    return text


def train_data(model):
    """The AnnotatedData layer: ``data`` and ``label``."""
    height, width = model.image
    augment = {k: v for k, v in model.augment.items() if k != "batch_sampler"}
    transform = dict(mirror=True, mean_value=list(MEAN), resize_param=dict(
        prob=1.0, resize_mode=Word("WARP"), height=height, width=width,
        interp_mode=[Word(m) for m in ("LINEAR", "AREA", "NEAREST", "CUBIC", "LANCZOS4")]),
        emit_constraint=dict(emit_type=Word("CENTER")), **augment)
    return layer("data", "AnnotatedData", [], ["data", "label"], transform_param=transform,
                 data_param=dict(source="unused: solver.train feeds the dataset",
                                 batch_size=model.batch_size, backend=Word("LMDB")),
                 annotated_data_param=dict(batch_sampler=model.augment.get("batch_sampler"),
                                           label_map_file="unused: the dataset's classes"))


def train_loss(classes):
    return layer("mbox_loss", "MultiBoxLoss", ["mbox_loc", "mbox_conf", "mbox_priorbox", "label"],
                 ["mbox_loss"], propagate_down=[True, True, False, False],
                 loss_param=dict(normalization=Word("VALID")), multibox_loss_param=dict(
                     loc_loss_type=Word("SMOOTH_L1"), conf_loss_type=Word("SOFTMAX"),
                     loc_weight=1.0, num_classes=classes, share_location=True,
                     match_type=Word("PER_PREDICTION"), overlap_threshold=0.5,
                     use_prior_for_matching=True, background_label_id=0, use_difficult_gt=True,
                     neg_pos_ratio=3.0, neg_overlap=0.5, code_type=Word("CENTER_SIZE"),
                     ignore_cross_boundary_bbox=False, mining_type=Word("MAX_NEGATIVE")))


def test_outputs(model, classes):
    """Softmax over each prior's classes and DetectionOutput."""
    return (layer("mbox_conf_reshape", "Reshape", ["mbox_conf"], ["mbox_conf_reshape"],
                  reshape_param=dict(shape=dict(dim=[0, -1, classes])))
            + layer("mbox_conf_softmax", "Softmax", ["mbox_conf_reshape"], ["mbox_conf_softmax"],
                    softmax_param=dict(axis=2))
            + layer("mbox_conf_flatten", "Flatten", ["mbox_conf_softmax"], ["mbox_conf_flatten"],
                    flatten_param=dict(axis=1))
            + layer("detection_out", "DetectionOutput",
                    ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"], ["detection_out"],
                    detection_output_param=dict(
                        num_classes=classes, share_location=True, background_label_id=0,
                        nms_param=dict(nms_threshold=0.45, top_k=400),
                        code_type=Word("CENTER_SIZE"), keep_top_k=model.keep_top_k,
                        confidence_threshold=0.01)))


def ssd_net(model="ssd300", classes=None, phase="TRAIN"):
    """Prototxt text of an SSD net for one phase: ``model`` "ssd300" or
    "tiny"; ``classes`` counts the background (default 21 for SSD300, 7 for
    the tiny net)."""
    phase = phase.upper()
    if phase not in ("TRAIN", "TEST"):
        raise ValueError(f"phase must be TRAIN or TEST, found {phase!r}")
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, found {model!r}")
    spec = MODELS[model]
    classes = default_classes(model) if classes is None else int(classes)
    if classes < 2:
        raise ValueError(f"classes counts the background too and must be >= 2, found {classes}")
    train = phase == "TRAIN"
    parts = [f'name: "{spec.name}_{"train" if train else "test"}"\n']
    if train:
        parts.append(train_data(spec))
    else:
        parts.append(layer("input", "Input", [], ["data"], input_param=dict(
            shape=dict(dim=[1, 3, *spec.image]))))
    parts.append(vgg_trunk() if model == "ssd300" else tiny_trunk())
    parts.append(heads(spec, classes))
    parts.append(train_loss(classes) if train else test_outputs(spec, classes))
    return "".join(parts)


def default_classes(model):
    return TINY_CLASSES if model == "tiny" else SSD300_CLASSES


def ssd_net_both(model="ssd300", classes=None):
    """The TRAIN and TEST nets in one file (include rules on what differs)."""
    return merge_phases(ssd_net(model, classes, "TRAIN"), ssd_net(model, classes, "TEST"))


# -- files -------------------------------------------------------------------------------------

# The tiny net's solver: SGD with momentum from random initialization, 8
# images per iteration (data_param.batch_size), the rate cut tenfold late.
# Measured on the built-in dataset (seed 0): VOC07 mAP 0.90 at iteration
# 500, 0.95 at 2000, 0.977 at 2500; about 12 CPU minutes on 2 cores.
TINY_SOLVER = dict(
    net="ssd_tiny.prototxt", base_lr=0.02, lr_policy="multistep", gamma=0.1,
    stepvalue=[2000], max_iter=2500, momentum=0.9, weight_decay=0.0005, iter_size=1,
    clip_gradients=20.0, display=50, average_loss=50, snapshot=0, random_seed=0)



def generated_file(model="ssd300", classes=None, phase="TRAIN"):
    """``ssd_net`` (``ssd_net_both`` for phase "BOTH") with a header naming
    the command that wrote it."""
    phase = phase.upper()
    classes = default_classes(model) if classes is None else int(classes)
    command = (f"python -m prototxt.ssd{' --tiny' if model == 'tiny' else ''} "
               f"--classes {classes} --phase {phase}")
    text = ssd_net_both(model, classes) if phase == "BOTH" else ssd_net(model, classes, phase)
    return generated_header(command) + text


def committed_files():
    """File name -> text of the files kept in prototxt/: the tiny SSD for
    the built-in dataset (both phases) and its solver."""
    return {"ssd_tiny.prototxt": generated_file("tiny", TINY_CLASSES, "BOTH"),
            "ssd_tiny_solver.prototxt": generated_header(
                "python -m prototxt.ssd --regenerate (prototxt/ssd.py TINY_SOLVER)")
            + "\n".join(message_lines(TINY_SOLVER, indent=0)) + "\n"}


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m prototxt.ssd",
        description="Write an SSD network in Caffe-SSD's layout: VGG16 SSD300, or the tiny SSD "
                    "of the built-in dataset (see the module docstring).")
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny SSD for the built-in dataset (192 x 256, 3 prior maps)")
    parser.add_argument("--classes", type=int,
                        help=f"classes including the background (default {SSD300_CLASSES}, "
                             f"PASCAL VOC; tiny: {TINY_CLASSES}, the built-in dataset)")
    add_phase_argument(parser)
    add_regenerate_argument(parser)
    args = parser.parse_args(argv)
    if args.regenerate:
        return regenerate(committed_files())
    try:
        sys.stdout.write(generated_file("tiny" if args.tiny else "ssd300", args.classes,
                                        args.phase))
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
