"""The memory budget: a net needing more than the limit is refused, naming
layer, blob, shape and bytes, before anything that large is allocated; the
limit's option, environment variable and default."""
import contextlib
import tracemalloc
import types

import numpy as np
import pytest

from netdef import Net, memory_budget
from netdef.memory_budget import (ENV_LIMIT, BlobAccount, MemoryBudget, MemoryBudgetError,
                                  default_limit, gpu_free_bytes, host_available_bytes,
                                  local_process_count, parse_bytes, resolve_limit)
from netdef.errors import EngineError, NetDefinitionError

TIB_INPUT = """name: "huge"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 3 dim: 1000000 dim: 1000000 } } }"""

SMALL = """name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: NUM_OUTPUT weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "fc" bottom: "fc" top: "loss" }"""


def small(num_output=5):
    return SMALL.replace("NUM_OUTPUT", str(num_output))


@contextlib.contextmanager
def traced_peak(limit_bytes):
    """Assert that the block allocates (at its peak) less than ``limit_bytes``."""
    tracemalloc.start()
    try:
        yield
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < limit_bytes, f"allocated {peak} bytes"


# -- refusals ------------------------------------------------------------------------

def test_a_10_9_tib_input_is_refused_before_allocating():
    with traced_peak(4 << 20), pytest.raises(MemoryBudgetError) as info:
        Net(TIB_INPUT, "TEST")
    message = str(info.value)
    assert "<string>: layer 'data' (type Input): the data of blob 'data', shape " \
           "(3, 1000000, 1000000) float32, needs 10.9 TiB (12,000,000,000,000 bytes)" in message
    assert "over its memory budget of" in message and "the default: " in message
    assert f"{ENV_LIMIT}=BYTES" in message and "memory_limit=BYTES" in message
    assert isinstance(info.value, EngineError)


def test_a_shape_over_a_small_limit_is_refused_without_allocating():
    """64 MiB asked of a 1 MiB budget: raised before the 64 MiB exist."""
    net = TIB_INPUT.replace("dim: 1000000 dim: 1000000", "dim: 4096 dim: 1366")
    with traced_peak(8 << 20), pytest.raises(MemoryBudgetError,
                                             match=r"shape \(3, 4096, 1366\) float32, needs 64\.0 MiB "
                                                   r".*budget of 1\.0 MiB \(memory_limit='1M'"):
        Net(net, "TEST", memory_limit="1M")


def test_a_huge_num_output_is_refused_before_its_weight_is_allocated_or_filled():
    with traced_peak(4 << 20), pytest.raises(
            MemoryBudgetError, match=r"layer 'fc' \(type InnerProduct\): parameter blob 0, shape "
                                     r"\(4294967295, 256\) float32, with the float64 values its "
                                     r"filler draws, needs 12\.0 TiB"):
        Net(small(4294967295), "TEST")


def test_backward_gradients_count_in_a_training_net():
    """Data and weights fit; with the diffs backward will allocate they do not."""
    test_net = Net(small(), "TEST", memory_limit=20000)
    assert test_net.budget.total <= 20000
    with pytest.raises(MemoryBudgetError, match=r"backward's gradients \(9 diff\(s\)\) and the "
                                                r"shared scratch \(scratch of layer 'conv'; the "
                                                r"largest of them: .*memory_limit=20000"):
        Net(small(), "TRAIN", memory_limit=20000)


def test_the_budget_charges_every_blob_and_parameter_once():
    net = Net(small(), "TEST")
    blobs = {id(b): b for b in net.blobs.values()}  # the in-place ReLU shares conv's Blob
    params = [b for blobs_ in net.params.values() for b in blobs_]
    expected = sum(b.count * b.dtype.itemsize for b in list(blobs.values()) + params)
    assert net.budget.total == expected


def test_a_later_input_reshape_is_checked_at_the_blob_and_at_net_reshape():
    net = Net(small(), "TEST", memory_limit="600K")
    with traced_peak(4 << 20), pytest.raises(
            MemoryBudgetError, match=r"^<string>: the data of blob 'data', shape \(2, 3, 8000, 8000\)"):
        net.blobs["data"].reshape(2, 3, 8000, 8000)
    assert net.blobs["data"].shape == (2, 3, 8, 8)  # unchanged
    net.blobs["data"].reshape(2, 3, 120, 120)       # 338 KiB: fits; with the conv top it does not
    with pytest.raises(MemoryBudgetError, match=r"layer 'conv' \(type Convolution\): the data of "
                                                r"blob 'conv', shape \(2, 4, 120, 120\)"):
        net.reshape()


def test_the_lean_plan_keeps_charging_its_blobs():
    reference = Net(small(), "TRAIN", seed=3)
    lean = Net(small(), "TRAIN", seed=3, keep=[], memory_limit="600K")
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    assert lean.forward(data=x).loss == pytest.approx(reference.forward(data=x).loss, rel=1e-6)
    before = lean.budget.total
    lean.forward(data=x)
    assert lean.budget.total == before  # taking from the pool again charges no more
    lean.blobs["data"].reshape(2, 3, 120, 120)
    with pytest.raises(MemoryBudgetError, match=r"layer 'conv'.*blob 'conv', shape \(2, 4, 120, 120\)"):
        lean.reshape()


def test_a_memory_error_inside_a_layer_becomes_a_named_error():
    budget = MemoryBudget(100, "a test")
    with pytest.raises(MemoryBudgetError, match=r"^layer 'x': the allocator could not provide "
                                                r"memory \(no room\) with 0 B charged"):
        with budget.inside("layer 'x'"):
            raise MemoryError("no room")


def test_an_account_gives_fresh_zeros_or_its_inner_pool_storage():
    budget = MemoryBudget(1000, "a test")
    account = BlobAccount(budget, "blob 'b'", np)
    data = account.take((3, 4), np.float32, zero=False)
    assert (data == 0).all() and budget.total == 48
    account.take((5, 4), np.float32, zero=False)  # a reshape replaces the charge
    account.take((5, 4), np.float32, zero=True)   # the diff is charged apart
    assert budget.total == 160 and account.charged == {"data": 80, "diff": 80}
    with pytest.raises(MemoryBudgetError, match=r"the diff of blob 'b', shape \(300,\) float32"):
        account.take((300,), np.float32, zero=True)
    assert budget.total == 160


# -- the limit -----------------------------------------------------------------------

@pytest.mark.parametrize("text,value", [("4096", 4096), ("512K", 512 << 10), ("8G", 8 << 30),
                                        ("1.5T", 3 << 39), (" 64 MiB ", 64 << 20), ("2gb", 2 << 30),
                                        (123, 123)])
def test_parse_bytes(text, value):
    assert parse_bytes(text, "x") == value


@pytest.mark.parametrize("text", ["", "eight", "8X", "-1", "0", "1e9", True])
def test_parse_bytes_refuses(text):
    with pytest.raises(NetDefinitionError, match=r"^where: expected a (positive )?number of bytes"):
        parse_bytes(text, "where")


def test_option_then_environment_then_default():
    env = {ENV_LIMIT: "2G"}
    assert resolve_limit("1M", None, env) == (1 << 20, "memory_limit='1M' given to the Net")
    assert resolve_limit(None, None, env) == (2 << 30, f"{ENV_LIMIT}=2G")
    limit, source = resolve_limit(None, None, {})
    assert limit > 0 and source.startswith("the default: ")


def test_bad_environment_value_is_named(monkeypatch):
    monkeypatch.setenv(ENV_LIMIT, "lots")
    with pytest.raises(NetDefinitionError, match=rf"environment variable {ENV_LIMIT}: .*'lots'"):
        Net(small(), "TEST")


def test_environment_limit_refuses_a_net(monkeypatch):
    monkeypatch.setenv(ENV_LIMIT, "4K")
    with pytest.raises(MemoryBudgetError, match=rf"budget of 4\.0 KiB \({ENV_LIMIT}=4K;"):
        Net(small(), "TEST")


def test_default_divides_among_local_processes(monkeypatch):
    assert local_process_count({}) == (1, None)
    assert local_process_count({"SLURM_NTASKS_PER_NODE": "4(x2)"}) == (4, "SLURM_NTASKS_PER_NODE")
    assert local_process_count({"OMPI_COMM_WORLD_LOCAL_SIZE": "8", "MPI_LOCALNRANKS": "2"}) == \
        (8, "OMPI_COMM_WORLD_LOCAL_SIZE")
    assert local_process_count({"MPI_LOCALNRANKS": "zero"}) == (1, None)
    monkeypatch.setattr(memory_budget, "host_available_bytes", lambda: (8 << 30, "a test"))
    assert default_limit(None, {}) == (8 << 30, "the default: 8.0 GiB available (a test)")
    assert default_limit(None, {"MPI_LOCALNRANKS": "4"}) == \
        (2 << 30, "the default: 8.0 GiB available (a test) / 4 processes (MPI_LOCALNRANKS)")


def test_host_memory_from_meminfo_cgroup_or_sysconf(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 16000000 kB\nMemAvailable:    2000000 kB\n")
    assert host_available_bytes(str(meminfo), str(tmp_path / "none")) == \
        (2000000 * 1024, "MemAvailable in /proc/meminfo")
    (tmp_path / "memory.max").write_text("1073741824\n")
    (tmp_path / "memory.current").write_text("73741824\n")
    limit, source = host_available_bytes(str(meminfo), str(tmp_path))
    assert (limit, source) == (1073741824 - 73741824, "the cgroup's memory.max - memory.current")
    (tmp_path / "memory.max").write_text("max\n")  # no cgroup limit
    assert host_available_bytes(str(meminfo), str(tmp_path))[0] == 2000000 * 1024
    limit, source = host_available_bytes(str(tmp_path / "absent"), str(tmp_path))
    assert limit > 0 and source == "free physical pages (sysconf)"


def _stub_gpu(free, pool_free=None):
    """A Device-like object whose CuPy answers memGetInfo (and a pool)."""
    runtime = types.SimpleNamespace(memGetInfo=lambda: (free, 4 * free))
    cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime))
    if pool_free is not None:
        cupy.get_default_memory_pool = lambda: types.SimpleNamespace(free_bytes=lambda: pool_free)
    return types.SimpleNamespace(xp=cupy, is_gpu=True, index=1, context=contextlib.nullcontext)


def test_gpu_default_is_its_free_memory_plus_the_pool():
    assert gpu_free_bytes(_stub_gpu(3 << 30, 1 << 30))[0] == 4 << 30
    limit, source = default_limit(_stub_gpu(3 << 30), {"MPI_LOCALNRANKS": "4"})
    assert limit == 3 << 30 and source.startswith("the default: GPU 1's free memory")


# -- the issue's rows, through a Net -------------------------------------------------

def _net(layer, channels=2):
    return ('name: "row"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { '
            f'dim: 1 dim: {channels} dim: 8 dim: 8 }} }} }}\n' + layer)


@pytest.mark.parametrize("text,error,message", [
    (_net('layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
          'pooling_param { pool: MAX kernel_size: 2 stride: 30000 } }'),
     "ShapeError", r"layer 'p' \(type Pooling\): bottom 'data' expected a map whose padded extent"),
    (_net('layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
          'pooling_param { pool: AVE kernel_size: 2 stride: 4294967295 } }'),
     "NetDefinitionError", r"layer 'p' \(type Pooling\): stride must fit a 32-bit int"),
    (_net('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { '
          'num_output: 2 kernel_size: 3 weight_filler { type: "msra" } } }', channels=0),
     "ShapeError", r"layer 'c' \(type Convolution\): bottom 'data' expected at least 1 channel"),
    (_net('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { '
          'num_output: 4294967295 kernel_size: 3 } }'),
     "MemoryBudgetError", r"layer 'c' \(type Convolution\): parameter blob 0, shape "
                          r"\(4294967295, 2, 3, 3\) float32"),
])
def test_issue_rows_are_named_errors(text, error, message):
    with traced_peak(4 << 20), pytest.raises(EngineError, match=message) as info:
        Net(text, "TRAIN")
    assert type(info.value).__name__ == error


@pytest.mark.gpu
def test_gpu_net_budget_is_the_gpus_free_memory():
    """On a GPU the default is its free memory; a 10.9 TiB input is refused
    naming it, and a small net builds and charges its blobs there."""
    from netdef.device import Device
    gpu = Device("gpu", 0)
    with pytest.raises(MemoryBudgetError, match=r"needs 10\.9 TiB.*\(the default: GPU 0's free memory"):
        Net(TIB_INPUT, "TEST", device=gpu)
    net = Net(small(), "TRAIN", device=gpu)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    net.forward(data=x)
    net.backward()
    assert net.budget.total > 0 and net.budget.source.startswith("the default: GPU 0")
