"""Data-parallel Ctrl-C: the ranks stop after the iteration whose exchange
(solver.data_parallel.agree) carried a rank's request, never after a
request that reached one rank only after that exchange (it would stop alone
while the others wait in the next all-reduce). Run with a stand-in of a
2-rank World in one process: the other rank agrees with whatever it is
sent and its gradient equals ours."""
import numpy as np
import pytest

from solver.world import World
from tests.solver.test_sgd import regressor_solver


class LateSignalWorld(World):
    """Rank 0 of 2. In exchange ``late_at`` the other rank reports no
    Ctrl-C, and ours arrives just after it (set on the solver)."""

    def __init__(self, late_at):
        super().__init__()
        self.size, self.late_at, self.exchanges, self.solver = 2, late_at, 0, None

    def allreduce_sum(self, array):
        array *= 2          # the other rank's gradient equals ours

    def allgather(self, obj):
        self.exchanges += 1
        if self.exchanges == self.late_at:
            self.solver._stop_requested = True     # the signal, after the exchange
        return [obj, (obj[0], None, False)]


def test_a_ctrl_c_after_the_exchange_stops_after_the_next_iteration(tmp_path):
    solver = regressor_solver(f'snapshot_prefix: "{tmp_path}/s"', iter_size=1)
    world = LateSignalWorld(late_at=2)
    world.solver, solver.world = solver, world
    with pytest.raises(KeyboardInterrupt):
        solver.step(5)
    # The request came after iteration 2's exchange: iteration 3's carried it.
    assert world.exchanges == 3 and solver.iter == 3
    assert solver.interrupt_snapshot is not None and np.isfinite(solver.smoothed_loss)
