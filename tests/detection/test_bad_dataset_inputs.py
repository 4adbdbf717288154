"""Hostile or careless dataset entries (issue 14): paths that leave the
dataset folder, VOC <size> that is not a finite number, 16-bit images,
truncated or bit-flipped JPEGs found by --check-images, and a COCO file
given as --data without a test split. Each is a named DataError, or in
skip mode a DataWarning and the entry left out."""
import copy
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from detection.datasets import load_dataset
from detection.datasets.coco import load_coco
from detection.datasets.records import path_problem, read_image_size
from detection.datasets.voc import load_voc
from detection.evaluate import open_test_set, evaluation_source
from layers.input_pipeline.preprocess import load_image_bgr
from netdef.errors import DataError
from solver.cli import open_dataset
from tests.detection.dataset_checks import quiet
from tests.detection.test_datasets_coco import BASE, make_coco
from tests.detection.test_datasets_voc import make_voc, obj, voc_xml, xml_path

GOOD = obj("cat", (2, 2, 20, 20))


def two_good(folder, ids=("a", "b")):
    return make_voc(folder, {i: (40, 30, [GOOD]) for i in ids}, {"trainval": list(ids)})


def write_split(folder, ids):
    with open(os.path.join(folder, "ImageSets", "Main", "trainval.txt"), "w") as f:
        f.write("".join(i + "\n" for i in ids))


def jpeg_bytes(width=40, height=30, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG")
    return out.getvalue()


def truncated_jpeg():
    data = jpeg_bytes()
    return data[:len(data) // 2]


def bit_flipped_jpeg():
    """A byte of the Huffman table inverted: the header still reads."""
    data = bytearray(jpeg_bytes())
    data[data.index(b"\xff\xc4") + 20] ^= 0xFF
    return bytes(data)


# -- paths confined to the dataset ------------------------------------------------------------

@pytest.mark.parametrize("relative, reason", [
    ("../../../../etc/passwd", "'..' component"), ("a/../../b", "'..' component"),
    ("..\\..\\secret", "'..' component"), ("/etc/passwd", "absolute path"),
    ("\\\\server\\share\\x", "absolute path"), ("C:/x/y", "absolute path"),
    ("a\0b", "NUL"),
])
def test_path_problem_refuses_leaving_the_folder(relative, reason):
    assert reason in path_problem(relative)


@pytest.mark.parametrize("relative", ["000001", "sub/x.jpg", "a..b", "..x", "x.."])
def test_path_problem_accepts_relative_paths_inside(relative):
    assert path_problem(relative) is None


def outside_annotation(tmp_path):
    """A valid annotation and image outside the dataset, where the id
    ``../../../outside`` would point."""
    (tmp_path / "outside.xml").write_text(voc_xml("outside.jpg", (40, 30), [GOOD]))
    Image.new("RGB", (40, 30)).save(tmp_path / "outside.jpg")


def test_split_file_ids_with_dotdot_or_absolute_are_named_errors(tmp_path):
    folder = two_good(tmp_path / "VOC2007")
    outside_annotation(tmp_path)
    for bad in ("../../../outside", "../../../../etc/passwd", str(tmp_path / "outside")):
        write_split(folder, ["a", bad, "b"])
        with pytest.raises(DataError, match=r"trainval\.txt: image id .* (has a '\.\.' "
                                            r"component|is an absolute path)"):
            load_voc(folder, cache=False)
        ds, messages = quiet(load_voc, folder, on_error="skip", cache=False)
        assert [r.image_id for r in ds] == ["a", "b"]          # nothing read outside
        assert len(messages) == 1 and repr(bad) in messages[0]


def test_ids_in_subfolders_still_work(tmp_path):
    folder = two_good(tmp_path / "VOC2007")
    os.makedirs(os.path.join(folder, "Annotations", "sub"))
    os.rename(xml_path(folder, "b"), xml_path(folder, "sub/b"))
    os.makedirs(os.path.join(folder, "JPEGImages", "sub"))
    os.rename(os.path.join(folder, "JPEGImages", "b.jpg"),
              os.path.join(folder, "JPEGImages", "sub", "b.jpg"))
    write_split(folder, ["a", "sub/b"])
    assert [r.image_id for r in load_voc(folder, cache=False)] == ["a", "sub/b"]


def test_symlinked_dataset_folders_keep_working(tmp_path):
    """py-faster-rcnn's data/VOCdevkit2007 is a symlink, and so is often
    JPEGImages: the confinement is lexical, so both load."""
    real = two_good(tmp_path / "store" / "VOC2007")
    images = tmp_path / "disk2" / "JPEGImages"
    os.makedirs(images.parent)
    os.rename(os.path.join(real, "JPEGImages"), images)
    os.symlink(images, os.path.join(real, "JPEGImages"))
    devkit = tmp_path / "data" / "VOCdevkit2007"
    os.makedirs(devkit.parent)
    os.symlink(tmp_path / "store", devkit)
    ds = load_dataset(devkit, "2007:trainval", cache=False)
    assert [r.image_id for r in ds] == ["a", "b"]
    assert ds[0].path == os.path.join(str(devkit), "VOC2007", "JPEGImages", "a.jpg")
    assert load_image_bgr(ds[0].path).shape == (30, 40, 3)


@pytest.mark.parametrize("file_name", ["../secret.jpg", "sub/../../secret.jpg", "/etc/passwd"])
def test_coco_file_name_leaving_the_image_root_is_a_named_error(tmp_path, file_name):
    doc = copy.deepcopy(BASE)
    doc["images"][1]["file_name"] = file_name
    path = make_coco(str(tmp_path), doc)
    Image.new("RGB", (50, 40)).save(tmp_path / "secret.jpg")
    with pytest.raises(DataError, match=r"image index 1 \(id 11, .*file_name (has a '\.\.' "
                                        r"component|is an absolute path)"):
        load_coco(path, cache=False)
    ds, messages = quiet(load_coco, path, on_error="skip", cache=False)
    assert [r.image_id for r in ds] == ["10", "12"]
    assert any("file_name" in m for m in messages)


def test_coco_symlinked_image_root_keeps_working(tmp_path):
    path = make_coco(str(tmp_path / "real"))
    link = tmp_path / "coco"
    os.symlink(tmp_path / "real", link)
    ds = load_coco(os.path.join(link, "annotations", "instances_val.json"), cache=False)
    assert [r.image_id for r in ds] == ["10", "11", "12"]
    assert ds[1].path == os.path.join(str(link), "val", "sub", "b.jpg")
    assert os.path.isfile(path)


# -- VOC <size> -------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "-5", "12.5"])
def test_voc_size_that_is_not_a_finite_whole_number(tmp_path, value):
    folder = two_good(tmp_path / "VOC2007")
    with open(xml_path(folder, "a"), "w") as f:
        f.write(voc_xml("a.jpg", (value, 30), [GOOD]))
    with pytest.raises(DataError, match=r"a\.xml: <size><width> must be a finite whole number "
                                        rf">= 0, found '{value}'"):
        load_voc(folder, cache=False)
    ds, messages = quiet(load_voc, folder, on_error="skip", cache=False)
    assert [r.image_id for r in ds] == ["b"]
    assert len(messages) == 1 and "skipped image" in messages[0]


# -- image modes and the full decode check ----------------------------------------------------

def test_a_16_bit_png_keeps_its_range(tmp_path):
    folder = two_good(tmp_path / "VOC2007")
    ramp = (np.arange(30 * 40).reshape(30, 40) * 4095 // (30 * 40 - 1)).astype(np.uint16)
    os.remove(os.path.join(folder, "JPEGImages", "a.jpg"))
    Image.fromarray(ramp).save(os.path.join(folder, "JPEGImages", "a.png"))
    ds = load_voc(folder, cache=False, check_images=True)
    image = load_image_bgr(ds[0].path)
    np.testing.assert_allclose(image[:, :, 1], ramp * (255 / 65535), rtol=1e-6)
    assert (image > 250).mean() == 0             # not saturated (it was 94% white)


@pytest.mark.parametrize("broken", [truncated_jpeg, bit_flipped_jpeg])
def test_check_images_finds_a_file_whose_header_reads(tmp_path, broken):
    folder = two_good(tmp_path / "VOC2007")
    bad = os.path.join(folder, "JPEGImages", "a.jpg")
    with open(bad, "wb") as f:
        f.write(broken())
    assert read_image_size(bad) == (40, 30)           # the header check passes
    assert len(load_voc(folder, cache=False)) == 2
    with pytest.raises(DataError, match=r"a\.xml: image .*a\.jpg cannot be read: OSError"):
        load_voc(folder, cache=False, check_images=True)
    ds, messages = quiet(load_voc, folder, on_error="skip", cache=False, check_images=True)
    assert [r.image_id for r in ds] == ["b"] and "a.jpg" in messages[0]


def test_check_images_is_part_of_the_cache_key(tmp_path):
    folder = two_good(tmp_path / "VOC2007")
    with open(os.path.join(folder, "JPEGImages", "a.jpg"), "wb") as f:
        f.write(truncated_jpeg())
    cache_dir = str(tmp_path / "cache")
    first, _ = quiet(load_voc, folder, on_error="skip", cache=True, cache_dir=cache_dir)
    checked, _ = quiet(load_voc, folder, on_error="skip", cache=True, cache_dir=cache_dir,
                       check_images=True)
    assert (len(first), len(checked)) == (2, 1)


def test_check_images_with_coco_and_through_open_dataset(tmp_path):
    path = make_coco(str(tmp_path))
    with open(tmp_path / "val" / "c.jpg", "wb") as f:
        f.write(truncated_jpeg())
    assert len(open_dataset(path, "trainval")) == 3
    with pytest.raises(DataError, match=r"image index 2 \(id 12, 'c\.jpg'\): image .*c\.jpg "
                                        "cannot be read"):
        open_dataset(path, "trainval", check_images=True)
    ds, _ = quiet(open_dataset, path, "trainval", on_error="skip", check_images=True)
    assert [r.image_id for r in ds] == ["10", "11"] and ds.on_error == "skip"


@pytest.mark.parametrize("text, match", [
    ('{"images": [{"id": ' + "7" * 5000 + '}], "categories": []}', "JSON parse error: .*digits"),
    ("[" * 100000 + "]" * 100000, "JSON parse error: nested too deeply"),
])
def test_coco_json_beyond_pythons_limits(tmp_path, text, match):
    path = tmp_path / "instances_x.json"
    path.write_text(text)
    with pytest.raises(DataError, match=match):
        load_coco(path, cache=False)


def test_coco_bbox_integer_beyond_the_float_range(tmp_path):
    doc = copy.deepcopy(BASE)
    doc["annotations"][0]["bbox"] = [10 ** 400, 0, 1, 1]
    path = make_coco(str(tmp_path), doc)
    with pytest.raises(DataError, match=r"annotation index 0 .*bbox must be \[x, y, w, h\]"):
        load_coco(path, cache=False)
    ds, messages = quiet(load_coco, path, on_error="skip", cache=False)
    assert ds[0].num_objects == 1 and len(messages) == 1


# -- a COCO file as --data --------------------------------------------------------------------

def test_a_coco_file_trained_on_needs_a_second_file_to_test(tmp_path):
    path = make_coco(str(tmp_path))
    with pytest.raises(DataError, match=r"instances_val\.json: a COCO annotation file holds a "
                                        r"single split.*--test-split"):
        open_test_set(path, "test")
    second = make_coco(str(tmp_path), dict(BASE, images=BASE["images"][:2],
                                            annotations=BASE["annotations"][:3]),
                       json_name="instances_test.json", image_dir="test")
    assert [r.image_id for r in open_test_set(path, second)] == ["10", "11"]
    # solver.test --data FILE: the file given is the test set.
    assert len(open_test_set(path, "test", json_is_test_set=True)) == 3
    assert evaluation_source(path, second) == second
    with pytest.raises(DataError, match="--test-split"):
        evaluation_source(path, "val")


def test_test_split_of_folders_is_unchanged(tmp_path):
    folder = make_voc(tmp_path / "VOC2007", {"a": (40, 30, [GOOD]), "b": (40, 30, [])},
                      {"trainval": ["a"], "test": ["a", "b"]})
    assert [r.image_id for r in open_test_set(folder, "test")] == ["a", "b"]


def test_the_commands_take_check_images():
    from solver import test as test_command
    from solver import train as train_command
    args = train_command.build_parser().parse_args(["net.prototxt", "--check-images"])
    assert args.check_images
    assert not train_command.build_parser().parse_args(["net.prototxt"]).check_images
    args = test_command.build_parser().parse_args(["net", "--weights", "w", "--check-images"])
    assert args.check_images
    json.dumps(vars(args))      # plain values, as the schedule's digest needs
