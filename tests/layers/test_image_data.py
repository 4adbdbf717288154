"""ImageData: images of a list file against the pixels written, cycling and
shuffled epochs, resizing, grey images, transforms, resuming, every error."""
import numpy as np
import pytest
from PIL import Image

from netdef.device import Device, to_numpy
from netdef.errors import DataError, NetDefinitionError
from netdef.gradcheck import build_layer, setup_layer


def write_images(folder, count=5, size=(6, 7), labels=None):
    """PNG images with random RGB pixels (varying sizes when ``size`` is a
    list) and a list file; returns (list path, [RGB arrays], labels)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    labels = list(range(10, 10 + count)) if labels is None else labels
    arrays, lines = [], []
    for i in range(count):
        h, w = size[i] if isinstance(size, list) else size
        rgb = rng.integers(0, 256, size=(h, w, 3)).astype(np.uint8)
        Image.fromarray(rgb).save(folder / f"im {i}.png")
        arrays.append(rgb)
        lines.append(f"im {i}.png {labels[i]}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return str(folder / "list.txt"), arrays, labels


def spec(source, folder, fields="", transform="", batch=2):
    return (f'name: "im" type: "ImageData" top: "data" top: "label" '
            f'image_data_param {{ source: "{source}" root_folder: "{folder}/" '
            f'batch_size: {batch} {fields} }} transform_param {{ {transform} }}')


def make(text, phase="TRAIN", dtype=np.float32, seed=0, device=None):
    kwargs = {"device": device} if device is not None else {}
    layer = build_layer(text, phase=phase, dtype=dtype, seed=seed, **kwargs)
    _, tops = setup_layer(layer, [])
    return layer, tops


def forward(layer, tops):
    layer.forward([], tops)
    return to_numpy(tops[0].data).copy(), to_numpy(tops[1].data).copy()


def bgr_chw(rgb):
    return rgb[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)


def test_images_and_labels_come_in_list_order_and_cycle(tmp_path):
    source, arrays, labels = write_images(tmp_path, count=5)
    layer, tops = make(spec(source, tmp_path, batch=3))
    assert tops[0].shape == (3, 3, 6, 7) and tops[1].shape == (3,)
    served = []
    for _ in range(4):                     # 12 images: two passes and a bit
        data, label = forward(layer, tops)
        served += list(zip(data, label))
    for k, (image, label) in enumerate(served):
        np.testing.assert_array_equal(image, bgr_chw(arrays[k % 5]))
        assert label == labels[k % 5]
    assert layer.position == 12


def test_shuffle_gives_a_fresh_permutation_every_epoch(tmp_path):
    source, arrays, labels = write_images(tmp_path, count=6)
    layer, tops = make(spec(source, tmp_path, "shuffle: true", batch=4))
    order = []
    for _ in range(6):                     # 24 images: four epochs
        order += [labels.index(int(v)) for v in forward(layer, tops)[1]]
    epochs = [order[i:i + 6] for i in range(0, 24, 6)]
    assert all(sorted(e) == list(range(6)) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1
    again, tops2 = make(spec(source, tmp_path, "shuffle: true", batch=4))
    assert [labels.index(int(v)) for v in forward(again, tops2)[1]] == order[:4]


def test_grey_images_and_resizing(tmp_path):
    source, arrays, _ = write_images(tmp_path, count=2, size=[(6, 7), (9, 4)])
    layer, tops = make(spec(source, tmp_path, "is_color: false new_height: 5 new_width: 8"))
    data, _ = forward(layer, tops)
    assert data.shape == (2, 1, 5, 8)
    for image, rgb in zip(data, arrays):
        grey = Image.fromarray(rgb).convert("L").resize((8, 5), Image.BILINEAR)
        np.testing.assert_array_equal(image[0], np.asarray(grey, np.float32))


def crops_of(image, size):
    """Every size x size crop of (C, H, W) ``image``, plain and mirrored."""
    _, h, w = image.shape
    found = []
    for y in range(h - size + 1):
        for x in range(w - size + 1):
            crop = image[:, y:y + size, x:x + size]
            found += [crop, crop[:, :, ::-1]]
    return found


def test_train_crops_and_mirrors_each_image_then_subtracts_and_scales(tmp_path):
    source, arrays, _ = write_images(tmp_path, count=4, size=[(6, 7), (5, 5), (8, 6), (5, 9)])
    transform = "crop_size: 4 mirror: true mean_value: 100 mean_value: 50 mean_value: 0 scale: 0.5"
    layer, tops = make(spec(source, tmp_path, "shuffle: false", transform, batch=4))
    means = np.array([100, 50, 0], np.float32)[:, None, None]
    mirrored = 0
    for _ in range(3):
        data, _ = forward(layer, tops)
        assert data.shape == (4, 3, 4, 4)
        for image, rgb in zip(data, arrays):
            matches = [k for k, c in enumerate(crops_of(bgr_chw(rgb), 4))
                       if np.array_equal((c - means) * np.float32(0.5), image)]
            assert matches, "every output is a crop of its image"
            mirrored += matches[0] % 2
    assert 0 < mirrored < 12


def test_test_phase_takes_the_centre_crop(tmp_path):
    source, arrays, _ = write_images(tmp_path, count=2, size=(7, 8))
    layer, tops = make(spec(source, tmp_path, transform="crop_size: 4"), phase="TEST")
    data, _ = forward(layer, tops)
    for image, rgb in zip(data, arrays):
        np.testing.assert_array_equal(image, bgr_chw(rgb)[:, 1:5, 2:6])


def test_batches_of_one_take_each_images_size(tmp_path):
    source, arrays, _ = write_images(tmp_path, count=2, size=[(6, 7), (9, 4)])
    layer, tops = make(spec(source, tmp_path, batch=1))
    assert forward(layer, tops)[0].shape == (1, 3, 6, 7)
    assert forward(layer, tops)[0].shape == (1, 3, 9, 4)


def test_rand_skip_starts_further_down_the_list(tmp_path):
    source, _, labels = write_images(tmp_path, count=6)
    skips = set()
    for seed in range(8):
        layer, tops = make(spec(source, tmp_path, "rand_skip: 4", batch=1), seed=seed)
        skips.add(layer.position)
        assert forward(layer, tops)[1][0] == labels[layer.position - 1]
    assert skips <= {0, 1, 2, 3} and len(skips) > 1


def test_random_state_resumes_with_the_same_batches(tmp_path):
    source, _, _ = write_images(tmp_path, count=5)
    text = spec(source, tmp_path, "shuffle: true", "crop_size: 3 mirror: true", batch=3)
    layer, tops = make(text, seed=4)
    forward(layer, tops)
    state = layer.random_state()
    expected = [forward(layer, tops) for _ in range(3)]
    resumed, tops2 = make(text, seed=4)
    resumed.set_random_state(state)
    for want in expected:
        got = forward(resumed, tops2)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_jpeg_images_and_float64(tmp_path):
    rgb = np.full((5, 6, 3), (200, 100, 20), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    (tmp_path / "list.txt").write_text("a.jpg 3\n")
    layer, tops = make(spec(tmp_path / "list.txt", tmp_path, batch=1), dtype=np.float64)
    data, label = forward(layer, tops)
    assert data.dtype == np.float64 and label.tolist() == [3.0]
    np.testing.assert_allclose(data[0], bgr_chw(rgb), atol=3)


def test_in_a_net_train_and_test(tmp_path):
    from netdef.net import Net
    source, arrays, labels = write_images(tmp_path, count=4, labels=[0, 1, 1, 0])
    text = (f"layer {{ {spec(source, tmp_path, transform='crop_size: 4 scale: 0.01')} }}\n"
            'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
            'inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }\n'
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" '
            'top: "loss" }')
    for phase in ("TRAIN", "TEST"):
        net = Net(text, phase)
        out = net.forward()
        net.backward()
        assert np.isfinite(out.loss) and net.blobs["data"].shape == (2, 3, 4, 4)
        assert net.blobs["label"].data.tolist() == [0, 1]
    np.testing.assert_array_equal(net.blobs["data"].data[0],
                                  bgr_chw(arrays[0])[:, 1:5, 1:5] * np.float32(0.01))


# -- errors --------------------------------------------------------------------------

def test_error_missing_list_file(tmp_path):
    with pytest.raises(DataError, match=r"layer 'im'.*cannot read the image list '.*nope.txt'"):
        make(spec(tmp_path / "nope.txt", tmp_path))


def test_error_empty_list(tmp_path):
    (tmp_path / "list.txt").write_text("\n  \n")
    with pytest.raises(DataError, match="image list '.*list.txt' lists no images"):
        make(spec(tmp_path / "list.txt", tmp_path))


def test_error_bad_label_names_the_line(tmp_path):
    source, _, _ = write_images(tmp_path, count=2)
    with open(source, "a") as handle:
        handle.write("im 0.png cat\n")
    with pytest.raises(DataError, match=r"list.txt' line 3: expected 'path label' with an "
                                        "integer label, found 'im 0.png cat'"):
        make(spec(source, tmp_path))


def test_error_missing_image_names_the_list_file_and_line(tmp_path):
    source, _, _ = write_images(tmp_path, count=3)
    (tmp_path / "im 2.png").unlink()
    layer, tops = make(spec(source, tmp_path, batch=2))
    forward(layer, tops)
    with pytest.raises(DataError, match=r"image '.*im 2.png' \(image list '.*list.txt' line 3\): "
                                        "no such file"):
        forward(layer, tops)


def test_error_images_of_different_sizes_without_resize_or_crop(tmp_path):
    source, _, _ = write_images(tmp_path, count=2, size=[(6, 7), (9, 4)])
    layer, tops = make(spec(source, tmp_path, batch=2))
    with pytest.raises(DataError, match=r"im 1.png' \(image list '.*' line 2\) is 9 x 4 pixels.*"
                                        "must have one size unless cropped"):
        forward(layer, tops)


def test_error_new_height_without_new_width(tmp_path):
    source, _, _ = write_images(tmp_path, count=1)
    with pytest.raises(NetDefinitionError, match="new_height and new_width must be set together"):
        make(spec(source, tmp_path, "new_height: 4"))


def test_error_batch_size_zero(tmp_path):
    source, _, _ = write_images(tmp_path, count=1)
    with pytest.raises(NetDefinitionError, match="batch_size must be positive, found 0"):
        make(spec(source, tmp_path, batch=0))


def test_error_rand_skip_beyond_the_list(tmp_path):
    source, _, _ = write_images(tmp_path, count=2)
    with pytest.raises(DataError, match=r"rand_skip drew \d+ lines to skip, but image list "
                                        ".* has only 2"):
        make(spec(source, tmp_path, "rand_skip: 1000000"))


@pytest.mark.gpu
def test_tops_land_on_the_gpu(tmp_path):
    import cupy
    source, arrays, labels = write_images(tmp_path, count=2)
    layer, tops = make(spec(source, tmp_path), device=Device("gpu", 0))
    layer.forward([], tops)
    assert isinstance(tops[0].data, cupy.ndarray) and isinstance(tops[1].data, cupy.ndarray)
    np.testing.assert_array_equal(tops[0].data.get()[1], bgr_chw(arrays[1]))
    assert tops[1].data.get().tolist() == labels[:2]
