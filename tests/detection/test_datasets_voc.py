"""PASCAL VOC reader: layout, splits and unions, classes, every validation
rule in both error modes, and the annotation cache."""
import os

import numpy as np
import pytest
from PIL import Image

from netdef.errors import DataError
from detection.datasets import VOC_CLASSES, DetectionDataset, ImageRecord, load_dataset
from detection.datasets import voc as voc_module
from detection.datasets.voc import load_voc, read_classes_file
from tests.detection.dataset_checks import quiet


# ----------------------------------------------------------------------------
# Hand-made VOC folders

def write_image(path, width, height, colour=(90, 120, 150)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (width, height), colour).save(path)


def voc_xml(filename, size, objects):
    """objects: list of dicts with name, box (1-based xmin, ymin, xmax, ymax),
    optional difficult; a key set to None is left out of the XML."""
    out = ["<annotation>", f"<filename>{filename}</filename>"]
    if size is not None:
        out.append(f"<size><width>{size[0]}</width><height>{size[1]}</height>"
                   "<depth>3</depth></size>")
    for obj in objects:
        out.append("<object>")
        if obj.get("name") is not None:
            out.append(f"<name>{obj['name']}</name>")
        if obj.get("difficult") is not None:
            out.append(f"<difficult>{obj['difficult']}</difficult>")
        if obj.get("box") is not None:
            tags = ("xmin", "ymin", "xmax", "ymax")
            out.append("<bndbox>" + "".join(
                f"<{t}>{v}</{t}>" for t, v in zip(tags, obj["box"])) + "</bndbox>")
        out.append("</object>")
    out.append("</annotation>")
    return "\n".join(out)


def make_voc(folder, images, splits, classes=None):
    """images: {id: (width, height, objects)}; splits: {name: [ids]}."""
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for image_id, (w, h, objects) in images.items():
        write_image(os.path.join(folder, "JPEGImages", f"{image_id}.jpg"), w, h)
        with open(os.path.join(folder, "Annotations", f"{image_id}.xml"), "w") as f:
            f.write(voc_xml(f"{image_id}.jpg", (w, h), objects))
    for name, ids in splits.items():
        with open(os.path.join(folder, "ImageSets", "Main", f"{name}.txt"), "w") as f:
            f.write("".join(i + "\n" for i in ids))
    if classes is not None:
        with open(os.path.join(folder, "classes.txt"), "w") as f:
            f.write("".join(c + "\n" for c in classes))
    return str(folder)


def obj(name, box, difficult=0):
    return {"name": name, "box": box, "difficult": difficult}


def two_images(folder):
    images = {
        "000001": (64, 48, [obj("dog", (1, 1, 64, 48)),
                            obj("person", (10, 5, 30, 40), difficult=1)]),
        "000002": (50, 40, [obj("cat", (5, 6, 25, 26))]),
    }
    return make_voc(folder, images, {"trainval": ["000001", "000002"],
                                     "test": ["000002"]})


def xml_path(folder, image_id):
    return os.path.join(folder, "Annotations", f"{image_id}.xml")


def rewrite_xml(folder, image_id, text):
    with open(xml_path(folder, image_id), "w") as f:
        f.write(text)


# ----------------------------------------------------------------------------
# Reading

def test_reads_boxes_0_based_labels_difficult(tmp_path):
    folder = two_images(tmp_path / "VOC2007")
    ds = load_voc(folder, "trainval", cache=False)
    assert isinstance(ds, DetectionDataset)
    assert ds.name == "voc_2007_trainval"
    assert ds.classes == ("__background__",) + VOC_CLASSES
    assert ds.num_classes == 21 and len(ds) == 2
    r = ds[0]
    assert isinstance(r, ImageRecord)
    assert r.image_id == "000001"
    assert r.path == os.path.join(folder, "JPEGImages", "000001.jpg")
    assert os.path.isabs(r.path)
    assert (r.width, r.height) == (64, 48)
    assert r.boxes.dtype == np.float32 and r.labels.dtype == np.int32
    assert r.difficult.dtype == bool
    np.testing.assert_array_equal(r.boxes, [[0, 0, 63, 47], [9, 4, 29, 39]])
    np.testing.assert_array_equal(r.labels, [VOC_CLASSES.index("dog") + 1,
                                             VOC_CLASSES.index("person") + 1])
    np.testing.assert_array_equal(r.difficult, [False, True])
    assert load_voc(folder, "test", cache=False)[0].image_id == "000002"


def test_without_difficult_drops_objects_and_emptied_images(tmp_path):
    images = {"a": (40, 40, [obj("dog", (1, 1, 20, 20)), obj("cat", (2, 2, 9, 9), 1)]),
              "b": (40, 40, [obj("cat", (2, 2, 9, 9), 1)])}
    folder = make_voc(tmp_path / "VOC2007", images, {"trainval": ["a", "b"]})
    ds = load_voc(folder, cache=False)
    assert [r.num_objects for r in ds] == [2, 1]       # evaluation keeps them
    train = ds.without_difficult()
    assert [r.image_id for r in train] == ["a"]
    np.testing.assert_array_equal(train[0].labels, [VOC_CLASSES.index("dog") + 1])
    assert not train[0].difficult.any()
    kept = ds.without_difficult(keep_empty=True)
    assert [r.num_objects for r in kept] == [1, 0]
    assert ds.num_objects() == 3      # the original is untouched


def test_union_of_2007_and_2012(tmp_path):
    devkit = tmp_path / "VOCdevkit"
    make_voc(devkit / "VOC2007", {"000005": (30, 30, [obj("car", (1, 1, 10, 10))])},
             {"trainval": ["000005"], "test": ["000005"]})
    make_voc(devkit / "VOC2012", {"2008_000001": (40, 30, [obj("bus", (2, 2, 20, 20))]),
                                  "2008_000002": (40, 30, [obj("cow", (3, 3, 9, 9))])},
             {"trainval": ["2008_000001", "2008_000002"]})
    for split in (["2007:trainval", "2012:trainval"], "2007:trainval+2012:trainval",
                  "voc_2007_trainval+voc_2012_trainval"):
        ds = load_voc(devkit, split, cache=False)
        assert [r.image_id for r in ds] == ["000005", "2008_000001", "2008_000002"]
        assert ds.name == "voc_2007_trainval+voc_2012_trainval"
        assert ds[1].path.endswith(os.path.join("VOC2012", "JPEGImages", "2008_000001.jpg"))
    assert len(load_dataset(devkit, "2012:trainval", cache=False)) == 2
    with pytest.raises(DataError, match=r"name the year in the split.*'2007:test'"):
        load_voc(devkit, "test")
    with pytest.raises(DataError, match=r"needs VOC2010/.*found VOC2007, VOC2012"):
        load_voc(devkit, "2010:trainval")
    with pytest.raises(DataError, match=r"appears in more than one part"):
        load_voc(devkit, "2007:trainval+2007:test", cache=False)
    with pytest.raises(DataError, match=r"split file not found.*splits here: test, trainval"):
        load_voc(devkit, "2007:val")


def test_single_year_devkit_and_year_checks(tmp_path):
    devkit = tmp_path / "VOCdevkit"
    folder = two_images(devkit / "VOC2007")
    assert len(load_voc(devkit, "trainval", cache=False)) == 2
    assert len(load_voc(folder, "2007:trainval", cache=False)) == 2
    with pytest.raises(DataError, match=r"names year 2012, but this folder is VOC2007"):
        load_voc(folder, "2012:trainval")


def test_own_dataset_with_classes_txt(tmp_path):
    images = {"img1": (60, 50, [obj("widget", (1, 1, 30, 30)), obj("gadget", (5, 5, 50, 40))]),
              "img2": (60, 50, [obj("gadget", (2, 3, 4, 5))])}
    folder = make_voc(tmp_path / "mine", images, {"train": ["img1", "img2"]},
                      classes=["# my classes", "gadget", "", "widget"])
    ds = load_dataset(folder, "train", cache=False)
    assert ds.classes == ("__background__", "gadget", "widget")
    assert ds.name == "mine_train"
    np.testing.assert_array_equal(ds[0].labels, [2, 1])
    # An explicit class list wins over classes.txt.
    ds2 = load_voc(folder, "train", classes=["widget", "gadget"], cache=False)
    np.testing.assert_array_equal(ds2[0].labels, [1, 2])
    # An unknown class: raise names file, object and reason (with a hint).
    rewrite_xml(folder, "img2", voc_xml("img2.jpg", (60, 50), [obj("gadgett", (2, 3, 4, 5))]))
    with pytest.raises(DataError) as err:
        load_dataset(folder, "train", cache=False)
    msg = str(err.value)
    assert xml_path(folder, "img2") in msg and "object index 0 ('gadgett')" in msg
    assert "unknown class 'gadgett'" in msg and "did you mean 'gadget'" in msg


def test_classes_txt_errors(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("__background__\na\nb\n")
    assert read_classes_file(str(path)) == ("a", "b")
    path.write_text("a\nb\na\n")
    with pytest.raises(DataError, match=r"classes.txt: class 'a' is listed more than once"):
        read_classes_file(str(path))
    path.write_text("\n# nothing\n")
    with pytest.raises(DataError, match=r"class list is empty"):
        read_classes_file(str(path))


# ----------------------------------------------------------------------------
# Validation: every rule, raise and skip

GOOD = obj("dog", (2, 2, 20, 20))

# (id, bad object, expected fragments of the reason)
OBJECT_CASES = [
    ("x1_negative", obj("cat", (0, 5, 10, 10)), ["x1 < 0", "[-1, 4, 9, 9]"]),
    ("y1_negative", obj("cat", (5, 0, 10, 10)), ["y1 < 0"]),
    ("x2_outside", obj("cat", (5, 5, 41, 10)), ["x2 >= image width", "40x30 (width x height)"]),
    ("y2_outside", obj("cat", (5, 5, 10, 31)), ["y2 >= image height"]),
    ("x_reversed", obj("cat", (20, 5, 10, 10)), ["x1 > x2 (empty box)"]),
    ("y_reversed", obj("cat", (5, 20, 10, 10)), ["y1 > y2 (empty box)"]),
    ("not_number", obj("cat", (5, "abc", 10, 10)), ["<bndbox><ymin> is not a number: 'abc'"]),
    ("no_coordinate", obj("cat", (5, "", 10, 10)), ["<bndbox> has no <ymin>"]),
    ("no_bndbox", {"name": "cat"}, ["has no <bndbox>"]),
    ("no_name", {"box": (5, 5, 10, 10)}, ["has no <name>"]),
    ("unknown_class", obj("kitten", (5, 5, 10, 10)), ["unknown class 'kitten'"]),
    ("bad_difficult", obj("cat", (5, 5, 10, 10), difficult="2"),
     ["<difficult> must be 0 or 1, found '2'"]),
]


@pytest.mark.parametrize("case,bad,reasons", OBJECT_CASES, ids=[c[0] for c in OBJECT_CASES])
def test_bad_object_raise_and_skip(tmp_path, case, bad, reasons):
    folder = make_voc(tmp_path / "VOC2007", {"im": (40, 30, [GOOD, bad])},
                      {"trainval": ["im"]})
    name = bad.get("name") or "?"
    where = f"{xml_path(folder, 'im')}: object index 1 ('{name}')"
    with pytest.raises(DataError) as err:
        load_voc(folder, on_error="raise", cache=False)
    assert where in str(err.value)
    for r in reasons:
        assert r in str(err.value)
    ds, messages = quiet(load_voc, folder, on_error="skip", cache=False)
    assert len(ds) == 1 and ds[0].num_objects == 1       # the good one stays
    np.testing.assert_array_equal(ds[0].boxes, [[1, 1, 19, 19]])
    assert len(messages) == 1
    assert messages[0].startswith("skipped object: " + where)
    for r in reasons:
        assert r in messages[0]


def _xml_parse_error(folder):
    rewrite_xml(folder, "bad", "<annotation><object></annotation>")


def _dtd(folder):
    rewrite_xml(folder, "bad", '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e "dog">]>'
                "<annotation><object><name>&e;</name></object></annotation>")


def _missing_image(folder):
    os.remove(os.path.join(folder, "JPEGImages", "bad.jpg"))


def _unreadable_image(folder):
    with open(os.path.join(folder, "JPEGImages", "bad.jpg"), "wb") as f:
        f.write(b"this is not a jpeg")


def _size_mismatch(folder):
    write_image(os.path.join(folder, "JPEGImages", "bad.jpg"), 33, 30)


def _missing_annotation(folder):
    os.remove(xml_path(folder, "bad"))


def _bad_size_text(folder):
    rewrite_xml(folder, "bad", voc_xml("bad.jpg", ("wide", 30), [GOOD]))


IMAGE_CASES = [
    ("xml_parse_error", _xml_parse_error, ["XML parse error: mismatched tag"]),
    ("dtd_refused", _dtd, ["DTD and entity declarations are not accepted"]),
    ("missing_image", _missing_image, ["image file", "bad.jpg not found"]),
    ("unreadable_image", _unreadable_image, ["bad.jpg cannot be read", "UnidentifiedImageError"]),
    ("size_mismatch", _size_mismatch, ["<size> says 40x30 (width x height) but image",
                                       "is 33x30"]),
    ("missing_annotation", _missing_annotation, ["annotation file not found",
                                                 "image id 'bad' is listed in"]),
    ("bad_size_text", _bad_size_text, ["<size><width> is not a number: 'wide'"]),
]


@pytest.mark.parametrize("case,damage,reasons", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_bad_image_raise_and_skip(tmp_path, case, damage, reasons):
    folder = make_voc(tmp_path / "VOC2007", {"good": (40, 30, [GOOD]),
                                             "bad": (40, 30, [GOOD])},
                      {"trainval": ["good", "bad"]})
    damage(folder)
    with pytest.raises(DataError) as err:
        load_voc(folder, on_error="raise", cache=False)
    assert str(err.value).startswith(xml_path(folder, "bad") + ": ")
    for r in reasons:
        assert r in str(err.value)
    ds, messages = quiet(load_voc, folder, on_error="skip", cache=False)
    assert [r.image_id for r in ds] == ["good"]
    assert len(messages) == 1
    assert messages[0].startswith(f"skipped image: {xml_path(folder, 'bad')}: ")
    for r in reasons:
        assert r in messages[0]


def test_on_error_must_be_known(tmp_path):
    folder = two_images(tmp_path / "VOC2007")
    with pytest.raises(ValueError, match="on_error must be one of"):
        load_voc(folder, on_error="ignore")


def test_size_missing_or_zero_is_read_from_image(tmp_path):
    folder = make_voc(tmp_path / "VOC2007", {"a": (40, 30, [GOOD]), "b": (40, 30, [GOOD])},
                      {"trainval": ["a", "b"]})
    rewrite_xml(folder, "a", voc_xml("a.jpg", None, [GOOD]))
    rewrite_xml(folder, "b", voc_xml("b.jpg", (0, 0), [GOOD]))
    ds = load_voc(folder, cache=False)
    assert [(r.width, r.height) for r in ds] == [(40, 30), (40, 30)]
    # ... and the box rules use the image's size.
    rewrite_xml(folder, "a", voc_xml("a.jpg", None, [obj("dog", (1, 1, 41, 10))]))
    with pytest.raises(DataError, match=r"a\.xml: object index 0 \('dog'\).*x2 >= image width"):
        load_voc(folder, cache=False)


def test_images_without_objects(tmp_path):
    folder = make_voc(tmp_path / "VOC2007", {"a": (40, 30, [GOOD]), "empty": (40, 30, []),
                                             "allbad": (40, 30, [obj("cat", (0, 1, 5, 5))])},
                      {"trainval": ["a", "empty", "allbad"]})
    split_file = os.path.join(folder, "ImageSets", "Main", "trainval.txt")
    # Raise mode raises for the bad object first.
    with pytest.raises(DataError, match=r"allbad\.xml: object index 0"):
        load_voc(folder, cache=False)
    ds, messages = quiet(load_voc, folder, on_error="skip", cache=False)
    assert [r.image_id for r in ds] == ["a"]
    assert messages[0].startswith("skipped object: ")
    assert messages[1] == (f"{split_file}: 2 image(s) without objects left out "
                           "(keep_empty=True keeps them): 'empty', 'allbad'")
    ds, _ = quiet(load_voc, folder, on_error="skip", keep_empty=True, cache=False)
    assert [r.num_objects for r in ds] == [1, 0, 0]
    assert ds[1].boxes.shape == (0, 4)


def test_duplicate_id_in_split_file(tmp_path):
    folder = make_voc(tmp_path / "VOC2007", {"a": (40, 30, [GOOD])}, {"trainval": ["a", "a"]})
    with pytest.raises(DataError, match=r"trainval\.txt: image id 'a' is listed more than once"):
        load_voc(folder, cache=False)
    ds, messages = quiet(load_voc, folder, on_error="skip", cache=False)
    assert len(ds) == 1 and len(messages) == 1


def test_no_usable_images_is_an_error(tmp_path):
    folder = make_voc(tmp_path / "VOC2007", {"a": (40, 30, [])}, {"trainval": ["a"]})
    with pytest.raises(DataError, match=r"split 'trainval' has no usable images"):
        quiet(load_voc, folder, cache=False)


def test_image_found_by_filename_or_other_extension(tmp_path):
    folder = make_voc(tmp_path / "mine", {"a": (40, 30, [GOOD]), "b": (40, 30, [GOOD])},
                      {"trainval": ["a", "b"]}, classes=["dog"])
    jpeg = os.path.join(folder, "JPEGImages")
    os.rename(os.path.join(jpeg, "a.jpg"), os.path.join(jpeg, "photo_a.jpeg"))
    rewrite_xml(folder, "a", voc_xml("photo_a.jpeg", (40, 30), [GOOD]))
    Image.open(os.path.join(jpeg, "b.jpg")).save(os.path.join(jpeg, "b.png"))
    os.remove(os.path.join(jpeg, "b.jpg"))
    ds = load_voc(folder, cache=False)
    assert [os.path.basename(r.path) for r in ds] == ["photo_a.jpeg", "b.png"]


def test_float_coordinates(tmp_path):
    folder = make_voc(tmp_path / "VOC2012", {"a": (40, 30, [obj("dog", (1.5, 2, 39.5, 30))])},
                      {"trainval": ["a"]})
    np.testing.assert_array_equal(load_voc(folder, cache=False)[0].boxes, [[0.5, 1, 38.5, 29]])


# ----------------------------------------------------------------------------
# load_dataset detection

def test_load_dataset_detects_layouts(tmp_path):
    folder = two_images(tmp_path / "VOCdevkit" / "VOC2007")
    assert load_dataset(tmp_path / "VOCdevkit", "trainval", cache=False).name == "voc_2007_trainval"
    assert load_dataset(folder, "test", cache=False).name == "voc_2007_test"
    with pytest.raises(DataError, match="dataset path does not exist"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no dataset found"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not a dataset"):
        load_dataset(tmp_path / "notes.txt")


# ----------------------------------------------------------------------------
# Cache

def test_cache_hit_replays_warnings_and_follows_content(tmp_path, monkeypatch):
    folder = make_voc(tmp_path / "VOC2007",
                      {"a": (40, 30, [GOOD, obj("cat", (0, 1, 5, 5))]),
                       "b": (40, 30, [obj("cat", (3, 3, 9, 9))])},
                      {"trainval": ["a", "b"]})
    cache_dir = str(tmp_path / "cache")
    first, msgs1 = quiet(load_voc, folder, on_error="skip", cache=True, cache_dir=cache_dir)
    assert len(os.listdir(cache_dir)) == 1 and len(msgs1) == 1

    parsed = []
    real = voc_module._parse_annotation
    monkeypatch.setattr(voc_module, "_parse_annotation",
                        lambda *a, **k: parsed.append(a[1]) or real(*a, **k))
    second, msgs2 = quiet(load_voc, folder, on_error="skip", cache=True, cache_dir=cache_dir)
    assert parsed == []                       # served from the cache
    assert msgs2 == msgs1                     # with the same warnings
    for r1, r2 in zip(first, second):
        assert (r1.image_id, r1.path, r1.width, r1.height) == (r2.image_id, r2.path, r2.width, r2.height)
        np.testing.assert_array_equal(r1.boxes, r2.boxes)
        assert r2.boxes.dtype == np.float32 and r2.labels.dtype == np.int32
        np.testing.assert_array_equal(r1.labels, r2.labels)
        np.testing.assert_array_equal(r1.difficult, r2.difficult)

    # Same size, same moment: only the content differs ("3" -> "4").
    path = xml_path(folder, "b")
    stat = os.stat(path)
    rewrite_xml(folder, "b", voc_xml("b.jpg", (40, 30), [obj("cat", (4, 3, 9, 9))]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    third, _ = quiet(load_voc, folder, on_error="skip", cache=True, cache_dir=cache_dir)
    assert parsed == ["a", "b"]
    np.testing.assert_array_equal(third[1].boxes, [[3, 2, 8, 8]])

    # The options and the class list are part of the key.
    parsed.clear()
    quiet(load_voc, folder, on_error="skip", keep_empty=True, cache=True, cache_dir=cache_dir)
    assert parsed == ["a", "b"]
    parsed.clear()
    quiet(load_voc, folder, on_error="skip", classes=VOC_CLASSES[::-1], cache=True,
          cache_dir=cache_dir)
    assert parsed == ["a", "b"]
    # A replaced image changes the key too.
    parsed.clear()
    write_image(os.path.join(folder, "JPEGImages", "a.jpg"), 40, 30, colour=(1, 2, 3))
    quiet(load_voc, folder, on_error="skip", cache=True, cache_dir=cache_dir)
    assert parsed == ["a", "b"]


def test_corrupt_cache_entry_is_rebuilt(tmp_path):
    folder = two_images(tmp_path / "VOC2007")
    cache_dir = tmp_path / "cache"
    load_voc(folder, cache=True, cache_dir=str(cache_dir))
    (entry,) = cache_dir.iterdir()
    entry.write_text("{not json")
    ds = load_voc(folder, cache=True, cache_dir=str(cache_dir))
    assert len(ds) == 2
    assert entry.read_text().startswith('{"version":1')


def test_cache_auto_only_for_big_splits(tmp_path, monkeypatch):
    folder = two_images(tmp_path / "VOC2007")
    cache_dir = tmp_path / "cache"
    load_voc(folder, cache_dir=str(cache_dir))            # "auto", 2 images
    assert not cache_dir.exists()
    monkeypatch.setattr("detection.datasets.cache.AUTO_MIN_IMAGES", 2)
    load_voc(folder, cache_dir=str(cache_dir))
    assert len(list(cache_dir.iterdir())) == 1
