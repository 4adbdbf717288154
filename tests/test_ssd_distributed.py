"""The tiny SSD under mpiexec: AnnotatedData's minibatches and augmentation
draws are keyed by their place in the data order, so 2 ranks train on the
images (and crops, flips, expansions) one process with iter_size 2 sees,
and reach its weights. Skipped where mpi4py or mpiexec is missing."""
from pathlib import Path

import numpy as np
import pytest

from detection.datasets.synthetic import generate
from solver.snapshot import SolverState
from tests.mpi_harness import requires_mpi
from tests.test_distributed_train import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "prototxt" / "ssd_tiny.prototxt"

pytestmark = requires_mpi


def solver_file(folder, iter_size):
    path = Path(folder) / f"solver_s{iter_size}.prototxt"
    path.write_text(f'net: "{TINY}"\nbase_lr: 0.01\nlr_policy: "fixed"\nmomentum: 0.9\n'
                    f'weight_decay: 0.0005\nmax_iter: 2\ndisplay: 1\nsnapshot: 0\n'
                    f'random_seed: 5\niter_size: {iter_size}\n')
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("data") / "shapes", num_train=16, num_test=2, seed=6)


def test_two_ranks_equal_one_process_with_iter_size_2(data, tmp_path):
    two = train(2, solver_file(tmp_path, 1), data, tmp_path / "two")
    assert two.returncode == 0, two.stdout + two.stderr
    one = train(1, solver_file(tmp_path, 2), data, tmp_path / "one")
    assert one.returncode == 0, one.stdout + one.stderr
    a = SolverState.load(tmp_path / "two" / "ssd_tiny_iter_2.solverstate.npz").weights
    b = SolverState.load(tmp_path / "one" / "ssd_tiny_iter_2.solverstate.npz").weights
    assert set(a) == set(b)
    # BatchNorm's moving averages (lr_mult 0) are each rank's own: rank 0
    # saves those of its images only; every learned weight is the same.
    learned = [key for key in a if "_bn" not in key]
    assert len(learned) > 20
    for key in learned:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-6, err_msg=key)
