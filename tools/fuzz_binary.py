"""Structure-aware mutations of the binary files the engine reads (used by
tests/test_fuzz.py and tools/fuzz_campaign.py; text and raw-byte operators
are in tools/fuzz_mutations.py).

- netdef's ``.npz`` archives (``.weights``, ``.solverstate.npz``): an array
  member's dtype, shape or values changed, its ``.npy`` header made to lie
  about the shape, its name changed, removed or duplicated, and the JSON of
  ``__meta__`` given wrong types, deep nesting or broken text;
- Caffe's ``.caffemodel``: a blob's dims, data, legacy 4-d shape, a layer's
  name or type, blobs removed or duplicated.

    members, steps = mutate_npz(rng, npz_members(original_bytes))
    data = write_npz(members)
    data, steps = mutate_caffemodel(rng, original_bytes)

Pure functions of a seeded ``random.Random`` and the original bytes; nothing
is written to disk here.
"""
import io
import json
import warnings
import zipfile

import numpy as np

from netdef import caffe_pb2

__all__ = ["npz_members", "write_npz", "mutate_npz", "mutate_caffemodel"]


def npz_members(data):
    """The members of an .npz archive: list of [member name, bytes]."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [[info.filename, archive.read(info.filename)] for info in archive.infolist()]


def write_npz(members):
    """An .npz archive (bytes) of ``members`` (list of [name, bytes]);
    duplicate names are kept, as a hostile file could hold them."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")         # zipfile warns of a duplicate name
        for name, payload in members:
            archive.writestr(zipfile.ZipInfo(name), payload)
    return buffer.getvalue()


def _npy(array):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _npy_lying(header, payload=b"\x00" * 16):
    """An .npy member whose header claims ``header`` over a short payload."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + payload


def _load_npy(payload):
    return np.lib.format.read_array(io.BytesIO(payload), allow_pickle=False)


_DTYPES = ("bool", "int8", "int32", "int64", "uint8", "float16", "float64", "complex64",
           "S4", "U4", "m8[s]", "M8[s]", [("a", "<f4"), ("b", "<i4")])
_VALUES = (np.nan, np.inf, -np.inf, 1e38, -1e38, 1e-45, 0.0)
_LIES = ({"descr": "<f4", "fortran_order": False, "shape": (10 ** 6, 10 ** 6)},
         {"descr": "<f4", "fortran_order": False, "shape": (2 ** 63 + 5,)},
         {"descr": "<f8", "fortran_order": False, "shape": (2 ** 31, 2 ** 31, 2 ** 31, 0)},
         {"descr": "<f4", "fortran_order": True, "shape": (3, 5)},
         {"descr": "|O", "fortran_order": False, "shape": (2,)},
         {"descr": "<f4", "fortran_order": False, "shape": ()},
         {"descr": "<f4", "fortran_order": False, "shape": (100,)})
_KEY_CHANGES = (lambda k: k.rsplit("/", 1)[0], lambda k: k + "/x", lambda k: k.rsplit("/", 1)[0] + "/x",
                lambda k: k.rsplit("/", 1)[0] + "/-1", lambda k: k.rsplit("/", 1)[0] + "/" + "9" * 25,
                lambda k: "/" + k.rsplit("/", 1)[-1], lambda k: "nope/" + k, lambda k: "",
                lambda k: k.replace("weights/", "history/", 1), lambda k: "__meta__",
                lambda k: k + "\u00e9")


def _readable(payload):
    """True when ``payload`` is an .npy member whose header tells the truth
    (an earlier step may have made it lie: reading it would allocate what
    the lie claims)."""
    try:
        handle = io.BytesIO(payload)
        reader = {(1, 0): np.lib.format.read_array_header_1_0,
                  (2, 0): np.lib.format.read_array_header_2_0}.get(np.lib.format.read_magic(handle))
        if reader is None:
            return False
        shape, _, dtype = reader(handle)
        size = int(np.prod(shape, dtype=object)) * dtype.itemsize
        return not dtype.hasobject and len(payload) - handle.tell() == size
    except (ValueError, TypeError, OverflowError):
        return False


def _array_member(rng, members):
    arrays = [m for m in members if m[0] != "__meta__.npy" and _readable(m[1])]
    return rng.choice(arrays) if arrays else None


def _npz_dtype(rng, members):
    member = _array_member(rng, members)
    if member is None:
        return None
    array = _load_npy(member[1])
    dtype = np.dtype(rng.choice(_DTYPES))
    with warnings.catch_warnings():             # NaN to int, complex to real: wanted
        warnings.simplefilter("ignore")
        try:
            array = np.zeros(array.shape, dtype) if dtype.names else array.astype(dtype)
        except (ValueError, TypeError):         # e.g. bytes to timedelta: zeros of the type
            array = np.zeros(array.shape, dtype)
    member[1] = _npy(array)
    return f"{member[0]} as dtype {dtype}"


def _npz_shape(rng, members):
    member = _array_member(rng, members)
    if member is None:
        return None
    array = _load_npy(member[1])
    if array.size == 0:
        return None
    op = rng.choice(("transpose", "add axis", "flatten", "empty", "scalar", "grow"))
    new = {"transpose": lambda a: a.T, "add axis": lambda a: a[None],
           "flatten": lambda a: a.reshape(-1), "empty": lambda a: a[:0],
           "scalar": lambda a: a.reshape(-1)[:1].reshape(()),
           "grow": lambda a: np.concatenate([a, a]) if a.ndim else a}[op](array)
    member[1] = _npy(np.ascontiguousarray(new))
    return f"{member[0]} {op} -> shape {new.shape}"


def _npz_values(rng, members):
    member = _array_member(rng, members)
    if member is None:
        return None
    array = _load_npy(member[1]).copy()
    if array.size == 0 or array.dtype.kind not in "fc":
        return None
    value = rng.choice(_VALUES)
    array.reshape(-1)[rng.randrange(array.size)] = value
    member[1] = _npy(array)
    return f"{member[0]} one value {value}"


def _npz_header(rng, members):
    member = _array_member(rng, members)
    if member is None:
        return None
    lie = rng.choice(_LIES)
    member[1] = _npy_lying(lie)
    return f"{member[0]} header claims {lie}"


def _npz_key(rng, members):
    member = _array_member(rng, members)
    if member is None:
        return None
    op = rng.choice(("rename", "rename", "remove", "duplicate", "no suffix"))
    old = member[0]
    if op == "remove":
        members.remove(member)
    elif op == "duplicate":
        members.append(list(member))
    elif op == "no suffix":
        member[0] = old[:-len(".npy")]
    else:
        member[0] = rng.choice(_KEY_CHANGES)(old[:-len(".npy")]) + ".npy"
    return f"{op} {old} -> {member[0]}"


# -- the JSON metadata ----------------------------------------------------------------------

_DEEP = "\u0000deep\u0000"
_WRONG_VALUES = ("abc", None, -1, 0, 2 ** 70, 1e308, float("nan"), float("inf"), [], {}, True,
                 "x" * 10000, _DEEP, {"bit_generator": "MT19937", "state": {"key": [1, 2]}},
                 [1, [2, [3]]], {"seed": "s", "state": None})


def _json_paths(value, path=()):
    """Every path (tuple of keys and indices) into a JSON value."""
    yield path
    items = value.items() if isinstance(value, dict) else \
        enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield from _json_paths(child, path + (key,))


def _json_text(value):
    """JSON text of ``value``, the ``_DEEP`` marker becoming 100,000 nested lists."""
    text = json.dumps(value)
    return text.replace(json.dumps(_DEEP), "[" * 100000 + "]" * 100000)


def _meta_tree(rng, header):
    meta = header["meta"]
    paths = list(_json_paths(meta))[1:] or [()]
    path = rng.choice(paths)
    parent = header["meta"]
    for key in path[:-1]:
        parent = parent[key]
    op = rng.choice(("replace", "replace", "replace", "delete", "add"))
    if not path:
        header["meta"] = rng.choice(_WRONG_VALUES)
        return f"meta replaced by {str(header['meta'])[:40]}"
    if op == "delete":
        del parent[path[-1]]
        return f"meta {'/'.join(map(str, path))} deleted"
    if op == "add" and isinstance(parent, dict):
        parent["extra"] = rng.choice(_WRONG_VALUES)
        return f"meta {'/'.join(map(str, path[:-1]))} gets 'extra'"
    value = rng.choice(_WRONG_VALUES)
    parent[path[-1]] = value
    return f"meta {'/'.join(map(str, path))} = {str(value)[:40]}"


def _npz_meta(rng, members):
    found = [m for m in members if m[0] == "__meta__.npy" and _readable(m[1])]
    if not found:
        return None
    member = found[0]
    text = _load_npy(member[1]).tobytes()
    op = rng.choice(("tree", "tree", "tree", "header", "raw"))
    try:
        header = json.loads(text)
    except (ValueError, RecursionError):
        header = None
    if not isinstance(header, dict):           # an earlier step broke it: break it more
        op = "raw"
    if op == "raw":
        text, step = rng.choice(((text[:len(text) // 2], "meta JSON truncated"),
                                 (b"\xff\xfe" + text, "meta JSON not UTF-8"),
                                 (b"[" * 100000, "meta JSON 100,000 open brackets")))
    else:
        if op == "header":
            key = rng.choice(("format", "version", "meta"))
            header[key] = rng.choice(_WRONG_VALUES)
            step = f"meta header {key} = {str(header[key])[:40]}"
        else:
            step = _meta_tree(rng, header)
        text = _json_text(header).encode("utf-8")
    member[1] = _npy(np.frombuffer(text, dtype=np.uint8))
    return step


_NPZ_OPERATORS = ((_npz_dtype, 2), (_npz_shape, 2), (_npz_values, 2), (_npz_header, 2),
                  (_npz_key, 2), (_npz_meta, 4))


def mutate_npz(rng, members, max_steps=2):
    """``(members, steps)``: 1 to ``max_steps`` structure-aware operators
    applied to the members (changed in place and returned)."""
    operators = [op for op, weight in _NPZ_OPERATORS for _ in range(weight)]
    steps = []
    for _ in range(rng.randint(1, max_steps)):
        for _attempt in range(5):
            step = rng.choice(operators)(rng, members)
            if step is not None:
                steps.append(step)
                break
    return members, steps


# -- .caffemodel ----------------------------------------------------------------------------

_DIMS = ((2 ** 31, 2 ** 31, 2 ** 31, 0), (0,), (-1, 3), (2 ** 63 - 1,), (10 ** 6, 10 ** 6), (),
         (1, 1, 1, 1, 1, 1, 1, 1, 1, 1), (2 ** 62, 4))


def _blob(rng, net):
    blobs = [(layer, i, blob) for layer in net.layer for i, blob in enumerate(layer.blobs)]
    return rng.choice(blobs) if blobs else None


def _caffe_dims(rng, net):
    found = _blob(rng, net)
    if found is None:
        return None
    layer, i, blob = found
    op = rng.choice(("set", "set", "scale", "legacy"))
    if op == "legacy":
        blob.ClearField("shape")
        blob.num, blob.channels, blob.height, blob.width = (rng.choice((0, -1, 1, 2 ** 31 - 1, 3))
                                                            for _ in range(4))
        return f"{layer.name}/{i} legacy shape {blob.num},{blob.channels},{blob.height},{blob.width}"
    dims = rng.choice(_DIMS) if op == "set" else \
        [min(d * rng.choice((2, 0, -1)), 2 ** 63 - 1) for d in blob.shape.dim]  # int64 dims
    del blob.shape.dim[:]
    blob.shape.dim.extend(dims)
    return f"{layer.name}/{i} dims {tuple(dims)}"


def _caffe_data(rng, net):
    found = _blob(rng, net)
    if found is None:
        return None
    layer, i, blob = found
    op = rng.choice(("truncate", "extend", "double", "value", "clear"))
    if op == "truncate":
        del blob.data[len(blob.data) // 2:]
    elif op == "extend":
        blob.data.extend([1.0] * rng.choice((1, 7, 1000)))
    elif op == "double":
        blob.double_data.extend(blob.data)
        if rng.random() < 0.5:
            blob.ClearField("data")
    elif op == "value" and len(blob.data):
        blob.data[rng.randrange(len(blob.data))] = rng.choice((np.nan, np.inf, -np.inf, 3e38))
    else:
        blob.ClearField("data")
    return f"{layer.name}/{i} data {op}"


def _caffe_layer(rng, net):
    if not net.layer:
        return None
    layer = rng.choice(net.layer)
    op = rng.choice(("name", "type", "drop blob", "extra blob", "duplicate layer", "remove layer"))
    if op == "name":
        layer.name = rng.choice(("", "conv1/0", "conv", "x" * 300, "\u00e9", net.layer[0].name))
    elif op == "type":
        layer.type = rng.choice(("", "InnerProduct", "Convolution", "BatchNorm", "Nope"))
    elif op == "drop blob" and layer.blobs:
        del layer.blobs[-1]
    elif op == "extra blob" and layer.blobs:
        layer.blobs.add().CopyFrom(layer.blobs[0])
    elif op == "duplicate layer":
        net.layer.add().CopyFrom(layer)
    else:
        net.layer.remove(layer)
    return f"layer {layer.name[:40]!r} {op}"


_CAFFE_OPERATORS = ((_caffe_dims, 3), (_caffe_data, 3), (_caffe_layer, 2))


def mutate_caffemodel(rng, data, max_steps=2):
    """``(mutant bytes, steps)``: the .caffemodel ``data`` parsed, 1 to
    ``max_steps`` structure-aware operators applied, serialized again."""
    net = caffe_pb2.NetParameter()
    net.ParseFromString(data)
    operators = [op for op, weight in _CAFFE_OPERATORS for _ in range(weight)]
    steps = []
    for _ in range(rng.randint(1, max_steps)):
        for _attempt in range(5):
            step = rng.choice(operators)(rng, net)
            if step is not None:
                steps.append(step)
                break
    return net.SerializeToString(), steps
