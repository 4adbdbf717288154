"""bench.gpu_counts: the tiny R-FCN's whole GPU path runs on the stand-in
CuPy (every kernel launch through the shared argument check, no NumPy array
handed to a device operation), and after the warm-up iteration no kernel is
compiled or looked up again."""
import collections

from bench import gpu_counts
from tests.kernel_harness import requires_cxx


@requires_cxx
def test_one_iteration_on_the_gpu_path_launches_cached_kernels_only():
    table = gpu_counts.count_iterations(1)
    total = collections.Counter()
    for counter in table.values():
        total.update(counter)
    assert total["launch"] > 0 and total["array_op"] > 0
    assert total["get_function"] == 0 and total["compile"] == 0
    assert total["host_mix"] == 0
    text = gpu_counts.report(table, by_layer=True)
    assert text.splitlines()[-1].startswith("total") and "rpn_loss_cls (forward)" in text
