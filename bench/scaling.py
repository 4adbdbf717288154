"""Data-parallel scaling of training: images per second of the tiny R-FCN
(or ``--net``) with one process and with several MPI ranks.

    python -m bench.scaling [--iters 40] [--data DIR] [--keep DIR]
    python -m bench.scaling --gpus 4 [--net prototxt/rfcn_resnet50.prototxt]

CPU (the default): the same training two ways, each seeing 2 images per
iteration (so the same updates: N ranks x iter_size S equals one process
with iter_size N x S):

- 1 rank x 2 BLAS threads, iter_size 2;
- 2 ranks x 1 BLAS thread, iter_size 1 (``mpiexec -n 2``);
- and for reference 1 rank x 1 BLAS thread, iter_size 2.

GPU (``--gpus G``): ``mpiexec -n n ... --gpu 0`` (rank r on GPU r) for
n = 1, 2, 4, ... up to G, iter_size 1, so n images per iteration (weak
scaling); scaling efficiency = rate(n) / (n x rate(1)).

Each run is ``python -m solver.train`` with ``--no-eval`` on a small
synthetic dataset (generated unless ``--data``); its rate is read from rank
0's ``train_log.jsonl``: the images of iterations 1 .. iters-1 over the time
from the log record of iteration 0 (the first iteration warms up: buffers,
kernels) to the snapshot of the last iteration. Every run starts from the
same seed, so the final weights of the CPU runs should agree (printed as
the largest relative difference to the 1-thread single process: 0 for the
2 ranks, rounding for 2 BLAS threads; a check of the equivalence, not a
test).
This is a benchmark, never part of the test run; on a shared machine the
figures move with the other jobs.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "prototxt", "rfcn_tiny.prototxt")
LAUNCHER_PREFIXES = ("PMI_", "OMPI_", "PMIX_", "MPI_WORLD_", "SLURM_", "HYDRA_")


def solver_file(folder, net, iter_size, iters):
    """A copy of the net's solver settings (``<net>_solver.prototxt``, else
    the reference R-FCN settings, as solver.train takes them) with
    ``iter_size``, no periodic snapshots or tests; returns its path."""
    from google.protobuf import text_format
    from netdef.schema import read_solver
    from solver.defaults import reference_solver
    beside = os.path.splitext(net)[0] + "_solver.prototxt"
    param = read_solver(beside) if os.path.isfile(beside) else reference_solver()
    param.net = os.path.abspath(net)
    param.iter_size, param.max_iter, param.snapshot = int(iter_size), int(iters), 0
    param.display = 1
    path = os.path.join(folder, f"solver_iter_size_{iter_size}.prototxt")
    with open(path, "w") as handle:
        handle.write(text_format.MessageToString(param))
    return path


def rate(out, iters, images_per_iteration):
    """Images per second from ``out/train_log.jsonl`` (see the docstring)."""
    first = last = None
    with open(os.path.join(out, "train_log.jsonl")) as handle:
        for line in handle:
            record = json.loads(line)
            if record["event"] == "train" and record.get("iter") == 0 and first is None:
                first = record["wall_time"]
            if record["event"] == "snapshot" and record.get("iter") == iters:
                last = record["wall_time"]
    if first is None or last is None or last <= first:
        raise RuntimeError(f"{out}/train_log.jsonl: no iteration-0 record or no final "
                           f"snapshot of iteration {iters}")
    return (iters - 1) * images_per_iteration / (last - first)


def train(label, ranks, net, solver, data, out, iters, blas, gpu=None):
    """One ``solver.train`` run (under ``mpiexec -n ranks`` when ranks > 1);
    returns its wall seconds."""
    command = [sys.executable, "-m", "solver.train", net, "--solver", solver, "--data", data,
               "--iters", str(iters), "--out", out, "--no-eval", "--seed", "3"]
    command += ["--gpu", str(gpu)] if gpu is not None else ["--blas-threads", str(blas)]
    if ranks > 1:
        command = ["mpiexec", "-n", str(ranks)] + command
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCHER_PREFIXES)}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    print(f"  {label}: {' '.join(command[:6])} ...", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{label} failed (exit {done.returncode}):\n{done.stdout[-3000:]}"
                         f"\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def final_weights(out, iters, net):
    from netdef.weights import read_layer_arrays
    stem = os.path.splitext(os.path.basename(net))[0]
    return read_layer_arrays(os.path.join(out, f"{stem}_iter_{iters}.caffemodel"))


def largest_relative_difference(a, b):
    worst = 0.0
    for name, arrays in a.items():
        for x, y in zip(arrays, b[name]):
            scale = max(float(np.abs(x).max(initial=0)), 1e-12)
            worst = max(worst, float(np.abs(x - y).max(initial=0)) / scale)
    return worst


def cpu_comparison(args, folder, data):
    runs = [("1 rank x 2 BLAS threads, iter_size 2", 1, 2, 2),
            ("2 ranks x 1 BLAS thread, iter_size 1", 2, 1, 1),
            ("1 rank x 1 BLAS thread, iter_size 2", 1, 1, 2)]   # what threads alone give
    rates, weights = [], []
    for label, ranks, blas, iter_size in runs:
        out = os.path.join(folder, f"cpu_{ranks}x{blas}")
        solver = solver_file(folder, args.net, iter_size, args.iters)
        wall = train(label, ranks, args.net, solver, data, out, args.iters, blas)
        rates.append(rate(out, args.iters, 2))
        weights.append(final_weights(out, args.iters, args.net))
        print(f"    {rates[-1]:.2f} images/s ({args.iters} iterations x 2 images, "
              f"{wall:.1f}s with start-up)", flush=True)
    print(f"\n{'configuration':<40} {'images/s':>9}")
    for (label, *_), value in zip(runs, rates):
        print(f"{label:<40} {value:>9.2f}")
    print(f"ratio (2 ranks x 1 thread / 1 rank x 2 threads): {rates[1] / rates[0]:.2f}")
    # Same BLAS threads, same arithmetic: the 2-rank weights should equal the 1-rank
    # iter_size 2 ones exactly; 2 BLAS threads sum in another order (rounding only).
    print(f"final weights vs 1 rank x 1 thread (largest relative difference): 2 ranks "
          f"{largest_relative_difference(weights[2], weights[1]):.2e}, 2 BLAS threads "
          f"{largest_relative_difference(weights[2], weights[0]):.2e}")


def gpu_scaling(args, folder, data):
    counts = [n for n in (1, 2, 4, 8, 16, 32) if n <= args.gpus]
    if args.gpus not in counts:
        counts.append(args.gpus)
    rates = []
    for n in counts:
        out = os.path.join(folder, f"gpu_{n}")
        solver = solver_file(folder, args.net, 1, args.iters)
        train(f"{n} GPU(s)", n, args.net, solver, data, out, args.iters, None, gpu=0)
        rates.append(rate(out, args.iters, n))
        print(f"    {rates[-1]:.2f} images/s", flush=True)
    print(f"\n{'GPUs':>5} {'images/s':>9} {'efficiency':>11}")
    for n, value in zip(counts, rates):
        print(f"{n:>5} {value:>9.2f} {value / (n * rates[0]):>10.0%}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", default=TINY, help="the net (default: the tiny R-FCN); its "
                                                     "<net>_solver.prototxt, else the reference "
                                                     "settings")
    parser.add_argument("--iters", type=int, default=40, help="iterations per run (default 40)")
    parser.add_argument("--data", help="dataset (default: 64 synthetic images, generated)")
    parser.add_argument("--gpus", type=int, metavar="G",
                        help="GPU scaling over 1, 2, 4, ... G GPUs instead of the CPU runs")
    parser.add_argument("--keep", metavar="DIR", help="keep the runs' folders in DIR")
    args = parser.parse_args(argv)
    if shutil.which("mpiexec") is None:
        raise SystemExit("no mpiexec on PATH: pip install -e '.[mpi]' (mpi4py + mpich)")
    folder = args.keep or tempfile.mkdtemp(prefix="bench_scaling_")
    os.makedirs(folder, exist_ok=True)
    try:
        data = args.data
        if data is None:
            from detection.datasets.synthetic import generate
            data = generate(os.path.join(folder, "shapes"), num_train=64, num_test=4, seed=1)
        print(f"{os.path.basename(args.net)}, {args.iters} iterations per run, "
              f"{os.cpu_count()} CPU cores seen", flush=True)
        (gpu_scaling if args.gpus else cpu_comparison)(args, folder, data)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
