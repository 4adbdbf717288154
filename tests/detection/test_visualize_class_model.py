"""Class model visualization: the closed form on a linear net, a rising
objective on a smooth net, jitter and blur, a detector's pinned RoI, the
Gaussian blur against a plain reference, errors."""
import numpy as np
import pytest

from detection.visualize.class_model import FIRST_STEP, class_model, gaussian_blur
from detection.visualize.model import VisualModel
from netdef.device import Device
from netdef.errors import DataError
from netdef.net import Net
from netdef.schema import read_net

LINEAR = """
name: "linear"
force_backward: true
layer { name: "input" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 5 dim: 6 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "constant" value: 0.25 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

SMOOTH = """
name: "smooth"
force_backward: true
layer { name: "input" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.05 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "tanh" type: "TanH" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def model_of(text, dtype=np.float64, device=None, seed=1):
    return VisualModel(Net(text, "TEST", dtype=dtype, seed=seed, device=device))


def test_linear_net_follows_the_closed_form():
    """S = w . I + b: each step I <- (1 - 2 l2 lr) I + lr w, so from I = 0,
    I_t = (1 - (1 - 2 l2 lr)^t) w / (2 l2) and J_t = w . I_t + b - l2 |I_t|^2."""
    model = model_of(LINEAR)
    weight, bias = (p.data for p in model.net.params["fc"])
    w, b = weight[2].reshape(3, 5, 6), float(bias[2])
    lr, l2, steps = 0.5, 0.05, 12
    image, objectives = class_model(model, 2, steps=steps, lr=lr, l2=l2)
    inputs = [(1 - (1 - 2 * l2 * lr) ** t) * w / (2 * l2) for t in range(steps + 1)]
    expected = [float((w * i).sum()) + b - l2 * float((i * i).sum()) for i in inputs[:steps]]
    np.testing.assert_allclose(objectives, expected, rtol=1e-10, atol=1e-12)
    bgr = inputs[steps].transpose(1, 2, 0) + np.asarray(model.pixel_means)
    np.testing.assert_array_equal(image, np.clip(np.rint(bgr[:, :, ::-1]), 0, 255))
    assert image.dtype == np.uint8 and image.shape == (5, 6, 3)


def test_default_lr_makes_the_first_step_the_stated_size():
    model = model_of(LINEAR)
    w = model.net.params["fc"][0].data[1]
    _, objectives = class_model(model, 1, steps=2, l2=0)
    lr = FIRST_STEP / np.sqrt(np.mean(w * w))
    # J_1 - J_0 = w . (lr w) with l2 = 0
    assert objectives[1] - objectives[0] == pytest.approx(lr * float((w * w).sum()))


def test_smooth_net_objective_rises_at_every_step():
    model = model_of(SMOOTH)
    reported = []
    image, objectives = class_model(model, "class 1", steps=40, l2=1e-4,
                                    callback=lambda step, j: reported.append((step, j)))
    assert reported == list(enumerate(objectives)) and len(objectives) == 40
    assert np.all(np.diff(objectives) > 0)
    assert objectives[-1] > objectives[0] + 1


def test_jitter_rolls_the_gradient_back():
    """A linear net whose weight is the same at every position cannot tell a
    rolled image from the image: jitter changes nothing. Weights that vary
    by position see the shifts."""
    uniform = model_of(LINEAR)
    weight = uniform.net.params["fc"][0].data
    weight.reshape(3, 3, 30)[...] = weight.reshape(3, 3, 30)[:, :, :1].copy()
    plain = class_model(uniform, 0, steps=5, lr=0.5, l2=0.05)
    jittered = class_model(uniform, 0, steps=5, lr=0.5, l2=0.05, jitter=2)
    np.testing.assert_array_equal(jittered[0], plain[0])
    np.testing.assert_allclose(jittered[1], plain[1], rtol=1e-12)
    varied = model_of(LINEAR)
    assert not np.array_equal(class_model(varied, 0, steps=5, lr=0.5, l2=0.05, jitter=2)[0],
                              class_model(varied, 0, steps=5, lr=0.5, l2=0.05)[0])


def test_blur_every_changes_the_result():
    model = model_of(SMOOTH)
    plain = class_model(model, 0, steps=4, lr=20.0, l2=0)[0]
    blurred = class_model(model, 0, steps=4, lr=20.0, l2=0, blur_every=2, blur_sigma=1.0)[0]
    assert np.abs(plain.astype(int) - blurred).max() > 0


def reference_blur(images, sigma):
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    n, c, h, w = images.shape
    out = np.zeros_like(images)

    def reflect(i, size):
        return -i if i < 0 else 2 * (size - 1) - i if i >= size else i

    for y in range(h):
        for x in range(w):
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    out[:, :, y, x] += taps[dy + radius] * taps[dx + radius] * \
                        images[:, :, reflect(y + dy, h), reflect(x + dx, w)]
    return out


def test_gaussian_blur_matches_a_plain_reference():
    images = np.random.default_rng(0).normal(size=(1, 2, 9, 7))
    np.testing.assert_allclose(gaussian_blur(images, 0.8), reference_blur(images, 0.8),
                               rtol=1e-12, atol=1e-12)
    flat = np.full((1, 3, 4, 5), 7.0)
    np.testing.assert_allclose(gaussian_blur(flat, 2.0), flat)   # radius past the edge
    np.testing.assert_array_equal(gaussian_blur(images, 0), images)


def test_detector_pins_one_roi_over_the_whole_input():
    param = read_net("prototxt/rfcn_tiny.prototxt")
    param.force_backward = True
    test_input = next(lp for lp in param.layer if lp.type == "Input")
    test_input.input_param.shape[0].dim[2:] = [48, 64]   # a smaller canvas
    model = VisualModel(Net(param, "TEST", seed=2))
    image, objectives = class_model(model, 3, steps=2, lr=1e4)
    assert image.shape == (48, 64, 3) and len(objectives) == 2
    np.testing.assert_array_equal(model.net.blobs["rois"].data, [[0, 0, 0, 63, 47]])
    assert model.net.blobs["data"].shape == (1, 3, 48, 64)


def test_unknown_class_lists_the_classes():
    with pytest.raises(DataError, match=r"no class 'zebra' \(classes: class 0, class 1"):
        class_model(model_of(LINEAR), "zebra", steps=1)
    with pytest.raises(DataError, match=r"class index 3 is out of range 0..2 \(classes: "):
        class_model(model_of(LINEAR), 3, steps=1)


def test_bad_settings_are_named():
    with pytest.raises(DataError, match=r"need steps >= 1, lr > 0 .* found steps 0, lr -1"):
        class_model(model_of(LINEAR), 0, steps=0, lr=-1)


def test_a_score_without_gradient_at_the_blank_image_asks_for_lr():
    dead = SMOOTH.replace("TanH", "ReLU").replace("value: 0.1", "value: 0")
    with pytest.raises(DataError, match="'class 0' has no gradient at the blank image"):
        class_model(model_of(dead), 0, steps=1)


@pytest.mark.gpu
def test_gpu_matches_cpu():
    runs = [class_model(model_of(SMOOTH, device=device), 1, steps=5, l2=1e-4)
            for device in (None, Device("gpu", 0))]
    np.testing.assert_allclose(runs[1][1], runs[0][1], rtol=1e-9)
    np.testing.assert_array_equal(runs[1][0], runs[0][0])
