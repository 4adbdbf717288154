"""Receptive fields from a net's geometry.

    rf = receptive_field(net, "conv5")      # a Net or a VisualModel
    rf.size, rf.stride, rf.offset           # each (h, w), in input-blob pixels
    rf.box(y, x)                            # [x1, y1, x2, y2] of unit (y, x)

Unit ``(y, x)`` of a blob with field ``(size, stride, offset)`` reads the
input pixels ``offset + (y, x) * stride`` .. ``offset + (y, x) * stride +
size - 1`` (inclusive) along each axis: ``offset`` is where the field of
unit ``(0, 0)`` starts, negative when padding reaches outside the image.
Only the window arithmetic counts; zero padding and weights do not.

Walking the layers in the net's order, a blob's field follows from its
bottoms' (per axis, for a bottom field ``size r, stride j, offset o``):

- image inputs (4-D tops of a layer without bottoms): ``size 1, stride 1,
  offset 0``;
- Convolution, Pooling and LRN ``WITHIN_CHANNEL`` (kernel ``k``, stride
  ``s``, pad ``p``, dilation ``d``, ``k' = d (k - 1) + 1``): ``r + (k' - 1)
  j``, ``j s``, ``o - p j`` (a global pooling's kernel is its bottom's map);
- Deconvolution: top position ``t`` reads the bottom positions from
  ``(t + p - k' + 1) / s`` to ``(t + p) / s``: ``r + (k' - 1) j / s``,
  ``j / s``, ``o + (p - k' + 1) j / s``. These are the continuous bounds of
  the positions read (exact for ``s = 1``); the values are fractions then;
- Crop (offset ``c`` on that axis): ``r``, ``j``, ``o + c j``;
- per-pixel layers (activations, BatchNorm, Scale, Bias, Dropout, Split,
  Eltwise; Concat, Slice, Softmax and Tile along the batch or channel axis;
  LRN ``ACROSS_CHANNELS``): the union of their bottoms' fields (which must
  share a stride).

Any other layer (InnerProduct, Reshape, RoI pooling, Proposal...) ties no
output position to an input window: its tops, and whatever is computed from
them, have no receptive field, and asking for one is a DataError that lists
the blobs that have one.
"""
import dataclasses
from fractions import Fraction

from netdef.errors import DataError

__all__ = ["ReceptiveField", "receptive_field", "receptive_fields"]

_PER_PIXEL = {"ReLU", "Sigmoid", "TanH", "AbsVal", "BNLL", "ELU", "Exp", "Log", "Power",
              "PReLU", "Swish", "Clip", "Threshold", "Dropout", "BatchNorm", "Scale", "Bias",
              "Eltwise", "Split"}
# Layers that are per-pixel when they work along the batch or channel axis:
# type -> (parameter message, its axis field, its legacy field or None).
_ALONG_AXIS = {"Concat": ("concat_param", "axis", "concat_dim"),
               "Slice": ("slice_param", "axis", "slice_dim"),
               "Softmax": ("softmax_param", "axis", None),
               "Tile": ("tile_param", "axis", None)}


@dataclasses.dataclass(frozen=True)
class ReceptiveField:
    """The window of input-blob pixels a unit of a blob reads.

    size, stride, offset: ``(h, w)`` each, ints (fractions shown as floats
    only below a Deconvolution). Unit ``(y, x)`` reads rows ``offset[0] + y
    * stride[0]`` .. ``+ size[0] - 1`` and likewise columns."""
    size: tuple
    stride: tuple
    offset: tuple

    def box(self, y, x):
        """``[x1, y1, x2, y2]``: the inclusive input-pixel box of unit
        ``(y, x)`` (may reach outside the image)."""
        y1 = self.offset[0] + y * self.stride[0]
        x1 = self.offset[1] + x * self.stride[1]
        return [x1, y1, x1 + self.size[1] - 1, y1 + self.size[0] - 1]

    def center(self, y, x):
        """``(cy, cx)``: the input-pixel centre of unit ``(y, x)``'s field."""
        x1, y1, x2, y2 = self.box(y, x)
        return ((y1 + y2) / 2, (x1 + x2) / 2)


@dataclasses.dataclass(frozen=True)
class _Axis:
    """One axis of a field, exact: size r, stride j, offset o (Fractions)."""
    size: Fraction
    stride: Fraction
    offset: Fraction

    def window(self, kernel, stride, pad, dilation=1):
        span = dilation * (kernel - 1)
        return _Axis(self.size + span * self.stride, self.stride * stride,
                     self.offset - pad * self.stride)

    def transposed(self, kernel, stride, pad, dilation=1):
        span = dilation * (kernel - 1)
        step = self.stride / stride
        return _Axis(self.size + span * step, step, self.offset + (pad - span) * step)

    def shifted(self, cells):
        return _Axis(self.size, self.stride, self.offset + cells * self.stride)


_ORIGIN = (_Axis(Fraction(1), Fraction(1), Fraction(0)),) * 2


def _number(value):
    return int(value) if value.denominator == 1 else float(value)


def _public(axes):
    return ReceptiveField(*(tuple(_number(getattr(a, field)) for a in axes)
                            for field in ("size", "stride", "offset")))


def _union(fields, lp):
    """The union of several bottoms' fields (tuples of two _Axis)."""
    axes = []
    for along in zip(*fields):
        strides = {a.stride for a in along}
        if len(strides) > 1:
            shown = ", ".join(str(_number(s)) for s in sorted(strides))
            return f"layer '{lp.name}' ({lp.type}) joins bottoms at different strides ({shown})"
        start = min(a.offset for a in along)
        end = max(a.offset + a.size for a in along)
        axes.append(_Axis(end - start, along[0].stride, start))
    return tuple(axes)


def _axis_of(lp):
    message, field, legacy = _ALONG_AXIS[lp.type]
    p = getattr(lp, message)
    if legacy is not None and not p.HasField(field) and p.HasField(legacy):
        return int(getattr(p, legacy))
    return int(getattr(p, field))


def _is_per_pixel(lp, layer):
    if lp.type in _PER_PIXEL:
        return True
    if lp.type in _ALONG_AXIS:
        return _axis_of(lp) % 4 in (0, 1)
    return lp.type == "LRN" and layer.region == 0  # ACROSS_CHANNELS


def _spatial(lp, layer, field):
    """The top field of a sliding-window or cropping layer, or None."""
    if lp.type in ("Convolution", "Pooling"):
        dilation = getattr(layer, "dilation", (1, 1))
        return tuple(a.window(k, s, p, d) for a, k, s, p, d in
                     zip(field, layer.kernel, layer.stride, layer.pad, dilation))
    if lp.type == "Deconvolution":
        return tuple(a.transposed(k, s, p, d) for a, k, s, p, d in
                     zip(field, layer.kernel, layer.stride, layer.pad, layer.dilation))
    if lp.type == "LRN" and layer.region == 1:  # WITHIN_CHANNEL: a size x size window
        return tuple(a.window(layer.size, 1, layer.half) for a in field)
    if lp.type == "Crop" and len(layer.window) == 4:
        return tuple(a.shifted(cut.start) for a, cut in zip(field, layer.window[2:]))
    return None


def _top_fields(net, index, fields):
    """Field (tuple of _Axis) or reason (str) for each top of layer ``index``."""
    lp, layer = net.layer_params[index], net.layers[index]
    tops = list(lp.top)
    if not lp.bottom:
        return [_ORIGIN if len(net.blobs[t].shape) == 4 and lp.type != "Parameter"
                else f"'{t}' is not an image input (layer '{lp.name}', {lp.type})"
                for t in tops]
    per_pixel = _is_per_pixel(lp, layer)
    if not per_pixel and _spatial(lp, layer, _ORIGIN) is None:
        return [f"layer '{lp.name}' ({lp.type}) ties no output position to an input "
                "window"] * len(tops)
    used = list(lp.bottom[:1]) if lp.type == "Crop" else list(lp.bottom)
    missing = [b for b in used if not isinstance(fields.get(b), tuple)]
    if missing:
        # Keep the first reason: the layer where the chain to the image broke.
        return [fields.get(missing[0], f"no layer produces '{missing[0]}'")] * len(tops)
    if per_pixel:
        return [_union([fields[b] for b in used], lp)] * len(tops)
    return [_spatial(lp, layer, fields[b]) for b in used[:len(tops)]]


def _all_fields(net):
    net = getattr(net, "net", net)  # a VisualModel holds its Net
    fields = {}
    for index in range(len(net.layers)):
        fields.update(zip(net.layer_params[index].top, _top_fields(net, index, fields)))
    return net, fields


def _listed(net, fields):
    """Names of the blobs with a field, without the Net's inserted Split tops."""
    splits = {t for lp in net.layer_params if lp.type == "Split" for t in lp.top}
    return [name for name, f in fields.items() if isinstance(f, tuple) and name not in splits]


def receptive_fields(net):
    """``{blob name: ReceptiveField}`` for every blob of ``net`` (a Net or a
    VisualModel) that has one, in the net's order (the Split tops the Net
    inserts left out)."""
    net, fields = _all_fields(net)
    return {name: _public(fields[name]) for name in _listed(net, fields)}


def receptive_field(net, blob):
    """The :class:`ReceptiveField` of ``blob`` in ``net`` (a Net or a
    VisualModel), in the pixels of the net's image input blob. A blob the
    net lacks, or one whose units tie to no input window, is a DataError
    naming it and listing the blobs that have a field."""
    net, fields = _all_fields(net)
    valid = ", ".join(_listed(net, fields)) or "none"
    if blob not in net.blobs:
        raise DataError(f"receptive field: the net has no blob '{blob}' "
                        f"(blobs with a receptive field: {valid})")
    found = fields.get(blob, f"no layer produces '{blob}'")
    if not isinstance(found, tuple):
        raise DataError(f"receptive field: blob '{blob}' has none: {found} "
                        f"(blobs with a receptive field: {valid})")
    return _public(found)
