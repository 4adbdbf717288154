"""The shape report on real Caffe networks, and its errors."""
from pathlib import Path

import pytest

from netdef import Net
from netdef.inspect import layer_rows, main

PROTOTXT = Path(__file__).resolve().parents[2] / "prototxt"


@pytest.mark.parametrize("depth,macs_billion,params_million", [
    (50, 3.8, 25.5), (101, 7.6, 44.5), (152, 11.3, 60.2)])
def test_resnet_deploy_shapes_and_multiply_adds(depth, macs_billion, params_million):
    """Kaiming He's table: 3.8 / 7.6 / 11.3 G multiply-adds at 224x224.

    The table rounds to one decimal (ResNet-50 counts 3.86 G: the paper's 3.8
    is truncated), hence the tolerance."""
    net = Net(PROTOTXT / f"resnet{depth}_deploy.prototxt", "TEST")
    assert net.blobs["conv1"].shape == (1, 64, 112, 112)
    assert net.blobs["pool1"].shape == (1, 64, 56, 56)
    assert net.blobs["res2a"].shape == (1, 256, 56, 56)
    assert net.blobs["res3a"].shape == (1, 512, 28, 28)
    assert net.blobs["res4a"].shape == (1, 1024, 14, 14)
    assert net.blobs["res5a"].shape == (1, 2048, 7, 7)
    assert net.blobs["pool5"].shape == (1, 2048, 1, 1)
    assert net.blobs["prob"].shape == (1, 1000)
    rows = layer_rows(net)
    macs = sum(r["macs"] for r in rows)
    assert macs / 1e9 == pytest.approx(macs_billion, abs=0.06)
    # Learnable parameters exclude BatchNorm's statistics (lr_mult 0 in Caffe)
    # but the count includes every parameter blob.
    params = sum(r["params"] for r in rows if r["type"] in ("Convolution", "InnerProduct", "Scale"))
    assert params / 1e6 == pytest.approx(params_million, rel=0.01)


def test_cli_prints_every_layer_and_totals(capsys):
    assert main([str(PROTOTXT / "resnet50_deploy.prototxt")]) == 0
    out = capsys.readouterr().out
    assert "pool1" in out and "1x64x56x56" in out
    assert "multiply-adds" in out and "total:" in out


def test_cli_input_override(capsys):
    assert main([str(PROTOTXT / "resnet50_deploy.prototxt"), "--input", "data=2,3,224,224"]) == 0
    assert "2x64x56x56" in capsys.readouterr().out


def test_cli_input_override_that_breaks_a_layer_names_it(capsys):
    # At 320x320, pool5 (7x7 AVE) gives 4x4, which fc1000's weights cannot take.
    assert main([str(PROTOTXT / "resnet50_deploy.prototxt"), "--input", "data=1,3,320,320"]) == 2
    err = capsys.readouterr().err
    assert "layer 'fc1000' (type InnerProduct): bottom 'pool5'" in err and "(1, 2048, 4, 4)" in err


def test_cli_syntax_error_names_file_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('name: "x"\nlayer {\n  name: "a"\n  type: "ReLU"\n  bottom "a"\n}\n')
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:5:" in err


def test_cli_unknown_type_and_missing_bottom(tmp_path, capsys):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 1 } } }\n'
                   'layer { name: "a" type: "Convolutoin" bottom: "d" top: "a" }\n')
    assert main([str(bad)]) == 2
    assert "did you mean 'Convolution'" in capsys.readouterr().err
    bad.write_text('layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 1 } } }\n'
                   'layer { name: "a" type: "ReLU" bottom: "x" top: "a" }\n')
    assert main([str(bad)]) == 2
    assert "bottom 'x' is not produced" in capsys.readouterr().err


def test_recurrent_multiply_adds_count_each_weight_per_step():
    from netdef import Net
    from netdef.inspect import layer_rows
    net = Net("""
    layer { name: "x" type: "Input" top: "x" top: "cont" top: "static"
            input_param { shape { dim: 4 dim: 2 dim: 5 } shape { dim: 4 dim: 2 }
                          shape { dim: 2 dim: 6 } } }
    layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
            recurrent_param { num_output: 3 } }
    layer { name: "rnn" type: "RNN" bottom: "x" bottom: "cont" bottom: "static" top: "o"
            recurrent_param { num_output: 3 } }
    """, "TEST")
    macs = {row["name"]: row["macs"] for row in layer_rows(net)}
    # LSTM: W_xc (12, 5) and W_hc (12, 3), each at every one of 4 x 2 steps
    assert macs["lstm"] == (60 + 36) * 8
    # RNN: W_xh 3x5 and W_hh, W_ho 3x3 per step (x 8); W_xh_static 3x6 per sequence (x 2)
    assert macs["rnn"] == (15 + 9 + 9) * 8 + 18 * 2


HUGE_INPUT = ('name: "huge"\nlayer { name: "data" type: "Input" top: "data"\n'
              '  input_param { shape { dim: 3 dim: 1000000 dim: 1000000 } } }\n'
              'layer { name: "relu" type: "ReLU" bottom: "data" top: "relu" }\n')


def _peak_of(call):
    """(result, peak bytes traced while running ``call``)."""
    import tracemalloc
    tracemalloc.start()
    try:
        return call(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_cli_a_net_over_the_memory_budget_exits_2_before_allocating(tmp_path, capsys):
    """A 10.9 TiB Input: one line naming layer, blob, shape and bytes, exit 2."""
    path = tmp_path / "huge.prototxt"
    path.write_text(HUGE_INPUT)
    status, peak = _peak_of(lambda: main([str(path)]))
    assert status == 2 and peak < 4 << 20
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: layer 'data' (type Input): the data of blob 'data', "
                          "shape (3, 1000000, 1000000) float32, needs 10.9 TiB")
    assert "over its memory budget of" in err and "(the default: " in err
    assert len(err.strip().splitlines()) == 1


def test_cli_input_override_over_the_budget_and_memory_limit(capsys):
    deploy = str(PROTOTXT / "resnet50_deploy.prototxt")
    # ResNet-50 at 224 x 224 (~200 MB with its weights) fits 400M; a 576 MB
    # input does not, and is refused before it exists.
    status, peak = _peak_of(lambda: main([deploy, "--memory-limit", "400M",
                                          "--input", "data=3,3,4000,4000"]))
    assert status == 2 and peak < 400 << 20
    assert f"error: {deploy}: the data of blob 'data', shape (3, 3, 4000, 4000) float32, needs " \
           "549.3 MiB" in capsys.readouterr().err
    assert main([deploy, "--memory-limit", "10M"]) == 2
    err = capsys.readouterr().err
    assert "over its memory budget of 10.0 MiB (memory_limit='10M' given to the Net" in err
    assert main([deploy, "--input", "nodata=1,3,224,224"]) == 2
    assert "--input names no blob of the net: nodata (inputs: data)" in capsys.readouterr().err


def test_cli_module_exits_2_with_the_environment_limit(tmp_path):
    """``python -m netdef.inspect`` itself, the limit from NETDEF_MEMORY_LIMIT."""
    import os
    import subprocess
    import sys
    path = tmp_path / "net.prototxt"
    path.write_text(HUGE_INPUT.replace("dim: 1000000 dim: 1000000", "dim: 1000 dim: 1000"))
    env = dict(os.environ, NETDEF_MEMORY_LIMIT="1M")
    done = subprocess.run([sys.executable, "-m", "netdef.inspect", str(path)], env=env,
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 2, done.stderr
    assert "needs 11.4 MiB" in done.stderr and "(NETDEF_MEMORY_LIMIT=1M;" in done.stderr
