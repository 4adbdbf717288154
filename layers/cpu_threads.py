"""Row-parallel CPU work for the convolution plans: ``split_work``,
``split_pass``.

On the CPU a convolution is GEMMs plus the copies and element-wise passes
around them (padding, shifted columns, im2col, the bias and ReLU epilogue,
cropping). OpenBLAS runs each GEMM on its threads, but everything between
two GEMMs ran on the calling thread alone while the BLAS threads waited
(spinning). Measured on the 2-core development machine, pinned to one core:
of the R-FCN ResNet-101 trunk forward's 3.0 s, 2.3 s is GEMM and 0.7 s the
rest, so on two cores the rest, run on one, was about a third of the wall
time. oneDNN (PyTorch) runs every part of a convolution on all its threads.

``split_work(workspace, count, work)`` can do the same (``SPLIT_GEMMS``,
off by default: measured slower on a quiet machine): it splits [0, count)
(output rows, or the 16 GEMMs of a Winograd layer) into one contiguous
range per thread and runs ``work(scratch, lo, hi)`` for each on its own
thread, each with BLAS on one thread (the GEMMs inside run in the calling
thread, side by side), then restores the BLAS thread count. ``split_pass``
splits large element-wise passes and copies (padding, BatchNorm weight
folds) the same way; that is always on. ``scratch``
is the workspace itself for the first range and a per-thread child
workspace (``Workspace.thread``) for the others, so the named scratch
arrays of two threads never overlap; arrays taken from ``workspace`` before
the call (a padded image, arranged weights) are shared, read-only.

The thread count is the BLAS thread count (so ``OPENBLAS_NUM_THREADS=1``,
or a session that chose one BLAS thread for a small net, keeps every
convolution on one thread), at most the cores this process may use. Work
is split only where it is large (``PARALLEL_MACS``) and only when the BLAS
is an OpenBLAS whose thread count can be read and set through its C API
(NumPy's bundled one); otherwise everything runs on the calling thread as
before. Calls are not reentrant across Python threads: two threads running
nets at once would both set the BLAS thread count.
"""
import concurrent.futures
import ctypes
import os
import threading

# Whether convolutions split their rows, GEMMs included (``worth_splitting``).
# Off: on the 2-core development machine two one-thread OpenBLAS GEMMs side
# by side ran at 1.1-1.3x one thread's speed where OpenBLAS's own two
# threads reach 1.9x (512x2048 @ 2048x4096, three rounds), so on a quiet
# machine the trunk forward took 1.26x as long with the split (three
# alternated rounds, load 1.5-1.9). With other jobs on the cores it was the
# other way round (0.45-0.53x at load 4.7-5.6: OpenBLAS's threads wait for
# each other, spinning, when a core is taken), hence the switch.
# Element-wise passes (``split_pass``) are split either way.
SPLIT_GEMMS = False
# Convolutions of at least this many multiply-adds per image and group are
# split between threads. Below it the hand-off (about 50 us: a thread pool
# submit and two BLAS thread-count calls) would cost more than a core gains.
PARALLEL_MACS = 1 << 24
# Element-wise passes and copies (a padded image, folded weights) of at
# least this many elements are split too: one core's memory bandwidth
# bounds them, and a second raises it (1.4-1.6x, layers/fused.py).
PARALLEL_ELEMENTS = 1 << 20

_SET_NAMES = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
              "openblas_set_num_threads64_", "openblas_set_num_threads")
_GET_NAMES = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
              "openblas_get_num_threads64_", "openblas_get_num_threads")
_UNRESOLVED = object()
_blas = _UNRESOLVED  # (get, set) C functions of NumPy's OpenBLAS, or None
_executor = None
_executor_threads = 0
_inside = threading.local()  # .split: this thread runs a range of a split


def openblas_functions():
    """(get_num_threads, set_num_threads) of an OpenBLAS mapped into this
    process, or None (another BLAS, or no /proc to find it through).
    Looked up once."""
    global _blas
    if _blas is not _UNRESOLVED:
        return _blas
    _blas = None
    try:
        with open("/proc/self/maps", encoding="utf-8") as handle:
            paths = sorted({line.split()[-1] for line in handle
                            if "openblas" in line.lower() and ".so" in line.split()[-1]})
    except OSError:
        return None
    for path in paths:
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        get = next((getattr(library, n) for n in _GET_NAMES if hasattr(library, n)), None)
        put = next((getattr(library, n) for n in _SET_NAMES if hasattr(library, n)), None)
        if get is not None and put is not None:
            get.restype = ctypes.c_int
            _blas = (get, put)
            break
    return _blas


def _cores():
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_count():
    """Threads ``split_work`` uses: the BLAS thread count, at most the
    usable cores; 1 where the BLAS's count cannot be read and set."""
    functions = openblas_functions()
    if functions is None:
        return 1
    return max(1, min(int(functions[0]()), _cores()))


def worth_splitting(multiply_adds):
    """Whether work of this many multiply-adds (a convolution's rows, with
    their GEMMs) is split between threads: only with SPLIT_GEMMS."""
    return SPLIT_GEMMS and multiply_adds >= PARALLEL_MACS


def split_pass(workspace, count, work, elements):
    """``split_work`` for an element-wise pass or copy over ``elements``
    elements (a slice of ``count`` channels or rows per thread): split only
    from PARALLEL_ELEMENTS on, else run on the calling thread."""
    if elements >= PARALLEL_ELEMENTS:
        split_work(workspace, count, work)
    else:
        work(workspace, 0, count)


def _pool(threads):
    """A pool with ``threads - 1`` workers (the caller is the first)."""
    global _executor, _executor_threads
    if _executor is None or _executor_threads < threads - 1:
        if _executor is not None:
            _executor.shutdown(wait=True)
        _executor = concurrent.futures.ThreadPoolExecutor(threads - 1)
        _executor_threads = threads - 1
    return _executor


def _marked(work, scratch, lo, hi):
    """``work(scratch, lo, hi)`` with this thread marked as inside a split."""
    _inside.split = True
    try:
        work(scratch, lo, hi)
    finally:
        _inside.split = False


def split_work(workspace, count, work, threads=None):
    """Run ``work(scratch, lo, hi)`` over [0, count) split into one
    contiguous range per thread (module docstring); on the calling thread
    alone, as ``work(workspace, 0, count)``, when ``threads`` (default
    ``worker_count()``) is 1 or ``count`` is 1. Exceptions of any range are
    raised after every range has finished."""
    functions = openblas_functions()
    threads = min(worker_count() if threads is None else threads, count)
    if threads < 2 or functions is None or getattr(_inside, "split", False):
        # (A split inside a range runs on that range's thread: its pool
        # workers may all be busy with the outer split.)
        work(workspace, 0, count)
        return
    bounds = [count * t // threads for t in range(threads + 1)]
    get, put = functions
    before = int(get())
    put(1)
    try:
        pool = _pool(threads)
        futures = [pool.submit(_marked, work, workspace.thread(t), bounds[t], bounds[t + 1])
                   for t in range(1, threads)]
        try:
            _marked(work, workspace, bounds[0], bounds[1])
        finally:
            # The other ranges use scratch and outputs the caller owns:
            # wait for all of them even when this one failed.
            done = [f.exception() for f in futures]
        for error in done:
            if error is not None:
                raise error
    finally:
        put(before)
