"""The BLAS thread rule of a training session: small nets on the CPU run
their matrix products on one thread; the count is set for the session and
restored after it.

    with blas_threads_for(net, device, given=None, say=print):
        ...   # train, evaluate
"""
import contextlib
import os

import numpy as np

from layers.cpu_threads import openblas_functions
from solver.world import current_world

__all__ = ["SMALL_NET_MACS", "multiply_adds", "set_blas_threads", "get_blas_threads",
           "blas_choice", "blas_threads_for"]

#: Nets below this many multiply-adds per forward pass run their matrix
#: products on one BLAS thread: their products are small, a second thread
#: gains nothing, and when the cores are shared with other work OpenBLAS's
#: threads wait on each other (measured: the tiny R-FCN at 20 iterations/s on
#: one thread, 2/s on two beside one other busy process on 2 cores).
SMALL_NET_MACS = 2e9


def multiply_adds(net):
    """Multiply-adds of one forward pass through the convolutions and inner
    products of ``net`` at its current blob shapes."""
    total = 0
    for lp, layer, tops in zip(net.layer_params, net.layers, net.top_blobs):
        if lp.type in ("Convolution", "InnerProduct") and layer.blobs and tops:
            weight = layer.blobs[0].shape
            total += int(tops[0].count) * int(np.prod(weight[1:]))
    return total


def set_blas_threads(count):
    """Set the thread count of the OpenBLAS that NumPy uses, through its C
    API; returns True when it did (elsewhere nothing happens)."""
    functions = openblas_functions()
    if functions is None:
        return False
    functions[1](int(count))
    return True


def get_blas_threads():
    """The thread count of the OpenBLAS that NumPy uses, or None when it
    cannot be read."""
    functions = openblas_functions()
    return None if functions is None else int(functions[0]())


def blas_choice(net, device, given=None, ranks_here=None):
    """``(threads, why)`` for a session training ``net`` on ``device``:
    ``given`` when given; one thread for a net under SMALL_NET_MACS on the
    CPU; for a larger net, with several data-parallel ranks on this machine
    (``ranks_here``, default: solver.world's local size), the cores shared
    out (cores // ranks, at least 1) so the ranks do not oversubscribe
    them; None (leave the library's count) on a GPU, for a large net in one
    process, or when OPENBLAS_NUM_THREADS chooses."""
    if given is not None:
        return given, "--blas-threads"
    if device.is_gpu or "OPENBLAS_NUM_THREADS" in os.environ:
        return None
    macs = multiply_adds(net)
    if macs < SMALL_NET_MACS:
        return 1, f"a small net: {macs / 1e9:.2f} G multiply-adds per pass"
    ranks = current_world().local_size if ranks_here is None else int(ranks_here)
    if ranks > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
        return max(1, cores // ranks), f"{cores} cores shared by {ranks} ranks on this machine"
    return None


@contextlib.contextmanager
def blas_threads_for(net, device, given=None, say=print):
    """Within the block, BLAS on the threads ``blas_choice`` gives (``say``
    announces it); the count before is restored after."""
    choice = blas_choice(net, device, given)
    before = (get_blas_threads() or os.cpu_count() or 1) if choice else None
    changed = bool(choice) and set_blas_threads(choice[0])
    if changed:
        say(f"BLAS on {choice[0]} thread(s) ({choice[1]})")
    try:
        yield
    finally:
        if changed:
            set_blas_threads(before)
