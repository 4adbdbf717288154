"""A training stage of a schedule: the stage's TRAIN net with its frozen
layers, fed with the training split (and an earlier stage's proposals),
trained as one TrainingSession (the one solver.train runs), then checked:
every frozen parameter is bit-for-bit what it was.

    entry = train_stage(runner, stage, key)   # the stage's state entry
"""
import gc
import os

import numpy as np

from netdef.device import to_numpy
from netdef.errors import NetDefinitionError, NumericalError
from netdef.graph import filter_net
from netdef.net import Net
from netdef.schema import format_net, read_net, upgrade_solver
from detection.detector import load_weights
from solver.defaults import apply_reference_config, reference_config
from solver.progress import Progress
from detection.proposals import Proposals
from solver.schedule_file import ScheduleError, match_layers
from solver.schedule_state import resumable_snapshot, stage_seed, write_text
from solver.session import TrainingSession
from solver.world import current_world

__all__ = ["train_stage", "build_train_net"]


def _solver_param(runner, stage):
    """The stage's solver settings (``--iters`` applied; the final weights
    are always snapshotted: they are the stage's output)."""
    param = stage.param.solver.__class__()
    param.CopyFrom(stage.param.solver)
    param = upgrade_solver(param, stage.where)
    if runner.iters is not None:
        param.max_iter = runner.iters
    if param.max_iter < 1:
        raise runner.schedule.error(stage, f"solver max_iter must be >= 1, found "
                                           f"{param.max_iter}")
    param.snapshot_after_train = True
    return param


def _freeze(net_param, frozen, net):
    """Set lr_mult 0 on every param spec of the ``frozen`` layers of
    ``net_param``; with the built ``net``, also on the blobs a layer has no
    spec for (they would train at lr_mult 1). True when specs were added."""
    added = False
    for lp in net_param.layer:
        if lp.name not in frozen:
            continue
        for spec in lp.param:
            spec.lr_mult, spec.decay_mult = 0.0, 0.0
        if net is not None:
            while len(lp.param) < len(net.layer_dict[lp.name].blobs):
                lp.param.add(lr_mult=0.0, decay_mult=0.0)
                added = True
    return added


def _check_frozen_layers(runner, stage, net, matches, frozen):
    """The frozen layers with parameters; ScheduleError for a pattern that
    matches only parameter-free layers, or a frozen layer sharing a
    parameter with a trained one."""
    for pattern, found in matches.items():
        if not any(net.layer_dict[n].blobs for n in found if n in net.layer_dict):
            raise runner.schedule.error(
                stage, f"frozen_layer '{pattern}' matches only layers without parameters "
                       f"({', '.join(found)}): nothing to freeze")
    frozen = [n for n in net.layer_dict if n in frozen and net.layer_dict[n].blobs]
    trained = {id(lp.blob): lp.layer for lp in net.learnable_params if lp.lr_mult != 0}
    for name in frozen:
        for i, blob in enumerate(net.layer_dict[name].blobs):
            if id(blob) in trained:
                raise runner.schedule.error(
                    stage, f"frozen layer '{name}' shares parameter {i} with layer "
                           f"'{trained[id(blob)]}', which is trained in this stage; freeze "
                           f"both or neither")
    return frozen


def build_train_net(runner, stage, seed):
    """The stage's TRAIN net with the frozen layers' lr_mult 0 (written to
    <out>/<stage>/train_net.prototxt); returns (net, frozen layer names)."""
    copy_path = os.path.join(runner.out, stage.name, "train_net.prototxt")
    net_param, _ = filter_net(read_net(stage.net), "TRAIN")
    config = reference_config(net_param)
    applied = apply_reference_config(net_param, config)
    if applied:
        runner.say(f"  {config.project} Python layers: applied {config.path}: " + ", ".join(
            f"{layer}.{key}={value!r}" for layer, key, value in applied))
    names = [lp.name for lp in net_param.layer]
    matches = {pattern: match_layers(pattern, names) for pattern in stage.param.frozen_layer}
    frozen = {n for found in matches.values() for n in found}
    world = current_world()

    def build():
        header = (f"# The TRAIN net of stage '{stage.name}' of {runner.schedule.path}: "
                  f"{stage.param.net}" + (f" with layers {', '.join(sorted(frozen))} "
                                          f"frozen (lr_mult 0)" if frozen else "") + "\n")
        if world.is_root:   # rank 0 writes; the others read it once it is there
            write_text(copy_path, header + format_net(net_param))
        world.barrier()
        return Net(copy_path, "TRAIN", device=runner.device, dtype=runner.dtype, seed=seed)

    _freeze(net_param, frozen, None)
    net = build()
    # A layer with fewer param specs than blobs trains the rest at lr_mult
    # 1: give every blob a frozen spec and build again.
    if _freeze(net_param, frozen, net):
        net = build()
    return net, _check_frozen_layers(runner, stage, net, matches, frozen)


def _feed(runner, stage, session):
    """Hand the training split to the data layer: end-to-end (ground truth
    for the RPN), or with the proposals of ``proposals_from``."""
    layer, p = session.data_layer, stage.param
    dataset = session.prepare(runner.train_set, builtin=not runner.data, label=p.net,
                              where=f"{stage.where}: ")
    runner.train_set = runner.datasets[runner.train_split] = dataset
    if layer.has_rpn:
        if p.HasField("proposals_from"):
            raise runner.schedule.error(
                stage, f"proposals_from is set, but the data layer '{layer.name}' of "
                       f"{p.net} is in its end-to-end form (has_rpn: tops data, im_info, "
                       f"gt_boxes), which takes no proposals")
        session.feed(dataset)
        runner.say(f"  data: {len(dataset)} images of '{dataset.name}', "
                   f"{layer.examples} examples with flips, ground truth for the RPN")
        return
    if not p.HasField("proposals_from"):
        raise runner.schedule.error(
            stage, f"the data layer '{layer.name}' of {p.net} is in its precomputed-RoI form "
                   f"(has_rpn: false), so the stage needs proposals_from: a "
                   f"generate_proposals stage before it")
    path = runner.path(p.proposals_from, "file")
    proposals = Proposals.load(path)
    session.feed(dataset, proposals.for_dataset(dataset, path))
    runner.say(f"  data: {len(dataset)} images of '{dataset.name}', {layer.examples} examples "
               f"with flips, {proposals.total} proposals from stage '{p.proposals_from}' "
               f"({runner.rel(path)})")


def _initialize(runner, stage, net, frozen):
    """Load init_from in order; returns the names of the layers loaded."""
    loaded = set()
    for source in list(stage.param.init_from) or ["random"]:
        if source == "random":
            runner.say("  init: random (the net's fillers)")
            continue
        if source == "pretrained":
            path = runner.pretrained_path()
            if path is None:
                runner.say("  init: no pretrained weights (neither --weights nor the "
                           "schedule's pretrained): this stage starts from random "
                           "initialization (the net's fillers)")
                continue
            what = "pretrained"
        else:
            name = source[len("stage:"):]
            path, what = runner.path(name, "solverstate"), f"stage '{name}'"
        report = load_weights(net, path).report
        loaded.update(report.loaded)
        runner.say(f"  init from {what}: {report.summary()}")
    unset = [n for n in frozen if n not in loaded]
    if unset:
        runner.say(f"  warning: frozen layer(s) {', '.join(unset)} were not loaded by "
                   f"init_from, so they stay at their random initial values")
    return loaded


def _check_frozen(runner, stage, net, before):
    for name, arrays in before.items():
        for i, (was, blob) in enumerate(zip(arrays, net.layer_dict[name].blobs)):
            now = to_numpy(blob.data)
            if not np.array_equal(was, now):
                changed = int(np.count_nonzero(was != now))
                raise NumericalError(
                    f"{stage.where}: frozen layer '{name}' parameter {i} changed during the "
                    f"stage ({changed} of {now.size} values); frozen layers must keep "
                    f"their weights exactly")
    if before:
        runner.say(f"  checked: the {len(before)} frozen layer(s) are unchanged")


def _create_solver(runner, stage, session, param, key, seed, progress):
    """The session's solver with the stage's metadata; solver errors name
    the stage."""
    folder = os.path.join(runner.out, stage.name)
    export = session.box_export()
    metadata = session.metadata(runner.train_set, runner.root, export,
                                schedule=os.path.abspath(runner.schedule.path),
                                stage=stage.name, stage_key=key)
    try:
        session.create_solver(param, progress=progress, seed=seed,
                              prefix=os.path.join(folder, stage.name), metadata=metadata,
                              export=export, base_dir=runner.schedule.base_dir)
    except NetDefinitionError as exc:
        # The solver names its source "<SolverParameter>": name the stage.
        text = str(exc).replace("<SolverParameter>: ", "", 1)
        raise ScheduleError(f"{stage.where}: solver: {text}") from None
    return metadata


def _resume_or_initialize(runner, stage, session, key, metadata, frozen):
    solver, prefix = session.solver, session.solver.snapshot_prefix
    snapshot = resumable_snapshot(prefix, key, runner.say, runner.rel) if runner.resume \
        else None
    if snapshot is not None:
        solver.restore(snapshot)
        solver.metadata.update(metadata)
        runner.say(f"  resuming from iteration {solver.iter} ({runner.rel(snapshot)})")
    else:
        _initialize(runner, stage, session.net, frozen)


def _train(runner, stage, key, session, param, frozen, seed, progress):
    """Train the stage to its max_iter; returns (solverstate, caffemodel)."""
    metadata = _create_solver(runner, stage, session, param, key, seed, progress)
    solver, net = session.solver, session.net
    _resume_or_initialize(runner, stage, session, key, metadata, frozen)
    before = {name: [np.array(to_numpy(blob.data)) for blob in net.layer_dict[name].blobs]
              for name in frozen}
    runner.say(f"  training iterations {solver.iter}..{param.max_iter} (base_lr "
               f"{param.base_lr:g}, lr_policy {param.lr_policy}, seed {seed})")
    try:
        paths = session.train()
    except KeyboardInterrupt:
        where = solver.interrupt_snapshot
        runner.state["stages"][stage.name] = dict(
            kind="train", status="interrupted", key=key, iter=solver.iter,
            snapshot=runner.rel(where) if where else None)
        runner.say(f"interrupted in stage '{stage.name}' at iteration {solver.iter}"
                   + (f" (snapshot {runner.rel(where)})" if where else "")
                   + f": continue with python -m solver.schedule {runner.schedule.path} "
                     f"--out {runner.out} --resume")
        raise
    _check_frozen(runner, stage, net, before)
    return paths


def train_stage(runner, stage, key):
    """Run the training ``stage`` in ``runner`` (a ScheduleRun) with its
    ``key``; returns the state entry (iter, solverstate, caffemodel, net,
    frozen, init, loss, proposals)."""
    folder = os.path.join(runner.out, stage.name)
    world = current_world()   # data-parallel stages: rank 0 writes (solver.world)
    if world.is_root:
        os.makedirs(folder, exist_ok=True)
    seed = stage_seed(stage, runner.seed)
    param = _solver_param(runner, stage)
    net, frozen = build_train_net(runner, stage, seed)
    with TrainingSession(net, stage.net, device=runner.device,
                         say=lambda text: runner.say("  " + text),
                         blas_threads=runner.blas_threads,
                         where=f"{stage.where}: the TRAIN phase of {stage.param.net}") as session:
        _feed(runner, stage, session)
        if frozen:
            runner.say(f"  frozen (lr_mult 0): {', '.join(frozen)}")
        progress = Progress(os.path.join(folder, "train_log.jsonl"), stream=runner.stream) \
            if world.is_root else Progress(None, stream=None)
        try:
            state_path, model_path = _train(runner, stage, key, session, param, frozen, seed,
                                            progress)
        finally:
            progress.close()
        solver = session.solver
    entry = dict(iter=solver.iter, max_iter=param.max_iter, solverstate=runner.rel(state_path),
                 caffemodel=runner.rel(model_path),
                 net=runner.rel(os.path.join(folder, "train_net.prototxt")), frozen=frozen,
                 init=list(stage.param.init_from) or ["random"],
                 loss=solver.smoothed_loss if solver.loss_window else None)
    if stage.param.HasField("proposals_from"):
        entry["proposals"] = runner.state["stages"][stage.param.proposals_from]["file"]
    runner.say(f"  final weights: {entry['caffemodel']} (snapshot {entry['solverstate']})")
    del solver, net, session
    gc.collect()
    return entry

