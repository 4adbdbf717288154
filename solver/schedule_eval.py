"""The end of a schedule run: the final detector (the last assemble or
training stage) evaluated on the test split when it can be read (VOC mAP /
COCO AP, the evaluation call of every entry point) into
``<out>/evaluation.json``, and the closing summary.

    final_evaluation(runner, previous_state)
    summary(runner, timings)

Under MPI the test images are split across the ranks (detection.evaluate);
rank 0 writes ``evaluation.json`` and the log record.
"""
import os

from netdef.errors import DataError, NetDefinitionError
from solver.blas import blas_threads_for
from solver.cli import is_coco_path
from detection.evaluate import evaluate_detector, open_test_set, summary_line
from detection.detector import DETECTION_BLOBS, Detector, load_test_net
from solver.progress import format_duration
from solver.schedule_state import digest, write_json
from solver.world import current_world

__all__ = ["final_stage", "final_evaluation", "summary"]


def final_stage(schedule):
    """The stage whose weights are the schedule's detector, or None."""
    for stage in reversed(schedule.stages):
        if stage.kind in ("train", "assemble"):
            return stage
    return None


def _test_net(runner, stage, weights):
    """``(net, TestNetInfo)`` of the final stage, or None (said why)."""
    try:
        net, info = load_test_net(stage.net, weights, device=runner.device)
    except NetDefinitionError as exc:
        runner.say(f"no evaluation: no test net for {stage.param.net or stage.net}: {exc}")
        return None
    if not all(name in net.blobs for name in DETECTION_BLOBS):
        missing = " / ".join(n for n in DETECTION_BLOBS if n not in net.blobs)
        runner.say(f"no evaluation: the test net {info.path} of the last stage is not a "
                   f"detector (it has no {missing}); end the schedule with an assemble stage")
        return None
    return net, info


def final_evaluation(runner, previous):
    """Record the final detector in ``runner.state["final"]`` and evaluate
    it (unless ``runner.evaluate`` is off, or an earlier run ``previous``
    evaluated the same weights on the same images)."""
    stage = final_stage(runner.schedule)
    if stage is None:
        return
    entry = runner.state["stages"][stage.name]
    weights = runner.path(stage.name, "caffemodel" if stage.kind == "assemble"
                          else "solverstate")
    runner.state["final"] = dict(stage=stage.name, weights=runner.rel(weights),
                                 net=os.path.abspath(stage.net))
    runner.say(f"final detector: stage '{stage.name}', {runner.rel(weights)}")
    if not runner.evaluate:
        return
    key = digest([entry.get("key"), runner.test_split, runner.test_images])
    earlier = (previous or {}).get("evaluation")
    if earlier and earlier.get("key") == key:
        runner.state["evaluation"] = earlier
        runner.say(f"evaluation: done in an earlier run: {summary_line(earlier)}")
        return
    try:
        test_set = open_test_set(runner.root, runner.test_split, on_error=runner.on_error,
                                 pad_to=runner.train_set.num_classes, images=runner.test_images)
    except (DataError, OSError) as exc:
        runner.say(f"no evaluation: cannot read the test split '{runner.test_split}': {exc}")
        return
    found = _test_net(runner, stage, weights)
    if found is None:
        return
    net, info = found
    detector = Detector(net, scale=info.scale, max_size=info.max_size,
                        bbox_normalization=info.bbox_normalization)
    runner.say(f"evaluating on {len(test_set)} images of split '{runner.test_split}' (scale "
               f"{info.scale}, max {info.max_size}) ...")
    world = current_world()
    with blas_threads_for(net, runner.device, runner.blas_threads, runner.say):
        _, table, result, seconds = evaluate_detector(detector, test_set,
                                                      is_coco_path(runner.root), runner.stream,
                                                      world=world)
    result = dict(result, key=key, stage=stage.name, images=len(test_set),
                  seconds=round(seconds, 3))
    runner.state["evaluation"] = result
    if world.is_root:
        write_json(os.path.join(runner.out, "evaluation.json"), dict(result, table=table))
        runner.progress.event("eval", f"final detector: {summary_line(result)}", **result)


def summary(runner, timings):
    """The closing lines: per stage its kind, status, time and output; the
    command that tests the final detector."""
    lines = [f"schedule '{runner.schedule.name}' finished in "
             f"{format_duration(runner.state['seconds'])}:"]
    for stage, status, seconds in timings:
        entry = runner.state["stages"][stage.name]
        output = entry.get("caffemodel") or entry.get("file") or ""
        lines.append(f"  {stage.name:<20} {stage.kind:<9} {status:<7} "
                     f"{format_duration(seconds) if status == 'ran' else '-':>7}  {output}")
    final = runner.state.get("final")
    if final:
        net = os.path.relpath(final["net"])
        lines.append(f"test: python -m solver.test {net} --weights "
                     f"{os.path.join(runner.out, final['weights'])}"
                     + (f" --data {runner.data}" if runner.data else ""))
    for line in lines:
        runner.say(line)
