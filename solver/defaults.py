"""Reference training settings: the solver and the detection settings of
py-R-FCN's R-FCN ResNet-101 on PASCAL VOC, for nets that come without them.

A net given to ``python -m solver.train`` without a solver file (none on the
command line, none beside it) trains with ``reference_solver()``: py-R-FCN's
models/pascal_voc/ResNet-101/rfcn_end2end/solver*.prototxt plus the 110k
iterations its training script runs:

    base_lr 0.001, lr_policy "step", gamma 0.1, stepsize 80000,
    max_iter 110000, momentum 0.9, weight_decay 0.0005, iter_size 2,
    display 20, average_loss 100, snapshot 10000 (py-R-FCN's SNAPSHOT_ITERS)

py-faster-rcnn and py-R-FCN keep the RPN and RoI sampling settings of
their Python layers in experiments/cfgs/*.yml, not in the prototxt; their
training scripts are run with one of them (``--cfg``).
``REFERENCE_CONFIGS`` holds, for each yml file, the values that differ from
or spell out the native layers' defaults, by Python module and setting;
``reference_config(net_param)`` picks the yml file a net is trained with and
``apply_reference_config(net_param)`` writes its values into the
``param_str`` of the net's Python layers where they are missing. How a net
is recognised (only nets that name the reference projects' Python layers;
native nets carry their settings in their typed parameters):

- py-R-FCN: a PSROIPooling layer, or a ResNet trunk (BatchNorm layers)
  under an RPN (its alternating RPN stages have no R-FCN head); py-faster-
  rcnn ships no ResNet net.
- end-to-end: a ProposalTarget Python layer (rpn.proposal_target_layer),
  or for a test net (no data layer) a Proposal layer feeding a detector
  head; alternating: the stage nets (RPN stages, detector stages on
  precomputed RoIs, rpn_test, rfcn_test on given RoIs). py-faster-rcnn's
  alternating faster_rcnn_test.pt is the end-to-end test net's layout and
  is taken as such; a test net's config holds TRAIN settings only anyway.
- OHEM: a BoxAnnotatorOHEM layer.

  py-R-FCN end-to-end            -> rfcn_end2end.yml
  py-R-FCN end-to-end with OHEM  -> rfcn_end2end_ohem.yml
  py-R-FCN alternating (OHEM)    -> rfcn_alt_opt_5step_ohem.yml
  py-faster-rcnn end-to-end      -> faster_rcnn_end2end.yml
  py-faster-rcnn alternating     -> faster_rcnn_alt_opt.yml

Settings for the data layer (roi_data_layer.layer) are RoI sampling
settings: they go to its precomputed-RoI form only (the end-to-end form
samples in ProposalTarget). Settings the native layers have no place for
are listed in ``NOT_MAPPED`` (with why).
"""
import dataclasses

from layers.python_compat import parse_param_str
from netdef import caffe_pb2

__all__ = ["reference_solver", "REFERENCE_SOLVER", "PY_RFCN_CONFIG", "REFERENCE_CONFIGS",
           "NOT_MAPPED", "ReferenceConfig", "reference_config", "apply_reference_config"]

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


#: The experiment configs, as settings of the native layers that the
#: reference Python layers map to: yml file name -> {python_param module:
#: {setting: value}}. Values equal to a layer's default are spelled out
#: where the yml file sets them, so a log shows what the config says.
REFERENCE_CONFIGS = {
    # py-R-FCN experiments/cfgs/rfcn_end2end.yml: RPN_PRE_NMS_TOP_N 6000,
    # RPN_POST_NMS_TOP_N 300 (TRAIN; TEST's are the layer's defaults),
    # BATCH_SIZE 128, BG_THRESH_LO 0.1 (AGNOSTIC: the files' ProposalTarget
    # says 'num_classes': 2).
    "rfcn_end2end.yml": {
        "rpn.proposal_layer": {"train_pre_nms_top_n": 6000, "train_post_nms_top_n": 300},
        "rpn.proposal_target_layer": {"batch_size": 128, "bg_thresh_lo": 0.1},
    },
    # rfcn_end2end_ohem.yml: the same with BATCH_SIZE -1 (every RoI; OHEM
    # picks 128) and BG_THRESH_LO 0.0.
    "rfcn_end2end_ohem.yml": {
        "rpn.proposal_layer": {"train_pre_nms_top_n": 6000, "train_post_nms_top_n": 300},
        "rpn.proposal_target_layer": {"batch_size": -1, "bg_thresh_lo": 0.0},
    },
    # rfcn_alt_opt_5step_ohem.yml: BG_THRESH_LO 0.0, RPN_PRE_NMS_TOP_N 6000,
    # RPN_POST_NMS_TOP_N 300, AGONISTIC True, BATCH_SIZE -1 (TRAIN); the
    # detector stages sample on precomputed RoIs in the data layer.
    "rfcn_alt_opt_5step_ohem.yml": {
        "rpn.proposal_layer": {"train_pre_nms_top_n": 6000, "train_post_nms_top_n": 300},
        "roi_data_layer.layer": {"batch_size": -1, "bg_thresh_lo": 0.0,
                                 "class_agnostic": True},
    },
    # py-faster-rcnn experiments/cfgs/faster_rcnn_end2end.yml: RPN_BATCHSIZE
    # 256, RPN_POSITIVE_OVERLAP 0.7, BBOX_NORMALIZE_TARGETS_PRECOMPUTED True
    # (targets normalized by the fixed means / stds in ProposalTarget),
    # BG_THRESH_LO 0.0 (added to the file after its first release).
    "faster_rcnn_end2end.yml": {
        "rpn.anchor_target_layer": {"batch_size": 256, "positive_overlap": 0.7},
        "rpn.proposal_target_layer": {"bg_thresh_lo": 0.0, "bbox_normalize_targets": True},
    },
    # faster_rcnn_alt_opt.yml sets TEST.HAS_RPN only: the layers' defaults
    # are config.py's (BATCH_SIZE 128, BG_THRESH_LO 0.1, ...).
    "faster_rcnn_alt_opt.yml": {},
}

#: yml settings with no native counterpart: (yml file, setting) -> why.
NOT_MAPPED = {
    ("rfcn_alt_opt_5step_ohem.yml", "RPN_NORMALIZE_TARGETS"):
        "py-R-FCN normalizes the RPN's box targets by statistics it computes over the "
        "dataset before stage 1 (tools/train_rfcn_alt_opt_5stage.py, stage 0); AnchorTarget "
        "has no normalization setting, so the RPN stages train on unnormalized targets",
    ("faster_rcnn_alt_opt.yml", "BBOX_NORMALIZE_TARGETS_PRECOMPUTED"):
        "config.py's default False makes py-faster-rcnn's Fast R-CNN stages normalize by "
        "means / stds computed over the training set; the precomputed-RoI RoIData uses the "
        "fixed (0, 0, 0, 0) / (0.1, 0.1, 0.2, 0.2)",
}

#: The end-to-end configs by layer and setting, as before REFERENCE_CONFIGS
#: ("plain": rfcn_end2end.yml, "ohem": rfcn_end2end_ohem.yml, "both": what
#: they share).
PY_RFCN_CONFIG = {
    "both": {"rpn.proposal_layer": REFERENCE_CONFIGS["rfcn_end2end.yml"]["rpn.proposal_layer"]},
    "plain": {"rpn.proposal_target_layer":
              REFERENCE_CONFIGS["rfcn_end2end.yml"]["rpn.proposal_target_layer"]},
    "ohem": {"rpn.proposal_target_layer":
             REFERENCE_CONFIGS["rfcn_end2end_ohem.yml"]["rpn.proposal_target_layer"]},
}

_DATA_MODULE = "roi_data_layer.layer"
_REFERENCE_MODULES = (_DATA_MODULE, "rpn.anchor_target_layer", "rpn.proposal_layer",
                      "rpn.proposal_target_layer")


@dataclasses.dataclass(frozen=True)
class ReferenceConfig:
    """The experiment config a net is trained with: ``project``
    ("py-R-FCN" or "py-faster-rcnn"), ``file`` (the yml file name),
    ``values`` (module -> {setting: value}) and ``why`` (how the net was
    recognised)."""
    project: str
    file: str
    values: dict
    why: str

    @property
    def path(self):
        return "experiments/cfgs/" + self.file


def _is_precomputed_data(lp):
    """The data layer in its precomputed-RoI form (six tops, or the second
    one named "rois", as RoIData tells them apart)."""
    return len(lp.top) == 6 or (len(lp.top) > 1 and lp.top[1] == "rois")


def reference_config(net_param):
    """The ``ReferenceConfig`` of ``net_param`` (a NetParameter), or None for
    a net without the reference projects' Python layers (see the module
    docstring for the rules)."""
    python = {lp.python_param.module for lp in net_param.layer if lp.type == "Python"}
    if not python & set(_REFERENCE_MODULES):
        return None
    types = {lp.type for lp in net_param.layer}
    # A test net (no data layer) is end-to-end when it has both an RPN and a
    # detector head; its config's values are TRAIN settings either way.
    end_to_end = "rpn.proposal_target_layer" in python or (
        _DATA_MODULE not in python and "rpn.proposal_layer" in python
        and bool(types & {"PSROIPooling", "ROIPooling"}))
    ohem = "BoxAnnotatorOHEM" in types
    rfcn = "PSROIPooling" in types or ("BatchNorm" in types and "ROIPooling" not in types)
    kind = ("end-to-end" if end_to_end else "alternating") + (" with OHEM" if ohem else "")
    if rfcn:
        reason = "PSROIPooling" if "PSROIPooling" in types else "a ResNet trunk (BatchNorm)"
        if end_to_end:
            file = "rfcn_end2end_ohem.yml" if ohem else "rfcn_end2end.yml"
        else:
            file = "rfcn_alt_opt_5step_ohem.yml"
        return ReferenceConfig("py-R-FCN", file, REFERENCE_CONFIGS[file],
                               f"{reason}, {kind}")
    file = "faster_rcnn_end2end.yml" if end_to_end else "faster_rcnn_alt_opt.yml"
    return ReferenceConfig("py-faster-rcnn", file, REFERENCE_CONFIGS[file],
                           f"no PSROIPooling or ResNet trunk, {kind}")


def _add_to_param_str(text, extra):
    added = ", ".join(f"{k!r}: {v!r}" for k, v in extra.items())
    stripped = text.strip()
    if stripped.startswith("{") and stripped.endswith("}"):
        body = stripped[1:-1].strip()
        return "{" + (body + ", " if body else "") + added + "}"
    return (stripped + ", " if stripped else "") + added


def apply_reference_config(net_param, config=None):
    """Write the values of ``config`` (default: ``reference_config(net_param)``)
    into the ``param_str`` of ``net_param``'s Python layers where they are
    missing, in place (a value the file gives wins). The data layer's
    settings go to its precomputed-RoI form only. Returns
    ``[(layer name, key, value), ...]`` applied."""
    config = config or reference_config(net_param)
    if config is None:
        return []
    applied = []
    for lp in net_param.layer:
        module = lp.python_param.module
        if lp.type != "Python" or module not in config.values:
            continue
        if module == _DATA_MODULE and not _is_precomputed_data(lp):
            continue
        present = parse_param_str(lp.python_param.param_str)
        extra = {k: v for k, v in config.values[module].items() if k not in present}
        if extra:
            lp.python_param.param_str = _add_to_param_str(lp.python_param.param_str, extra)
            applied += [(lp.name, k, v) for k, v in extra.items()]
    return applied
