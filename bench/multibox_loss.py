"""Time of Caffe-SSD's MultiBoxLoss at SSD300's size, forward + backward.

    python -m bench.multibox_loss [--num 8] [--priors 8732] [--classes 21]
                                  [--gt 3] [--repeat 5] [--device cpu|gpu]

Random priors and ground truth (``--gt`` boxes per image), the layer as
Caffe-SSD's SSD300 VOC0712 train net writes it (CENTER_SIZE, PER_PREDICTION
at 0.5, MAX_NEGATIVE at 3:1, SMOOTH_L1 + SOFTMAX, VALID), float32. Prints
the median and fastest of ``--repeat`` passes (after one warm-up), and how
many priors were matched and mined. On ``--device gpu`` the matching and
mining still run on the host (as in Caffe-SSD), so the time includes the
copies of the priors, labels and per-prior losses.
"""
import argparse
import time

import numpy as np

from netdef.device import CPU, Device
from netdef.gradcheck import build_layer, setup_layer

LAYER = """name: "mbox_loss" type: "MultiBoxLoss" bottom: "mbox_loc" bottom: "mbox_conf"
  bottom: "mbox_priorbox" bottom: "label" top: "mbox_loss"
  propagate_down: true propagate_down: true propagate_down: false propagate_down: false
  loss_param { normalization: VALID }
  multibox_loss_param { loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 1.0
    num_classes: %d share_location: true match_type: PER_PREDICTION overlap_threshold: 0.5
    use_prior_for_matching: true background_label_id: 0 use_difficult_gt: true
    neg_pos_ratio: 3.0 neg_overlap: 0.5 code_type: CENTER_SIZE mining_type: MAX_NEGATIVE }"""


def inputs(num, priors, classes, gt, seed=0):
    """loc (N, P * 4), conf (N, P * C), priors (1, 2, P * 4), labels (1, 1, N * gt, 8)."""
    rng = np.random.default_rng(seed)
    centre, size = rng.uniform(0, 1, (priors, 2)), rng.uniform(0.05, 0.9, (priors, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    prior = np.stack([boxes.reshape(-1), np.tile([0.1, 0.1, 0.2, 0.2], priors)])[None]
    c, s = rng.uniform(0.3, 0.7, (num * gt, 2)), rng.uniform(0.1, 0.5, (num * gt, 2))
    rows = np.zeros((num * gt, 8))
    rows[:, 0] = np.repeat(np.arange(num), gt)
    rows[:, 1] = rng.integers(1, classes, num * gt)
    rows[:, 3:5], rows[:, 5:7] = c - s / 2, c + s / 2
    return [rng.standard_normal((num, priors * 4)), rng.standard_normal((num, priors * classes)),
            prior, rows[None, None]]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=8)
    parser.add_argument("--priors", type=int, default=8732)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--gt", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    args = parser.parse_args(argv)
    device = CPU if args.device == "cpu" else Device("gpu", 0)
    layer = build_layer(LAYER % args.classes, dtype=np.float32, device=device)
    arrays = [a.astype(np.float32) for a in inputs(args.num, args.priors, args.classes, args.gt)]
    bottoms, tops = setup_layer(layer, arrays)
    times = []
    for _ in range(args.repeat + 1):
        start = time.perf_counter()
        layer.forward(bottoms, tops)
        tops[0].diff[...] = 1
        layer.backward(tops, [True, True, False, False], bottoms)
        float(tops[0].data)                       # waits for the device
        times.append(time.perf_counter() - start)
    times = times[1:]
    print(f"MultiBoxLoss N={args.num} P={args.priors} C={args.classes} gt/image={args.gt} "
          f"({args.device}): forward+backward median {np.median(times) * 1e3:.1f} ms, "
          f"fastest {min(times) * 1e3:.1f} ms; {layer.selection['num_matches']} matched, "
          f"{layer.selection['num_negatives']} mined negatives, loss {float(tops[0].data):.3f}")


if __name__ == "__main__":
    main()
