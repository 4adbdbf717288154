"""PriorBox (Caffe-SSD): one feature map's boxes against values computed by
hand; SSD300's six layers against a plain transcription of Caffe-SSD's
forward loop (step and image size given or read from the bottoms, step_h /
step_w, img_h / img_w, clip, one or four variances, duplicate ratios); the
GPU path host-run and on a GPU; the errors (no prior, bad ratios, a
variance list of the wrong length, ...)."""
import math

import numpy as np
import pytest

from netdef.errors import NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, setup_layer
from tests.kernel_harness import compare_devices, run_gpu_path_on_host


def spec(fields):
    return f'name: "pb" type: "PriorBox" bottom: "feat" bottom: "data" prior_box_param {{ {fields} }}'


def run(fields, feature_hw, image_hw, dtype=np.float64):
    layer = build_layer(spec(fields), dtype=dtype)
    bottoms, tops = setup_layer(layer, [np.zeros((1, 2) + feature_hw),
                                        np.zeros((1, 3) + image_hw)])
    layer.forward(bottoms, tops)
    return layer, tops[0].data


def test_one_feature_map_by_hand():
    # 2 x 2 map of a 16 x 16 image: step 8, centres 4 and 12. min 4, max 9,
    # ratio 2 with flip: priors 4x4, 6x6 (sqrt(4 * 9)), 4*sqrt2 x 4/sqrt2,
    # 4/sqrt2 x 4*sqrt2.
    fields = ("min_size: 4 max_size: 9 aspect_ratio: 2 flip: true variance: 0.1 "
              "variance: 0.1 variance: 0.2 variance: 0.2")
    layer, top = run(fields, (2, 2), (16, 16))
    assert top.shape == (1, 2, 2 * 2 * 4 * 4)
    boxes = top[0, 0].reshape(2, 2, 4, 4) * 16   # (h, w, prior, coordinate) in pixels
    r = math.sqrt(2)
    np.testing.assert_allclose(boxes[0, 0], [[2, 2, 6, 6],
                                             [1, 1, 7, 7],
                                             [4 - 2 * r, 4 - r, 4 + 2 * r, 4 + r],
                                             [4 - r, 4 - 2 * r, 4 + r, 4 + 2 * r]], rtol=1e-12)
    np.testing.assert_allclose(boxes[0, 1, 0], [10, 2, 14, 6], rtol=1e-12)   # x centre 12
    np.testing.assert_allclose(boxes[1, 0, 1], [1, 9, 7, 15], rtol=1e-12)    # y centre 12
    np.testing.assert_allclose(boxes[1, 1, 0], [10, 10, 14, 14], rtol=1e-12)
    variances = top[0, 1].reshape(-1, 4)
    np.testing.assert_allclose(variances, np.tile([0.1, 0.1, 0.2, 0.2], (16, 1)), rtol=1e-7)


def test_clip_offset_and_one_variance_by_hand():
    # 1 x 1 map of a 10 x 20 (h x w) image, step 5 (given), offset 0: the
    # centre is (0, 0); a 4 x 4 box reaches -2 and is clipped to 0.
    layer, top = run("min_size: 4 clip: true step: 5 offset: 0 variance: 0.3", (1, 1), (10, 20))
    np.testing.assert_allclose(top[0, 0], [0, 0, 2 / 20, 2 / 10], rtol=1e-12)
    np.testing.assert_allclose(top[0, 1], 0.3, rtol=1e-7)
    _, unclipped = run("min_size: 4 step: 5 offset: 0", (1, 1), (10, 20))
    np.testing.assert_allclose(unclipped[0, 0], [-2 / 20, -2 / 10, 2 / 20, 2 / 10], rtol=1e-12)
    np.testing.assert_allclose(unclipped[0, 1], 0.1, rtol=1e-7)  # no variance given: 0.1


def caffe_ssd_forward(layer_hw, image_hw, step_hw, min_sizes, max_sizes, given_ratios, flip,
                      clip, variances, offset):
    """Caffe-SSD's PriorBoxLayer::Forward_cpu, transcribed loop by loop."""
    ratios = [1.0]
    for ar in given_ratios:
        if any(abs(ar - known) < 1e-6 for known in ratios):
            continue
        ratios.append(ar)
        if flip:
            ratios.append(1.0 / ar)
    (lh, lw), (ih, iw), (sh, sw) = layer_hw, image_hw, step_hw
    out = []
    for h in range(lh):
        for w in range(lw):
            cx, cy = (w + offset) * sw, (h + offset) * sh
            for s, m in enumerate(min_sizes):
                sizes = [(m, m)]
                if max_sizes:
                    side = math.sqrt(m * max_sizes[s])
                    sizes.append((side, side))
                for ar in ratios:
                    if abs(ar - 1.0) < 1e-6:
                        continue
                    sizes.append((m * math.sqrt(ar), m / math.sqrt(ar)))
                for bw, bh in sizes:
                    out += [(cx - bw / 2.0) / iw, (cy - bh / 2.0) / ih,
                            (cx + bw / 2.0) / iw, (cy + bh / 2.0) / ih]
    out = np.array(out)
    if clip:
        out = np.minimum(np.maximum(out, 0.0), 1.0)
    var = np.tile(variances if len(variances) == 4 else variances * 4, len(out) // 4)
    return np.stack([out, var])[None]


SSD300 = [  # feature size, min, max, ratios, step
    (38, 30, 60, (2,), 8), (19, 60, 111, (2, 3), 16), (10, 111, 162, (2, 3), 32),
    (5, 162, 213, (2, 3), 64), (3, 213, 264, (2,), 100), (1, 264, 315, (2,), 300)]


@pytest.mark.parametrize("size,low,high,ratios,step", SSD300)
def test_ssd300_layers_match_caffe_ssd_loop(size, low, high, ratios, step):
    fields = (f"min_size: {low} max_size: {high} "
              + "".join(f"aspect_ratio: {r} " for r in ratios)
              + f"flip: true clip: false variance: 0.1 variance: 0.1 variance: 0.2 "
              f"variance: 0.2 step: {step} offset: 0.5")
    _, top = run(fields, (size, size), (300, 300))
    expected = caffe_ssd_forward((size, size), (300, 300), (step, step), [low], [high],
                                 ratios, True, False, [0.1, 0.1, 0.2, 0.2], 0.5)
    assert top.shape == (1, 2, size * size * (2 + 2 * len(ratios)) * 4)
    np.testing.assert_allclose(top, expected, rtol=1e-6, atol=1e-7)


OTHER_CASES = [
    # fields, feature hw, image hw, expected step hw, image hw the layer uses
    ("min_size: 8 min_size: 20 aspect_ratio: 2 aspect_ratio: 2.0000001 aspect_ratio: 0.5 "
     "flip: false", (3, 5), (24, 40), (8, 8), (24, 40)),
    ("min_size: 8 aspect_ratio: 3 img_h: 30 img_w: 50 step_h: 7 step_w: 9 clip: true",
     (4, 6), (24, 40), (7, 9), (30, 50)),
    ("min_size: 8 img_size: 64", (4, 2), (24, 40), (16, 32), (64, 64)),
]


@pytest.mark.parametrize("fields,feature,image,step,used_image", OTHER_CASES)
def test_other_settings_match_caffe_ssd_loop(fields, feature, image, step, used_image):
    layer, top = run(fields, feature, image)
    expected = caffe_ssd_forward(feature, used_image, step, layer.min_sizes, layer.max_sizes,
                                 [float(np.float32(r)) for r in
                                  layer.param.prior_box_param.aspect_ratio],
                                 layer.param.prior_box_param.flip, "clip: true" in fields,
                                 [0.1], layer.offset)
    np.testing.assert_allclose(top, expected, rtol=1e-6, atol=1e-7)


def test_duplicate_ratios_are_ignored():
    layer, _ = run("min_size: 8 aspect_ratio: 2 aspect_ratio: 2 aspect_ratio: 0.5", (1, 1),
                   (8, 8))
    assert layer.ratios == [1.0, 2.0, 0.5] and layer.num_priors == 3


def test_float32_top():
    _, top = run("min_size: 30 max_size: 60 aspect_ratio: 2 step: 8", (4, 4), (32, 32),
                 dtype=np.float32)
    assert top.dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_path_on_host(dtype):
    run_gpu_path_on_host(spec("min_size: 30 max_size: 60 aspect_ratio: 2 step: 8"),
                         [np.zeros((1, 2, 4, 5)), np.zeros((1, 3, 32, 40))], dtype=dtype,
                         backward=False)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_matches_cpu(dtype):
    compare_devices(spec("min_size: 30 max_size: 60 aspect_ratio: 2 aspect_ratio: 3 step: 8 "
                         "clip: true"),
                    [np.zeros((1, 2, 38, 38)), np.zeros((1, 3, 300, 300))], dtype=dtype,
                    backward=False)


@pytest.mark.parametrize("fields,message", [
    ("aspect_ratio: 2", "needs at least one min_size; without one the layer produces no prior"),
    ("min_size: 4 aspect_ratio: 0", "aspect_ratio 0 produces no prior box"),
    ("min_size: 4 aspect_ratio: -2", "aspect_ratio -2 produces no prior box"),
    ("min_size: 4 aspect_ratio: 2 aspect_ratio: inf", "aspect_ratio inf produces no prior box"),
    ("min_size: 4 aspect_ratio: nan", r"aspect_ratio nan produces no prior box \(a ratio must "
                                      r"be a positive finite number"),
    ("max_size: 60 aspect_ratio: 2 flip: true", "needs at least one min_size"),
    ("min_size: 4 variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 variance: 0.3",
     r"variance: expected 1 or 4 values \(or none: 0.1\), found 5: \[0.1"),
    ("min_size: 4 variance: 0.1 variance: -0.1 variance: 0.2 variance: 0.2",
     "variance values must be > 0"),
    ("min_size: 4 variance: 0.1 variance: 0.2", r"variance: expected 1 or 4 values .*found 2"),
    ("min_size: 4 variance: 0.1 variance: 0.1 variance: 0.2",
     r"variance: expected 1 or 4 values .*found 3"),
    ("min_size: 4 variance: 0", "variance values must be > 0"),
    ("min_size: 0", "min_size must be > 0, found 0"),
    ("min_size: 4 min_size: 8 max_size: 9", "1 max_size values for 2 min_size values"),
    ("min_size: 4 max_size: 4", "max_size 4 must be larger than its min_size 4"),
    ("min_size: 4 img_size: 30 img_h: 30", "either img_size or img_h/img_w, not both"),
    ("min_size: 4 step_h: 8", "step_h and step_w go together; found only step_h"),
    ("min_size: 4 step: 0", r"step must be > 0"),
])
def test_bad_parameters_are_named_errors(fields, message):
    with pytest.raises(NetDefinitionError, match=f"layer 'pb' \\(type PriorBox\\).*{message}"):
        run(fields, (2, 2), (16, 16))


@pytest.mark.parametrize("fields", ["min_size: 8 aspect_ratio: 1",
                                    "min_size: 8 aspect_ratio: 1 aspect_ratio: 1.0000001",
                                    "min_size: 8 aspect_ratio: 1 flip: false"])
def test_ratios_that_repeat_1_leave_the_square_prior(fields):
    # Deduplication (within 1e-6, Caffe-SSD's) and flipping never empty the
    # ratio list: 1 stays, and the min_size's square box is the one prior.
    layer, top = run(fields, (1, 1), (16, 16))
    assert layer.ratios == [1.0] and layer.num_priors == 1
    np.testing.assert_allclose(top[0, 0], [0.25, 0.25, 0.75, 0.75], rtol=1e-12)


def test_feature_map_without_cells_is_refused():
    layer = build_layer(spec("min_size: 4"))
    with pytest.raises(ShapeError, match=r"layer 'pb'.*bottom 'feat' expected a feature map "
                                         r"of at least 1 x 1, found shape \(1, 2, 0, 3\)"):
        setup_layer(layer, [np.zeros((1, 2, 0, 3)), np.zeros((1, 3, 16, 16))])


def test_bottoms_need_four_axes():
    layer = build_layer(spec("min_size: 4"))
    with pytest.raises(ShapeError, match=r"layer 'pb'.*bottom 'data' expected 4 axes "
                                         r"\(N, C, H, W\) of the image, found shape \(1, 16\)"):
        setup_layer(layer, [np.zeros((1, 2, 2, 2)), np.zeros((1, 16))])
