"""Prepare the next minibatches in a background thread.

    prefetcher = Prefetcher(build, plans, depth=2)   # plans: an iterator
    plan, batch = prefetcher.get()                    # build(plan), in order
    prefetcher.close()

The caller's iterator ``plans`` is advanced only in the calling thread, so
every decision it makes (which images, which random seed) is the same
whatever the timing; the worker thread only runs ``build(plan)``, one plan
at a time, in the order the plans were drawn, keeping at most ``depth``
plans ahead of the consumer. Image decoding and Pillow's resampling release
the GIL, so loading overlaps with the net's forward and backward passes.

An exception raised by ``build`` (say a ``DataError`` naming an unreadable
image file) is re-raised by the ``get`` that would have returned that
batch, with the worker's traceback. ``depth=0`` builds synchronously in
``get`` and gives the same results. The thread is a daemon, ``close`` stops
and joins it, and a prefetcher that is garbage collected is closed too, so
nothing hangs at exit.
"""
import queue
import threading
import weakref

__all__ = ["Prefetcher", "DEFAULT_DEPTH"]

#: Minibatches prepared ahead of the one being consumed.
DEFAULT_DEPTH = 2

_STOP = object()
# Seconds between checks that the worker is still alive while waiting.
_POLL = 0.5


def _work(build, plans_in, results_out):
    """The worker loop: build each plan in turn until told to stop.

    A module-level function (not a method), so the thread holds no
    reference to the Prefetcher and a dropped prefetcher can be collected.
    """
    while True:
        plan = plans_in.get()
        if plan is _STOP:
            return
        try:
            results_out.put((plan, True, build(plan)))
        except BaseException as exc:  # handed to the consumer, raised there
            results_out.put((plan, False, exc))


def _shutdown(plans_in, results_out, thread, timeout):
    plans_in.put(_STOP)
    # Drop finished batches so their memory goes now; the worker never
    # blocks on the unbounded result queue, so it reaches _STOP.
    while True:
        try:
            results_out.get_nowait()
        except queue.Empty:
            break
    if thread is not threading.current_thread():
        thread.join(timeout)


class Prefetcher:
    """``build(plan)`` for each plan of ``plans``, ``depth`` ahead, in a
    daemon thread (``depth=0``: synchronously, in ``get``).

    Args:
        build: callable ``plan -> batch``; runs in the worker thread.
        plans: iterator of plans, advanced only in the thread calling ``get``.
        depth: plans handed to the worker beyond the one being consumed.
        name: the thread's name (shown in tracebacks and debuggers).
        join_timeout: seconds ``close`` waits for a batch in progress.
    """

    def __init__(self, build, plans, depth=DEFAULT_DEPTH, name="prefetch", join_timeout=30.0):
        if depth < 0:
            raise ValueError(f"prefetch depth must be >= 0, found {depth}")
        self._build = build
        self._plans = iter(plans)
        self.depth = int(depth)
        self._pending = 0         # plans handed to the worker, results not yet taken
        self._closed = False
        self._thread = None
        if self.depth:
            self._plans_in = queue.Queue()
            self._results = queue.Queue()
            self._thread = threading.Thread(
                target=_work, args=(build, self._plans_in, self._results), name=name, daemon=True)
            self._thread.start()
            self._finalizer = weakref.finalize(
                self, _shutdown, self._plans_in, self._results, self._thread, join_timeout)
            self._top_up()

    @property
    def threaded(self):
        return self._thread is not None

    def _top_up(self):
        # One plan in the worker's hands plus ``depth`` waiting.
        while self._pending < self.depth + 1:
            try:
                plan = next(self._plans)
            except StopIteration:
                return
            self._plans_in.put(plan)
            self._pending += 1

    def get(self):
        """``(plan, build(plan))`` for the next plan; re-raises what ``build``
        raised for it. Raises ``StopIteration`` when the plans are exhausted."""
        if self._closed:
            raise RuntimeError("the prefetcher is closed")
        if not self.threaded:
            plan = next(self._plans)
            return plan, self._build(plan)
        if self._pending == 0:
            raise StopIteration
        while True:
            try:
                plan, ok, value = self._results.get(timeout=_POLL)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    raise RuntimeError("the prefetch thread stopped unexpectedly") from None
        self._pending -= 1
        if not ok:
            raise value
        self._top_up()
        return plan, value

    def close(self):
        """Stop the worker (after the batch it is building) and join it."""
        if self._closed:
            return
        self._closed = True
        if self.threaded:
            self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
