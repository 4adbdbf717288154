"""Our engine and PyTorch side by side on the R-FCN ResNet-101 trunk.

    python -m bench.trunk_vs_pytorch [--passes N] [--height 600 --width 1000] [--gpu]
                                     [--skip-memory]

The graph is cut from prototxt/rfcn_resnet101.prototxt (``cut_trunk``): the
TEST-phase layers from conv1 up to and including conv_new_1_relu that the
output conv_new_1 depends on (stride 16, dilated res5, the 1x1 convolution
to 1024; BatchNorm with global statistics, Scale, conv1 and res2 frozen with
lr_mult 0, as the prototxt says), fed by an Input of 1x3xHxW. PyTorch runs
the same layer list translated by ``bench.torch_graph`` with the same random
finite weights (``bench.train_iteration.finite_params``); before timing, the
outputs and the parameter gradients of the two are compared.

Times (both sides at 2 threads on the CPU; median and min of ``--passes``
after one warm-up, the two sides alternated in every round):

- trunk forward: ours a TEST-phase Net, PyTorch under ``torch.no_grad()``;
- trunk forward+backward: a fixed random diff on the output. PyTorch:
  ``output.backward(diff)``. Ours: a TRAIN-phase Net whose output feeds one
  extra loss, ``Eltwise PROD(output, diff)`` with loss_weight 1 (the diff an
  Input blob), so ``backward()`` seeds the output's diff with ``diff``: a
  Net without a loss runs no backward at all (Caffe's rule; an explicit
  top diff alone would need force_backward, which also back-propagates
  into the frozen layers and the image). The extra layer is one product
  over the 1024-channel output, forward and backward.

Peak memory, each in its own fresh subprocess (``bench.peak_memory``): the
trunk forward+backward of each side (one warm-up and one measured pass;
the peak resident set, VmHWM: ``ru_maxrss`` would include the parent's,
which Linux carries across fork + exec), and one whole R-FCN ResNet-101 training iteration of ours
(the full TRAIN net as ``bench.train_iteration.build`` makes it, RoIData at
600x1000 whatever --height/--width say, iter_size forward/backward passes
and one update), as a ratio to PyTorch's trunk forward+backward.

``--gpu``: our side on GPU 0 through CuPy, PyTorch on cuda; the memory is
then peak device memory (CuPy's default pool ``total_bytes`` after the run,
the pool's high-water mark since it never frees, against
``torch.cuda.max_memory_allocated``).
"""
import argparse
import importlib
import inspect
import json
import os
import subprocess
import sys
import time
import numpy as np

from bench.train_iteration import finite_params
from bench.trunk_graph import (ROOT, SEED_BLOB, blob_shapes, read_trunk, trunk_output,
                               with_seeded_loss)
from netdef import Net
from netdef.device import to_numpy
from netdef.errors import EngineError, NetDefinitionError
from solver.cli import select_device

TORCH_THREADS = 2
# float32 relative errors accepted by the check before timing. Gradients get
# more room: rounding moves a few of the millions of ReLU inputs across 0,
# which flips whole terms of the weight gradients (at 600x1000 our Net with
# and without its plan differ by about 3e-3 as well); the translation is
# checked tightly, in float64, by tests/bench.
FORWARD_TOLERANCE, GRADIENT_TOLERANCE = 1e-4, 2e-2


# -- the two sides ---------------------------------------------------------------
def import_torch_graph():
    """``bench.torch_graph`` (which imports torch); a missing torch is an
    ImportError naming the ``bench`` extra."""
    try:
        importlib.import_module("torch")
    except ImportError as exc:
        raise ImportError("this benchmark needs PyTorch: install the bench extra "
                          "(pip install -e '.[bench]')") from exc
    from bench import torch_graph
    return torch_graph


def build_ours(net_param, phase, device, keep=None, plan=None):
    """Our Net for ``net_param`` with ``finite_params``, and a line saying
    which memory/graph plan it uses.

    ``keep`` (blob names the caller reads; the rest may share storage) and
    ``plan`` (False: every layer runs as itself) are passed when ``Net``
    accepts them (checked with ``inspect.signature``), else reported as
    not available; None leaves the Net's default."""
    accepted = inspect.signature(Net).parameters
    options, notes = {}, []
    for option, value in (("keep", keep), ("plan", plan)):
        if value is None:
            continue
        if option in accepted:
            options[option] = list(value) if option == "keep" else value
            notes.append(f"{option}={options[option]!r}")
        else:
            notes.append(f"{option} not available in this Net")
    net = Net(net_param, phase, device=device, seed=0, **options)
    finite_params(net)
    return net, "Net(" + ", ".join(notes) + ")" if notes else "Net() default plan"


def our_device(gpu):
    """Our Device: GPU 0 (a DeviceError saying why when CuPy sees none) or
    the CPU."""
    return select_device(0 if gpu else None)


def synchronizer(device, torch=None):
    """A function that waits for the device's queued work (no-op on the CPU)."""
    if torch is not None:
        return torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device.is_gpu:
        return device.xp.cuda.Device(device.index).synchronize
    return lambda: None


def inputs(shape, output_shape):
    """The fixed random image and output diff (float32 NumPy arrays, seed 0)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    diff = rng.standard_normal(output_shape).astype(np.float32)
    return x, diff


def _relative_error(ours, theirs):
    """||ours - theirs|| / ||theirs|| (float64)."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.linalg.norm(ours - theirs) / max(np.linalg.norm(theirs), 1e-30))


def check_same(sides, torch):
    """Run each side once (forward, and forward+backward) and compare:
    returns (forward relative error, largest relative error of a trained
    parameter's gradient, number of trained parameters). The trained
    parameters (lr_mult != 0 / requires_grad) must be the same blobs."""
    test_net, train_net, model = sides["test_net"], sides["train_net"], sides["model"]
    output = model.output_name
    ours = to_numpy(test_net.forward(blobs=[output])[output])
    with torch.no_grad():
        theirs = model(sides["x"]).cpu().numpy()
    forward_error = _relative_error(ours, theirs)
    train_net.clear_param_diffs()
    train_net.forward()
    train_net.backward()
    model.zero_grad(set_to_none=True)
    model(sides["x"]).backward(sides["diff"])
    trained = {(p.layer, p.index) for p in train_net.learnable_params if p.lr_mult != 0}
    pairs = {(layer, i): p for layer, i, p in model.counterparts() if p.requires_grad}
    if trained != set(pairs):
        raise NetDefinitionError(
            "ours and PyTorch train different parameters: only ours "
            f"{sorted(trained - set(pairs))[:5]}, only PyTorch {sorted(set(pairs) - trained)[:5]}")
    gradient_error = max(
        (_relative_error(to_numpy(train_net.params[layer][i].diff), p.grad.cpu().numpy())
         for (layer, i), p in pairs.items()), default=0.0)
    return forward_error, gradient_error, len(pairs)


def alternate(cases, passes, synchronize):
    """Seconds of each case's two functions, ours and PyTorch's.

    ``cases``: label -> (ours function, PyTorch function). Each function
    runs once as a warm-up, then ``passes`` rounds; in every round each
    case runs both sides, ours first in even rounds and PyTorch first in
    odd ones. ``synchronize``: (ours, PyTorch) device waits around each
    timing. Returns label -> (ours seconds list, PyTorch seconds list)."""
    for ours, theirs in cases.values():
        ours(), theirs()
    times = {label: ([], []) for label in cases}
    for round_ in range(passes):
        for label, functions in cases.items():
            order = (0, 1) if round_ % 2 == 0 else (1, 0)
            for side in order:
                synchronize[side]()
                start = time.perf_counter()
                functions[side]()
                synchronize[side]()
                times[label][side].append(time.perf_counter() - start)
    return times


def timing_cases(sides, torch):
    """The two timed cases: trunk forward and trunk forward+backward."""
    test_net, train_net, model = sides["test_net"], sides["train_net"], sides["model"]
    x, diff = sides["x"], sides["diff"]

    def torch_forward():
        with torch.no_grad():
            model(x)

    def ours_forward_backward():
        train_net.forward()
        train_net.backward()

    return {
        "trunk forward": (test_net.forward, torch_forward),
        "trunk forward+backward": (ours_forward_backward, lambda: model(x).backward(diff)),
    }


def build_sides(args, torch, torch_graph):
    """Both sides on the trunk at --height x --width, with the same weights
    and inputs set: a dict of test_net, train_net, model, x, diff, plan,
    trunk."""
    device = our_device(args.gpu)
    torch_device = "cuda" if args.gpu else "cpu"
    trunk = read_trunk(args.height, args.width)
    output = trunk_output(trunk)
    test_net, plan = build_ours(trunk, "TEST", device, keep=[output])
    train_net, train_plan = build_ours(with_seeded_loss(trunk), "TRAIN", device, keep=[output])
    model = torch_graph.TorchGraph(trunk).load_from_net(test_net).to(torch_device)
    shapes = blob_shapes(trunk)
    x, diff = inputs(shapes[model.input_name], shapes[output])
    test_net.set_input_arrays(**{model.input_name: x})
    train_net.set_input_arrays(**{model.input_name: x, SEED_BLOB: diff})
    return {"test_net": test_net, "train_net": train_net, "model": model, "trunk": trunk,
            "x": torch.from_numpy(x).to(torch_device),
            "diff": torch.from_numpy(diff).to(torch_device),
            "plan": f"TEST {plan}; TRAIN {train_plan}",
            "synchronize": (synchronizer(device), synchronizer(torch_device, torch))}


# -- memory, in fresh subprocesses -------------------------------------------
MEMORY_RUNS = (
    ("ours", "ours trunk forward+backward"),
    ("torch", "PyTorch trunk forward+backward"),
    ("iteration", "ours R-FCN ResNet-101 training iteration"),
)


def measure_peak(side, args):
    """``python -m bench.peak_memory SIDE`` in a fresh process: its JSON
    report (peak_bytes, baseline_bytes, measure, plan), or {"error": ...}."""
    command = [sys.executable, "-m", "bench.peak_memory", side,
               "--height", str(args.height), "--width", str(args.width)]
    command += ["--gpu"] if args.gpu else []
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit status {done.returncode}: {tail}"}
    return json.loads(lines[-1])


def format_memory(reports, gpu):
    """The peak-memory table: MB of each run and its ratio to PyTorch's
    trunk forward+backward."""
    what = ("peak device memory (ours: CuPy pool total_bytes; PyTorch: "
            "torch.cuda.max_memory_allocated)" if gpu else "peak resident memory (VmHWM)")
    lines = [f"{what}, each in a fresh subprocess (one warm-up + one measured pass; the "
             "training iteration: one iteration)",
             f"{'':<44} {'peak MB':>9} {'after imports':>14} {'/ PyTorch':>10}"]
    reference = reports.get("torch", {}).get("peak_bytes")
    for side, label in MEMORY_RUNS:
        report = reports.get(side)
        if report is None:
            continue
        if "error" in report:
            lines.append(f"{label:<44} failed: {report['error']}")
            continue
        peak, base = report["peak_bytes"], report.get("baseline_bytes", 0)
        ratio = f"{peak / reference:>10.2f}" if reference else f"{'n/a':>10}"
        lines.append(f"{label:<44} {peak / 2**20:>9.0f} {base / 2**20:>14.0f} {ratio}")
    plans = {r.get("plan") for r in reports.values() if r.get("plan")}
    lines += [f"  plan: {p}" for p in sorted(plans)]
    return "\n".join(lines)


# -- the report ------------------------------------------------------------------
def format_times(times):
    """The timing table: median (min) seconds of each side, and ours/PyTorch
    as the median of the per-round ratios (the two sides of a round ran
    back to back, so a change of load between rounds cancels) and the
    ratio of the minima."""
    lines = [f"{'':<24} {'ours s':>16} {'PyTorch s':>16} {'ours/PyTorch':>20}",
             f"{'':<24} {'median (min)':>16} {'median (min)':>16} "
             f"{'per round (of min)':>20}"]
    for label, (ours, theirs) in times.items():
        paired = float(np.median([o / t for o, t in zip(ours, theirs)]))
        o_med, o_min = float(np.median(ours)), min(ours)
        t_med, t_min = float(np.median(theirs)), min(theirs)
        lines.append(f"{label:<24} {f'{o_med:.3f} ({o_min:.3f})':>16} "
                     f"{f'{t_med:.3f} ({t_min:.3f})':>16} "
                     f"{f'{paired:.2f} ({o_min / t_min:.2f})':>20}")
    return "\n".join(lines)


def parse_args(argv):
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m bench.trunk_vs_pytorch",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=5,
                        help="timed rounds after the warm-up (median and min; default 5)")
    parser.add_argument("--height", type=int, default=600, help="image height (default 600)")
    parser.add_argument("--width", type=int, default=1000, help="image width (default 1000)")
    parser.add_argument("--gpu", action="store_true",
                        help="ours on GPU 0 through CuPy, PyTorch on cuda")
    parser.add_argument("--skip-memory", action="store_true",
                        help="times only, no peak-memory subprocesses")
    return parser.parse_args(argv)


def main(argv=None):
    """Check that both sides compute the same, time them, measure memory."""
    args = parse_args(argv)
    try:
        torch_graph = import_torch_graph()
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch = torch_graph.torch
    torch.set_num_threads(TORCH_THREADS)
    load = os.getloadavg()[0]
    try:
        sides = build_sides(args, torch, torch_graph)
        forward_error, gradient_error, trained = check_same(sides, torch)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if forward_error > FORWARD_TOLERANCE or gradient_error > GRADIENT_TOLERANCE:
        print(f"error: the two sides differ (forward relative error {forward_error:.2e}, "
              f"gradient {gradient_error:.2e})", file=sys.stderr)
        return 1
    times = alternate(timing_cases(sides, torch), args.passes, sides["synchronize"])
    where = ("GPU 0 (CuPy) vs cuda" if args.gpu else
             f"CPU, PyTorch {torch.get_num_threads()} threads, NumPy BLAS on "
             f"{os.cpu_count()} cores")
    print(f"{sides['trunk'].name}: {len(sides['trunk'].layer) - 1} layers, a 1x3x{args.height}"
          f"x{args.width} image; {where}; PyTorch {torch.__version__}")
    print(f"our plan: {sides['plan']}")
    print(f"same graph: forward relative error {forward_error:.1e}; gradients of the "
          f"{trained} trained parameters: largest relative error {gradient_error:.1e}")
    print(f"{args.passes} passes after one warm-up, ours and PyTorch alternated "
          f"(load average {load:.2f} before, {os.getloadavg()[0]:.2f} after)")
    print(format_times(times))
    del sides
    if not args.skip_memory:
        print()
        print(format_memory({side: measure_peak(side, args) for side, _ in MEMORY_RUNS},
                            args.gpu))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
