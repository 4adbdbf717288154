"""WindowData: the window-file parser and its errors, crops against a plainly
written per-region reference of Caffe's rule, sampling fractions, mirror,
the native form's box targets, determinism, layer errors, the GPU path."""
import math

import numpy as np
import pytest
from PIL import Image

from layers.boxes import bbox_transform
from layers.window_data import (BBOX_STDS, crop_geometry, read_window_file, region_crops,
                                write_window_file)
from netdef.device import Device, to_numpy
from netdef.errors import DataError, NetDefinitionError
from netdef.gradcheck import build_layer, setup_layer


class Record:
    def __init__(self, path, height, width, boxes, labels):
        self.path, self.height, self.width = str(path), height, width
        self.boxes, self.labels = np.array(boxes, np.float32), np.array(labels)


def write_dataset(folder, sizes=((40, 50), (36, 30))):
    """PNG images of random pixels, one or two objects each, and proposals:
    returns (records, proposals, BGR images (H, W, 3))."""
    rng = np.random.default_rng(0)
    records, images, proposals = [], [], []
    gts = [([[5, 6, 30, 25], [20, 18, 45, 38]], [1, 2]), ([[2, 3, 20, 30]], [3])]
    for i, ((h, w), (boxes, labels)) in enumerate(zip(sizes, gts)):
        rgb = rng.integers(0, 256, size=(h, w, 3)).astype(np.uint8)
        Image.fromarray(rgb).save(folder / f"im{i}.png")
        images.append(rgb[:, :, ::-1])
        records.append(Record(folder / f"im{i}.png", h, w, boxes, labels))
        gt = np.array(boxes, float)
        near = gt[[0] * 3] + [[1, 1, 2, 1], [-2, 0, 0, 1], [0, 2, 1, 0]]
        far = np.array([[0, 0, 3, 4], [w - 6, h - 5, w - 1, h - 1]], float)
        proposals.append(np.clip(np.concatenate([near, far]), 0, [w - 1, h - 1] * 2))
    return records, proposals, images


def spec(source, fields="", transform="crop_size: 8", batch=8, tops=2):
    names = ["data", "label", "bbox_targets", "bbox_weights"][:tops]
    top_text = " ".join(f'top: "{n}"' for n in names)
    return (f'name: "win" type: "WindowData" {top_text} window_data_param {{ source: '
            f'"{source}" batch_size: {batch} {fields} }} transform_param {{ {transform} }}')


def make(text, seed=0, device=None):
    kwargs = {"device": device} if device is not None else {}
    layer = build_layer(text, phase="TRAIN", dtype=np.float64, seed=seed, **kwargs)
    _, tops = setup_layer(layer, [])
    return layer, tops


def forward(layer, tops):
    layer.forward([], tops)
    return [to_numpy(t.data).copy() for t in tops]


@pytest.fixture
def window_file(tmp_path):
    records, proposals, images = write_dataset(tmp_path)
    path = tmp_path / "windows.txt"
    write_window_file(path, records, proposals)
    return str(path), records, images


# -- the parser --------------------------------------------------------------------------------

def test_written_file_parses_back_with_gt_first_and_best_overlaps(window_file):
    path, records, _ = window_file
    parsed = read_window_file(path)
    assert [(p, c, h, w) for p, c, h, w, _ in parsed.images] == [
        (r.path, 3, r.height, r.width) for r in records]
    first = parsed.windows[parsed.windows[:, 0] == 0]
    np.testing.assert_array_equal(first[:2, 1:3], [[1, 1], [2, 1]])
    np.testing.assert_array_equal(first[:2, 3:], records[0].boxes)
    # Window 3 is the first gt box moved by (1, 1, 2, 1): IoU by hand.
    inter = (30 - 6 + 1) * (25 - 7 + 1)
    union = 26 * 20 + 27 * 20 - inter
    assert first[2, 1] == 1 and first[2, 2] == pytest.approx(inter / union, abs=1e-6)
    assert first[-2, 1] == 0 or first[-2, 2] > 0      # class 0 only where nothing overlaps
    assert parsed.lines[0] == 7                        # '# 0', path, 3, h, w, count, window


@pytest.mark.parametrize("text,line,found", [
    ("# 1\na.png\n3\n4\n4\n0\n", 1, "expected '# 0'"),
    ("# 0\na.png\n3\nfour\n4\n0\n", 4, "expected height"),
    ("# 0\na.png\n3\n4\n4\n-1\n", 6, "expected the window count"),
    ("# 0\na.png\n3\n4\n4\n1\n1 0.5 0 0 3\n", 7, "6 numbers"),
    ("# 0\na.png\n3\n4\n4\n1\n1 0.5 0 0 3 x\n", 7, "expected numbers"),
    ("# 0\na.png\n3\n4\n4\n1\n1 0.5 0 0 4 3\n", 7, "x2 <= 3"),
    ("# 0\na.png\n3\n4\n4\n1\n1 1.5 0 0 3 3\n", 7, r"overlap in \[0, 1\]"),
    ("# 0\na.png\n3\n4\n4\n2\n1 0.5 0 0 3 3\n", 7, "announces 2 windows, found 1"),
    ("# 0\na.png\n3\n", 3, "expected height"),
])
def test_parser_errors_name_file_and_line(tmp_path, text, line, found):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=rf"window file '.*bad.txt'.* (line {line}|at line "
                                        rf"{line}).*{found}"):
        read_window_file(str(path))


def test_parser_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DataError, match="'.*empty.txt' lists no images"):
        read_window_file(str(tmp_path / "empty.txt"))
    with pytest.raises(DataError, match="cannot read the window file '.*nope.txt'"):
        read_window_file(str(tmp_path / "nope.txt"))


# -- crops against a plain reference --------------------------------------------------------

def c_round(x):
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def reference_crop(image, box, crop, pad, square, mirror):
    """Caffe's WindowDataLayer crop for one window, written out pixel by pixel."""
    h_img, w_img = image.shape[:2]
    x1, y1, x2, y2 = box
    out = np.zeros((crop, crop, image.shape[2]))
    out_h = out_w = crop
    pad_h = pad_w = 0
    if pad > 0 or square:
        scale = crop / (crop - 2 * pad)
        hh, hw = (y2 - y1 + 1) / 2, (x2 - x1 + 1) / 2
        cx, cy = x1 + hw, y1 + hh
        if square:
            hh = hw = max(hh, hw)
        x1, x2 = c_round(cx - hw * scale), c_round(cx + hw * scale)
        y1, y2 = c_round(cy - hh * scale), c_round(cy + hh * scale)
        uh, uw = y2 - y1 + 1, x2 - x1 + 1
        px1, py1, px2, py2 = max(0, -x1), max(0, -y1), max(0, x2 - w_img + 1), max(0, y2 - h_img + 1)
        x1, x2, y1, y2 = x1 + px1, x2 - px2, y1 + py1, y2 - py2
        sx, sy = crop / uw, crop / uh
        out_w, out_h = c_round((x2 - x1 + 1) * sx), c_round((y2 - y1 + 1) * sy)
        pad_h = c_round(py1 * sy)
        pad_w = c_round(px2 * sx) if mirror else c_round(px1 * sx)
        out_h, out_w = min(out_h, crop - pad_h), min(out_w, crop - pad_w)
    src = image[int(y1):int(y2) + 1, int(x1):int(x2) + 1].astype(float)
    resized = np.zeros((out_h, out_w, image.shape[2]))
    for r in range(out_h):                  # OpenCV INTER_LINEAR, one pixel at a time
        for c in range(out_w):
            fy = (r + 0.5) * src.shape[0] / out_h - 0.5
            fx = (c + 0.5) * src.shape[1] / out_w - 0.5
            y0, x0 = math.floor(fy), math.floor(fx)
            ay, ax = fy - y0, fx - x0
            if y0 < 0:
                y0, ay = 0, 0.0
            if y0 >= src.shape[0] - 1:
                y0, ay = src.shape[0] - 1, 0.0
            if x0 < 0:
                x0, ax = 0, 0.0
            if x0 >= src.shape[1] - 1:
                x0, ax = src.shape[1] - 1, 0.0
            yb, xb = min(y0 + 1, src.shape[0] - 1), min(x0 + 1, src.shape[1] - 1)
            resized[r, c] = ((1 - ay) * ((1 - ax) * src[y0, x0] + ax * src[y0, xb])
                             + ay * ((1 - ax) * src[yb, x0] + ax * src[yb, xb]))
    if mirror:
        resized = resized[:, ::-1]
    out[pad_h:pad_h + out_h, pad_w:pad_w + out_w] = resized
    return out.transpose(2, 0, 1)


@pytest.mark.parametrize("crop,pad,square", [(8, 0, False), (10, 2, False), (9, 0, True),
                                             (12, 3, True)])
def test_crops_match_the_per_region_reference(crop, pad, square):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (23, 31, 3)).astype(np.uint8),
              rng.integers(0, 256, (17, 12, 3)).astype(np.uint8)]
    boxes = np.array([[3, 4, 20, 15], [0, 0, 30, 22], [25, 1, 30, 21], [2, 5, 6, 16],
                      [0, 10, 11, 16], [5, 5, 5, 5]], float)
    index = np.array([0, 0, 0, 1, 1, 1])
    mirror = np.array([False, True, True, False, True, False])
    got = region_crops(images, index, boxes, crop, pad, square, mirror)
    for n in range(len(boxes)):
        want = reference_crop(images[index[n]], boxes[n], crop, pad, square, mirror[n])
        np.testing.assert_allclose(got[n], want, atol=1e-9, err_msg=f"region {n}")


def test_mean_is_subtracted_on_warped_pixels_only_then_scaled():
    image = np.full((20, 20, 3), 100, np.uint8)
    mean = np.array([10.0, 20.0, 30.0])[:, None, None]
    got = region_crops([image], [0], [[0, 0, 9, 9]], 8, 2, False, None, mean, 0.5)
    src, out, pad = crop_geometry([[0, 0, 9, 9]], [[20, 20]], 8, 2)
    top, left = pad[0]
    assert top > 0 and left > 0                    # the window touches the corner
    np.testing.assert_allclose(got[0, :, :top], 0)
    np.testing.assert_allclose(got[0, :, top:, left:],
                               np.broadcast_to((100 - mean) * 0.5, got[0, :, top:, left:].shape))


# -- the layer --------------------------------------------------------------------------------

def test_batch_holds_background_then_foreground_in_the_fractions(window_file):
    path, _, _ = window_file
    layer, tops = make(spec(path, "fg_fraction: 0.25 fg_threshold: 0.5 bg_threshold: 0.3",
                            batch=8))
    assert tops[0].shape == (8, 3, 8, 8)
    parsed = read_window_file(path).windows
    for _ in range(5):
        windows, fg, _, _ = layer.draw(layer.position)
        _, label = forward(layer, tops)
        assert fg.tolist() == [False] * 6 + [True] * 2
        assert (label[:6] == 0).all() and (label[6:] > 0).all()
        # Every drawn window is in the file in its class; background below 0.3.
        for w, is_fg in zip(windows, fg):
            match = (parsed[:, 0] == w[0]) & (parsed[:, 3:] == w[3:]).all(1)
            assert (parsed[match, 2] >= 0.5).any() if is_fg else (parsed[match, 2] < 0.3).any()


def test_crops_of_the_layer_are_the_reference_with_mean(window_file):
    path, records, images = window_file
    layer, tops = make(spec(path, "context_pad: 1", "crop_size: 8 mirror: true "
                                                    "mean_value: 10 mean_value: 20 mean_value: 30"))
    windows, _, _, mirror = layer.draw(0)
    data, _ = forward(layer, tops)
    assert mirror.any() and not mirror.all()
    mean = np.array([10, 20, 30.0])[:, None, None]
    for n, w in enumerate(windows):
        want = reference_crop(images[int(w[0])], w[3:], 8, 1, False, mirror[n])
        mask = np.any(want != 0, axis=0)
        np.testing.assert_allclose(data[n], (want - mean) * mask, atol=1e-9)


def test_mirror_flips_a_window_inside_the_image(window_file):
    path, _, images = window_file
    layer, _ = make(spec(path))
    box = np.array([[0, 1, 1.0, 10, 8, 30, 25]])    # image 0, class 1: inside the image
    plain = layer.crops(box, np.array([False]))
    flipped = layer.crops(box, np.array([True]))
    np.testing.assert_allclose(flipped, plain[..., ::-1])


def test_native_form_gives_per_class_targets(window_file):
    path, records, _ = window_file
    layer, tops = make(spec(path, "fg_fraction: 0.5", "crop_size: 8 mirror: true", tops=4))
    assert tops[2].shape == (8, 4 * 4) == tops[3].shape
    windows, fg, _, mirror = layer.draw(0)
    _, label, targets, weights = forward(layer, tops)
    for n, w in enumerate(windows):
        c = int(label[n])
        if not fg[n]:
            assert not targets[n].any() and not weights[n].any()
            continue
        gt = records[int(w[0])].boxes[records[int(w[0])].labels == c]
        iou = [bbox_transform(w[None, 3:], g[None].astype(float)) for g in gt]
        best = max(zip(gt, iou), key=lambda p: _iou(w[3:], p[0]))[1][0] / BBOX_STDS
        if mirror[n]:
            best[0] = -best[0]
        np.testing.assert_allclose(targets[n, 4 * c:4 * c + 4], best, atol=1e-9)
        assert weights[n].tolist() == [1.0 if k // 4 == c else 0.0 for k in range(16)]


def _iou(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(iw, 0) * max(ih, 0)
    return inter / ((a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
                    - inter)


def test_draws_are_keyed_by_seed_and_position(window_file):
    path, _, _ = window_file
    text = spec(path, transform="crop_size: 8 mirror: true")
    a, ta = make(text, seed=3)
    b, tb = make(text, seed=3)
    c, tc = make(text, seed=4)
    first = [forward(a, ta) for _ in range(3)]
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(first, [forward(b, tb)
                                                               for _ in range(3)]))
    assert not np.array_equal(first[0][0], forward(c, tc)[0])
    resumed, tr = make(text, seed=3)
    resumed.position = 16                           # a snapshot after two batches
    np.testing.assert_array_equal(forward(resumed, tr)[0], first[2][0])


@pytest.mark.parametrize("fields,transform,tops,error,found", [
    ("", "crop_size: 0", 2, NetDefinitionError, "crop_size .* must be positive, found 0"),
    ("context_pad: 4", "crop_size: 8", 2, NetDefinitionError,
     r"context_pad must be below crop_size / 2 \(8\), found 4"),
    ('crop_mode: "round"', "crop_size: 8", 2, NetDefinitionError, "crop_mode must be"),
    ("crop_size: 6", "crop_size: 8", 2, NetDefinitionError, "crop_size .* disagree"),
    ("", "crop_size: 8", 3, NetDefinitionError, "expected 2 tops .* or 4 .* found 3"),
    ("fg_threshold: 1.1", "crop_size: 8", 2, DataError, "no foreground window"),
    ("bg_threshold: 0", "crop_size: 8", 2, DataError, "no background window"),
    ("", "crop_size: 8 mean_value: 1 mean_value: 2", 2, NetDefinitionError,
     r"mean_value must be given once or once per channel \(3\), found 2"),
])
def test_layer_errors(window_file, fields, transform, tops, error, found):
    path, _, _ = window_file
    with pytest.raises(error, match=rf"layer 'win' \(type WindowData\).*{found}"):
        make(spec(path, fields, transform, tops=3 if tops == 3 else 2))


def test_foreground_window_of_class_zero_and_wrong_image_size(tmp_path):
    Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(tmp_path / "a.png")
    bad = tmp_path / "w.txt"
    bad.write_text(f"# 0\n{tmp_path}/a.png\n3\n6\n5\n2\n0 0.9 0 0 3 3\n1 0.1 0 0 2 2\n")
    with pytest.raises(DataError, match=r"w.txt' line 7: .* must have a class > 0"):
        make(spec(str(bad)))
    bad.write_text(f"# 0\n{tmp_path}/a.png\n3\n7\n5\n2\n1 0.9 0 0 3 3\n1 0.1 0 0 2 2\n")
    layer, tops = make(spec(str(bad)))
    with pytest.raises(DataError, match=r"a.png' \(window file .*w.txt' line 1\): the window "
                                        "file says 5 x 7, the image is 5 x 6"):
        layer.forward([], tops)


@pytest.mark.gpu
def test_tops_land_on_the_gpu_equal_to_the_cpu(window_file):
    import cupy
    path, _, _ = window_file
    text = spec(path, "context_pad: 1", "crop_size: 8 mirror: true", tops=4)
    cpu, tc = make(text)
    gpu, tg = make(text, device=Device("gpu", 0))
    want = forward(cpu, tc)
    gpu.forward([], tg)
    assert all(isinstance(t.data, cupy.ndarray) for t in tg)
    for w, t in zip(want, tg):
        np.testing.assert_array_equal(t.data.get(), w)


def test_mean_file_is_read_at_the_canvas_position_offset_to_its_centre(window_file, tmp_path):
    from netdef import caffe_pb2
    path, _, images = window_file
    mean = np.random.default_rng(2).uniform(0, 50, (3, 12, 12))
    blob = caffe_pb2.BlobProto(num=1, channels=3, height=12, width=12, data=mean.ravel())
    (tmp_path / "m.binaryproto").write_bytes(blob.SerializeToString())
    layer, tops = make(spec(path, "context_pad: 1", f'crop_size: 8 scale: 0.5 mean_file: '
                                                    f'"{tmp_path / "m.binaryproto"}"'))
    windows, _, _, mirror = layer.draw(0)
    data, _ = forward(layer, tops)
    off = (12 - 8) // 2                               # Caffe's mean_off
    for n, w in enumerate(windows):
        want = reference_crop(images[int(w[0])], w[3:], 8, 1, False, mirror[n])
        mask = np.any(want != 0, axis=0)
        np.testing.assert_allclose(data[n], (want - mean[:, off:off + 8, off:off + 8]) * mask
                                   * 0.5, atol=1e-5)
    (tmp_path / "s.binaryproto").write_bytes(caffe_pb2.BlobProto(
        num=1, channels=3, height=6, width=6, data=np.zeros(108)).SerializeToString())
    with pytest.raises(DataError, match=r"mean_file '.*s.binaryproto' must be a square 3-channel "
                                        r"image of at least crop_size 8, found shape \(3, 6, 6\)"):
        make(spec(path, "", f'crop_size: 8 mean_file: "{tmp_path / "s.binaryproto"}"'))
