"""One R-FCN ResNet-101 training iteration at 600 x 1000, split into parts.

    python -m bench.train_iteration [--gpu] [--passes N] [--ohem]

Builds the TRAIN net of prototxt/rfcn_resnet101.prototxt (or _ohem) with its
RoIData layer fed by a synthetic dataset of 300 x 500 images (the generator
of the built-in dataset; scaled x2 to 600 x 1000 by the data layer, flips
and prefetching as in training), the reference solver (iter_size 2: one
iteration is two forward/backward passes and one update) and parameters
that keep the random activations finite (BatchNorm statistics the identity,
Scale 0.5, weights of variance 1/fan-in).

Each pass is timed step by step (the graph plan's steps) with ``netdef.layer_times.time_layers``
(median over ``--passes``, after one warm-up pass), the update
(``SGDSolver``'s momentum SGD over every learnable parameter) on its own.
Reported, per iteration (2 passes + 1 update):

- data: how long the net waited for the RoIData layer (the minibatch is
  built in a background thread while the previous pass computes);
- trunk forward / backward: the ResNet-101 layers (conv1 .. res5c with their
  BatchNorm, Scale, ReLU, Eltwise and Split layers);
- detection layers: everything else (RPN convolutions and losses,
  AnchorTarget, Proposal, ProposalTarget, conv_new_1, rfcn_cls / rfcn_bbox,
  PSROIPooling, voting, losses), forward + backward;
- update.
Targets: data under 5% of the iteration (hidden behind compute), update
under 5%.
"""
import argparse
import time

import numpy as np

IMAGE = (300, 500)   # scaled x2 by the data layer: 600 x 1000
PASSES_PER_ITERATION = 2


def dataset():
    from detection.datasets import load_dataset
    from detection.datasets.synthetic import ensure_dataset
    from solver.train import pad_classes
    root = ensure_dataset(num_train=16, num_test=1, image_size=IMAGE, seed=0)
    return pad_classes(load_dataset(root, "trainval"), 21)


def finite_params(net, seed=0):
    """Random parameters under which ResNet-101's activations stay finite."""
    rng = np.random.default_rng(seed)
    with net.device.context():
        for name, blobs in net.params.items():
            kind = net.layer_dict[name].type
            values = []
            if kind == "BatchNorm":
                values = [np.zeros(blobs[0].shape), np.ones(blobs[1].shape),
                          np.ones(blobs[2].shape)]
            elif kind == "Scale":
                values = [np.full(blobs[0].shape, 0.5)] + [np.zeros(b.shape) for b in blobs[1:]]
            else:
                fan_in = max(int(np.prod(blobs[0].shape[1:])), 1)
                values = [rng.normal(0, np.sqrt(1.0 / fan_in), blobs[0].shape)]
                values += [np.zeros(b.shape) for b in blobs[1:]]
            for blob, value in zip(blobs, values):
                blob.data[...] = net.device.asarray(value, dtype=blob.dtype)


def build(gpu=False, ohem=False):
    from pathlib import Path
    from layers.roi_data import RoIDataLayer
    from netdef import Net
    from netdef.device import CPU, Device
    from solver.defaults import reference_solver
    from solver.sgd import SGDSolver
    name = "rfcn_resnet101_ohem.prototxt" if ohem else "rfcn_resnet101.prototxt"
    path = Path(__file__).resolve().parents[1] / "prototxt" / name
    device = Device("gpu", 0) if gpu else CPU
    # The lean memory plan, as solver.train uses it (it reads the outputs only).
    net = Net(str(path), "TRAIN", device=device, seed=0, keep=[])
    data_layer = next(l for l in net.layers if isinstance(l, RoIDataLayer))
    data_layer.set_dataset(dataset())
    finite_params(net)
    solver = SGDSolver(reference_solver(snapshot=0), net=net, test_nets=[], log=None,
                       stream=None, seed=0, handle_sigint=False)
    return net, solver, data_layer


def split(net):
    """(data, trunk, detection) step labels of the net's plan; a fused step
    goes by its first layer."""
    from layers.roi_data import RoIDataLayer
    first_head = net._layer_names.index("rpn_conv/3x3")
    data, trunk, detection = [], [], []
    for step in net.steps:
        i = step.indices[0]
        if isinstance(net.layers[i], RoIDataLayer):
            data.append(step.label)
        else:
            (trunk if i < first_head else detection).append(step.label)
    return data, trunk, detection


def time_update(solver, repeat=3):
    """Median seconds of one update (after a backward filled the diffs)."""
    times = []
    lr = solver.learning_rate()
    for _ in range(repeat):
        _synchronize(solver.net)
        start = time.perf_counter()
        solver._apply_update(lr)      # the update step of SGDSolver.step, alone
        _synchronize(solver.net)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _synchronize(net):
    if net.device.is_gpu:
        net.device.xp.cuda.Device(net.device.index).synchronize()


def main(argv=None):
    from netdef.layer_times import time_layers
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="run on GPU 0 through CuPy")
    parser.add_argument("--passes", type=int, default=2,
                        help="timed forward/backward passes (median; default 2)")
    parser.add_argument("--ohem", action="store_true", help="the OHEM training net")
    args = parser.parse_args(argv)
    if args.gpu:
        from solver.test import select_device
        select_device(0)   # a clear error when CuPy sees no GPU
    started = time.perf_counter()
    net, solver, data_layer = build(args.gpu, args.ohem)
    built = time.perf_counter() - started
    times = time_layers(net, iterations=args.passes, warmup=1)
    update = time_update(solver)
    data_layer.close()
    data, trunk, detection = split(net)

    def total(names, which):
        return sum(times[n][which] for n in names)

    per_pass = {
        "data (waiting for RoIData)": total(data, 1),
        "trunk forward": total(trunk, 1),
        "trunk backward": total(trunk, 2),
        "detection layers fwd+bwd": total(detection, 1) + total(detection, 2),
    }
    rows = [(k, v * PASSES_PER_ITERATION) for k, v in per_pass.items()]
    rows.append(("update (momentum SGD)", update))
    iteration = sum(v for _, v in rows)
    where = "GPU 0 (CuPy)" if args.gpu else "CPU (NumPy)"
    shape = net.blobs["data"].shape
    print(f"R-FCN ResNet-101{' OHEM' if args.ohem else ''} training iteration on {where}: "
          f"iter_size {PASSES_PER_ITERATION} (2 forward/backward passes of a "
          f"{shape[2]}x{shape[3]} image) + 1 update; median of {args.passes} passes "
          f"(net built in {built:.1f}s)")
    print(f"{'part':<30} {'s / iteration':>14} {'share':>7}")
    for name, seconds in rows:
        print(f"{name:<30} {seconds:>14.3f} {100 * seconds / iteration:>6.1f}%")
    print(f"{'total':<30} {iteration:>14.3f} {100.0:>6.1f}%")
    other = PASSES_PER_ITERATION * sum(times[n][1] + times[n][2] for n in detection
                                       if times[n][0].split("+")[0] != "Convolution")
    print(f"detection layers other than convolutions (PSROIPooling, Proposal, AnchorTarget, "
          f"ProposalTarget, losses ...): {other:.3f} s ({100 * other / iteration:.2f}%)")
    worst = sorted(((times[n][1] + times[n][2], n, times[n][0]) for n in detection),
                   reverse=True)[:5]
    print("largest detection steps (fwd+bwd per pass): " +
          ", ".join(f"{n} ({kind}) {s * 1e3:.0f} ms" for s, n, kind in worst))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
