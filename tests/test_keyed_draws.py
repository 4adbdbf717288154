"""Draws keyed by the pass (Layer.keyed_rng, Net.set_draw_key), the
one-process World (solver.world), the resume rule across world sizes and
the learning-rate scaling (solver.data_parallel): no MPI needed."""
import os
import subprocess
import sys

import numpy as np
import pytest

from netdef import Net
from netdef.errors import NetDefinitionError, WeightsError
from netdef.gradcheck import build_layer, setup_layer
from solver.data_parallel import LRScaling, check_parallel_net, position
from solver.snapshot import SolverState
from solver.solver_snapshots import check_world_resume
from solver.world import MPI_EXTRA_HINT, World, current_world, launched_size
from tests.layers.test_proposal_target import GT, ROIS, spec as target_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DROP_NET = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 64 } } }
layer { name: "drop" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 0.5 } }
"""


def dropout_masks(keys, seed=7):
    """The Dropout output of a fresh net for each (iteration, position) key,
    run in the order given."""
    net = Net(DROP_NET, "TRAIN", dtype=np.float64, seed=seed)
    out = {}
    for key in keys:
        net.set_draw_key(*key)
        out[key] = net.forward(x=np.ones((4, 64)))["y"].copy()
    return out


def test_dropout_mask_depends_on_the_key_not_on_the_order():
    keys = [(0, 0), (0, 1), (1, 0), (1, 1)]
    forward, backward = dropout_masks(keys), dropout_masks(keys[::-1])
    for key in keys:
        np.testing.assert_array_equal(forward[key], backward[key])
    assert not np.array_equal(forward[(0, 0)], forward[(0, 1)])
    assert not np.array_equal(forward[(0, 0)], forward[(1, 0)])
    assert not np.array_equal(forward[(0, 0)], dropout_masks([(0, 0)], seed=8)[(0, 0)])


def test_plain_forward_loop_draws_anew_each_pass_and_the_same_each_run():
    def loop():
        net = Net(DROP_NET, "TRAIN", dtype=np.float64, seed=3)
        return [net.forward(x=np.ones((4, 64)))["y"].copy() for _ in range(3)]
    first, again = loop(), loop()
    assert not np.array_equal(first[0], first[1])
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    net = Net(DROP_NET, "TRAIN", dtype=np.float64, seed=3)
    net.set_draw_key(5, 2)
    keyed = [net.forward(x=np.ones((4, 64)))["y"].copy() for _ in range(2)]
    assert not np.array_equal(keyed[0], keyed[1])   # forwarded again under one key: anew
    np.testing.assert_array_equal(keyed[0], dropout_masks([(5, 2)], seed=3)[(5, 2)])
    net.set_draw_key(None)                              # back to counting passes
    np.testing.assert_array_equal(net.forward(x=np.ones((4, 64)))["y"], first[0])


def sampled(key, forwards_before=0):
    """ProposalTarget's sampled RoIs under draw ``key`` after other passes."""
    layer = build_layer(target_spec("num_classes: 21 batch_size: 32"), dtype=np.float64, seed=4)
    bottoms, tops = setup_layer(layer, [ROIS, GT])
    for k in range(forwards_before):
        layer.draw_key = (9, k)
        layer.reshape(bottoms, tops)
        layer.forward(bottoms, tops)
    layer.draw_key = key
    layer.reshape(bottoms, tops)
    layer.forward(bottoms, tops)
    return tops[0].data.copy()


def test_proposal_sampling_is_keyed_by_the_pass():
    a, b = sampled((2, 1)), sampled((2, 1), forwards_before=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sampled((2, 0)))
    assert not np.array_equal(a, sampled((3, 1)))


def test_positions_interleave_ranks():
    ranks = [type("W", (), {"rank": r, "size": 3})() for r in range(3)]
    taken = sorted(position(w, s) for w in ranks for s in range(2))
    assert taken == list(range(6))
    assert [position(ranks[1], s) for s in range(2)] == [1, 4]


def test_single_process_world():
    world = World()
    assert (world.rank, world.size, world.is_root, world.local_rank) == (0, 1, True, 0)
    array = np.arange(3.0)
    assert world.allreduce_sum(array) is array and array.tolist() == [0, 1, 2]
    assert world.allgather("a") == ["a"] and world.bcast(4) == 4 and world.any(True)
    assert world.finish(3) == 3
    with pytest.raises(SystemExit, match="stop here"):
        world.abort("stop here")


@pytest.mark.parametrize("environ,size", [
    ({}, 1),
    ({"PMI_SIZE": "4", "PMI_RANK": "1"}, 4),
    ({"PMI_SIZE": "1", "PMI_RANK": "0"}, 1),
    ({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0"}, 2),
    ({"SLURM_NTASKS": "8"}, 1),                        # an allocation, not a task
    ({"SLURM_NTASKS": "8", "SLURM_PROCID": "3"}, 8),
])
def test_launched_size(environ, size):
    assert launched_size(environ) == size


def run_python(code, **env):
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("PMI_", "OMPI_", "PMIX_", "SLURM_"))}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=60)


def test_without_a_launcher_mpi4py_is_not_imported():
    done = run_python("import sys; from solver.world import current_world; "
                      "w = current_world(); print(w.size, 'mpi4py' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "False"]


def test_launched_without_mpi4py_names_the_extra():
    done = run_python("import sys; sys.modules['mpi4py'] = None\n"
                      "from solver.world import current_world; current_world()",
                      PMI_SIZE="2", PMI_RANK="0")
    assert done.returncode != 0
    assert "2 processes" in done.stderr and "pip install -e '.[mpi]'" in done.stderr
    assert "mpi4py" in MPI_EXTRA_HINT


def state(world_size, iter_size):
    return SolverState(iter=4, weights={}, history={}, world_size=world_size,
                       iter_size=iter_size)


def test_resume_rule_across_world_sizes():
    assert check_world_resume(state(2, 1), 2, 1, "s.npz") is None           # exact
    note = check_world_resume(state(2, 1), 1, 2, "s.npz")                   # same N x S
    assert "2 rank(s) x iter_size 1" in note and "1 rank(s) x iter_size 2" in note
    with pytest.raises(WeightsError, match=r"s.npz: cannot resume: .*2 rank\(s\) x iter_size 1 "
                                           r"= 2 images .* 4 rank\(s\) x iter_size 1 = 4"):
        check_world_resume(state(2, 1), 4, 1, "s.npz")
    assert check_world_resume(state(0, 0), 1, 3, "old.npz") is None         # before the record
    with pytest.raises(WeightsError, match="old.npz: .*does not record how many ranks"):
        check_world_resume(state(0, 0), 2, 1, "old.npz")


def test_lr_scaling():
    assert LRScaling("keep", 4).factor(0) == 1.0
    assert LRScaling("linear", 4).factor(0) == 4.0
    warm = LRScaling("linear", 4, warmup=10)
    assert [warm.factor(i) for i in (0, 5, 10, 100)] == [1.0, 2.5, 4.0, 4.0]
    with pytest.raises(ValueError, match="'square': expected keep or linear"):
        LRScaling("square", 2)
    with pytest.raises(ValueError, match="warm-up of -1 iterations"):
        LRScaling("linear", 2, warmup=-1)


def test_several_ranks_refuse_a_layer_with_its_own_stream():
    net = Net("""
    layer { name: "noise" type: "DummyData" top: "x"
            dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: "gaussian" } } }
    """, "TRAIN")
    two = type("Two", (World,), {"size": 2})()
    check_parallel_net(net, World(), "s.prototxt")      # one process: anything goes
    with pytest.raises(NetDefinitionError, match=r"s.prototxt: layer 'noise' \(type DummyData\) "
                                                 r"keeps random .*generator.* 2 ranks"):
        check_parallel_net(net, two, "s.prototxt")


def test_current_world_is_one_process_here():
    if launched_size() == 1:
        assert current_world().size == 1


def test_old_sampler_state_is_ignored_with_a_note():
    from solver.resume import set_state
    layer = build_layer(target_spec("num_classes: 21 batch_size: 32"), dtype=np.float64, seed=4)
    net = type("FakeNet", (), {"layer_dict": {"roi-data": layer}})()
    rng = np.random.default_rng(0)
    old = {"random_states": {"train": {"roi-data": {
        "seed": 4, "state": {"sampler": np.random.default_rng(1).bit_generator.state}}}},
        "solver_rng": rng.bit_generator.state}
    notes = set_state([("train", net)], rng, {}, old)
    assert len(notes) == 1 and "train layer 'roi-data': its saved sampler state is from before " \
        "draws were keyed by iteration and image position; ignored" in notes[0]


def test_rank_gpu():
    from solver.data_parallel import rank_gpu
    ranks = type("W", (World,), {"size": 4, "local_rank": 2})()
    assert rank_gpu(None, ranks, {}) is None
    assert rank_gpu(0, World(), {}) == 0
    assert rank_gpu(0, ranks, {}) == 2 and rank_gpu(4, ranks, {}) == 6
    assert rank_gpu(0, ranks, {"CUDA_VISIBLE_DEVICES": "3"}) == 0       # one GPU per rank
    assert rank_gpu(0, ranks, {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}) == 2
