"""Speed of the region-proposal layers at the reference image size.

    python -m bench.rpn [--gpu] [--repeat N]

A 600 x 1000 image at stride 16 gives a 38 x 63 map; with the 9 reference
anchors that is 21,546 anchors. Reported, in milliseconds (best of N, float32):

- Proposal in TEST (6000 boxes before NMS, 300 after) and TRAIN
  (12000 / 2000) settings, and the NMS step alone on the TEST boxes;
- AnchorTarget on the same map with 5 ground-truth boxes;
- ProposalTarget on 2000 RoIs and 5 ground-truth boxes (128 sampled).

For scale, the NumPy NMS is also given as a multiple of a plain NumPy greedy
sweep timed in the same run (one kept box at a time against every remaining
box, py-faster-rcnn's py_cpu_nms way). Inputs are random: foreground
probabilities uniform in [0, 1), deltas N(0, 0.2), so about a third of the
pre-NMS boxes survive an IoU 0.7 NMS.
"""
import argparse

import numpy as np

from bench.gemm import best_time

IMAGE_H, IMAGE_W, STRIDE = 600, 1000, 16
MAP_H, MAP_W = 38, 63
A = 9
GT = np.array([[50.0, 80.0, 300.0, 400.0, 15], [400.0, 100.0, 620.0, 330.0, 7],
               [600.0, 300.0, 980.0, 590.0, 12], [120.0, 420.0, 260.0, 560.0, 3],
               [700.0, 20.0, 760.0, 90.0, 9]])


def best_ms(function, xp=np, repeat=5, warmup=1):
    """Best wall time in milliseconds of ``function()``, device synchronized."""
    return best_time(function, xp, repeat, warmup) * 1e3


def rpn_inputs(seed=0):
    rng = np.random.default_rng(seed)
    fg = rng.uniform(0, 1, (A, MAP_H, MAP_W))
    prob = np.concatenate([1 - fg, fg])[None]
    deltas = rng.normal(0, 0.2, (1, 4 * A, MAP_H, MAP_W))
    return prob, deltas, np.array([[IMAGE_H, IMAGE_W, 1.0]])


def plain_greedy_nms(boxes, thresh):
    """Reference sweep for the ratio: one kept box at a time (sorted boxes)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, keep = np.arange(boxes.shape[0]), []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1, 0)
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1, 0)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= thresh]
    return keep


def layer_timer(spec, arrays, gpu, phase="TRAIN", repeat=5):
    from netdef.device import CPU, Device
    from netdef.gradcheck import build_layer, setup_layer
    device = Device("gpu", 0) if gpu else CPU
    xp = device.xp
    layer = build_layer(spec, phase=phase, device=device, dtype=np.float32)
    bottoms, tops = setup_layer(layer, [xp.asarray(np.asarray(a, np.float32)) for a in arrays])

    def step():
        layer.reshape(bottoms, tops)
        layer.forward(bottoms, tops)
    return best_ms(step, xp, repeat), tops


PROPOSAL = ('name: "proposal" type: "Proposal" bottom: "rpn_cls_prob_reshape" '
            'bottom: "rpn_bbox_pred" bottom: "im_info" top: "rpn_rois" top: "rpn_scores"')
ANCHOR_TARGET = ('name: "rpn-data" type: "AnchorTarget" bottom: "rpn_cls_score" '
                 'bottom: "gt_boxes" bottom: "im_info" top: "l" top: "t" top: "i" top: "o"')
PROPOSAL_TARGET = ('name: "roi-data" type: "ProposalTarget" bottom: "rpn_rois" '
                   'bottom: "gt_boxes" top: "r" top: "l" top: "t" top: "i" top: "o" '
                   'proposal_target_param { num_classes: 21 }')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="run the layers on GPU 0 (CuPy)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    from layers.nms import nms_sorted
    from netdef.device import array_module

    prob, deltas, im_info = rpn_inputs()
    no_nms = PROPOSAL + ' proposal_param { nms_thresh: 1.0 test_post_nms_top_n: 0 }'
    rows = []
    for gpu in ([False, True] if args.gpu else [False]):
        where = "GPU" if gpu else "CPU"
        for phase, counts in (("TEST", "6000/300"), ("TRAIN", "12000/2000")):
            ms, tops = layer_timer(PROPOSAL, [prob, deltas, im_info], gpu, phase, args.repeat)
            rows.append((f"Proposal {phase} {counts}", where, ms, f"{tops[0].shape[0]} RoIs"))
        rpn_rois = np.asarray(tops[0].data.get() if gpu else tops[0].data)   # TRAIN's

        # the boxes the TEST NMS sees: the 6000 best decoded boxes, sorted
        # (IoU > 1 never holds, so nothing is suppressed)
        _, tops = layer_timer(no_nms, [prob, deltas, im_info], gpu, "TEST", 1)
        boxes = tops[0].data[:, 1:].copy()
        xp = array_module(boxes)
        ms = best_ms(lambda: nms_sorted(boxes, 0.7, 300), xp, args.repeat)
        rows.append((f"NMS alone, {boxes.shape[0]} boxes -> 300", where, ms, ""))
        if not gpu:
            full_ms = best_ms(lambda: nms_sorted(boxes, 0.7), np, args.repeat)
            plain_ms = best_ms(lambda: plain_greedy_nms(boxes, 0.7), np, args.repeat)
            kept = nms_sorted(boxes, 0.7).shape[0]
            rows.append((f"NMS alone, {boxes.shape[0]} boxes, no limit", where, full_ms,
                         f"{kept} kept; a plain sweep takes {plain_ms / full_ms:.1f}x "
                         f"({plain_ms:.1f} ms)"))

        ms, tops = layer_timer(ANCHOR_TARGET, [np.zeros((1, 2 * A, MAP_H, MAP_W)), GT, im_info],
                               gpu, "TRAIN", args.repeat)
        labels = tops[0].data
        rows.append(("AnchorTarget, 5 gt boxes", where, ms,
                     f"{int((labels == 1).sum())} fg / {int((labels == 0).sum())} bg"))
        ms, tops = layer_timer(PROPOSAL_TARGET, [rpn_rois, GT], gpu, "TRAIN", args.repeat)
        rows.append((f"ProposalTarget, {rpn_rois.shape[0]} RoIs + 5 gt", where, ms,
                     f"{tops[0].shape[0]} sampled"))
    print(f"map {MAP_H}x{MAP_W}, {MAP_H * MAP_W * A} anchors, image {IMAGE_H}x{IMAGE_W}, "
          f"float32, best of {args.repeat}")
    for name, where, ms, note in rows:
        print(f"{name:<46} {where:<4} {ms:9.2f} ms  {note}")


if __name__ == "__main__":
    main()
