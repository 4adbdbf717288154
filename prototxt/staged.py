"""Stage nets of Faster R-CNN's alternating (staged) training, derived from an
end-to-end net that holds both phases.

    python -m prototxt.staged prototxt/rfcn_resnet101.prototxt --out-dir my_nets/
    python -m prototxt.staged --regenerate      # prototxt/rfcn_{tiny,resnet101}_staged_*.prototxt

From one end-to-end net (TRAIN and TEST phases in one file, as
``python -m prototxt.rfcn --phase BOTH`` writes it, native layers) three nets
are cut, so the stages train exactly the layers of the end-to-end detector:

- ``<stem>_staged_rpn_train``: the RPN stages. The layers the RPN losses
  depend on (the RoIData layer in its end-to-end form, the trunk up to the
  RPN's input, the RPN head, AnchorTarget and the two RPN losses); nothing
  of the detector head (for R-FCN not even res5).
- ``<stem>_staged_detector_train``: the detector stages (Fast R-CNN /
  R-FCN trained on fixed proposals). The RoIData layer in its
  precomputed-RoI form (``has_rpn: false``; tops data plus the
  ProposalTarget layer's rois, labels, bbox_targets, bbox_inside_weights,
  bbox_outside_weights), taking its RoI sampling settings (batch_size,
  fg_fraction, thresholds, box normalization, class_agnostic) from that
  ProposalTarget layer, which goes; then the layers the detector losses
  depend on. No RPN.
- ``<stem>_staged_rpn_test``: proposal generation. The TEST phase up to the
  Proposal layer, which also outputs its scores.

Which layers to freeze in which stage, where each stage's weights come from
and where the proposals go is the schedule's business (solver.schedule,
prototxt/*_staged_schedule.prototxt); these nets carry the end-to-end
net's own param specs unchanged. The full detector for testing is the
end-to-end file itself (its TEST phase).

How the cut works: a layer's *sinks* are the layers without tops or with a
loss weight (and Accuracy layers); the RPN net keeps the sinks downstream of
AnchorTarget and everything they depend on; the detector net, after the
data layer swap, keeps the sinks downstream of the RoI tops and everything
they depend on.
"""
import argparse
import sys
from pathlib import Path

from netdef import caffe_pb2
from netdef.errors import EngineError
from netdef.graph import filter_net
from netdef.schema import format_net, read_net
from prototxt import rfcn

__all__ = ["stage_nets", "stage_file_names", "generated_files", "committed_files",
           "STAGE_NETS"]

HERE = Path(__file__).resolve().parent

#: The nets cut from an end-to-end net, in file order.
STAGE_NETS = ("rpn_train", "detector_train", "rpn_test")

# py-faster-rcnn's loss types carry a loss weight of 1 on their first top
# when the prototxt gives none; the others are losses only with an explicit
# non-zero loss_weight.
_ACCURACY_TYPES = ("Accuracy",)
_SAMPLING_FIELDS = ("batch_size", "fg_fraction", "fg_thresh", "bg_thresh_hi", "bg_thresh_lo",
                    "bbox_normalize_targets", "class_agnostic")
_SAMPLING_LISTS = ("bbox_normalize_means", "bbox_normalize_stds")


# -- graph helpers on a NetParameter ----------------------------------------------------------

def _is_sink(lp):
    """A layer whose output is an end in itself: no tops, a loss weight, or
    an Accuracy layer."""
    if not lp.top or lp.type in _ACCURACY_TYPES:
        return True
    if lp.loss_weight:
        return any(w != 0 for w in lp.loss_weight)
    return lp.type.endswith("Loss")


def _downstream(layers, blobs):
    """Indices of the layers that read (transitively) any of ``blobs``."""
    tainted, found = set(blobs), []
    for i, lp in enumerate(layers):
        if any(b in tainted for b in lp.bottom):
            found.append(i)
            tainted.update(lp.top)
    return found


def _upstream(layers, seeds):
    """Indices (sorted) of the layers ``seeds`` (indices) depend on,
    themselves included. In-place layers are kept with their producer."""
    keep, needed = set(seeds), set()
    for i in seeds:
        needed.update(layers[i].bottom)
    for i in reversed(range(len(layers))):
        lp = layers[i]
        if i in keep or any(t in needed for t in lp.top):
            keep.add(i)
            needed.update(lp.bottom)
    return sorted(keep)


def _select(net, indices, name):
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    out.name = name
    for i in indices:
        out.layer.add().CopyFrom(net.layer[i])
    return out


def _phase_net(net, phase):
    """The layers of ``phase``, include/exclude rules removed."""
    filtered, _ = filter_net(net, phase)
    for lp in filtered.layer:
        del lp.include[:]
        del lp.exclude[:]
    return filtered


def _only(layers, kind, source, what):
    found = [i for i, lp in enumerate(layers) if lp.type == kind]
    if len(found) != 1:
        raise ValueError(
            f"{source}: the {what} needs exactly one {kind} layer to cut the stage nets "
            f"(found {len(found)}); stage nets are derived from native-form end-to-end nets "
            f"(RoIData, AnchorTarget, Proposal, ProposalTarget layers)")
    return found[0]


# -- the three nets ---------------------------------------------------------------------------

def rpn_train_net(train, source="<net>"):
    """The RPN stages' net from an end-to-end TRAIN net (NetParameter)."""
    layers = list(train.layer)
    _only(layers, "RoIData", source, "TRAIN phase")
    anchor = _only(layers, "AnchorTarget", source, "TRAIN phase")
    sinks = [i for i in _downstream(layers, layers[anchor].top) if _is_sink(layers[i])]
    if not sinks:
        raise ValueError(f"{source}: no loss layer reads the AnchorTarget layer's outputs")
    return _select(train, _upstream(layers, sinks), f"{train.name} staged RPN")


def detector_train_net(train, source="<net>"):
    """The detector stages' net from an end-to-end TRAIN net: the RoIData
    layer in its precomputed-RoI form in place of the end-to-end one and the
    ProposalTarget layer, then what the detector losses need."""
    layers = list(train.layer)
    data = _only(layers, "RoIData", source, "TRAIN phase")
    target = _only(layers, "ProposalTarget", source, "TRAIN phase")
    target_lp, data_lp = layers[target], layers[data]
    if len(target_lp.top) != 5:
        raise ValueError(f"{source}: ProposalTarget layer '{target_lp.name}' has "
                         f"{len(target_lp.top)} tops; the precomputed-RoI data layer takes its "
                         f"5 (rois, labels, bbox_targets, bbox_inside_weights, "
                         f"bbox_outside_weights)")
    swapped = caffe_pb2.LayerParameter()
    swapped.CopyFrom(data_lp)
    del swapped.top[:]
    swapped.top.extend([data_lp.top[0]] + list(target_lp.top))
    p, sampling = swapped.roi_data_param, target_lp.proposal_target_param
    p.has_rpn = False
    for field in _SAMPLING_FIELDS:
        if sampling.HasField(field):
            setattr(p, field, getattr(sampling, field))
    for field in _SAMPLING_LISTS:
        values = list(getattr(sampling, field))
        if values:
            del getattr(p, field)[:]
            getattr(p, field).extend(values)
    rebuilt = caffe_pb2.NetParameter()
    rebuilt.CopyFrom(train)
    del rebuilt.layer[:]
    for i, lp in enumerate(layers):
        if i == data:
            rebuilt.layer.add().CopyFrom(swapped)
        elif i != target:
            rebuilt.layer.add().CopyFrom(lp)
    layers = list(rebuilt.layer)
    sinks = [i for i in _downstream(layers, target_lp.top) if _is_sink(layers[i])]
    if not sinks:
        raise ValueError(f"{source}: no loss layer reads the ProposalTarget layer's outputs")
    return _select(rebuilt, _upstream(layers, sinks), f"{train.name} staged detector")


def rpn_test_net(test, source="<net>"):
    """The proposal generation net from an end-to-end TEST net: what the
    Proposal layer needs; the layer also outputs its scores."""
    layers = list(test.layer)
    proposal = _only(layers, "Proposal", source, "TEST phase")
    net = _select(test, _upstream(layers, [proposal]), f"{test.name} staged RPN test")
    lp = [lp for lp in net.layer if lp.type == "Proposal"][0]
    if len(lp.top) == 1:
        lp.top.append("scores")
    lp.proposal_param.output_score = True
    return net


def stage_nets(source):
    """``{"rpn_train", "detector_train", "rpn_test"}`` -> NetParameter, cut
    from ``source`` (a path or prototxt text of an end-to-end net holding
    both phases)."""
    net = read_net(source)
    where = source if "\n" not in str(source) and "{" not in str(source) else "<net text>"
    train, test = _phase_net(net, "TRAIN"), _phase_net(net, "TEST")
    return {"rpn_train": rpn_train_net(train, where),
            "detector_train": detector_train_net(train, where),
            "rpn_test": rpn_test_net(test, where)}


# -- files ----------------------------------------------------------------------------------

def stage_file_names(stem):
    """File name of each stage net for a net file stem."""
    return {kind: f"{stem}_staged_{kind}.prototxt" for kind in STAGE_NETS}


def _text(net, command):
    return (f"# Generated by: {command}\n"
            f"# Do not edit: change the end-to-end net and regenerate.\n" + format_net(net))


def generated_files(source, stem, command):
    """File name -> text of the three stage nets of ``source``."""
    nets = stage_nets(source)
    names = stage_file_names(stem)
    return {names[kind]: _text(nets[kind], command) for kind in STAGE_NETS}


def committed_files():
    """The stage nets kept in prototxt/: those of the tiny R-FCN (built-in
    dataset) and of R-FCN ResNet-101 (PASCAL VOC), cut from the nets
    ``prototxt.rfcn`` writes (rfcn_tiny.prototxt, rfcn_resnet101.prototxt)."""
    files = {}
    for stem, text in (("rfcn_tiny", rfcn.rfcn_net_both("tiny", rfcn.TINY_CLASSES, rfcn.TINY_K)),
                       ("rfcn_resnet101", rfcn.rfcn_net_both(101))):
        files.update(generated_files(text, stem, "python -m prototxt.staged --regenerate "
                                                  f"(from prototxt.rfcn's {stem}.prototxt)"))
    return files


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m prototxt.staged",
        description="Cut the stage nets of Faster R-CNN's staged (alternating) training from an "
                    "end-to-end net holding both phases: the RPN training net, the detector "
                    "training net on precomputed proposals, and the proposal generation net.")
    parser.add_argument("net", nargs="?", help="end-to-end net file (TRAIN and TEST phases, "
                                               "native layers), e.g. prototxt/rfcn_resnet101.prototxt")
    parser.add_argument("--out-dir", type=Path, help="write the three nets there (default: "
                                                      "beside the net)")
    parser.add_argument("--stem", help="file name stem (default: the net file's)")
    parser.add_argument("--regenerate", action="store_true",
                        help="rewrite the stage nets kept in prototxt/")
    args = parser.parse_args(argv)
    try:
        if args.regenerate:
            files, folder = committed_files(), HERE
        elif args.net:
            source = Path(args.net)
            stem = args.stem or source.stem
            folder = args.out_dir or source.parent
            command = f"python -m prototxt.staged {args.net}"
            files = generated_files(str(source), stem, command)
        else:
            parser.error("give an end-to-end net file, or --regenerate")
    except (ValueError, OSError, EngineError) as exc:
        parser.error(str(exc))
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
        print(f"wrote {folder / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
