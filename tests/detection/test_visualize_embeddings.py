"""Embeddings: PCA against scikit-learn and a known line, t-SNE (and its
missing extra), per-box features of a detector (RoIs pinned) and a
classifier (boxes cut out) against one box at a time, the picture, errors."""
import sys

import numpy as np
import pytest
from PIL import Image

from detection.datasets import DetectionDataset, ImageRecord
from detection.draw import class_colour
from detection.visualize.embeddings import embeddings, pca_2d, per_roi_blobs, tsne_2d
from detection.visualize.model import VisualModel
from netdef.device import Device
from netdef.errors import DataError
from netdef.net import Net
from netdef.schema import read_net

CLASSIFIER = """
name: "classifier"
force_backward: true
layer { name: "input" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 stride: 2
                            weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def test_pca_puts_a_line_on_the_first_axis():
    t = np.linspace(-2, 3, 7)
    direction = np.array([1.0, -2.0, 0.5, 0.0, 2.0])
    points = pca_2d(1 + t[:, None] * direction)
    norm = np.linalg.norm(direction)
    # the largest loading (-2 on axis 1) is made positive: the axis is -direction / |direction|
    np.testing.assert_allclose(points[:, 0], -(t - t.mean()) * norm, atol=1e-12)
    np.testing.assert_allclose(points[:, 1], 0, atol=1e-12)


def test_pca_matches_scikit_learn_up_to_each_axis_sign():
    from sklearn.decomposition import PCA
    features = np.random.default_rng(0).normal(size=(20, 6)) * [5, 3, 1, 1, 0.5, 0.1]
    ours = pca_2d(features)
    theirs = PCA(n_components=2).fit_transform(features)
    signs = np.sign((ours * theirs).sum(axis=0))
    np.testing.assert_allclose(ours, theirs * signs, atol=1e-10)
    assert pca_2d(np.ones((1, 3))).tolist() == [[0.0, 0.0]]
    np.testing.assert_allclose(pca_2d(np.arange(4.0)[:, None])[:, 1], 0)


def test_tsne_separates_two_clusters_and_is_seeded():
    rng = np.random.default_rng(1)
    features = np.concatenate([rng.normal(0, 1, (12, 5)), rng.normal(20, 1, (12, 5))])
    points = tsne_2d(features, seed=3)
    assert points.shape == (24, 2)
    np.testing.assert_array_equal(points, tsne_2d(features, seed=3))
    distances = np.linalg.norm(points[:, None] - points[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    nearest = distances.argmin(axis=1)
    assert ((nearest < 12) == (np.arange(24) < 12)).all()


def write_dataset(tmp_path, boxes_per_image, size=(36, 48)):
    """Random images with the given (boxes, labels, difficult) per image."""
    rng = np.random.default_rng(0)
    records = []
    for i, (boxes, labels, difficult) in enumerate(boxes_per_image):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(path)
        records.append(ImageRecord(str(i), str(path), size[1], size[0], boxes, labels,
                                   difficult))
    return DetectionDataset("tiny", ["cat", "dog"], records)


DATASET = [([[2, 3, 20, 30], [10, 4, 40, 25]], [1, 2], [False, False]),
           ([[5, 5, 14, 17]], [2], [True]),
           (np.zeros((0, 4)), [], []),
           ([[0, 0, 47, 35], [8, 9, 30, 33]], [2, 1], [False, False])]


def tiny_detector(device=None):
    param = read_net("prototxt/rfcn_tiny.prototxt")
    param.force_backward = True
    return VisualModel(Net(param, "TEST", seed=6, device=device), scale=48, max_size=64)


def test_detector_features_are_the_pinned_rois_blob(tmp_path):
    dataset = write_dataset(tmp_path, DATASET)
    model = tiny_detector()
    calls = []
    found = embeddings(model, dataset, "psroipooled_cls_rois",
                       progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert found.labels == ["cat", "dog", "dog", "cat"]          # the difficult box left out
    assert [s[0] for s in found.sources] == [0, 0, 3, 3]
    assert found.features.shape == (4, 7 * 3 * 3) and found.points.shape == (4, 2)
    for row, (index, box) in enumerate(found.sources):
        image = np.asarray(Image.open(dataset[index].path).convert("RGB"))
        prepared = model.prepare(image)
        roi = np.array([[0, *(np.array(box) * prepared.scale)]], np.float32)
        model.forward(prepared, rois=roi)
        np.testing.assert_allclose(found.features[row],
                                   model.blob_data("psroipooled_cls_rois").ravel(), rtol=1e-5,
                                   atol=1e-6)
    np.testing.assert_allclose(found.points, pca_2d(found.features))


def test_classifier_features_are_the_cut_out_boxes(tmp_path):
    dataset = write_dataset(tmp_path, DATASET)
    model = VisualModel(Net(CLASSIFIER, "TEST", seed=2))
    found = embeddings(model, dataset, "conv", limit=2)
    assert found.labels == ["cat", "dog"] and found.features.shape == (2, 4 * 3 * 3)
    image = np.asarray(Image.open(dataset[0].path).convert("RGB"))
    for row, (x1, y1, x2, y2) in enumerate(DATASET[0][0]):
        model.forward(model.prepare(image[y1:y2 + 1, x1:x2 + 1]))
        np.testing.assert_allclose(found.features[row], model.blob_data("conv").ravel(),
                                   rtol=1e-5, atol=1e-6)


def test_picture_has_the_class_colours(tmp_path):
    dataset = write_dataset(tmp_path, DATASET)
    found = embeddings(VisualModel(Net(CLASSIFIER, "TEST")), dataset, "fc", size=300)
    picture = np.asarray(found.picture)
    assert picture.shape[1] == 300 and picture.shape[0] > 300
    for name in ("cat", "dog"):
        colour = class_colour(name, dataset.classes)
        assert (picture.reshape(-1, 3) == colour).all(axis=1).sum() > 20


def test_tsne_method(tmp_path):
    dataset = write_dataset(tmp_path, DATASET)
    found = embeddings(VisualModel(Net(CLASSIFIER, "TEST")), dataset, "fc", method="tsne")
    assert found.points.shape == (4, 2) and np.isfinite(found.points).all()


def test_missing_scikit_learn_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    dataset = write_dataset(tmp_path, DATASET)
    calls = []
    with pytest.raises(DataError, match=r"t-SNE needs scikit-learn, part of the viz extra: "
                                        r"pip install -e '\.\[viz\]'"):
        embeddings(VisualModel(Net(CLASSIFIER, "TEST")), dataset, "fc", method="tsne",
                   progress=lambda *done: calls.append(done))
    assert calls == []          # refused before reading the dataset
    # PCA needs no extra
    assert embeddings(VisualModel(Net(CLASSIFIER, "TEST")), dataset, "fc").points.shape == (4, 2)


def test_detector_blob_must_be_per_roi(tmp_path):
    dataset = write_dataset(tmp_path, DATASET)
    model = tiny_detector()
    assert per_roi_blobs(model)[:3] == ["rois", "psroipooled_cls_rois", "cls_score"]
    with pytest.raises(DataError, match=r"has no per-RoI blob 'conv5' \(per-RoI blobs: rois, "
                                        r"psroipooled_cls_rois, cls_score, "):
        embeddings(model, dataset, "conv5")
    with pytest.raises(DataError, match=r"has no blob 'pool9' \(per-RoI blobs: rois, "):
        embeddings(model, dataset, "pool9")


def test_other_errors_are_named(tmp_path):
    model = VisualModel(Net(CLASSIFIER, "TEST"))
    dataset = write_dataset(tmp_path, DATASET)
    with pytest.raises(DataError, match=r"unknown method 'umap' \(methods: pca, tsne\)"):
        embeddings(model, dataset, "fc", method="umap")
    with pytest.raises(DataError, match=r"no blob 'fc9' \(blobs: data, conv, fc, prob\)"):
        embeddings(model, dataset, "fc9")
    empty = write_dataset(tmp_path, DATASET[1:3])
    with pytest.raises(DataError, match=r"no ground-truth boxes in the 2 image\(s\) read"):
        embeddings(model, empty, "fc")
    with pytest.raises(DataError, match="t-SNE needs at least 3 points, found 2"):
        tsne_2d(np.zeros((2, 4)))


@pytest.mark.gpu
def test_gpu_matches_cpu(tmp_path):
    dataset = write_dataset(tmp_path, DATASET)
    runs = [embeddings(tiny_detector(device), dataset, "cls_score")
            for device in (None, Device("gpu", 0))]
    np.testing.assert_allclose(runs[1].features, runs[0].features, rtol=1e-4, atol=1e-5)
