"""Reading, upgrading and writing prototxt (protobuf text format) files.

``read_net`` and ``read_solver`` give ``caffe_pb2`` messages in the current
form, the way Caffe's readers do: V1 ``layers`` become ``layer`` entries,
legacy net inputs become a leading ``Input`` layer, old BatchNorm parameter
specs are fixed, the legacy ``solver_type`` enum becomes ``type``. Each step
is logged on the ``netdef.schema`` logger.

Syntax errors raise :class:`netdef.errors.ParseError` with a message of the
form ``FILE:LINE:COL: what``.
"""
import difflib
import logging
import os
import re

from google.protobuf import text_format

from netdef import caffe_pb2
from netdef.errors import ParseError

__all__ = [
    "read_net",
    "read_solver",
    "parse_text",
    "upgrade_net",
    "upgrade_solver",
    "format_net",
    "V1_LAYER_TYPES",
]

log = logging.getLogger(__name__)

_V1 = caffe_pb2.V1LayerParameter

#: Caffe's type string for each V1 layer enum value.
V1_LAYER_TYPES = {
    _V1.ABSVAL: "AbsVal",
    _V1.ACCURACY: "Accuracy",
    _V1.ARGMAX: "ArgMax",
    _V1.BNLL: "BNLL",
    _V1.CONCAT: "Concat",
    _V1.CONTRASTIVE_LOSS: "ContrastiveLoss",
    _V1.CONVOLUTION: "Convolution",
    _V1.DATA: "Data",
    _V1.DECONVOLUTION: "Deconvolution",
    _V1.DROPOUT: "Dropout",
    _V1.DUMMY_DATA: "DummyData",
    _V1.EUCLIDEAN_LOSS: "EuclideanLoss",
    _V1.ELTWISE: "Eltwise",
    _V1.EXP: "Exp",
    _V1.FLATTEN: "Flatten",
    _V1.HDF5_DATA: "HDF5Data",
    _V1.HDF5_OUTPUT: "HDF5Output",
    _V1.HINGE_LOSS: "HingeLoss",
    _V1.IM2COL: "Im2col",
    _V1.IMAGE_DATA: "ImageData",
    _V1.INFOGAIN_LOSS: "InfogainLoss",
    _V1.INNER_PRODUCT: "InnerProduct",
    _V1.LRN: "LRN",
    _V1.MEMORY_DATA: "MemoryData",
    _V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss",
    _V1.MVN: "MVN",
    _V1.POOLING: "Pooling",
    _V1.POWER: "Power",
    _V1.RELU: "ReLU",
    _V1.SIGMOID: "Sigmoid",
    _V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss",
    _V1.SILENCE: "Silence",
    _V1.SOFTMAX: "Softmax",
    _V1.SOFTMAX_LOSS: "SoftmaxWithLoss",
    _V1.SPLIT: "Split",
    _V1.SLICE: "Slice",
    _V1.TANH: "TanH",
    _V1.WINDOW_DATA: "WindowData",
    _V1.THRESHOLD: "Threshold",
}

# V1 fields copied unchanged into LayerParameter (same names there).
_V1_PARAM_FIELDS = tuple(
    f.name for f in _V1.DESCRIPTOR.fields
    if f.name.endswith("_param")
)

# Data layers whose transformation settings V1 kept in the layer's own params.
_V1_TRANSFORM_MOVES = {
    "Data": "data_param",
    "ImageData": "image_data_param",
    "WindowData": "window_data_param",
}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

_SOLVER_TYPES = {
    caffe_pb2.SolverParameter.SGD: "SGD",
    caffe_pb2.SolverParameter.NESTEROV: "Nesterov",
    caffe_pb2.SolverParameter.ADAGRAD: "AdaGrad",
    caffe_pb2.SolverParameter.RMSPROP: "RMSProp",
    caffe_pb2.SolverParameter.ADADELTA: "AdaDelta",
    caffe_pb2.SolverParameter.ADAM: "Adam",
}

_NET_INPUT_FIELDS = ("input", "input_shape", "input_dim")


# ---------------------------------------------------------------------------
# Text parsing

def _read_source(source):
    """Return ``(text, filename)`` for a path or a prototxt string.

    A ``str`` that contains a newline or ``{`` is prototxt text; any other
    ``str``, and any ``os.PathLike``, is a path.
    """
    if isinstance(source, os.PathLike):
        path = os.fspath(source)
        given_as_str = False
    elif isinstance(source, str):
        if "\n" in source or "{" in source:
            return source, "<string>"
        path = source
        given_as_str = True
    else:
        raise TypeError(
            f"expected a path or prototxt text, got {type(source).__name__}")
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        hint = (" (a string without a newline or '{' is read as a path)"
                if given_as_str else "")
        raise ParseError(f"{path}: no such file{hint}") from None
    except IsADirectoryError:
        raise ParseError(f"{path}: is a directory, not a prototxt file") from None
    except OSError as exc:
        raise ParseError(f"{path}: cannot read the file: {exc.strerror}") from None
    try:
        return raw.decode("utf-8"), path
    except UnicodeDecodeError as exc:
        raise ParseError(
            f"{path}: not UTF-8 text (bad byte at offset {exc.start}); a binary "
            f".caffemodel is read with netdef.caffemodel.read_caffemodel"
        ) from None


_POSITION = re.compile(r"^\d+:\d+ : ")
_NO_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "(\w+)"')
_NO_ENUM_VALUE = re.compile(r'Enum type "([\w.]+)" has no value named (\w+)')


def _suggestion(what):
    """A 'did you mean' clause for unknown field and enum value names."""
    pool = caffe_pb2.DESCRIPTOR.pool
    match = _NO_FIELD.search(what)
    if match:
        try:
            names = [f.name for f in pool.FindMessageTypeByName(match.group(1)).fields]
        except KeyError:
            return ""
        wrong = match.group(2)
    else:
        match = _NO_ENUM_VALUE.search(what)
        if not match:
            return ""
        try:
            names = [v.name for v in pool.FindEnumTypeByName(match.group(1)).values]
        except KeyError:
            return ""
        wrong = match.group(2)
    close = difflib.get_close_matches(wrong, names, n=3, cutoff=0.8)
    if not close:
        return ""
    return " Did you mean " + " or ".join(f'"{name}"' for name in close) + "?"


def parse_text(text, message, filename="<string>"):
    """Parse prototxt ``text`` into ``message`` and return it.

    ``message`` is a message instance (cleared first) or a message class
    (instantiated). Errors raise ``ParseError('FILE:LINE:COL: what')``.
    """
    if isinstance(message, type):
        message = message()
    message.Clear()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        what = _POSITION.sub("", str(exc))
        what += _suggestion(what)
        line, column = exc.GetLine(), exc.GetColumn()
        where = filename if line is None else f"{filename}:{line}:{column}"
        raise ParseError(f"{where}: {what}") from None
    return message


def format_net(net):
    """Prototxt text of a message (a NetParameter, or any other message)."""
    return text_format.MessageToString(net)


# ---------------------------------------------------------------------------
# Net upgrade

def _layer_label(layer, index):
    return f"layer {index} ('{layer.name}')" if layer.name else f"layer {index}"


def _copy_fields_except(source, target, skip):
    """Copy every set field of ``source`` but those named in ``skip``."""
    for field, value in source.ListFields():
        if field.name in skip:
            continue
        destination = getattr(target, field.name)
        if field.is_repeated:
            destination.extend(value)
        elif field.message_type is not None:
            destination.CopyFrom(value)
        else:
            setattr(target, field.name, value)


def _param_spec(layer, index):
    while len(layer.param) <= index:
        layer.param.add()
    return layer.param[index]


def _upgrade_v1_layer(v1, layer, filename, index):
    """Fill ``layer`` (LayerParameter) from ``v1`` (V1LayerParameter)."""
    label = _layer_label(v1, index)
    if v1.HasField("layer"):
        if not v1.name and v1.layer.name:
            label = _layer_label(v1.layer, index)
        raise ParseError(
            f"{filename}: {label} is in the V0 layer format, which is not "
            f"supported; convert the file with Caffe's upgrade_net_proto_text "
            f"(or _binary) tool first")
    if v1.type == _V1.NONE:
        raise ParseError(f"{filename}: V1 {label} has no type")
    if v1.HasField("name"):
        layer.name = v1.name
    layer.type = V1_LAYER_TYPES[v1.type]
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    layer.blobs.extend(v1.blobs)
    for i, name in enumerate(v1.param):
        _param_spec(layer, i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        _param_spec(layer, i).share_mode = mode  # same numbering as ParamSpec's
    for i, lr in enumerate(v1.blobs_lr):
        _param_spec(layer, i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        _param_spec(layer, i).decay_mult = decay
    layer.loss_weight.extend(v1.loss_weight)
    for name in _V1_PARAM_FIELDS:
        if v1.HasField(name):
            getattr(layer, name).CopyFrom(getattr(v1, name))
    # V1 data layers kept their preprocessing in their own params.
    own = _V1_TRANSFORM_MOVES.get(layer.type)
    if own and layer.HasField(own):
        params = getattr(layer, own)
        for field in _TRANSFORM_FIELDS:
            if params.HasField(field):
                setattr(layer.transform_param, field, getattr(params, field))
                params.ClearField(field)
                log.info("%s: moved %s.%s of %s into transform_param",
                         filename, own, field, label)


def _input_layer(net, filename, taken_names):
    """The ``Input`` layer equivalent to the net's legacy input fields, or
    None when they carry no shapes (as in legacy weight files)."""
    inputs = list(net.input)
    if net.input_shape and net.input_dim:
        raise ParseError(
            f"{filename}: the net gives both input_shape and input_dim for its "
            f"inputs; use one of them")
    if net.input_shape:
        if len(net.input_shape) != len(inputs):
            raise ParseError(
                f"{filename}: the net has {len(inputs)} input(s) but "
                f"{len(net.input_shape)} input_shape entries; give one per input")
        shapes = [list(shape.dim) for shape in net.input_shape]
    elif net.input_dim:
        if len(net.input_dim) != 4 * len(inputs):
            raise ParseError(
                f"{filename}: the net has {len(inputs)} input(s) but "
                f"{len(net.input_dim)} input_dim values; give four per input "
                f"(num, channels, height, width)")
        dims = list(net.input_dim)
        shapes = [dims[4 * i:4 * i + 4] for i in range(len(inputs))]
    else:
        return None
    name = "input"
    suffix = 0
    while name in taken_names:
        suffix += 1
        name = f"input_{suffix}"
    layer = caffe_pb2.LayerParameter(name=name, type="Input", top=inputs)
    for dims in shapes:
        layer.input_param.shape.add().dim.extend(dims)
    return layer


def _batchnorm_needs_upgrade(layer):
    return (layer.type == "BatchNorm" and len(layer.param) == 3
            and any(p.lr_mult != 0 or p.decay_mult != 0 for p in layer.param))


#: BVLC Caffe numbers swish_param 147 and clip_param 148, the numbers at
#: which this schema keeps the py-R-FCN fork's roi_pooling_param and
#: smooth_l1_loss_param. A BVLC binary file's Swish or Clip parameters thus
#: decode into the fork's field (fields whose wire types differ stay unknown
#: fields of it); the layer's type says which message they really are.
_BVLC_FIELDS_BY_TYPE = {
    "Swish": ("roi_pooling_param", "swish_param"),
    "Clip": ("smooth_l1_loss_param", "clip_param"),
}


def _bvlc_field_misread(layer):
    fields = _BVLC_FIELDS_BY_TYPE.get(layer.type)
    return fields is not None and layer.HasField(fields[0])


def _move_bvlc_field(layer):
    """Re-decode a BVLC Swish/Clip layer's field 147/148 as its own message."""
    fork_field, bvlc_field = _BVLC_FIELDS_BY_TYPE[layer.type]
    raw = getattr(layer, fork_field).SerializeToString()
    layer.ClearField(fork_field)
    getattr(layer, bvlc_field).MergeFromString(raw)


def upgrade_net(net, filename="<net>"):
    """Return ``net`` in the current form, as Caffe's upgrade does.

    - V1 ``layers`` become ``layer`` entries: enum types become type strings
      (CONVOLUTION -> "Convolution", ...), ``blobs_lr`` / ``weight_decay`` /
      ``param`` / ``blob_share_mode`` become ParamSpec ``lr_mult`` /
      ``decay_mult`` / ``name`` / ``share_mode``, include/exclude, blobs, loss
      weights and every ``*_param`` are copied, and data layers' legacy
      preprocessing fields move into ``transform_param``;
    - legacy ``input`` with ``input_shape`` or ``input_dim`` becomes a leading
      ``Input`` layer named "input" (inputs without shapes, as in old weight
      files, are dropped);
    - BatchNorm layers that declare three ParamSpecs get lr_mult and
      decay_mult 0 on them (their statistics are not learned);
    - a Swish or Clip layer read from a BVLC binary file, whose parameters
      arrive in field 147 or 148 (the fork's roi_pooling_param and
      smooth_l1_loss_param here), gets them back as swish_param / clip_param.

    ``net`` itself is never modified: it is returned as is when nothing needs
    upgrading, otherwise an upgraded copy is returned. Other layers, including
    ``Python`` layers, pass through untouched. A net mixing ``layer`` and
    ``layers``, or holding V0 layers, raises ParseError.
    """
    if net.layer and net.layers:
        raise ParseError(
            f"{filename}: the net mixes {len(net.layer)} new-style 'layer' "
            f"entries with {len(net.layers)} V1 'layers' entries; write all "
            f"layers in one form")
    needs_upgrade = (
        bool(net.layers) or bool(net.input) or bool(net.input_shape)
        or bool(net.input_dim)
        or any(_batchnorm_needs_upgrade(l) or _bvlc_field_misread(l) for l in net.layer))
    if not needs_upgrade:
        return net

    upgraded = caffe_pb2.NetParameter()
    _copy_fields_except(net, upgraded, ("layer", "layers") + _NET_INPUT_FIELDS)

    if net.input or net.input_shape or net.input_dim:
        names = {l.name for l in net.layer} | {l.name for l in net.layers}
        input_layer = _input_layer(net, filename, names)
        if input_layer is None:
            log.info("%s: dropped the shapeless legacy inputs %s",
                     filename, list(net.input))
        else:
            upgraded.layer.add().CopyFrom(input_layer)
            log.info("%s: converted legacy inputs %s into Input layer '%s'",
                     filename, list(net.input), input_layer.name)

    if net.layers:
        for index, v1 in enumerate(net.layers):
            _upgrade_v1_layer(v1, upgraded.layer.add(), filename, index)
        log.info("%s: converted %d V1 layers to the current format",
                 filename, len(net.layers))
    else:
        upgraded.layer.extend(net.layer)

    for index, layer in enumerate(upgraded.layer):
        if _batchnorm_needs_upgrade(layer):
            for spec in layer.param:
                spec.lr_mult = 0
                spec.decay_mult = 0
            log.info("%s: set lr_mult and decay_mult of BatchNorm %s to 0",
                     filename, _layer_label(layer, index))
        if _bvlc_field_misread(layer):
            _move_bvlc_field(layer)
            log.info("%s: %s: BVLC %s parameters moved from %s to %s", filename,
                     _layer_label(layer, index), layer.type,
                     *_BVLC_FIELDS_BY_TYPE[layer.type])
    return upgraded


def upgrade_solver(solver, filename="<solver>"):
    """Return ``solver`` with the legacy ``solver_type`` enum turned into the
    ``type`` string and inline nets upgraded; ``solver`` is not modified."""
    upgraded = caffe_pb2.SolverParameter()
    upgraded.CopyFrom(solver)
    if upgraded.HasField("solver_type"):
        if upgraded.HasField("type"):
            raise ParseError(
                f"{filename}: the solver gives both the legacy solver_type "
                f"({caffe_pb2.SolverParameter.SolverType.Name(solver.solver_type)}) "
                f"and type ('{solver.type}'); keep only type")
        upgraded.type = _SOLVER_TYPES[upgraded.solver_type]
        upgraded.ClearField("solver_type")
        log.info("%s: converted solver_type to type '%s'", filename, upgraded.type)
    for name in ("net_param", "train_net_param"):
        if upgraded.HasField(name):
            getattr(upgraded, name).CopyFrom(
                upgrade_net(getattr(upgraded, name), f"{filename} ({name})"))
    for i, net in enumerate(upgraded.test_net_param):
        net.CopyFrom(upgrade_net(net, f"{filename} (test_net_param {i})"))
    return upgraded


# ---------------------------------------------------------------------------
# Readers

def read_net(source, upgrade=True):
    """Read a NetParameter from a prototxt path or prototxt text.

    ``source`` is a path (``str`` or ``os.PathLike``) or prototxt text (a
    ``str`` containing a newline or ``{``). The result is upgraded with
    :func:`upgrade_net` unless ``upgrade`` is false.
    """
    text, filename = _read_source(source)
    net = parse_text(text, caffe_pb2.NetParameter(), filename)
    return upgrade_net(net, filename) if upgrade else net


def read_solver(source, upgrade=True):
    """Read a SolverParameter from a prototxt path or prototxt text (see
    :func:`read_net` for ``source``), upgraded with :func:`upgrade_solver`."""
    text, filename = _read_source(source)
    solver = parse_text(text, caffe_pb2.SolverParameter(), filename)
    return upgrade_solver(solver, filename) if upgrade else solver
