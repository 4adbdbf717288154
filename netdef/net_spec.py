"""Write nets in Python, as with pycaffe's ``caffe.net_spec``.

::

    from netdef.net_spec import NetSpec, layers as L, params as P

    n = NetSpec()
    n.data, n.label = L.Data(source="train_lmdb", batch_size=64, ntop=2,
                             transform_param=dict(scale=1 / 256))
    n.conv1 = L.Convolution(n.data, kernel_size=3, num_output=64,
                            weight_filler=dict(type="xavier"),
                            param=[dict(lr_mult=1), dict(lr_mult=2)])
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.relu1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.to_proto()        # a caffe_pb2.NetParameter; str() of it is prototxt
    n.to_prototxt()     # the prototxt text

The rules are pycaffe's:

- ``L.<Type>(*bottoms, **params)`` makes a layer of that type; it returns
  its top (``ntop=1``, the default), a tuple of ``ntop`` tops, or, with
  ``ntop=0``, the layer itself (assign it to name it: ``n.silence = ...``).
- A keyword ending in ``param`` (``param``, ``transform_param``,
  ``loss_param``, ...) is a field of the LayerParameter. Any other keyword is
  a field of the type's own parameter message (the LayerParameter field
  whose message is ``<Type>Parameter``: ``Convolution`` ->
  ``convolution_param``) when that message has it, else a field of the
  LayerParameter itself (``name``, ``loss_weight``, ``include``,
  ``propagate_down``, ...).
- Lists fill repeated fields (a single value counts as a list of one),
  dicts fill messages, enum fields take the number (``P.Pooling.MAX``) or,
  as in prototxt, the name (``"MAX"``).
- ``in_place=True``: the tops are the bottoms.
- A top is named by the NetSpec attribute (or item: ``n["rpn/output"]``)
  it is assigned to; an unnamed top is named ``<Type><count>``
  (``Convolution1``). A layer is named after its first top unless
  ``name=`` says otherwise; a layer without tops takes its attribute name.
- ``to_proto`` writes the layers needed for the assigned tops, in the order
  the tops were assigned, each after the layers it reads.

Departures, each where pycaffe fails: an unknown keyword, enum name or
value of the wrong type is a NetDefinitionError naming the layer type, the
field and the close matches (pycaffe raises AttributeError from protobuf,
or writes a broken net); a few types that share another type's message
route their keywords to it (``Deconvolution`` -> ``convolution_param``, the
softmax losses -> ``softmax_param``, ``SmoothL1LossOHEM`` ->
``smooth_l1_loss_param``); automatic names skip names already assigned.
"""
import collections
import difflib
import itertools

from google.protobuf.message import Message

from netdef import caffe_pb2
from netdef.errors import NetDefinitionError
from netdef.schema import format_net

__all__ = ["NetSpec", "Top", "Function", "layers", "params", "to_proto"]

_LAYER_FIELDS = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name

#: Type name -> LayerParameter field of its own message, found as pycaffe
#: does: the field whose message type is ``<Type>Parameter``.
TYPE_PARAM_FIELDS = {
    field.message_type.name[:-len("Parameter")]: name
    for name, field in _LAYER_FIELDS.items()
    if name.endswith("_param") and field.message_type is not None
    and field.message_type.name.endswith("Parameter")
}
#: Types that read another type's message (no ``<Type>Parameter`` exists).
TYPE_PARAM_FIELDS.update({
    "Deconvolution": "convolution_param",
    "SoftmaxWithLoss": "softmax_param",
    "SoftmaxWithLossOHEM": "softmax_param",
    "SmoothL1LossOHEM": "smooth_l1_loss_param",
})

#: Keywords the NetSpec itself reads, never written to the message.
_SPEC_KEYWORDS = ("ntop", "in_place")
#: LayerParameter fields the NetSpec fills from the graph.
_GRAPH_FIELDS = ("type", "bottom", "top")


# ---------------------------------------------------------------------------
# Python values -> protobuf fields

def _close(wrong, names):
    close = difflib.get_close_matches(wrong, list(names), n=3, cutoff=0.6)
    return (" Did you mean " + " or ".join(f"'{n}'" for n in close) + "?") if close else ""


def _enum_value(field, value, where):
    """The number of enum ``field`` for ``value`` (a name or a number)."""
    enum = field.enum_type
    if isinstance(value, str):
        if value not in enum.values_by_name:
            raise NetDefinitionError(
                f"{where}: {value!r} is not a {enum.name} value (one of "
                f"{', '.join(enum.values_by_name)}).{_close(value, enum.values_by_name)}")
        return enum.values_by_name[value].number
    if isinstance(value, int) and not isinstance(value, bool) \
            and value in enum.values_by_number:
        return value
    raise NetDefinitionError(
        f"{where}: expected a {enum.name} name or number (one of "
        f"{', '.join(enum.values_by_name)}), found {value!r}")


def _scalar(field, value, where):
    """``value`` checked for scalar ``field`` (enum names become numbers)."""
    if field.enum_type is not None:
        return _enum_value(field, value, where)
    if isinstance(value, (dict, list, tuple, Message)):
        raise NetDefinitionError(
            f"{where}: expected {_kind(field)}, found {type(value).__name__} {value!r}")
    return value


def _kind(field):
    """What a scalar field holds, for messages ("a float")."""
    return {field.TYPE_STRING: "a string", field.TYPE_BOOL: "a bool", field.TYPE_FLOAT: "a float",
            field.TYPE_DOUBLE: "a float", field.TYPE_BYTES: "bytes"}.get(field.type, "an integer")


def _fill_message(message, value, where):
    """Fill ``message`` from a dict of its fields or a message of its type."""
    if isinstance(value, Message):
        if value.DESCRIPTOR is not message.DESCRIPTOR:
            raise NetDefinitionError(
                f"{where}: expected a {message.DESCRIPTOR.name}, "
                f"found a {value.DESCRIPTOR.name}")
        message.MergeFrom(value)
        return
    if not isinstance(value, dict):
        raise NetDefinitionError(
            f"{where}: expected a dict of {message.DESCRIPTOR.name} fields, "
            f"found {type(value).__name__} {value!r}")
    message.SetInParent()  # an empty dict still writes the message
    fields = message.DESCRIPTOR.fields_by_name
    for key, item in value.items():
        if key not in fields:
            raise NetDefinitionError(
                f"{where}: {message.DESCRIPTOR.name} has no field '{key}'.{_close(key, fields)}")
        assign_field(message, key, item, f"{where}.{key}")


def assign_field(message, name, value, where):
    """Set field ``name`` of ``message`` from a Python value, pycaffe's way:
    lists (or a single value) fill repeated fields, dicts fill messages.
    ``where`` names the field in error messages."""
    field = message.DESCRIPTOR.fields_by_name[name]
    target = getattr(message, name)
    if field.is_repeated:
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if field.message_type is not None:
                _fill_message(target.add(), item, where)
            else:
                _append(target, field, item, where)
    elif field.message_type is not None:
        _fill_message(target, value, where)
    else:
        try:
            setattr(message, name, _scalar(field, value, where))
        except (TypeError, ValueError) as exc:
            raise NetDefinitionError(
                f"{where}: expected {_kind(field)}, found {value!r} ({exc})") from None


def _append(container, field, item, where):
    try:
        container.append(_scalar(field, item, where))
    except (TypeError, ValueError) as exc:
        raise NetDefinitionError(
            f"{where}: expected {_kind(field)} for each item, found {item!r} ({exc})") from None


def layer_message(type_name, keywords):
    """A LayerParameter of ``type_name`` holding the keyword parameters
    (pycaffe's routing, module docstring); no name, bottoms or tops yet."""
    layer = caffe_pb2.LayerParameter(type=type_name)
    own_field = TYPE_PARAM_FIELDS.get(type_name)
    own = getattr(layer, own_field) if own_field else None
    for key, value in keywords.items():
        where = f"L.{type_name}: {key}"
        if key in _GRAPH_FIELDS:
            raise NetDefinitionError(
                f"L.{type_name}: '{key}' is set by the NetSpec (bottoms are the positional "
                "arguments, tops the names they are assigned to), not by a keyword")
        if not key.endswith("param") and own is not None \
                and key in own.DESCRIPTOR.fields_by_name:
            assign_field(own, key, value, f"L.{type_name}: {own_field}.{key}")
        elif key in _LAYER_FIELDS:
            assign_field(layer, key, value, where)
        else:
            raise NetDefinitionError(_unknown_keyword(type_name, key, own_field, own))
    return layer


def _unknown_keyword(type_name, key, own_field, own):
    names = list(_LAYER_FIELDS) + list(_SPEC_KEYWORDS)
    if own is not None:
        names += list(own.DESCRIPTOR.fields_by_name)
        searched = f"{own.DESCRIPTOR.name} ({own_field}) or LayerParameter"
    else:
        searched = f"LayerParameter (type {type_name} has no parameter message of its own)"
    return (f"L.{type_name}: unknown keyword '{key}': not a field of {searched}."
            f"{_close(key, names)}")


# ---------------------------------------------------------------------------
# The graph: tops, layer functions, naming

class Top:
    """One output blob of a layer: ``fn.tops[index]``."""

    def __init__(self, fn, index):
        self.fn = fn
        self.index = index

    def to_proto(self):
        """A NetParameter with every layer this top needs (automatic names)."""
        return to_proto(self)

    def __repr__(self):
        return f"<Top {self.index} of L.{self.fn.type_name}>"


class Function:
    """One layer: its type, bottoms (Tops), parameters and ``ntop`` tops.
    The parameters are checked when it is made (``layer_message``)."""

    def __init__(self, type_name, inputs, keywords):
        keywords = dict(keywords)
        self.type_name = type_name
        self.ntop = keywords.pop("ntop", 1)
        self.in_place = keywords.pop("in_place", False)
        self.inputs = tuple(inputs)
        self._check_graph_arguments()
        self.message = layer_message(type_name, keywords)
        self.tops = tuple(Top(self, i) for i in range(self.ntop))

    def _check_graph_arguments(self):
        where = f"L.{self.type_name}"
        if not isinstance(self.ntop, int) or isinstance(self.ntop, bool) or self.ntop < 0:
            raise NetDefinitionError(f"{where}: ntop must be an integer >= 0, found {self.ntop!r}")
        for i, bottom in enumerate(self.inputs):
            if not isinstance(bottom, Top):
                raise TypeError(
                    f"{where}: bottom {i} is {type(bottom).__name__} {bottom!r}; bottoms are "
                    "tops made by other layers (n.data, L.ReLU(...), ...)")
        if self.in_place and self.ntop != len(self.inputs):
            raise NetDefinitionError(
                f"{where}: in_place=True writes each top over its bottom, so it needs "
                f"as many tops as bottoms; found {len(self.inputs)} bottom(s) and ntop={self.ntop}")

    def to_proto(self):
        """A NetParameter with this layer and the layers it needs."""
        return to_proto(self)

    def __repr__(self):
        return f"<L.{self.type_name} with {len(self.inputs)} bottom(s), {self.ntop} top(s)>"


class _Namer:
    """Names of tops and layers: the assigned ones, then ``<Type><count>``."""

    def __init__(self, assigned):
        self.names = dict(assigned)      # Top or Function -> name
        self.taken = set(self.names.values())
        self.counts = collections.Counter()

    def name(self, item, type_name):
        if item not in self.names:
            for count in itertools.count(self.counts[type_name] + 1):
                candidate = f"{type_name}{count}"
                if candidate not in self.taken:
                    break
            self.counts[type_name] = count
            self.taken.add(candidate)
            self.names[item] = candidate
        return self.names[item]


def _emit(fn, layers, namer):
    """Append ``fn``'s LayerParameter to ``layers`` (an ordered dict by
    Function) after the layers it reads. Iterative: deep nets exceed
    Python's recursion limit."""
    stack = [fn]
    while stack:
        current = stack[-1]
        if current in layers:
            stack.pop()
            continue
        pending = [t.fn for t in current.inputs if t.fn not in layers]
        if pending:
            stack.extend(reversed(pending))
            continue
        stack.pop()
        layers[current] = _layer_of(current, layers, namer)


def _layer_of(fn, layers, namer):
    layer = caffe_pb2.LayerParameter()
    layer.CopyFrom(fn.message)
    layer.bottom.extend(layers[t.fn].top[t.index] for t in fn.inputs)
    if fn.in_place:
        layer.top.extend(layer.bottom)
    else:
        layer.top.extend(namer.name(t, fn.type_name) for t in fn.tops)
    if not fn.message.HasField("name"):
        first = fn.tops[0] if fn.tops else fn
        layer.name = namer.name(first, fn.type_name)
    return layer


def _net(roots, assigned, name):
    namer = _Namer(assigned)
    layers = collections.OrderedDict()
    for root in roots:
        _emit(root.fn if isinstance(root, Top) else root, layers, namer)
    net = caffe_pb2.NetParameter()
    if name is not None:
        net.name = name
    net.layer.extend(layers.values())
    return net


def to_proto(*tops):
    """A NetParameter with every layer needed to compute ``tops`` (Tops or
    layers without tops); every blob and layer is named automatically."""
    return _net(tops, {}, None)


class NetSpec:
    """Tops assigned as attributes (or items) name their blobs; ``to_proto``
    writes every layer needed to compute them."""

    def __init__(self):
        super().__setattr__("tops", collections.OrderedDict())

    def __setattr__(self, name, value):
        if isinstance(value, tuple):
            raise TypeError(
                f"NetSpec: '{name}' is given {len(value)} tops; assign them to as many "
                f"names (n.a, n.b = L.{value[0].fn.type_name}(..., ntop={len(value)}))"
                if value and isinstance(value[0], Top) else f"NetSpec: '{name}' is given a tuple")
        if not isinstance(value, (Top, Function)):
            raise TypeError(f"NetSpec: '{name}' must be a top made by a layer (L.<Type>(...)), "
                            f"found {type(value).__name__}")
        self.tops[name] = value

    def __getattr__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(f"NetSpec has no top '{name}'."
                                 f"{_close(name, self.tops)}") from None

    __setitem__ = __setattr__

    def __getitem__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise KeyError(f"NetSpec has no top '{name}'.{_close(name, self.tops)}") from None

    def keys(self):
        return list(self.tops)

    def vals(self):
        return list(self.tops.values())

    def to_proto(self, name=None):
        """The NetParameter of the assigned tops (named ``name`` if given)."""
        assigned = {value: key for key, value in self.tops.items()}
        return _net(self.tops.values(), assigned, name)

    def to_prototxt(self, name=None):
        """The prototxt text of ``to_proto(name)``."""
        return format_net(self.to_proto(name))


class Layers:
    """``layers.<Type>(*bottoms, **params)`` makes a layer of any type name."""

    def __getattr__(self, type_name):
        if type_name.startswith("_"):
            raise AttributeError(type_name)

        def make_layer(*bottoms, **keywords):
            fn = Function(type_name, bottoms, keywords)
            if fn.ntop == 0:
                return fn
            return fn.tops[0] if fn.ntop == 1 else fn.tops
        make_layer.__name__ = type_name
        return make_layer


class _EnumConstants:
    """The constants of one ``<Name>Parameter`` message: ``params.Pooling.MAX``."""

    def __init__(self, message_class):
        self._message = message_class

    def __getattr__(self, constant):
        try:
            return getattr(self._message, constant)
        except AttributeError:
            names = [v.name for enum in self._message.DESCRIPTOR.enum_types for v in enum.values]
            raise AttributeError(
                f"{self._message.DESCRIPTOR.name} has no constant '{constant}'."
                f"{_close(constant, names)}") from None


class Parameters:
    """``params.<Name>.<CONSTANT>``: the enum values of ``<Name>Parameter``."""

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        message = getattr(caffe_pb2, name + "Parameter", None)
        if message is None:
            messages = [m[:-len("Parameter")] for m in caffe_pb2.DESCRIPTOR.message_types_by_name
                        if m.endswith("Parameter")]
            raise AttributeError(f"caffe_pb2 has no message {name}Parameter.{_close(name, messages)}")
        return _EnumConstants(message)


layers = Layers()
params = Parameters()
