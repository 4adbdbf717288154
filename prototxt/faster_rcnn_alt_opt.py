"""py-faster-rcnn's alternating (4-step) training with its own stage files.

    python -m prototxt.faster_rcnn_alt_opt --out-dir alt_opt --backbone zf [--classes N]
        [--image SCALE MAX_SIZE]
    python -m solver.schedule alt_opt/schedule.prototxt --weights ZF.v2.caffemodel --data VOCdevkit

writes the eight files of models/pascal_voc/<NET>/faster_rcnn_alt_opt/ (as
``python -m prototxt.faster_rcnn --net ... --python-layers`` writes them)
and a schedule file running tools/train_faster_rcnn_alt_opt.py's stages:

  stage1_rpn         stage1_rpn_train.pt from ImageNet weights (80k iterations, step 60k)
  stage1_proposals   rpn_test.pt with the stage-1 RPN
  stage1_fast_rcnn   stage1_fast_rcnn_train.pt on them, from ImageNet (40k, step 30k)
  stage2_rpn         stage2_rpn_train.pt from the stage-1 Fast R-CNN (convolutions fixed)
  stage2_proposals   rpn_test.pt with the stage-2 RPN
  stage2_fast_rcnn   stage2_fast_rcnn_train.pt from the stage-2 RPN (convolutions fixed)
  detector           faster_rcnn_test.pt assembled from the stage-2 RPN and Fast R-CNN

base_lr 0.001, momentum 0.9, weight_decay 0.0005 (the stage solver files).
py-faster-rcnn generates proposals with every box before NMS and 2000
after (TEST.RPN_PRE_NMS_TOP_N -1, RPN_POST_NMS_TOP_N 2000); the schedule's
overrides reach native Proposal layers only, so rpn_test.pt's Python
proposal layer keeps its TEST defaults (6000 / 300) here.
"""
import argparse
import sys
from pathlib import Path

from prototxt.generator_cli import regenerate
from prototxt.faster_rcnn import NETS, PY_FASTER_RCNN_BACKBONES, REFERENCE_FILES, faster_rcnn_net

__all__ = ["alt_opt_files", "alt_opt_schedule", "STAGE_LENGTHS", "FOLDERS"]

#: (max_iter, stepsize) of the RPN and Fast R-CNN stages
#: (stage1_rpn_solver60k80k.pt, stage1_fast_rcnn_solver30k40k.pt; max_iters
#: [80000, 40000, 80000, 40000]).
STAGE_LENGTHS = {"rpn": (80000, 60000), "fast_rcnn": (40000, 30000)}
#: py-faster-rcnn's model folder of each backbone.
FOLDERS = {"zf": "ZF", "vgg_cnn_m_1024": "VGG_CNN_M_1024", "vgg16": "VGG16"}
_ALT_OPT_NETS = [net for net in NETS if not net.startswith("end2end")]

_SOLVER = ("    base_lr: 0.001\n    lr_policy: \"step\"\n    gamma: 0.1\n"
           "    stepsize: {step}\n    max_iter: {iters}\n    momentum: 0.9\n"
           "    weight_decay: 0.0005\n    display: 20\n    average_loss: 100\n"
           "    snapshot: 10000\n")


def _file(net):
    return REFERENCE_FILES[net].split("/")[-1]


def alt_opt_files(backbone="zf", classes=21, image=None):
    """File name -> text of the six alternating nets of ``backbone``;
    ``image`` (shorter side, longer cap) is written into the training data
    layers' param_str."""
    files = {}
    for net in _ALT_OPT_NETS:
        text = faster_rcnn_net(net, classes, python_layers=True, backbone=backbone)
        if image and net.endswith("_train"):
            scale, max_size = (int(v) for v in image)
            if min(scale, max_size) < 1:
                raise ValueError(f"image sizes must be positive, found {tuple(image)}")
            text = text.replace(f"\"'num_classes': {classes}\"",
                                f"\"'num_classes': {classes}, 'scales': ({scale},), "
                                f"'max_size': {max_size}\"", 1)
        files[_file(net)] = text
    return files


def _train(name, net, inits, lengths, proposals=None):
    iters, step = lengths
    lines = [f'stage {{\n  name: "{name}"\n  net: "{_file(net)}"\n']
    if proposals:
        lines.append(f'  proposals_from: "{proposals}"\n')
    lines += [f'  init_from: "{init}"\n' for init in inits]
    lines += ["  solver {\n", _SOLVER.format(step=step, iters=iters), "  }\n}\n"]
    return "".join(lines)


def _proposals(name, from_stage):
    return (f'stage {{\n  name: "{name}"\n  generate_proposals {{\n'
            f'    rpn_net: "{_file("rpn_test")}"\n    from_stage: "{from_stage}"\n  }}\n}}\n')


def alt_opt_schedule(backbone="zf"):
    """Text of the schedule file running py-faster-rcnn's alternating
    training of ``backbone`` with its stage files beside it."""
    if backbone not in PY_FASTER_RCNN_BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(PY_FASTER_RCNN_BACKBONES)}, "
                         f"found {backbone!r}")
    rpn, fast = STAGE_LENGTHS["rpn"], STAGE_LENGTHS["fast_rcnn"]
    return "".join([
        f"# py-faster-rcnn's alternating optimization (tools/train_faster_rcnn_alt_opt.py)\n"
        f"# for {FOLDERS[backbone]} with its own files; put this beside them and run\n"
        f"#   python -m solver.schedule THIS_FILE --weights {FOLDERS[backbone]}.v2.caffemodel "
        f"--data DATA\n"
        f"# Written by prototxt.faster_rcnn_alt_opt.alt_opt_schedule. rpn_test.pt's Python\n"
        f"# proposal layer keeps its TEST defaults (6000 / 300 boxes before / after NMS;\n"
        f"# py-faster-rcnn generates with all / 2000).\n"
        f'name: "py-faster-rcnn {FOLDERS[backbone]}, faster_rcnn_alt_opt"\n'
        f'train_split: "trainval"\ntest_split: "test"\nrandom_seed: 0\n\n',
        _train("stage1_rpn", "stage1_rpn_train", ["pretrained"], rpn),
        _proposals("stage1_proposals", "stage1_rpn"),
        _train("stage1_fast_rcnn", "stage1_fast_rcnn_train", ["pretrained"], fast,
               "stage1_proposals"),
        _train("stage2_rpn", "stage2_rpn_train", ["stage:stage1_fast_rcnn"], rpn),
        _proposals("stage2_proposals", "stage2_rpn"),
        _train("stage2_fast_rcnn", "stage2_fast_rcnn_train", ["stage:stage2_rpn"], fast,
               "stage2_proposals"),
        f'stage {{\n  name: "detector"\n  assemble {{\n    net: "{_file("faster_rcnn_test")}"\n'
        f'    from_stage: "stage2_rpn"\n    from_stage: "stage2_fast_rcnn"\n  }}\n}}\n',
    ])


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m prototxt.faster_rcnn_alt_opt",
        description="Write py-faster-rcnn's faster_rcnn_alt_opt stage files (Python-layer form, "
                    "as it ships them) and a schedule file running them with solver.schedule.")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--backbone", default="zf", choices=PY_FASTER_RCNN_BACKBONES)
    parser.add_argument("--classes", type=int, default=21,
                        help="classes with the background (default 21)")
    parser.add_argument("--image", type=int, nargs=2, metavar=("SCALE", "MAX_SIZE"),
                        help="shorter side and longer-side cap of the training images, written "
                             "into the data layers (default: py-faster-rcnn's 600 1000)")
    args = parser.parse_args(argv)
    try:
        files = alt_opt_files(args.backbone, args.classes, args.image)
    except ValueError as exc:
        parser.error(str(exc))
    files["schedule.prototxt"] = alt_opt_schedule(args.backbone)
    return regenerate(files, args.out_dir)


if __name__ == "__main__":
    sys.exit(main())
