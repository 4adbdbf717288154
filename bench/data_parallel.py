"""Data-parallel scaling of the tiny R-FCN on this machine (a benchmark,
not a test): one process with iter_size N and N x BLAS threads against N
MPI ranks with one thread each, images per second of training (the same
images per iteration), read from the training logs' elapsed times.

    python -m bench.data_parallel [--ranks 2] [--iters 40] [--data DIR] [--gpu]

With ``--gpu`` the ranks use GPUs 0..N-1 (one each) and the single run
uses GPU 0; the line also gives the scaling efficiency (N-rank rate over N
times the 1-rank rate of one image per pass).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

__all__ = ["main", "images_per_second"]

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "prototxt", "rfcn_tiny.prototxt")


def images_per_second(log_path, images_per_iteration, skip=3):
    """Training images per second between the ``skip``-th and the last
    "train" record of a train_log.jsonl (the first iterations warm up)."""
    records = [json.loads(line) for line in open(log_path, encoding="utf-8")]
    train = [r for r in records if r.get("event") == "train"]
    first, last = train[skip], train[-1]
    return (last["iter"] - first["iter"]) * images_per_iteration / (
        last["elapsed_s"] - first["elapsed_s"])


def run(ranks, iter_size, threads, args, folder):
    solver = os.path.join(folder, f"solver_{ranks}x{iter_size}.prototxt")
    with open(solver, "w", encoding="utf-8") as handle:
        handle.write(f'net: "{TINY}"\nbase_lr: 0.005\nlr_policy: "fixed"\nmomentum: 0.9\n'
                     f'max_iter: {args.iters}\ndisplay: 1\nrandom_seed: 0\n'
                     f'iter_size: {iter_size}\n')
    out = os.path.join(folder, f"out_{ranks}x{iter_size}")
    command = [sys.executable, "-m", "solver.train", solver, "--out", out, "--no-eval",
               "--blas-threads", str(threads)] + (["--data", args.data] if args.data else []) \
        + (["--gpu", "0"] if args.gpu else [])
    if ranks > 1:
        command = [shutil.which("mpiexec") or "mpiexec", "-n", str(ranks)] + command
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return images_per_second(os.path.join(out, "train_log.jsonl"), ranks * iter_size)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.data_parallel",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--data", help="dataset (default: the built-in one)")
    parser.add_argument("--gpu", action="store_true")
    args = parser.parse_args(argv)
    n = args.ranks
    with tempfile.TemporaryDirectory() as folder:
        single = run(1, n, 1 if args.gpu else n, args, folder)
        parallel = run(n, 1, 1, args, folder)
        base = run(1, 1, 1, args, folder) if args.gpu else None
    print(f"tiny R-FCN, {n} images per iteration: 1 process x iter_size {n}"
          f"{'' if args.gpu else f' x {n} BLAS threads'}: {single:.2f} images/s; "
          f"{n} ranks x 1{'' if args.gpu else ' BLAS thread'}: {parallel:.2f} images/s "
          f"({parallel / single:.2f}x)"
          + (f"; efficiency {parallel / (n * base):.0%} of {n} x {base:.2f}" if base else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
