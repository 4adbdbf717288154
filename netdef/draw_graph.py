"""A net as a graph in the conventions of Caffe's ``draw_net.py``, and its
Graphviz DOT text (written here, so a ``.dot`` file needs no Graphviz).

- Layers are boxes labelled with their name, type and key parameters
  (convolution: kernel size, stride, pad, num_output; pooling: the method,
  kernel size, stride, pad; inner product: num_output), coloured by type as
  Caffe does (convolution red, pooling orange, inner product purple, others
  blue); layers without bottoms (data and input layers) are yellow, which
  Caffe does not do.
- Blobs are grey octagons, one per blob name, as in Caffe.
- An in-place layer (one bottom, one top, the same name: ReLU, BatchNorm,
  Scale, Dropout) is Caffe's green box; here it is folded into its blob:
  the octagon turns green and lists the layer types after the blob name
  ("conv1 (in place: BatchNorm, Scale, ReLU)"; the layer names are its
  tooltip, shown by SVG viewers).
- Edges from a layer to its tops carry a label, the blob shape when known
  (Caffe writes num_output or the batch size there).

Labels of sideways graphs (LR, RL) put each item on a line, as Caffe does;
top-down graphs (TB, BT) take two lines where Caffe writes one.
"""
import dataclasses

from netdef import caffe_pb2

__all__ = ["NetGraph", "Node", "Edge", "build_graph", "to_dot", "is_in_place",
           "is_data_layer", "layer_label"]

#: Fill colours: Caffe's for layer types, in-place layers and blobs, ours for data.
LAYER_COLOR = "#6495ED"
TYPE_COLORS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
               "InnerProduct": "#CC33FF"}
DATA_COLOR = "#F7DC6F"
IN_PLACE_COLOR = "#90EE90"
BLOB_COLOR = "#E0E0E0"

RANKDIRS = ("LR", "TB", "BT", "RL")


@dataclasses.dataclass
class Node:
    """A layer box or a blob octagon; ``key`` is its DOT id."""
    key: str
    label: str
    shape: str
    color: str
    tooltip: str = ""


@dataclasses.dataclass
class Edge:
    tail: str
    head: str
    label: str = ""


@dataclasses.dataclass
class NetGraph:
    """Nodes (DOT id -> Node, in drawing order) and edges of one net."""
    name: str
    rankdir: str
    nodes: dict
    edges: list
    dpi: int = 0        # Graphviz's resolution of pictures; 0: its default (96)

    def count(self, shape):
        return sum(1 for node in self.nodes.values() if node.shape == shape)


def is_in_place(layer):
    """Caffe's in-place neuron: one bottom, one top, the same blob."""
    return len(layer.bottom) == 1 and list(layer.top) == list(layer.bottom)


def is_data_layer(layer):
    """A layer that reads no blob and writes some: data and input layers."""
    return not layer.bottom and bool(layer.top)


# ---------------------------------------------------------------------------
# Labels

def _size(p, name, default):
    """``3`` or ``3x1``: field ``name`` of message ``p``, given as one value,
    a repeated value (empty: ``default``) or as ``_h`` and ``_w`` fields."""
    fields = p.DESCRIPTOR.fields_by_name
    base = name[:-len("_size")] if name.endswith("_size") else name   # kernel_size -> kernel_h
    if f"{base}_h" in fields and p.HasField(f"{base}_h"):
        sizes = [getattr(p, f"{base}_h"), getattr(p, f"{base}_w")]
    elif fields[name].is_repeated:
        sizes = list(getattr(p, name)) or [default]
    else:
        sizes = [getattr(p, name)]
    return str(sizes[0]) if len(set(sizes)) == 1 else "x".join(str(s) for s in sizes)


def _convolution_facts(layer):
    p = layer.convolution_param
    facts = [f"kernel size: {_size(p, 'kernel_size', 1)}", f"stride: {_size(p, 'stride', 1)}",
             f"pad: {_size(p, 'pad', 0)}", f"num_output: {p.num_output}"]
    if _size(p, "dilation", 1) != "1":
        facts.append(f"dilation: {_size(p, 'dilation', 1)}")
    if p.group != 1:
        facts.append(f"group: {p.group}")
    return facts


def _pooling_facts(layer):
    p = layer.pooling_param
    if p.global_pooling:
        return ["global"]
    return [f"kernel size: {_size(p, 'kernel_size', 0)}", f"stride: {_size(p, 'stride', 1)}",
            f"pad: {_size(p, 'pad', 0)}"]


def _roi_pooling_facts(layer):
    p = layer.roi_pooling_param
    return [f"pooled: {p.pooled_h}x{p.pooled_w}", f"spatial_scale: {p.spatial_scale:g}"]


def _psroi_pooling_facts(layer):
    p = layer.psroi_pooling_param
    return [f"output_dim: {p.output_dim}", f"group_size: {p.group_size}",
            f"spatial_scale: {p.spatial_scale:g}"]


_FACTS = {
    "Convolution": _convolution_facts,
    "Deconvolution": _convolution_facts,
    "Pooling": _pooling_facts,
    "InnerProduct": lambda layer: [f"num_output: {layer.inner_product_param.num_output}"],
    "Data": lambda layer: [f"batch size: {layer.data_param.batch_size}"],
    "ROIPooling": _roi_pooling_facts,
    "PSROIPooling": _psroi_pooling_facts,
}


def layer_label(layer, rankdir):
    """``name (Type)`` then the key parameters; Pooling's type reads
    ``(MAX Pooling)``. Sideways graphs give each item a line (Caffe's
    choice); top-down graphs two lines, the parameters on the second (Caffe
    writes one line, too wide for a page)."""
    kind = layer.type
    if kind == "Pooling":
        method = caffe_pb2.PoolingParameter.PoolMethod.Name(layer.pooling_param.pool)
        kind = f"{method} Pooling"
    facts = _FACTS.get(layer.type, lambda _: [])(layer)
    if _is_vertical(rankdir):
        return "\n".join([f"{layer.name} ({kind})"] + ([", ".join(facts)] if facts else []))
    return "\n".join([layer.name, f"({kind})"] + facts)


def _is_vertical(rankdir):
    return rankdir in ("TB", "BT")


def _layer_color(layer):
    if is_data_layer(layer):
        return DATA_COLOR
    return TYPE_COLORS.get(layer.type, LAYER_COLOR)


# ---------------------------------------------------------------------------
# The graph

def build_graph(net, rankdir="LR", top_label=None):
    """The NetGraph of NetParameter ``net`` (all its layers: filter it by
    phase first). ``top_label(layer_index, layer, top_name)`` gives the text
    of the edge from a layer to a top (e.g. the blob shape); none if omitted.
    """
    if rankdir not in RANKDIRS:
        raise ValueError(f"rankdir must be one of {', '.join(RANKDIRS)}, found {rankdir!r}")
    nodes, edges, folded = {}, [], {}

    def blob(name):
        key = f"blob:{name}"
        nodes.setdefault(key, Node(key, name, "octagon", BLOB_COLOR))
        return key

    for index, layer in enumerate(net.layer):
        if is_in_place(layer):
            blob(layer.bottom[0])
            folded.setdefault(layer.bottom[0], []).append(layer)
            continue
        key = f"layer:{index}"
        nodes[key] = Node(key, layer_label(layer, rankdir), "box", _layer_color(layer))
        edges.extend(Edge(blob(name), key) for name in layer.bottom)
        for name in layer.top:
            text = top_label(index, layer, name) if top_label else ""
            edges.append(Edge(key, blob(name), text or ""))
    for name, layers in folded.items():
        _fold(nodes[f"blob:{name}"], layers, rankdir)
    return NetGraph(net.name or "Net", rankdir, nodes, edges)


def _fold(node, layers, rankdir):
    """Show in-place ``layers`` on their blob's octagon."""
    types = ", ".join(layer.type for layer in layers)
    node.label += f" (in place: {types})" if _is_vertical(rankdir) else f"\nin place: {types}"
    node.color = IN_PLACE_COLOR
    node.tooltip = ", ".join(f"{layer.name} ({layer.type})" for layer in layers)


# ---------------------------------------------------------------------------
# DOT text

def quote(text):
    """A DOT double-quoted string (newlines become DOT's centred ``\\n``)."""
    escaped = str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _attributes(**values):
    return ", ".join(f"{k}={quote(v)}" for k, v in values.items() if v != "")


def to_dot(graph):
    """The DOT text of ``graph``: one statement a line, nodes before edges."""
    lines = [f"digraph {quote(graph.name)} {{",
             f"  graph [{_attributes(rankdir=graph.rankdir, nodesep='0.25', ranksep='0.35', dpi=graph.dpi or '')}];",
             '  node [fontname="Helvetica", fontsize="11", style="filled", penwidth="0.8"];',
             '  edge [fontname="Helvetica", fontsize="10", arrowsize="0.6"];']
    for node in graph.nodes.values():
        lines.append(f"  {quote(node.key)} [{_attributes(label=node.label, shape=node.shape, fillcolor=node.color, tooltip=node.tooltip)}];")
    for edge in graph.edges:
        attributes = f" [{_attributes(label=edge.label)}]" if edge.label else ""
        lines.append(f"  {quote(edge.tail)} -> {quote(edge.head)}{attributes};")
    lines.append("}")
    return "\n".join(lines) + "\n"
