"""Whether this machine can run MPI jobs, for the data-parallel tests:
mpi4py importable and an ``mpiexec`` (the venv's, from the MPICH wheel,
before the PATH's)."""
import os
import shutil
import sys

import pytest


def _find_mpiexec():
    try:
        import mpi4py  # noqa: F401  (only whether it is there)
    except ImportError:
        return None, "mpi4py is not installed (pip install -e '.[mpi]')"
    found = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep
                         + os.environ.get("PATH", ""))
    if found is None:
        return None, "no mpiexec (an MPI runtime: pip install -e '.[mpi]' brings MPICH)"
    return found, None


#: The launcher's path, or None; and why not.
MPIEXEC, MPI_MISSING = _find_mpiexec()

requires_mpi = pytest.mark.skipif(MPIEXEC is None, reason=str(MPI_MISSING))
