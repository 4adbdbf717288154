"""The processes of one training run: a single process, or the ranks of an
MPI job (``mpiexec -n N python -m solver.train ...``, Slurm's ``srun``).

    world = current_world()
    world.rank, world.size, world.is_root, world.local_rank
    world.allreduce_sum(flat_gradient)   # in place: NumPy through MPI, CuPy through NCCL
    world.allgather(obj) -> [obj of rank 0, obj of rank 1, ...]
    world.bcast(obj, root=0) -> root's obj on every rank
    world.any(flag) -> True on every rank when any rank's flag is true
    world.barrier()
    world.abort(message)                 # one message, every rank ends

Without a launcher (no PMI_/OMPI_/PMIX_/Slurm multi-task environment) the
world is a single process and mpi4py is never imported, so a plain
``python -m solver.train`` works without the ``mpi`` extra.
"""
import os
import sys
import time

__all__ = ["World", "MPIWorld", "current_world", "launched_size", "MPI_EXTRA_HINT"]

MPI_EXTRA_HINT = ("data-parallel training needs mpi4py and an MPI runtime: "
                  "pip install -e '.[mpi]' (mpi4py + mpich), or the site's MPI with mpi4py")

#: (size variable, rank variable) each launcher sets in every process it starts.
#: Seconds a rank waits between printing why it aborts and MPI Abort.
ABORT_GRACE_S = 0.5

_LAUNCHER_VARIABLES = (("PMI_SIZE", "PMI_RANK"),                       # MPICH / Hydra, Intel MPI
                       ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),  # Open MPI
                       ("PMIX_SIZE", "PMIX_RANK"),                      # PMIx launchers
                       ("MPI_WORLD_SIZE", "MPI_WORLD_RANK"),
                       ("SLURM_NTASKS", "SLURM_PROCID"))                # srun


def launched_size(environ=None):
    """How many processes the launcher that started this one started (1
    when none did), read from the launcher's environment variables."""
    environ = os.environ if environ is None else environ
    for size_name, rank_name in _LAUNCHER_VARIABLES:
        value = environ.get(size_name)
        if value is None:
            continue
        try:
            size = int(value)
        except ValueError:
            continue
        if size_name == "SLURM_NTASKS" and rank_name not in environ:
            continue    # inside an allocation, but not a task srun started
        if size > 1:
            return size
    return 1


def _is_device_array(array):
    return type(array).__module__.split(".")[0] == "cupy"


class World:
    """A single process: rank 0 of 1. Every collective returns at once;
    the multi-process form (`MPIWorld`) has the same methods."""

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1

    @property
    def is_root(self):
        return self.rank == 0

    def allreduce_sum(self, array):
        """Sum ``array`` over the ranks, in place; returns it."""
        return array

    def allgather(self, obj):
        """A list of every rank's (picklable) ``obj``, in rank order."""
        return [obj]

    def bcast(self, obj, root=0):
        """``obj`` of rank ``root`` on every rank."""
        return obj

    def any(self, flag):
        """True on every rank when ``flag`` is true on any rank."""
        return bool(flag)

    def barrier(self):
        """Wait for every rank."""

    def abort(self, message, code=1):
        """Print ``message`` once and end the run (every rank of it)."""
        raise SystemExit(message)

    def describe(self):
        return "1 process"

    def finish(self, status, timeout_s=30.0):
        """The exit status of a command ending with ``status``."""
        return status

    def abort_on_uncaught(self):
        """Make an uncaught exception end every rank (nothing to do alone)."""


class MPIWorld(World):
    """The ranks of an MPI job (mpi4py's COMM_WORLD). NumPy buffers are
    summed by MPI; CuPy buffers by NCCL (a communicator built on first use,
    its unique id broadcast over MPI), or through the host when CuPy has no
    NCCL."""

    def __init__(self, comm=None):
        try:
            from mpi4py import MPI
        except ImportError as error:
            raise RuntimeError(f"this process was started by an MPI launcher with "
                               f"{launched_size()} processes, but mpi4py cannot be "
                               f"imported ({error}); {MPI_EXTRA_HINT}") from None
        self._mpi = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = local.Get_rank()
        self.local_size = local.Get_size()
        local.Free()
        # finish's barrier runs on a communicator of its own, so it never
        # matches a collective the other ranks wait in on COMM_WORLD.
        self._finish_comm = self.comm.Dup()
        self._nccl = None

    def allreduce_sum(self, array):
        if _is_device_array(array):
            return self._device_allreduce_sum(array)
        if not array.flags.c_contiguous:
            raise ValueError("allreduce_sum needs a contiguous array (the flat "
                             f"gradient buffer); got shape {array.shape} strides {array.strides}")
        self.comm.Allreduce(self._mpi.IN_PLACE, array, op=self._mpi.SUM)
        return array

    def _device_allreduce_sum(self, array):
        communicator = self.nccl()
        if communicator is None:   # no NCCL in this CuPy: through the host
            import cupy
            host = cupy.asnumpy(array)
            self.comm.Allreduce(self._mpi.IN_PLACE, host, op=self._mpi.SUM)
            array.set(host)
            return array
        from cupy.cuda import nccl
        import cupy
        types = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64,
                 "float16": nccl.NCCL_FLOAT16}
        if array.dtype.name not in types:
            raise ValueError(f"NCCL all-reduce of a {array.dtype} buffer: expected "
                             f"one of {sorted(types)}")
        stream = cupy.cuda.get_current_stream()
        communicator.allReduce(array.data.ptr, array.data.ptr, array.size,
                               types[array.dtype.name], nccl.NCCL_SUM, stream.ptr)
        return array

    def nccl(self):
        """The NCCL communicator of the ranks (one per process, on the
        current device), built over MPI on first use; None when CuPy has no
        NCCL (pip install -e '.[nccl]': nvidia-nccl-cu12)."""
        if self._nccl is None:
            self._nccl = build_nccl_communicator(self)
        return self._nccl or None

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def bcast(self, obj, root=0):
        return self.comm.bcast(obj, root=root)

    def any(self, flag):
        return bool(self.comm.allreduce(bool(flag), op=self._mpi.LOR))

    def barrier(self):
        self.comm.Barrier()

    def abort(self, message, code=1):
        """Print ``message`` (this rank's) and end every rank through MPI
        Abort: the launcher kills the others."""
        print(message, file=sys.stderr, flush=True)
        sys.stdout.flush()
        # Give the launcher a moment to forward the message: Abort kills the
        # job's processes, and output still in a pipe is lost with them.
        time.sleep(ABORT_GRACE_S)
        self.comm.Abort(code)

    def describe(self):
        return f"{self.size} MPI ranks"

    def finish(self, status, timeout_s=30.0):
        """End this rank with ``status``. A failing status (not 0) may be
        this rank's alone (a data error on its images) while the others
        wait in a collective: the ranks meet at a non-blocking barrier, and
        when they do not all arrive within ``timeout_s`` seconds this rank
        aborts the job (MPI Abort: the launcher ends every rank), so a
        failure never leaves the others hanging."""
        if status == 0:
            return status
        request = self._finish_comm.Ibarrier()
        deadline = time.monotonic() + timeout_s
        while not request.Test():
            if time.monotonic() > deadline:
                self.abort(f"rank {self.rank} of {self.size} stopped (exit status {status}) "
                           f"and the other ranks did not stop within {timeout_s:g} s: "
                           f"ending the job", code=status or 1)
            time.sleep(0.05)
        return status

    def abort_on_uncaught(self):
        """An uncaught exception on any rank prints its traceback and ends
        every rank (MPI Abort) instead of leaving them in a collective."""
        previous = sys.excepthook

        def hook(kind, value, traceback):
            previous(kind, value, traceback)
            self.abort(f"rank {self.rank} of {self.size}: uncaught {kind.__name__}: ending "
                       f"the job", code=1)
        sys.excepthook = hook


class SilentStream:
    """A text stream that drops what it is given: the output of the ranks
    other than 0, for which rank 0 speaks."""

    def write(self, text):
        return len(text)

    def flush(self):
        """Nothing is kept, so there is nothing to flush."""


def root_stream(world, stream):
    """``stream`` on rank 0 of ``world``; a SilentStream on the others."""
    return stream if world.is_root else SilentStream()


def build_nccl_communicator(world):
    """An NCCL communicator over ``world``'s ranks: rank 0 draws the unique
    id, MPI broadcasts it, every rank joins on its current device. False
    when every rank lacks NCCL (the caller falls back to host all-reduce);
    an error when only some have it."""
    try:
        from cupy.cuda import nccl
        available = nccl.available if hasattr(nccl, "available") else True
    except ImportError:
        available = False
    everywhere = world.allgather(bool(available))
    if not any(everywhere):
        return False
    if not all(everywhere):
        raise RuntimeError(f"NCCL is available on ranks "
                           f"{[r for r, ok in enumerate(everywhere) if ok]} only; "
                           "install nvidia-nccl-cu12 on every node")
    unique_id = nccl.get_unique_id() if world.rank == 0 else None
    unique_id = world.bcast(unique_id, root=0)
    return nccl.NcclCommunicator(world.size, unique_id, world.rank)


_CURRENT = None


def current_world():
    """The World of this process: a one-process World when no launcher
    started several processes (mpi4py not imported), else the MPI job's,
    built once. Under a launcher without mpi4py: an error naming the
    ``mpi`` extra."""
    global _CURRENT
    if _CURRENT is None:
        _CURRENT = MPIWorld() if launched_size() > 1 else World()
    return _CURRENT
