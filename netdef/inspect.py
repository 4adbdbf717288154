"""Shape report of a network: ``python -m netdef.inspect NET.prototxt``.

Builds the net (CPU, no weights) and prints, per layer: type, bottoms and
tops with shapes, parameter count, multiply-adds and the memory of its top
blobs, then the totals. Errors in the prototxt are printed as one line
naming file, line, layer and blob, with exit status 2; so is a net that needs
more memory than the budget (``netdef.memory_budget``; ``--memory-limit``),
which is refused before anything that large is allocated.

Multiply-adds count the convolutions and inner products (as Kaiming He's
ResNet table does): ``weight count x output positions``.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

from netdef.device import device_from_index
from netdef.errors import EngineError, NetDefinitionError
from netdef.net import Net

COUNTED_TYPES = ("Convolution", "InnerProduct")
RECURRENT_TYPES = ("RNN", "LSTM")
DEFAULT_NET = Path(__file__).resolve().parent.parent / "prototxt" / "resnet50_deploy.prototxt"


def _recurrent_multiply_adds(layer, bottoms):
    """RNN / LSTM: every 2-D weight once per time step and sequence, the
    x_static weight (after the input weight and bias) once per sequence."""
    steps, batch = bottoms[0].shape[:2]
    total = 0
    for i, blob in enumerate(layer.blobs):
        if len(blob.shape) == 2:
            static = 2 <= i < layer.first_recurrent_param
            total += blob.count * (batch if static else steps * batch)
    return total


def multiply_adds(layer, bottoms, tops):
    """Multiply-adds of one forward pass of ``layer`` (the layers with
    weights that multiply activations; Embed is a lookup: none)."""
    if layer.type in RECURRENT_TYPES:
        return _recurrent_multiply_adds(layer, bottoms)
    if layer.type == "PReLU":
        return bottoms[0].count
    if layer.type == "Deconvolution" and layer.blobs:
        return layer.blobs[0].count * sum(b.count // b.shape[1] for b in bottoms)
    if layer.type not in COUNTED_TYPES or not layer.blobs:
        return 0
    axis = 1
    if layer.type == "InnerProduct":
        axis = layer.param.inner_product_param.axis % len(tops[0].shape)
    total = 0
    for top in tops:  # bottom i -> top i, weights shared
        positions = top.count // top.shape[axis] if top.shape[axis] else 0
        total += layer.blobs[0].count * positions
    return total


def layer_rows(net):
    """One dict per layer: name, type, bottoms, tops, params, macs, bytes."""
    rows = []
    for lp, layer, bottoms, tops in zip(net.layer_params, net.layers, net.bottom_blobs, net.top_blobs):
        rows.append(dict(
            name=lp.name, type=lp.type,
            bottoms=[(n, b.shape) for n, b in zip(lp.bottom, bottoms)],
            tops=[(n, t.shape) for n, t in zip(lp.top, tops)],
            params=sum(b.count for b in layer.blobs),
            macs=multiply_adds(layer, bottoms, tops),
            bytes=sum(t.count * t.dtype.itemsize for n, t in zip(lp.top, tops)
                      if n not in lp.bottom),
        ))
    return rows


def _shape(shape):
    return "x".join(str(d) for d in shape) if shape else "scalar"


def _human(n, unit=""):
    for suffix, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{suffix}{unit}"
    return f"{n:g}{unit}"


def format_report(net, rows):
    lines = [f"net '{net.name}' phase {net.phase}, {len(rows)} layers",
             f"{'layer':<28} {'type':<18} {'bottoms -> tops':<60} {'params':>9} "
             f"{'mult-adds':>10} {'memory':>9}"]
    for r in rows:
        bottoms = ", ".join(f"{n} {_shape(s)}" for n, s in r["bottoms"])
        tops = ", ".join(f"{n} {_shape(s)}" for n, s in r["tops"])
        flow = f"{bottoms} -> {tops}" if bottoms else f"-> {tops}"
        lines.append(f"{r['name']:<28} {r['type']:<18} {flow:<60} {_human(r['params']):>9} "
                     f"{_human(r['macs']):>10} {_human(r['bytes'], 'B'):>9}")
    params = sum(p.blob.count for p in net.learnable_params)
    macs = sum(r["macs"] for r in rows)
    memory = sum(r["bytes"] for r in rows)
    lines.append(f"total: {params:,} parameters ({_human(params * net.dtype.itemsize, 'B')}), "
                 f"{macs:,} multiply-adds ({_human(macs)}), {_human(memory, 'B')} of top blobs "
                 "(data; training doubles it for diffs)")
    lines.append(f"inputs: {', '.join(net.inputs) or 'none'}; outputs: {', '.join(net.outputs)}")
    return "\n".join(lines)


def run_report(net, repeat):
    """Run ``repeat`` forward passes on random inputs; a line with timings."""
    rng = np.random.default_rng(0)
    inputs = {name: rng.standard_normal(net.blobs[name].shape) for name in net.inputs}
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = net.forward(**inputs)
        if net.device.is_gpu:
            net.device.xp.cuda.Device(net.device.index).synchronize()
        times.append(time.perf_counter() - start)
    shapes = ", ".join(f"{name} {_shape(array.shape)}" for name, array in out.items())
    return (f"ran {repeat} forward pass(es) on {net.device}: best {min(times) * 1e3:.1f} ms, "
            f"mean {np.mean(times) * 1e3:.1f} ms; outputs: {shapes}")


def parse_input_shapes(items):
    shapes = {}
    for item in items or []:
        name, _, dims = item.partition("=")
        try:
            shapes[name] = tuple(int(d) for d in dims.replace("x", ",").split(","))
        except ValueError:
            shapes[name] = None
        if shapes[name] is None or min(shapes[name], default=0) < 0:
            raise SystemExit(f"--input expects NAME=D1,D2,... with dims >= 0, found {item!r}")
    return shapes


def set_input_shapes(net, items):
    """Give the net zero-filled inputs of the ``--input NAME=D1,D2,...``
    shapes (netdef.inspect, netdef.layer_times); True when any was given, so
    that the net needs a reshape. The blobs are resized in place (a new
    shape comes zeroed), so the memory budget refuses a shape too large
    before it is allocated."""
    shapes = parse_input_shapes(items)
    unknown = [name for name in shapes if name not in net.blobs]
    if unknown:
        raise NetDefinitionError(f"{net.source}: --input names no blob of the net: "
                                 f"{', '.join(unknown)} (inputs: {', '.join(net.inputs)})")
    with net.device.context():
        for name, shape in shapes.items():
            net.blobs[name].reshape(shape)
    return bool(shapes)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m netdef.inspect",
        description="Print every layer of a prototxt network with its blob shapes, "
                    "parameter count, multiply-adds and memory.")
    parser.add_argument("prototxt", nargs="?", default=str(DEFAULT_NET),
                        help="network definition (default: the bundled ResNet-50 deploy net)")
    parser.add_argument("--phase", choices=("TRAIN", "TEST"), default="TEST")
    parser.add_argument("--stage", action="append", default=[], help="NetState stage (repeatable)")
    parser.add_argument("--level", type=int, default=0, help="NetState level")
    parser.add_argument("--input", action="append", metavar="NAME=D1,D2,...",
                        help="override the shape of an input blob, e.g. data=1,3,600,1000")
    parser.add_argument("--run", type=int, default=0, metavar="N",
                        help="also run N forward passes on random inputs and report the time")
    parser.add_argument("--gpu", type=int, metavar="INDEX", help="build and run on this GPU")
    parser.add_argument("--memory-limit", metavar="BYTES",
                        help="the most memory the net may take (e.g. 8G; default: "
                             "NETDEF_MEMORY_LIMIT, else the available memory)")
    parser.add_argument("--allow-python-module", action="append", default=[], metavar="MODULE",
                        help="allow a type: \"Python\" layer from this module (imports and runs it)")
    args = parser.parse_args(argv)
    try:
        net = Net(args.prototxt, args.phase, stages=args.stage, level=args.level,
                  device=device_from_index(args.gpu), allow_python_modules=args.allow_python_module,
                  memory_limit=args.memory_limit)
        if set_input_shapes(net, args.input):
            net.reshape()
        print(format_report(net, layer_rows(net)))
        if args.run:
            print(run_report(net, args.run))
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
