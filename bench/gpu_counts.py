"""Kernel launches and host synchronizations of one tiny R-FCN training
iteration on the GPU path, counted without a GPU.

    python -m bench.gpu_counts [--iterations N] [--by-layer] [--sites] [--json PATH]

Trains prototxt/rfcn_tiny.prototxt with its solver (rfcn_tiny_solver.prototxt)
on ``Device("gpu", 0)`` of the stand-in CuPy of ``bench.standin_cupy``: the
project's whole GPU path runs (every ``forward_gpu``/``backward_gpu``, the
raw kernels built as host C++ through the shim, the solver on device arrays)
on NumPy, and each event that costs on a real GPU is counted under the step
of the net's plan that caused it (a step's forward and backward apart), the
net's own work around the steps ("net.forward", "net.backward") and the rest
of the solver's iteration ("solver"). The data layer's background thread
counts under its thread's name.

One warm-up iteration compiles the kernels and starts the prefetching; the
next ``--iterations`` (default 1) are counted and reported per iteration:
kernel launches, ``get_function`` look-ups, array operations (each at least
one CuPy kernel), synchronizations (device-to-host copies, host reads of
device values, explicit syncs) and host-to-device copies (``h2d`` through
CuPy's staging in the calling thread, ``h2d_async`` from pinned buffers the
prefetch thread filled); ``host_mix`` counts
plain NumPy arrays handed to device operations (a TypeError on real CuPy).
``--sites`` lists where each synchronization happens (the project's source
line that asked for the host value). The counts do not depend on the
machine; the run takes seconds.
"""
import argparse
import collections
import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NET = ROOT / "prototxt" / "rfcn_tiny.prototxt"
SOLVER = ROOT / "prototxt" / "rfcn_tiny_solver.prototxt"
COLUMNS = ("launch", "get_function", "array_op", "syncs", "d2h", "scalar_sync",
           "explicit_sync", "h2d", "h2d_async", "host_mix")


def build(data_root):
    """The tiny R-FCN TRAIN net on the stand-in GPU 0, fed from
    ``data_root``, and its solver (no snapshots, no test nets)."""
    from detection.classes import pad_classes
    from detection.datasets import load_dataset
    from layers.roi_data import RoIDataLayer
    from netdef import Net
    from netdef.device import Device
    from solver.sgd import SGDSolver
    net = Net(str(NET), "TRAIN", device=Device("gpu", 0), seed=0, keep=[])
    data_layer = next(layer for layer in net.layers if isinstance(layer, RoIDataLayer))
    data_layer.set_dataset(pad_classes(load_dataset(data_root, "trainval"),
                                       data_layer.num_classes))
    solver = SGDSolver(str(SOLVER), net=net, test_nets=[], log=None, stream=None, seed=0,
                       handle_sigint=False)
    return net, solver


def label_steps(net, counts):
    """Count each plan step's work under its label, and the net's own work
    around the steps under "net.forward" / "net.backward"."""
    def labelled(function, label):
        def run(*args, **kwargs):
            with counts.at(label):
                return function(*args, **kwargs)
        return run

    for step in net.steps:
        step.forward = labelled(step.forward, f"{step.label} (forward)")
        step.backward = labelled(step.backward, f"{step.label} (backward)")
    net.forward = labelled(net.forward, "net.forward")
    net.backward = labelled(net.backward, "net.backward")


def count_iterations(iterations, sites=None):
    """Per-iteration counts: {label: {event: count}}, after one warm-up;
    ``sites`` (a dict), when given, receives (label, event, "file:line") ->
    per-iteration count of each synchronization."""
    from bench.standin_cupy import COUNTS, installed
    from detection.datasets.synthetic import generate
    with tempfile.TemporaryDirectory() as tmp, installed():
        root = generate(Path(tmp) / "shapes", num_train=4, num_test=1, seed=0)
        net, solver = build(root)
        label_steps(net, COUNTS)
        with COUNTS.at("solver"):
            solver.step(1)
            COUNTS.reset()
            solver.step(iterations)
        table = {label: dict(counter) for label, counter in COUNTS.table.items()}
        if sites is not None:
            sites.update({key: n / iterations for key, n in COUNTS.sites.items()})
        del net, solver
    return {label: {event: value / iterations for event, value in counter.items()}
            for label, counter in table.items()}


def with_syncs(counter):
    from bench.standin_cupy import SYNC_EVENTS
    row = collections.Counter(counter)
    row["syncs"] = sum(row[e] for e in SYNC_EVENTS)
    return row


def report(table, by_layer):
    """Text: the totals, then (``by_layer``) every label with an event, in
    the order of the iteration; labels without syncs or launches folded."""
    lines = []
    width = max([len(label) for label in table] + [12])
    header = f"{'':<{width}} " + " ".join(f"{c:>13}" for c in COLUMNS)
    total = collections.Counter()
    for counter in table.values():
        total.update(counter)
    rows = [(label, with_syncs(counter)) for label, counter in table.items()]
    lines.append(header)
    if by_layer:
        for label, row in rows:
            lines.append(f"{label:<{width}} " + " ".join(f"{row[c]:>13g}" for c in COLUMNS))
    total = with_syncs(total)
    lines.append(f"{'total':<{width}} " + " ".join(f"{total[c]:>13g}" for c in COLUMNS))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1,
                        help="iterations counted after the warm-up one (default 1)")
    parser.add_argument("--by-layer", action="store_true",
                        help="a row per plan step (forward and backward apart)")
    parser.add_argument("--sites", action="store_true",
                        help="where each synchronization happens (source lines)")
    parser.add_argument("--json", help="also write the per-iteration table here")
    args = parser.parse_args(argv)
    sites = {}
    table = count_iterations(args.iterations, sites)
    print(f"tiny R-FCN, per training iteration (mean of {args.iterations}), "
          f"GPU path on the stand-in CuPy")
    print(report(table, args.by_layer))
    if args.sites:
        print("\nsynchronizations by source line (per iteration):")
        for (label, event, site), n in sorted(sites.items(), key=lambda kv: kv[0][2]):
            print(f"  {n:>5g}  {event:<13} {site:<40} {label}")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
