"""A pickle-free container for named arrays plus JSON metadata.

The file is a standard NumPy ``.npz`` archive (uncompressed): one ``.npy``
member per array, and one member named ``__meta__`` holding UTF-8 JSON as a
uint8 array. Nothing in it is ever unpickled (``allow_pickle=False`` on both
sides), so loading a file cannot run code. Files are written to a temporary
file in the target directory and renamed over the target, so a crash never
leaves a half-written file under the final name; the temporary files a
killed writer left behind are removed by the next write into that folder
(``sweep_temporaries``).

Reading checks every member before it is read: a ``.npy`` array of a
numeric dtype (no structured, object, string or time types) whose header's
shape accounts for exactly the bytes the member holds, and JSON metadata of
bounded nesting. A damaged or hostile file is a WeightsError naming it,
never a MemoryError, RecursionError or OverflowError.

    save_arrays("net_iter_100.npz", {"conv1/0": w, "conv1/1": b},
                {"iter": 100, "bbox_means": [0, 0, 0, 0]})
    arrays, meta = load_arrays("net_iter_100.npz")
"""
import contextlib
import json
import math
import os
import re
import secrets
import threading
import tokenize
import zipfile
import zlib

import numpy as np

from netdef.errors import WeightsError

__all__ = ["save_arrays", "load_arrays", "load_meta", "atomic_writer", "sweep_temporaries",
           "META_KEY", "FORMAT", "MAX_JSON_DEPTH"]

#: Archive member that holds the metadata; not usable as an array name.
META_KEY = "__meta__"
#: Identifies files written by :func:`save_arrays`.
FORMAT = "netdef-arrays"
_VERSION = 1
#: Deepest nesting of lists and dicts accepted in the metadata.
MAX_JSON_DEPTH = 64
#: Caffe's limit on the axes of a blob (kMaxBlobAxes).
_MAX_AXES = 32
#: A deflated member may expand at most this much (deflate's ceiling is ~1032).
_DEFLATE_RATIO = 1100
#: The temporary files of ``atomic_writer``: ``.<name>.<pid>.<8 hex>.tmp``.
_TEMPORARY = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")
_swept = set()
_swept_lock = threading.Lock()


def _process_gone(pid):
    """True when no process ``pid`` exists on this machine."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OverflowError, OSError):
        return False   # someone else's process (PermissionError), or no such pid number
    return False


def sweep_temporaries(directory):
    """Remove the temporary files of interrupted ``atomic_writer`` writes in
    ``directory``: names ``.<name>.<pid>.<8 hex>.tmp`` whose writing process
    no longer runs on this machine (a live writer's file, e.g. another
    training run's, is kept). Returns the paths removed.

    ``atomic_writer`` calls it the first time a process writes into a
    folder, so a run started after a kill -9 cleans its output folder at its
    first snapshot. (On a folder shared between machines, or containers
    with their own process ids, a writer elsewhere looks gone: do not point
    two such runs at one folder at once.)
    """
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        match = _TEMPORARY.match(name)
        if match and _process_gone(int(match.group(1))):
            target = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                if os.path.isfile(target) and not os.path.islink(target):
                    os.unlink(target)
                    removed.append(target)
    return removed


def _sweep_once(directory):
    with _swept_lock:
        first = directory not in _swept
        _swept.add(directory)
    if first:
        sweep_temporaries(directory)


@contextlib.contextmanager
def atomic_writer(path):
    """Context manager giving a binary file object whose contents replace
    ``path`` atomically when the block exits normally.

    The data go to a temporary file in the same directory, which is flushed,
    fsynced and renamed over ``path`` (``os.replace``); on an exception the
    temporary file is removed and ``path`` is left as it was. Write errors
    raise WeightsError naming ``path``. The first write of a process into a
    folder removes the temporary files killed writers left there
    (``sweep_temporaries``).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    _sweep_once(directory)
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
    A missing, truncated, foreign or malformed file raises WeightsError
    naming it; every member is checked (dtype, shape against the bytes it
    holds, JSON nesting) before its array is allocated.
    """
    return _load(os.fspath(path), with_arrays=True)


def load_meta(path):
    """The ``meta`` of a file written by :func:`save_arrays`, without
    reading its arrays (the archive and the metadata checked as
    :func:`load_arrays` checks them)."""
    return _load(os.fspath(path), with_arrays=False)[1]


def _load(path, with_arrays):
    try:
        # Our own handle, so that it is closed whatever fails midway.
        with open(path, "rb") as handle:
            if handle.read(6) == b"\x93NUMPY":
                raise _not_ours(path, "it is a single .npy array, not an archive")
            handle.seek(0)
            size = os.fstat(handle.fileno()).st_size
            with zipfile.ZipFile(handle) as archive:
                members = _checked_members(archive, size, path)
                header = _header(_read_member(archive, members.pop(META_KEY), META_KEY,
                                              path), path)
                arrays = {name: _read_member(archive, info, name, path)
                          for name, info in members.items() if with_arrays}
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise WeightsError(f"{path}: is a directory") from None
    except WeightsError:
        raise
    except (OSError, ValueError, EOFError, KeyError, RuntimeError, zipfile.BadZipFile,
            zlib.error) as exc:
        # RuntimeError: an encrypted member; NotImplementedError (a subclass):
        # an unknown compression method.
        text = str(exc) if len(str(exc)) <= 200 else str(exc)[:197] + "..."
        raise _not_ours(path, f"{type(exc).__name__}: {text}") from None
    return arrays, header["meta"]


def _checked_members(archive, size, path):
    """name -> ZipInfo of the archive's ``.npy`` members, each one's claimed
    sizes checked against the file's size before anything is read."""
    members, stored = {}, 0
    for info in archive.infolist():
        if not info.filename.endswith(".npy"):
            raise _not_ours(path, f"member '{info.filename}' is not a .npy array")
        name = info.filename[:-len(".npy")]
        if name in members:
            raise _not_ours(path, f"member '{info.filename}' appears twice")
        stored += info.compress_size
        ceiling = info.compress_size * (
            1 if info.compress_type == zipfile.ZIP_STORED else _DEFLATE_RATIO)
        if stored > size or info.file_size > ceiling:
            raise _not_ours(path, f"member '{info.filename}' claims {info.file_size} bytes "
                                  f"({info.compress_size} stored) in a file of {size} bytes")
        members[name] = info
    if META_KEY not in members:
        raise _not_ours(path, f"it has no '{META_KEY}' entry")
    return members


def _read_member(archive, info, name, path):
    """The array of one member, after its header is checked against the
    member's size: numeric dtype, at most 32 axes, and exactly the bytes
    its shape needs."""
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version not in ((1, 0), (2, 0)):
            raise _not_ours(path, f"array '{name}': .npy format version {version} is not "
                                  f"supported")
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        try:
            shape, _, dtype = read_header(member)
        except (SyntaxError, tokenize.TokenError, RecursionError) as exc:
            # NumPy parses the header as a Python literal; these escape it.
            raise _not_ours(path, f"array '{name}': its .npy header does not parse "
                                  f"({type(exc).__name__})") from None
        data_bytes = info.file_size - member.tell()
    if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None \
            or dtype.kind not in "biufc":
        raise _not_ours(path, f"array '{name}' has dtype {dtype}; only plain numeric arrays "
                              f"(bool, integer, float, complex) are read")
    if len(shape) > _MAX_AXES or any(d < 0 for d in shape):
        raise _not_ours(path, f"array '{name}' has shape {shape}; at most {_MAX_AXES} "
                              f"non-negative dimensions are read")
    claimed = math.prod(shape) * dtype.itemsize
    if claimed != data_bytes or math.prod(d for d in shape if d) * dtype.itemsize >= 2**63:
        raise _not_ours(path, f"array '{name}': its header claims shape {shape} of {dtype} "
                              f"({claimed} bytes) but the member holds {data_bytes} bytes")
    with archive.open(info) as member:
        return np.lib.format.read_array(member, allow_pickle=False)


def _too_deep(value):
    """Whether lists and dicts nest more than MAX_JSON_DEPTH levels in
    ``value`` (walked without recursion)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                return True
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return False


def _header(raw, path):
    """The checked ``{"format", "version", "meta"}`` header of ``__meta__``."""
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise _not_ours(path, f"'{META_KEY}' is not a byte string")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
        too_deep = _too_deep(header)
    except RecursionError:   # deeper than the parser itself goes
        too_deep = True
    except (UnicodeDecodeError, ValueError) as exc:
        raise _not_ours(path, f"'{META_KEY}' is not JSON: {exc}") from None
    if too_deep:
        raise _not_ours(path, f"'{META_KEY}' nests lists and objects more than "
                              f"{MAX_JSON_DEPTH} levels deep")
    if (not isinstance(header, dict) or header.get("format") != FORMAT
            or not isinstance(header.get("meta"), dict)):
        raise _not_ours(path, f"'{META_KEY}' does not describe a {FORMAT} file")
    if header.get("version") != _VERSION:
        raise WeightsError(
            f"{path}: {FORMAT} version {header.get('version')} is not supported "
            f"(this engine reads version {_VERSION})")
    return header
