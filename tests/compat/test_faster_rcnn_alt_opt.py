"""py-faster-rcnn's alternating training as a schedule over its own stage
files (prototxt.faster_rcnn_alt_opt): the files are the ones
prototxt.faster_rcnn writes, the schedule parses beside them and follows
tools/train_faster_rcnn_alt_opt.py (stages, initializations, lengths, the
assembled detector). Running it is too slow for the suite (ZF's fc6 alone
is 37M weights); the README text of this work has the measured run."""
import pytest

from prototxt.faster_rcnn import faster_rcnn_net
from prototxt.faster_rcnn_alt_opt import alt_opt_files, alt_opt_schedule, main
from solver.schedule import Schedule

FILES = ["faster_rcnn_test.pt", "rpn_test.pt", "stage1_fast_rcnn_train.pt",
         "stage1_rpn_train.pt", "stage2_fast_rcnn_train.pt", "stage2_rpn_train.pt"]


@pytest.mark.parametrize("backbone", ["zf", "vgg_cnn_m_1024", "vgg16"])
def test_the_schedule_follows_train_faster_rcnn_alt_opt(tmp_path, backbone, capsys):
    assert main(["--out-dir", str(tmp_path), "--backbone", backbone, "--classes", "7",
                 "--image", "192", "256"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES + ["schedule.prototxt"])
    assert (tmp_path / "rpn_test.pt").read_text() == \
        faster_rcnn_net("rpn_test", 7, python_layers=True, backbone=backbone)
    assert "param_str: \"'num_classes': 7, 'scales': (192,), 'max_size': 256\"" in \
        (tmp_path / "stage2_fast_rcnn_train.pt").read_text()
    schedule = Schedule(str(tmp_path / "schedule.prototxt"))
    kinds = [(s.name, s.kind) for s in schedule.stages]
    assert kinds == [("stage1_rpn", "train"), ("stage1_proposals", "proposals"),
                     ("stage1_fast_rcnn", "train"), ("stage2_rpn", "train"),
                     ("stage2_proposals", "proposals"), ("stage2_fast_rcnn", "train"),
                     ("detector", "assemble")]
    train = {s.name: s.param for s in schedule.stages if s.kind == "train"}
    assert {n: list(p.init_from) for n, p in train.items()} == {
        "stage1_rpn": ["pretrained"], "stage1_fast_rcnn": ["pretrained"],
        "stage2_rpn": ["stage:stage1_fast_rcnn"], "stage2_fast_rcnn": ["stage:stage2_rpn"]}
    assert {n: (p.solver.max_iter, p.solver.stepsize) for n, p in train.items()} == {
        "stage1_rpn": (80000, 60000), "stage1_fast_rcnn": (40000, 30000),
        "stage2_rpn": (80000, 60000), "stage2_fast_rcnn": (40000, 30000)}
    assert train["stage2_fast_rcnn"].proposals_from == "stage2_proposals"
    detector = schedule.by_name["detector"].param.assemble
    assert (detector.net, list(detector.from_stage)) == \
        ("faster_rcnn_test.pt", ["stage2_rpn", "stage2_fast_rcnn"])
    assert "wrote" in capsys.readouterr().out


def test_the_files_without_an_image_are_the_generators():
    files = alt_opt_files("zf", 21)
    assert files["stage1_rpn_train.pt"] == \
        faster_rcnn_net("stage1_rpn_train", 21, python_layers=True, backbone="zf")


@pytest.mark.parametrize("call, message", [
    (lambda: alt_opt_schedule("resnet50"),
     "backbone must be one of zf, vgg_cnn_m_1024, vgg16, found 'resnet50'"),
    (lambda: alt_opt_files("zf", 21, (192, 0)), "image sizes must be positive"),
])
def test_bad_options_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
