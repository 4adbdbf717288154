"""transform_param (Caffe's DataTransformer) over a batch: crops, mirrors,
means and scale against a per-pixel reference; image decoding; every error."""
import io

import numpy as np
import pytest
from PIL import Image

from layers.input_pipeline.caffe_transform import (CaffeTransform, decode_image, pad_images,
                                                   read_mean_file)
from netdef import caffe_pb2
from netdef.errors import DataError, NetDefinitionError
from netdef.schema import parse_text


def param(text=""):
    return parse_text(text, caffe_pb2.TransformationParameter(), "<transform_param>")


def write_mean(path, mean):
    """A .binaryproto as Caffe's compute_image_mean writes it: (1, C, H, W)."""
    c, h, w = mean.shape
    blob = caffe_pb2.BlobProto(num=1, channels=c, height=h, width=w, data=mean.ravel())
    path.write_bytes(blob.SerializeToString())
    return str(path)


def reference(images, sizes, draws, crop, mean_image=None, mean_values=(), scale=1.0):
    """Caffe's per-pixel loop: out[c, y, x'] = (in[c, h_off + y, w_off + x] - mean) * scale
    with x' = width - 1 - x when mirrored, mean read at the source pixel."""
    h_off, w_off, mirrored = draws
    outs = []
    for n in range(len(images)):
        channels = images.shape[1]
        height, width = (crop, crop) if crop else tuple(sizes[n])
        out = np.zeros((channels, height, width), dtype=np.float32)
        for c in range(channels):
            for y in range(height):
                for x in range(width):
                    sy, sx = h_off[n] + y, w_off[n] + x
                    value = np.float32(images[n, c, sy, sx])
                    if mean_image is not None:
                        value -= mean_image[c, sy, sx]
                    elif len(mean_values):
                        value -= np.float32(mean_values[c if len(mean_values) > 1 else 0])
                    tx = width - 1 - x if mirrored[n] else x
                    out[c, y, tx] = value * np.float32(scale)
        outs.append(out)
    return np.stack(outs)


def run(transform, images, sizes=None, seed=7):
    sizes = np.tile(images.shape[2:], (len(images), 1)) if sizes is None else sizes
    draws = transform.draw(np.random.default_rng(seed), sizes)
    out = transform(images, np.random.default_rng(seed), np.float32, sizes)
    return out, draws


def pixels(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape).astype(np.uint8)


@pytest.mark.parametrize("text, phase", [
    ("", "TRAIN"),
    ("scale: 0.00390625", "TRAIN"),
    ("crop_size: 4 mirror: true", "TRAIN"),
    ("crop_size: 4", "TEST"),
    ("crop_size: 5 mirror: true mean_value: 104 mean_value: 117 mean_value: 123 scale: 0.5",
     "TRAIN"),
    ("crop_size: 6 mean_value: 128", "TEST"),
    ("mirror: true mean_value: 10", "TEST"),
])
def test_transform_matches_caffes_loop(text, phase):
    images = pixels((4, 3, 6, 7))
    transform = CaffeTransform(param(text), phase)
    out, draws = run(transform, images)
    p = param(text)
    expected = reference(images, np.tile((6, 7), (4, 1)), draws, p.crop_size,
                         mean_values=list(p.mean_value), scale=p.scale)
    np.testing.assert_array_equal(out, expected)


def test_mean_file_is_read_at_the_crop_source_pixels(tmp_path):
    mean = np.random.default_rng(1).uniform(0, 255, size=(3, 6, 7)).astype(np.float32)
    text = f'crop_size: 3 mirror: true scale: 2 mean_file: "{write_mean(tmp_path / "m.binaryproto", mean)}"'
    transform = CaffeTransform(param(text), "TRAIN")
    images = pixels((5, 3, 6, 7))
    out, draws = run(transform, images)
    expected = reference(images, np.tile((6, 7), (5, 1)), draws, 3, mean_image=mean, scale=2)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_crops_of_images_of_different_sizes_stay_inside_each_image():
    images = [pixels((1, 5 + i, 9 - i), seed=i) for i in range(4)]
    batch, sizes = pad_images(images)
    assert batch.shape == (4, 1, 8, 9)
    np.testing.assert_array_equal(sizes, [[5, 9], [6, 8], [7, 7], [8, 6]])
    transform = CaffeTransform(param("crop_size: 5 mirror: true"), "TRAIN")
    for seed in range(5):
        out, draws = run(transform, batch, sizes, seed)
        assert (draws[0] <= sizes[:, 0] - 5).all() and (draws[1] <= sizes[:, 1] - 5).all()
        np.testing.assert_array_equal(out, reference(batch, sizes, draws, 5))


def test_test_phase_crops_the_centre_rounding_down():
    transform = CaffeTransform(param("crop_size: 3"), "TEST")
    h_off, w_off, mirrored = transform.draw(np.random.default_rng(0), [[6, 7], [3, 8]])
    assert list(h_off) == [1, 0] and list(w_off) == [2, 2] and not mirrored.any()


def test_train_offsets_cover_every_position_and_mirror_is_drawn_in_both_phases():
    sizes = np.tile((6, 5), (2000, 1))
    h_off, w_off, mirrored = CaffeTransform(param("crop_size: 4 mirror: true"), "TRAIN").draw(
        np.random.default_rng(0), sizes)
    assert set(h_off) == {0, 1, 2} and set(w_off) == {0, 1}
    assert 0.4 < mirrored.mean() < 0.6
    # Caffe draws the mirror whenever mirror is set, in TEST too.
    _, _, mirrored = CaffeTransform(param("mirror: true"), "TEST").draw(
        np.random.default_rng(0), sizes)
    assert 0.4 < mirrored.mean() < 0.6


def test_float_input_and_float64_output():
    images = np.random.default_rng(0).normal(size=(2, 2, 4, 4))
    transform = CaffeTransform(param("mean_value: 0.5 mean_value: -1 scale: 3"), "TEST")
    out = transform(images, np.random.default_rng(0), np.float64)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, (images - np.array([0.5, -1])[None, :, None, None]) * 3)


def test_read_mean_file_accepts_3d_and_4d_shapes(tmp_path):
    mean = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(read_mean_file(write_mean(tmp_path / "a", mean)), mean)
    blob = caffe_pb2.BlobProto(data=mean.ravel())
    blob.shape.dim.extend([2, 3, 4])
    (tmp_path / "b").write_bytes(blob.SerializeToString())
    np.testing.assert_array_equal(read_mean_file(str(tmp_path / "b")), mean)


# -- decoding ------------------------------------------------------------------------

def encoded(array, mode, fmt="PNG"):
    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, fmt)
    return out.getvalue()


def test_decode_gives_bgr_grey_or_the_images_own_channels(tmp_path):
    rgb = pixels((5, 4, 3))
    data = encoded(rgb, "RGB")
    np.testing.assert_array_equal(decode_image(data), rgb[:, :, ::-1])
    assert decode_image(data, color=None).shape == (5, 4, 3)
    grey = decode_image(data, color=False)
    luma = rgb @ np.array([299, 587, 114]) / 1000
    assert grey.shape == (5, 4, 1) and np.abs(grey[:, :, 0] - luma).max() <= 1
    single = pixels((5, 4))
    np.testing.assert_array_equal(decode_image(encoded(single, "L"), color=None)[:, :, 0], single)
    assert decode_image(encoded(single, "L"), color=True).shape == (5, 4, 3)
    path = tmp_path / "x.png"
    path.write_bytes(data)
    assert decode_image(str(path), size=(8, 6)).shape == (8, 6, 3)


def test_decode_decode_color_follows_force_color_and_force_gray():
    assert CaffeTransform(param("force_color: true"), "TRAIN").decode_color is True
    assert CaffeTransform(param("force_gray: true"), "TRAIN").decode_color is False
    assert CaffeTransform(param(""), "TRAIN").decode_color is None


# -- errors --------------------------------------------------------------------------

def test_error_mean_file_and_mean_value_together(tmp_path):
    path = write_mean(tmp_path / "m", np.zeros((1, 2, 2), np.float32))
    with pytest.raises(NetDefinitionError, match="layer 'd'.*both mean_file and mean_value"):
        CaffeTransform(param(f'mean_file: "{path}" mean_value: 1'), "TRAIN", "layer 'd'")


def test_error_force_color_and_force_gray_together():
    with pytest.raises(NetDefinitionError, match="both force_color and force_gray"):
        CaffeTransform(param("force_color: true force_gray: true"), "TRAIN")


def test_error_unreadable_or_malformed_mean_file(tmp_path):
    with pytest.raises(DataError, match=r"layer 'd'.*mean_file '.*missing': no such file"):
        CaffeTransform(param(f'mean_file: "{tmp_path / "missing"}"'), "TRAIN", "layer 'd'")
    (tmp_path / "bad").write_bytes(b"\xff\xff\xff")
    with pytest.raises(DataError, match=r"mean_file '.*bad': not a binary BlobProto \(.binaryproto\)"):
        read_mean_file(str(tmp_path / "bad"))
    flat = caffe_pb2.BlobProto(data=[1.0, 2.0])
    (tmp_path / "flat").write_bytes(flat.SerializeToString())
    with pytest.raises(DataError, match=r"expected a \(1, C, H, W\) mean image, found shape \(2,\)"):
        read_mean_file(str(tmp_path / "flat"))


def test_error_mean_value_count():
    transform = CaffeTransform(param("mean_value: 1 mean_value: 2"), "TRAIN", "layer 'd'")
    with pytest.raises(NetDefinitionError, match=r"mean_value must be given once or once per "
                                                 r"channel \(3\), found 2"):
        transform.check(3, [[4, 4]], str)


def test_error_image_smaller_than_the_crop():
    transform = CaffeTransform(param("crop_size: 5"), "TRAIN", "layer 'd'")
    with pytest.raises(DataError, match=r"layer 'd': image 1 is 4 x 6 pixels \(height x width\), "
                                        "smaller than crop_size 5"):
        transform.check(3, [[5, 5], [4, 6]], lambda i: f"image {i}")


def test_error_images_of_different_sizes_without_a_crop():
    transform = CaffeTransform(param(""), "TRAIN", "layer 'd'")
    with pytest.raises(DataError, match="image 2 is 5 x 6 pixels.*image 0 is 5 x 5.*set crop_size"):
        transform.check(3, [[5, 5], [5, 5], [5, 6]], lambda i: f"image {i}")


def test_error_image_does_not_match_the_mean(tmp_path):
    path = write_mean(tmp_path / "m", np.zeros((3, 4, 4), np.float32))
    transform = CaffeTransform(param(f'mean_file: "{path}" crop_size: 2'), "TRAIN", "layer 'd'")
    with pytest.raises(DataError, match=r"image 0 is 3 x 5 x 4 .*mean_file's image is 3 x 4 x 4"):
        transform.check(3, [[5, 4]], lambda i: f"image {i}")
    with pytest.raises(DataError, match=r"image 0 is 1 x 4 x 4 .*is 3 x 4 x 4"):
        transform.check(1, [[4, 4]], lambda i: f"image {i}")


def test_error_images_with_different_channel_counts():
    with pytest.raises(DataError, match=r"layer 'd': image 1 has 1 channel\(s\), image 0 has 3"):
        pad_images([pixels((3, 2, 2)), pixels((1, 2, 2))], "layer 'd'")


def test_error_undecodable_or_missing_image(tmp_path):
    with pytest.raises(DataError, match="record 3: cannot decode the image"):
        decode_image(b"not an image", what="record 3")
    with pytest.raises(DataError, match="pic: no such file"):
        decode_image(str(tmp_path / "nothing.png"), what="pic")
