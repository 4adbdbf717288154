"""Draw a net, as Caffe's ``python/draw_net.py`` does, with blob shapes::

    python -m netdef.draw NET.prototxt OUT.png|svg|pdf|dot
        [--rankdir LR|TB|BT|RL] [--phase ALL|TRAIN|TEST] [--input NAME=D1,D2,...]
        [--dpi N]

The layout and styles are Caffe's (``netdef.draw_graph``); each edge from a
layer to its top carries the top's shape, found by building the net on the
CPU (no weights). With ``--phase ALL`` (Caffe's default) every layer is
drawn and the shapes come from the TRAIN and TEST nets, each edge with the
shape of the phases its layer is in. A net that does not build (a data
layer that needs its dataset, a layer type this engine lacks) is drawn
without shapes, and a note on stderr says why. ``--input NAME=D1,D2,...``
gives the shape of a top of a data or Input layer (of the drawn phase; of
either phase with ALL): while shapes are worked out, an Input layer of the
given shapes stands in for each such layer, which must have all its tops
given. The drawing shows the layers as written.

The ``.dot`` text is written by this module; pictures are rendered by
Graphviz through its Python binding (the ``draw`` extra). When a picture
cannot be made the graph is written beside it as ``OUT.dot``, and the
message says what to install; exit status 2. Errors in the prototxt or the
options are one line on stderr, exit status 2.
"""
import argparse
import sys
from pathlib import Path

from netdef import caffe_pb2
from netdef.draw_graph import RANKDIRS, build_graph, is_data_layer, to_dot
from netdef.errors import EngineError, NetDefinitionError
from netdef.graph import filter_net, layer_included
from netdef.net import Net
from netdef.schema import read_net

__all__ = ["draw_net", "net_graph", "render", "with_input_layers", "main"]

PHASES = ("ALL", "TRAIN", "TEST")
FORMATS = ("png", "svg", "pdf", "dot")
INSTALL = ("pip install -e '.[draw]' for the graphviz Python package and "
           "apt-get install graphviz for its dot program")
EXIT_USER_ERROR = 2


class GraphvizMissing(Exception):
    """The graphviz Python package or Graphviz's dot program is missing."""


# ---------------------------------------------------------------------------
# Shapes

def with_input_layers(net, shapes):
    """A copy of NetParameter ``net`` in which each layer without bottoms
    whose tops are named in ``shapes`` (blob name -> shape) is an Input
    layer of those shapes, with the same name, tops and phase rules.
    NetDefinitionError when such a layer has a top not named in ``shapes``,
    or a name in ``shapes`` is no top of a layer without bottoms."""
    result = caffe_pb2.NetParameter()
    result.CopyFrom(net)
    used = set()
    for layer in result.layer:
        given = [top for top in layer.top if top in shapes]
        if not given or not is_data_layer(layer):
            continue
        missing = [top for top in layer.top if top not in shapes]
        if missing:
            raise NetDefinitionError(
                f"--input gives the shape of {', '.join(given)} but not of {', '.join(missing)}, "
                f"the other top(s) of layer '{layer.name}' (type {layer.type}); give every one")
        stand_in = caffe_pb2.LayerParameter(name=layer.name, type="Input", top=layer.top,
                                            include=layer.include, exclude=layer.exclude)
        for top in layer.top:
            stand_in.input_param.shape.add().dim.extend(shapes[top])
        layer.CopyFrom(stand_in)
        used.update(layer.top)
    unknown = [name for name in shapes if name not in used]
    if unknown:
        sources = [top for layer in net.layer if is_data_layer(layer) for top in layer.top]
        raise NetDefinitionError(
            f"--input {unknown[0]}: no data or Input layer writes a blob of that name "
            f"(their tops: {', '.join(dict.fromkeys(sources)) or 'none'})")
    return result


def phase_shapes(model, phases, note):
    """{phase: {blob name: shape}} for each of ``phases`` whose net builds
    from ``model`` (a path or a NetParameter); ``note`` tells why not."""
    found = {}
    for phase in phases:
        try:
            net = Net(model, phase, plan=False)  # shapes need no fused steps
        except EngineError as exc:
            note(f"note: no blob shapes for the {phase} net, which does not build here: {exc} "
                 "(--input NAME=D1,D2,... gives the shapes of a data layer's tops)")
            continue
        found[phase] = {name: blob.shape for name, blob in net.blobs.items()}
    return found


def shape_text(shape):
    return "x".join(str(d) for d in shape) if shape else "scalar"


def shape_labeler(net, shapes):
    """``top_label`` for ``build_graph``: the shape of a layer's top in the
    phases the layer is in (one shape, or one line per phase if they differ)."""
    level, stages = net.state.level, set(net.state.stage)

    def label(index, layer, top):
        found = [(phase, by_name[top]) for phase, by_name in shapes.items()
                 if top in by_name and layer_included(layer, phase, level, stages)]
        if len({shape for _, shape in found}) == 1:
            return shape_text(found[0][1])
        return "\n".join(f"{shape_text(shape)} ({phase})" for phase, shape in found)
    return label


# ---------------------------------------------------------------------------
# Graph and picture

def net_graph(net, phase="ALL", rankdir="LR", inputs=None, source=None, note=None):
    """The NetGraph of NetParameter ``net`` in ``phase`` (ALL: every layer),
    edges labelled with blob shapes where the net builds. ``inputs`` (blob
    name -> shape) give data layers' top shapes (``with_input_layers``);
    ``source``, the prototxt path, lets build errors name the file;
    ``note`` receives the notes about missing shapes (default: stderr)."""
    note = note or (lambda text: print(text, file=sys.stderr))
    drawn = net if phase == "ALL" else filter_net(net, phase)[0]
    model = with_input_layers(drawn, inputs) if inputs else (source or net)
    phases = ("TRAIN", "TEST") if phase == "ALL" else (phase,)
    shapes = phase_shapes(model, phases, note)
    return build_graph(drawn, rankdir, shape_labeler(net, shapes) if shapes else None)


def render(dot_text, fmt):
    """The picture of ``dot_text`` in ``fmt`` (png, svg, pdf) as bytes;
    GraphvizMissing when the binding or the dot program is not there."""
    try:
        import graphviz  # the optional "draw" extra
    except ImportError:
        raise GraphvizMissing("the graphviz Python package is not installed") from None
    try:
        return graphviz.Source(dot_text).pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        raise GraphvizMissing("Graphviz's dot program is not installed (or not on PATH)") from None
    except graphviz.CalledProcessError as exc:
        detail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
        raise EngineError(f"Graphviz's dot failed: {detail[-1] if detail else exc}") from None


def output_format(path):
    """The format named by ``path``'s extension; EngineError if unknown."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise EngineError(f"{path}: unknown output format '{Path(path).suffix}'; the file name "
                          f"must end in {', '.join('.' + f for f in FORMATS[:-1])} or .{FORMATS[-1]}")
    return fmt


def _write(path, content):
    try:
        Path(path).write_bytes(content if isinstance(content, bytes) else content.encode())
    except OSError as exc:
        raise EngineError(f"{path}: cannot write the file: {exc.strerror}") from None


def draw_net(net, out, phase="ALL", rankdir="LR", inputs=None, source=None, note=None, dpi=0):
    """Write the picture (or DOT text) of NetParameter ``net`` to ``out``,
    in the format its extension names (``dpi``: resolution of a PNG, 0 for
    Graphviz's 96); returns the NetGraph. Raises GraphvizMissing after
    writing the DOT text beside ``out`` as ``.dot``."""
    fmt = output_format(out)
    graph = net_graph(net, phase, rankdir, inputs, source, note)
    graph.dpi = dpi
    dot_text = to_dot(graph)
    if fmt == "dot":
        _write(out, dot_text)
        return graph
    try:
        picture = render(dot_text, fmt)
    except GraphvizMissing:
        _write(Path(out).with_suffix(".dot"), dot_text)
        raise
    _write(out, picture)
    return graph


# ---------------------------------------------------------------------------
# Command line

def _input_shape(item):
    name, equals, dims = item.partition("=")
    try:
        shape = tuple(int(d) for d in dims.replace("x", ",").split(","))
    except ValueError:
        shape = None
    if not name or not equals or not shape:
        raise argparse.ArgumentTypeError(f"expects NAME=D1,D2,..., found {item!r}")
    return name, shape


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m netdef.draw",
        description="Draw a prototxt network as Caffe's draw_net.py does (layers as boxes, "
                    "blobs as octagons, in-place layers folded into their blob), with the "
                    "blob shapes on the edges.")
    parser.add_argument("prototxt", help="network definition")
    parser.add_argument("output", help="picture to write: .png, .svg or .pdf (needs Graphviz), "
                                       "or .dot (the graph's text)")
    parser.add_argument("--rankdir", choices=RANKDIRS, default="LR",
                        help="direction of the layout: LR (left to right, Caffe's default), "
                             "TB (top down), BT, RL")
    parser.add_argument("--phase", choices=PHASES, default="ALL",
                        help="layers of this phase only; ALL (Caffe's default) draws every layer")
    parser.add_argument("--input", action="append", type=_input_shape, default=[],
                        metavar="NAME=D1,D2,...",
                        help="shape of a top of a data or Input layer, e.g. data=1,3,600,1000 "
                             "(repeat for each top); lets a net whose data layer needs its "
                             "dataset be drawn with shapes")
    parser.add_argument("--dpi", type=int, default=0,
                        help="resolution of a PNG (Graphviz's default: 96); lower gives a "
                             "smaller picture")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        output_format(args.output)
        net = read_net(Path(args.prototxt))
        graph = draw_net(net, args.output, args.phase, args.rankdir, dict(args.input),
                         source=args.prototxt, dpi=args.dpi)
    except GraphvizMissing as exc:
        dot_path = Path(args.output).with_suffix(".dot")
        print(f"error: cannot draw {args.output}: {exc}; install {INSTALL}. Wrote the graph "
              f"to {dot_path}, which `dot -T{output_format(args.output)} {dot_path} -o "
              f"{args.output}` renders", file=sys.stderr)
        return EXIT_USER_ERROR
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"drew '{graph.name}' ({args.phase}): {graph.count('box')} layer boxes, "
          f"{graph.count('octagon')} blobs -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
