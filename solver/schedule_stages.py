"""The two stage kinds of a schedule that do not train.

    entry = proposals_stage(runner, stage)   # the RPN of a trained stage over a split
    entry = assemble_stage(runner, stage)    # the full detector from stages' weights

generate_proposals: the RPN test net with the final ``.caffemodel`` of
``from_stage`` over the training split (detection.proposals); the file
``<out>/<stage>/<stage>_<key>.npz`` is keyed by its content, so an
interrupted or repeated run reuses it. assemble: the full TEST-phase
detector with, layer by layer, the final ``.caffemodel`` weights of the
``from_stage`` stages (a later stage wins; a layer no stage has is an
error): ``<out>/<stage>/<stage>.caffemodel``.

Under MPI (``mpiexec -n N python -m solver.schedule ...``) the
generate_proposals stage splits the images across the ranks and gathers
them (detection.proposals.generate_proposals with the world); rank 0 writes
the net file and the proposals file, the others wait for them and read them.
"""
import gc
import os
import time

import numpy as np

from netdef.net import Net
from netdef.schema import format_net, read_net
from netdef.weights import copy_layers, read_layer_arrays
from solver.blas import blas_threads_for
from detection.detector import find_data_layer_scale
from solver.progress import format_duration
from detection.proposals import cache_path, generate_proposals, load_or_generate, proposals_key
from solver.schedule_state import write_text
from solver.world import current_world
from detection.shards import root_only

__all__ = ["proposals_stage", "assemble_stage", "rate_counter"]


def rate_counter(progress, what, unit, every=None):
    """A progress callback ``(done, total)``: a line to ``progress`` every
    ~10% (or ``every``) with the rate and the ETA."""
    started = time.perf_counter()

    def report(done, total):
        step = every or max(total // 10, 1)
        if done == total or done % step == 0:
            elapsed = max(time.perf_counter() - started, 1e-9)
            rate = done / elapsed
            eta = (total - done) / rate if rate else None
            progress.message(f"  {what}: {done}/{total} {unit} ({rate:.1f}/s, "
                             f"ETA {format_duration(eta)})")
    return report


def _rpn_net_text(runner, stage, net_path, world=None):
    """The RPN test net with the schedule's top-N overrides, written to
    ``net_path`` (by rank 0 of ``world``; the others wait for it); returns
    its text (part of the proposals' key)."""
    g = stage.param.generate_proposals
    net_param = read_net(stage.net)
    for lp in net_param.layer:
        if lp.type == "Proposal":
            if g.HasField("pre_nms_top_n"):
                lp.proposal_param.test_pre_nms_top_n = g.pre_nms_top_n
            if g.HasField("post_nms_top_n"):
                lp.proposal_param.test_post_nms_top_n = g.post_nms_top_n
    net_text = format_net(net_param)
    overrides = g.HasField("pre_nms_top_n") or g.HasField("post_nms_top_n")
    root_only(world, lambda: write_text(
        net_path, f"# The RPN test net of stage '{stage.name}' of {runner.schedule.path}: "
                  f"{g.rpn_net}" + (" with the schedule's top-N overrides" if overrides else "")
                  + "\n" + net_text))
    return net_text


def proposals_stage(runner, stage):
    """Run the generate_proposals ``stage``; returns its state entry."""
    g = stage.param.generate_proposals
    folder = os.path.join(runner.out, stage.name)
    os.makedirs(folder, exist_ok=True)
    weights = runner.path(g.from_stage, "caffemodel")
    net_path = os.path.join(folder, "rpn_net.prototxt")
    world = current_world()
    net_text = _rpn_net_text(runner, stage, net_path, world)
    if g.HasField("scale"):
        scale, max_size = int(g.scale), int(g.max_size)
    else:
        scale, max_size = find_data_layer_scale(runner.schedule.by_name[g.from_stage].net)
    split = g.split or runner.train_split
    dataset = runner.dataset(split)
    content_key = proposals_key(net_text, weights, dataset.records, scale=scale,
                                max_size=max_size, rois_blob=g.rois_blob,
                                scores_blob=g.scores_blob, dtype=runner.dtype.name)
    path = cache_path(folder, stage.name, content_key)
    runner.say(f"  RPN of stage '{g.from_stage}' ({runner.rel(weights)}) over {len(dataset)} "
               f"images of split '{split}' at scale {scale} (max {max_size})")
    if world.size > 1:
        runner.say(f"  split over {world.size} ranks: rank 0 runs "
                   f"{len(range(0, len(dataset), world.size))} of them (its progress below)")

    def make():
        net = Net(net_path, "TEST", device=runner.device, dtype=runner.dtype,
                  seed=runner.seed + stage.index)
        report = net.copy_from(weights)
        if report.missing:
            raise runner.schedule.error(
                stage, f"the RPN net {g.rpn_net} has layers with parameters that stage "
                       f"'{g.from_stage}' did not train: {', '.join(report.missing)}")
        with blas_threads_for(net, runner.device, runner.blas_threads,
                              lambda text: runner.say("  " + text)):
            return generate_proposals(
                net, dataset.records, scale=scale, max_size=max_size, rois_blob=g.rois_blob,
                scores_blob=g.scores_blob,
                progress=rate_counter(runner.progress, stage.name, "images"),
                meta={"dataset": dataset.name, "split": split, "rpn_net": os.path.abspath(
                    stage.net), "weights": os.path.abspath(weights), "from_stage": g.from_stage,
                    "scale": scale, "max_size": max_size}, world=world)

    proposals, reused = load_or_generate(path, content_key, make, runner.say, world=world)
    per_image = proposals.total / max(len(proposals), 1)
    runner.say(f"  {'reused the cached' if reused else 'wrote'} {proposals.total} proposals "
               f"({per_image:.1f} per image) of {len(proposals)} images: {runner.rel(path)}")
    gc.collect()
    return dict(file=runner.rel(path), proposals_key=content_key, images=len(proposals),
                boxes=proposals.total, split=split, reused=reused, weights=runner.rel(weights))


def _merge_stage_weights(runner, stage, net):
    """The arrays of every parameter layer of ``net`` from the assemble
    stage's ``from_stage`` stages (a later stage wins): ``(layer -> arrays,
    layer -> stage it came from, differing layers as text)``."""
    a = stage.param.assemble
    merged, taken, differ = {}, {}, []
    for name in a.from_stage:
        path = runner.path(name, "caffemodel")
        stored = read_layer_arrays(path)
        for layer_name, layer in net.layer_dict.items():
            if not layer.blobs or layer_name not in stored:
                continue
            arrays = stored[layer_name]
            if len(arrays) != len(layer.blobs):
                raise runner.schedule.error(
                    stage, f"layer '{layer_name}' has {len(layer.blobs)} parameter blob(s) "
                           f"in {a.net} but {len(arrays)} in stage '{name}' ({path})")
            if layer_name in taken and not all(
                    np.array_equal(new, old) for new, old in zip(arrays, merged[layer_name])):
                differ.append(f"{layer_name} ({taken[layer_name]} -> {name})")
            merged[layer_name], taken[layer_name] = arrays, name
    return merged, taken, differ


def assemble_stage(runner, stage):
    """Run the assemble ``stage``; returns its state entry."""
    a = stage.param.assemble
    folder = os.path.join(runner.out, stage.name)
    os.makedirs(folder, exist_ok=True)
    net = Net(stage.net, "TEST", device=runner.device, dtype=runner.dtype)
    merged, taken, differ = _merge_stage_weights(runner, stage, net)
    report = copy_layers(net, merged, f"{stage.where}: the from_stage weights")
    if report.missing:
        raise runner.schedule.error(
            stage, f"layers of {a.net} with parameters that no from_stage trained: "
                   f"{', '.join(report.missing)}")
    if differ:
        runner.say(f"  note: weights that differ between stages, the later taken: "
                   f"{', '.join(differ)}")
    path = os.path.join(folder, f"{stage.name}.caffemodel")
    net.save(path)
    sources = {}
    for layer_name, name in taken.items():
        sources.setdefault(name, []).append(layer_name)
    for name, layers in sources.items():
        runner.say(f"  from stage '{name}': {len(layers)} layers")
    runner.say(f"  detector weights: {runner.rel(path)} (net {a.net})")
    del net
    gc.collect()
    return dict(caffemodel=runner.rel(path), net=os.path.abspath(stage.net),
                sources=sources, differ=differ)
