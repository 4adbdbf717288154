"""HDF5Data and HDF5Output: rows against what the files hold, batches across
file boundaries, shuffling, resuming, appending writes, every error."""
import sys

import numpy as np
import pytest

from netdef.device import Device, to_numpy
from netdef.errors import DataError, NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, setup_layer

h5py = pytest.importorskip("h5py")


def write_h5(path, **datasets):
    with h5py.File(path, "w") as handle:
        for name, array in datasets.items():
            handle.create_dataset(name, data=array)
    return str(path)


def two_files(tmp_path, rows=(5, 3)):
    """Files whose rows are numbered across both: data[i] = i * 10 + (0..5),
    label[i] = i. Returns the list file and the concatenated arrays."""
    paths, start = [], 0
    for k, count in enumerate(rows):
        index = np.arange(start, start + count)
        data = (index[:, None, None] * 10 + np.arange(6).reshape(1, 2, 3)).astype(np.float32)
        paths.append(write_h5(tmp_path / f"part{k}.h5", data=data, label=index.astype(np.int32)))
        start += count
    (tmp_path / "list.txt").write_text("\n".join(paths) + "\n\n")
    index = np.arange(start)
    data = (index[:, None, None] * 10 + np.arange(6).reshape(1, 2, 3)).astype(np.float32)
    return str(tmp_path / "list.txt"), data, index


def spec(source, batch=4, extra="", tops=("data", "label")):
    top_text = " ".join(f'top: "{t}"' for t in tops)
    return (f'name: "h5" type: "HDF5Data" {top_text} hdf5_data_param {{ source: "{source}" '
            f'batch_size: {batch} {extra} }}')


def make(text, bottoms=(), dtype=np.float32, seed=0, device=None):
    kwargs = {"device": device} if device is not None else {}
    layer = build_layer(text, dtype=dtype, seed=seed, **kwargs)
    bottoms, tops = setup_layer(layer, list(bottoms))
    return layer, bottoms, tops


def forward(layer, tops):
    layer.forward([], tops)
    return [to_numpy(t.data).copy() for t in tops]


def test_batches_run_across_files_and_round_to_the_first(tmp_path):
    source, data, label = two_files(tmp_path)
    layer, _, tops = make(spec(source, batch=3))
    assert tops[0].shape == (3, 2, 3) and tops[1].shape == (3,)
    got_data, got_label = [], []
    for _ in range(6):                   # 18 rows: two passes over 8 and a bit
        d, l = forward(layer, tops)
        got_data.append(d)
        got_label.append(l)
    order = np.arange(18) % 8
    np.testing.assert_array_equal(np.concatenate(got_data), data[order])
    np.testing.assert_array_equal(np.concatenate(got_label), label[order].astype(np.float32))


def test_one_file_larger_batches_than_rows_and_other_top_names(tmp_path):
    path = write_h5(tmp_path / "a.h5", x=np.arange(3.0), y=np.arange(6.0).reshape(3, 2))
    (tmp_path / "list.txt").write_text(path)
    layer, _, tops = make(spec(tmp_path / "list.txt", batch=7, tops=("y", "x")),
                          dtype=np.float64)
    y, x = forward(layer, tops)
    order = np.arange(7) % 3
    np.testing.assert_array_equal(x, np.arange(3.0)[order])
    np.testing.assert_array_equal(y, np.arange(6.0).reshape(3, 2)[order])
    assert y.dtype == np.float64


def test_shuffle_visits_every_row_of_a_file_once_per_use(tmp_path):
    source, _, _ = two_files(tmp_path, rows=(4, 4))
    layer, _, tops = make(spec(source, batch=4, extra="shuffle: true"), seed=2)
    uses = [sorted(forward(layer, tops)[1].astype(int)) for _ in range(8)]
    assert all(use in ([0, 1, 2, 3], [4, 5, 6, 7]) for use in uses)
    # The order of files in a pass, and of rows within a use, are drawn.
    again, _, tops2 = make(spec(source, batch=4, extra="shuffle: true"), seed=2)
    orders = [tuple(forward(again, tops2)[1].astype(int)) for _ in range(8)]
    assert len(set(orders)) > 2


def test_random_state_resumes_with_the_same_rows(tmp_path):
    source, _, _ = two_files(tmp_path)
    text = spec(source, batch=3, extra="shuffle: true")
    layer, _, tops = make(text, seed=5)
    forward(layer, tops)
    state = layer.random_state()
    expected = [forward(layer, tops)[1] for _ in range(4)]
    resumed, _, tops2 = make(text, seed=5)
    resumed.set_random_state(state)
    for want in expected:
        np.testing.assert_array_equal(forward(resumed, tops2)[1], want)


# -- HDF5Output ------------------------------------------------------------------------

def output_spec(path):
    return (f'name: "out" type: "HDF5Output" bottom: "feat" bottom: "lab" '
            f'hdf5_output_param {{ file_name: "{path}" }}')


def test_output_creates_the_file_and_appends_every_forward(tmp_path):
    path = tmp_path / "out.h5"
    first = [np.arange(12.0).reshape(2, 3, 2), np.array([1.0, 2.0])]
    layer, bottoms, _ = make(output_spec(path), [a.copy() for a in first])
    with h5py.File(path, "r") as handle:
        assert handle["data"].shape == (0, 3, 2) and handle["label"].shape == (0,)
    layer.forward(bottoms, [])
    bottoms[0].data[...] += 100
    bottoms[1].data[...] += 10
    layer.forward(bottoms, [])
    with h5py.File(path, "r") as handle:
        np.testing.assert_array_equal(handle["data"][()],
                                      np.concatenate([first[0], first[0] + 100]))
        np.testing.assert_array_equal(handle["label"][()], [1, 2, 11, 12])
        assert handle["data"].dtype == np.float32
    assert not (tmp_path / "out.h5.partial").exists()


def test_output_then_hdf5data_reads_it_back(tmp_path):
    path = tmp_path / "out.h5"
    arrays = [np.random.default_rng(0).normal(size=(3, 4)), np.array([0.0, 1.0, 2.0])]
    layer, bottoms, _ = make(output_spec(path), arrays, dtype=np.float64)
    layer.forward(bottoms, [])
    (tmp_path / "list.txt").write_text(str(path))
    reader, _, tops = make(spec(tmp_path / "list.txt", batch=3), dtype=np.float64)
    data, label = forward(reader, tops)
    np.testing.assert_array_equal(data, arrays[0])
    np.testing.assert_array_equal(label, arrays[1])


def test_output_has_no_gradient(tmp_path):
    layer, bottoms, _ = make(output_spec(tmp_path / "o.h5"), [np.ones((2, 3)), np.ones(2)])
    bottoms[0].diff[...] = 5
    bottoms[1].diff[...] = 5
    layer.backward([], [True, False], bottoms)
    assert not bottoms[0].diff.any() and (bottoms[1].diff == 5).all()
    assert not layer.allow_force_backward(0)


# -- errors --------------------------------------------------------------------------

def test_error_transform_param_is_refused(tmp_path):
    source, _, _ = two_files(tmp_path)
    with pytest.raises(NetDefinitionError, match="HDF5Data does not transform data"):
        make(spec(source) + " transform_param { scale: 2 }")


def test_error_missing_or_empty_list(tmp_path):
    with pytest.raises(DataError, match=r"layer 'h5'.*cannot read the HDF5 file list '.*none'"):
        make(spec(tmp_path / "none"))
    (tmp_path / "list.txt").write_text("\n")
    with pytest.raises(DataError, match="HDF5 file list '.*list.txt' lists no files"):
        make(spec(tmp_path / "list.txt"))


def test_error_missing_file_or_dataset_names_the_list_line(tmp_path):
    source, _, _ = two_files(tmp_path)
    with pytest.raises(DataError, match=r"HDF5 file '.*part0.h5' \(line 1 of '.*list.txt'\) has "
                                        r"no dataset 'labels'.*\['data', 'label'\]"):
        make(spec(source, tops=("data", "labels")))
    (tmp_path / "part1.h5").unlink()
    layer, _, tops = make(spec(source, batch=4))
    forward(layer, tops)
    with pytest.raises(DataError, match=r"part1.h5' \(line 2 of .*\): cannot read it"):
        forward(layer, tops)


def test_error_datasets_with_different_row_counts(tmp_path):
    path = write_h5(tmp_path / "a.h5", data=np.zeros((4, 2)), label=np.zeros(3))
    (tmp_path / "list.txt").write_text(path)
    with pytest.raises(DataError, match="same number of rows .*'data' has 4, 'label' has 3"):
        make(spec(tmp_path / "list.txt"))


def test_error_files_with_different_row_shapes(tmp_path):
    a = write_h5(tmp_path / "a.h5", data=np.zeros((2, 3)), label=np.zeros(2))
    b = write_h5(tmp_path / "b.h5", data=np.zeros((2, 4)), label=np.zeros(2))
    (tmp_path / "list.txt").write_text(f"{a}\n{b}\n")
    layer, _, tops = make(spec(tmp_path / "list.txt", batch=2))
    forward(layer, tops)
    with pytest.raises(DataError, match=r"b.h5' .*rows of shapes \[\(4,\), \(\)\].*"
                                        r"first file's are \[\(3,\), \(\)\]"):
        forward(layer, tops)


def test_error_non_numeric_dataset(tmp_path):
    path = write_h5(tmp_path / "a.h5", data=np.array([b"a", b"b"]), label=np.zeros(2))
    (tmp_path / "list.txt").write_text(path)
    with pytest.raises(DataError, match="dataset 'data' must be a numeric array"):
        make(spec(tmp_path / "list.txt"))


def test_error_batch_size_missing(tmp_path):
    source, _, _ = two_files(tmp_path)
    with pytest.raises(NetDefinitionError, match="batch_size must be positive, found 0"):
        make(spec(source, batch=0))


def test_error_without_the_h5py_package(tmp_path, monkeypatch):
    source, _, _ = two_files(tmp_path)
    monkeypatch.setitem(sys.modules, "h5py", None)   # import h5py now raises ImportError
    with pytest.raises(NetDefinitionError, match=r"need the h5py package.*"
                                                 r"pip install -e '\.\[data\]'"):
        make(spec(source))
    with pytest.raises(NetDefinitionError, match=r"pip install -e '\.\[data\]'"):
        make(output_spec(tmp_path / "o.h5"), [np.zeros((1, 2)), np.zeros(1)])


def test_error_output_without_file_name(tmp_path):
    text = 'name: "out" type: "HDF5Output" bottom: "a" bottom: "b"'
    with pytest.raises(NetDefinitionError, match="hdf5_output_param needs a file_name"):
        make(text, [np.zeros((1, 2)), np.zeros(1)])


def test_error_output_bottoms_with_different_row_counts(tmp_path):
    with pytest.raises(ShapeError, match=r"bottom 'lab' expected as many rows as bottom 'feat' "
                                         r"\(2, 3\), found shape \(3,\)"):
        make(output_spec(tmp_path / "o.h5"), [np.zeros((2, 3)), np.zeros(3)])


def test_error_output_rows_change_shape(tmp_path):
    layer, bottoms, _ = make(output_spec(tmp_path / "o.h5"), [np.zeros((2, 3)), np.zeros(2)])
    bottoms[1].reshape((2, 2))
    with pytest.raises(ShapeError, match=r"bottom 'lab' expected rows of shape \(\), as the "
                                         r"dataset 'label' of '.*o.h5' holds, found shape \(2, 2\)"):
        layer.reshape(bottoms, [])


def test_error_output_file_cannot_be_written(tmp_path):
    with pytest.raises(DataError, match="cannot write '.*no/such/dir/o.h5'"):
        make(output_spec(tmp_path / "no" / "such" / "dir" / "o.h5"),
             [np.zeros((1, 2)), np.zeros(1)])


@pytest.mark.gpu
def test_tops_land_on_the_gpu_and_gpu_bottoms_are_written(tmp_path):
    import cupy
    source, data, label = two_files(tmp_path)
    layer, _, tops = make(spec(source, batch=2), device=Device("gpu", 0))
    layer.forward([], tops)
    assert isinstance(tops[0].data, cupy.ndarray) and isinstance(tops[1].data, cupy.ndarray)
    np.testing.assert_array_equal(tops[0].data.get(), data[:2])
    out, bottoms, _ = make(output_spec(tmp_path / "o.h5"), [data[:2], label[:2] * 1.0],
                           device=Device("gpu", 0))
    out.forward(bottoms, [])
    with h5py.File(tmp_path / "o.h5", "r") as handle:
        np.testing.assert_array_equal(handle["data"][()], data[:2])
