"""COCO instances reader: category mapping, box conversion, crowd flags,
image-root discovery, every validation rule in both error modes, the cache."""
import copy
import json
import os

import numpy as np
import pytest
from PIL import Image

from netdef.errors import DataError
from detection.datasets import load_dataset
from detection.datasets import coco as coco_module
from detection.datasets.coco import default_image_root, load_coco
from tests.detection.dataset_checks import quiet


def write_image(path, width, height):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (width, height), (100, 110, 120)).save(path)


BASE = {
    "images": [
        {"id": 10, "file_name": "a.jpg", "width": 64, "height": 48},
        {"id": 11, "file_name": "sub/b.jpg", "width": 50, "height": 40},
        {"id": 12, "file_name": "c.jpg"},                 # size from the image
    ],
    "annotations": [
        {"id": 1, "image_id": 10, "category_id": 18, "bbox": [0, 0, 64, 48], "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 1, "bbox": [5.5, 6, 10, 20], "iscrowd": 1},
        {"id": 3, "image_id": 11, "category_id": 3, "bbox": [10, 10, 0.5, 30]},
        {"id": 4, "image_id": 12, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 0},
    ],
    # Out of order on purpose: labels follow the ids 1, 3, 18.
    "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"},
                   {"id": 3, "name": "car"}],
}


def make_coco(root, doc=None, json_name="instances_val.json", image_dir="val"):
    """COCO layout: root/annotations/<json_name> and root/<image_dir>/..."""
    doc = copy.deepcopy(BASE if doc is None else doc)
    write_image(os.path.join(root, image_dir, "a.jpg"), 64, 48)
    write_image(os.path.join(root, image_dir, "sub", "b.jpg"), 50, 40)
    write_image(os.path.join(root, image_dir, "c.jpg"), 30, 20)
    path = os.path.join(root, "annotations", json_name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


def test_reads_categories_boxes_crowd(tmp_path):
    path = make_coco(str(tmp_path))
    ds = load_coco(path, cache=False)
    assert ds.name == "instances_val"
    assert ds.classes == ("__background__", "person", "car", "dog")
    assert [r.image_id for r in ds] == ["10", "11", "12"]
    a, b, c = ds.records
    assert a.path == os.path.join(str(tmp_path), "val", "a.jpg")
    assert b.path == os.path.join(str(tmp_path), "val", "sub", "b.jpg")
    assert (c.width, c.height) == (30, 20)
    np.testing.assert_array_equal(a.boxes, [[0, 0, 63, 47], [5.5, 6, 14.5, 25]])
    np.testing.assert_array_equal(a.labels, [3, 1])
    np.testing.assert_array_equal(a.difficult, [False, True])
    # A box narrower than a pixel gets x2 = x1 (py-faster-rcnn's max(0, w - 1)).
    np.testing.assert_array_equal(b.boxes, [[10, 10, 10, 39]])
    np.testing.assert_array_equal(c.boxes, [[1, 2, 3, 5]])
    assert a.boxes.dtype == np.float32 and a.labels.dtype == np.int32
    # Crowd objects are dropped for training like VOC's difficult ones.
    assert ds.without_difficult()[0].num_objects == 1


def test_load_dataset_finds_json_and_images(tmp_path):
    path = make_coco(str(tmp_path))
    assert len(load_dataset(path, cache=False)) == 3               # the JSON itself
    assert load_dataset(tmp_path, "val", cache=False).name == "instances_val"
    with pytest.raises(DataError, match=r"annotations/instances_train.json"):
        load_dataset(tmp_path, "train")


def test_default_image_root(tmp_path):
    path = make_coco(str(tmp_path))
    assert default_image_root(path) == os.path.join(str(tmp_path), "val")
    other = tmp_path / "x" / "labels.json"
    other.parent.mkdir()
    other.write_text("{}")
    assert default_image_root(str(other)) == str(other.parent)
    (other.parent / "images").mkdir()
    assert default_image_root(str(other)) == str(other.parent / "images")
    # An explicit image_root wins.
    moved = tmp_path / "elsewhere"
    os.rename(tmp_path / "val", moved)
    with pytest.raises(DataError, match="not found"):
        load_coco(path, cache=False)
    assert len(load_coco(path, image_root=str(moved), cache=False)) == 3


def _edit(doc, section, index, **changes):
    for k, v in changes.items():
        if v is None:
            doc[section][index].pop(k, None)
        else:
            doc[section][index][k] = v


# (id, edit of the annotation with id 4 on image 12 'c.jpg' (30x20), reason)
ANNOTATION_CASES = [
    ("unknown_category", {"category_id": 99}, "unknown category_id 99 (categories: 1, 3, 18)"),
    ("unknown_image", {"image_id": 77}, "refers to image id 77, which is not in 'images'"),
    ("bbox_not_list", {"bbox": "1 2 3 4"}, "bbox must be [x, y, w, h] numbers, found '1 2 3 4'"),
    ("bbox_three", {"bbox": [1, 2, 3]}, "bbox must be [x, y, w, h] numbers"),
    ("bbox_missing", {"bbox": None}, "bbox must be [x, y, w, h] numbers, found None"),
    ("zero_width", {"bbox": [1, 2, 0, 4]}, "bbox [x, y, w, h] = [1, 2, 0, 4] has a width or height <= 0"),
    ("negative_height", {"bbox": [1, 2, 3, -4]}, "has a width or height <= 0"),
    ("x_outside", {"bbox": [-1.5, 2, 3, 4]}, "x1 < 0"),
    ("right_outside", {"bbox": [20, 2, 11, 4]}, "x2 >= image width"),
    ("bottom_outside", {"bbox": [1, 10, 3, 11]}, "y2 >= image height"),
    ("bad_crowd", {"iscrowd": 2}, "iscrowd must be 0 or 1, found 2"),
]


@pytest.mark.parametrize("case,change,reason", ANNOTATION_CASES,
                         ids=[c[0] for c in ANNOTATION_CASES])
def test_bad_annotation_raise_and_skip(tmp_path, case, change, reason):
    doc = copy.deepcopy(BASE)
    doc["annotations"].append({"id": 5, "image_id": 12, "category_id": 3, "bbox": [2, 2, 5, 5]})
    _edit(doc, "annotations", 3, **change)
    path = make_coco(str(tmp_path), doc)
    if case == "unknown_image":
        where = f"{path}: annotation index 3 (id 4): "
    elif case == "unknown_category":
        where = f"{path}: annotation index 3 (id 4, image id 12 'c.jpg'): "
    else:
        where = f"{path}: annotation index 3 (id 4, image id 12 'c.jpg', category 'person'): "
    with pytest.raises(DataError) as err:
        load_coco(path, cache=False)
    assert str(err.value) == where + reason or (
        str(err.value).startswith(where) and reason in str(err.value))
    ds, messages = quiet(load_coco, path, on_error="skip", cache=False)
    assert len(messages) == 1
    assert messages[0].startswith("skipped object: " + where) and reason in messages[0]
    c = ds.records[2]
    np.testing.assert_array_equal(c.boxes, [[2, 2, 6, 6]])       # the good one stays
    np.testing.assert_array_equal(c.labels, [2])


def test_round_off_outside_the_image_is_clipped(tmp_path):
    doc = copy.deepcopy(BASE)
    doc["annotations"][3]["bbox"] = [-0.4, 0.2, 30.6, 19.9]       # c.jpg is 30x20
    path = make_coco(str(tmp_path), doc)
    np.testing.assert_allclose(load_coco(path, cache=False)[2].boxes,
                               [[0, 0.2, 29, 19]], rtol=0, atol=1e-6)


def _missing_file(root, doc):
    os.remove(os.path.join(root, "val", "c.jpg"))


def _unreadable(root, doc):
    with open(os.path.join(root, "val", "c.jpg"), "wb") as f:
        f.write(b"garbage")


def _size_mismatch(root, doc):
    doc["images"][2].update(width=31, height=20)


def _no_file_name(root, doc):
    doc["images"][2].pop("file_name")


def _duplicate_id(root, doc):
    doc["images"].append({"id": 12, "file_name": "a.jpg"})


IMAGE_CASES = [
    ("missing_file", _missing_file, "image index 2 (id 12, 'c.jpg'): image file",
     "c.jpg not found"),
    ("unreadable", _unreadable, "image index 2 (id 12, 'c.jpg'): image", "cannot be read"),
    ("size_mismatch", _size_mismatch, "image index 2 (id 12, 'c.jpg'): JSON says 31x20 "
     "(width x height) but image", "is 30x20"),
    ("no_file_name", _no_file_name, "image index 2 (id 12): needs a 'file_name'", ""),
    ("duplicate_id", _duplicate_id, "image index 3 (id 12, 'a.jpg'): image id is used twice", ""),
]


@pytest.mark.parametrize("case,damage,where,reason", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_bad_image_raise_and_skip(tmp_path, case, damage, where, reason):
    root = str(tmp_path)
    doc = copy.deepcopy(BASE)
    make_coco(root, doc)
    damage(root, doc)
    path = os.path.join(root, "annotations", "instances_val.json")
    with open(path, "w") as f:
        json.dump(doc, f)
    with pytest.raises(DataError) as err:
        load_coco(path, cache=False)
    assert str(err.value).startswith(f"{path}: {where}") and reason in str(err.value)
    ds, messages = quiet(load_coco, path, on_error="skip", cache=False)
    assert messages[0].startswith(f"skipped image: {path}: {where}")
    if case == "duplicate_id":
        assert [r.image_id for r in ds] == ["10", "11", "12"]
    else:
        # The image goes, and its annotations quietly with it.
        assert [r.image_id for r in ds] == ["10", "11"]
        assert len(messages) == 1


STRUCTURE_CASES = [
    ("not_json", "{\"images\": [}", r"JSON parse error at line 1 column 13"),
    ("not_object", "[1, 2]", r"expected a JSON object .* found list"),
    ("no_images", json.dumps({"categories": []}), r"expected a list under 'images', found nothing"),
    ("bad_annotations", json.dumps({"images": [], "categories": [], "annotations": {}}),
     r"expected a list under 'annotations', found dict"),
    ("no_categories", json.dumps({"images": [], "categories": []}), r"'categories' is empty"),
    ("bad_category", json.dumps({"images": [], "categories": [{"id": "1", "name": "a"}]}),
     r"category index 0: needs an integer 'id' and a non-empty 'name'"),
    ("duplicate_category_id", json.dumps({"images": [], "categories": [
        {"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}), r"category id 1 is defined twice"),
    ("duplicate_category_name", json.dumps({"images": [], "categories": [
        {"id": 1, "name": "a"}, {"id": 2, "name": "a"}]}), r"category names must be distinct; repeated: a"),
]


@pytest.mark.parametrize("case,text,pattern", STRUCTURE_CASES, ids=[c[0] for c in STRUCTURE_CASES])
def test_structural_errors_raise_in_both_modes(tmp_path, case, text, pattern):
    path = tmp_path / "instances_x.json"
    path.write_text(text)
    for mode in ("raise", "skip"):
        with pytest.raises(DataError, match=pattern) as err:
            load_coco(str(path), on_error=mode, cache=False)
        assert str(err.value).startswith(str(path))


def test_images_without_annotations(tmp_path):
    doc = copy.deepcopy(BASE)
    doc["annotations"] = doc["annotations"][:2]
    path = make_coco(str(tmp_path), doc)
    ds, messages = quiet(load_coco, path, cache=False)
    assert [r.image_id for r in ds] == ["10"]
    assert messages == [f"{path}: 2 image(s) without objects left out "
                        "(keep_empty=True keeps them): '11', '12'"]
    ds, messages = quiet(load_coco, path, keep_empty=True, cache=False)
    assert [r.num_objects for r in ds] == [2, 0, 0] and messages == []
    doc["annotations"] = []
    path = make_coco(str(tmp_path), doc)
    with pytest.raises(DataError, match="no usable images"):
        quiet(load_coco, path, cache=False)


def test_cache_follows_content(tmp_path, monkeypatch):
    path = make_coco(str(tmp_path))
    cache_dir = str(tmp_path / "cache")
    first = load_coco(path, cache=True, cache_dir=cache_dir)
    parses = []
    real = coco_module._parse
    monkeypatch.setattr(coco_module, "_parse", lambda *a: parses.append(1) or real(*a))
    second = load_coco(path, cache=True, cache_dir=cache_dir)
    assert parses == []
    assert second.classes == first.classes
    for r1, r2 in zip(first, second):
        assert (r1.image_id, r1.path, r1.width, r1.height) == (r2.image_id, r2.path, r2.width, r2.height)
        np.testing.assert_array_equal(r1.boxes, r2.boxes)
        np.testing.assert_array_equal(r1.labels, r2.labels)
        np.testing.assert_array_equal(r1.difficult, r2.difficult)
    # Same size and mtime, other content.
    text = open(path).read()
    stat = os.stat(path)
    with open(path, "w") as f:
        f.write(text.replace('"bbox": [1, 2, 3, 4]', '"bbox": [2, 2, 3, 4]'))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    third = load_coco(path, cache=True, cache_dir=cache_dir)
    assert parses == [1]
    np.testing.assert_array_equal(third[2].boxes, [[2, 2, 4, 5]])
