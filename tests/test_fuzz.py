"""The fuzz test: seeded mutants of the project's own prototxt files and of
weight and snapshot files made from a tiny net; every one must either work
or raise a project error (EngineError), never anything else, and never take
long. The cases are tools/fuzz_cases.py's, the mutations tools/fuzz_mutations.py's
and tools/fuzz_binary.py's; the long campaign (tools/fuzz_campaign.py) runs
thousands of them, this test a few hundred.

A failure lists each escape with its mutation and the command that replays
it: ``python -m tools.fuzz_campaign --small --seed 14 --replay prototxt:17``.
"""
import random
import sys

import numpy as np
import pytest

from netdef.errors import EngineError, WeightsError
from netdef.net import Net
from tools import fuzz_campaign, fuzz_cases
from tools.fuzz_binary import mutate_caffemodel, mutate_npz, npz_members, write_npz
from tools.fuzz_cases import (SMALL_PROTOTXT, Case, copy_prototxt_files, make_binary_seeds,
                              make_case, run_case)
from tools.fuzz_mutations import mutate_bytes, mutate_text

SEED = 14
PROTOTXT_CASES = 200
BINARY_CASES = 300
#: Seconds a case may take before it counts as an escape (a hang, not speed).
CASE_LIMIT = 20


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz")
    copy_prototxt_files(path)
    return path


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return make_binary_seeds(tmp_path_factory.mktemp("fuzz_seeds"))


@pytest.fixture(autouse=True)
def small_budget(monkeypatch, folder):
    """A mutant asking for gigabytes meets the memory budget, not the machine;
    relative paths in a mutant resolve inside the temporary folder."""
    monkeypatch.setenv("NETDEF_MEMORY_LIMIT", "512M")
    monkeypatch.chdir(folder)


def escapes_report(outcomes):
    return "\n".join(
        f"{o.case} {o.source} [{'; '.join(o.steps)}] -> {o.detail} (at {o.where})\n"
        f"    python -m tools.fuzz_campaign --small --seed {SEED} --replay {o.case}"
        for o in outcomes if o.result == "escape")


def run_cases(kind, count, folder, seeds):
    return [run_case(make_case(SEED, kind, i, sources=SMALL_PROTOTXT, seeds=seeds), folder,
                     limit=CASE_LIMIT) for i in range(count)]


# -- the fuzz test --------------------------------------------------------------------------

def test_prototxt_mutants_work_or_raise_project_errors(folder, seeds):
    outcomes = run_cases("prototxt", PROTOTXT_CASES, folder, seeds)
    assert not any(o.result == "escape" for o in outcomes), escapes_report(outcomes)
    results = {o.result for o in outcomes}
    assert results == {"works", "error"}       # the mutants reach both ends


def test_binary_mutants_work_or_raise_project_errors(folder, seeds):
    outcomes = run_cases("binary", BINARY_CASES, folder, seeds)
    assert not any(o.result == "escape" for o in outcomes), escapes_report(outcomes)
    assert {o.result for o in outcomes} == {"works", "error"}
    unnamed = [f"{o.case}: {o.detail}" for o in outcomes if not o.named]
    assert not unnamed, "errors that do not name the file:\n" + "\n".join(unnamed)


# -- the engine: deterministic, really mutating, able to fail --------------------------------

def test_cases_are_the_same_for_a_seed(seeds):
    for kind in ("prototxt", "binary"):
        a = make_case(SEED, kind, 3, seeds=seeds)
        b = make_case(SEED, kind, 3, seeds=seeds)
        assert (a.source, a.steps, a.payload, a.action) == (b.source, b.steps, b.payload,
                                                             b.action)
    assert make_case(SEED, "prototxt", 3).payload != make_case(SEED + 1, "prototxt", 3).payload


def test_seed_files_do_not_depend_on_time_or_place(tmp_path):
    assert make_binary_seeds(tmp_path / "a") == make_binary_seeds(tmp_path / "b")


def test_every_mutation_changes_its_input(seeds):
    text = "layer { name: \"a\" type: \"Pooling\" pooling_param { pool: MAX stride: 2 } }\n"
    for i in range(50):
        rng = random.Random(i)
        mutant, steps = mutate_text(rng, text)
        assert steps and (mutant != text or any("swap" in s for s in steps))
        data, steps = mutate_bytes(rng, seeds["weights"])
        assert steps and data != seeds["weights"]
        data, steps = mutate_caffemodel(rng, seeds["caffemodel"])
        assert steps
        members, steps = mutate_npz(rng, npz_members(seeds["solverstate"]))
        assert steps and write_npz(members) != seeds["solverstate"]


def test_number_mutations_reach_the_edges():
    seen = set()
    for i in range(200):
        mutant, steps = mutate_text(random.Random(i), "stride: 2\n", max_steps=1)
        seen.add(mutant.split(": ")[-1].strip())
    assert {"0", "-1", "4294967295", "nan", "9223372036854775808"} <= seen


def case_of(kind, seeds, source="weights", action="copy_from"):
    return Case(f"{kind}:0", source, ["unchanged"], seeds[source], action)


def test_an_exception_other_than_a_project_error_is_an_escape(folder, seeds, monkeypatch):
    def broken(self, path, skip_mismatched=False):
        raise ValueError("not enough values to unpack")
    monkeypatch.setattr(Net, "copy_from", broken)
    outcome = run_case(case_of("binary", seeds), folder)
    assert outcome.result == "escape"
    assert outcome.detail == "ValueError: not enough values to unpack"
    assert outcome.where == "tests/test_fuzz.py:broken"


def test_a_failed_load_that_changed_the_weights_is_an_escape(folder, seeds, monkeypatch):
    def half_loaded(self, path, skip_mismatched=False):
        self.params["conv1"][0].data[...] = 7
        raise WeightsError(f"{path}: bad")
    monkeypatch.setattr(Net, "copy_from", half_loaded)
    outcome = run_case(case_of("binary", seeds), folder)
    assert outcome.result == "escape" and "but changed the weights" in outcome.detail


def test_a_load_that_accepts_non_finite_weights_is_an_escape(folder, seeds, monkeypatch):
    def nan_loaded(self, path, skip_mismatched=False):
        self.params["ip1"][0].data[0, 0] = np.nan
    monkeypatch.setattr(Net, "copy_from", nan_loaded)
    outcome = run_case(case_of("binary", seeds), folder)
    assert outcome.result == "escape" and "non-finite values in ip1/0" in outcome.detail


def test_a_case_over_its_time_limit_is_an_escape(folder, seeds, monkeypatch):
    def forever(self, path, skip_mismatched=False):
        while True:
            pass
    monkeypatch.setattr(Net, "copy_from", forever)
    outcome = run_case(case_of("binary", seeds), folder, limit=0.2)
    assert outcome.result == "escape" and outcome.detail.startswith("timeout")


def test_a_project_error_is_clean_and_its_file_named(folder, seeds):
    outcome = run_case(case_of("binary", seeds, "caffemodel", "restore"), folder)
    assert outcome.result == "error" and outcome.named, outcome
    assert issubclass(WeightsError, EngineError)


@pytest.mark.parametrize("status, err, result", [(2, "error: x.prototxt:3: no", "error"),
                                                 (1, "Traceback ...", "escape"),
                                                 (2, "Traceback ...", "escape")])
def test_inspect_must_exit_0_or_2_with_one_error_line(folder, monkeypatch, status, err, result):
    def inspect(argv):
        print(err, file=sys.stderr)
        return status
    monkeypatch.setattr(fuzz_cases, "inspect_main", inspect)
    case = Case("prototxt:0", "rfcn_tiny.prototxt", [], "name: 'x'", "inspect")
    assert run_case(case, folder).result == result


# -- the campaign ---------------------------------------------------------------------------

def test_campaign_runs_cases_in_a_worker_and_reports(capsys):
    status = fuzz_campaign.main(["--prototxt", "2", "--binary", "2", "--seed", str(SEED),
                                 "--small"])
    out = capsys.readouterr().out
    assert "fuzz campaign, seed 14: 4 cases" in out and "1 worker(s)" in out
    assert out.count("\n") >= 5 and status in (0, 1)
    assert ("escapes: 0 (" in out) == (status == 0)


def test_replay_runs_one_case_here_and_keeps_its_mutant(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fuzz_campaign.tempfile, "mkdtemp", lambda prefix: str(tmp_path))
    status = fuzz_campaign.main(["--small", "--seed", str(SEED), "--replay", "binary:3"])
    out = capsys.readouterr().out
    assert status == 0 and out.startswith("binary:3: ")
    assert f"mutant: {tmp_path}/mutant." in out and "result: error" in out
    assert any(path.name.startswith("mutant.") for path in tmp_path.iterdir())


def test_campaign_report_groups_escapes_with_reproducers():
    outcome = fuzz_campaign.Outcome("binary:9", "weights", ["flip bit 3 of byte 7"], "escape",
                                    "MemoryError: Unable to allocate", "netdef/weights.py:read")
    args = fuzz_campaign.parse_args(["--seed", "5", "--prototxt", "10", "--binary", "20"])
    text = fuzz_campaign.report([outcome], args, 2.0)
    assert "escapes: 1 (exception 0, MemoryError 1, timeout 0, crash 0, state 0)" in text
    assert "a whole run of 10 prototxt and 20 binary cases: about 1 min" in text
    assert "netdef/weights.py:read (1)" in text
    assert "python -m tools.fuzz_campaign --seed 5 --replay binary:9" in text


def test_campaign_stops_handing_out_cases_after_max_seconds(capsys):
    fuzz_campaign.main(["--prototxt", "500", "--binary", "500", "--max-seconds", "0.01",
                        "--small"])
    out = capsys.readouterr().out
    assert "stopped after 0.01 s (--max-seconds)" in out
    assert "a whole run of 500 prototxt and 500 binary cases" in out


def test_campaign_cases_interleave_kinds_and_skip_resumes_a_cut_run():
    args = fuzz_campaign.parse_args(["--prototxt", "3", "--binary", "1", "--skip", "2"])
    assert fuzz_campaign.case_names(args) == ["prototxt:0", "binary:0", "prototxt:1",
                                              "prototxt:2"]
    assert list(fuzz_campaign.Campaign(args).pending) == ["prototxt:1", "prototxt:2"]


def test_parse_bytes():
    assert fuzz_campaign.parse_bytes("3G") == 3 << 30
    assert fuzz_campaign.parse_bytes("512m") == 512 << 20
    assert fuzz_campaign.parse_bytes("1000") == 1000
