"""Tests of detection.draw: boxes in the class colour, labels, inputs, errors."""
import numpy as np
import pytest
from PIL import Image

from netdef.errors import DataError
from detection.draw import PALETTE, class_colour, draw_detections

VOC = ("__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
       "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
       "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def grey_bgr(h=120, w=160):
    return np.full((h, w, 3), 90, dtype=np.uint8)


def test_outline_pixels_have_the_class_colour(tmp_path):
    out = tmp_path / "dets.png"
    box = [20, 40, 100, 90]
    image = draw_detections(grey_bgr(), [("cat", 0.9, box)], out, line_width=3)
    cat = class_colour("cat")
    pixels = np.asarray(Image.open(out).convert("RGB"))
    np.testing.assert_array_equal(pixels, np.asarray(image))
    ys = np.arange(box[1], box[3] + 1)
    xs = np.arange(box[0], box[2] + 1)
    for inset in range(3):       # the outline is 3 px wide, growing inwards
        assert (pixels[ys, box[0] + inset] == cat).all()              # left edge
        assert (pixels[ys, box[2] - inset] == cat).all()              # right edge
        assert (pixels[box[3] - inset, xs] == cat).all()              # bottom edge
        assert (pixels[box[1] + inset, xs] == cat).all()              # top edge (tag above it)
    # inside and outside the outline the image is unchanged
    assert (pixels[60, 50] == 90).all() and (pixels[box[1] + 10, box[0] + 3] == 90).all()
    assert (pixels[100, 120] == 90).all() and (pixels[box[1] + 10, box[0] - 1] == 90).all()
    # the label tag is filled with the class colour above the box, with text in it
    tag = pixels[box[1] - 8:box[1], box[0]:box[0] + 20]
    assert (tag == cat).all(axis=-1).mean() > 0.3 and not (tag == cat).all()


def test_colours_by_class_list_and_hash():
    assert class_colour("aeroplane", VOC) == PALETTE[0]
    assert class_colour("tvmonitor", VOC) == PALETTE[19]
    assert len({class_colour(c, VOC) for c in VOC[1:]}) == 20
    assert class_colour("unicorn", VOC) == class_colour("unicorn")  # falls back to the hash
    assert class_colour("dog") == class_colour("dog")


def test_inputs_bgr_float_path_and_pil(tmp_path):
    bgr = np.zeros((50, 60, 3), dtype=np.float32)
    bgr[..., 0] = 200.4          # blue
    bgr[..., 2] = 10.0           # red
    image = draw_detections(bgr, [])
    assert image.size == (60, 50) and tuple(np.asarray(image)[5, 5]) == (10, 0, 200)
    path = tmp_path / "in.png"
    Image.fromarray(np.full((30, 40, 3), 7, np.uint8)).save(path)
    drawn = draw_detections(str(path), [("dog", 0.5, [1, 1, 20, 20])], line_width=1)
    assert tuple(np.asarray(drawn)[10, 1]) == class_colour("dog")
    assert draw_detections(Image.open(path), []).size == (40, 30)
    gray = draw_detections(np.full((20, 20), 33.0), [])
    assert tuple(np.asarray(gray)[0, 0]) == (33, 33, 33)


def test_min_score_order_clipping_and_jpeg(tmp_path):
    dets = [("cat", 0.2, [10, 10, 50, 50]), ("dog", 0.9, [10, 10, 50, 50]),
            ("bird", 0.05, [60, 60, 70, 70]), ("car", 0.8, [-30, -30, 500, 500])]
    image = draw_detections(grey_bgr(), dets, tmp_path / "out.jpg", min_score=0.1, line_width=2)
    pixels = np.asarray(image)
    assert tuple(pixels[30, 10]) == class_colour("dog")       # higher score on top
    assert tuple(pixels[65, 60]) == (90, 90, 90)              # below min_score
    assert tuple(pixels[60, 0]) == class_colour("car")        # clipped to the image
    assert tuple(pixels[60, 159]) == class_colour("car")
    with Image.open(tmp_path / "out.jpg") as saved:
        assert saved.format == "JPEG" and saved.size == (160, 120)
    # a box entirely outside is skipped
    outside = draw_detections(grey_bgr(), [("cat", 1.0, [200, 200, 300, 300])])
    assert (np.asarray(outside) == 90).all()


@pytest.mark.parametrize("dets, message", [
    ([("cat", 0.5)], r"detection 0 must be \(class_name, score, box\)"),
    ([("cat", 0.5, [1, 2, 3])], r"detection 0 \(cat\): box must be 4 finite numbers"),
    ([("cat", 0.5, [1, 2, 3, "x"])], r"box must be 4 finite numbers"),
    ([("cat", 0.5, [1, 2, 3, 4]), ("dog", 0.5, [0, 0, np.nan, 1])], r"detection 1 \(dog\)"),
    ([("cat", "high", [1, 2, 3, 4])], r"score must be a finite number"),
])
def test_bad_detections(dets, message):
    with pytest.raises(DataError, match=message):
        draw_detections(grey_bgr(), dets)


def test_bad_image_and_output(tmp_path):
    with pytest.raises(DataError, match="cannot read the image"):
        draw_detections(tmp_path / "missing.jpg", [])
    with pytest.raises(DataError, match=r"shape \(4, 4, 2\)"):
        draw_detections(np.zeros((4, 4, 2)), [])
    with pytest.raises(ValueError, match="unknown image extension"):
        draw_detections(grey_bgr(), [], tmp_path / "out.xyz")
    with pytest.raises(ValueError, match="line_width"):
        draw_detections(grey_bgr(), [], line_width=0)


def test_bitmap_font(monkeypatch):
    """Pillow before 10.1 has only the bitmap default font: still labelled."""
    from PIL import ImageFont
    from detection import draw
    monkeypatch.setattr(draw, "_font", lambda size: ImageFont.load_default_imagefont())
    pixels = np.asarray(draw_detections(grey_bgr(), [("cat", 0.9, [20, 40, 100, 90])]))
    tag = pixels[30:40, 20:60]
    assert (tag == class_colour("cat")).all(axis=-1).any() and not (tag == class_colour("cat")).all()
