"""The R-FCN ResNet-101 trunk as a graph of its own, for the side-by-side
benchmark (``bench.trunk_vs_pytorch``) and its PyTorch translation
(``bench.torch_graph``): the cut from the prototxt, Caffe's blob shapes of
the trunk's layer types, and the seeded loss that drives our backward.
"""
from pathlib import Path

from netdef import caffe_pb2, graph
from netdef.errors import NetDefinitionError
from netdef.schema import read_net

ROOT = Path(__file__).resolve().parents[1]
PROTOTXT = ROOT / "prototxt" / "rfcn_resnet101.prototxt"
FIRST, LAST = "conv1", "conv_new_1_relu"
SEED_BLOB, SEED_LOSS = "output_diff", "output_diff_loss"


def cut_trunk(net_param, height=600, width=1000, first=FIRST, last=LAST):
    """The TEST-phase layers ``first`` .. ``last`` that ``last``'s top
    depends on, fed by an Input of 1x3xHxW (a new NetParameter).

    Layers in that range that the output does not need (the RPN head, the
    proposal layer) are left out; so is the data layer, replaced by the
    Input whose top is the one blob the kept layers read but do not make.
    """
    filtered, _ = graph.filter_net(net_param, "TEST")
    layers = list(filtered.layer)
    names = [lp.name for lp in layers]
    for name in (first, last):
        if name not in names:
            raise NetDefinitionError(f"'{net_param.name}': no TEST-phase layer named '{name}'")
    span = layers[names.index(first):names.index(last) + 1]
    needed, kept = set(span[-1].top), []
    for lp in reversed(span):
        if needed.intersection(lp.top):
            kept.append(lp)
            needed.difference_update(lp.top)
            needed.update(lp.bottom)
    kept.reverse()
    produced, external = set(), []
    for lp in kept:
        external += [b for b in lp.bottom if b not in produced and b not in external]
        produced.update(lp.top)
    if len(external) != 1:
        raise NetDefinitionError(f"'{net_param.name}' {first} .. {last} reads {len(external)} "
                                 f"blobs it does not make ({', '.join(external)}); expected one")
    trunk = caffe_pb2.NetParameter(name=f"{net_param.name} trunk ({first} .. {last})")
    data = trunk.layer.add(name=external[0], type="Input", top=external)
    data.input_param.shape.add(dim=[1, 3, int(height), int(width)])
    trunk.layer.extend(kept)
    return trunk


def trunk_output(net_param):
    """The name of the graph's output blob (the last layer's top)."""
    return net_param.layer[-1].top[0]


def _pair(values, h, w, default):
    """A (h, w) pair from a repeated Caffe field and its _h/_w variants."""
    if h or w:
        return int(h), int(w)
    values = list(values) or [default]
    return int(values[0]), int(values[-1])


def conv_geometry(p):
    """(kernel, stride, pad, dilation) pairs of a ConvolutionParameter."""
    return (_pair(p.kernel_size, p.kernel_h, p.kernel_w, 1),
            _pair(p.stride, p.stride_h, p.stride_w, 1),
            _pair(p.pad, p.pad_h, p.pad_w, 0),
            _pair(p.dilation, 0, 0, 1))


def pool_geometry(p):
    """(kernel, stride, pad) pairs of a PoolingParameter (no global pooling)."""
    return (_pair([p.kernel_size] if p.HasField("kernel_size") else [], p.kernel_h,
                  p.kernel_w, 1),
            _pair([p.stride], p.stride_h, p.stride_w, 1),
            _pair([p.pad], p.pad_h, p.pad_w, 0))


def _pooled(size, kernel, stride, pad):
    """Caffe's pooled size: ceil mode, the last window starting inside."""
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def blob_shapes(net_param):
    """Blob name -> shape, by Caffe's shape rules for the trunk's layer
    types (Input, Convolution, Pooling MAX, BatchNorm, Scale, ReLU,
    Eltwise, Split); other types are a NetDefinitionError."""
    shapes = {}
    for lp in net_param.layer:
        if lp.type == "Input":
            for top, shape in zip(lp.top, lp.input_param.shape):
                shapes[top] = tuple(int(d) for d in shape.dim)
            continue
        n, c, h, w = shapes[lp.bottom[0]]
        if lp.type == "Convolution":
            (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv_geometry(lp.convolution_param)
            out = (n, int(lp.convolution_param.num_output),
                   (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1,
                   (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1)
        elif lp.type == "Pooling":
            (kh, kw), (sh, sw), (ph, pw) = pool_geometry(lp.pooling_param)
            out = (n, c, _pooled(h, kh, sh, ph), _pooled(w, kw, sw, pw))
        elif lp.type in ("BatchNorm", "Scale", "ReLU", "Eltwise", "Split"):
            out = (n, c, h, w)
        else:
            raise NetDefinitionError(f"layer '{lp.name}': type {lp.type} is not part of the "
                                     "trunk translation")
        for top in lp.top:
            shapes[top] = out
    return shapes


def with_seeded_loss(net_param):
    """A copy of the graph whose output feeds ``Eltwise PROD(output,
    output_diff)`` with loss_weight 1, ``output_diff`` a second Input of the
    output's shape: ``backward()`` then seeds the output's diff with it."""
    output = trunk_output(net_param)
    seeded = caffe_pb2.NetParameter()
    seeded.CopyFrom(net_param)
    seed = seeded.layer.add(name=SEED_BLOB, type="Input", top=[SEED_BLOB])
    seed.input_param.shape.add(dim=blob_shapes(net_param)[output])
    loss = seeded.layer.add(name=SEED_LOSS, type="Eltwise", bottom=[output, SEED_BLOB],
                            top=[SEED_LOSS], loss_weight=[1.0])
    loss.eltwise_param.operation = caffe_pb2.EltwiseParameter.PROD
    return seeded


def read_trunk(height=600, width=1000):
    """The trunk of prototxt/rfcn_resnet101.prototxt at HxW."""
    return cut_trunk(read_net(str(PROTOTXT)), height, width)
