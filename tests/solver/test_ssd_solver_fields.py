"""Caffe-SSD's solver settings (eval_type, ap_version, show_per_class_result):
its solver files parse unchanged, and a misspelt value is an error."""
import pytest

from netdef.errors import NetDefinitionError
from solver.solver_file import SolverFile

# The settings ssd_pascal.py writes into its solver.prototxt (names and values
# of Caffe-SSD's example script).
SSD_SOLVER = """
train_net: "train.prototxt"
test_net: "test.prototxt"
test_iter: 619
test_interval: 10000
base_lr: 0.001
display: 10
max_iter: 120000
lr_policy: "multistep"
gamma: 0.1
momentum: 0.9
weight_decay: 0.0005
snapshot: 80000
snapshot_prefix: "models/VGGNet/VOC0712/SSD_300x300/VGG_VOC0712_SSD_300x300"
solver_mode: GPU
device_id: 0
debug_info: false
snapshot_after_train: true
test_initialization: false
average_loss: 10
stepvalue: 80000
stepvalue: 100000
stepvalue: 120000
iter_size: 1
type: "SGD"
eval_type: "detection"
ap_version: "11point"
show_per_class_result: true
"""


def test_ssd_solver_file_parses_with_its_settings():
    param = SolverFile(SSD_SOLVER).param
    assert (param.eval_type, param.ap_version, param.show_per_class_result) == \
        ("detection", "11point", True)


def test_caffe_ssd_defaults():
    param = SolverFile('net: "n.prototxt"\nbase_lr: 0.1\n').param
    assert (param.eval_type, param.ap_version, param.show_per_class_result) == \
        ("classification", "Integral", False)


@pytest.mark.parametrize("field, value", [("eval_type", "detections"),
                                          ("ap_version", "11-point")])
def test_unknown_values_are_named(field, value):
    text = SSD_SOLVER.replace(f'{field}: "', f'{field}: "x').replace(
        f'{field}: "x' + ("detection" if field == "eval_type" else "11point"),
        f'{field}: "{value}')
    with pytest.raises(NetDefinitionError, match=f"unknown {field} '{value}'"):
        SolverFile(text)
