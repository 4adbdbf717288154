"""GEMM throughput of the current machine, the yardstick of the other
benchmarks: ``gemm_gflops(xp)`` times a square float32 matmul with NumPy
(OpenBLAS) or CuPy (cuBLAS) and returns the best GFLOP/s of several runs.

    python -m bench.gemm [--gpu] [--size 2048] [--repeat 5]
"""
import argparse
import os
import resource
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


def _system_busy_seconds():
    """CPU seconds all processes have spent busy since boot (Linux), or None."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...: all but idle, iowait
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)
    return busy / os.sysconf("SC_CLK_TCK")


def _own_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class OtherLoad:
    """Context manager: how much CPU other processes used while the block
    ran, as ``fraction`` (cores' worth: 0.5 = half a core on average).

    On a shared machine other processes slow GEMM and convolution alike, in
    bursts; benchmarks use this to tell a quiet measurement from a disturbed
    one. The clock ticks are coarse (10 ms), so time blocks of a second or
    more. Where /proc/stat does not exist, ``fraction`` is 0.
    """

    def __enter__(self):
        self._start = (_system_busy_seconds(), _own_seconds(), time.perf_counter())
        return self

    def __exit__(self, *exc):
        busy0, own0, wall0 = self._start
        busy1, own1, wall1 = _system_busy_seconds(), _own_seconds(), time.perf_counter()
        others = 0.0 if busy0 is None or busy1 is None else (busy1 - busy0) - (own1 - own0)
        self.fraction = max(others, 0.0) / max(wall1 - wall0, 1e-9)
        return False


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
