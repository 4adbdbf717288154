"""Workspace: named scratch arrays that grow to the largest request and are
reused; distinct names and dtypes never share memory."""
import numpy as np

from layers.base import Layer
from layers.workspace import Workspace
from netdef import caffe_pb2


def test_array_has_the_requested_shape_dtype_and_is_contiguous():
    ws = Workspace()
    a = ws.array("a", (2, 3, 4), np.float32)
    assert a.shape == (2, 3, 4) and a.dtype == np.float32 and a.flags.c_contiguous


def test_a_name_reuses_its_buffer_and_grows_to_the_largest_request():
    ws = Workspace()
    big = ws.array("a", (10, 10), np.float64)
    small = ws.array("a", (3, 5), np.float64)
    assert np.shares_memory(big, small)  # reused, not reallocated
    assert ws.nbytes == 100 * 8
    larger = ws.array("a", (20, 10), np.float64)
    assert ws.nbytes == 200 * 8
    assert np.shares_memory(larger, ws.array("a", (7,), np.float64))


def test_names_and_dtypes_never_share_memory():
    ws = Workspace()
    a = ws.array("a", (16,), np.float32)
    b = ws.array("b", (16,), np.float32)
    c = ws.array("a", (16,), np.float64)
    assert not np.shares_memory(a, b) and not np.shares_memory(a, c)
    assert ws.nbytes == 16 * 4 * 2 + 16 * 8


def test_zeros_zeroes_what_an_earlier_user_wrote():
    ws = Workspace()
    ws.array("a", (4, 4), np.float32)[...] = 7
    np.testing.assert_array_equal(ws.zeros("a", (2, 8), np.float32), 0)


def test_empty_shape_and_clear():
    ws = Workspace()
    assert ws.array("a", (0, 3), np.float32).shape == (0, 3)
    ws.array("b", (5,), np.float32)
    ws.clear()
    assert ws.nbytes == 0


def test_every_layer_has_a_private_workspace():
    param = caffe_pb2.LayerParameter(name="l", type="X")
    first, second = Layer(param), Layer(param)
    assert isinstance(first.workspace, Workspace)
    assert first.workspace is not second.workspace


def test_thread_workspaces_are_separate_counted_and_cleared():
    ws = Workspace()
    assert ws.thread(0) is ws
    child = ws.thread(1)
    assert ws.thread(1) is child and ws.thread(2) is not child
    mine, theirs = ws.array("a", (8,), np.float32), child.array("a", (8,), np.float32)
    assert not np.shares_memory(mine, theirs)
    assert ws.nbytes == 2 * 8 * 4
    ws.clear()
    assert ws.nbytes == 0 and ws.thread(1) is not child


def test_thread_workspaces_are_of_the_parent_type():
    class Marked(Workspace):
        """A Workspace subclass the per-thread children must keep."""
    assert type(Marked().thread(1)) is Marked
