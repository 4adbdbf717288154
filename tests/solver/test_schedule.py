"""solver.schedule: the shipped tiny schedule runs every stage from one call
on a 6-image synthetic dataset (3 iterations per stage); frozen layers are
bit-for-bit unchanged; the proposals a stage writes are what the next
stage's data layer gets; resume skips finished stages and continues an
interrupted one exactly; schema errors name the schedule file and the stage;
the shipped schedules parse and their stage nets are what prototxt.staged
writes and build."""
import io
import json
import os
import re

import numpy as np
import pytest

from layers.roi_data import RoIDataLayer
from netdef.errors import NumericalError, ParseError
from netdef.net import Net
from detection.proposals import Proposals
from solver.schedule import STATE_FILE, Schedule, ScheduleError, main, run_schedule
from solver.sgd import SGDSolver
from solver.snapshot import SolverState

HERE = os.path.dirname(os.path.abspath(__file__))
PROTOTXT = os.path.abspath(os.path.join(HERE, "..", "..", "prototxt"))
TINY = os.path.join(PROTOTXT, "tiny_staged_schedule.prototxt")
RESNET = os.path.join(PROTOTXT, "rfcn_resnet101_staged_schedule.prototxt")
ITERS = 3
TRAIN_STAGES = ("stage1_rpn", "stage1_rfcn", "stage2_rpn", "stage2_rfcn")
SHARED = ("conv1", "conv2", "conv3", "conv4", "conv5")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from detection.datasets.synthetic import generate
    return generate(tmp_path_factory.mktemp("schedule_data") / "synthetic", num_train=6,
                    num_test=3, seed=5)


def _run(data, out, **options):
    stream = io.StringIO()
    runner = run_schedule(TINY, data=data, out=out, iters=ITERS, seed=0, stream=stream,
                          **options)
    return runner, stream.getvalue()


@pytest.fixture(scope="module")
def full(data, tmp_path_factory):
    """The whole tiny schedule, once, with set_dataset spied on."""
    calls = []
    original = RoIDataLayer.set_dataset

    def spy(layer, dataset, proposals=None):
        calls.append((layer.has_rpn, [r.image_id for r in dataset.records],
                      None if proposals is None else [np.array(p) for p in proposals]))
        return original(layer, dataset, proposals)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RoIDataLayer, "set_dataset", spy)
        runner, text = _run(data, tmp_path_factory.mktemp("schedule") / "run")
    return runner, text, calls


def weights_of(runner, stage):
    return SolverState.load(runner.path(stage, "solverstate")).weights


# -- the whole schedule -------------------------------------------------------------------------

def test_the_tiny_schedule_runs_every_stage_from_one_call(full):
    runner, text, _ = full
    state = runner.state
    assert list(state["stages"]) == ["stage1_rpn", "stage1_proposals", "stage1_rfcn",
                                     "stage2_rpn", "stage2_proposals", "stage2_rfcn", "detector"]
    assert all(e["status"] == "done" for e in state["stages"].values())
    for name in TRAIN_STAGES:
        entry = state["stages"][name]
        assert entry["iter"] == ITERS
        assert os.path.isfile(runner.path(name, "caffemodel"))
        assert os.path.isfile(runner.path(name, "solverstate"))
    for name in ("stage1_proposals", "stage2_proposals"):
        assert state["stages"][name]["images"] == 6
    # The state file on disk is what the run returned.
    with open(os.path.join(runner.out, STATE_FILE)) as handle:
        assert json.load(handle)["stages"] == json.loads(json.dumps(state["stages"]))
    # The assembled detector is complete and was evaluated on the test split.
    assert state["final"]["stage"] == "detector"
    assert set(state["stages"]["detector"]["sources"]) == {"stage2_rpn", "stage2_rfcn"}
    net = Net(os.path.join(PROTOTXT, "rfcn_tiny.prototxt"), "TEST")
    report = net.copy_from(runner.path("detector", "caffemodel"))
    assert not report.missing and not report.unused
    evaluation = state["evaluation"]
    assert evaluation["metric"] == "voc" and 0.0 <= evaluation["map_07"] <= 1.0
    assert os.path.isfile(os.path.join(runner.out, "evaluation.json"))
    for i, name in enumerate(state["stages"], start=1):
        assert f"[{i}/7] {name} (" in text and f"[{i}/7] {name}" in text
    assert "runs (not run before)" in text


def test_each_stage_trains_from_what_it_declares(full):
    runner, _, _ = full
    rpn1, rfcn1 = weights_of(runner, "stage1_rpn"), weights_of(runner, "stage1_rfcn")
    rpn2, rfcn2 = weights_of(runner, "stage2_rpn"), weights_of(runner, "stage2_rfcn")
    # Stage 2 RPN: shared convolutions from the stage-1 detector (the later
    # init_from), its own layers continued from the stage-1 RPN and trained.
    for layer in SHARED:
        assert not np.array_equal(rpn1[f"{layer}/0"], rfcn1[f"{layer}/0"])
    start = SolverState.load(runner.path("stage2_rpn", "solverstate"))
    assert start.metadata["stage"] == "stage2_rpn"
    assert not np.array_equal(rpn2["rpn_cls_score/0"], rpn1["rpn_cls_score/0"])
    # Stage 2 detector: its head continues from the stage-1 detector.
    assert not np.array_equal(rfcn2["rfcn_cls/0"], rfcn1["rfcn_cls/0"])
    # The detector stages export un-normalized box regression (py-faster-rcnn's
    # snapshots): the .caffemodel's rfcn_bbox differs from the raw weights by
    # the target stds.
    from netdef.weights import read_layer_arrays
    exported = read_layer_arrays(runner.path("stage2_rfcn", "caffemodel"))["rfcn_bbox"][0]
    raw = rfcn2["rfcn_bbox/0"]
    stds = np.repeat(np.tile([0.1, 0.1, 0.2, 0.2], 2), 9)[:, None, None, None]
    np.testing.assert_allclose(exported, raw * stds, rtol=1e-6)


@pytest.mark.parametrize("stage", ["stage2_rpn", "stage2_rfcn"])
def test_frozen_layers_are_exactly_unchanged(full, stage):
    runner, _, _ = full
    after = weights_of(runner, stage)
    # Both stage-2 nets take the shared convolutions from the stage-1 detector
    # and may not move them.
    source = weights_of(runner, "stage1_rfcn")
    for layer in SHARED:
        for i in (0, 1):
            assert np.array_equal(after[f"{layer}/{i}"], source[f"{layer}/{i}"]), (layer, i)
    # ... while the stage's own layers did train.
    own = "rpn_conv/3x3/0" if stage == "stage2_rpn" else "conv_new_1/0"
    assert not np.array_equal(after[own], source.get(own, weights_of(runner, "stage1_rpn")
                                                     .get(own)))
    # The net as trained has lr_mult 0 on every param spec of the frozen layers.
    from netdef.schema import read_net
    trained = read_net(os.path.join(runner.out, runner.state["stages"][stage]["net"]))
    for lp in trained.layer:
        if lp.name in SHARED:
            assert [s.lr_mult for s in lp.param] == [0.0, 0.0]
        elif lp.name in ("rpn_conv/3x3", "conv_new_1"):
            assert [s.lr_mult for s in lp.param] == [1.0, 2.0]
    assert runner.state["stages"][stage]["frozen"] == list(SHARED)


def test_proposals_of_one_stage_feed_the_next(full):
    runner, _, calls = full
    assert [has_rpn for has_rpn, _, _ in calls] == [True, False, True, False]
    assert all(proposals is None for has_rpn, _, proposals in calls if has_rpn)
    for call, stage in ((calls[1], "stage1_proposals"), (calls[3], "stage2_proposals")):
        _, ids, given = call
        written = Proposals.load(runner.path(stage, "file"))
        assert written.image_ids == ids and len(given) == 6
        for boxes, expected in zip(given, written.boxes):
            assert boxes.shape == expected.shape and np.array_equal(boxes, expected)
        assert sum(len(b) for b in given) == runner.state["stages"][stage]["boxes"] > 0
        assert written.meta["from_stage"] == stage.replace("proposals", "rpn")
    # Stage 2 generates with the stage-2 RPN: other proposals.
    assert any(not np.array_equal(a, b) for a, b in zip(calls[1][2], calls[3][2]))
    assert runner.state["stages"]["stage1_rfcn"]["proposals"] == \
        runner.state["stages"]["stage1_proposals"]["file"]


# -- resuming ------------------------------------------------------------------------------

def test_resume_skips_the_finished_stages(full, data, monkeypatch):
    runner, _, _ = full
    solved = []
    monkeypatch.setattr(SGDSolver, "solve", lambda self, resume=None: solved.append(self))
    again, text = _run(data, runner.out, resume=True)
    assert solved == []
    for i, name in enumerate(runner.state["stages"], start=1):
        assert re.search(rf"\[{i}/7\] {name} \(\w+\): skipped: done in an earlier run", text)
    assert "evaluation: done in an earlier run" in text
    assert again.state["stages"] == json.loads(json.dumps(runner.state["stages"]))
    # Without --resume the folder is not overwritten.
    with pytest.raises(ScheduleError, match=r"already holds a run of .*7 stage\(s\) done.*"
                                            r"--resume"):
        _run(data, runner.out)


def test_a_changed_stage_runs_again_with_the_stages_that_read_it(data, tmp_path):
    def three(rpn_lr=0.01, det_lr=0.01):
        return (f'stage {{ name: "rpn" {RPN.replace("0.01", str(rpn_lr))} }}\n'
                'stage { name: "props" generate_proposals { '
                'rpn_net: "NETS/rfcn_tiny_staged_rpn_test.prototxt" from_stage: "rpn" } }\n'
                f'stage {{ name: "det" {DET.replace("0.01", str(det_lr))} '
                'proposals_from: "props" init_from: "stage:rpn" }\n')

    out = tmp_path / "out"

    def run(text):
        stream = io.StringIO()
        run_schedule(write_schedule(tmp_path, text), data=data, out=out, seed=0, stream=stream,
                     resume=True, evaluate=False)
        return stream.getvalue()

    first = run(three())
    assert first.count("runs (not run before)") == 3
    # Only the detector's settings change: only it runs again.
    text = run(three(det_lr=0.02))
    assert "rpn (train): skipped" in text and "props (proposals): skipped" in text
    assert "det (train): runs (again: its settings in the schedule changed)" in text
    # The RPN's settings change: everything after it depends on it.
    text = run(three(rpn_lr=0.03, det_lr=0.02))
    assert "rpn (train): runs (again: its settings in the schedule changed)" in text
    assert "props (proposals): runs (again: a stage it reads from was redone or changed)" in text
    assert "det (train): runs (again: a stage it reads from was redone or changed)" in text
    assert "skipped" not in text
    # A missing output: the stage runs again, its readers are unaffected.
    with open(out / STATE_FILE) as handle:
        proposals_file = out / json.load(handle)["stages"]["props"]["file"]
    os.remove(proposals_file)
    text = run(three(rpn_lr=0.03, det_lr=0.02))
    assert "props (proposals): runs (again: its outputs are missing)" in text
    assert "det (train): skipped" in text


def test_resume_continues_an_interrupted_stage_exactly(full, data, tmp_path, monkeypatch):
    runner, _, _ = full
    original = RoIDataLayer.next_minibatch
    count = {"detector": 0}

    def interrupting(layer):
        if not layer.has_rpn:
            count["detector"] += 1
            if count["detector"] == 2:       # during iteration 1 of stage1_rfcn
                raise KeyboardInterrupt
        return original(layer)

    monkeypatch.setattr(RoIDataLayer, "next_minibatch", interrupting)
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        _run(data, out)
    with open(out / STATE_FILE) as handle:
        state = json.load(handle)
    assert {name: entry["status"] for name, entry in state["stages"].items()} == \
        {"stage1_rpn": "done", "stage1_proposals": "done", "stage1_rfcn": "interrupted"}
    assert state["stages"]["stage1_rfcn"]["iter"] == 1
    assert os.path.isfile(out / state["stages"]["stage1_rfcn"]["snapshot"])

    monkeypatch.setattr(RoIDataLayer, "next_minibatch", original)
    resumed, text = _run(data, out, resume=True)
    assert "stage1_rpn (train): skipped" in text
    assert "stage1_proposals (proposals): skipped" in text
    assert "stage1_rfcn (train): runs (continuing: it was interrupted at iteration 1)" in text
    assert "resuming from iteration 1" in text
    # Exactly the weights of the uninterrupted run, in every later stage too.
    for stage in TRAIN_STAGES:
        a, b = weights_of(runner, stage), weights_of(resumed, stage)
        assert a.keys() == b.keys()
        assert all(np.array_equal(a[k], b[k]) for k in a), stage


def test_the_frozen_check_fires_when_a_frozen_layer_moves(data, tmp_path, monkeypatch):
    schedule = write_schedule(tmp_path, """
      stage { name: "rpn" net: "NETS/rfcn_tiny_staged_rpn_train.prototxt"
              frozen_layer: "conv2" solver { base_lr: 0.01 max_iter: 1 lr_policy: "fixed" } }""")
    original = SGDSolver.solve

    def tampering(self, resume=None):
        result = original(self, resume)
        self.net.layer_dict["conv2"].blobs[1].data[0] += 1.0
        return result

    monkeypatch.setattr(SGDSolver, "solve", tampering)
    with pytest.raises(NumericalError, match=r"stage 'rpn': frozen layer 'conv2' parameter 1 "
                                             r"changed during the stage \(1 of 32 values\)"):
        run_schedule(schedule, data=data, out=tmp_path / "out", seed=0, stream=io.StringIO(),
                     evaluate=False)
    with open(tmp_path / "out" / STATE_FILE) as handle:
        assert json.load(handle)["stages"]["rpn"]["status"] == "failed"


def test_main_runs_and_reports_interrupts_and_errors(data, tmp_path, capsys, monkeypatch):
    one = write_schedule(tmp_path, f'stage {{ name: "rpn" {RPN} }}')
    out = tmp_path / "cli"
    stream = io.StringIO()
    code = main([one, "--data", str(data), "--out", str(out), "--seed", "0"], stream=stream)
    assert code == 0 and "finished in" in stream.getvalue()
    # The last stage is an RPN: there is no detector test net to evaluate.
    assert "no evaluation: the test net" in stream.getvalue()
    assert "rfcn_tiny_staged_rpn_test.prototxt of the last stage is not a detector" \
        in stream.getvalue()
    assert main([one, "--data", str(data), "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    stream = io.StringIO()
    assert main([one, "--data", str(data), "--resume", str(out), "--seed", "0"],
                stream=stream) == 0
    assert "rpn (train): skipped" in stream.getvalue()
    assert main([one, "--data", str(data), "--resume", str(out / "nothing.txt")]) == 2
    assert "--resume takes the output folder" in capsys.readouterr().err
    monkeypatch.setattr(SGDSolver, "solve", lambda self, resume=None: (_ for _ in ()).throw(
        KeyboardInterrupt))
    assert main([one, "--data", str(data), "--out", str(tmp_path / "x")],
                stream=io.StringIO()) == 130


def test_solver_train_hands_schedules_over(data, tmp_path):
    from solver.train import main as train_main
    one = write_schedule(tmp_path, f'stage {{ name: "rpn" {RPN} }}')
    code = train_main([one, "--data", str(data), "--out", str(tmp_path / "t"), "--seed", "0",
                       "--no-eval"], stream=io.StringIO())
    assert code == 0
    with open(tmp_path / "t" / STATE_FILE) as handle:
        assert json.load(handle)["stages"]["rpn"]["status"] == "done"
    code = train_main([one, "--data", str(data), "--resume", str(tmp_path / "t"), "--no-eval"],
                      stream=io.StringIO())
    assert code == 0


# -- schema errors ----------------------------------------------------------------------------

def write_schedule(folder, stages, name="s.prototxt"):
    path = folder / name
    path.write_text('name: "test"\n' + stages.replace("NETS/", PROTOTXT + "/"))
    return str(path)


RPN = ('net: "NETS/rfcn_tiny_staged_rpn_train.prototxt" '
       'solver { lr_policy: "fixed" base_lr: 0.01 max_iter: 1 }')
DET = ('net: "NETS/rfcn_tiny_staged_detector_train.prototxt" '
       'solver { lr_policy: "fixed" base_lr: 0.01 max_iter: 1 }')


@pytest.mark.parametrize("stages, message", [
    (f'stage {{ name: "a" {RPN} init_from: "stage:nope" }}',
     r"stage 'a': init_from 'nope' is not a stage of this schedule; stages before this one: "
     r"none"),
    (f'stage {{ name: "a" {RPN} init_from: "stage:b" }} stage {{ name: "b" {RPN} }}',
     r"stage 'a': init_from 'b' refers to a later stage"),
    (f'stage {{ name: "rpn1" {RPN} }} stage {{ name: "b" {RPN} init_from: "stage:rnp1" }}',
     r"stage 'b': init_from 'rnp1' is not a stage of this schedule \(did you mean 'rpn1'\?\)"),
    ('stage { name: "a" net: "missing_net.prototxt" solver { max_iter: 1 } }',
     r"stage 'a': net 'missing_net.prototxt' not found \(looked for '.*missing_net.prototxt'"),
    (f'stage {{ name: "a" {RPN} frozen_layer: "conv9" }}',
     r"stage 'a': frozen_layer 'conv9' matches no layer of the TRAIN phase of "
     r".*rfcn_tiny_staged_rpn_train.prototxt \(did you mean 'conv5' or"),
    (f'stage {{ name: "a" {RPN} frozen_layer: "res4*" }}',
     r"stage 'a': frozen_layer 'res4\*' matches no layer"),
    (f'stage {{ name: "a" {RPN} }} stage {{ name: "p" generate_proposals {{ '
     f'rpn_net: "NETS/rfcn_tiny_staged_rpn_test.prototxt" from_stage: "a" }} }} '
     f'stage {{ name: "d" {DET} proposals_from: "a" }}',
     r"stage 'd': proposals_from 'a' is a training stage; it must be a generate_proposals "
     r"stage"),
    (f'stage {{ name: "a" {RPN} generate_proposals {{ }} }}',
     r"stage 'a': a stage is exactly one of.*found training \(net, solver\) and "
     r"generate_proposals"),
    ('stage { name: "a" }', r"stage 'a': a stage is exactly one of.*found none of them"),
    (f'stage {{ name: "a" {RPN} }} stage {{ name: "a" {RPN} }}',
     r"stage #2 'a': a stage named 'a' comes earlier"),
    (f'stage {{ {RPN} }}', r"stage #1: every stage needs a name"),
    ('random_seed: 1', r"no stage \{ \.\.\. \} blocks"),
    (f'stage {{ name: "a" {RPN} init_from: "random" init_from: "pretrained" }}',
     r"stage 'a': init_from \"random\" stands alone"),
    (f'stage {{ name: "a" {RPN} init_from: "imagenet" }}',
     r"stage 'a': init_from 'imagenet': expected \"pretrained\""),
    ('stage { name: "a" net: "NETS/rfcn_tiny_staged_rpn_train.prototxt" '
     'solver { max_iter: 1 test_iter: 5 test_interval: 10 } }',
     r"stage 'a': solver sets test_iter, test_interval, which the schedule runner sets"),
    ('stage { name: "a" net: "NETS/rfcn_tiny_staged_rpn_train.prototxt" '
     'solver { max_iter: 1 base_lr: 0.1 } }',
     r"stage 'a': solver: lr_policy is not set"),
    ('stage { name: "a" net: "NETS/rfcn_tiny_staged_rpn_train.prototxt" }',
     r"stage 'a': a training stage needs solver \{ \.\.\. \} settings"),
    ('stage { name: "p" generate_proposals { rpn_net: "NETS/rfcn_tiny_staged_rpn_test.prototxt" '
     'from_stage: "p0" } }', r"stage 'p': from_stage 'p0' is not a stage"),
    (f'stage {{ name: "a" {RPN} }} stage {{ name: "d" assemble {{ net: "NETS/rfcn_tiny.prototxt"'
     f' from_stage: "a" from_stage: "z" }} }}', r"stage 'd': from_stage 'z' is not a stage"),
    ('stage { name: "a b" net: "x" }', r"stage #1 'a b': the name must be letters"),
])
def test_schema_errors_name_the_schedule_file_and_the_stage(tmp_path, stages, message):
    path = write_schedule(tmp_path, stages)
    with pytest.raises(ScheduleError) as info:
        Schedule(path)
    assert str(info.value).startswith(path + ": ")
    assert re.search(message, str(info.value)), str(info.value)


def test_syntax_errors_give_file_line_and_column(tmp_path):
    path = write_schedule(tmp_path, 'stage {\n  name: "a"\n  nett: "x"\n}\n')
    with pytest.raises(ParseError, match=re.escape(path) + r':4:3: .*"nett".*Did you mean "net"'):
        Schedule(path)


@pytest.mark.parametrize("stages, message", [
    # The precomputed-RoI net without proposals.
    (f'stage {{ name: "d" {DET} }}',
     r"stage 'd': the data layer 'input-data' of .* is in its precomputed-RoI form \(has_rpn: "
     r"false\), so the stage needs proposals_from"),
    # A pattern that matches only parameter-free layers.
    (f'stage {{ name: "a" {RPN} frozen_layer: "*_relu" }}',
     r"stage 'a': frozen_layer '\*_relu' matches only layers without parameters "
     r"\(conv1_relu, .*\): nothing to freeze"),
])
def test_errors_found_when_a_stage_starts(data, tmp_path, stages, message):
    path = write_schedule(tmp_path, stages)
    with pytest.raises(ScheduleError, match=re.escape(path) + ": " + message):
        run_schedule(path, data=data, out=tmp_path / "out", seed=0, stream=io.StringIO())


def test_a_frozen_layer_sharing_a_trained_parameter_is_refused(data, tmp_path):
    net = open(os.path.join(PROTOTXT, "rfcn_tiny_staged_rpn_train.prototxt")).read()
    # conv_extra shares conv5's weights by ParamSpec name; conv5 trains.
    net = net.replace('name: "conv5"\n  type: "Convolution"\n  bottom: "conv4"\n  top: "conv5"\n'
                      '  param {\n', 'name: "conv5"\n  type: "Convolution"\n  bottom: "conv4"\n'
                      '  top: "conv5"\n  param {\n    name: "w5"\n')
    net += ('layer { name: "conv_extra" type: "Convolution" bottom: "conv4" top: "extra" '
            'param { name: "w5" } param { } convolution_param { num_output: 64 kernel_size: 3 '
            'pad: 2 dilation: 2 } }\nlayer { name: "silence_extra" type: "Silence" '
            'bottom: "extra" }\n')
    (tmp_path / "shared.prototxt").write_text(net)
    path = write_schedule(tmp_path, 'stage { name: "a" net: "shared.prototxt" '
                                    'frozen_layer: "conv_extra" solver { max_iter: 1 '
                                    'lr_policy: "fixed" } }')
    with pytest.raises(ScheduleError, match=r"stage 'a': frozen layer 'conv_extra' shares "
                                            r"parameter 0 with layer 'conv5', which is trained"):
        run_schedule(path, data=data, out=tmp_path / "out", seed=0, stream=io.StringIO())


# -- the shipped files -------------------------------------------------------------------------

def test_the_committed_stage_nets_are_what_the_generator_writes():
    from prototxt.staged import committed_files
    for name, text in committed_files().items():
        with open(os.path.join(PROTOTXT, name)) as handle:
            assert handle.read() == text, f"{name} is stale: python -m prototxt.staged --regenerate"


@pytest.mark.parametrize("path", [TINY, RESNET])
def test_the_shipped_schedules_parse(path):
    schedule = Schedule(path)
    kinds = [s.kind for s in schedule.stages]
    assert kinds == ["train", "proposals", "train", "train", "proposals", "train", "assemble"]
    frozen = [list(s.param.frozen_layer) for s in schedule.stages if s.kind == "train"]
    assert frozen[0] == [] and frozen[1] == [] and frozen[2] == frozen[3] != []


def test_the_reference_schedule_follows_py_faster_rcnn():
    """80k / 40k / 80k / 40k iterations, steps at 60k / 30k (py-faster-rcnn's
    train_faster_rcnn_alt_opt.py and its stage solvers), base_lr 0.001."""
    schedule = Schedule(RESNET)
    solvers = [s.param.solver for s in schedule.stages if s.kind == "train"]
    assert [s.max_iter for s in solvers] == [80000, 40000, 80000, 40000]
    assert [s.stepsize for s in solvers] == [60000, 30000, 60000, 30000]
    assert all(s.base_lr == pytest.approx(0.001) and s.lr_policy == "step" for s in solvers)
    assert [list(s.param.init_from) for s in schedule.stages if s.kind == "train"][:2] == \
        [["pretrained"], ["pretrained"]]


def test_the_reference_stage_nets_build():
    """R-FCN ResNet-101's stage nets: built (shapes inferred) with the
    schedule's freezing applied to the shared trunk."""
    schedule = Schedule(RESNET)
    from solver.schedule import match_layers
    built = {}
    for stage in schedule.stages:
        if stage.kind == "train" and stage.net not in built:
            built[stage.net] = Net(stage.net, "TRAIN")
    rpn = built[schedule.by_name["stage2_rpn"].net]
    detector = built[schedule.by_name["stage2_rfcn"].net]
    patterns = list(schedule.by_name["stage2_rpn"].param.frozen_layer)
    shared = [n for n, layer in rpn.layer_dict.items() if layer.blobs and n in detector.layer_dict
              and n != "input-data"]
    frozen = {n for p in patterns for n in match_layers(p, list(rpn.layer_dict))}
    # The patterns freeze exactly the parameter layers the two nets share.
    assert sorted(n for n in frozen if rpn.layer_dict[n].blobs) == sorted(shared)
    assert "rpn_conv/3x3" in rpn.layer_dict and "res5a_branch1" not in rpn.layer_dict
    assert "rfcn_cls" in detector.layer_dict and "rpn_conv/3x3" not in detector.layer_dict
    proposals = schedule.by_name["stage1_proposals"]
    Net(proposals.net, "TEST")


def test_the_built_in_dataset_fills_the_first_classes_of_a_larger_net(data, tmp_path,
                                                                       monkeypatch):
    from prototxt import rfcn
    from prototxt.staged import generated_files
    import solver.schedule
    for name, text in generated_files(rfcn.rfcn_net_both("tiny", 9, 3), "nine", "test").items():
        (tmp_path / name).write_text(text)
    path = write_schedule(tmp_path, 'stage { name: "rpn" net: "nine_staged_rpn_train.prototxt" '
                                    'solver { lr_policy: "fixed" base_lr: 0.01 max_iter: 1 } }')
    monkeypatch.setattr(solver.schedule, "builtin_dataset", lambda say: str(data))
    stream = io.StringIO()
    runner = run_schedule(path, out=tmp_path / "out", seed=0, stream=stream, evaluate=False)
    assert "is built for 8 classes, the built-in dataset has 6: they train as the first 6" \
        in stream.getvalue()
    assert runner.state["stages"]["rpn"]["status"] == "done"
    assert runner.train_set.classes[-2:] == ("unused7", "unused8")


def test_stage_nets_need_an_end_to_end_native_net(tmp_path):
    from prototxt.staged import main as staged_main, stage_nets
    text = open(os.path.join(PROTOTXT, "rfcn_tiny_staged_rpn_train.prototxt")).read()
    with pytest.raises(ValueError, match=r"the TRAIN phase needs exactly one ProposalTarget "
                                         r"layer .* \(found 0\)"):
        stage_nets(text)
    assert staged_main([os.path.join(PROTOTXT, "rfcn_tiny.prototxt"), "--out-dir",
                        str(tmp_path), "--stem", "mine"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["mine_staged_detector_train.prototxt",
                                            "mine_staged_rpn_test.prototxt",
                                            "mine_staged_rpn_train.prototxt"]


@pytest.mark.gpu
def test_the_tiny_schedule_runs_on_the_gpu(data, tmp_path):
    from netdef.device import Device
    runner = run_schedule(TINY, data=data, out=tmp_path / "gpu", iters=2, seed=0,
                          stream=io.StringIO(), device=Device("gpu", 0))
    assert all(e["status"] == "done" for e in runner.state["stages"].values())
    assert runner.state["stages"]["stage2_rfcn"]["frozen"] == list(SHARED)
    assert runner.state["evaluation"]["metric"] == "voc"


def test_small_nets_train_on_one_blas_thread_and_the_default_comes_back(data, tmp_path,
                                                                         monkeypatch):
    import solver.blas
    calls = []
    monkeypatch.setattr(solver.blas, "set_blas_threads", lambda n: calls.append(n) or True)
    monkeypatch.setattr(solver.blas, "get_blas_threads", lambda: 7)   # the count before
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    one = write_schedule(tmp_path, f'stage {{ name: "rpn" {RPN} }}')
    stream = io.StringIO()
    run_schedule(one, data=data, out=tmp_path / "a", seed=0, stream=stream, evaluate=False)
    assert calls == [1, 7]
    assert "BLAS on 1 thread(s) (a small net: 0.22 G multiply-adds per pass)" in stream.getvalue()
    calls.clear()
    run_schedule(one, data=data, out=tmp_path / "b", seed=0, stream=io.StringIO(),
                 evaluate=False, blas_threads=2)
    assert calls == [2, 7]
