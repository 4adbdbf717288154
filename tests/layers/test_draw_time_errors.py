"""Images that fail when training draws them (issue 14): a truncated and a
bit-flipped JPEG whose headers pass the dataset's load-time check. Under
on_error "raise" a DataError names the file and the position stays; under
"skip" the next example in entry order that loads takes the failing one's
place, with one DataWarning per image, the same in every run, with or
without prefetching, after a resume and through the GPU staging. Also the
pixel modes of ``decode_rgb``."""
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from detection.datasets import load_dataset
from layers.input_pipeline.minibatch import BatchPlan, MinibatchBuilder, select_entries
from layers.input_pipeline.preprocess import decode_rgb
from netdef.errors import DataError, DataWarning
from tests.detection.test_bad_dataset_inputs import bit_flipped_jpeg, truncated_jpeg
from tests.detection.test_datasets_voc import make_voc, obj
from tests.layers.test_roi_data import e2e_spec, make, run, same

# 40x30 images, one box each, told apart by x1 (1-based in the XML).
BOXES = {"a": 2, "b": 4, "c": 6, "d": 8}


def voc_with_bad_images(folder, bad=("b", "c")):
    images = {i: (40, 30, [obj("cat", (x1, 3, x1 + 20, 25))]) for i, x1 in BOXES.items()}
    root = make_voc(folder, images, {"trainval": list(BOXES)}, classes=("cat", "dog"))
    breakers = {"b": truncated_jpeg, "c": bit_flipped_jpeg, "a": truncated_jpeg,
                "d": bit_flipped_jpeg}
    for image_id in bad:
        with open(os.path.join(root, "JPEGImages", f"{image_id}.jpg"), "wb") as f:
            f.write(breakers[image_id]())
    return root


@pytest.fixture(scope="module")
def skip_set(tmp_path_factory):
    """Loaded in skip mode: the header check lets both bad images in."""
    root = voc_with_bad_images(tmp_path_factory.mktemp("voc"))
    dataset = load_dataset(root, "trainval", on_error="skip", cache=False)
    assert len(dataset) == 4 and dataset.on_error == "skip"
    return dataset


def record_id(batch):
    """The id of the image a one-image end-to-end batch came from."""
    scale = batch["im_info"][0, 2]
    x1 = round(float(batch["gt_boxes"][0, 0]) / scale) + 1
    return {v: k for k, v in BOXES.items()}[x1]


def builder(dataset, on_error):
    entries = select_entries(dataset.records, use_flipped=False)
    return MinibatchBuilder(dataset.records, entries, scales=(32,), max_size=64,
                            on_error=on_error, name="layer 'data'")


def plan(example):
    return BatchPlan((example,), 0, 0, 0, 1, (5, 2, 0, 0))


def test_skip_replaces_a_failing_image_by_the_next_that_loads(skip_set):
    build = builder(skip_set, "skip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = build(plan(1))                     # b fails, then c: d takes the place
        again = build(plan(2))                     # c is remembered: no second warning
    messages = [str(w.message) for w in caught if w.category is DataWarning]
    assert len(messages) == 2
    assert "b.jpg" in messages[0] and "c.jpg" in messages[1]
    assert all("skipped image" in m and "next training image" in m for m in messages)
    assert record_id(batch) == record_id(again) == "d"
    reference = builder(skip_set, "skip")(plan(3))
    for key in batch:
        np.testing.assert_array_equal(batch[key], reference[key])


def test_raise_names_the_file_and_how_to_skip(skip_set):
    with pytest.raises(DataError, match=r"cannot read image '.*b\.jpg': OSError.*"
                                        r"--on-error skip.*--check-images"):
        builder(skip_set, "raise")(plan(1))


def test_no_image_that_loads_is_a_data_error(tmp_path):
    root = voc_with_bad_images(tmp_path, bad=tuple(BOXES))
    dataset = load_dataset(root, "trainval", on_error="skip", cache=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(DataError, match="no training image could be loaded; 4 failed"):
            builder(dataset, "skip")(plan(0))


def spec(prefetch=True):
    return e2e_spec(use_flipped=False, prefetch=prefetch)


def quiet_run(layer, tops, count):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return run(layer, tops, count)


def test_the_layer_trains_on_under_skip_repeatably(skip_set):
    runs = []
    for prefetch in (True, False):
        layer, tops = make(spec(prefetch), skip_set)
        runs.append(quiet_run(layer, tops, 8))          # two epochs
        layer.close()
    assert same(*runs)
    assert {record_id(b) for b in runs[0]} == {"a", "d"}
    # A resume from the state after 3 batches continues identically.
    layer, tops = make(spec(), skip_set)
    quiet_run(layer, tops, 3)
    state = layer.random_state()
    resumed, resumed_tops = make(spec(), skip_set)
    resumed.set_random_state(state)
    assert same(quiet_run(resumed, resumed_tops, 5), runs[0][3:])
    layer.close()
    resumed.close()


def test_the_dataset_policy_can_be_overridden_to_raise(skip_set):
    layer, tops = make(spec(), None)
    layer.set_dataset(skip_set, on_error="raise")
    for _ in range(4):              # one epoch holds both bad images
        position = (layer.epoch, layer.cursor)
        try:
            layer.forward([], tops)
        except DataError as exc:
            assert ".jpg" in str(exc) and "cannot read image" in str(exc)
            assert (layer.epoch, layer.cursor) == position      # not consumed
            break
    else:
        raise AssertionError("no DataError in an epoch with two bad images")
    layer.close()
    with pytest.raises(DataError, match="on_error must be 'raise' or 'skip', found 'ignore'"):
        layer.set_dataset(skip_set, on_error="ignore")


def test_skip_through_the_gpu_staging(skip_set):
    """On a (stand-in) GPU the replaced minibatches are staged as on the CPU."""
    from bench.standin_cupy import installed
    from netdef.device import CPU, Device, to_numpy
    from netdef.gradcheck import build_layer, setup_layer
    results = []
    with installed():
        for device in (CPU, Device("gpu", 0)):
            layer = build_layer(spec(), device=device, dtype=np.float32)
            _, tops = setup_layer(layer, [])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DataWarning)
                layer.set_dataset(skip_set)
                out = []
                for _ in range(4):
                    layer.forward([], tops)
                    out.append([np.array(to_numpy(t.data)) for t in tops])
            results.append(out)
            layer.close()
    for cpu, gpu in zip(*results):
        for a, b in zip(cpu, gpu):
            np.testing.assert_array_equal(a, b)


# -- pixel modes --------------------------------------------------------------------------------

def ramp(dtype=np.uint16, top=4095):
    return (np.arange(12 * 16).reshape(12, 16) * top // (12 * 16 - 1)).astype(dtype)


@pytest.mark.parametrize("mode_array", [ramp(), ramp(np.int32), ramp(top=65535)])
def test_sixteen_bit_grey_is_scaled_not_clipped(mode_array):
    rgb = decode_rgb(Image.fromarray(mode_array))
    expected = mode_array.astype(np.float64) * 255 / 65535
    for channel in range(3):
        np.testing.assert_allclose(rgb[:, :, channel], expected, rtol=1e-6, atol=1e-5)


def test_eight_bit_modes_are_pillows_rgb():
    grey = Image.fromarray(ramp(np.uint8, 255))
    np.testing.assert_array_equal(decode_rgb(grey), np.asarray(grey.convert("RGB")))
    palette = grey.convert("P")
    np.testing.assert_array_equal(decode_rgb(palette), np.asarray(palette.convert("RGB")))


@pytest.mark.parametrize("image, match", [
    (Image.fromarray(ramp(np.float32)), "mode F"),
    (Image.fromarray(ramp(np.int32, 70000)), r"mode I\) from 0 to 70000: outside"),
    (Image.fromarray(ramp(np.int32) - 5), r"from -5 to .*outside"),
])
def test_modes_without_a_known_range_are_refused(image, match):
    with pytest.raises(ValueError, match=match):
        decode_rgb(image)
