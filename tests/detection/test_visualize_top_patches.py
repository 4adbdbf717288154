"""Maximally activating patches: the kept records against a plain search,
a known answer with coloured squares, fields in image pixels, the crop,
the picture, errors."""
import numpy as np
import pytest

from detection.visualize.model import VisualModel
from detection.visualize.top_patches import OUTSIDE, crop_field, top_activations, top_patches
from netdef.device import Device
from netdef.errors import DataError
from netdef.net import Net
from netdef.schema import read_net

# Two colour units (red and blue, BGR input minus nothing) at 3 x 3, then a
# 2 x 2 max pooling: the field of "pool" is 4 pixels, stride 2, offset -1.
COLOURS = """
name: "colours"
force_backward: true
layer { name: "input" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "colour" type: "Convolution" bottom: "data" top: "colour"
        convolution_param { num_output: 2 kernel_size: 3 pad: 1 } }
layer { name: "pool" type: "Pooling" bottom: "colour" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
        inner_product_param { num_output: 2 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def colour_model():
    model = VisualModel(Net(COLOURS, "TEST", dtype=np.float64), pixel_means=(0, 0, 0))
    weight = model.net.params["colour"][0].data
    weight[...] = 0
    weight[0, 2, 1, 1], weight[0, 0, 1, 1] = 1, -1      # red (BGR channel 2) minus blue
    weight[1, 0, 1, 1], weight[1, 2, 1, 1] = 1, -1      # blue minus red
    model.net.params["colour"][1].data[...] = 0
    return model


def square_image(colour, y, x, side, size=16):
    image = np.full((size, size, 3), 90, np.uint8)
    image[y:y + side, x:x + side] = colour
    return image


def test_known_answer_with_coloured_squares():
    images = [square_image((200, 90, 90), 2, 3, 3),     # red, weaker
              square_image((90, 90, 250), 9, 9, 2),     # blue
              square_image((250, 90, 90), 10, 4, 2),    # red, strongest
              square_image((90, 90, 150), 0, 0, 4)]     # blue, weaker
    red, blue = top_activations(colour_model(), images, "pool", [0, 1], k=2)
    assert [r.image_index for r in red] == [2, 0] and [r.value for r in red] == [160, 110]
    assert [r.image_index for r in blue] == [1, 3] and [r.value for r in blue] == [160, 60]
    # the red square of image 2 covers rows 10-11, columns 4-5: the first
    # maximum in pooled row 5, pooled column 2; field rows 9-12, columns 3-6
    assert red[0].position == (5, 2) and red[0].box == (3, 9, 6, 12)


def plain_search(model, images, blob, units, k):
    """Every image's per-unit maximum through VisualModel.forward, sorted."""
    found = {u: [] for u in units}
    for index, image in enumerate(images):
        model.forward(model.prepare(image))
        maps = model.blob_data(blob)[0]
        for u in units:
            y, x = np.unravel_index(np.argmax(maps[u]), maps[u].shape)
            found[u].append((-maps[u, y, x], index, (int(y), int(x))))
    return {u: sorted(found[u], key=lambda c: (c[0], c[1]))[:k] for u in units}


def random_images(count, height, width, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


def tiny_detector(device=None):
    param = read_net("prototxt/rfcn_tiny.prototxt")
    param.force_backward = True
    return VisualModel(Net(param, "TEST", seed=4, device=device), scale=48, max_size=64)


@pytest.mark.parametrize("kind", ["classifier", "detector"])
def test_kept_records_equal_a_plain_search(kind):
    model = colour_model() if kind == "classifier" else tiny_detector()
    blob, units = ("colour", [1, 0]) if kind == "classifier" else ("conv3", [0, 5, 9])
    images = random_images(5, 16, 16) if kind == "classifier" else random_images(5, 36, 48)
    calls = []
    rows = top_activations(model, images, blob, units, k=3,
                           progress=lambda done, total: calls.append((done, total)))
    expected = plain_search(model, images, blob, units, 3)
    for unit, row in zip(units, rows):
        assert [(r.unit, r.image_index, r.position) for r in row] == \
            [(unit, i, p) for _, i, p in expected[unit]]
        np.testing.assert_allclose([r.value for r in row], [-v for v, _, _ in expected[unit]],
                                   rtol=1e-6)
    assert calls == [(i, 5) for i in range(1, 6)]


def test_fields_are_brought_back_to_image_pixels():
    model = tiny_detector()                     # 36 x 48 images scaled by 4/3
    row, = top_activations(model, random_images(1, 36, 48), "conv3", [2], k=1)
    y, x = row[0].position
    # conv3: size 18, stride 4, offset -7 in input pixels
    x1, y1 = -7 + 4 * x, -7 + 4 * y
    expected = (x1 * 0.75, y1 * 0.75, (x1 + 18) * 0.75 - 1, (y1 + 18) * 0.75 - 1)
    np.testing.assert_allclose(row[0].box, expected)
    classifier = colour_model()                 # 32 x 24 images resized to 16 x 16
    row, = top_activations(classifier, random_images(1, 32, 24), "pool", [0], k=1)
    y, x = row[0].position
    np.testing.assert_allclose(row[0].box, ((2 * x - 1) * 1.5, (2 * y - 1) * 2,
                                            (2 * x + 3) * 1.5 - 1, (2 * y + 3) * 2 - 1))


def test_crop_fills_outside_the_image_with_grey():
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    patch = crop_field(image, (-1, 2, 1, 5))
    assert patch.shape == (4, 3, 3)
    np.testing.assert_array_equal(patch[:2, 1:], image[2:4, 0:2])
    assert (patch[:, 0] == OUTSIDE).all() and (patch[2:] == OUTSIDE).all()
    assert (crop_field(image, (7, 7, 9, 8)) == OUTSIDE).all()


def test_picture_has_a_row_per_unit_and_the_patches():
    images = [square_image((250, 90, 90), 6, 6, 4), square_image((90, 90, 250), 2, 2, 4)]
    picture = top_patches(colour_model(), images, "pool", [0, 1], k=3, size=32)
    # 2 rows of 1 label + 3 cells, 32 pixels each, 4 pixels apart
    assert picture.size == (4 * 32 + 3 * 4, 2 * 32 + 4)
    pixels = np.asarray(picture)
    red_patch, blue_patch = pixels[8:20, 36 + 10:36 + 22], pixels[44:56, 36 + 10:36 + 22]
    assert (red_patch[..., 0] > 200).mean() > 0.5 and (blue_patch[..., 2] > 200).mean() > 0.5
    assert (pixels[:32, 36 + 2 * 36:] == 255).all()   # unit 0 has 2 images for k = 3


def test_bad_units_blob_and_k_are_named():
    model = colour_model()
    images = random_images(1, 16, 16)
    with pytest.raises(DataError, match=r"blob 'pool' has 2 channels; units must be in 0..1, "
                                        r"found \[2\]"):
        top_activations(model, images, "pool", [0, 2])
    with pytest.raises(DataError, match=r"blob 'fc' has none: .*\(blobs with a receptive "
                                        r"field: data, colour, pool\)"):
        top_activations(model, images, "fc", [0])
    with pytest.raises(DataError, match="k must be at least 1, found 0"):
        top_activations(model, images, "pool", [0], k=0)
    with pytest.raises(DataError, match="no images to search"):
        top_activations(model, [], "pool", [0])


@pytest.mark.gpu
def test_gpu_matches_cpu():
    images = random_images(3, 36, 48)
    rows = [top_activations(tiny_detector(device), images, "conv4", [1, 7], k=2)
            for device in (None, Device("gpu", 0))]
    for cpu, gpu in zip(*rows):
        assert [(r.image_index, r.position) for r in gpu] == \
            [(r.image_index, r.position) for r in cpu]
        np.testing.assert_allclose([r.value for r in gpu], [r.value for r in cpu], rtol=1e-4)
