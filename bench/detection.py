"""Detection layers of one R-FCN ResNet-101 training iteration, against the
backbone, measured in the same run.

    python -m bench.detection [--gpu] [--iterations N] [--ohem]

Builds the native R-FCN ResNet-101 TRAIN net (prototxt.rfcn) at a 600 x 1000
image with three ground-truth boxes, runs forward and backward with
``netdef.layer_times.time_layers`` and splits the layers into

- backbone: the ResNet trunk and every convolution of the heads (RPN conv,
  conv_new_1, rfcn_cls, rfcn_bbox) with their ReLUs and Splits;
- detection layers: everything else (AnchorTarget, Proposal,
  ProposalTarget, PSROIPooling, voting, reshapes, softmax, losses).

It prints the per-layer times of the detection layers and the named ones
(PSROIPooling forward/backward, Proposal, AnchorTarget) in milliseconds and
as a fraction of the backbone's forward+backward. Target on the 2-core CPU:
all detection layers together under 5% of the backbone.
"""
import argparse

import numpy as np

BACKBONE_TYPES = {"Convolution", "BatchNorm", "Scale", "ReLU", "Eltwise", "Pooling", "Split",
                  "Input"}
IMAGE = (600, 1000)
GT_BOXES = np.array([[48, 60, 300, 400, 5], [400, 100, 700, 560, 12], [620, 20, 980, 300, 15]],
                    dtype=np.float64)


def build_net(gpu=False, ohem=False):
    """The TRAIN net with an Input layer in place of the RoIData layer, so the
    benchmark feeds a fixed image and boxes (data loading is measured by
    bench.train_iteration)."""
    from netdef import Net
    from netdef.device import CPU, Device
    from prototxt.rfcn import rfcn_net
    text = rfcn_net(101, 21, 7, ohem=ohem, phase="TRAIN", image=IMAGE, data="input")
    device = Device("gpu", 0) if gpu else CPU
    return Net(text, "TRAIN", device=device, seed=0)


def split_layers(net):
    """Labels of the backbone steps and the detection steps of the net's
    plan (module docstring); a fused step goes by its first layer.

    Pooling and Eltwise count as backbone only inside the trunk (before the
    RPN): R-FCN's voting pooling and OHEM's loss sum are detection layers.
    """
    first_head = net._layer_names.index("rpn_conv/3x3")
    backbone, detection = [], []
    for step in net.steps:
        i = step.indices[0]
        kind = net.layers[i].type
        in_trunk = i < first_head
        head_conv = kind in ("Convolution", "ReLU", "Split")
        if kind in BACKBONE_TYPES and (in_trunk or head_conv):
            backbone.append(step.label)
        else:
            detection.append(step.label)
    return backbone, detection


def inputs(net):
    rng = np.random.default_rng(0)
    height, width = IMAGE
    return {"data": rng.standard_normal((1, 3, height, width)),
            "im_info": np.array([[height, width, 1.0]]),
            "gt_boxes": GT_BOXES}


def main(argv=None):
    from netdef.layer_times import time_layers
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="run on GPU 0 through CuPy")
    parser.add_argument("--iterations", type=int, default=2, help="timed iterations (median)")
    parser.add_argument("--ohem", action="store_true", help="the OHEM training net")
    args = parser.parse_args(argv)
    net = build_net(args.gpu, args.ohem)
    times = time_layers(net, iterations=args.iterations, inputs=inputs(net))
    backbone, detection = split_layers(net)
    backbone_s = sum(times[n][1] + times[n][2] for n in backbone)
    detection_s = sum(times[n][1] + times[n][2] for n in detection)
    where = "GPU 0 (CuPy)" if args.gpu else "CPU (NumPy)"
    print(f"R-FCN ResNet-101{' OHEM' if args.ohem else ''} TRAIN, {IMAGE[0]}x{IMAGE[1]}, "
          f"{where}, median of {args.iterations}")
    print(f"backbone forward+backward: {backbone_s * 1e3:.0f} ms "
          f"({len(backbone)} steps)")
    print(f"\n{'detection step':<28} {'type':<20} {'fwd ms':>8} {'bwd ms':>8} {'of backbone':>12}")
    for name in detection:
        kind, fwd, bwd = times[name]
        print(f"{name:<28} {kind:<20} {fwd * 1e3:8.2f} {bwd * 1e3:8.2f} "
              f"{(fwd + bwd) / backbone_s:12.2%}")
    verdict = "PASS" if detection_s < 0.05 * backbone_s else "FAIL"
    print(f"{'all detection layers':<49} {detection_s * 1e3:8.1f} ms "
          f"{detection_s / backbone_s:12.2%}  target < 5%: {verdict}")


if __name__ == "__main__":
    main()
