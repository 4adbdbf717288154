"""GPU training of the tiny R-FCN resumes bit-exactly (runs where CuPy sees a
GPU; skipped elsewhere).

Its head backpropagates through PSROIPooling, whose GPU backward adds the
diffs of overlapping RoI bins: as an atomicAdd scatter it added them in a
different order on each run, so a resumed run drifted from the straight one
in the last bits. As a gather (layers/cuda/psroi_pooling.cu) the sum has one
order, and the weights after 2 + 2 iterations equal those after 4 exactly,
as on the CPU (tests/solver/test_train.py)."""
from pathlib import Path

import numpy as np
import pytest

from detection.datasets.synthetic import generate
from solver import train
from solver.snapshot import SolverState

TINY = Path(__file__).resolve().parents[2] / "prototxt" / "rfcn_tiny.prototxt"


@pytest.mark.gpu
def test_gpu_training_resumes_bit_exactly(tmp_path):
    data = generate(tmp_path / "shapes", num_train=8, num_test=2, seed=3)
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{TINY}"\nbase_lr: 0.005\nlr_policy: "fixed"\nmomentum: 0.9\n'
                      f'weight_decay: 0.0005\nmax_iter: 4\ndisplay: 1\nsnapshot: 2\n'
                      f'random_seed: 5\n')
    common = [str(solver), "--data", data, "--gpu", "0", "--no-eval"]
    assert train.main(common + ["--out", str(tmp_path / "straight")]) == 0
    first = tmp_path / "straight" / "rfcn_tiny_iter_2.solverstate.npz"
    assert train.main(common + ["--out", str(tmp_path / "resumed"), "--resume", str(first)]) == 0
    straight = SolverState.load(tmp_path / "straight" / "rfcn_tiny_iter_4.solverstate.npz")
    resumed = SolverState.load(tmp_path / "resumed" / "rfcn_tiny_iter_4.solverstate.npz")
    assert resumed.iter == straight.iter == 4
    for part in ("weights", "history"):
        expected, found = getattr(straight, part), getattr(resumed, part)
        assert set(found) == set(expected)
        for key, value in expected.items():
            np.testing.assert_array_equal(found[key], value, err_msg=f"{part} {key}")
    # Training moved the weights: equal is not trivially equal.
    initial = SolverState.load(first)
    assert any(not np.array_equal(initial.weights[k], v) for k, v in straight.weights.items())
