"""The dataset browser: ground-truth drawing, thumbnails, pages, errors."""
import os

import numpy as np
import pytest
from PIL import Image

from detection.datasets import DetectionDataset, ImageRecord, load_dataset
from detection.datasets.synthetic import generate
from detection.draw import class_colour
from detection.visualize.browser import browse, draw_ground_truth, thumbnail, titled
from netdef.errors import DataError

CLASSES = ("__background__", "cat", "dog")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = generate(tmp_path_factory.mktemp("browse") / "data", num_train=5, num_test=0)
    return load_dataset(root, "trainval")


def grey(width=120, height=80):
    return Image.new("RGB", (width, height), (128, 128, 128))


def test_boxes_drawn_in_their_class_colour_on_the_box_edges():
    drawn = np.asarray(draw_ground_truth(grey(), [[20, 30, 90, 70]], [2], CLASSES))
    colour = class_colour("dog", CLASSES)
    assert tuple(drawn[50, 20]) == colour                 # left edge
    assert tuple(drawn[50, 90]) == colour                 # right edge
    assert tuple(drawn[70, 55]) == colour                 # bottom edge
    assert tuple(drawn[50, 55]) == (128, 128, 128)        # inside: untouched
    assert tuple(drawn[5, 110]) == (128, 128, 128)        # far outside: untouched


def test_difficult_objects_are_dashed():
    box = [10, 40, 110, 70]
    solid = np.asarray(draw_ground_truth(grey(), [box], [1], CLASSES, [False]))
    dashed = np.asarray(draw_ground_truth(grey(), [box], [1], CLASSES, [True]))
    colour = np.array(class_colour("cat", CLASSES))
    bottom_solid = (solid[70, 10:111] == colour).all(axis=1)
    bottom_dashed = (dashed[70, 10:111] == colour).all(axis=1)
    assert bottom_solid.all()
    assert 0.3 < bottom_dashed.mean() < 0.8               # gaps between the dashes


def test_thumbnail_shrinks_to_fit_and_adds_a_caption_strip():
    cell = thumbnail(grey(400, 100), (200, 150), "an image")
    assert cell.size[0] == 200 and cell.size[1] > 150
    pixels = np.asarray(cell)
    # 400 x 100 shrunk to 200 x 50 at the top, the caption (dark text) right below
    assert (pixels[:50] == 128).all()
    assert (pixels[50:52] == 255).all() and (pixels[53:68] < 100).any()
    assert (pixels[75:150] == 255).all()
    small = thumbnail(grey(50, 40), (200, 150), "small")  # never enlarged
    assert (np.asarray(small)[:150] == 128).all(axis=2).sum() == 50 * 40


def test_titled_puts_the_picture_below_a_title_strip():
    picture = titled(grey(200, 50), "a title that is long enough to wrap onto a second "
                                    "line of the strip")
    assert picture.width == 200 and picture.height > 50 + 2 * 12
    assert tuple(np.asarray(picture)[-1, 100]) == (128, 128, 128)


def test_browse_writes_pages_of_tiled_thumbnails(dataset, tmp_path):
    calls = []
    pages = browse(dataset, tmp_path / "pages", per_page=2, columns=2, size=(128, 96),
                   progress=lambda done, total: calls.append((done, total)))
    assert [os.path.basename(p) for p in pages] == [
        f"{dataset.name}_page{i:03d}.png" for i in (1, 2, 3)]
    assert calls[-1] == (5, 5) and len(calls) == 5
    with Image.open(pages[0]) as first, Image.open(pages[2]) as last:
        assert first.width >= 2 * 128 and first.height >= 96
        assert last.width < first.width                   # the fifth image alone
    start_limit = browse(dataset, tmp_path / "part", per_page=10, start=3, limit=5)
    assert len(start_limit) == 1


def test_browse_draws_the_ground_truth_of_each_image(dataset, tmp_path):
    record = dataset.records[0]
    page = browse(dataset, tmp_path, per_page=1, limit=1, size=(record.width, record.height))
    colour = class_colour(dataset.classes[record.labels[0]], dataset.classes)
    x1, y1, x2, y2 = (int(v) for v in record.boxes[0])
    with Image.open(page[0]) as opened:
        pixels = np.asarray(opened.convert("RGB"))
    assert (pixels == colour).all(axis=2).sum() >= (y2 - y1) * 2


@pytest.mark.parametrize("options, message", [
    ({"start": 9}, r"has 5 images: start must lie in 0\.\.4; got 9"),
    ({"per_page": 0}, "per_page and columns must be at least 1"),
])
def test_browse_errors(dataset, tmp_path, options, message):
    with pytest.raises(DataError, match=message):
        browse(dataset, tmp_path, **options)


def test_browse_of_an_empty_dataset_and_an_unreadable_image(tmp_path):
    with pytest.raises(DataError, match="has no images"):
        browse(DetectionDataset("empty", CLASSES, []), tmp_path)
    missing = ImageRecord("gone", str(tmp_path / "gone.jpg"), 10, 10, [[1, 1, 5, 5]], [1],
                          [False])
    with pytest.raises(DataError, match="gone.jpg: cannot read the image of 'gone'"):
        browse(DetectionDataset("one", CLASSES, [missing]), tmp_path)
