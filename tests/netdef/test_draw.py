"""Net drawings: the DOT text of real nets, pictures, labels, notes and errors.

Node counts are worked out here from the parsed prototxt (layers that are
not in place, plus distinct blob names) and compared with the nodes of the
DOT text.
"""
import re
import shutil
import struct
import sys
from pathlib import Path

import pytest

from netdef import caffe_pb2
from netdef.draw import main, with_input_layers
from netdef.draw_graph import (BLOB_COLOR, DATA_COLOR, IN_PLACE_COLOR, TYPE_COLORS,
                               build_graph, layer_label, to_dot)
from netdef.errors import NetDefinitionError
from netdef.graph import filter_net
from netdef.schema import read_net

PROTOTXT = Path(__file__).resolve().parents[2] / "prototxt"
RFCN_TINY = PROTOTXT / "rfcn_tiny.prototxt"
RESNET50 = PROTOTXT / "resnet50_deploy.prototxt"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

NODE = re.compile(r'^  "(layer|blob):([^"]*)" \[label="((?:[^"\\]|\\.)*)"', re.M)
EDGE = re.compile(r'^  "([^"]+)" -> "([^"]+)"(?: \[label="((?:[^"\\]|\\.)*)"\])?;$', re.M)

LENET = """name: "LeNet"
layer { name: "mnist" type: "Data" top: "data" top: "label"
        data_param { source: "no_such_lmdb" batch_size: 64 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 20 kernel_size: 5 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "ip" type: "InnerProduct" bottom: "conv1" top: "ip"
        inner_product_param { num_output: 10 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""

needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz dot program not installed")


def expected_counts(net):
    """(layer boxes, blob octagons) of a NetParameter, counted plainly:
    Caffe's in-place layers (one bottom, one top, same name) fold away."""
    boxes = 0
    blobs = set()
    for layer in net.layer:
        in_place = len(layer.bottom) == 1 and len(layer.top) == 1 \
            and layer.bottom[0] == layer.top[0]
        if not in_place:
            boxes += 1
        blobs.update(layer.bottom)
        blobs.update(layer.top)
    return boxes, len(blobs)


def draw_dot(tmp_path, prototxt, *options):
    out = tmp_path / "net.dot"
    assert main([str(prototxt), str(out), *options]) == 0
    return out.read_text()


def nodes_and_edges(dot):
    nodes = {(kind, key): label for kind, key, label in NODE.findall(dot)}
    edges = [(tail, head, label) for tail, head, label in EDGE.findall(dot)]
    return nodes, edges


def blob_label(nodes, name):
    return nodes[("blob", name)]


def top_edge_labels(edges, blob):
    return [label for tail, head, label in edges if head == f"blob:{blob}"]


@pytest.fixture(scope="module")
def rfcn_train_dot(tmp_path_factory):
    return draw_dot(tmp_path_factory.mktemp("rfcn"), RFCN_TINY, "--phase", "TRAIN")


@pytest.fixture(scope="module")
def resnet_dot(tmp_path_factory):
    return draw_dot(tmp_path_factory.mktemp("resnet"), RESNET50, "--rankdir", "TB")


# -- the DOT text of real nets ---------------------------------------------------------

def test_tiny_rfcn_train_nodes_and_shapes(rfcn_train_dot):
    expected, _ = filter_net(read_net(RFCN_TINY), "TRAIN")
    nodes, edges = nodes_and_edges(rfcn_train_dot)
    kinds = [kind for kind, _ in nodes]
    assert (kinds.count("layer"), kinds.count("blob")) == expected_counts(expected)
    assert len(nodes) == 31 + 39
    assert top_edge_labels(edges, "conv1") == ["1x16x192x256"]
    assert top_edge_labels(edges, "rpn_rois") == ["300x5"]
    assert top_edge_labels(edges, "rois") == ["128x5"]
    assert top_edge_labels(edges, "loss_cls") == ["scalar"]
    from_layers = [label for tail, _, label in edges if tail.startswith("layer:")]
    assert all(re.fullmatch(r"\d+(x\d+)*|scalar", label) for label in from_layers)
    assert all(label == "" for tail, _, label in edges if tail.startswith("blob:"))
    assert blob_label(nodes, "conv5") == r"conv5\nin place: ReLU"


def test_resnet50_nodes_and_shapes(resnet_dot):
    nodes, edges = nodes_and_edges(resnet_dot)
    kinds = [kind for kind, _ in nodes]
    assert (kinds.count("layer"), kinds.count("blob")) == expected_counts(read_net(RESNET50))
    assert top_edge_labels(edges, "conv1") == ["1x64x112x112"]
    assert top_edge_labels(edges, "res5c") == ["1x2048x7x7"]
    assert top_edge_labels(edges, "prob") == ["1x1000"]
    assert blob_label(nodes, "conv1") == "conv1 (in place: BatchNorm, Scale, ReLU)"
    assert nodes[("layer", "1")] == (r"conv1 (Convolution)\n"
                                     "kernel size: 7, stride: 2, pad: 3, num_output: 64")


def test_phase_all_draws_every_layer_with_the_shapes_of_each_phase(tmp_path):
    nodes, edges = nodes_and_edges(draw_dot(tmp_path, RFCN_TINY))
    kinds = [kind for kind, _ in nodes]
    assert (kinds.count("layer"), kinds.count("blob")) == expected_counts(read_net(RFCN_TINY))
    # 'rois' comes from roi-data in TRAIN (128 RoIs) and from proposal in TEST (300).
    assert sorted(top_edge_labels(edges, "rois")) == ["128x5", "300x5"]
    assert top_edge_labels(edges, "psroipooled_cls_rois") == [
        r"128x7x3x3 (TRAIN)\n300x7x3x3 (TEST)"]
    assert top_edge_labels(edges, "conv1") == ["1x16x192x256"]


# -- pictures -----------------------------------------------------------------------------

@needs_dot
@pytest.mark.parametrize("prototxt,options,min_size", [
    (RFCN_TINY, ("--phase", "TRAIN", "--rankdir", "TB"), (800, 2000)),
    (RESNET50, ("--rankdir", "TB", "--dpi", "48"), (400, 4000))])
def test_png_pictures(tmp_path, prototxt, options, min_size, capsys):
    pytest.importorskip("graphviz", reason="graphviz Python package not installed")
    out = tmp_path / "net.png"
    assert main([str(prototxt), str(out), *options]) == 0
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert width >= min_size[0] and height >= min_size[1] and len(data) > 50_000
    assert "-> " + str(out) in capsys.readouterr().out


@needs_dot
def test_svg_picture_carries_the_folded_layer_names(tmp_path):
    pytest.importorskip("graphviz", reason="graphviz Python package not installed")
    out = tmp_path / "net.svg"
    assert main([str(RFCN_TINY), str(out), "--phase", "TEST"]) == 0
    svg = out.read_text()
    assert svg.lstrip().startswith("<?xml") and "conv1_relu (ReLU)" in svg


def test_missing_binding_writes_the_dot_beside_and_says_what_to_install(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "graphviz", None)      # import graphviz fails
    out = tmp_path / "net.png"
    assert main([str(RFCN_TINY), str(out), "--phase", "TEST"]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot draw {out}: the graphviz Python package is not installed" in err
    assert "pip install -e '.[draw]'" in err and "apt-get install graphviz" in err
    assert f"Wrote the graph to {tmp_path / 'net.dot'}" in err
    assert not out.exists()
    assert (tmp_path / "net.dot").read_text().startswith('digraph "R-FCN tiny" {')


def test_missing_dot_program_is_named(tmp_path, monkeypatch, capsys):
    pytest.importorskip("graphviz", reason="graphviz Python package not installed")
    monkeypatch.setenv("PATH", str(tmp_path))               # no dot on the PATH
    out = tmp_path / "net.svg"
    assert main([str(RFCN_TINY), str(out), "--phase", "TEST"]) == 2
    err = capsys.readouterr().err
    assert "Graphviz's dot program is not installed" in err and "apt-get install graphviz" in err
    assert (tmp_path / "net.dot").exists() and not out.exists()


# -- shapes that need help -----------------------------------------------------------------

def test_a_net_that_does_not_build_is_drawn_without_shapes(tmp_path, capsys):
    prototxt = tmp_path / "lenet.prototxt"
    prototxt.write_text(LENET)
    nodes, edges = nodes_and_edges(draw_dot(tmp_path, prototxt, "--phase", "TRAIN"))
    assert len(nodes) == 4 + 5 and all(label == "" for _, _, label in edges)
    err = capsys.readouterr().err
    assert err.startswith("note: no blob shapes for the TRAIN net, which does not build here: ")
    assert "layer 'mnist' (type Data)" in err and "--input NAME=D1,D2,..." in err


def test_input_shapes_stand_in_for_a_data_layer(tmp_path, capsys):
    prototxt = tmp_path / "lenet.prototxt"
    prototxt.write_text(LENET)
    nodes, edges = nodes_and_edges(draw_dot(
        tmp_path, prototxt, "--phase", "TRAIN", "--input", "data=2,1,28,28", "--input", "label=2"))
    assert top_edge_labels(edges, "conv1") == ["2x20x24x24"]
    assert top_edge_labels(edges, "label") == ["2"] and top_edge_labels(edges, "ip") == ["2x10"]
    assert nodes[("layer", "0")] == r"mnist\n(Data)\nbatch size: 64"   # drawn as written
    assert capsys.readouterr().err == ""


def test_input_shapes_override_an_input_layer(tmp_path):
    _, edges = nodes_and_edges(draw_dot(tmp_path, RFCN_TINY, "--phase", "TEST",
                                        "--input", "data=1,3,96,128", "--input", "im_info=1,3"))
    assert top_edge_labels(edges, "conv1") == ["1x16x96x128"]


def test_with_input_layers_keeps_names_tops_and_rules():
    net = read_net(RFCN_TINY)
    shapes = {"data": (1, 3, 64, 64), "im_info": (1, 3), "gt_boxes": (2, 5)}
    replaced = with_input_layers(net, shapes)
    train, test = replaced.layer[0], replaced.layer[1]
    assert (train.name, train.type, list(train.top)) == ("input-data", "Input",
                                                         ["data", "im_info", "gt_boxes"])
    assert train.include[0].phase == caffe_pb2.TRAIN and test.include[0].phase == caffe_pb2.TEST
    assert [list(s.dim) for s in train.input_param.shape] == [[1, 3, 64, 64], [1, 3], [2, 5]]
    assert net.layer[0].type == "RoIData"                    # the original is untouched


# -- labels and colours ------------------------------------------------------------------

def layer_of(text):
    return read_net(f'name: "x"\n{text}').layer[0]


def test_layer_labels_follow_caffe():
    conv = layer_of('layer { name: "c" type: "Convolution" bottom: "a" top: "c" '
                    'convolution_param { num_output: 8 kernel_h: 3 kernel_w: 1 stride: 2 '
                    'dilation: 2 group: 2 } }')
    assert layer_label(conv, "LR") == ("c\n(Convolution)\nkernel size: 3x1\nstride: 2\npad: 0\n"
                                       "num_output: 8\ndilation: 2\ngroup: 2")
    pool = layer_of('layer { name: "p" type: "Pooling" bottom: "a" top: "p" '
                    'pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }')
    assert layer_label(pool, "TB") == "p (AVE Pooling)\nkernel size: 3, stride: 2, pad: 1"
    glob = layer_of('layer { name: "g" type: "Pooling" bottom: "a" top: "g" '
                    'pooling_param { global_pooling: true } }')
    assert layer_label(glob, "RL") == "g\n(MAX Pooling)\nglobal"
    ip = layer_of('layer { name: "fc" type: "InnerProduct" bottom: "a" top: "fc" '
                  'inner_product_param { num_output: 10 } }')
    assert layer_label(ip, "BT") == "fc (InnerProduct)\nnum_output: 10"
    psroi = layer_of('layer { name: "ps" type: "PSROIPooling" bottom: "a" bottom: "r" top: "ps" '
                     'psroi_pooling_param { spatial_scale: 0.0625 output_dim: 21 group_size: 7 } }')
    assert layer_label(psroi, "TB") == ("ps (PSROIPooling)\n"
                                        "output_dim: 21, group_size: 7, spatial_scale: 0.0625")
    assert layer_label(layer_of('layer { name: "s" type: "Softmax" }'), "LR") == "s\n(Softmax)"


def test_colours_folding_and_quoting():
    net = read_net('name: "q\\"uote"\n'
                   'layer { name: "in" type: "Input" top: "a" '
                   '  input_param { shape { dim: 1 } } }\n'
                   'layer { name: "c\\\\1" type: "Convolution" bottom: "a" top: "b" }\n'
                   'layer { name: "p" type: "Pooling" bottom: "b" top: "p" }\n'
                   'layer { name: "d" type: "Dropout" bottom: "p" top: "p" }\n'
                   'layer { name: "r" type: "ReLU" bottom: "p" top: "p" }\n'
                   'layer { name: "e" type: "Eltwise" bottom: "p" bottom: "b" top: "e" }\n')
    graph = build_graph(net, "LR")
    colors = {key: node.color for key, node in graph.nodes.items()}
    assert colors["layer:0"] == DATA_COLOR and colors["layer:1"] == TYPE_COLORS["Convolution"]
    assert colors["layer:2"] == TYPE_COLORS["Pooling"] and colors["blob:b"] == BLOB_COLOR
    assert colors["blob:p"] == IN_PLACE_COLOR and "layer:3" not in colors
    assert graph.nodes["blob:p"].label == "p\nin place: Dropout, ReLU"
    assert graph.nodes["blob:p"].tooltip == "d (Dropout), r (ReLU)"
    dot = to_dot(graph)
    assert dot.startswith('digraph "q\\"uote" {')
    assert '[label="c\\\\1\\n(Convolution)' in dot      # backslash and newline escaped
    assert graph.count("box") == 4 and graph.count("octagon") == 4


def test_bad_rankdir_in_the_library():
    with pytest.raises(ValueError, match="rankdir must be one of LR, TB, BT, RL, found 'XY'"):
        build_graph(caffe_pb2.NetParameter(), "XY")


# -- errors ------------------------------------------------------------------------------------

def test_missing_file(tmp_path, capsys):
    assert main([str(tmp_path / "none.prototxt"), str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'none.prototxt'}: no such file\n"


def test_bad_prototxt_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layer {\n  name: "a"\n  tpye: "ReLU"\n}\n')
    assert main([str(bad), str(tmp_path / "x.dot")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}:3:") and 'no field named "tpye"' in err
    assert err.count("\n") == 1 and not (tmp_path / "x.dot").exists()


def test_unknown_output_extension(tmp_path, capsys):
    assert main([str(RESNET50), str(tmp_path / "x.jpg")]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'x.jpg'}: unknown output format '.jpg'; the file name must end "
        "in .png, .svg, .pdf or .dot\n")


def test_unwritable_output(tmp_path, capsys):
    out = tmp_path / "no_dir" / "x.dot"
    assert main([str(RESNET50), str(out)]) == 2
    assert capsys.readouterr().err == f"error: {out}: cannot write the file: No such file or directory\n"


@pytest.mark.parametrize("inputs,message", [
    (["data=1,1,28,28"], "error: --input gives the shape of data but not of label, the other "
                         "top(s) of layer 'mnist' (type Data); give every one"),
    (["conv1=1,2"], "error: --input conv1: no data or Input layer writes a blob of that name "
                    "(their tops: data, label)"),
])
def test_input_errors(tmp_path, capsys, inputs, message):
    prototxt = tmp_path / "lenet.prototxt"
    prototxt.write_text(LENET)
    options = [item for name in inputs for item in ("--input", name)]
    assert main([str(prototxt), str(tmp_path / "x.dot"), *options]) == 2
    assert capsys.readouterr().err == message + "\n"


def test_malformed_input_option(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main([str(RESNET50), str(tmp_path / "x.dot"), "--input", "data=1,three"])
    assert info.value.code == 2
    assert "--input: expects NAME=D1,D2,..., found 'data=1,three'" in capsys.readouterr().err


def test_with_input_layers_in_the_library():
    with pytest.raises(NetDefinitionError, match="--input rois: no data or Input layer"):
        with_input_layers(read_net(RFCN_TINY), {"rois": (1, 5)})
