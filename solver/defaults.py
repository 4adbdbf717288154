"""Reference training settings: the solver and the detection settings of
py-R-FCN's R-FCN ResNet-101 on PASCAL VOC, for nets that come without them.

A net given to ``python -m solver.train`` without a solver file (none on the
command line, none beside it) trains with ``reference_solver()``: py-R-FCN's
models/pascal_voc/ResNet-101/rfcn_end2end/solver*.prototxt plus the 110k
iterations its training script runs:

    base_lr 0.001, lr_policy "step", gamma 0.1, stepsize 80000,
    max_iter 110000, momentum 0.9, weight_decay 0.0005, iter_size 2,
    display 20, average_loss 100, snapshot 10000 (py-R-FCN's SNAPSHOT_ITERS)

py-R-FCN keeps the RPN and RoI sampling settings of its Python layers in
experiments/cfgs/rfcn_end2end.yml and rfcn_end2end_ohem.yml, not in the
prototxt; ``PY_RFCN_CONFIG`` holds those values by layer and setting (see
``solver.train.apply_reference_config`` for how they are applied).
py-faster-rcnn's faster_rcnn_end2end.yml changes none of them (its values
are the layers' defaults), so nets without PSROIPooling get nothing.
"""
from netdef import caffe_pb2

__all__ = ["reference_solver", "REFERENCE_SOLVER", "PY_RFCN_CONFIG"]

#: Field values of the reference solver (a SolverParameter's fields).
REFERENCE_SOLVER = dict(
    base_lr=0.001, lr_policy="step", gamma=0.1, stepsize=80000, max_iter=110000,
    momentum=0.9, weight_decay=0.0005, iter_size=2, display=20, average_loss=100,
    snapshot=10000, type="SGD")


def reference_solver(**overrides):
    """A new SolverParameter with the reference settings, ``overrides``
    (field name -> value; lists for repeated fields) applied on top."""
    param = caffe_pb2.SolverParameter()
    for key, value in {**REFERENCE_SOLVER, **overrides}.items():
        if isinstance(value, (list, tuple)):
            field = getattr(param, key)
            del field[:]
            field.extend(value)
        else:
            setattr(param, key, value)
    return param


#: py-R-FCN's end-to-end training config, as settings of the native layers
#: that its Python layers map to (key: (python_param module, config name);
#: value: {setting: value}). "ohem" entries apply to nets with a
#: BoxAnnotatorOHEM layer (rfcn_end2end_ohem.yml), "plain" to the others
#: (rfcn_end2end.yml); "both" to both.
PY_RFCN_CONFIG = {
    "both": {
        # RPN_PRE_NMS_TOP_N 6000, RPN_POST_NMS_TOP_N 300 (TRAIN; TEST's are
        # already the layer's defaults).
        "rpn.proposal_layer": {"train_pre_nms_top_n": 6000, "train_post_nms_top_n": 300},
    },
    "plain": {
        # BATCH_SIZE 128, BG_THRESH_LO 0.1 (the layer's defaults, spelled out).
        "rpn.proposal_target_layer": {"batch_size": 128, "bg_thresh_lo": 0.1},
    },
    "ohem": {
        # BATCH_SIZE -1 (every RoI; OHEM picks 128), BG_THRESH_LO 0.0.
        "rpn.proposal_target_layer": {"batch_size": -1, "bg_thresh_lo": 0.0},
    },
}
