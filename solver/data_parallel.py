"""The data-parallel parts of an iteration (solver.sgd.Solver with a
solver.world World of N ranks; with one process all of it is a no-op).

Semantics: N ranks x iter_size S is one process with iter_size N x S on the
same images. A single process runs the iteration's passes at positions
0, 1, ..., N*S - 1; rank r runs positions r, r + N, ..., i.e. its pass s is
position ``s * N + r``:

- the data: before each of its passes a rank skips the minibatches of the
  other ranks' positions (``skip_minibatches``, on the train net's layers
  with ``next_minibatch``: RoIData), so at the end of an iteration every
  rank's data position is the single process's;
- the random draws: ``net.set_draw_key(iteration, position)``, which keys
  the sampling and dropout draws (Layer.keyed_rng);
- the gradients: each rank's diffs hold the sum over its S passes; one
  all-reduce of each flat buffer (solver.flat_params: one per dtype, so
  usually one per iteration) sums them over the ranks, and the update
  divides by N x S;
- the loss, the NaN/Inf guard and a Ctrl-C stop: one small allgather per
  iteration (``agree``) gives every rank every rank's loss, failure and stop
  request, so all ranks stop together, with one message.

Learning-rate rule when scaling (``LRScaling``): ``keep`` (the solver
file's rates: the update is the mean over N x S images, as iter_size N x S)
or ``linear`` (rates x N, Goyal et al.'s rule for a batch N times larger),
ramped linearly from x1 to x N over ``warmup`` iterations.
"""
import dataclasses
import os

from netdef.errors import NetDefinitionError
from solver.nan_guard import numerical_error

__all__ = ["rank_gpu", "position", "data_layers", "check_parallel_net", "skip_minibatches",
           "agree", "LRScaling"]


def rank_gpu(gpu, world, environ=None):
    """The GPU of this rank for ``--gpu gpu``: with several ranks, local rank
    k uses ``gpu + k`` (one GPU per rank of a machine), unless the launcher
    shows each rank a single GPU (CUDA_VISIBLE_DEVICES with one entry, as
    Slurm's --gpus-per-task does): then ``gpu`` itself."""
    if gpu is None or world.size == 1:
        return gpu
    visible = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    if visible is not None and len([v for v in visible.split(",") if v.strip()]) == 1:
        return gpu
    return gpu + world.local_rank


def position(world, pass_index):
    """The image position within the iteration of this rank's pass
    ``pass_index`` (a single process's pass number)."""
    return pass_index * world.size + world.rank


def data_layers(net):
    """The layers of ``net`` that hand out minibatches in a data order
    (``next_minibatch``: RoIData)."""
    return [layer for layer in net.layers if hasattr(layer, "next_minibatch")]


def check_parallel_net(net, world, source):
    """With several ranks: every layer with random or positional state must
    follow the keyed / skipped design (a minibatch data layer, Dropout, or
    no state); a layer that advances a stream of its own (DummyData's
    generator, Data / HDF5Data cursors) would give each rank other draws or
    the same records, so it is refused, naming it."""
    if world.size == 1:
        return
    for layer in net.layers:
        if not layer.random_state_attributes or hasattr(layer, "next_minibatch") \
                or layer.type == "Dropout":
            continue
        raise NetDefinitionError(
            f"{source}: {layer.where} keeps random or positional state of its own "
            f"({', '.join(layer.random_state_attributes)}), which {world.size} ranks would "
            f"each advance alone; data-parallel training needs minibatches from a RoIData "
            f"layer and draws keyed by the pass (AnchorTarget, ProposalTarget, Dropout). "
            f"Train this net in one process")


def skip_minibatches(layers, count):
    """Consume ``count`` minibatches of each data layer in ``layers`` (the
    positions other ranks run)."""
    for _ in range(count):
        for layer in layers:
            layer.next_minibatch()


def agree(solver, loss, failure):
    """After this rank's passes: every rank's ``loss`` (sum over its
    passes), ``failure`` (the NumericalError it raised, or None) and Ctrl-C
    request, exchanged in one allgather. Returns the summed loss; raises the
    first failing rank's NumericalError on every rank (rank 0 logs it once);
    sets ``solver._stop_requested`` on every rank when any rank had it."""
    world = solver.world
    if world.size == 1:
        if failure is not None:
            raise failure
        return loss
    mine = (float(loss), None if failure is None else
            (str(failure), getattr(failure, "blob", None), getattr(failure, "layer", None)),
            bool(solver._stop_requested))
    everyone = world.allgather(mine)
    solver._stop_agreed = any(stop for _, _, stop in everyone)
    if solver._stop_agreed:
        solver._stop_requested = True
    failures = [(rank, f) for rank, (_, f, _) in enumerate(everyone) if f is not None]
    if failures:
        rank, (message, blob, layer) = failures[0]
        if failure is None or rank != world.rank:
            message = f"rank {rank} of {world.size}: {message}"
            if failure is None and world.is_root:
                solver.progress.record("error", iter=solver.iter, message=message,
                                       blob=blob, layer=layer)
        error = numerical_error(message, solver.iter, blob, layer, solver.last_snapshot)
        error.agreed = True   # every rank raises it: rank 0 alone reports it
        raise error
    return sum(value for value, _, _ in everyone)


@dataclasses.dataclass
class LRScaling:
    """The learning-rate factor of a data-parallel run at an iteration:
    ``rule`` "keep" (1) or "linear" (``ranks``), reached linearly from 1
    over the first ``warmup`` iterations."""
    rule: str = "keep"
    ranks: int = 1
    warmup: int = 0

    def __post_init__(self):
        if self.rule not in ("keep", "linear"):
            raise ValueError(f"learning-rate scaling '{self.rule}': expected keep or linear")
        if self.warmup < 0:
            raise ValueError(f"learning-rate warm-up of {self.warmup} iterations: expected >= 0")

    def factor(self, it):
        target = float(self.ranks) if self.rule == "linear" else 1.0
        if self.warmup and it < self.warmup:
            return 1.0 + (target - 1.0) * it / self.warmup
        return target
