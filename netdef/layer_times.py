"""Per-step forward and backward times of a net, like ``caffe time``.

    python -m netdef.layer_times NET.prototxt [--phase TRAIN] [--iterations 5]
                                 [--input data=1,3,600,1000] [--gpu INDEX] [--no-plan]

The net runs as its graph plan makes it (``netdef.plan``): each step, one
layer or several fused ones (shown as "conv1 + bn_conv1 + ..."), is timed
forward (including its reshape) and backward separately, with the GPU
synchronized around each, over several iterations; the table reports the
median per step, the totals per step type, and the forward share of the
steps that are not convolutions (a fused step led by a convolution counts
as one). ``--no-plan`` times every layer on its own.
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
from netdef.inspect import set_input_shapes
from netdef.net import Net


def _synchronize(net):
    if net.device.is_gpu:
        net.device.xp.cuda.Device(net.device.index).synchronize()


def time_layers(net, iterations=3, warmup=1, inputs=None, backward=True):
    """Median seconds per step of the net's plan: returns an OrderedDict
    step label -> (type, forward seconds, backward seconds). A step is one
    layer (label: its name, type: its type) or a fused step (label: its
    layers' names joined by " + ", type: their types joined by "+").

    ``inputs`` (name -> array) are set once; by default the net inputs get
    ``netdef.gradcheck.random_inputs`` (Gaussian data, zero labels).
    Backward is timed only for steps that need it.
    """
    if inputs is None:
        inputs = random_inputs(net, np.random.default_rng(0))
    net.set_input_arrays(**inputs)
    forward = collections.defaultdict(list)
    backward_times = collections.defaultdict(list)
    with net.device.context():
        for iteration in range(warmup + iterations):
            record = iteration >= warmup
            for s, step in enumerate(net.steps):
                seconds = _timed(net, step.forward)
                if record:
                    forward[s].append(seconds)
            if not backward:
                continue
            for i in range(len(net.layers)):
                for weight, top in zip(net.loss_weights[i], net.top_blobs[i]):
                    if weight:
                        top.diff.fill(weight)
            for s in reversed(range(len(net.steps))):
                if net.steps[s].need_backward:
                    seconds = _timed(net, net.steps[s].backward)
                    if record:
                        backward_times[s].append(seconds)
    return collections.OrderedDict(
        (step.label, ("+".join(net.layer_params[i].type for i in step.indices),
                      float(np.median(forward[s])),
                      float(np.median(backward_times[s])) if backward_times[s] else 0.0))
        for s, step in enumerate(net.steps))


def _timed(net, run):
    _synchronize(net)
    start = time.perf_counter()
    run()
    _synchronize(net)
    return time.perf_counter() - start


def format_times(times):
    lines = [f"{'step (layers)':<32} {'type':<20} {'forward ms':>11} {'backward ms':>12}"]
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
    conv = [(f, b) for kind, (f, b) in by_type.items() if kind.split("+")[0] == "Convolution"]
    conv_fwd, conv_bwd = sum(f for f, _ in conv), sum(b for _, b in conv)
    lines.append(f"{'outside convolution steps':<32} {'':<20} "
                 f"{(fwd_total - conv_fwd) * 1e3:>11.2f} "
                 f"{(total - fwd_total - conv_bwd) * 1e3:>12.2f}   forward "
                 f"{(fwd_total - conv_fwd) / max(fwd_total, 1e-12):.1%}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m netdef.layer_times",
                                     description="Per-layer forward/backward times of a net.")
    parser.add_argument("prototxt")
    parser.add_argument("--phase", choices=("TRAIN", "TEST"), default="TRAIN")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--input", action="append", metavar="NAME=D1,D2,...",
                        help="shape of an input blob, e.g. data=1,3,600,1000")
    parser.add_argument("--gpu", type=int, metavar="INDEX")
    parser.add_argument("--no-plan", action="store_true",
                        help="time every layer on its own (Net(plan=False))")
    args = parser.parse_args(argv)
    try:
        net = Net(args.prototxt, args.phase, device=device_from_index(args.gpu),
                  plan=not args.no_plan)
        set_input_shapes(net, args.input)
        net.reshape()
        print(format_times(time_layers(net, args.iterations)))
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
