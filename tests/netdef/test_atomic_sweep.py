"""Temporary files of interrupted atomic writes (``.<name>.<pid>.<hex>.tmp``)
are removed by the next write into their folder, once their writer is gone;
a live writer's file and files of other names are kept."""
import os
import subprocess
import sys
import textwrap

import numpy as np

from netdef.snapshot_format import atomic_writer, load_arrays, save_arrays, sweep_temporaries
from solver.snapshot import SolverState


def gone_pid():
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_sweep_removes_only_temporaries_of_gone_writers(tmp_path):
    dead = gone_pid()
    names = {
        f".net_iter_4.caffemodel.{dead}.0a1b2c3d.tmp": False,        # removed
        f".net.npz.{dead}.ffffffff.tmp": False,                      # removed
        f".net.npz.{os.getpid()}.0a1b2c3d.tmp": True,                # our own write
        f".net.npz.{os.getppid()}.0a1b2c3d.tmp": True,               # a live writer
        f".net.npz.{dead}.0A1B2C3D.tmp": True,                       # not our pattern
        f".net.npz.{dead}.0a1b2c.tmp": True,
        f"net.npz.{dead}.0a1b2c3d.tmp": True,
        f".net.npz.x{dead}.0a1b2c3d.tmp": True,
        "notes.tmp": True,
        f".net.npz.{2**70}.0a1b2c3d.tmp": True,                      # no such pid to ask about
    }
    for name in names:
        (tmp_path / name).write_bytes(b"partial")
    os.mkdir(tmp_path / f".folder.{dead}.0a1b2c3d.tmp")              # not a file: kept
    removed = sweep_temporaries(tmp_path)
    assert sorted(removed) == sorted(str(tmp_path / n) for n, kept in names.items() if not kept)
    left = set(os.listdir(tmp_path))
    assert left == {n for n, kept in names.items() if kept} | {f".folder.{dead}.0a1b2c3d.tmp"}
    assert sweep_temporaries(tmp_path / "missing") == []


def test_the_first_write_into_a_folder_sweeps_it(tmp_path):
    orphan = tmp_path / f".net_iter_2.solverstate.npz.{gone_pid()}.12345678.tmp"
    orphan.write_bytes(b"half a snapshot")
    save_arrays(tmp_path / "w.npz", {"a/0": np.zeros(2)})
    assert sorted(os.listdir(tmp_path)) == ["w.npz"]


def test_a_killed_writer_leaves_a_temporary_that_the_next_run_removes(tmp_path):
    """kill -9 in the middle of a snapshot write, then a new run writing its
    first snapshot into the same folder."""
    script = textwrap.dedent(f"""
        import os, signal
        from netdef.snapshot_format import atomic_writer
        with atomic_writer({str(tmp_path / "net_iter_5.solverstate.npz")!r}) as handle:
            handle.write(b"x" * 1000)
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd(), check=False)
    assert result.returncode == -9
    (orphan,) = os.listdir(tmp_path)
    assert orphan.startswith(".net_iter_5.solverstate.npz.") and orphan.endswith(".tmp")
    # The next run: its first snapshot into the folder sweeps the orphan.
    state = SolverState(iter=6, weights={"a/0": np.ones(2)}, history={})
    state.save(tmp_path / "net_iter_6.solverstate.npz")
    assert os.listdir(tmp_path) == ["net_iter_6.solverstate.npz"]
    assert SolverState.load(tmp_path / "net_iter_6.solverstate.npz").iter == 6


def test_a_write_in_progress_in_this_process_is_not_disturbed(tmp_path):
    with atomic_writer(tmp_path / "b.bin") as handle:
        handle.write(b"written while a sweep runs")
        (temporary,) = os.listdir(tmp_path)
        assert sweep_temporaries(tmp_path) == []
        assert os.listdir(tmp_path) == [temporary]
    assert os.listdir(tmp_path) == ["b.bin"]
    assert (tmp_path / "b.bin").read_bytes() == b"written while a sweep runs"
