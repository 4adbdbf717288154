"""PASCAL VOC reader (VOC 2007, 2012, their union, and own data in that layout).

Layout of one VOC folder (``VOCdevkit/VOC2007``, ``VOCdevkit/VOC2012`` or the
user's own)::

    Annotations/<id>.xml          one XML per image, 1-based pixel coordinates
    JPEGImages/<id>.jpg
    ImageSets/Main/<split>.txt    image ids, one per line (train, val, trainval, test)
    classes.txt                   own datasets only: one class name per line

Boxes are shifted to 0-based coordinates (``xmin - 1`` ...), as py-faster-rcnn
does. Every annotation is validated on load; see :func:`load_voc`.

XML comes from local files and is parsed with the standard library; documents
that declare a DTD or entities are refused (no entity expansion is needed for
VOC annotations, and it is how XML bombs work).
"""
import math
import os
import re
import xml.etree.ElementTree as ET

import numpy as np

from netdef.errors import DataError

from .records import (VOC_CLASSES, BACKGROUND, DetectionDataset, ImageRecord, Issues,
                      box_problems, empty_images_note, path_problem, read_image_size,
                      unknown_class_reason)
from . import cache as _cache

__all__ = ["load_voc", "read_classes_file", "is_voc_layout", "find_voc_years"]

_YEAR_DIR = re.compile(r"VOC(\d{4})")
_YEAR_SPLIT = re.compile(r"(?:voc_)?(\d{4})[:_](.+)")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")


def is_voc_layout(path):
    """True for a folder with ``Annotations/`` and ``ImageSets/Main/``."""
    return (os.path.isdir(os.path.join(path, "Annotations"))
            and os.path.isdir(os.path.join(path, "ImageSets", "Main")))


def find_voc_years(devkit_root):
    """``{"2007": path, ...}`` for the ``VOC20xx`` folders of a devkit."""
    years = {}
    try:
        names = sorted(os.listdir(devkit_root))
    except OSError:
        return years
    for name in names:
        m = _YEAR_DIR.fullmatch(name)
        folder = os.path.join(devkit_root, name)
        if m and is_voc_layout(folder):
            years[m.group(1)] = folder
    return years


def read_classes_file(path):
    """Class names from a ``classes.txt``: one per line; blank lines and
    lines starting with ``#`` are ignored, a leading ``__background__`` is
    dropped. Duplicates are an error."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the class list: {exc}") from None
    names = [ln.strip() for ln in lines]
    names = [n for n in names if n and not n.startswith("#")]
    if names and names[0] == BACKGROUND:
        names = names[1:]
    if not names:
        raise DataError(f"{path}: the class list is empty (expected one class "
                        "name per line)")
    seen = set()
    for n in names:
        if n in seen:
            raise DataError(f"{path}: class {n!r} is listed more than once")
        if n == BACKGROUND:
            raise DataError(f"{path}: {BACKGROUND!r} may only be the first line")
        seen.add(n)
    return tuple(names)


def load_voc(root, split="trainval", classes=None, on_error="raise",
             keep_empty=False, cache="auto", cache_dir=None, check_images=False):
    """Read one or several VOC splits into a :class:`DetectionDataset`.

    Args:
        root: a ``VOCdevkit`` folder (holding ``VOC2007``, ``VOC2012``...) or a
            single VOC-layout folder.
        split: ``"trainval"``; with a devkit ``"2007:trainval"`` (or
            ``"voc_2007_trainval"``); a union as ``"2007:trainval+2012:trainval"``
            or a list of such strings. A plain split name with a devkit of
            several years is an error (which year?).
        classes: class names (without background); default: ``classes.txt``
            beside ``ImageSets`` if present, else the 20 VOC classes.
            All parts of a union must have the same classes.
        on_error: ``"raise"``: :class:`netdef.errors.DataError` at the first
            problem; ``"skip"``: drop the bad object (or image) with a
            :class:`~detection.datasets.DataWarning`.
        keep_empty: keep images without objects (default: leave them out
            with a warning; training needs boxes).
        cache: ``"auto"`` (cache loads of 1000 images or more), True, False;
            see :mod:`detection.datasets.cache`.
        cache_dir: where cache entries go (default
            :func:`detection.datasets.cache.default_cache_dir`).
        check_images: decode every image completely (slower), so that a
            truncated or corrupt file is found now instead of when
            training first draws it; otherwise only its header is read.

    Checks, each naming the file, the object (index in the XML and class
    name) and the reason: an id of the split file is a relative path
    inside the folder (no ``..`` component, not absolute); the XML parses
    (no DTD/entities); the image exists and Pillow can open it (and decode
    it, with ``check_images``); its size equals ``<size>`` (finite whole
    numbers; a missing or zero ``<size>`` is read from the image); every object has a known class, a
    ``<bndbox>`` with numeric coordinates and, after the 1-based to 0-based
    shift, ``x1 >= 0``, ``y1 >= 0``, ``x2 < width``, ``y2 < height``,
    ``x1 <= x2``, ``y1 <= y2``; ``<difficult>`` is 0 or 1 (missing: 0).
    """
    root = os.path.abspath(os.fspath(root))
    issues = Issues(on_error)
    parts = _resolve_parts(root, split)
    records, names, class_list = [], [], None
    for folder, year, split_name in parts:
        part_classes = _classes_for(folder, classes)
        if class_list is None:
            class_list = part_classes
        elif part_classes != class_list:
            raise DataError(
                f"{folder}: classes {list(part_classes)} differ from "
                f"{list(class_list)} of the other parts of split {split!r}")
        records.extend(_load_part(folder, split_name, class_list, issues, keep_empty,
                                  (cache, cache_dir), check_images))
        names.append(f"voc_{year}_{split_name}" if year
                     else f"{os.path.basename(folder)}_{split_name}")
    records = _unique_ids(records, issues, split)
    if not records:
        raise DataError(f"{root}: split {split!r} has no usable images")
    return DetectionDataset("+".join(names), class_list, records, on_error=on_error)


# ----------------------------------------------------------------------------

def _resolve_parts(root, split):
    """``[(folder, year or None, split name), ...]`` for a split string."""
    if isinstance(split, str):
        wanted = [p.strip() for p in split.split("+")]
    else:
        wanted = [str(p).strip() for p in split]
    if not wanted or not all(wanted):
        raise DataError(f"{root}: empty split name in {split!r}")
    single = is_voc_layout(root)
    years = {} if single else find_voc_years(root)
    if not single and not years:
        raise DataError(f"{root}: not a VOC folder (no Annotations/ and "
                        "ImageSets/Main/) nor a VOCdevkit (no VOC20xx/ inside)")
    root_year = _YEAR_DIR.fullmatch(os.path.basename(root))
    root_year = root_year.group(1) if root_year else None
    parts = []
    for p in wanted:
        m = _YEAR_SPLIT.fullmatch(p)
        year, name = (m.group(1), m.group(2)) if m else (None, p)
        if single:
            if year is not None and year != root_year:
                if os.path.isfile(_split_file(root, p)):
                    year, name = None, p      # an own split that looks dated
                else:
                    raise DataError(
                        f"{root}: split {p!r} names year {year}, but this "
                        f"folder is {'VOC' + root_year if root_year else 'not a VOC20xx folder'}")
            parts.append((root, root_year, name))
            continue
        if year is None:
            if len(years) != 1:
                raise DataError(
                    f"{root}: devkit holds {', '.join('VOC' + y for y in years)}; "
                    f"name the year in the split, e.g. "
                    f"'{next(iter(years))}:{name}' or "
                    f"'{'+'.join(y + ':' + name for y in years)}'")
            year = next(iter(years))
        if year not in years:
            raise DataError(f"{root}: split {p!r} needs VOC{year}/, found "
                            f"{', '.join('VOC' + y for y in years)}")
        parts.append((years[year], year, name))
    return parts


def _split_file(folder, name):
    return os.path.join(folder, "ImageSets", "Main", f"{name}.txt")


def _classes_for(folder, classes):
    if classes is not None:
        classes = tuple(classes)
        if classes and classes[0] == BACKGROUND:
            classes = classes[1:]
        if not classes or len(set(classes)) != len(classes):
            raise DataError(f"classes must be distinct names, got {list(classes)}")
        return classes
    path = os.path.join(folder, "classes.txt")
    if os.path.isfile(path):
        return read_classes_file(path)
    return VOC_CLASSES


def _read_ids(split_file):
    try:
        with open(split_file, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        main = os.path.dirname(split_file)
        have = sorted(n[:-4] for n in os.listdir(main)
                      if n.endswith(".txt") and "_" not in n)
        raise DataError(f"{split_file}: split file not found (splits here: "
                        f"{', '.join(have) or 'none'})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{split_file}: cannot read the split file: {exc}") from None
    # Main/<split>.txt holds one id per line; class files add a column.
    return [ln.split()[0] for ln in lines if ln.strip()]


def _confined_ids(split_file, ids, issues):
    """The ids that are relative paths inside the folder; the others
    reported (read before any file is opened: ``../../etc/passwd``)."""
    kept = []
    for image_id in ids:
        reason = path_problem(image_id)
        if reason:
            issues.image(f"{split_file}: image id {image_id!r} {reason}")
            continue
        kept.append(image_id)
    return kept


def _load_part(folder, split_name, classes, issues, keep_empty, caching, check_images):
    cache, cache_dir = caching
    split_file = _split_file(folder, split_name)
    ids = _confined_ids(split_file, _read_ids(split_file), issues)
    ann_dir = os.path.join(folder, "Annotations")
    xml_paths = [os.path.join(ann_dir, f"{i}.xml") for i in ids]
    xml_bytes = {}
    entry = None
    if _cache.use_cache(cache, len(ids) >= _cache.AUTO_MIN_IMAGES):
        fp = _cache.Fingerprint("voc")
        options = {"folder": folder, "split": split_name, "classes": list(classes),
                   "on_error": issues.on_error, "keep_empty": bool(keep_empty)}
        if check_images:    # only when set, so the keys of earlier entries stay valid
            options["check_images"] = True
        fp.add("options", options)
        fp.add_file(split_file)
        for p in xml_paths:
            data = fp.add_file(p)
            if data is not None:
                xml_bytes[p] = data
        fp.add_tree_stats(os.path.join(folder, "JPEGImages"))
        entry = _cache.entry_path(cache_dir, "voc", fp.hexdigest())
        hit = _cache.load(entry)
        if hit is not None:
            records, messages = hit
            for m in messages:
                issues.warn(m)
            return records
    first = len(issues.messages)
    label_of = {name: i + 1 for i, name in enumerate(classes)}
    records, seen, empty = [], set(), []
    for image_id, xml_path in zip(ids, xml_paths):
        if image_id in seen:
            issues.image(f"{split_file}: image id {image_id!r} is listed more "
                         "than once")
            continue
        seen.add(image_id)
        rec = _parse_annotation(folder, image_id, xml_path, xml_bytes.get(xml_path),
                                (split_file, classes, label_of, check_images), issues)
        if rec is None:
            continue
        if rec.num_objects == 0 and not keep_empty:
            empty.append(image_id)
            continue
        records.append(rec)
    if empty:
        issues.note(empty_images_note(split_file, empty))
    if entry is not None:
        _cache.save(entry, records, issues.messages[first:])
    return records


def _parse_annotation(folder, image_id, xml_path, data, context, issues):
    """One image's record, or None when the image is skipped. ``context``:
    ``(split file, class names, label of each name, check_images)``."""
    split_file, classes, label_of, check_images = context
    if data is None:
        try:
            with open(xml_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            issues.image(f"{xml_path}: annotation file not found (image id "
                         f"{image_id!r} is listed in {split_file})")
            return None
        except OSError as exc:
            issues.image(f"{xml_path}: cannot read the annotation: {exc}")
            return None
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        issues.image(f"{xml_path}: XML parse error: DTD and entity "
                     "declarations are not accepted in annotations")
        return None
    try:
        tree = ET.fromstring(data)
    except ET.ParseError as exc:
        issues.image(f"{xml_path}: XML parse error: {exc}")
        return None

    image_path = _image_path(folder, image_id, tree.findtext("filename"))
    xml_size, reason = _xml_size(tree)
    if reason:
        issues.image(f"{xml_path}: {reason}")
        return None
    try:
        width, height = read_image_size(image_path, decode=check_images)
    except FileNotFoundError:
        issues.image(f"{xml_path}: image file {image_path} not found")
        return None
    except OSError as exc:
        issues.image(f"{xml_path}: image {image_path} cannot be read: {exc}")
        return None
    if xml_size is not None and xml_size != (width, height):
        issues.image(
            f"{xml_path}: <size> says {xml_size[0]}x{xml_size[1]} (width x "
            f"height) but image {image_path} is {width}x{height}")
        return None

    # Per object: structure first, then the box rules on all boxes at once.
    objects = tree.findall("object")
    problems = {}
    found = []          # (index, name, label, difficult, box)
    for index, obj in enumerate(objects):
        name = (obj.findtext("name") or "").strip()
        if not name:
            problems[index] = ("?", "has no <name>")
            continue
        if name not in label_of:
            problems[index] = (name, unknown_class_reason(name, classes))
            continue
        diff_text = (obj.findtext("difficult") or "0").strip()
        if diff_text not in ("0", "1"):
            problems[index] = (name, f"<difficult> must be 0 or 1, found {diff_text!r}")
            continue
        box, reason = _xml_box(obj)
        if reason:
            problems[index] = (name, reason)
            continue
        found.append((index, name, label_of[name], diff_text == "1", box))
    boxes = np.array([f[4] for f in found], dtype=np.float64).reshape(-1, 4)
    for (index, name, *_), reason in zip(found, box_problems(boxes, width, height)):
        if reason:
            problems[index] = (name, reason)
    for index in sorted(problems):
        name, reason = problems[index]
        issues.object(f"{xml_path}: object index {index} ({name!r}): {reason}")
    good = [f for f in found if f[0] not in problems]
    return ImageRecord(
        image_id=image_id, path=image_path, width=width, height=height,
        boxes=np.array([f[4] for f in good], dtype=np.float32).reshape(-1, 4),
        labels=np.array([f[2] for f in good], dtype=np.int32),
        difficult=np.array([f[3] for f in good], dtype=bool))


def _image_path(folder, image_id, filename):
    """``JPEGImages/<id>.jpg``, else the XML's ``<filename>``, else another
    image extension; the ``.jpg`` path when none exists (reported missing)."""
    image_dir = os.path.join(folder, "JPEGImages")
    default = os.path.join(image_dir, image_id + ".jpg")
    if os.path.isfile(default):
        return default
    candidates = []
    if filename and filename.strip():
        # Only a name inside JPEGImages: <filename> is not a path.
        candidates.append(os.path.join(image_dir, os.path.basename(filename.strip())))
    candidates += [os.path.join(image_dir, image_id + ext) for ext in _IMAGE_EXTENSIONS[1:]]
    for path in candidates:
        if os.path.isfile(path):
            return path
    return default


def _xml_size(tree):
    """``((width, height) or None, reason or None)``; a missing ``<size>`` or
    a zero width/height means "read it from the image"."""
    size = tree.find("size")
    if size is None:
        return None, None
    values = []
    for tag in ("width", "height"):
        text = (size.findtext(tag) or "").strip()
        if not text:
            return None, None
        try:
            v = float(text)
        except ValueError:
            return None, f"<size><{tag}> is not a number: {text!r}"
        # nan and inf first: int() of them raises.
        if not math.isfinite(v) or v != int(v) or v < 0:
            return None, f"<size><{tag}> must be a finite whole number >= 0, found {text!r}"
        values.append(int(v))
    if 0 in values:
        return None, None
    return tuple(values), None


def _xml_box(obj):
    """``([x1, y1, x2, y2] 0-based, None)`` or ``(None, reason)``."""
    bndbox = obj.find("bndbox")
    if bndbox is None:
        return None, "has no <bndbox>"
    box = []
    for tag in ("xmin", "ymin", "xmax", "ymax"):
        text = (bndbox.findtext(tag) or "").strip()
        if not text:
            return None, f"<bndbox> has no <{tag}>"
        try:
            box.append(float(text) - 1.0)      # VOC is 1-based
        except ValueError:
            return None, f"<bndbox><{tag}> is not a number: {text!r}"
    return box, None


def _unique_ids(records, issues, split):
    seen, out = set(), []
    for r in records:
        if r.image_id in seen:
            issues.image(f"image id {r.image_id!r} ({r.path}) appears in more "
                         f"than one part of split {split!r}")
            continue
        seen.add(r.image_id)
        out.append(r)
    return out
