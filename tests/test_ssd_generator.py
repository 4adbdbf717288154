"""python -m prototxt.ssd: SSD300 is Caffe-SSD's net (its TEST phase the
deploy net tests/compat rebuilds from the facts, its TRAIN layers
ssd_pascal.py's settings), the tiny SSD builds in both phases with the
channel counts its priors need, the committed files are what the generator
writes, and the command line."""
import numpy as np
import pytest

from netdef import caffe_pb2
from netdef.net import Net
from netdef.schema import parse_text, read_net
from prototxt import ssd
from tests.compat.ssd300_deploy import deploy_text
from tests.netdef.test_ssd_schema import SSD_TRAIN_LAYERS


def parse(text):
    return parse_text(text, caffe_pb2.NetParameter(), "<generated>")


def test_ssd300_test_net_is_caffe_ssds_deploy_net():
    ours = parse(ssd.ssd_net("ssd300", phase="TEST"))
    theirs = parse(deploy_text())
    assert ours.layer[0].type == "Input"
    assert list(ours.layer[0].input_param.shape[0].dim) == list(theirs.input_shape[0].dim)
    layers = list(ours.layer[1:])
    assert [l.name for l in layers] == [l.name for l in theirs.layer]
    for mine, reference in zip(layers, theirs.layer):
        reference = caffe_pb2.LayerParameter.FromString(reference.SerializeToString())
        reference.ClearField("include")     # deploy's detection_out says TEST
        if reference.HasField("detection_output_param"):   # its result files: not written
            reference.detection_output_param.ClearField("save_output_param")
        assert mine == reference, mine.name


def test_ssd300_train_layers_carry_ssd_pascal_settings():
    net = parse(ssd.ssd_net("ssd300", phase="TRAIN"))
    reference = parse(SSD_TRAIN_LAYERS)
    data, loss = net.layer[0], net.layer[-1]
    ref_data, ref_loss = reference.layer[0], reference.layer[1]
    assert data.type == "AnnotatedData" and list(data.top) == ["data", "label"]
    assert data.transform_param == ref_data.transform_param
    assert data.data_param.batch_size == 32
    samplers = data.annotated_data_param.batch_sampler
    assert len(samplers) == 7 and samplers[0] == ref_data.annotated_data_param.batch_sampler[0]
    assert samplers[1] == ref_data.annotated_data_param.batch_sampler[1]
    assert [s.sample_constraint.min_jaccard_overlap for s in samplers[1:6]] == \
        pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9])
    assert samplers[6].sample_constraint.max_jaccard_overlap == 1
    ref_loss.ClearField("include")
    assert loss == ref_loss


def test_prior_counts_give_the_head_widths():
    """A = 1 + 1 (max_size) + 2 per ratio: 4, 6, 6, 6, 4, 4 for SSD300."""
    assert [s.priors for s in ssd.SSD300_SOURCES] == [4, 6, 6, 6, 4, 4]
    net = parse(ssd.ssd_net("ssd300", classes=5, phase="TEST"))
    outputs = {l.name: l.convolution_param.num_output for l in net.layer
               if l.name.endswith(("_mbox_loc", "_mbox_conf"))}
    assert outputs["fc7_mbox_loc"] == 24 and outputs["fc7_mbox_conf"] == 30
    assert outputs["conv9_2_mbox_conf"] == 20


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ssd") / "ssd_tiny.prototxt"
    path.write_text(ssd.generated_file("tiny", 7, "BOTH"))
    return str(path)


def test_tiny_ssd_builds_in_both_phases_with_its_prior_counts(tiny_file):
    train, test = Net(tiny_file, "TRAIN"), Net(tiny_file, "TEST")
    height, width = ssd.TINY.image
    cells = [(height // s.step) * (width // s.step) for s in ssd.TINY_SOURCES]
    priors = sum(c * s.priors for c, s in zip(cells, ssd.TINY_SOURCES))   # 4512
    assert priors == 24 * 32 * 4 + 12 * 16 * 6 + 6 * 8 * 6
    assert train.blobs["data"].shape == (ssd.TINY.batch_size, 3, height, width)
    assert train.blobs["mbox_loc"].shape == (ssd.TINY.batch_size, priors * 4)
    assert train.blobs["mbox_conf"].shape == (ssd.TINY.batch_size, priors * 7)
    assert test.blobs["mbox_priorbox"].shape == (1, 2, priors * 4)
    assert test.blobs["data"].shape == (1, 3, height, width)
    assert "detection_out" in test.outputs and "mbox_loss" in train.outputs
    assert train.layer_dict["mbox_loss"].num_classes == 7
    data = train.layer_dict["data"]
    assert data.transform.mean == ssd.MEAN and data.transform.distort is None
    assert data.transform.expand == (0.5, 2.0) and len(data.transform.samplers) == 7


def test_classes_change_the_conf_widths_and_the_counts():
    net = parse(ssd.ssd_net("tiny", classes=4, phase="TRAIN"))
    by_name = {l.name: l for l in net.layer}
    assert by_name["conv3_mbox_conf"].convolution_param.num_output == 4 * 4
    assert by_name["mbox_loss"].multibox_loss_param.num_classes == 4
    test = parse(ssd.ssd_net("tiny", classes=4, phase="TEST"))
    by_name = {l.name: l for l in test.layer}
    assert by_name["detection_out"].detection_output_param.num_classes == 4
    assert list(by_name["mbox_conf_reshape"].reshape_param.shape.dim) == [0, -1, 4]


def test_committed_files_are_what_the_generator_writes():
    root = ssd.__file__.rsplit("/", 1)[0]
    for name, text in ssd.committed_files().items():
        with open(f"{root}/{name}") as handle:
            assert handle.read() == text, f"prototxt/{name}: run python -m prototxt.ssd --regenerate"
    assert read_net(f"{root}/ssd_tiny.prototxt").layer[0].type == "AnnotatedData"


def test_command_line(capsys):
    assert ssd.main(["--tiny", "--classes", "5", "--phase", "test"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Generated by: python -m prototxt.ssd --tiny --classes 5 --phase TEST")
    assert "num_classes: 5" in out and "AnnotatedData" not in out
    with pytest.raises(SystemExit) as exit_info:
        ssd.main(["--classes", "1"])
    assert exit_info.value.code == 2
    assert "classes counts the background too and must be >= 2, found 1" in \
        capsys.readouterr().err


def test_bad_options_are_value_errors():
    with pytest.raises(ValueError, match="phase must be TRAIN or TEST, found 'BOTH'"):
        ssd.ssd_net("tiny", phase="both")
    with pytest.raises(ValueError, match="model must be one of ssd300, tiny, found 'ssd512'"):
        ssd.ssd_net("ssd512")
    assert np.isclose(ssd.SSD300.image, (300, 300)).all()


def test_ssd300_builds_in_both_phases_with_its_8732_priors(tmp_path):
    path = tmp_path / "ssd300.prototxt"
    path.write_text(ssd.generated_file("ssd300", 21, "BOTH").replace("batch_size: 32",
                                                                     "batch_size: 1"))
    train, test = Net(str(path), "TRAIN"), Net(str(path), "TEST")
    for net in (train, test):
        assert net.blobs["mbox_priorbox"].shape == (1, 2, 8732 * 4)
        assert net.blobs["mbox_conf"].shape == (1, 8732 * 21)
    assert train.outputs == ["mbox_loss"] and test.outputs == ["detection_out"]
    assert train.layer_dict["data"].transform.expand == (0.5, 4.0)
