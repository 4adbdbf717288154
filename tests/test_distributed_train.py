"""Data-parallel training under mpiexec (solver.world, solver.data_parallel):
2 ranks equal one process with iter_size 2, resume of a 2-rank run is
exact, another rank count resumes only with the same images per iteration,
a dead rank or Ctrl-C ends the job at once with the last snapshot intact.
Skipped only where mpi4py or mpiexec is missing (the test extra installs
both: mpi4py and MPICH)."""
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from detection.datasets.synthetic import generate
from solver.snapshot import SolverState
from tests.mpi_harness import MPIEXEC, requires_mpi

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "prototxt" / "rfcn_tiny.prototxt"

pytestmark = requires_mpi

#: A dead rank or Ctrl-C ends every rank within this many seconds (MPICH
#: kills the job when a rank dies; a measured end takes well under 1 s).
BOUND_S = 15


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("data") / "shapes", num_train=8, num_test=2, seed=3)


def solver_file(folder, iter_size, max_iter=2, snapshot=1):
    path = Path(folder) / f"solver_s{iter_size}_{max_iter}.prototxt"
    path.write_text(f'net: "{TINY}"\nbase_lr: 0.005\nlr_policy: "fixed"\nmomentum: 0.9\n'
                    f'weight_decay: 0.0005\nmax_iter: {max_iter}\ndisplay: 1\n'
                    f'snapshot: {snapshot}\nrandom_seed: 5\niter_size: {iter_size}\n'
                    f'clip_gradients: 20\n')
    return path


def environment(**extra):
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("PMI_", "OMPI_", "PMIX_", "SLURM_"))}
    environ.update(extra)
    return environ


def command(ranks, solver, data, out, *more):
    train = [sys.executable, "-m", "solver.train", str(solver), "--data", str(data),
             "--out", str(out), "--no-eval", *more]
    return [MPIEXEC, "-n", str(ranks)] + train if ranks > 1 else train


def train(ranks, solver, data, out, *more):
    done = subprocess.run(command(ranks, solver, data, out, *more), cwd=ROOT,
                          env=environment(), capture_output=True, text=True, timeout=300)
    return done


def weights(path):
    return SolverState.load(path).weights


def assert_same_weights(a, b, rtol=1e-5):
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=0, err_msg=key)


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """The 2-rank run (iter_size 1) and the one-process run (iter_size 2),
    2 iterations with a snapshot at 1."""
    folder = tmp_path_factory.mktemp("runs")
    two = train(2, solver_file(folder, 1), data, folder / "two")
    assert two.returncode == 0, two.stdout + two.stderr
    one = train(1, solver_file(folder, 2), data, folder / "one")
    assert one.returncode == 0, one.stdout + one.stderr
    return folder, two


def test_two_ranks_equal_one_process_with_iter_size_2(runs):
    folder, two = runs
    final = folder / "two" / "rfcn_tiny_iter_2.solverstate.npz"
    assert_same_weights(weights(final),
                        weights(folder / "one" / "rfcn_tiny_iter_2.solverstate.npz"))
    state = SolverState.load(final)
    assert (state.world_size, state.iter_size) == (2, 1)
    # Rank 0 speaks for the job: each line once.
    assert two.stdout.count("optimization done at iteration 2") == 1
    assert "data-parallel training on 2 MPI ranks" in two.stdout
    # The losses are those of one process with iter_size 2 (the mean of 2 passes).
    one_log = (folder / "one" / "train_log.jsonl").read_text()
    two_log = (folder / "two" / "train_log.jsonl").read_text()
    assert [line.split('"loss": ')[1][:8] for line in two_log.splitlines() if '"train"' in line] \
        == [line.split('"loss": ')[1][:8] for line in one_log.splitlines() if '"train"' in line]


def test_two_rank_resume_is_exact(runs, data):
    folder, _ = runs
    out = folder / "two_resumed"
    done = train(2, solver_file(folder, 1), data, out,
                 "--resume", str(folder / "two" / "rfcn_tiny_iter_1.solverstate.npz"))
    assert done.returncode == 0, done.stdout + done.stderr
    straight = weights(folder / "two" / "rfcn_tiny_iter_2.solverstate.npz")
    resumed = weights(out / "rfcn_tiny_iter_2.solverstate.npz")
    for key in straight:
        np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)


def test_one_process_continues_a_two_rank_run_with_iter_size_2(runs, data):
    folder, _ = runs
    out = folder / "one_resumed"
    done = train(1, solver_file(folder, 2), data, out,
                 "--resume", str(folder / "two" / "rfcn_tiny_iter_1.solverstate.npz"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "written by 2 rank(s) x iter_size 1, continued by 1 rank(s) x iter_size 2" \
        in done.stdout
    assert_same_weights(weights(out / "rfcn_tiny_iter_2.solverstate.npz"),
                        weights(folder / "two" / "rfcn_tiny_iter_2.solverstate.npz"))


def test_other_images_per_iteration_are_refused(runs, data):
    folder, _ = runs
    done = train(1, solver_file(folder, 1), data, folder / "refused",
                 "--resume", str(folder / "two" / "rfcn_tiny_iter_1.solverstate.npz"))
    assert done.returncode == 2
    assert "cannot resume: the snapshot was written by 2 rank(s) x iter_size 1 = 2 images " \
           "per iteration, this run has 1 rank(s) x iter_size 1 = 1" in done.stderr


def rank_pid(token, rank, deadline):
    """The pid of rank ``rank`` of the job whose processes carry ``token``."""
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"MPI_CORE_TEST={token}".encode() in environ \
                    and f"PMI_RANK={rank}".encode() in environ:
                return int(entry)
        time.sleep(0.1)
    raise AssertionError(f"no rank {rank} process found")


def start_long_run(data, folder, token):
    solver = solver_file(folder, 1, max_iter=1000, snapshot=1)
    process = subprocess.Popen(command(2, solver, data, folder / "out"), cwd=ROOT,
                               env=environment(MPI_CORE_TEST=token), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    first = folder / "out" / "rfcn_tiny_iter_1.solverstate.npz"
    while not first.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    return process


def snapshots(folder):
    return sorted((folder / "out").glob("*.solverstate.npz"),
                  key=lambda p: int(p.name.split("_iter_")[1].split(".")[0]))


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find a rank's pid")
def test_a_dead_rank_ends_the_job_with_the_last_snapshot_intact(data, tmp_path):
    token = uuid.uuid4().hex
    process = start_long_run(data, tmp_path, token)
    victim = rank_pid(token, 1, time.monotonic() + 30)
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    try:
        output, _ = process.communicate(timeout=BOUND_S)
    finally:
        if process.poll() is None:
            process.kill()
    assert time.monotonic() - killed < BOUND_S
    assert process.returncode != 0
    assert "BAD TERMINATION" in output or "Killed" in output
    SolverState.load(snapshots(tmp_path)[-1])   # whole and readable


def test_ctrl_c_stops_every_rank_at_one_iteration_with_a_snapshot(data, tmp_path):
    process = start_long_run(data, tmp_path, uuid.uuid4().hex)
    process.send_signal(signal.SIGINT)   # mpiexec forwards it to every rank
    asked = time.monotonic()
    try:
        output, _ = process.communicate(timeout=BOUND_S)
    finally:
        if process.poll() is None:
            process.kill()
    assert time.monotonic() - asked < BOUND_S
    assert process.returncode == 130, output
    last = snapshots(tmp_path)[-1]
    assert f"resume with mpiexec -n 2 python -m solver.train" in output
    assert str(last) in output
    assert SolverState.load(last).iter >= 1


def test_nan_guard_stops_every_rank_with_one_message(data, tmp_path):
    solver = tmp_path / "nan.prototxt"
    solver.write_text(f'net: "{TINY}"\nbase_lr: 1e12\nlr_policy: "fixed"\nmax_iter: 5\n'
                      f'display: 1\nrandom_seed: 5\n')
    done = train(2, solver, data, tmp_path / "out")
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "iteration 1: non-finite values" in errors[0]


FINISH = """
import sys, time
from solver.world import current_world
w = current_world()
if w.rank == 1:
    sys.exit(w.finish(2, timeout_s=1))   # an error of rank 1 alone
w.allgather(None)                          # rank 0 waits in the training's collective
"""


def test_a_rank_stopping_alone_ends_the_job_after_the_finish_timeout():
    started = time.monotonic()
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", FINISH], cwd=ROOT,
                          env=environment(), capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < BOUND_S
    assert done.returncode != 0
    assert "rank 1 of 2 stopped (exit status 2) and the other ranks did not stop within 1 s: " \
           "ending the job" in done.stdout + done.stderr


AGREED = """
import sys
from solver.world import current_world
w = current_world()
sys.exit(w.finish(130, timeout_s=30))      # every rank stops (an agreed Ctrl-C)
"""


def test_ranks_stopping_together_exit_with_their_status():
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", AGREED], cwd=ROOT,
                          env=environment(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 130 and "ending the job" not in done.stderr


def test_three_ranks_equal_one_process_with_iter_size_3_in_float64(data, tmp_path):
    three = train(3, solver_file(tmp_path, 1, max_iter=1, snapshot=0), data, tmp_path / "three",
                  "--dtype", "float64")
    assert three.returncode == 0, three.stdout + three.stderr
    one = train(1, solver_file(tmp_path, 3, max_iter=1, snapshot=0), data, tmp_path / "one",
                "--dtype", "float64")
    assert one.returncode == 0, one.stdout + one.stderr
    final = "rfcn_tiny_iter_1.solverstate.npz"
    assert SolverState.load(tmp_path / "three" / final).dtype == "float64"
    assert_same_weights(weights(tmp_path / "three" / final), weights(tmp_path / "one" / final),
                        rtol=1e-10)
