"""layers.cpu_threads: row ranges split between threads, BLAS on one
thread inside and restored after, per-thread scratch."""
import threading

import numpy as np
import pytest

import layers.conv_plans as conv
import layers.cpu_threads as cpu_threads
from layers.workspace import Workspace
from tests.layers.test_conv import force_threads


class FakeBlas:
    """Stand-in OpenBLAS thread-count functions that record every set."""

    def __init__(self, threads):
        self.threads, self.sets = threads, []

    def functions(self):
        return (lambda: self.threads), self._set

    def _set(self, count):
        self.sets.append(count)
        self.threads = count


@pytest.fixture
def blas(monkeypatch):
    fake = FakeBlas(2)
    monkeypatch.setattr(cpu_threads, "openblas_functions", fake.functions)
    return fake


def test_ranges_cover_the_count_once_on_separate_threads_with_separate_scratch(blas):
    seen, lock = [], threading.Lock()
    workspace = Workspace()

    def work(scratch, lo, hi):
        with lock:
            seen.append((lo, hi, threading.get_ident(), id(scratch), blas.threads))

    cpu_threads.split_work(workspace, 7, work, threads=3)
    ranges = sorted((lo, hi) for lo, hi, *_ in seen)
    assert ranges == [(0, 2), (2, 4), (4, 7)]
    # Ranges past the first run on pool threads (an idle one may take two).
    assert len({ident for _, _, ident, _, _ in seen}) >= 2
    assert len({scratch for _, _, _, scratch, _ in seen}) == 3
    first = next(s for lo, _, _, s, _ in seen if lo == 0)
    assert first == id(workspace)  # the first range uses the caller's workspace
    # Every range ran with BLAS on one thread; the count is restored after.
    assert {threads for *_, threads in seen} == {1}
    assert blas.sets == [1, 2] and blas.threads == 2


def test_one_thread_or_one_row_runs_on_the_caller(blas):
    calls = []
    workspace = Workspace()
    for threads, count in ((1, 5), (4, 1)):
        cpu_threads.split_work(workspace, count, lambda s, lo, hi: calls.append(
            (s is workspace, lo, hi, threading.get_ident())), threads=threads)
    assert calls == [(True, 0, 5, threading.get_ident()), (True, 0, 1, threading.get_ident())]
    assert blas.sets == []


def test_without_an_openblas_everything_runs_on_the_caller(monkeypatch):
    monkeypatch.setattr(cpu_threads, "openblas_functions", lambda: None)
    calls = []
    cpu_threads.split_work(Workspace(), 6, lambda s, lo, hi: calls.append((lo, hi)), threads=2)
    assert calls == [(0, 6)]
    assert cpu_threads.worker_count() == 1


def test_a_failing_range_waits_for_the_others_raises_and_restores_blas(blas):
    finished = []

    def work(scratch, lo, hi):
        if lo == 0:
            raise ValueError("first range failed")
        threading.Event().wait(0.05)
        finished.append(lo)

    with pytest.raises(ValueError, match="first range failed"):
        cpu_threads.split_work(Workspace(), 4, work, threads=2)
    assert finished == [2]
    assert blas.threads == 2

    def other_fails(scratch, lo, hi):
        if lo:
            raise KeyError("second range failed")

    with pytest.raises(KeyError, match="second range failed"):
        cpu_threads.split_work(Workspace(), 4, other_fails, threads=2)
    assert blas.threads == 2


def test_worker_count_is_the_blas_count_at_most_the_cores(blas, monkeypatch):
    monkeypatch.setattr(cpu_threads, "_cores", lambda: 2)
    blas.threads = 8
    assert cpu_threads.worker_count() == 2
    blas.threads = 1
    assert cpu_threads.worker_count() == 1


def test_only_large_work_is_split_and_gemms_only_when_switched_on(monkeypatch):
    monkeypatch.setattr(cpu_threads, "SPLIT_GEMMS", True)
    assert not cpu_threads.worth_splitting(cpu_threads.PARALLEL_MACS - 1)
    assert cpu_threads.worth_splitting(cpu_threads.PARALLEL_MACS)
    monkeypatch.setattr(cpu_threads, "SPLIT_GEMMS", False)
    assert not cpu_threads.worth_splitting(1 << 60)


def test_the_real_blas_thread_count_is_restored():
    """With NumPy's own OpenBLAS (skipped elsewhere): the count read after
    a split is the count before it."""
    functions = cpu_threads.openblas_functions()
    if functions is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS whose thread count can be set")
    before = functions[0]()
    cpu_threads.split_work(Workspace(), 4, lambda s, lo, hi: None, threads=2)
    assert functions[0]() == before


@pytest.mark.parametrize("plan_kind", ["shift", "column"])
def test_plans_split_their_rows_between_threads(plan_kind, monkeypatch):
    """A forward and a weight gradient through the split (three threads,
    here forced) compute their rows on more than one thread and match the
    one-thread results."""
    rng = np.random.default_rng(3)
    image = rng.standard_normal((5, 9, 11))
    weight = rng.standard_normal((4, 5, 3, 3))
    bias = rng.standard_normal(4)
    if plan_kind == "shift":
        plan = conv.ShiftPlan(5, 9, 11, 4, (3, 3), (1, 1), (1, 1))
    else:
        plan = conv.ColumnPlan(5, 9, 11, 4, (3, 3), (1, 1), (2, 2), (1, 1))
    serial = np.empty((4, plan.out_height, plan.out_width))
    plan.forward(Workspace(), image, weight, serial, bias, True)
    top_diff = rng.standard_normal(serial.shape)
    serial_gradient = np.full((4, 45), 0.5)
    plan.weight_gradient(Workspace(), image, top_diff, serial_gradient)
    force_threads(monkeypatch)
    idents = set()
    real = cpu_threads.split_work

    def spying(workspace, count, work, threads=None):
        def recorded(scratch, lo, hi):
            idents.add(threading.get_ident())
            work(scratch, lo, hi)
        real(workspace, count, recorded, threads)
    monkeypatch.setattr(conv, "split_work", spying)
    split = np.empty_like(serial)
    plan.forward(Workspace(), image, weight, split, bias, True)
    assert len(idents) >= 2
    np.testing.assert_allclose(split, serial, rtol=1e-13, atol=1e-13)
    idents.clear()
    # The weight gradient adds to what the diff held, each thread's rows once.
    split_gradient = np.full((4, 45), 0.5)
    plan.weight_gradient(Workspace(), image, top_diff, split_gradient)
    assert len(idents) >= 2
    np.testing.assert_allclose(split_gradient, serial_gradient, rtol=1e-13, atol=1e-13)


def test_passes_are_split_from_parallel_elements_on(blas, monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_threads, "worker_count", lambda: 2)
    record = lambda s, lo, hi: calls.append((lo, hi))  # noqa: E731
    cpu_threads.split_pass(Workspace(), 4, record, cpu_threads.PARALLEL_ELEMENTS - 1)
    assert calls == [(0, 4)]
    calls.clear()
    cpu_threads.split_pass(Workspace(), 4, record, cpu_threads.PARALLEL_ELEMENTS)
    assert sorted(calls) == [(0, 2), (2, 4)]


@pytest.mark.parametrize("pad", [(2, 1), (0, 3), (-1, 1)])
def test_padding_split_between_threads_matches_plain_padding(pad, monkeypatch):
    image = np.random.default_rng(4).standard_normal((5, 6, 7))
    force_threads(monkeypatch)
    monkeypatch.setattr(cpu_threads, "PARALLEL_ELEMENTS", 0)
    padder = conv.Padder(5, 6, 7, pad)
    workspace = Workspace()
    workspace.array("padded", (5 * 20 * 20,), image.dtype).fill(np.nan)  # stale scratch
    found = padder(workspace, image).reshape(5, padder.height, padder.width)
    (ph, pw) = pad
    expected = np.pad(image[:, max(-ph, 0):6 - max(-ph, 0), max(-pw, 0):7 - max(-pw, 0)],
                      ((0, 0), (max(ph, 0),) * 2, (max(pw, 0),) * 2))
    np.testing.assert_array_equal(found, expected)


def test_a_split_inside_a_range_runs_on_that_ranges_thread(blas):
    inner = []

    def outer(scratch, lo, hi):
        me = threading.get_ident()
        cpu_threads.split_work(scratch, 4, lambda s, a, b: inner.append(
            (lo, a, b, threading.get_ident() == me)), threads=2)

    cpu_threads.split_work(Workspace(), 2, outer, threads=2)
    assert sorted(inner) == [(0, 0, 4, True), (1, 0, 4, True)]
