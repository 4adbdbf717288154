"""py-R-FCN's alternating (5-step, OHEM) stage nets, in its Python-layer form.

    from prototxt.rfcn_alt_opt import rfcn_alt_opt_net, ALT_OPT_NETS
    text = rfcn_alt_opt_net(101, 21, "stage1_rfcn_ohem_train")

py-R-FCN trains R-FCN with Faster R-CNN's alternating optimization
stretched to five training stages (tools/train_rfcn_alt_opt_5stage.py,
experiments/cfgs/rfcn_alt_opt_5step_ohem.yml), from the files of
models/{pascal_voc,coco}/ResNet-{50,101}/rfcn_alt_opt_5step_ohem/:

  stage1_rpn_train.pt        RPN from ImageNet weights (res3 and res4 learn)
  rpn_test.pt                proposals (6000 / 300 boxes before / after NMS)
  stage1_rfcn_ohem_train.pt  R-FCN on those proposals, from ImageNet weights
  stage2_rpn_train.pt        RPN on stage 1 R-FCN's trunk, trunk fixed
  stage2_rfcn_ohem_train.pt  R-FCN on stage 2 proposals, from ImageNet again
  stage3_rpn_train.pt        RPN on stage 2 R-FCN's trunk, trunk fixed
  rfcn_test.pt               the detector on precomputed RoIs (TEST)

What the files hold (the facts these nets are written from):
- RPN stages: data layer roi_data_layer.layer.RoIDataLayer (tops data,
  im_info, gt_boxes; 'num_classes'), the ResNet trunk up to res4 (conv1
  and res2 fixed; res3 and res4 fixed too in stages 2 and 3), an RPN of
  256 channels (the end-to-end files have 512) with 9 anchors on res4's
  last block, AnchorTarget and the two RPN losses (sigma 3).
- rpn_test: legacy inputs data 1x3x224x224 and im_info 1x3, the same trunk
  and RPN, Softmax, Proposal with tops rois and scores.
- R-FCN stages: the data layer in its precomputed-RoI form (tops data,
  rois, labels, bbox_targets, bbox_inside_weights, bbox_outside_weights;
  no im_info), the whole trunk with res5 dilated (conv1 and res2 fixed in
  both stages), the R-FCN head as end to end (class-agnostic, k = 7), the
  OHEM losses. No RPN.
- rfcn_test: legacy inputs data 1x3x224x224 and rois 1x5, trunk and head,
  cls_prob (R, classes) and bbox_pred (R, 8).
The files py-R-FCN ships for COCO set 'num_classes': 81; its COCO
rpn_test.pt was left at 12 anchors (24 / 48 outputs) with 'feat_stride': 16
only, which its own stage-1 RPN (18 / 36 outputs) cannot fill; here every
rpn_test has 9 anchors.
"""
from prototxt.generator_cli import regenerate
from prototxt.resnet import resnet_trunk
from prototxt.rfcn import _outputs, _rfcn_head
from prototxt.rpn_parts import (FEAT_STRIDE, HEAD_CHANNELS, TEST_IMAGE_PY, legacy_inputs,
                                python_layer, rpn_head, rpn_losses, rpn_proposals,
                                rpn_score_reshape, rpn_train_data)

__all__ = ["rfcn_alt_opt_net", "ALT_OPT_NETS", "ALT_OPT_RPN_CHANNELS", "alt_opt_phase"]

#: The stage nets of the 5-step schedule, by py-R-FCN's file stem.
ALT_OPT_NETS = ("stage1_rpn_train", "stage2_rpn_train", "stage3_rpn_train", "rpn_test",
                "stage1_rfcn_ohem_train", "stage2_rfcn_ohem_train", "rfcn_test")
ALT_OPT_RPN_CHANNELS = 256
ROI_TOPS = ("data", "rois", "labels", "bbox_targets", "bbox_inside_weights",
            "bbox_outside_weights")


def alt_opt_phase(net):
    """"TEST" for the rpn_test / rfcn_test nets, "TRAIN" for the others."""
    return "TEST" if net.endswith("_test") else "TRAIN"


def rfcn_alt_opt_net(depth=101, classes=21, net="stage1_rfcn_ohem_train", k=7, *, image=None):
    """Prototxt text of one of py-R-FCN's alternating stage nets
    (``net`` in ``ALT_OPT_NETS``) for a ResNet of ``depth`` (50, 101, 152)
    and ``classes`` classes (background included). ``image`` (shorter
    side, longer-side cap) adds 'scales' and 'max_size' to the training data
    layers' param_str (py-R-FCN's files leave them to its config: 600, 1000)."""
    if net not in ALT_OPT_NETS:
        raise ValueError(f"net must be one of {', '.join(ALT_OPT_NETS)}, found {net!r}")
    if classes < 2:
        raise ValueError(f"classes counts the background too and must be >= 2, found {classes}")
    parts = [f'name: "ResNet-{depth}"\n']
    if "rpn" in net:
        parts += _rpn_net(depth, classes, net)
    else:
        parts += _rfcn_net(depth, classes, net, k)
    text = "".join(parts)
    if image and alt_opt_phase(net) == "TRAIN":
        scale, max_size = (int(v) for v in image)
        if min(scale, max_size) < 1:
            raise ValueError(f"image sizes must be positive, found {tuple(image)}")
        text = text.replace(f"\"'num_classes': {classes}\"", f"\"'num_classes': {classes}, "
                            f"'scales': ({scale},), 'max_size': {max_size}\"", 1)
    return text


def _rpn_net(depth, classes, net):
    train = net != "rpn_test"
    frozen = {1, 2, 3, 4} if net in ("stage2_rpn_train", "stage3_rpn_train") else {1, 2}
    trunk, outputs = resnet_trunk(depth, last_stage=4, frozen_stages=frozen,
                                  conv1_bias=depth == 50)
    if train:
        parts = [rpn_train_data(True, classes)]
    else:
        parts = [legacy_inputs([("data", (1, 3) + TEST_IMAGE_PY), ("im_info", (1, 3))])]
    parts += [trunk, rpn_head(outputs[4], channels=ALT_OPT_RPN_CHANNELS), rpn_score_reshape()]
    parts.append(rpn_losses(True) if train else rpn_proposals(True, ["rois", "scores"]))
    return parts


def _rfcn_net(depth, classes, net, k):
    train = net != "rfcn_test"
    trunk, outputs = resnet_trunk(depth, dilate_res5=True, frozen_stages={1, 2},
                                  conv1_bias=depth == 50)
    if train:
        parts = [python_layer("data", [], list(ROI_TOPS), "roi_data_layer.layer",
                              "RoIDataLayer", f"'num_classes': {classes}")]
    else:
        parts = [legacy_inputs([("data", (1, 3) + TEST_IMAGE_PY), ("rois", (1, 5))])]
    parts.append(trunk)
    parts += _rfcn_head(outputs[5], HEAD_CHANNELS, classes, k, False, FEAT_STRIDE, train)
    parts += _outputs(classes, k, False, train, train, True)
    return parts


# -- the schedule ---------------------------------------------------------------------------

#: Training lengths (max_iter, stepsize) of the RPN and the R-FCN stages, from
#: tools/train_rfcn_alt_opt_5stage.py's get_solvers: its solver file names
#: (stage1_rpn_solver60k80k.pt, stage1_rfcn_ohem_solver80k120k.pt; COCO's all
#: *_solver360k480k.pt) and max_iters (VOC 80k / 120k / 80k / 120k / 80k,
#: COCO 480k each).
STAGE_LENGTHS = {"pascal_voc": {"rpn": (80000, 60000), "rfcn": (120000, 80000)},
                 "coco": {"rpn": (480000, 360000), "rfcn": (480000, 360000)}}

_SOLVER = ("    base_lr: 0.001\n    lr_policy: \"step\"\n    gamma: 0.1\n"
           "    stepsize: {step}\n    max_iter: {iters}\n    momentum: 0.9\n"
           "    weight_decay: 0.0005\n    display: 20\n    average_loss: 100\n"
           "    snapshot: 10000\n")


def _train_stage(name, net, init, lengths, proposals=None):
    iters, step = lengths
    lines = [f'stage {{\n  name: "{name}"\n  net: "{net}"\n']
    if proposals:
        lines.append(f'  proposals_from: "{proposals}"\n')
    lines += [f'  init_from: "{init}"\n', "  solver {\n",
              _SOLVER.format(step=step, iters=iters), "  }\n}\n"]
    return "".join(lines)


def _proposal_stage(name, from_stage, split=None):
    extra = f'    split: "{split}"\n' if split else ""
    return (f'stage {{\n  name: "{name}"\n  generate_proposals {{\n'
            f'    rpn_net: "rpn_test.pt"\n    from_stage: "{from_stage}"\n{extra}  }}\n}}\n')


def alt_opt_schedule(dataset="pascal_voc", depth=101):
    """Text of a schedule file (solver.schedule) running py-R-FCN's 5-step
    alternating training with its own stage files, to be put in their
    folder (models/<dataset>/ResNet-<depth>/rfcn_alt_opt_5step_ohem/)."""
    if dataset not in STAGE_LENGTHS:
        raise ValueError(f"dataset must be one of {sorted(STAGE_LENGTHS)}, found {dataset!r}")
    rpn, rfcn = STAGE_LENGTHS[dataset]["rpn"], STAGE_LENGTHS[dataset]["rfcn"]
    splits = ("trainval", "test") if dataset == "pascal_voc" else ("train", "val")
    header = (
        f"# py-R-FCN's 5-step alternating training with OHEM (tools/train_rfcn_alt_opt_5stage.py,\n"
        f"# experiments/cfgs/rfcn_alt_opt_5step_ohem.yml) for ResNet-{depth} on {dataset},\n"
        f"# with py-R-FCN's own stage files; put this file beside them and run\n"
        f"#   python -m solver.schedule THIS_FILE --weights ResNet-{depth}-model.caffemodel "
        f"--data DATA\n"
        f"# Written by prototxt.rfcn_alt_opt.alt_opt_schedule. The Proposal layer of rpn_test.pt\n"
        f"# keeps its TEST defaults, py-R-FCN's 6000 / 300 boxes before / after NMS. Stage 0\n"
        f"# (RPN target statistics, RPN_NORMALIZE_TARGETS) has no counterpart: the RPN\n"
        f"# stages train on unnormalized targets. The detector to test is stage2_rfcn's\n"
        f"# weights in rfcn_test.pt on stage3_test_proposals (no assemble stage: there is\n"
        f"# no end-to-end file with this 256-channel RPN to assemble into).\n"
        f'name: "py-R-FCN ResNet-{depth} {dataset}, rfcn_alt_opt_5step_ohem"\n'
        f'train_split: "{splits[0]}"\ntest_split: "{splits[1]}"\nrandom_seed: 0\n\n')
    return "".join([
        header,
        _train_stage("stage1_rpn", "stage1_rpn_train.pt", "pretrained", rpn),
        _proposal_stage("stage1_proposals", "stage1_rpn"),
        _train_stage("stage1_rfcn", "stage1_rfcn_ohem_train.pt", "pretrained", rfcn,
                     "stage1_proposals"),
        _train_stage("stage2_rpn", "stage2_rpn_train.pt", "stage:stage1_rfcn", rpn),
        _proposal_stage("stage2_proposals", "stage2_rpn"),
        _train_stage("stage2_rfcn", "stage2_rfcn_ohem_train.pt", "pretrained", rfcn,
                     "stage2_proposals"),
        _train_stage("stage3_rpn", "stage3_rpn_train.pt", "stage:stage2_rfcn", rpn),
        _proposal_stage("stage3_test_proposals", "stage3_rpn", splits[1]),
    ])


def main(argv=None):
    """python -m prototxt.rfcn_alt_opt --out-dir DIR [--depth 101] [--dataset pascal_voc]
    [--classes N] [--image SCALE MAX_SIZE]: the seven stage files (py-R-FCN's
    names) and schedule.prototxt."""
    import argparse
    from pathlib import Path
    parser = argparse.ArgumentParser(
        prog="python -m prototxt.rfcn_alt_opt",
        description="Write py-R-FCN's rfcn_alt_opt_5step_ohem stage files (Python-layer form, "
                    "as it ships them) and a schedule file running them with solver.schedule.")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--depth", type=int, default=101, choices=(50, 101, 152))
    parser.add_argument("--dataset", default="pascal_voc", choices=sorted(STAGE_LENGTHS))
    parser.add_argument("--classes", type=int,
                        help="classes with the background (default: 21 VOC, 81 COCO)")
    parser.add_argument("--image", type=int, nargs=2, metavar=("SCALE", "MAX_SIZE"),
                        help="shorter side and longer-side cap of the training images, written "
                             "into the data layers (default: py-R-FCN's 600 1000)")
    args = parser.parse_args(argv)
    classes = args.classes or {"pascal_voc": 21, "coco": 81}[args.dataset]
    try:
        files = {f"{net}.pt": rfcn_alt_opt_net(args.depth, classes, net, image=args.image)
                 for net in ALT_OPT_NETS}
    except ValueError as exc:
        parser.error(str(exc))
    files["schedule.prototxt"] = alt_opt_schedule(args.dataset, args.depth)
    return regenerate(files, args.out_dir)


if __name__ == "__main__":
    raise SystemExit(main())
