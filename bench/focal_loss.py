"""Time of the focal losses at a RetinaNet head's size, forward + backward,
beside the cross-entropy losses they replace (same inputs, same run).

    python -m bench.focal_loss [--num 2] [--anchors 9] [--classes 20]
                               [--height 64] [--width 64] [--repeat 5]
                               [--device cpu|gpu]

SigmoidFocalLoss on logits (N, A*K, H, W) and anchor labels (N, A, H, W)
(about 1% objects, 10% ignored, the rest background), against
SigmoidCrossEntropyLoss on the same logits with 0/1 targets; SoftmaxFocalLoss
on scores (N*A, K+1, H, W) against SoftmaxWithLoss. float32. Prints the
median and fastest of ``--repeat`` passes after one warm-up; absolute times
drift with the machine's load, the ratios less so.
"""
import argparse
import time

import numpy as np

from netdef.device import CPU, Device
from netdef.gradcheck import build_layer, setup_layer

IGNORE = 'loss_param { ignore_label: -1 }'


def anchor_labels(num, anchors, classes, height, width, seed=0):
    """(N, A, H, W) labels: ~1% in 1..K, ~10% -1 (ignored), the rest 0."""
    rng = np.random.default_rng(seed)
    u = rng.random((num, anchors, height, width))
    labels = np.where(u < 0.01, rng.integers(1, classes + 1, u.shape), 0)
    return np.where(u > 0.9, -1, labels).astype(np.float32)


def time_layer(spec, arrays, device, repeat):
    """Median and fastest forward + backward seconds over ``repeat`` passes."""
    layer = build_layer(spec, dtype=np.float32, device=device)
    bottoms, tops = setup_layer(layer, arrays)
    times = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        layer.forward(bottoms, tops)
        tops[0].diff[...] = 1
        layer.backward(tops, [True, False], bottoms)
        float(tops[0].data)                       # waits for the device
        times.append(time.perf_counter() - start)
    return np.median(times[1:]), min(times[1:])


def cases(args):
    """(name, layer text, bottom arrays) of the four layers timed."""
    n, a, k, h, w = args.num, args.anchors, args.classes, args.height, args.width
    rng = np.random.default_rng(1)
    labels = anchor_labels(n, a, k, h, w)
    logits = rng.standard_normal((n, a * k, h, w)).astype(np.float32)
    onehot = (labels[:, :, None] == np.arange(1, k + 1).reshape(1, 1, k, 1, 1))
    targets = np.where(labels[:, :, None] < 0, -1, onehot).astype(np.float32)
    scores = rng.standard_normal((n * a, k + 1, h, w)).astype(np.float32)
    flat_labels = labels.reshape(n * a, h, w)
    return [
        ("SigmoidFocalLoss", f'type: "SigmoidFocalLoss" {IGNORE}', [logits, labels]),
        ("SigmoidCrossEntropyLoss", f'type: "SigmoidCrossEntropyLoss" {IGNORE}',
         [logits, targets.reshape(logits.shape)]),
        ("SoftmaxFocalLoss", f'type: "SoftmaxFocalLoss" {IGNORE}', [scores, flat_labels]),
        ("SoftmaxWithLoss", f'type: "SoftmaxWithLoss" {IGNORE}', [scores, flat_labels]),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=2)
    parser.add_argument("--anchors", type=int, default=9)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    args = parser.parse_args(argv)
    device = CPU if args.device == "cpu" else Device("gpu", 0)
    print(f"N={args.num} A={args.anchors} K={args.classes} H={args.height} W={args.width} "
          f"({args.device}, float32), forward+backward:")
    for name, spec, arrays in cases(args):
        median, fastest = time_layer(spec, arrays, device, args.repeat)
        print(f"  {name:24s} median {median * 1e3:8.1f} ms, fastest {fastest * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
