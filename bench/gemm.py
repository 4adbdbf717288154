"""GEMM throughput of the current machine, the yardstick of the other
benchmarks: ``gemm_gflops(xp)`` times a square float32 matmul with NumPy
(OpenBLAS) or CuPy (cuBLAS) and returns the best GFLOP/s of several runs.

    python -m bench.gemm [--gpu] [--size 2048] [--repeat 5]
"""
import argparse
import time

import numpy as np


def synchronize(xp):
    """Wait for the GPU's work when ``xp`` is cupy (a no-op for numpy)."""
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()


def best_time(function, xp=np, repeat=5, warmup=1):
    """Best wall time in seconds of ``function()`` over ``repeat`` runs,
    the device synchronized around each."""
    for _ in range(warmup):
        function()
    synchronize(xp)
    best = float("inf")
    for _ in range(repeat):
        synchronize(xp)
        start = time.perf_counter()
        function()
        synchronize(xp)
        best = min(best, time.perf_counter() - start)
    return best


def gemm_gflops(xp=np, size=2048, repeat=5, dtype=np.float32):
    """Best GFLOP/s of a (size x size) @ (size x size) matmul in ``dtype``."""
    rng = np.random.default_rng(0)
    a = xp.asarray(rng.standard_normal((size, size)).astype(dtype))
    b = xp.asarray(rng.standard_normal((size, size)).astype(dtype))
    c = xp.empty((size, size), dtype)
    seconds = best_time(lambda: xp.matmul(a, b, out=c), xp, repeat)
    return 2.0 * size ** 3 / seconds / 1e9


def array_module(gpu):
    if not gpu:
        return np
    import cupy
    return cupy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="measure cuBLAS through CuPy")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    xp = array_module(args.gpu)
    print(f"float32 GEMM {args.size}^3 ({'cuBLAS' if args.gpu else 'NumPy/BLAS'}): "
          f"{gemm_gflops(xp, args.size, args.repeat):.1f} GFLOP/s")


if __name__ == "__main__":
    main()
