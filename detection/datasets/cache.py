"""A content-keyed cache of parsed annotations (JSON, no pickle).

Parsing VOC XML and opening every image header takes seconds for VOC
2007+2012 and a minute for COCO; the cache keeps the validated records. Its
key is a hash of everything the result depends on, so it is never stale:

- the reader version, its options and the class list;
- the bytes of every annotation file (XML, JSON) and split file: a content
  hash, because a rewrite within one timestamp tick keeps the mtime;
- the size, mtime and inode of every image file (the reader only looks at
  image headers, and a replaced image changes at least one of them).

Entries are written to a temporary file and renamed, so a concurrent or
interrupted writer never leaves a half-written entry; a corrupt entry is
ignored and rebuilt. Warnings emitted by the original load (skipped objects,
images without objects) are stored and shown again on a cache hit.
"""
import hashlib
import json
import os
import tempfile
import warnings

import numpy as np

from .records import ImageRecord

CACHE_VERSION = 1

# cache="auto" caches only loads at least this big (images of a VOC split,
# bytes of a COCO JSON): small sets parse about as fast as the key is made.
AUTO_MIN_IMAGES = 1000
AUTO_MIN_JSON_BYTES = 1 << 20


def cache_base_dir():
    """``$NETDEF_CACHE_DIR``, else ``$XDG_CACHE_HOME/netdef``, else
    ``~/.cache/netdef``."""
    base = os.environ.get("NETDEF_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(
            os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "netdef")
    return base


def default_cache_dir():
    """Where annotation cache entries go: ``<cache_base_dir()>/annotations``."""
    return os.path.join(cache_base_dir(), "annotations")


class Fingerprint:
    """An incremental hash of the inputs of a load."""

    def __init__(self, kind):
        self._h = hashlib.blake2b(digest_size=20)
        self.add("kind", kind)
        self.add("version", CACHE_VERSION)

    def add(self, label, value):
        """A JSON-serializable value (options, class list)."""
        self._h.update(json.dumps([label, value], sort_keys=True).encode())
        self._h.update(b"\0")

    def add_bytes(self, label, data):
        self.add(label, len(data))
        self._h.update(data)

    def add_file(self, path):
        """The content of a file (or its absence)."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            self.add(("missing", path), type(exc).__name__)
            return None
        self.add_bytes(("file", path), data)
        return data

    def add_tree_stats(self, root):
        """Size, mtime and inode of every file under ``root``."""
        entries = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in filenames:
                p = os.path.join(dirpath, name)
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                entries.append([os.path.relpath(p, root), st.st_size,
                                st.st_mtime_ns, st.st_ino])
        entries.sort()
        self.add(("tree", os.path.abspath(root)), entries)

    def hexdigest(self):
        return self._h.hexdigest()


def use_cache(cache, large):
    """Resolve ``cache`` ("auto", True, False); ``large``: whether the load is
    big enough for "auto"."""
    if cache == "auto":
        return bool(large)
    if cache in (True, False):
        return cache
    raise ValueError(f"cache must be 'auto', True or False, got {cache!r}")


def entry_path(cache_dir, kind, key):
    return os.path.join(cache_dir or default_cache_dir(), f"{kind}-{key}.json")


def load(path):
    """``(records, messages)`` from a cache entry, or None when absent or
    unreadable. ``messages`` are re-emitted by the caller."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            payload = json.load(f)
        if payload.get("version") != CACHE_VERSION:
            return None
        records = [
            ImageRecord(
                image_id=r["image_id"], path=r["path"], width=int(r["width"]),
                height=int(r["height"]),
                boxes=np.array(r["boxes"], dtype=np.float32).reshape(-1, 4),
                labels=np.array(r["labels"], dtype=np.int32),
                difficult=np.array(r["difficult"], dtype=bool))
            for r in payload["records"]]
        return records, list(payload["messages"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(path, records, messages):
    """Write an entry atomically; a cache that cannot be written is not an
    error (the load just is not cached), but it is said once."""
    payload = {
        "version": CACHE_VERSION,
        "messages": list(messages),
        "records": [
            {"image_id": r.image_id, "path": r.path, "width": r.width,
             "height": r.height,
             # float32 -> float is exact, and JSON round-trips floats exactly.
             "boxes": r.boxes.astype(np.float64).tolist(),
             "labels": r.labels.tolist(),
             "difficult": r.difficult.tolist()}
            for r in records],
    }
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-",
                                   suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(payload, f, separators=(",", ":"))
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        warnings.warn(f"annotation cache not written to {path}: {exc}",
                      RuntimeWarning, stacklevel=3)
