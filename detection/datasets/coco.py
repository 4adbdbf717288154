"""COCO-style instances JSON reader.

Reads ``{"images": [...], "annotations": [...], "categories": [...]}``:

- categories are mapped to contiguous labels ``1..K`` in the order of their
  ids (so COCO's 80 categories with ids 1..90 become labels 1..80), the class
  names are their ``name``;
- ``bbox`` ``[x, y, w, h]`` (continuous, top-left corner) becomes
  ``[x, y, x + w - 1, y + h - 1]`` in 0-based inclusive pixels; boxes narrower
  than a pixel get ``x2 = x1`` (py-faster-rcnn's ``max(0, w - 1)``);
- ``iscrowd`` objects are flagged like VOC's ``difficult``: evaluation ignores
  them, :meth:`~detection.datasets.DetectionDataset.without_difficult` drops
  them for training;
- ``image_id`` of a record is ``str(id)``; records keep the order of
  ``images``.

Validation follows the VOC reader (file, annotation and reason in every
message; ``on_error`` "raise" or "skip"), with one allowance for COCO's
float boxes: a box edge less than one pixel outside the image (round-off of
the polygon it was computed from) is clipped to the image; further out is
an error.
"""
import json
import os

import numpy as np

from netdef.errors import DataError

from .records import (DetectionDataset, ImageRecord, Issues, box_problems,
                      empty_images_note, path_problem, read_image_size)
from . import cache as _cache

__all__ = ["load_coco", "find_coco_json", "default_image_root"]

# How far (pixels) a box edge may stick out of the image and be clipped.
CLIP_TOLERANCE = 1.0


def find_coco_json(root, split):
    """``root/annotations/instances_<split>.json`` (or
    ``root/instances_<split>.json``) if it exists, else None."""
    for path in (os.path.join(root, "annotations", f"instances_{split}.json"),
                 os.path.join(root, f"instances_{split}.json")):
        if os.path.isfile(path):
            return path
    return None


def default_image_root(json_path):
    """Where the images of a JSON are, when not given: the first existing of
    ``<dir>/../<name>`` for ``<dir>/instances_<name>.json`` (COCO's layout:
    ``annotations/instances_val2017.json`` and ``val2017/``),
    ``<dir>/images``, ``<dir>/../images``, and the JSON's own folder."""
    folder = os.path.dirname(os.path.abspath(json_path))
    stem = os.path.splitext(os.path.basename(json_path))[0]
    candidates = []
    if stem.startswith("instances_"):
        name = stem[len("instances_"):]
        candidates += [os.path.join(os.path.dirname(folder), name),
                       os.path.join(folder, name)]
    candidates += [os.path.join(folder, "images"),
                   os.path.join(os.path.dirname(folder), "images")]
    for c in candidates:
        if os.path.isdir(c):
            return c
    return folder


def load_coco(json_path, image_root=None, on_error="raise", keep_empty=False,
              cache="auto", cache_dir=None, name=None, check_images=False):
    """Read a COCO instances JSON into a :class:`DetectionDataset`.

    Args:
        json_path: the instances JSON.
        image_root: folder that ``file_name`` is relative to (default:
            :func:`default_image_root`).
        on_error: ``"raise"`` or ``"skip"`` (see :func:`detection.datasets.load_dataset`).
        keep_empty: keep images without annotations (default: left out with
            a warning).
        cache, cache_dir: see :mod:`detection.datasets.cache` ("auto" caches
            JSON files of 1 MiB or more).
        name: dataset name (default: the JSON file's stem).
        check_images: decode every image completely (slower), so that a
            truncated or corrupt file is found now instead of when
            training first draws it; otherwise only its header is read.

    Structural problems of the file (not JSON, no ``images``/``categories``
    lists, bad or duplicate categories) always raise
    :class:`netdef.errors.DataError`. Per image (skipped as a whole with
    "skip"): missing id or ``file_name``, a ``file_name`` that leaves
    ``image_root`` (a ``..`` component or an absolute path), duplicate id,
    missing or unreadable (with ``check_images``: undecodable) image file,
    size different from ``width``/``height`` (missing ones are read from
    the image). Per annotation: unknown image or category id,
    ``bbox`` not four numbers, ``w``/``h`` <= 0, box outside the image.
    """
    json_path = os.path.abspath(os.fspath(json_path))
    issues = Issues(on_error)
    image_root = os.path.abspath(image_root if image_root is not None
                                 else default_image_root(json_path))
    name = name or os.path.splitext(os.path.basename(json_path))[0]
    try:
        size = os.path.getsize(json_path)
    except OSError as exc:
        raise DataError(f"{json_path}: cannot read the annotation file: {exc}") from None
    data = None
    entry = None
    if _cache.use_cache(cache, size >= _cache.AUTO_MIN_JSON_BYTES):
        fp = _cache.Fingerprint("coco")
        options = {"json": json_path, "image_root": image_root, "on_error": on_error,
                   "keep_empty": bool(keep_empty)}
        if check_images:    # only when set, so the keys of earlier entries stay valid
            options["check_images"] = True
        fp.add("options", options)
        data = fp.add_file(json_path)
        fp.add_tree_stats(image_root)
        entry = _cache.entry_path(cache_dir, "coco", fp.hexdigest())
        hit = _cache.load(entry)
        if hit is not None:
            records, messages = hit
            classes = _cached_classes(entry)
            if classes is not None:
                for m in messages:
                    issues.warn(m)
                return DetectionDataset(name, classes, records, on_error=on_error)
    if data is None:
        try:
            with open(json_path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise DataError(f"{json_path}: cannot read the annotation file: {exc}") from None
    classes, records = _parse(json_path, data, (image_root, check_images), issues, keep_empty)
    if entry is not None:
        _cache.save(entry, records, issues.messages)
        _save_classes(entry, classes)
    if not records:
        raise DataError(f"{json_path}: no usable images")
    return DetectionDataset(name, classes, records, on_error=on_error)


# The class list rides along in a small sidecar file so that the shared cache
# format stays records + messages.
def _classes_entry(entry):
    return entry[:-len(".json")] + ".classes.json"


def _cached_classes(entry):
    try:
        with open(_classes_entry(entry), encoding="utf-8") as f:
            classes = json.load(f)
        return tuple(str(c) for c in classes)
    except (OSError, ValueError, TypeError):
        return None


def _save_classes(entry, classes):
    path = _classes_entry(entry)
    try:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(list(classes), f)
        os.replace(tmp, path)
    except OSError:
        pass          # _cache.save already said the cache is not writable


def _is_number(v):
    """A JSON number a float can hold (NaN and Inf included: the box rules
    name them); not a bool, not an integer beyond the float range."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        float(v)
    except OverflowError:
        return False
    return True


def _parse(json_path, data, images_from, issues, keep_empty):
    """``(classes, records)``; ``images_from``: ``(image_root, check_images)``."""
    doc = _document(json_path, data)
    classes, label_of = _categories(json_path, doc["categories"])
    images = _images(json_path, doc["images"], images_from, issues)
    table, where = _annotation_rows(json_path, doc, images, classes, label_of, issues)
    table, boxes = _valid_boxes(json_path, table, where, images, issues)
    img_idx = table[:, 0].astype(np.int64)
    order = np.argsort(img_idx, kind="stable")
    starts = np.searchsorted(img_idx[order], np.arange(len(images) + 1))
    records, empty = [], []
    for k, (img_id, _file, path, wk, hk) in enumerate(images):
        sel = order[starts[k]:starts[k + 1]]
        if len(sel) == 0 and not keep_empty:
            empty.append(img_id)
            continue
        records.append(ImageRecord(
            image_id=img_id, path=path, width=int(wk), height=int(hk),
            boxes=boxes[sel].astype(np.float32),
            labels=table[sel, 1].astype(np.int32),
            difficult=table[sel, 2].astype(bool)))
    if empty:
        issues.note(empty_images_note(json_path, empty))
    return classes, records


def _document(json_path, data):
    """The parsed JSON object, its 'images', 'categories' and
    'annotations' (default empty) checked to be lists."""
    try:
        doc = json.loads(data)
    except UnicodeDecodeError as exc:
        raise DataError(f"{json_path}: not UTF-8 text: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{json_path}: JSON parse error at line {exc.lineno} "
                        f"column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:       # an integer of more digits than Python converts
        raise DataError(f"{json_path}: JSON parse error: {exc}") from None
    except RecursionError:
        raise DataError(f"{json_path}: JSON parse error: nested too deeply (an annotation "
                        "file has a few levels)") from None
    if not isinstance(doc, dict):
        raise DataError(f"{json_path}: expected a JSON object with 'images', "
                        f"'annotations' and 'categories', found {type(doc).__name__}")
    for key in ("images", "categories"):
        if not isinstance(doc.get(key), list):
            raise DataError(f"{json_path}: expected a list under {key!r}, found "
                            f"{type(doc.get(key)).__name__ if key in doc else 'nothing'}")
    annotations = doc.get("annotations", [])
    if not isinstance(annotations, list):
        raise DataError(f"{json_path}: expected a list under 'annotations', "
                        f"found {type(annotations).__name__}")
    return doc


def _annotation_rows(json_path, doc, images, classes, label_of, issues):
    """The structurally valid annotations as ``(A, 7)`` rows ``(image
    index, label, crowd, x, y, w, h)`` and how messages name each."""
    index_of = {img_id: k for k, (img_id, *_rest) in enumerate(images)}
    all_ids = {str(im.get("id")) for im in doc["images"] if isinstance(im, dict)}
    # Structure of each annotation (a Python pass is unavoidable over JSON),
    # then the box rules on all boxes at once (_valid_boxes).
    rows, where = [], []
    for k, ann in enumerate(doc.get("annotations", [])):
        ident = _ann_ident(k, ann)
        if not isinstance(ann, dict):
            issues.object(f"{json_path}: annotation {ident}: not a JSON object")
            continue
        img_key = str(ann.get("image_id"))
        if img_key not in index_of:
            if img_key in all_ids:
                continue            # its image was skipped (already reported)
            issues.object(f"{json_path}: annotation {ident}: refers to image id "
                          f"{ann.get('image_id')!r}, which is not in 'images'")
            continue
        where_text = _ann_where(k, ann, images[index_of[img_key]][1])
        cat = ann.get("category_id")
        if cat not in label_of:
            issues.object(f"{json_path}: annotation {where_text}): unknown "
                          f"category_id {cat!r} (categories: "
                          f"{', '.join(str(c) for c in sorted(label_of))})")
            continue
        where_text += f", category {classes[label_of[cat] - 1]!r})"
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
            issues.object(f"{json_path}: annotation {where_text}: bbox must be "
                          f"[x, y, w, h] numbers, found {bbox!r}")
            continue
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1, True, False):
            issues.object(f"{json_path}: annotation {where_text}: iscrowd must "
                          f"be 0 or 1, found {crowd!r}")
            continue
        rows.append((index_of[img_key], label_of[cat], bool(crowd), *bbox))
        where.append(where_text)
    return np.array(rows, dtype=np.float64).reshape(-1, 7), where


def _valid_boxes(json_path, table, where, images, issues):
    """The rows whose box passes the box rules, and their boxes ``(n, 4)``
    ``[x1, y1, x2, y2]`` inclusive; the others reported."""
    img_idx = table[:, 0].astype(np.int64)
    sizes = np.array([(w, h) for _, _, _, w, h in images], dtype=np.float64).reshape(-1, 2)
    width, height = sizes[img_idx, 0], sizes[img_idx, 1]
    x, y, w, h = table[:, 3:].T
    boxes = np.stack([x, y, x + np.maximum(w - 1, 0), y + np.maximum(h - 1, 0)], axis=1)
    boxes = _clip_round_off(boxes, width, height)
    reasons = box_problems(boxes, width, height)
    with np.errstate(invalid="ignore"):
        flat = ~((w > 0) & (h > 0))
    for i in np.flatnonzero(flat):
        reasons[i] = (f"bbox [x, y, w, h] = [{', '.join(f'{v:g}' for v in table[i, 3:])}] "
                      "has a width or height <= 0")
    keep = np.ones(len(table), dtype=bool)
    for i, reason in enumerate(reasons):
        if reason:
            issues.object(f"{json_path}: annotation {where[i]}: {reason}")
            keep[i] = False
    return table[keep], boxes[keep]


def _categories(json_path, categories):
    by_id = {}
    for k, c in enumerate(categories):
        if not (isinstance(c, dict) and isinstance(c.get("id"), int)
                and not isinstance(c.get("id"), bool)
                and isinstance(c.get("name"), str) and c["name"].strip()):
            raise DataError(f"{json_path}: category index {k}: needs an integer "
                            f"'id' and a non-empty 'name', found {c!r}")
        if c["id"] in by_id:
            raise DataError(f"{json_path}: category id {c['id']} is defined twice "
                            f"({by_id[c['id']]!r} and {c['name']!r})")
        by_id[c["id"]] = c["name"].strip()
    if not by_id:
        raise DataError(f"{json_path}: 'categories' is empty")
    ids = sorted(by_id)
    classes = tuple(by_id[i] for i in ids)
    if len(set(classes)) != len(classes):
        dup = sorted({n for n in classes if classes.count(n) > 1})
        raise DataError(f"{json_path}: category names must be distinct; "
                        f"repeated: {', '.join(dup)}")
    return classes, {cid: label for label, cid in enumerate(ids, start=1)}


def _images(json_path, entries, images_from, issues):
    """``[(image_id str, file_name, path, width, height)]`` of the usable
    images; ``images_from``: ``(image_root, check_images)``."""
    image_root, check_images = images_from
    out, seen = [], set()
    for k, im in enumerate(entries):
        if not isinstance(im, dict) or "id" not in im:
            issues.image(f"{json_path}: image index {k}: needs an 'id', found {im!r}")
            continue
        img_id = str(im["id"])
        where = f"{json_path}: image index {k} (id {im['id']!r}"
        file_name = im.get("file_name")
        if not isinstance(file_name, str) or not file_name.strip():
            issues.image(f"{where}): needs a 'file_name'")
            continue
        where += f", {file_name!r})"
        reason = path_problem(file_name)
        if reason:
            issues.image(f"{where}: file_name {reason}")
            continue
        if img_id in seen:
            issues.image(f"{where}: image id is used twice")
            continue
        seen.add(img_id)
        path = os.path.join(image_root, file_name)
        try:
            width, height = read_image_size(path, decode=check_images)
        except FileNotFoundError:
            issues.image(f"{where}: image file {path} not found")
            continue
        except OSError as exc:
            issues.image(f"{where}: image {path} cannot be read: {exc}")
            continue
        jw, jh = im.get("width"), im.get("height")
        if jw is not None and jh is not None and (jw, jh) != (width, height):
            issues.image(f"{where}: JSON says {jw}x{jh} (width x height) but "
                         f"image {path} is {width}x{height}")
            continue
        out.append((img_id, file_name, path, width, height))
    return out


def _ann_ident(k, ann):
    ann_id = ann.get("id") if isinstance(ann, dict) else None
    return f"index {k}" + (f" (id {ann_id!r})" if ann_id is not None else "")


def _ann_where(k, ann, file_name):
    """``index 3 (id 7, image id 1 'a.jpg'`` -- the caller closes the
    parenthesis after adding the category."""
    ann_id = ann.get("id")
    id_text = f"id {ann_id!r}, " if ann_id is not None else ""
    return f"index {k} ({id_text}image id {ann.get('image_id')!r} {file_name!r}"


def _clip_round_off(boxes, width, height):
    """Clip edges that stick out of the image by less than CLIP_TOLERANCE
    pixels; farther ones are left for :func:`box_problems` to report."""
    b = boxes.copy()
    x1, y1, x2, y2 = b.T
    with np.errstate(invalid="ignore"):
        for coord, low, high in ((x1, 0.0, None), (y1, 0.0, None),
                                 (x2, None, width - 1), (y2, None, height - 1)):
            if low is not None:
                near = (coord < low) & (coord > low - CLIP_TOLERANCE)
                coord[near] = low
            else:
                near = (coord > high) & (coord < high + CLIP_TOLERANCE)
                coord[near] = high[near]
    return b
