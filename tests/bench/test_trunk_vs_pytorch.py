"""The trunk benchmark's graph cut and its PyTorch translation
(``bench.trunk_vs_pytorch``, ``bench.torch_graph``).

The cut runs everywhere; the comparisons with PyTorch skip where torch is
not installed (it is the ``bench`` extra, not a test dependency)."""
import importlib.util
import sys

import numpy as np
import pytest

from bench import trunk_graph
from bench import trunk_vs_pytorch as bench
from bench.train_iteration import finite_params
from netdef import Net, graph
from netdef.errors import NetDefinitionError
from netdef.schema import read_net

HEIGHT, WIDTH = 64, 96
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="PyTorch not installed: it comes with the bench extra "
                                        "only, never the test extra (a multi-GB wheel)")


@pytest.fixture(scope="module")
def trunk():
    return trunk_graph.read_trunk(HEIGHT, WIDTH)


def test_cut_keeps_exactly_the_trunk_layers(trunk):
    test_layers = graph.filter_net(read_net(str(trunk_graph.PROTOTXT)), "TEST")[0].layer
    names = [lp.name for lp in test_layers]
    span = names[names.index("conv1"):names.index("conv_new_1_relu") + 1]
    heads = [n for n in span if n.startswith("rpn") or n == "proposal"]
    assert len(heads) == 8  # the RPN head and the proposal layer sit inside the range
    data, *layers = trunk.layer
    assert [lp.name for lp in layers] == [n for n in span if n not in heads]
    assert len(layers) == 448  # 5 stem + 33 blocks x 13 + 4 projections x 3 + 2
    assert (data.type, list(data.top)) == ("Input", ["data"])
    assert list(data.input_param.shape[0].dim) == [1, 3, HEIGHT, WIDTH]
    assert {lp.type for lp in layers} == {"Convolution", "BatchNorm", "Scale", "ReLU",
                                          "Eltwise", "Pooling"}
    assert trunk_graph.trunk_output(trunk) == "conv_new_1"


def test_cut_keeps_the_prototxt_settings(trunk):
    layers = {lp.name: lp for lp in trunk.layer}
    assert all(lp.batch_norm_param.use_global_stats for lp in trunk.layer
               if lp.type == "BatchNorm")
    frozen = [n for n, lp in layers.items() if lp.type == "Convolution" and
              lp.param[0].lr_mult == 0]
    assert frozen == ["conv1"] + [n for n in layers if n.startswith("res2") and
                                  layers[n].type == "Convolution"]
    assert all(lp.param[0].lr_mult == 0 for lp in trunk.layer if lp.type == "Scale")
    assert list(layers["res5a_branch2b"].convolution_param.dilation) == [2]
    assert layers["conv_new_1"].convolution_param.num_output == 1024


def test_blob_shapes_follow_the_net(trunk):
    net = Net(trunk, "TEST")
    shapes = trunk_graph.blob_shapes(trunk)
    assert shapes["conv_new_1"] == (1, 1024, HEIGHT // 16, WIDTH // 16)
    assert shapes["pool1"] == (1, 64, 16, 24)  # Caffe's ceil mode: floor would give 15x23
    assert {name: net.blobs[name].shape for name in shapes} == shapes


def test_cut_names_a_missing_layer():
    with pytest.raises(NetDefinitionError, match="no TEST-phase layer named 'conv9'"):
        trunk_graph.cut_trunk(read_net(str(trunk_graph.PROTOTXT)), first="conv9")


def test_seeded_loss_adds_an_input_and_a_product(trunk):
    seeded = trunk_graph.with_seeded_loss(trunk)
    seed, loss = seeded.layer[-2:]
    assert list(seed.input_param.shape[0].dim) == [1, 1024, HEIGHT // 16, WIDTH // 16]
    assert (loss.type, list(loss.bottom), list(loss.loss_weight)) == \
        ("Eltwise", ["conv_new_1", trunk_graph.SEED_BLOB], [1.0])
    assert len(trunk.layer) + 2 == len(seeded.layer)


def test_alternate_runs_both_sides_in_alternating_order():
    calls = []
    cases = {"case": (lambda: calls.append("ours"), lambda: calls.append("torch"))}
    times = bench.alternate(cases, 3, (lambda: None, lambda: None))
    assert calls == ["ours", "torch", "ours", "torch", "torch", "ours", "ours", "torch"]
    assert [len(t) for t in times["case"]] == [3, 3]


def test_missing_torch_names_the_bench_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[bench\]'"):
        bench.import_torch_graph()


# bn_b is not in place: an in-place layer after an in-place ReLU would
# overwrite the output the ReLU's backward reads (Caffe's behaviour, which
# our Net keeps and PyTorch's autograd does not share).
SMALL = """
name: "every translated layer type"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 19 dim: 23 } } }
layer { name: "conv_a" type: "Convolution" bottom: "data" top: "conv_a"
        param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "bn_a" type: "BatchNorm" bottom: "conv_a" top: "conv_a"
        batch_norm_param { use_global_stats: true eps: 0.001 } }
layer { name: "scale_a" type: "Scale" bottom: "conv_a" top: "conv_a"
        param { lr_mult: 1 } param { lr_mult: 0 } scale_param { bias_term: true } }
layer { name: "relu_a" type: "ReLU" bottom: "conv_a" top: "conv_a" }
layer { name: "pool" type: "Pooling" bottom: "conv_a" top: "pool"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv_b" type: "Convolution" bottom: "pool" top: "conv_b" param { lr_mult: 0 }
        convolution_param { num_output: 8 kernel_size: 3 dilation: 2 pad: 2 group: 2
                            bias_term: false } }
layer { name: "conv_c" type: "Convolution" bottom: "pool" top: "conv_c"
        convolution_param { num_output: 8 kernel_h: 1 kernel_w: 3 pad_h: 0 pad_w: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "conv_b" bottom: "conv_c" top: "sum"
        eltwise_param { operation: SUM coeff: 1 coeff: -0.5 } }
layer { name: "relu_sum" type: "ReLU" bottom: "sum" top: "sum" relu_param { negative_slope: 0.1 } }
layer { name: "bn_b" type: "BatchNorm" bottom: "sum" top: "norm"
        batch_norm_param { use_global_stats: true } }
layer { name: "out" type: "Convolution" bottom: "norm" top: "out"
        convolution_param { num_output: 4 kernel_size: 1 } }
"""


def _random_statistics(net, rng):
    """BatchNorm sums with a scale factor of 2, Scale and biases not 0.5 / 0:
    every part of the BatchNorm + Scale translation shows in the output."""
    for name, blobs in net.params.items():
        kind = net.layer_dict[name].type
        if kind == "BatchNorm":
            channels = blobs[0].shape[0]
            blobs[0].data[...] = 2 * rng.normal(0, 0.1, channels)
            blobs[1].data[...] = 2 * rng.uniform(0.5, 1.5, channels)
            blobs[2].data[...] = 2
        elif kind == "Scale":
            blobs[0].data[...] = rng.uniform(0.4, 0.6, blobs[0].shape)
            blobs[1].data[...] = rng.normal(0, 0.05, blobs[1].shape)
        elif kind == "Convolution" and len(blobs) > 1:
            blobs[1].data[...] = rng.normal(0, 0.1, blobs[1].shape)


def _compare(graph_param, dtype, rtol, seed=1):
    """Run our Net (with force_backward, so the image gets a gradient) and
    the translation on the same random image and output diff; assert the
    output, the image gradient and every trained parameter's gradient agree
    to ``rtol`` of their largest magnitude. Returns the trained count."""
    import torch
    from bench.torch_graph import TorchGraph
    seeded = trunk_graph.with_seeded_loss(graph_param)
    seeded.force_backward = True
    net = Net(seeded, "TRAIN", dtype=dtype)
    finite_params(net)
    rng = np.random.default_rng(seed)
    _random_statistics(net, rng)
    shapes = trunk_graph.blob_shapes(graph_param)
    output = trunk_graph.trunk_output(graph_param)
    x = rng.normal(0, 1, shapes["data"])
    diff = rng.normal(0, 1, shapes[output])
    ours = net.forward(blobs=[output], data=x, output_diff=diff)[output].copy()
    ours_dx = net.backward()["data"]

    model = TorchGraph(graph_param).to(torch.float64 if dtype == np.float64 else torch.float32)
    model.load_from_net(net)
    tx = torch.from_numpy(x.astype(dtype)).requires_grad_(True)
    out = model(tx)
    out.backward(torch.from_numpy(diff.astype(dtype)))
    pairs = [(net.params[layer][i].diff, p.grad.numpy(), layer)
             for layer, i, p in model.counterparts() if p.requires_grad]
    for a, b, what in [(ours, out.detach().numpy(), "output"),
                       (ours_dx, tx.grad.numpy(), "image gradient")] + pairs:
        np.testing.assert_allclose(a, b, rtol=0, atol=rtol * np.abs(b).max(), err_msg=what)
        assert np.abs(b).max() > 0, what
    trained = {(p.layer, p.index) for p in net.learnable_params if p.lr_mult != 0}
    assert {(layer, i) for layer, i, p in model.counterparts() if p.requires_grad} == trained
    return len(trained)


@needs_torch
def test_translation_of_every_layer_type_is_exact():
    """float64: strided, dilated, grouped and rectangular convolutions with
    and without bias; BatchNorm (eps, scale factor) with and without Scale;
    ReLU and leaky ReLU in place; Eltwise SUM with coeffs; MAX pooling in
    Caffe's ceil mode; a blob read twice (our Split); frozen parameters."""
    param = read_net(SMALL)
    assert trunk_graph.blob_shapes(param)["pool"] == (1, 8, 5, 6)  # floor mode: 4 x 5
    # trained: conv_a weight and bias, scale_a weight, conv_c and out weight and bias
    assert _compare(param, np.float64, 1e-10) == 7


@needs_torch
def test_translation_agrees_on_the_trunk(trunk):
    """float32 on a small image: output, image gradient, and the gradients
    of the 95 trained parameters."""
    assert _compare(trunk, np.float32, 1e-4) == 95


@needs_torch
def test_check_same_on_the_benchmark_sides():
    """The benchmark's own float32 check, on a small image."""
    import torch
    from bench import torch_graph

    class Args:
        gpu, height, width = False, HEIGHT, WIDTH
    sides = bench.build_sides(Args, torch, torch_graph)
    forward, gradient, trained = bench.check_same(sides, torch)
    assert forward < 1e-5 and gradient < 1e-4 and trained == 95


def test_tables_give_ratios():
    times = bench.format_times({"trunk forward": ([2.0, 3.0, 2.5], [1.0, 2.0, 1.2])})
    assert "2.500 (2.000)" in times and "2.00 (2.00)" in times  # median of 2, 1.5, 2.08
    reports = {"ours": {"peak_bytes": 2**30, "baseline_bytes": 2**25, "plan": "Net()"},
               "torch": {"peak_bytes": 2**31, "baseline_bytes": 2**28},
               "iteration": {"error": "exit status 1: MemoryError"}}
    memory = bench.format_memory(reports, gpu=False).splitlines()
    assert memory[2].split()[-3:] == ["1024", "32", "0.50"]
    assert memory[3].split()[-1] == "1.00"
    assert "failed: exit status 1: MemoryError" in memory[4]
