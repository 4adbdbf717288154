"""Every weights file is checked whole before a Net changes: the .npz
container (member dtypes, header shapes against the member's bytes, JSON
nesting), weight names, dtypes and values, .caffemodel blob shapes, and a
solver snapshot given as weights. Every refusal is a WeightsError naming the
file; the net keeps its weights."""
import io
import json
import struct
import zipfile

import numpy as np
import pytest

from netdef import Net, caffe_pb2
from netdef.errors import WeightsError
from netdef.snapshot_format import FORMAT, META_KEY, load_arrays, save_arrays
from solver.snapshot import SolverState

NET_TEXT = """name: "pair"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 5 dim: 5 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "gaussian" } } }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
"""


def make_net(dtype=np.float32):
    return Net(NET_TEXT, "TEST", seed=3, dtype=dtype)


def params(net):
    return {f"{name}/{i}": np.array(blob.data) for name, blobs in net.params.items()
            for i, blob in enumerate(blobs)}


def assert_params_equal(net, before):
    after = params(net)
    assert after.keys() == before.keys()
    for key in before:
        assert np.array_equal(after[key], before[key]), key


def good_arrays(seed=7):
    rng = np.random.default_rng(seed)
    return {"conv1/0": rng.standard_normal((2, 3, 3, 3)).astype(np.float32),
            "conv1/1": rng.standard_normal(2).astype(np.float32),
            "fc/0": rng.standard_normal((4, 18)).astype(np.float32),
            "fc/1": rng.standard_normal(4).astype(np.float32)}


# -- the .npz container ------------------------------------------------------------------------

def npy(array):
    out = io.BytesIO()
    np.lib.format.write_array(out, np.asarray(array), allow_pickle=True)
    return out.getvalue()


def npy_claiming(header, payload=b"", version=1):
    """A .npy member whose header dict is the text ``header``."""
    text = header.encode("latin1")
    if version == 1:
        size = 10 + len(text) + 1
        text += b" " * (-size % 64) + b"\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + payload
    size = 12 + len(text) + 1
    text += b" " * (-size % 64) + b"\n"
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<I", len(text)) + text + payload


def meta_member(meta=None, raw=None):
    if raw is None:
        raw = json.dumps({"format": FORMAT, "version": 1, "meta": meta or {}}).encode()
    return npy(np.frombuffer(raw, np.uint8))


def write_zip(path, members):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return path


def refused(path, message):
    with pytest.raises(WeightsError, match=message) as info:
        load_arrays(path)
    assert str(info.value).startswith(f"{path}: not a readable netdef array file")


@pytest.mark.parametrize("array, shown", [
    (np.zeros(2, [("a", "<f4"), ("b", "<i4")]), r"\[\('a', '<f4'\), \('b', '<i4'\)\]"),
    (np.array([{}, None], dtype=object), "object"),
    (np.array([b"ab", b"c"]), "|S2"),
    (np.array(["ab"]), "<U2"),
    (np.array([1, 2], "m8[s]"), "timedelta64"),
    (np.array(["2020-01-01"], "M8[D]"), "datetime64"),
    (np.zeros(2, "V8"), "|V8"),
])
def test_non_numeric_dtypes_are_refused_before_reading(tmp_path, array, shown):
    path = write_zip(tmp_path / "w.npz", [("w.npy", npy(array)), ("__meta__.npy", meta_member())])
    refused(path, f"array 'w' has dtype {shown}.*; only plain numeric arrays")


@pytest.mark.parametrize("header, payload, message", [
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000), }", b"\0" * 8,
     r"claims shape \(1000000, 1000000\) of float32 \(4000000000000 bytes\) but the member "
     r"holds 8 bytes"),
    ("{'descr': '<f8', 'fortran_order': False, 'shape': (18446744073709551616, 1), }", b"",
     r"claims shape \(18446744073709551616, 1\)"),
    ("{'descr': '<f8', 'fortran_order': False, 'shape': (9223372036854775809, 0), }", b"",
     r"claims shape \(9223372036854775809, 0\) of float64 \(0 bytes\)"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 2), }", b"\0" * 8,
     r"has shape \(-1, 2\); at most 32 non-negative dimensions"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (" + "1, " * 33 + "), }", b"\0" * 4,
     "at most 32 non-negative dimensions"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", b"\0" * 12,
     r"claims shape \(2,\) of float32 \(8 bytes\) but the member holds 12 bytes"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), ", b"\0" * 8,
     r"array 'w': its .npy header does not parse \((SyntaxError|TokenError)\)"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': " + "(" * 3000 + ")" * 3000 + "}", b"",
     r"ValueError: Cannot parse header: .{100,180}\.\.\.\)$"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", b"", "ValueError"),
    ("{'descr': 'not a dtype', 'fortran_order': False, 'shape': (2,), }", b"", "ValueError"),
])
def test_header_claims_are_checked_against_the_member(tmp_path, header, payload, message):
    path = write_zip(tmp_path / "w.npz", [("w.npy", npy_claiming(header, payload)),
                                          ("__meta__.npy", meta_member())])
    refused(path, message)


def test_npy_version_3_and_unknown_versions_are_refused(tmp_path):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }"
    for version in (3, 9):
        path = write_zip(tmp_path / f"v{version}.npz", [
            ("w.npy", npy_claiming(header, b"\0" * 4, version)), ("__meta__.npy", meta_member())])
        refused(path, rf"array 'w': .npy format version \({version}, 0\) is not supported")


def test_members_other_than_npy_arrays_are_refused(tmp_path):
    path = write_zip(tmp_path / "a.npz", [("notes.txt", b"hello"), ("__meta__.npy", meta_member())])
    refused(path, "member 'notes.txt' is not a .npy array")
    with pytest.warns(UserWarning, match="Duplicate name"):
        path = write_zip(tmp_path / "b.npz", [("w.npy", npy(np.zeros(2))),
                                              ("w.npy", npy(np.ones(2))),
                                              ("__meta__.npy", meta_member())])
    refused(path, "member 'w.npy' appears twice")


def patch_central_size(data, size):
    """The archive ``data`` with its first member's uncompressed size in the
    central directory set to ``size``."""
    at = data.index(b"PK\x01\x02")
    return data[:at + 24] + struct.pack("<I", size) + data[at + 28:]


def test_a_member_claiming_more_bytes_than_the_file_is_refused(tmp_path):
    good = write_zip(tmp_path / "good.npz", [("w.npy", npy(np.zeros(4))),
                                             ("__meta__.npy", meta_member())])
    path = tmp_path / "claims.npz"
    path.write_bytes(patch_central_size(good.read_bytes(), 0xFFFFFFF0))
    refused(path, r"member 'w.npy' claims 4294967280 bytes \(\d+ stored\) in a file of \d+ bytes")
    # Deflated: at most deflate's ratio.
    deflated = tmp_path / "deflated.npz"
    with zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("w.npy", npy(np.zeros(4)))
        archive.writestr("__meta__.npy", meta_member())
    assert load_arrays(deflated)[0]["w"].shape == (4,)
    path.write_bytes(patch_central_size(deflated.read_bytes(), 0xFFFFFFF0))
    refused(path, "member 'w.npy' claims 4294967280 bytes")


def test_deeply_nested_metadata_is_refused(tmp_path):
    parser_limit = b'{"format": "netdef-arrays", "version": 1, "meta": {"x": ' + \
        b"[" * 100000 + b"]" * 100000 + b"}}"
    path = write_zip(tmp_path / "deep.npz", [("__meta__.npy", meta_member(raw=parser_limit))])
    refused(path, "'__meta__' nests lists and objects more than 64 levels deep")
    nested = {}
    for _ in range(70):
        nested = {"a": nested}
    save_arrays(tmp_path / "nested.npz", {}, {"x": nested})
    refused(tmp_path / "nested.npz", "nests lists and objects more than 64 levels deep")
    fine = {}
    for _ in range(60):
        fine = {"a": fine}
    save_arrays(tmp_path / "fine.npz", {}, {"x": fine})
    assert load_arrays(tmp_path / "fine.npz")[1] == {"x": fine}


def test_metadata_of_other_shapes_is_refused(tmp_path):
    for label, raw in (("null", b"null"), ("list", b"[1]"), ("number", b"3"),
                       ("meta list", b'{"format": "netdef-arrays", "version": 1, "meta": []}')):
        path = write_zip(tmp_path / f"{label}.npz", [("__meta__.npy", meta_member(raw=raw))])
        refused(path, "does not describe a netdef-arrays file")
    path = write_zip(tmp_path / "huge_int.npz", [("__meta__.npy", meta_member(
        raw=b'{"format": "netdef-arrays", "version": 1, "meta": {"x": ' + b"9" * 5000 + b"}}"))])
    refused(path, "is not JSON")


# -- weights files -----------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["conv1", "conv1/x", "conv1/", "/0", "conv1/-1", "conv1/0x1"])
def test_a_name_without_an_index_is_a_named_error(tmp_path, key):
    path = tmp_path / "x.weights"
    save_arrays(path, {key: np.zeros((2, 3, 3, 3), np.float32)})
    net = make_net()
    before = params(net)
    with pytest.raises(WeightsError, match=f"^{path}: array '{key}' is not named "
                                           f"'<layer>/<index>'"):
        net.copy_from(path)
    assert_params_equal(net, before)


@pytest.mark.parametrize("dtype", [bool, np.int32, np.uint8, np.complex64])
def test_weights_of_a_non_float_dtype_are_refused(tmp_path, dtype):
    arrays = good_arrays()
    arrays["conv1/1"] = np.ones(2, dtype)   # a bool bias must not load as 1.0
    path = tmp_path / "w.npz"
    save_arrays(path, arrays)
    net = make_net()
    before = params(net)
    with pytest.raises(WeightsError, match=rf"^{path}: layer 'conv1' param 1: dtype "
                                           rf"{np.dtype(dtype)}; parameter values must be "
                                           rf"floating point"):
        net.copy_from(path)
    assert_params_equal(net, before)


def test_float16_and_float64_weights_load(tmp_path):
    arrays = good_arrays()
    arrays["fc/0"] = arrays["fc/0"].astype(np.float16)
    arrays["conv1/0"] = arrays["conv1/0"].astype(np.float64)
    save_arrays(tmp_path / "w.npz", arrays)
    net = make_net()
    assert net.copy_from(tmp_path / "w.npz").loaded == ["conv1", "fc"]
    assert np.array_equal(net.params["fc"][0].data, arrays["fc/0"].astype(np.float32))


@pytest.mark.parametrize("value, shown", [(np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf")])
def test_non_finite_weights_are_refused_and_named(tmp_path, value, shown):
    arrays = good_arrays()
    arrays["fc/0"][2, 5] = value
    arrays["fc/0"][3, 0] = value
    save_arrays(tmp_path / "w.npz", arrays)
    net = make_net()
    before = params(net)
    with pytest.raises(WeightsError, match=rf"w.npz: layer 'fc' param 0: 2 of 72 values are NaN "
                                           rf"or Inf \(the first at index \(2, 5\): {shown}\)"):
        net.copy_from(tmp_path / "w.npz")
    assert_params_equal(net, before)
    with pytest.raises(WeightsError, match="NaN or Inf"):
        make_net().__class__(NET_TEXT, "TEST", weights=str(tmp_path / "w.npz"))


def test_float64_beyond_the_range_of_a_float32_net_is_refused(tmp_path):
    arrays = good_arrays()
    arrays["fc/1"] = np.array([1.0, 2.0, 1e300, 3.0])
    save_arrays(tmp_path / "w.npz", arrays)
    net = make_net()
    before = params(net)
    with pytest.raises(WeightsError, match=r"layer 'fc' param 1: the file holds 1e\+300, beyond "
                                           r"the range of float32"):
        net.copy_from(tmp_path / "w.npz")
    assert_params_equal(net, before)
    assert make_net(np.float64).copy_from(tmp_path / "w.npz").loaded == ["conv1", "fc"]


def test_a_mismatch_in_a_later_layer_leaves_earlier_layers_untouched(tmp_path):
    arrays = good_arrays()
    arrays["fc/0"] = np.zeros((5, 18), np.float32)
    save_arrays(tmp_path / "w.npz", arrays)
    net = make_net()
    before = params(net)
    with pytest.raises(WeightsError, match=r"layer 'fc' param 0: the weights have shape \(5, 18\)"):
        net.copy_from(tmp_path / "w.npz")
    assert_params_equal(net, before)   # conv1, which fits, was not written either


def test_a_gap_in_the_indices_is_refused(tmp_path):
    arrays = good_arrays()
    arrays["fc/2"] = arrays.pop("fc/1")
    save_arrays(tmp_path / "w.npz", arrays)
    with pytest.raises(WeightsError, match=r"layer 'fc' has parameter blobs \[0, 2\]; expected "
                                           r"0 to 1"):
        make_net().copy_from(tmp_path / "w.npz")


def test_a_snapshot_given_as_weights_says_how_to_use_it(tmp_path):
    path = tmp_path / "net_iter_3.solverstate.npz"
    SolverState(iter=3, weights=good_arrays(), history={}, caffemodel="net_iter_3.caffemodel",
                solver_rng={}).save(path)
    net = make_net()
    before = params(net)
    for load in (lambda: net.copy_from(path), lambda: Net(NET_TEXT, "TEST", weights=str(path))):
        with pytest.raises(WeightsError) as info:
            load()
        message = str(info.value)
        assert message.startswith(f"{path} is a solver snapshot (.solverstate.npz")
        for hint in (f"--resume {path}", f"python -m solver.test ... --weights {path}",
                     "copy_from the .caffemodel exported beside it (net_iter_3.caffemodel)"):
            assert hint in message
    assert_params_equal(net, before)


def test_another_kind_of_file_given_as_weights_is_refused(tmp_path):
    save_arrays(tmp_path / "p.npz", {"boxes": np.zeros((0, 4), np.float32)},
                {"kind": "rpn-proposals"})
    with pytest.raises(WeightsError,
                       match="p.npz: not a weights file \\(a 'rpn-proposals' file\\)"):
        make_net().copy_from(tmp_path / "p.npz")


# -- .caffemodel -------------------------------------------------------------------------------

def caffemodel(path, fill):
    net = caffe_pb2.NetParameter(name="pair")
    layer = net.layer.add(name="conv1", type="Convolution")
    fill(layer.blobs.add())
    path.write_bytes(net.SerializeToString())
    return path


@pytest.mark.parametrize("dims, message", [
    ((2**31, 2**31, 2**31, 0), r"blob 0 has shape \(2147483648, 2147483648, 2147483648, 0\), "
                               r"beyond "
                               r"Caffe's limit of 2147483647 values per blob"),
    ((0, 2**40), r"blob 0 has shape \(0, 1099511627776\), beyond Caffe's limit"),
    ((1,) * 33, "blob 0 has 33 axes; a blob has at most 32"),
])
def test_caffemodel_blob_shapes_beyond_caffes_limits(tmp_path, dims, message):
    path = caffemodel(tmp_path / "big.caffemodel", lambda blob: blob.shape.dim.extend(dims))
    with pytest.raises(WeightsError, match=rf"big.caffemodel: layer 'conv1': {message}"):
        make_net().copy_from(path)


def test_caffemodel_non_finite_values_are_refused(tmp_path):
    def fill(blob):
        blob.shape.dim.extend([2])
        blob.data.extend([1.0, float("nan")])
    path = caffemodel(tmp_path / "nan.caffemodel", fill)
    with pytest.raises(WeightsError, match=r"nan.caffemodel: layer 'conv1' param 0: 1 of 2 "
                                           r"values are NaN or Inf"):
        make_net().copy_from(path)


def test_caffemodel_layer_names_that_are_not_utf8_are_refused(tmp_path):
    net = caffe_pb2.NetParameter(name="pair")
    layer = net.layer.add(name="conv1", type="Convolution")
    layer.blobs.add().data.extend([1.0])
    raw = net.SerializeToString().replace(b"conv1", b"c\xb1nv1")
    (tmp_path / "bad.caffemodel").write_bytes(raw)
    with pytest.raises(WeightsError, match=r"bad.caffemodel: not a Caffe binary NetParameter "
                                           r"\(.caffemodel\): layer 0: its name b'c\\xb1nv1' "
                                           r"is not UTF-8 text"):
        make_net().copy_from(tmp_path / "bad.caffemodel")


def test_load_meta_reads_only_the_checked_metadata(tmp_path):
    from netdef.snapshot_format import load_meta
    save_arrays(tmp_path / "w.npz", good_arrays(), {"classes": ["a", "b"]})
    assert load_meta(tmp_path / "w.npz") == {"classes": ["a", "b"]}
    deep = write_zip(tmp_path / "deep.npz", [("__meta__.npy", meta_member(
        raw=b'{"format": "netdef-arrays", "version": 1, "meta": ' + b"[" * 50000 + b"]" * 50000
        + b"}"))])
    with pytest.raises(WeightsError, match="deep.npz: .*more than 64 levels deep"):
        load_meta(deep)
