"""Tests of detection.visualize.gradients: closed-form gradients of small hand-built nets,
the guided / deconvnet rules on a ReLU chain, Grad-CAM's peak on a one-object image, CAM,
the detector path (pinned RoI, untouched box branch) and every error."""
import numpy as np
import pytest

from detection.visualize.gradients import (cam, deconvnet, default_grad_cam_blob, grad_cam,
                                           grad_cam_blobs, guided_backprop, saliency)
from detection.visualize.model import Target, VisualModel
from layers.input_pipeline.preprocess import PIXEL_MEANS
from netdef.device import Device
from netdef.errors import DataError
from netdef.net import Net
from netdef.schema import read_net

H, W = 4, 5


def net_text(body, shape=(1, 3, H, W)):
    dims = " ".join(f"dim: {d}" for d in shape)
    return (f'name: "hand-built"\nlayer {{ name: "input" type: "Input" top: "data" '
            f'input_param {{ shape {{ {dims} }} }} }}\n{body}\n'
            'layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }\n')


def conv(name, bottom, outputs, kernel=1, pad=0):
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
            f'convolution_param {{ num_output: {outputs} kernel_size: {kernel} pad: {pad} }} }}\n')


def relu(blob):
    return f'layer {{ name: "{blob}_relu" type: "ReLU" bottom: "{blob}" top: "{blob}" }}\n'


def fc(bottom, outputs=3):
    return (f'layer {{ name: "fc" type: "InnerProduct" bottom: "{bottom}" top: "fc" '
            f'inner_product_param {{ num_output: {outputs} }} }}\n')


def build(text, params, plan=True, device=None):
    """A VisualModel of ``text`` with the given parameter arrays, by layer."""
    model = VisualModel(Net(text, "TEST", force_backward=True, plan=plan, device=device))
    for layer, arrays in params.items():
        for blob, array in zip(model.net.params[layer], arrays):
            blob.data[...] = model.net.device.asarray(np.asarray(array, np.float32))
    return model


def image(seed=0, shape=(H, W)):
    return np.random.default_rng(seed).integers(0, 256, shape + (3,), dtype=np.uint8)


def data_of(img):
    """The data blob VisualModel feeds for ``img`` (same size as the blob)."""
    bgr = img[:, :, ::-1].astype(np.float64) - np.asarray(PIXEL_MEANS)
    return bgr.transpose(2, 0, 1)


def rng_params(seed, *shapes):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1, s) for s in shapes]


def class_target(index):
    return Target("fc", (0, index), None, f"class {index}")


# -- saliency: closed forms ---------------------------------------------------------------

def test_saliency_of_a_linear_net_is_the_weight_row():
    weight, bias = rng_params(1, (3, 3 * H * W), (3,))
    model = build(net_text(fc("data")), {"fc": [weight, bias]})
    heat = saliency(model, image(), class_target(2))
    assert heat.shape == (H, W) and heat.dtype == np.float32
    np.testing.assert_allclose(heat, np.abs(weight[2].reshape(3, H, W)).max(axis=0), rtol=1e-6)


@pytest.mark.parametrize("plan", [True, False])
def test_saliency_through_conv_and_relu(plan):
    w1, b1, w2, b2 = rng_params(2, (2, 3, 1, 1), (2,), (3, 2 * H * W), (3,))
    text = net_text(conv("conv", "data", 2) + relu("conv") + fc("conv"))
    model = build(text, {"conv": [w1, b1], "fc": [w2, b2]}, plan=plan)
    img = image(3)
    x = data_of(img)
    z = np.einsum("oc,chw->ohw", w1[:, :, 0, 0], x) + b1[:, None, None]
    assert 0 < (z > 0).mean() < 1, "the ReLU should cut some units"
    upstream = w2[1].reshape(2, H, W) * (z > 0)
    expected = np.abs(np.einsum("oc,ohw->chw", w1[:, :, 0, 0], upstream)).max(axis=0)
    np.testing.assert_allclose(saliency(model, img, class_target(1)), expected, rtol=1e-5,
                               atol=1e-6)


def test_saliency_default_target_is_the_top_class():
    weight, bias = rng_params(4, (3, 3 * H * W), (3,))
    model = build(net_text(fc("data")), {"fc": [weight, bias]})
    img = image(5)
    top = int(np.argmax(weight @ data_of(img).ravel() + bias))
    np.testing.assert_allclose(saliency(model, img),
                               saliency(model, img, class_target(top)))


def test_saliency_of_one_unit_of_a_feature_map():
    w1, b1, w2, b2 = rng_params(3, (2, 3, 1, 1), (2,), (3, 2 * H * W), (3,))
    text = net_text(conv("conv", "data", 2) + relu("conv") + fc("conv"))
    b1 = b1 + 20
    model = build(text, {"conv": [w1, b1], "fc": [w2, b2]})
    img = np.full((H, W, 3), 120, np.uint8)
    z = np.einsum("oc,chw->ohw", w1[:, :, 0, 0], data_of(img)) + b1[:, None, None]
    assert z[1, 2, 3] > 0
    expected = np.zeros((H, W))
    expected[2, 3] = np.abs(w1[1, :, 0, 0]).max()
    heat = saliency(model, img, Target("conv", (0, 1, 2, 3), None, "unit"))
    np.testing.assert_allclose(heat, expected, rtol=1e-6)


# -- guided backprop and deconvnet: the ReLU rules on a chain ------------------------------

def chain_reference(params, x, index, mode):
    """The input gradient of score ``index`` through conv-ReLU-conv-ReLU-fc,
    each ReLU's backward as ``mode`` has it."""
    (w1, b1), (w2, b2), (w3, _) = params
    z1 = np.einsum("oc,chw->ohw", w1[:, :, 0, 0], x) + b1[:, None, None]
    a1 = np.maximum(z1, 0)
    z2 = np.einsum("oc,chw->ohw", w2[:, :, 0, 0], a1) + b2[:, None, None]

    def through_relu(dy, z):
        if mode == "normal":
            return dy * (z > 0)
        if mode == "guided":
            return dy * (z > 0) * (dy > 0)
        return dy * (dy > 0)                                       # deconvnet

    g = through_relu(w3[index].reshape(z2.shape), z2)
    g = through_relu(np.einsum("oc,ohw->chw", w2[:, :, 0, 0], g), z1)
    return np.einsum("oc,ohw->chw", w1[:, :, 0, 0], g)


@pytest.mark.parametrize("plan", [True, False])
@pytest.mark.parametrize("method,mode", [(saliency, "normal"), (guided_backprop, "guided"),
                                         (deconvnet, "deconvnet")])
def test_relu_rules_on_a_chain(plan, method, mode):
    shapes = [((4, 3, 1, 1), (4,)), ((3, 4, 1, 1), (3,)), ((3, 3 * H * W), (3,))]
    params = [rng_params(10 + i, *s) for i, s in enumerate(shapes)]
    text = net_text(conv("c1", "data", 4) + relu("c1") + conv("c2", "c1", 3) + relu("c2")
                    + fc("c2"))
    model = build(text, dict(zip(["c1", "c2", "fc"], params)), plan=plan)
    img = image(6)
    expected = np.abs(chain_reference(params, data_of(img), 0, mode)).max(axis=0)
    np.testing.assert_allclose(method(model, img, class_target(0)), expected, rtol=1e-5,
                               atol=1e-5)


def test_guided_and_deconvnet_differ_from_saliency():
    shapes = [((4, 3, 1, 1), (4,)), ((3, 4, 1, 1), (3,)), ((3, 3 * H * W), (3,))]
    params = [rng_params(20 + i, *s) for i, s in enumerate(shapes)]
    text = net_text(conv("c1", "data", 4) + relu("c1") + conv("c2", "c1", 3) + relu("c2")
                    + fc("c2"))
    model = build(text, dict(zip(["c1", "c2", "fc"], params)))
    img = image(7)
    maps = [f(model, img, class_target(0)) for f in (saliency, guided_backprop, deconvnet)]
    assert not np.allclose(maps[0], maps[1]) and not np.allclose(maps[1], maps[2])
    # the mode lasts one call: saliency afterwards is the plain gradient again
    np.testing.assert_allclose(saliency(model, img, class_target(0)), maps[0])


# -- Grad-CAM: closed form and the blob it reads ------------------------------------------

def test_grad_cam_closed_form_reads_the_post_relu_value():
    w1, b1, w2, b2 = rng_params(30, (4, 3, 1, 1), (4,), (3, 4 * H * W), (3,))
    text = net_text(conv("conv", "data", 4) + relu("conv") + fc("conv"))
    model = build(text, {"conv": [w1, b1 * 100], "fc": [w2, b2]})
    img = image(8)
    z = np.einsum("oc,chw->ohw", w1[:, :, 0, 0], data_of(img)) + 100 * b1[:, None, None]
    assert 0 < (z > 0).mean() < 1
    activations = np.maximum(z, 0)
    # dS/dA of the ReLU's output is the fc row, unmasked by the ReLU
    alpha = w2[2].reshape(4, H, W).mean(axis=(1, 2))
    expected = np.maximum(np.einsum("k,khw->hw", alpha, activations), 0)
    heat = grad_cam(model, img, class_target(2), blob="conv")
    assert heat.shape == (H, W) and heat.dtype == np.float32
    assert expected.max() > 0 and heat.max() == pytest.approx(1.0)
    np.testing.assert_allclose(heat, expected / expected.max(), rtol=1e-5, atol=1e-6)


def test_grad_cam_blobs_and_default():
    text = net_text(conv("c1", "data", 4) + relu("c1") + conv("c2", "c1", 3) + fc("c2"))
    model = build(text, {})
    assert grad_cam_blobs(model) == ["c1", "c2"]
    assert default_grad_cam_blob(model) == "c2"


ONE_OBJECT = """
layer { name: "red" type: "Convolution" bottom: "data" top: "red"
        convolution_param { num_output: 2 kernel_size: 3 pad: 1 } }
layer { name: "red_relu" type: "ReLU" bottom: "red" top: "red" }
layer { name: "pool" type: "Pooling" bottom: "red" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "feat" type: "Convolution" bottom: "pool" top: "feat"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "feat_relu" type: "ReLU" bottom: "feat" top: "feat" }
layer { name: "gap" type: "Pooling" bottom: "feat" top: "gap"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "gap" top: "fc"
        inner_product_param { num_output: 2 } }
"""


def one_object_model(**kwargs):
    """A net whose channel 0 fires on red pixels (R - G), channel 1 on the
    rest; class 1 ("red thing") reads channel 0, class 0 channel 1."""
    red = np.zeros((2, 3, 3, 3))
    red[0, 2, 1, 1], red[0, 1, 1, 1] = 1.0, -1.0               # BGR input: R - G
    red[1, 1, 1, 1], red[1, 2, 1, 1] = 1.0, -1.0
    params = {"red": [red, [-20.0, -20.0]],
              "feat": [np.eye(2).reshape(2, 2, 1, 1), [0.0, 0.0]],
              "fc": [[[0.0, 1.0], [1.0, 0.0]], [0.0, 0.0]]}
    return build(net_text(ONE_OBJECT, (1, 3, 32, 40)), params, **kwargs)


def one_object_image():
    img = np.full((32, 40, 3), 120, np.uint8)
    img[8:18, 22:32] = (230, 30, 30)                            # box x 22..31, y 8..17
    return img


def test_grad_cam_peak_lies_inside_the_object():
    model = one_object_model()
    img = one_object_image()
    target = model.target(img)
    assert target.index == (0, 1)                               # "red thing" wins
    heat = grad_cam(model, img, target)                         # default blob: feat
    assert default_grad_cam_blob(model) == "feat"
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert 8 <= y <= 17 and 22 <= x <= 31
    outside = np.ones(heat.shape, bool)
    outside[8:18, 22:32] = False
    assert heat[8:18, 22:32].mean() > 3 * heat[outside].mean()
    assert heat[:, :15].max() < 0.05                             # nothing far from it


# -- CAM ------------------------------------------------------------------------------------

def test_cam_closed_form_and_grad_cam_agree():
    model = one_object_model()
    img = one_object_image()
    heat = cam(model, img, class_target(1))
    model.forward(model.prepare(img))
    features = model.blob_data("feat")[0].astype(np.float64)
    raw = np.einsum("k,khw->hw", [1.0, 0.0], features)         # fc row 1
    expected = model.to_image(raw.astype(np.float32), model.prepare(img))
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    np.testing.assert_allclose(heat, expected, atol=1e-6)
    # global average pooling + fc: Grad-CAM's weights are the fc row / (h w)
    np.testing.assert_allclose(grad_cam(model, img, class_target(1)), heat, atol=1e-6)


def test_cam_needs_global_average_pooling_and_inner_product():
    model = build(net_text(fc("data")), {})
    with pytest.raises(DataError, match=r"CAM needs a net ending in global average pooling \+ "
                                        r"InnerProduct; 'fc' comes from layer 'fc' \(type "
                                        r"InnerProduct\), which reads layer 'input' \(type Input\)"):
        cam(model, image(), class_target(0))


# -- errors ---------------------------------------------------------------------------------

def test_grad_cam_blob_errors_list_the_valid_blobs():
    model = one_object_model()
    img = one_object_image()
    valid = r"\(Grad-CAM blobs: red, pool, feat, gap\)"
    with pytest.raises(DataError, match=r"the net has no blob 'conv5' " + valid):
        grad_cam(model, img, blob="conv5")
    with pytest.raises(DataError, match=r"blob 'fc' has shape \(1, 2\), not a convolutional "
                                        r"\(N, C, H, W\) blob " + valid):
        grad_cam(model, img, blob="fc")
    with pytest.raises(DataError, match=r"blob 'data' is a net input, not a feature map " + valid):
        grad_cam(model, img, blob="data")


def test_target_index_outside_the_blob():
    model = build(net_text(fc("data")), {})
    with pytest.raises(DataError, match=r"target index \(0, 7\) does not fit blob 'fc' of "
                                        r"shape \(1, 3\)"):
        saliency(model, image(), class_target(7))


# -- a detector: RoI pinned, other branches silent --------------------------------------

@pytest.fixture(scope="module")
def detector():
    param = read_net("prototxt/rfcn_tiny.prototxt")
    return VisualModel(Net(param, "TEST", force_backward=True), scale=96, max_size=128)


def detector_image():
    return np.random.default_rng(11).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def test_detector_grad_cam_reads_the_trunk_inside_the_roi(detector):
    img = detector_image()
    assert default_grad_cam_blob(detector) == "conv5"
    target = detector.target(img, detection=0, threshold=0.16)
    heat = grad_cam(detector, img, target)
    assert heat.shape == (48, 64) and 0 <= heat.min() and heat.max() <= 1
    diff = np.abs(detector.blob_diff("conv5")[0]).sum(axis=0)     # (12, 16) at stride 8
    ys, xs = np.nonzero(diff)
    x1, y1, x2, y2 = target.rois[0, 1:] / 8.0
    assert ys.size and xs.min() >= np.floor(x1) - 1 and xs.max() <= np.ceil(x2) + 1
    assert ys.min() >= np.floor(y1) - 1 and ys.max() <= np.ceil(y2) + 1
    with pytest.raises(DataError, match="no gradient of 'cls_score' reaches blob 'rpn/output'"):
        grad_cam(detector, img, target, blob="rpn/output")


def test_detector_maps_ignore_stale_diffs(detector):
    img = detector_image()
    target = detector.target(img, detection=1, threshold=0.16)
    first = saliency(detector, img, target)
    detector.net.forward(**detector.prepare(img).inputs)
    detector.net.backward(bbox_pred=np.ones(detector.net.blobs["bbox_pred"].shape, np.float32))
    np.testing.assert_array_equal(saliency(detector, img, target), first)
    assert first.shape == (48, 64) and first.max() > 0


def test_detector_has_no_cam(detector):
    img = detector_image()
    target = detector.target(img, threshold=0.16)
    with pytest.raises(DataError, match=r"'cls_score' comes from layer 'ave_cls_score_rois' "
                                        r"\(type Pooling\); use grad_cam"):
        cam(detector, img, target)


# -- the GPU path ---------------------------------------------------------------------------

@pytest.mark.gpu
def test_every_method_on_the_gpu_matches_the_cpu():
    img = one_object_image()
    cpu, gpu = one_object_model(), one_object_model(device=Device("gpu", 0))
    for method in (saliency, guided_backprop, deconvnet, grad_cam, cam):
        np.testing.assert_allclose(method(gpu, img, class_target(1)),
                                   method(cpu, img, class_target(1)), rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_detector_grad_cam_on_the_gpu_matches_the_cpu(detector):
    img = detector_image()
    param = read_net("prototxt/rfcn_tiny.prototxt")
    gpu = VisualModel(Net(param, "TEST", force_backward=True, device=Device("gpu", 0)),
                      scale=96, max_size=128)
    for name, blobs in detector.net.params.items():
        for mine, theirs in zip(gpu.net.params[name], blobs):
            mine.data[...] = gpu.net.device.asarray(theirs.data)
    target = detector.target(img, detection=0, threshold=0.16)
    for method in (saliency, guided_backprop, grad_cam):
        np.testing.assert_allclose(method(gpu, img, target), method(detector, img, target),
                                   rtol=1e-3, atol=1e-4)
