"""The pieces every entry point shares: the training session's BLAS rule
(set for the session, restored after), the error-to-exit-status wrapper,
the solver-file path rule, and the import arrows between the commands."""
import ast
import io
from pathlib import Path

import pytest

import solver.blas
from netdef.errors import DataError, NumericalError
from solver import train
from solver.cli import exit_status
from detection.datasets.synthetic import generate
from solver.solver_file import resolve_input

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "prototxt" / "rfcn_tiny.prototxt")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("data") / "shapes", num_train=4, num_test=2, seed=3)


def test_solver_train_sets_blas_threads_for_its_session_and_restores_them(data, tmp_path,
                                                                          monkeypatch):
    calls = []
    monkeypatch.setattr(solver.blas, "set_blas_threads", lambda n: calls.append(n) or True)
    monkeypatch.setattr(solver.blas, "get_blas_threads", lambda: 7)
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    stream = io.StringIO()
    assert train.main([TINY, "--data", data, "--iters", "1", "--no-eval", "--seed", "0",
                       "--out", str(tmp_path / "a")], stream=stream) == 0
    assert calls == [1, 7]
    assert "BLAS on 1 thread(s) (a small net:" in stream.getvalue()
    calls.clear()
    assert train.main([TINY, "--data", data, "--iters", "1", "--no-eval", "--seed", "0",
                       "--blas-threads", "2", "--out", str(tmp_path / "b")],
                      stream=io.StringIO()) == 0
    assert calls == [2, 7]


def test_exit_status_maps_errors_once_for_every_command(capsys):
    def raising(exc):
        def run():
            raise exc
        return run

    assert exit_status(lambda: 0) == 0
    assert exit_status(raising(DataError("bad.json: no images"))) == 2
    assert capsys.readouterr().err == "error: bad.json: no images\n"
    assert exit_status(raising(NumericalError("loss is NaN"))) == 1
    assert capsys.readouterr().err == "error: loss is NaN\n"
    assert exit_status(raising(KeyboardInterrupt())) == 130
    assert exit_status(raising(ValueError("no points")), errors=(ValueError,)) == 2
    with pytest.raises(ValueError):
        exit_status(raising(ValueError("a bug")))


def test_resolve_input_looks_beside_the_file_then_in_the_current_directory(tmp_path,
                                                                           monkeypatch):
    (tmp_path / "beside").mkdir()
    (tmp_path / "beside" / "net.prototxt").write_text("")
    (tmp_path / "here.prototxt").write_text("")
    monkeypatch.chdir(tmp_path)
    assert resolve_input("net.prototxt", "beside", "s.prototxt", "net") == \
        "beside/net.prototxt"
    assert resolve_input("here.prototxt", "beside", "s.prototxt", "net") == "here.prototxt"
    with pytest.raises(Exception, match=r"s.prototxt: net 'here.prototxt' not found \(looked "
                                        r"for '.*beside/here.prototxt'; only beside\)"):
        resolve_input("here.prototxt", "beside", "s.prototxt", "net", current_dir=False,
                      note="; only beside")


def imported_modules(path):
    """Every module a source file imports, at any depth (function-local too)."""
    names = set()
    for node in ast.walk(ast.parse(Path(path).read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("module, forbidden", [
    ("test", "solver.train"), ("train", "solver.test"), ("schedule", "solver.train"),
    ("session", "solver.train"), ("session", "solver.schedule"),
    ("schedule_train", "solver.train"), ("detect", "solver.test")])
def test_the_commands_do_not_reach_into_each_other(module, forbidden):
    found = imported_modules(ROOT / "solver" / f"{module}.py")
    assert not any(name == forbidden or name.startswith(forbidden + ".") for name in found)
