"""A pickle-free container for named arrays plus JSON metadata.

The file is a standard NumPy ``.npz`` archive (uncompressed): one ``.npy``
member per array, and one member named ``__meta__`` holding UTF-8 JSON as a
uint8 array. Nothing in it is ever unpickled (``allow_pickle=False`` on both
sides), so loading a file cannot run code. Files are written to a temporary
file in the target directory and renamed over the target, so a crash never
leaves a half-written file under the final name.

    save_arrays("net_iter_100.npz", {"conv1/0": w, "conv1/1": b},
                {"iter": 100, "bbox_means": [0, 0, 0, 0]})
    arrays, meta = load_arrays("net_iter_100.npz")
"""
import contextlib
import json
import os
import secrets
import zipfile

import numpy as np

from netdef.errors import WeightsError

__all__ = ["save_arrays", "load_arrays", "atomic_writer", "META_KEY", "FORMAT"]

#: Archive member that holds the metadata; not usable as an array name.
META_KEY = "__meta__"
#: Identifies files written by :func:`save_arrays`.
FORMAT = "netdef-arrays"
_VERSION = 1


@contextlib.contextmanager
def atomic_writer(path):
    """Context manager giving a binary file object whose contents replace
    ``path`` atomically when the block exits normally.

    The data go to a temporary file in the same directory, which is flushed,
    fsynced and renamed over ``path`` (``os.replace``); on an exception the
    temporary file is removed and ``path`` is left as it was. Write errors
    raise WeightsError naming ``path``.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(
        directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # O_EXCL: never reuse an existing file; mode 0o666 honours the umask.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot write: {exc.strerror}") from None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(exc, OSError):
            raise WeightsError(f"{path}: cannot write: {exc.strerror or exc}") from exc
        raise


def _host_array(value, name):
    """``value`` as a NumPy array (device arrays are copied to the host)."""
    if hasattr(value, "__cuda_array_interface__") and hasattr(value, "get"):
        value = value.get()
    array = np.asarray(value)
    if array.dtype.hasobject or array.dtype.kind not in "biufc":
        raise TypeError(
            f"array '{name}' has dtype {array.dtype}; only numeric arrays can "
            f"be stored (no pickled objects)")
    return array


def save_arrays(path, arrays, meta=None):
    """Write ``arrays`` (dict: name -> array) and ``meta`` (a JSON-serialisable
    dict) to ``path`` atomically.

    Names are non-empty strings other than ``__meta__``; they may contain
    ``/``. Array dtypes and shapes are kept exactly.
    """
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    header = json.dumps({"format": FORMAT, "version": _VERSION, "meta": meta},
                        sort_keys=True)
    members = []
    for name, value in arrays.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"array names must be non-empty strings, got {name!r}")
        if name == META_KEY:
            raise ValueError(f"'{META_KEY}' is reserved for the metadata")
        members.append((name, _host_array(value, name)))
    members.append((META_KEY, np.frombuffer(header.encode("utf-8"), dtype=np.uint8)))

    with atomic_writer(path) as handle:
        with zipfile.ZipFile(handle, mode="w", compression=zipfile.ZIP_STORED,
                             allowZip64=True) as archive:
            for name, array in members:
                with archive.open(name + ".npy", mode="w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)


def _not_ours(path, why):
    return WeightsError(f"{path}: not a readable netdef array file ({why})")


def load_arrays(path):
    """Read a file written by :func:`save_arrays`; return ``(arrays, meta)``.

    ``arrays`` is a dict name -> NumPy array in the order they were saved.
    A missing, truncated or foreign file raises WeightsError naming it.
    """
    path = os.fspath(path)
    try:
        # Our own handle, so that it is closed even when NumPy fails midway.
        with open(path, "rb") as handle:
            archive = np.load(handle, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise _not_ours(path, "it is a single .npy array, not an archive")
            with archive:
                names = list(archive.files)
                if META_KEY not in names:
                    raise _not_ours(path, f"it has no '{META_KEY}' entry")
                raw = archive[META_KEY]
                arrays = {name: archive[name] for name in names if name != META_KEY}
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise WeightsError(f"{path}: is a directory") from None
    except WeightsError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise _not_ours(path, f"{type(exc).__name__}: {exc}") from None

    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise _not_ours(path, f"'{META_KEY}' is not a byte string")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _not_ours(path, f"'{META_KEY}' is not JSON: {exc}") from None
    if (not isinstance(header, dict) or header.get("format") != FORMAT
            or not isinstance(header.get("meta"), dict)):
        raise _not_ours(path, f"'{META_KEY}' does not describe a {FORMAT} file")
    if header.get("version") != _VERSION:
        raise WeightsError(
            f"{path}: {FORMAT} version {header.get('version')} is not supported "
            f"(this engine reads version {_VERSION})")
    return arrays, header["meta"]
