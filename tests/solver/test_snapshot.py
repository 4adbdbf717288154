"""Solver snapshots: file layout, atomic writes, the .caffemodel export and
its transform, and restore's checks."""
import os

import numpy as np
import pytest

from netdef.caffemodel import caffemodel_blobs, read_caffemodel
from netdef.errors import WeightsError
from netdef.net import Net
from netdef.snapshot_format import load_arrays
from solver.snapshot import SolverState, snapshot_paths, write_export
from tests.solver.test_sgd import CLASSIFIER, CLASSIFIER_SOLVER, Counter, make_solver, \
    write_classifier


def solver_at(tmp_path, iters=2, **kwargs):
    path = write_classifier(tmp_path)
    solver = make_solver(path, seed=4, **kwargs)
    solver.step(iters)
    return solver


def test_snapshot_paths():
    assert snapshot_paths("out/rfcn", 40000) == ("out/rfcn_iter_40000.solverstate.npz",
                                                 "out/rfcn_iter_40000.caffemodel")


def test_file_layout(tmp_path):
    solver = solver_at(tmp_path, metadata={"dataset": "voc_2007_trainval"})
    path = solver.snapshot()
    folder = tmp_path / "snaps"
    assert sorted(os.listdir(folder)) == ["tiny_iter_2.caffemodel", "tiny_iter_2.solverstate.npz"]
    arrays, meta = load_arrays(path)
    assert sorted(arrays) == ["history/ip1/0", "history/ip1/1", "history/ip2/0", "history/ip2/1",
                              "weights/ip1/0", "weights/ip1/1", "weights/ip2/0", "weights/ip2/1"]
    assert np.array_equal(arrays["weights/ip2/0"], solver.net.params["ip2"][0].data)
    assert np.array_equal(arrays["history/ip1/1"], solver.history["ip1/1"])
    assert meta["kind"] == "solverstate" and meta["iter"] == 2 and meta["net"] == "tiny"
    assert meta["dtype"] == "float64" and meta["seed"] == 4
    assert meta["loss_window"] == list(solver.loss_window)
    assert meta["caffemodel"] == "tiny_iter_2.caffemodel"
    assert meta["metadata"] == {"dataset": "voc_2007_trainval"}
    assert set(meta["random_states"]) == {"train", "test/0"}
    assert set(meta["random_states"]["train"]) == {"data", "drop"}
    assert meta["random_states"]["train"]["drop"] == {
        "seed": solver.net.layer_dict["drop"].seed, "state": {"mask_draws": 1}}  # per pass
    assert meta["solver_rng"]["bit_generator"] == "PCG64"
    # The .caffemodel holds the same weights, for Net(..., weights=...).
    net = Net(tmp_path / "net.prototxt", "TEST", weights=str(folder / "tiny_iter_2.caffemodel"),
              dtype=np.float64)
    assert np.allclose(net.params["ip1"][0].data, solver.net.params["ip1"][0].data, rtol=1e-6)


def test_export_transform_changes_only_the_caffemodel(tmp_path):
    calls = []

    def transform(layer, arrays):
        calls.append(layer)
        if layer == "ip2":
            return [arrays[0] * 10, arrays[1] + 1]
        return arrays

    solver = solver_at(tmp_path, export_transform=transform)
    state_path = solver.snapshot()
    assert calls == ["ip1", "ip2"]
    exported = caffemodel_blobs(read_caffemodel(state_path.replace(".solverstate.npz",
                                                                   ".caffemodel")))
    w, b = (blob.data for blob in solver.net.params["ip2"])
    assert np.allclose(exported["ip2"][0], w * 10) and np.allclose(exported["ip2"][1], b + 1)
    assert np.allclose(exported["ip1"][0], solver.net.params["ip1"][0].data)
    state = SolverState.load(state_path)
    assert np.array_equal(state.weights["ip2/0"], w)  # the state is untransformed


def test_export_transform_must_keep_shapes(tmp_path):
    net = Net(CLASSIFIER, "TRAIN")
    with pytest.raises(ValueError, match="export_transform changed the arrays of layer 'ip1'"):
        write_export(tmp_path / "x.caffemodel", net, lambda layer, arrays: arrays[:1])
    assert not os.listdir(tmp_path)


def test_an_interrupted_write_leaves_the_previous_snapshot_intact(tmp_path, monkeypatch):
    solver = solver_at(tmp_path)
    first = solver.snapshot()
    before = open(first, "rb").read()
    solver.step(2)

    # The writer dies after its third array, midway through the archive.
    original, calls = np.lib.format.write_array, [0]

    def dying_write(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("disk unplugged")
        return original(*args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", dying_write)
    with pytest.raises(RuntimeError, match="disk unplugged"):
        solver.snapshot()
    monkeypatch.setattr(np.lib.format, "write_array", original)

    folder = tmp_path / "snaps"
    names = os.listdir(folder)
    assert "tiny_iter_4.solverstate.npz" not in names
    assert not [n for n in names if n.endswith(".tmp")]
    assert open(first, "rb").read() == before
    assert solver.last_snapshot == first
    # ... and it still resumes.
    resumed = make_solver(write_classifier(tmp_path))
    resumed.restore(first)
    assert resumed.iter == 2


def test_rewriting_a_snapshot_that_fails_keeps_the_old_file(tmp_path, monkeypatch):
    solver = solver_at(tmp_path)
    path = solver.snapshot()
    before = open(path, "rb").read()

    def failing_save(self, target):
        raise OSError("no space left")

    monkeypatch.setattr(SolverState, "save", failing_save)
    with pytest.raises(OSError):
        solver.snapshot()
    assert open(path, "rb").read() == before


def test_restore_refuses_another_net_without_changing_anything(tmp_path):
    solver = solver_at(tmp_path / "a")
    path = solver.snapshot()
    other = CLASSIFIER.replace("num_output: 6", "num_output: 7")
    target = make_solver(write_classifier(tmp_path / "b", net_text=other), seed=1)
    before = {name: blobs[0].data.copy() for name, blobs in target.net.params.items()}
    with pytest.raises(WeightsError, match=r"cannot resume net 'tiny'.*layer 'ip1' parameter 0: "
                       r"the snapshot has shape \(6, 5\), the net \(7, 5\)"):
        target.restore(path)
    assert target.iter == 0
    for name, array in before.items():
        assert np.array_equal(target.net.params[name][0].data, array)


def test_restore_checks_state_providers(tmp_path):
    solver = solver_at(tmp_path, state_providers={"sampler": Counter()})
    path = solver.snapshot()
    with pytest.raises(WeightsError, match="state of provider\\(s\\) sampler but none registered"):
        make_solver(write_classifier(tmp_path)).restore(path)
    with pytest.raises(WeightsError, match="no state for the registered provider\\(s\\) other"):
        make_solver(write_classifier(tmp_path),
                    state_providers={"sampler": Counter(), "other": Counter()}).restore(path)


def test_restore_refuses_a_weights_file(tmp_path):
    solver = solver_at(tmp_path)
    weights = tmp_path / "weights.npz"
    solver.net.save_weights(weights)
    with pytest.raises(WeightsError, match="not a solver snapshot"):
        solver.restore(weights)
    with pytest.raises(WeightsError, match="no such file"):
        solver.restore(tmp_path / "missing.solverstate.npz")


def test_solver_state_round_trip(tmp_path):
    state = SolverState(iter=7, weights={"a/0": np.arange(3.0)},
                        history={"a/0": np.ones(3, np.float32)}, net="n", loss_window=[1.0, 2.0],
                        solver_rng={"x": 2 ** 100}, providers={"p": {"k": [1, 2]}},
                        metadata={"means": [0.0, 0.1]})
    state.save(tmp_path / "s.solverstate.npz")
    loaded = SolverState.load(tmp_path / "s.solverstate.npz")
    assert loaded.iter == 7 and loaded.net == "n" and loaded.loss_window == [1.0, 2.0]
    assert loaded.solver_rng == {"x": 2 ** 100} and loaded.providers == {"p": {"k": [1, 2]}}
    assert np.array_equal(loaded.weights["a/0"], np.arange(3.0))
    assert loaded.history["a/0"].dtype == np.float32
    with pytest.raises(TypeError, match="snapshot field 'metadata' is not JSON-serialisable"):
        SolverState(iter=0, weights={}, history={}, metadata={"x": object()}).save(
            tmp_path / "t.npz")
    assert not (tmp_path / "t.npz").exists()


def test_snapshot_every_n_iterations(tmp_path):
    path = write_classifier(tmp_path, CLASSIFIER_SOLVER.replace("snapshot: 0", "snapshot: 2"))
    solver = make_solver(path, seed=0)
    solver.step(5)
    assert sorted(n for n in os.listdir(tmp_path / "snaps") if n.endswith(".npz")) == [
        "tiny_iter_2.solverstate.npz", "tiny_iter_4.solverstate.npz"]
    assert solver.last_snapshot.endswith("tiny_iter_4.solverstate.npz")
