"""Synthetic shapes dataset: determinism, validity through the VOC reader,
object counts and sizes, the shared copy's generate-once logic, the CLI."""
import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from netdef.errors import DataError
from detection.datasets import load_dataset
from detection.datasets import synthetic
from detection.datasets.synthetic import (CLASSES, SyntheticConfig, default_dataset_root,
                                       ensure_dataset, generate)

SMALL = dict(num_train=6, num_test=3)


def tree_bytes(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "data", seed=0, **SMALL)


def test_same_seed_same_bytes_other_seed_differs(small, tmp_path):
    again = generate(tmp_path / "again", seed=0, **SMALL)
    a, b = tree_bytes(small), tree_bytes(again)
    assert sorted(a) == sorted(b)
    assert len([k for k in a if k.endswith(".jpg")]) == 9
    assert all(a[k] == b[k] for k in a)
    other = tree_bytes(generate(tmp_path / "other", seed=1, **SMALL))
    images = [k for k in a if k.endswith(".jpg")]
    assert all(a[k] != other[k] for k in images)
    # Image i of a split does not depend on how many are generated.
    fewer = tree_bytes(generate(tmp_path / "fewer", seed=0, num_train=2, num_test=1))
    for k in fewer:
        if k.endswith((".jpg", ".xml")):
            assert fewer[k] == a[k]


def test_layout_and_loads_cleanly(small):
    assert sorted(os.listdir(small)) == ["Annotations", "ImageSets", "JPEGImages",
                                         "classes.txt", "synthetic.json"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # no warning at all
        train = load_dataset(small, "trainval", on_error="raise", cache=False)
        test = load_dataset(small, "test", on_error="raise", cache=False)
    assert train.classes == ("__background__",) + CLASSES
    assert [r.image_id for r in train] == [f"train_{i:06d}" for i in range(6)]
    assert [r.image_id for r in test] == [f"test_{i:06d}" for i in range(3)]
    meta = json.load(open(os.path.join(small, "synthetic.json")))
    assert meta["seed"] == 0 and meta["num_train"] == 6 and meta["classes"] == list(CLASSES)


def test_objects_counts_sizes_and_boxes(tmp_path):
    root = generate(tmp_path / "d", num_train=24, num_test=0, seed=3)
    ds = load_dataset(root, "trainval", cache=False)
    counts = [r.num_objects for r in ds]
    assert min(counts) >= 1 and max(counts) <= 4 and len(set(counts)) > 1
    boxes = np.concatenate([r.boxes for r in ds])
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    assert np.maximum(w, h).min() >= 16 and np.maximum(w, h).max() <= 96
    labels = np.concatenate([r.labels for r in ds])
    assert set(labels.tolist()) == set(range(1, 7))
    assert all((r.width, r.height) == (256, 192) for r in ds)
    assert not np.concatenate([r.difficult for r in ds]).any()
    assert np.asarray(Image.open(ds[0].path)).shape == (192, 256, 3)


def test_render_boxes_are_the_visible_extent():
    cfg = SyntheticConfig(num_train=1, num_test=0)
    image, objects = synthetic.render_image(np.random.default_rng(5), 120, 160, cfg)
    assert image.dtype == np.uint8 and image.shape == (120, 160, 3)
    # render_image draws the background first, so replay its draws.
    rng = np.random.default_rng(5)
    synthetic._background(rng, 120, 160)
    names, masks, visible = synthetic.place_objects(rng, 120, 160, cfg)
    assert len(objects) == len(names) >= 1
    for (name, x1, y1, x2, y2), n, vis in zip(objects, names, visible):
        ys, xs = np.nonzero(vis)
        assert name == n and (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max(), ys.max())


def test_occlusion_at_most_30_percent():
    cfg = SyntheticConfig(num_train=1, num_test=0, max_objects=4)
    overlapped = 0
    for seed in range(40):
        names, masks, visible = synthetic.place_objects(
            np.random.default_rng(seed), 150, 200, cfg)
        assert 1 <= len(names) <= 4
        for m, v in zip(masks, visible):
            assert v.sum() >= 0.7 * m.sum()
            overlapped += v.sum() < m.sum()
    assert overlapped > 0          # overlaps do happen


def test_variable_image_sizes(tmp_path):
    root = generate(tmp_path / "v", num_train=5, num_test=0, image_size=((100, 140), (150, 200)))
    ds = load_dataset(root, "trainval", cache=False)
    sizes = {(r.width, r.height) for r in ds}
    assert all(150 <= w <= 200 and 100 <= h <= 140 for w, h in sizes)
    assert len(sizes) > 1


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        SyntheticConfig(image_size=(20, 256))
    with pytest.raises(ValueError, match="object_size"):
        SyntheticConfig(object_size=(50, 30))
    with pytest.raises(ValueError, match="max_occlusion"):
        SyntheticConfig(max_occlusion=1.0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(DataError, match="already exists and is not empty"):
        generate(tmp_path / "full", num_train=1, num_test=0)


def test_ensure_dataset_generates_once(tmp_path, monkeypatch):
    monkeypatch.setenv("NETDEF_CACHE_DIR", str(tmp_path / "cache"))
    root = default_dataset_root(seed=2, **SMALL)
    assert root == os.path.join(str(tmp_path / "cache"), "synthetic-v1-seed2-6-3-192x256")
    assert ensure_dataset(seed=2, **SMALL) == root
    stamp = os.stat(os.path.join(root, "synthetic.json")).st_mtime_ns
    calls = []
    monkeypatch.setattr(synthetic, "_write_all", lambda *a: calls.append(a))
    assert ensure_dataset(seed=2, **SMALL) == root
    assert calls == [] and os.stat(os.path.join(root, "synthetic.json")).st_mtime_ns == stamp
    # The same folder asked for with other parameters is refused.
    with pytest.raises(DataError, match=r"other parameters \(num_test: 3 != 4"):
        ensure_dataset(root, seed=2, num_train=6, num_test=4)
    # Non-default options get their own folder.
    assert default_dataset_root(seed=2, max_objects=2, **SMALL) != root
    assert default_dataset_root(seed=2, max_objects=4, **SMALL) == root


def test_interrupted_and_concurrent_generation(tmp_path, monkeypatch):
    target = str(tmp_path / "shared")
    real = synthetic._write_all

    def crash(folder, config):
        real(folder, config)
        raise KeyboardInterrupt
    monkeypatch.setattr(synthetic, "_write_all", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_dataset(target, num_train=1, num_test=1)
    assert os.listdir(tmp_path) == []              # no root, no temporary left

    # Another process finishes first: our rename fails, theirs is used.
    def other_wins(folder, config):
        real(folder, config)
        if not os.path.exists(target):
            real(target, config)
    monkeypatch.setattr(synthetic, "_write_all", other_wins)
    assert ensure_dataset(target, num_train=1, num_test=1) == target
    assert os.listdir(tmp_path) == ["shared"]
    assert len(load_dataset(target, "test", cache=False)) == 1

    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "JPEGImages").mkdir()
    with pytest.raises(DataError, match="not a complete synthetic dataset"):
        ensure_dataset(tmp_path / "half", num_train=1, num_test=1)


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert synthetic.main([str(out), "--train", "2", "--test", "1", "--seed", "4",
                           "--height", "96", "--width", "128"]) == 0
    assert "wrote 2 trainval + 1 test images" in capsys.readouterr().out
    ds = load_dataset(out, "trainval", cache=False)
    assert (ds[0].width, ds[0].height) == (128, 96)
    with pytest.raises(SystemExit):
        synthetic.main([str(out)])
    assert "already exists" in capsys.readouterr().err
