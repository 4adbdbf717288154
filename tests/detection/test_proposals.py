"""detection.proposals: the proposals file (round trip, order by image id,
damaged files named), generation with an RPN test net against a plain
per-image computation, the content key and the cache."""
import os

import numpy as np
import pytest

from netdef.errors import DataError
from netdef.net import Net
from detection.datasets import DetectionDataset, ImageRecord
from detection.proposals import (Proposals, cache_path, generate_proposals, load_or_generate,
                              proposals_key)

HERE = os.path.dirname(os.path.abspath(__file__))
PROTOTXT = os.path.join(HERE, "..", "..", "prototxt")
RPN_TEST = os.path.join(PROTOTXT, "rfcn_tiny_staged_rpn_test.prototxt")


def record(image_id, path="/nowhere.jpg", width=40, height=30):
    return ImageRecord(image_id, path, width, height, np.zeros((0, 4)), np.zeros(0),
                       np.zeros(0, bool))


def sample(with_scores=True):
    rng = np.random.default_rng(0)
    boxes = [rng.uniform(0, 30, (3, 4)), np.zeros((0, 4)), rng.uniform(0, 30, (5, 4))]
    scores = [rng.uniform(size=len(b)) for b in boxes] if with_scores else None
    return Proposals(["a", "b", "c"], boxes, scores, {"dataset": "toy", "key": "k"})


@pytest.mark.parametrize("with_scores", [True, False])
def test_save_and_load_round_trip(tmp_path, with_scores):
    proposals = sample(with_scores)
    path = tmp_path / "p.npz"
    proposals.save(path)
    loaded = Proposals.load(path)
    assert loaded.image_ids == ["a", "b", "c"]
    assert loaded.total == proposals.total == 8
    for a, b in zip(loaded.boxes, proposals.boxes):
        assert a.dtype == np.float32 and a.shape == b.shape and np.array_equal(a, b)
    if with_scores:
        for a, b in zip(loaded.scores, proposals.scores):
            assert np.array_equal(a, b)
    else:
        assert loaded.scores is None
    assert loaded.meta == {"dataset": "toy", "key": "k"}


def test_the_file_is_pickle_free(tmp_path):
    path = tmp_path / "p.npz"
    sample().save(path)
    with np.load(path, allow_pickle=False) as archive:   # would fail on object arrays
        assert sorted(archive.files) == ["__meta__", "boxes", "counts", "scores"]
        assert archive["counts"].tolist() == [3, 0, 5]


def test_for_dataset_follows_the_records_order_and_names_missing_images():
    proposals = sample()
    dataset = DetectionDataset("toy", ("__background__", "x"), [record("c"), record("a")])
    boxes = proposals.for_dataset(dataset)
    assert np.array_equal(boxes[0], proposals.boxes[2])
    assert np.array_equal(boxes[1], proposals.boxes[0])
    other = DetectionDataset("other", ("__background__", "x"), [record("a"), record("zz")])
    with pytest.raises(DataError, match=r"stage1\.npz: no proposals for 1 of the 2 images of "
                                        r"dataset 'other' \(zz\)"):
        proposals.for_dataset(other, "stage1.npz")


def test_damaged_or_foreign_files_are_named(tmp_path):
    from netdef.snapshot_format import save_arrays
    foreign = tmp_path / "weights.npz"
    save_arrays(foreign, {"conv1/0": np.zeros(3)}, {"kind": "weights"})
    with pytest.raises(DataError, match=r"weights\.npz: not a proposals file"):
        Proposals.load(foreign)
    bad = tmp_path / "bad.npz"
    save_arrays(bad, {"boxes": np.zeros((4, 4), np.float32), "counts": np.array([1, 2])},
                {"kind": "rpn-proposals", "version": 1, "image_ids": ["a", "b"]})
    with pytest.raises(DataError, match=r"bad\.npz: inconsistent proposals file"):
        Proposals.load(bad)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"garbage\.npz"):
        Proposals.load(garbage)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from detection.datasets import load_dataset
    from detection.datasets.synthetic import generate
    root = generate(tmp_path_factory.mktemp("data") / "synthetic", num_train=3, num_test=1,
                    seed=3)
    return root, load_dataset(root, "trainval")


def test_generation_matches_a_plain_forward_per_image(images):
    from layers.input_pipeline.preprocess import load_image_bgr, prepare_image
    _, dataset = images
    net = Net(RPN_TEST, "TEST", seed=7)
    proposals = generate_proposals(net, dataset.records, scale=192, max_size=256,
                                   meta={"dataset": dataset.name})
    assert proposals.image_ids == [r.image_id for r in dataset.records]
    assert proposals.scores is not None
    for record, boxes, scores in zip(dataset.records, proposals.boxes, proposals.scores):
        blob, scale = prepare_image(load_image_bgr(record.path), 192, 256)
        out = net.forward(data=blob, im_info=np.array([[blob.shape[2], blob.shape[3], scale]],
                                                      np.float32))
        rois, expected_scores = out["rois"], out["scores"]
        assert 0 < len(boxes) <= 300 and boxes.shape == (len(rois), 4)
        np.testing.assert_allclose(boxes, rois[:, 1:] / scale, rtol=1e-6)
        np.testing.assert_array_equal(scores, expected_scores[:, 0])
        # In the image's own pixels: the Proposal layer clips to the scaled image.
        assert boxes.min() >= 0 and boxes[:, 2].max() <= record.width + 1e-3
        assert np.all(np.diff(scores) <= 0)          # highest score first


def test_generation_without_scores_and_with_a_missing_input(images, tmp_path):
    from netdef.errors import NetDefinitionError
    _, dataset = images
    text = open(RPN_TEST).read().replace('  top: "scores"\n', "").replace(
        "output_score: true", "output_score: false")
    net = Net(text, "TEST")
    proposals = generate_proposals(net, dataset.records[:1], scale=192, max_size=256)
    assert proposals.scores is None and len(proposals.boxes[0]) > 0
    with pytest.raises(NetDefinitionError, match=r"no blob 'rois_x'"):
        generate_proposals(net, dataset.records[:1], scale=192, max_size=256,
                           rois_blob="rois_x")


def test_the_key_follows_every_input(images, tmp_path):
    _, dataset = images
    weights = tmp_path / "w.caffemodel"
    weights.write_bytes(b"weights one")
    records = dataset.records
    base = dict(scale=192, max_size=256)
    key = proposals_key("net", weights, records, **base)
    assert key == proposals_key("net", weights, records, **base)
    assert key != proposals_key("other net", weights, records, **base)
    assert key != proposals_key("net", weights, records, scale=200, max_size=256)
    assert key != proposals_key("net", weights, records[:2], **base)
    assert key != proposals_key("net", weights, records, dtype="float64", **base)
    weights.write_bytes(b"weights two")
    changed = proposals_key("net", weights, records, **base)
    assert changed != key
    stat = os.stat(records[0].path)
    os.utime(records[0].path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    try:
        assert proposals_key("net", weights, records, **base) != changed
    finally:
        os.utime(records[0].path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_load_or_generate_reuses_a_file_with_the_same_key(tmp_path):
    calls = []

    def make():
        calls.append(1)
        return sample()

    path = cache_path(tmp_path / "stage", "stage1_proposals", "ab" * 32)
    assert os.path.basename(path) == "stage1_proposals_" + "ab" * 8 + ".npz"
    first, reused = load_or_generate(path, "key-1", make)
    assert not reused and calls == [1] and Proposals.load(path).meta["key"] == "key-1"
    again, reused = load_or_generate(path, "key-1", make)
    assert reused and calls == [1] and again.total == first.total
    messages = []
    _, reused = load_or_generate(path, "key-2", make, messages.append)
    assert not reused and calls == [1, 1] and "key mismatch" in messages[0]
    with open(path, "wb") as handle:
        handle.write(b"damaged")
    _, reused = load_or_generate(path, "key-2", make, messages.append)
    assert not reused and calls == [1, 1, 1] and "unreadable" in messages[1]
    assert Proposals.load(path).meta["key"] == "key-2"
