"""Input checks on the GPU without a synchronization each.

Some checks of a layer's inputs need a value the device computes: a label
outside ``[0, classes)``, an RoI whose batch index names no image. Read at
once, each would stop the host until the GPU has caught up, several times
per training iteration. Inside a Net's forward pass (``deferring``) the
outcome of such a check instead stays on the device, next to what its error
message needs (the first offending index and value), and the Net reads all
of them together with the loss, in the one transfer the pass makes anyway
(``PendingChecks.resolve``). Meanwhile the layer carries on with the
offending entries replaced by harmless ones (``check`` tells it to), so no
kernel reads out of bounds; the pass then raises the error the immediate
check would have raised, before any backward pass or weight update.

On the CPU, and outside a Net's forward pass (a layer run by itself), a
check runs at once: there it costs no synchronization.

    with deferring() as pending:           # netdef.net.Net.forward
        ... layers call check(xp, failed, details, report) ...   # details: a callable
        loss = pending.resolve(xp, loss)   # raises the first failed check's error
"""
import contextlib
import threading

import numpy as np

from netdef.device import to_numpy

_state = threading.local()


class PendingChecks:
    """The deferred checks of one forward pass, in the order they were made."""

    def __init__(self):
        self.items = []   # (failed: 0-d bool device array, details: tuple, report)

    def add(self, failed, details, report):
        self.items.append((failed, details, report))

    def resolve(self, xp, loss):
        """The pass's loss as a Python float, read in one transfer together
        with every check's outcome; raises the first failed check's error."""
        loss = xp.asarray(loss, dtype=np.float64).reshape(1)
        if not self.items:
            return float(to_numpy(loss)[0])
        flags = [failed.astype(np.float64).reshape(1) for failed, _, _ in self.items]
        host = to_numpy(xp.concatenate([loss] + flags))
        self._raise_failed(host[1:])
        return float(host[0])

    def raise_failed(self):
        """Raise the first failed check's error, if any (a pass that stopped
        with another error: a bad input explains what went wrong after it)."""
        if self.items:
            self._raise_failed([bool(to_numpy(failed)) for failed, _, _ in self.items])

    def _raise_failed(self, outcomes):
        for (_, details, report), failed in zip(self.items, outcomes):
            if failed:
                report(*[to_numpy(d) for d in details])


@contextlib.contextmanager
def deferring():
    """Collect the checks made in this thread until the block ends; yields
    the ``PendingChecks`` to resolve."""
    previous = getattr(_state, "pending", None)
    _state.pending = PendingChecks()
    try:
        yield _state.pending
    finally:
        _state.pending = previous


def check(xp, failed, details, report):
    """Check now or defer: ``failed`` (0-d bool array) says the input is
    bad; ``details()`` gives the arrays ``report(*host_details)`` needs to
    raise the error. On NumPy, or with no pass collecting, ``report`` runs
    at once when ``failed`` (``details`` is called only then); returns
    False. Deferred, ``details`` is called now (the inputs may be
    overwritten before the pass ends) and True is returned: the caller must
    go on with the bad entries replaced by safe ones."""
    pending = getattr(_state, "pending", None)
    if xp is np or pending is None:
        if bool(failed):
            report(*[to_numpy(d) for d in details()])
        return False
    pending.add(failed, details(), report)
    return True
