"""NCCL through solver.world on GPUs (gpu-marked: run where CuPy sees a
device): a 1-rank NCCL communicator built over MPI sums a CuPy buffer in
place, and with 2 visible GPUs, 2 ranks under mpiexec (one GPU each, by
local rank) sum theirs. The CPU path and the host fallback are covered
without a GPU in tests/test_distributed_train.py and here."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.mpi_harness import MPIEXEC, requires_mpi

ROOT = Path(__file__).resolve().parents[1]



def gpu_count():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:   # no CuPy or no driver: no GPU
        return 0


ONE_RANK = """
import numpy as np
from solver.world import MPIWorld
world = MPIWorld()
array = np.arange(4.0)
assert world.size == 1 and world.allreduce_sum(array) is array
assert array.tolist() == [0, 1, 2, 3]
try:
    world.allreduce_sum(np.arange(8.0)[::2])
except ValueError as exc:
    assert "contiguous" in str(exc)
else:
    raise AssertionError("a strided buffer was accepted")
print("ok")
"""


@requires_mpi
def test_mpi_world_of_one_process_sums_numpy_in_place():
    """MPIWorld without a launcher (MPI's singleton start), in a process of
    its own so this test run never initializes MPI."""
    done = subprocess.run([sys.executable, "-c", ONE_RANK], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr


@requires_mpi
@pytest.mark.gpu
def test_one_rank_nccl_communicator_sums_in_place():
    import cupy
    from solver.world import MPIWorld
    world = MPIWorld()
    communicator = world.nccl()
    assert communicator is not None, "CuPy has no NCCL: pip install nvidia-nccl-cu12"
    for dtype in (np.float32, np.float64):
        array = cupy.arange(1000, dtype=dtype)
        same = world.allreduce_sum(array)
        assert same is array
        np.testing.assert_array_equal(cupy.asnumpy(array), np.arange(1000, dtype=dtype))
    with pytest.raises(ValueError, match="NCCL all-reduce of a int32 buffer"):
        world.allreduce_sum(cupy.arange(3, dtype=np.int32))


SCRIPT = """
import cupy, numpy as np
from solver.world import current_world
w = current_world()
cupy.cuda.Device(w.local_rank).use()
a = cupy.full(1000, w.rank + 1, dtype=np.float32)
w.allreduce_sum(a)
assert w.nccl() is not None
assert float(a.min()) == float(a.max()) == 3.0, a
print("ok", w.rank)
"""


@requires_mpi
@pytest.mark.gpu
@pytest.mark.skipif(gpu_count() < 2, reason="needs 2 visible GPUs")
def test_two_ranks_nccl_allreduce():
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", SCRIPT], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(done.stdout.split()) == ["0", "1", "ok", "ok"]
