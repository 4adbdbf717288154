"""A tiny R-CNN: one CNN pass per warped region proposal.

    python -m prototxt.rcnn --classes 7 --phase BOTH          # the net on standard output
    python -m prototxt.rcnn --regenerate                      # prototxt/rcnn_tiny*.prototxt

TRAIN reads Caffe's WindowData (layers/window_data.py) in its native form:
crops of ``--crop`` pixels with ``--context-pad`` pixels of context at the
warped scale (R-CNN: 227 and 16), 25% foreground at IoU >= 0.5, background
below 0.5, mirrored at random, plus per-class box-regression targets. TEST
takes ``data`` ``(N, 3, crop, crop)`` from an Input layer (the warped
proposals of one image, detection/region_detector.py) and gives
``cls_prob`` ``(N, K)`` and ``bbox_pred`` ``(N, 4K)`` (deltas divided by
layers.window_data.BBOX_STDS).

The trunk is three 3x3 convolutions (16, 32, 64 channels, each followed by
ReLU and 2x2 max pooling) and one 128-wide fully connected layer, then a
softmax classifier and per-class box regression (SmoothL1). Crops are 32
pixels by default: R-CNN runs the CNN once per region, so the crop size
sets its whole cost (64-pixel crops trained at 1.8 s per batch of 64 on
the 2-core development machine, too slow for a 15-minute run; the
Convolution layer's CPU plans work one image at a time, so the cost grows
with the number of crops more than with their pixels, hence also batches
of 32 windows (R-CNN: 128) for more updates in the same time), and the built-in dataset's six shapes (20-80 pixels wide
in 192 x 256 images) stay distinguishable at 32 (R-CNN's 227 would only
enlarge them). Context padding 2 pixels at 32 is R-CNN's 16 at 227,
scaled. Pixels are mean-subtracted and scaled by 1/64 (inputs of about
unit spread for the MSRA-initialized trunk).
"""
import argparse
import sys

from prototxt.generator_cli import (add_phase_argument, add_regenerate_argument, generated_header,
                                    regenerate)

__all__ = ["net_text", "solver_text", "committed_files", "main"]

TINY_CLASSES = 7
CROP, CONTEXT_PAD, BATCH = 32, 2, 32
SCALE = 1 / 64
WINDOW_FILE = "out/rcnn_tiny/train_windows.txt"
MEAN = (102.9801, 115.9465, 122.7717)


def _layer(name, kind, bottoms, tops, body="", phase=None):
    lines = [f'layer {{\n  name: "{name}"\n  type: "{kind}"']
    lines += [f'  bottom: "{b}"' for b in bottoms] + [f'  top: "{t}"' for t in tops]
    if phase:
        lines.append(f"  include {{\n    phase: {phase}\n  }}")
    if body:
        lines.append("\n".join("  " + line for line in body.strip("\n").split("\n")))
    return "\n".join(lines) + "\n}\n"


def _learned(num_output, extra="", filler='type: "msra"', std=None):
    weight = f'type: "gaussian"\n    std: {std}' if std else filler
    return (f"param {{\n  lr_mult: 1\n}}\nparam {{\n  lr_mult: 2\n  decay_mult: 0\n}}\n"
            f"PARAM {{\n  num_output: {num_output}\n{extra}  weight_filler {{\n    {weight}\n"
            f"  }}\n  bias_filler {{\n    type: \"constant\"\n  }}\n}}")


def _data_layers(phase, classes, crop, context_pad, batch, window_file):
    mean = "".join(f"  mean_value: {m}\n" for m in MEAN)
    train = _layer("data", "WindowData", [], ["data", "label", "bbox_targets", "bbox_weights"],
                   f"transform_param {{\n  mirror: true\n  crop_size: {crop}\n  scale: {SCALE}\n{mean}}}\n"
                   f"window_data_param {{\n  source: \"{window_file}\"\n  batch_size: {batch}\n"
                   f"  fg_threshold: 0.5\n  bg_threshold: 0.5\n  fg_fraction: 0.25\n"
                   f"  context_pad: {context_pad}\n  crop_mode: \"warp\"\n  cache_images: true\n}}",
                   "TRAIN" if phase == "BOTH" else None)
    test = _layer("data", "Input", [], ["data"],
                  f"input_param {{\n  shape {{\n    dim: {batch}\n    dim: 3\n    dim: {crop}\n"
                  f"    dim: {crop}\n  }}\n}}", "TEST" if phase == "BOTH" else None)
    return {"TRAIN": [train], "TEST": [test], "BOTH": [train, test]}[phase]


def _trunk(crop):
    out, bottom = [], "data"
    for i, width in enumerate((16, 32, 64), start=1):
        conv = _learned(width, "  kernel_size: 3\n  pad: 1\n").replace("PARAM",
                                                                     "convolution_param")
        out.append(_layer(f"conv{i}", "Convolution", [bottom], [f"conv{i}"], conv))
        out.append(_layer(f"relu{i}", "ReLU", [f"conv{i}"], [f"conv{i}"]))
        out.append(_layer(f"pool{i}", "Pooling", [f"conv{i}"], [f"pool{i}"],
                          "pooling_param {\n  pool: MAX\n  kernel_size: 2\n  stride: 2\n}"))
        bottom = f"pool{i}"
    out.append(_layer("fc4", "InnerProduct", [bottom], ["fc4"],
                      _learned(128).replace("PARAM", "inner_product_param")))
    out.append(_layer("relu4", "ReLU", ["fc4"], ["fc4"]))
    return out


def net_text(classes=TINY_CLASSES, phase="BOTH", crop=CROP, context_pad=CONTEXT_PAD,
             batch=BATCH, window_file=WINDOW_FILE):
    """The prototxt text of the tiny R-CNN (module docstring)."""
    if classes < 2:
        raise ValueError(f"--classes counts the background too: expected >= 2, found {classes}")
    if crop % 8 or crop < 16:
        raise ValueError(f"--crop must be a multiple of 8 (three 2x2 poolings), at least 16, "
                         f"found {crop}")
    layers = _data_layers(phase, classes, crop, context_pad, batch, window_file) + _trunk(crop)
    layers.append(_layer("cls_score", "InnerProduct", ["fc4"], ["cls_score"],
                         _learned(classes, std=0.01).replace("PARAM", "inner_product_param")))
    layers.append(_layer("bbox_pred", "InnerProduct", ["fc4"], ["bbox_pred"],
                         _learned(4 * classes, std=0.001).replace("PARAM",
                                                                  "inner_product_param")))
    train_phase = "TRAIN" if phase == "BOTH" else None
    if phase in ("TRAIN", "BOTH"):
        layers.append(_layer("loss_cls", "SoftmaxWithLoss", ["cls_score", "label"], ["loss_cls"],
                             "loss_weight: 1", train_phase))
        layers.append(_layer("accuracy", "Accuracy", ["cls_score", "label"], ["accuracy"],
                             phase=train_phase))
        layers.append(_layer("loss_bbox", "SmoothL1Loss",
                             ["bbox_pred", "bbox_targets", "bbox_weights", "bbox_weights"],
                             ["loss_bbox"], "loss_weight: 1", train_phase))
    if phase in ("TEST", "BOTH"):
        layers.append(_layer("cls_prob", "Softmax", ["cls_score"], ["cls_prob"],
                             phase="TEST" if phase == "BOTH" else None))
    return 'name: "R-CNN tiny"\n' + "".join(layers)


SOLVER = """net: "rcnn_tiny.prototxt"
base_lr: 0.01
lr_policy: "multistep"
gamma: 0.1
stepvalue: 600
max_iter: 800
momentum: 0.9
weight_decay: 0.0005
display: 50
average_loss: 50
snapshot: 0
random_seed: 0
"""



def solver_text():
    return generated_header("python -m prototxt.rcnn --regenerate (prototxt/rcnn.py SOLVER)") + SOLVER


def committed_files():
    """``{file name: text}`` of the files kept in prototxt/."""
    return {"rcnn_tiny.prototxt": generated_header(f"python -m prototxt.rcnn --classes {TINY_CLASSES} "
                                          "--phase BOTH") + net_text(),
            "rcnn_tiny_solver.prototxt": solver_text()}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m prototxt.rcnn",
                                     description="Write the tiny R-CNN net (module docstring).")
    parser.add_argument("--classes", type=int, default=TINY_CLASSES,
                        help=f"classes including the background (default {TINY_CLASSES})")
    add_phase_argument(parser, default="BOTH")
    parser.add_argument("--crop", type=int, default=CROP, help=f"crop size (default {CROP})")
    parser.add_argument("--context-pad", type=int, default=CONTEXT_PAD,
                        help=f"context pixels at the warped scale (default {CONTEXT_PAD})")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"windows per batch ({BATCH})")
    parser.add_argument("--window-file", default=WINDOW_FILE,
                        help=f"WindowData source (default {WINDOW_FILE})")
    add_regenerate_argument(parser, "prototxt/rcnn_tiny.prototxt and its solver")
    args = parser.parse_args(argv)
    if args.regenerate:
        return regenerate(committed_files())
    try:
        text = net_text(args.classes, args.phase, args.crop, args.context_pad, args.batch,
                        args.window_file)
    except ValueError as exc:
        parser.error(str(exc))
    sys.stdout.write(generated_header("python -m prototxt.rcnn " + " ".join(sys.argv[1:] if argv is None
                                                                    else argv)) + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
