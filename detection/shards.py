"""Per-image work split across the ranks of an MPI job and gathered back in
dataset order: distributed evaluation (``mpiexec -n N python -m solver.test``)
and proposal generation (the schedule's generate_proposals stage).

    items = run_sharded(world, len(records), lambda indices, progress: [...])
    # items[i] is the result of image i, on every rank

Rank ``r`` of ``N`` takes images ``r, r + N, r + 2N, ...`` (``shard_indices``):
round robin rather than contiguous blocks, so images of similar size (datasets
are often sorted) spread over the ranks and the ranks finish together. Each
image's result depends only on the image and the (identical) weights, so the
gathered list equals what one process computes, and so do the metrics.

``world`` is a ``solver.world.World`` or anything with ``rank``, ``size``,
``allgather(obj)`` and ``bcast(obj, root)`` (the tests use a stand-in); None
means one process. A failure on one rank (a bad image) is sent to every rank
in the gather and raised on each of them, so no rank waits for a rank that has
stopped: every rank ends with the same error.
"""
import pickle

__all__ = ["shard_indices", "gather_in_order", "run_sharded", "root_only", "is_root"]


def _size(world):
    return 1 if world is None else int(world.size)


def _rank(world):
    return 0 if world is None else int(world.rank)


def is_root(world):
    """True on rank 0 (and in a single process, ``world`` None)."""
    return _rank(world) == 0


def shard_indices(total, world):
    """The image indices this rank works on: ``range(rank, total, size)``."""
    return range(_rank(world), int(total), _size(world))


def gather_in_order(world, total, local):
    """Every rank's ``local`` results (``local[j]`` is the result of image
    ``shard_indices(total, that rank)[j]``) merged into one list of
    ``total`` results in image order, on every rank."""
    pieces = [local] if _size(world) == 1 else world.allgather(local)
    return _merge(pieces, total)


def _merge(pieces, total):
    """One list in image order from the ranks' pieces (rank order)."""
    size = len(pieces)
    merged = [None] * int(total)
    for rank, piece in enumerate(pieces):
        indices = range(rank, int(total), size)
        if len(piece) != len(indices):
            raise RuntimeError(f"rank {rank} of {size} returned {len(piece)} results for its "
                               f"{len(indices)} images of {total}")
        for index, item in zip(indices, piece):
            merged[index] = item
    return merged


class _Failure:
    """What a rank sends instead of its results when its work raised."""

    def __init__(self, rank, error):
        self.rank = rank
        try:    # the error itself when it travels (most do), else its text
            pickle.dumps(error)
            self.error = error
        except Exception:
            self.error = RuntimeError(f"{type(error).__name__}: {error}")


def run_sharded(world, total, work, progress=None):
    """``work(indices, progress)`` on this rank's images (a list with one
    result per index), gathered into image order on every rank.
    ``progress(done, total)`` is passed to rank 0's work only (its own
    share: the others run at the same pace). When the work of any rank
    raised, every rank raises: a failing rank its own error, the others
    the lowest failing rank's."""
    indices = shard_indices(total, world)
    if _size(world) == 1:
        return list(work(indices, progress))
    try:
        local = list(work(indices, progress if is_root(world) else None))
    except Exception as error:   # told to every rank in the gather below
        failure = _Failure(_rank(world), error)
        world.allgather(failure)
        raise
    pieces = world.allgather(local)
    for piece in pieces:
        if isinstance(piece, _Failure):
            raise piece.error
    return _merge(pieces, total)


def root_only(world, action):
    """``action()`` on rank 0 (writing a file), its result or error told to
    every rank: the others wait for it and raise the same error, so a
    failed write never leaves a rank waiting."""
    if _size(world) == 1:
        return action()
    outcome = None
    if is_root(world):
        try:
            outcome = ("ok", action())
        except Exception as error:
            world.bcast(_Failure(0, error), root=0)
            raise
    outcome = world.bcast(outcome, root=0)
    if isinstance(outcome, _Failure):
        raise outcome.error
    return outcome[1]
