"""Per-layer forward and backward times of a net, like ``caffe time``.

    python -m netdef.layer_times NET.prototxt [--phase TRAIN] [--iterations 5]
                                 [--input data=1,3,600,1000] [--gpu INDEX]

Each layer's forward (including its reshape) and backward are timed
separately, with the GPU synchronized around each, over several iterations;
the table reports the median per layer and the totals per layer type.
Benchmarks import ``time_layers`` to split an iteration into parts.
"""
import argparse
import collections
import sys
import time

import numpy as np

from netdef.device import device_from_index
from netdef.errors import EngineError
from netdef.gradcheck import random_inputs
from netdef.net import Net


def _synchronize(net):
    if net.device.is_gpu:
        net.device.xp.cuda.Device(net.device.index).synchronize()


def time_layers(net, iterations=3, warmup=1, inputs=None, backward=True):
    """Median seconds per layer: returns an OrderedDict
    layer name -> (type, forward seconds, backward seconds).

    ``inputs`` (name -> array) are set once; by default the net inputs get
    ``netdef.gradcheck.random_inputs`` (Gaussian data, zero labels).
    Backward is timed only for layers that need it.
    """
    if inputs is None:
        inputs = random_inputs(net, np.random.default_rng(0))
    net.set_input_arrays(**inputs)
    forward = collections.defaultdict(list)
    backward_times = collections.defaultdict(list)
    with net.device.context():
        for iteration in range(warmup + iterations):
            record = iteration >= warmup
            for i, layer in enumerate(net.layers):
                bottoms, tops = net.bottom_blobs[i], net.top_blobs[i]
                _synchronize(net)
                start = time.perf_counter()
                layer.reshape(bottoms, tops)
                layer.forward(bottoms, tops)
                _synchronize(net)
                if record:
                    forward[i].append(time.perf_counter() - start)
            if not backward:
                continue
            for i in range(len(net.layers)):
                for weight, top in zip(net.loss_weights[i], net.top_blobs[i]):
                    if weight:
                        top.diff.fill(weight)
            for i in reversed(range(len(net.layers))):
                if not net.layer_need_backward[i]:
                    continue
                _synchronize(net)
                start = time.perf_counter()
                net.layers[i].backward(net.top_blobs[i], net.bottom_need_backward[i],
                                       net.bottom_blobs[i])
                _synchronize(net)
                if record:
                    backward_times[i].append(time.perf_counter() - start)
    return collections.OrderedDict(
        (net._layer_names[i], (layer.type, float(np.median(forward[i])),
                               float(np.median(backward_times[i])) if backward_times[i] else 0.0))
        for i, layer in enumerate(net.layers))


def format_times(times):
    lines = [f"{'layer':<32} {'type':<20} {'forward ms':>11} {'backward ms':>12}"]
    for name, (kind, fwd, bwd) in times.items():
        lines.append(f"{name:<32} {kind:<20} {fwd * 1e3:>11.2f} {bwd * 1e3:>12.2f}")
    by_type = collections.defaultdict(lambda: [0.0, 0.0])
    for kind, fwd, bwd in times.values():
        by_type[kind][0] += fwd
        by_type[kind][1] += bwd
    total = sum(f + b for f, b in by_type.values())
    lines.append("")
    lines.append(f"{'by type':<32} {'':<20} {'forward ms':>11} {'backward ms':>12} {'share':>7}")
    for kind, (fwd, bwd) in sorted(by_type.items(), key=lambda kv: -sum(kv[1])):
        lines.append(f"{kind:<32} {'':<20} {fwd * 1e3:>11.2f} {bwd * 1e3:>12.2f} "
                     f"{(fwd + bwd) / total:>7.1%}")
    fwd_total = sum(f for f, _ in by_type.values())
    lines.append(f"{'total':<32} {'':<20} {fwd_total * 1e3:>11.2f} "
                 f"{(total - fwd_total) * 1e3:>12.2f}")
    return "\n".join(lines)


def main(argv=None):
    from netdef.inspect import set_input_shapes
    parser = argparse.ArgumentParser(prog="python -m netdef.layer_times",
                                     description="Per-layer forward/backward times of a net.")
    parser.add_argument("prototxt")
    parser.add_argument("--phase", choices=("TRAIN", "TEST"), default="TRAIN")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--input", action="append", metavar="NAME=D1,D2,...",
                        help="shape of an input blob, e.g. data=1,3,600,1000")
    parser.add_argument("--gpu", type=int, metavar="INDEX")
    args = parser.parse_args(argv)
    try:
        net = Net(args.prototxt, args.phase, device=device_from_index(args.gpu))
        set_input_shapes(net, args.input)
        net.reshape()
        print(format_times(time_layers(net, args.iterations)))
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
