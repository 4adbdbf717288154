"""External proposals: Selective Search (OpenCV contrib), R-CNN's .mat files,
``--proposals`` for solver.train / solver.test, and the errors of bad
proposals input (each naming the file, the image and the reason)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from detection import proposal_sources
from detection.datasets import load_dataset
from detection.datasets.synthetic import generate
from detection.detector import im_detect
from detection.proposal_recall import proposal_recall
from detection.proposal_checks import (check_proposals, image_box_problem,
                                       proposals_for_dataset)
from detection.proposal_sources import (clean_boxes, import_mat, rects_to_boxes,
                                        selective_search)
from detection.proposals import Proposals
from layers.input_pipeline.preprocess import load_image_bgr
from netdef.errors import DataError
from netdef.net import Net
from solver import proposal_options
from solver import proposals as proposals_cli
from solver import test as test_cli
from solver import train

ROOT = Path(__file__).resolve().parents[1]
STAGED = str(ROOT / "prototxt" / "rfcn_tiny_staged_detector_train.prototxt")
FAST = str(ROOT / "prototxt" / "fast_rcnn_tiny.prototxt")

cv2 = pytest.importorskip("cv2", reason="OpenCV (the proposals extra) is not installed")
if not hasattr(cv2, "ximgproc"):
    pytest.skip("OpenCV without its contrib modules (the proposals extra)",
                allow_module_level=True)
scipy_io = pytest.importorskip("scipy.io", reason="scipy (the proposals extra) is not installed")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """6 trainval + 3 test images of the built-in generator."""
    return str(generate(tmp_path_factory.mktemp("data") / "shapes", num_train=6, num_test=3,
                        seed=4))


@pytest.fixture(scope="module")
def split(data):
    return load_dataset(data, "trainval", keep_empty=True)


@pytest.fixture(scope="module")
def ss_files(data, tmp_path_factory):
    """Selective Search files of both splits, through the command."""
    out = tmp_path_factory.mktemp("ss")
    for name in ("trainval", "test"):
        status = proposals_cli.main(["selective-search", "--data", data, "--split", name,
                                     "--out", str(out / f"{name}.npz"), "--threads", "1"])
        assert status == 0
    return out / "trainval.npz", out / "test.npz"


# -- Selective Search -------------------------------------------------------------------------

def reference_clean(boxes, min_size=2):
    """Plain loops: the first of equal rows, then w, h >= min_size."""
    seen, kept = set(), []
    for row in np.asarray(boxes).tolist():
        if tuple(row) in seen:
            continue
        seen.add(tuple(row))
        if row[2] - row[0] >= min_size and row[3] - row[1] >= min_size:
            kept.append(row)
    return np.array(kept, dtype=np.float64).reshape(-1, 4)


def test_clean_boxes_and_rects_against_plain_loops():
    rng = np.random.default_rng(0)
    boxes = rng.integers(0, 6, size=(200, 4)).astype(np.float64)
    boxes[:, 2:] += boxes[:, :2]
    np.testing.assert_array_equal(clean_boxes(boxes), reference_clean(boxes))
    rects = np.array([[3, 4, 10, 20], [0, 0, 1, 1]])
    np.testing.assert_array_equal(rects_to_boxes(rects), [[3, 4, 12, 23], [0, 0, 0, 0]])


def test_selective_search_matches_opencv_on_builtin_images(split):
    """Each image's boxes are OpenCV's, converted, de-duplicated and cleaned,
    inside the image, best ranked first within the cap."""
    records = split.records[:2]
    found = selective_search(records, max_per_image=0, threads=1)
    assert found.meta["source"] == "selective_search" and found.meta["mode"] == "fast"
    for record, boxes in zip(records, found.boxes):
        segmentation = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
        segmentation.setBaseImage(cv2.imread(record.path))
        segmentation.switchToSelectiveSearchFast()
        rects = segmentation.process()
        # x2 = x + w - 1 (inclusive pixels), as a set: OpenCV's rank order is random
        expected = {(x, y, x + w - 1, y + h - 1) for x, y, w, h in rects.tolist()
                    if w - 1 >= 2 and h - 1 >= 2}
        assert {tuple(b) for b in boxes.astype(int).tolist()} == expected
        assert len(boxes) == len(expected) > 10
        assert image_box_problem(boxes, record.width, record.height) is None
    capped = selective_search(records[:1], max_per_image=7)
    assert len(capped.boxes[0]) == 7


def test_selective_search_command_writes_the_file(ss_files, split, data):
    trainval, _ = ss_files
    loaded = Proposals.load(trainval)
    assert loaded.image_ids == [r.image_id for r in split.records]
    assert loaded.meta["source"] == "selective_search" and loaded.meta["mode"] == "fast"
    assert loaded.meta["max_per_image"] == 2000 and loaded.meta["split"] == "trainval"
    check_proposals(loaded, split, str(trainval))


def test_quality_mode_and_first_images(data, tmp_path, capsys):
    out = tmp_path / "q.npz"
    assert proposals_cli.main(["selective-search", "--data", data, "--mode", "quality",
                               "--images", "1", "--max-per-image", "50", "--out", str(out)]) == 0
    loaded = Proposals.load(out)
    assert len(loaded) == 1 and loaded.meta["mode"] == "quality" and len(loaded.boxes[0]) == 50
    assert "quality mode" in capsys.readouterr().out


def test_missing_opencv_names_the_extra(monkeypatch, split):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(DataError, match=r"proposals extra.*\.\[proposals\]"):
        selective_search(split.records[:1])


def test_missing_scipy_names_the_extra(monkeypatch, split, tmp_path):
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(DataError, match=r"x\.mat: .*scipy.*proposals extra"):
        import_mat(str(tmp_path / "x.mat"), split)


# -- .mat files ---------------------------------------------------------------------------------

def write_mat(path, ids, boxes):
    cells = np.empty((len(boxes), 1), dtype=object)
    for i, b in enumerate(boxes):
        cells[i, 0] = np.asarray(b, dtype=np.float64)
    names = np.empty((len(ids), 1), dtype=object)
    for i, image_id in enumerate(ids):
        names[i, 0] = image_id
    scipy_io.savemat(str(path), {"boxes": cells, "images": names})


def test_mat_round_trip(split, tmp_path, data):
    """1-based [y1 x1 y2 x2] -> [:, (1, 0, 3, 2)] - 1; duplicates and
    boxes under 3 x 3 pixels dropped; written by the command."""
    ids = [r.image_id for r in split.records]
    ours = [np.array([[10 + i, 20, 50, 60], [0, 0, 255, 191], [10 + i, 20, 50, 60],
                      [5, 5, 6, 40]], np.float64) for i in range(len(ids))]
    mat = [b[:, (1, 0, 3, 2)] + 1 for b in ours]
    folder = tmp_path / "selective_search_data"
    folder.mkdir()
    write_mat(folder / "voc_2007_trainval.mat", ids, mat)
    out = tmp_path / "mat.npz"
    assert proposals_cli.main(["import-mat", "--mat-dir", str(folder), "--data", data,
                               "--split", "trainval", "--out", str(out)]) == 0
    loaded = Proposals.load(out)
    assert loaded.image_ids == ids and loaded.meta["source"] == "mat"
    for i, boxes in enumerate(loaded.boxes):
        np.testing.assert_array_equal(boxes, ours[i][:2])


def test_mat_folder_without_the_split(tmp_path, data, capsys):
    (tmp_path / "voc_2007_test.mat").write_bytes(b"")
    assert proposals_cli.main(["import-mat", "--mat-dir", str(tmp_path), "--data", data,
                               "--out", str(tmp_path / "o.npz")]) == 2
    assert "no trainval.mat or *_trainval.mat (.mat files there: voc_2007_test.mat)" in \
        capsys.readouterr().err


@pytest.mark.parametrize("case, boxes, reason", [
    ("unknown id", None, r"1 image id\(s\) that dataset .* does not have \(nope\)"),
    ("wrong columns", np.ones((3, 5)), r"image 'train_000000': expected \(K, 4\).*\(3, 5\)"),
    ("nan", np.array([[1, 1, 9, np.nan]]), r"image 'train_000000' .*NaN or Inf"),
    ("x2 < x1", np.array([[1, 30, 9, 10]]), r"image 'train_000000' .*x2 < x1"),
    ("outside", np.array([[1, 1, 9, 900]]), r"image 'train_000000' .*outside the image of "
                                            r"256 x 192"),
])
def test_mat_errors_name_file_image_reason(split, tmp_path, case, boxes, reason):
    ids = [r.image_id for r in split.records]
    cells = [np.array([[1, 1, 9, 9]], np.float64)] * len(ids)
    if case == "unknown id":
        ids = ids[:-1] + ["nope"]
    else:
        cells = [boxes] + cells[1:]
    path = tmp_path / "bad.mat"
    write_mat(path, ids, cells)
    with pytest.raises(DataError, match=r"bad\.mat: .*" + reason):
        import_mat(str(path), split)


# -- checks of a proposals file ---------------------------------------------------------------

def save_file(path, split, boxes):
    Proposals([r.image_id for r in split.records], boxes).save(path)
    return str(path)


def good_boxes(split):
    return [np.array([[0, 0, 20, 20], [5, 5, 60, 40]], np.float32) for _ in split.records]


@pytest.mark.parametrize("case, reason", [
    ("nan", r"image 'train_000001' \(.*\): box 1 \[5 5 nan 40\] holds NaN or Inf"),
    ("inf", r"image 'train_000001' \(.*\): box 1 \[5 5 inf 40\] holds NaN or Inf"),
    ("x2 < x1", r"image 'train_000001' \(.*\): box 1 \[5 5 2 40\] has x2 < x1"),
    ("outside", r"image 'train_000001' \(.*\): box 1 \[5 5 256 40\] lies outside the image "
                r"of 256 x 192 pixels"),
    ("negative", r"image 'train_000001' \(.*\): box 1 \[-1 5 60 40\] lies outside"),
])
def test_bad_boxes_name_file_image_reason(split, tmp_path, case, reason):
    boxes = good_boxes(split)
    bad = boxes[1].copy()
    bad[1] = {"nan": [5, 5, np.nan, 40], "inf": [5, 5, np.inf, 40], "x2 < x1": [5, 5, 2, 40],
              "outside": [5, 5, 256, 40], "negative": [-1, 5, 60, 40]}[case]
    boxes[1] = bad
    proposals = Proposals([r.image_id for r in split.records], boxes)
    with pytest.raises(DataError, match=r"^f\.npz: " + reason):
        check_proposals(proposals, split, "f.npz")


def test_file_level_errors(split, tmp_path):
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.npz"):
        proposals_for_dataset(str(empty), split)
    none = save_file(tmp_path / "none.npz", split, [np.zeros((0, 4))] * len(split.records))
    with pytest.raises(DataError, match=r"none\.npz: the proposals file is empty"):
        proposals_for_dataset(none, split)
    from netdef.snapshot_format import save_arrays
    columns = str(tmp_path / "columns.npz")
    save_arrays(columns, {"boxes": np.zeros((len(split.records), 5), np.float32),
                          "counts": np.ones(len(split.records), np.int64)},
                {"kind": "rpn-proposals", "version": 1,
                 "image_ids": [r.image_id for r in split.records]})
    with pytest.raises(DataError, match=r"columns\.npz: inconsistent .*\(6, 5\)"):
        proposals_for_dataset(columns, split)
    other = Proposals(["x1"] + [r.image_id for r in split.records], [np.ones((1, 4))]
                      + good_boxes(split))
    other.save(tmp_path / "other.npz")
    with pytest.raises(DataError, match=r"other\.npz: 1 image id\(s\) .* \(x1\)"):
        proposals_for_dataset(str(tmp_path / "other.npz"), split)
    short = Proposals([r.image_id for r in split.records[1:]], good_boxes(split)[1:])
    short.save(tmp_path / "short.npz")
    with pytest.raises(DataError, match=r"short\.npz: no proposals for 1 of the 6 images"):
        proposals_for_dataset(str(tmp_path / "short.npz"), split)


def test_cap_keeps_the_first_boxes(split, tmp_path):
    boxes = [np.array([[i, 0, 20, 20] for i in range(9)], np.float32)] * len(split.records)
    path = save_file(tmp_path / "p.npz", split, boxes)
    capped = proposals_for_dataset(path, split, 4)
    assert [len(b) for b in capped] == [4] * len(split.records)
    np.testing.assert_array_equal(capped[0], boxes[0][:4])
    assert [len(b) for b in proposals_for_dataset(path, split, 0)] == [9] * len(split.records)
    with pytest.raises(DataError, match="cap per image must be positive"):
        proposals_for_dataset(path, split, -1)


# -- training and testing with --proposals ------------------------------------------------------

def test_train_and_test_on_selective_search_proposals(ss_files, data, tmp_path, capsys):
    """prototxt/fast_rcnn_tiny.prototxt: RoIData (precomputed RoIs) in
    TRAIN, inputs data / im_info / rois in TEST."""
    trainval, test = ss_files
    out = tmp_path / "run"
    status = train.main([FAST, "--data", data, "--proposals", str(trainval), "--iters", "2",
                         "--test-proposals", str(test), "--max-proposals", "300",
                         "--out", str(out), "--seed", "1"])
    printed, errors = capsys.readouterr()
    assert status == 0, printed + errors
    assert f"proposals: {trainval}" in printed and "at most 300 kept per image" in printed
    result = json.loads((out / "eval_iter_2.json").read_text())
    assert result["iter"] == 2 and 0 <= result["map_07"] <= 1
    model = next(out.glob("*_iter_2.caffemodel"))
    assert test_cli.main([FAST, "--weights", str(model), "--data", data,
                          "--proposals", str(test), "--max-proposals", "50"]) == 0
    assert f"proposals: {test}" in capsys.readouterr().out


def test_staged_detector_trains_on_a_proposals_file(ss_files, data, tmp_path, capsys):
    """The staged schedule's detector net (no test file beside it) takes
    the same file."""
    trainval, _ = ss_files
    status = train.main([STAGED, "--data", data, "--proposals", str(trainval), "--iters", "1",
                         "--no-eval", "--out", str(tmp_path / "staged")])
    printed, errors = capsys.readouterr()
    assert status == 0, printed + errors
    assert "done: 1 iterations" in printed


def test_options_and_the_net_must_agree(ss_files, data, tmp_path, capsys):
    trainval, test = ss_files
    # A precomputed-RoI net without --proposals.
    assert train.main([STAGED, "--data", data, "--no-eval", "--iters", "1",
                       "--out", str(tmp_path / "a")]) == 2
    assert "takes precomputed proposals (has_rpn: false" in capsys.readouterr().err
    # An end-to-end net with --proposals.
    tiny = str(ROOT / "prototxt" / "rfcn_tiny.prototxt")
    assert train.main([tiny, "--data", data, "--no-eval", "--iters", "1", "--proposals",
                       str(trainval), "--out", str(tmp_path / "b")]) == 2
    assert "end-to-end form (has_rpn)" in capsys.readouterr().err
    # A Fast R-CNN test net without a file, and a file for an RPN test net.
    test_net = Net(FAST, "TEST")
    args = test_cli.build_parser().parse_args(["n", "--weights", "w"])
    dataset = load_dataset(data, "test", keep_empty=True)
    with pytest.raises(DataError, match=r"takes rois as an input .* give --proposals FILE for "
                                        r"split 'test'"):
        proposal_options.evaluation_proposals(None, args, test_net, dataset, data, print)
    rpn_net = Net(tiny, "TEST")
    with pytest.raises(DataError, match=r"test\.npz: the test net .* makes its own RoIs"):
        proposal_options.evaluation_proposals(str(test), args, rpn_net, dataset, data, print)


def test_im_detect_feeds_the_proposals_as_rois(data, tmp_path):
    net = Net(FAST, "TEST")
    record = load_dataset(data, "test", keep_empty=True).records[0]
    image = load_image_bgr(record.path)
    boxes = np.array([[0, 0, 50, 40], [10, 20, 100, 150], [30, 30, 200, 180]], np.float32)
    scores, decoded = im_detect(net, image, scale=192, max_size=256, proposals=boxes)
    scale = 192 / min(record.width, record.height)
    expected = np.concatenate([np.zeros((3, 1)), boxes * scale], axis=1)
    np.testing.assert_allclose(net.blobs["rois"].data, expected, rtol=1e-6)
    assert scores.shape == (3, 7) and decoded.shape == (3, 28)
    np.testing.assert_allclose(scores.sum(axis=1), 1, rtol=1e-5)
    empty_scores, empty_boxes = im_detect(net, image, 192, 256, proposals=np.zeros((0, 4)))
    assert empty_scores.shape == (0, 7) and empty_boxes.shape == (0, 28)
    rpn_net = Net(str(ROOT / "prototxt" / "rfcn_tiny.prototxt"), "TEST")
    with pytest.raises(Exception, match=r"need a Fast R-CNN test net with the inputs data and "
                                        r"rois"):
        im_detect(rpn_net, image, 192, 256, proposals=boxes)


# -- recall ---------------------------------------------------------------------------------------

def test_recall_against_plain_loops(split):
    rng = np.random.default_rng(1)
    boxes = []
    for record in split.records:
        jitter = rng.integers(-6, 7, size=(len(record.boxes), 4))
        near = np.clip(record.boxes + jitter, 0, [255, 191, 255, 191])
        near[:, 2:] = np.maximum(near[:, 2:], near[:, :2])
        boxes.append(np.concatenate([record.boxes[:1], near[1::2],
                                     rng.integers(0, 100, size=(5, 4)) + [0, 0, 60, 60]]))
    found = proposal_recall(boxes, split.records, thresholds=(0.5, 0.7, 0.9))
    best = []
    for record, props in zip(split.records, boxes):
        for g in record.boxes.tolist():
            ious = []
            for p in props.tolist():
                iw = min(g[2], p[2]) - max(g[0], p[0]) + 1
                ih = min(g[3], p[3]) - max(g[1], p[1]) + 1
                inter = max(iw, 0) * max(ih, 0)
                area = ((g[2] - g[0] + 1) * (g[3] - g[1] + 1) + (p[2] - p[0] + 1)
                        * (p[3] - p[1] + 1) - inter)
                ious.append(inter / area if inter > 0 else 0.0)
            best.append(max(ious))
    assert found["objects"] == len(best) and found["images"] == len(split.records)
    for t in (0.5, 0.7, 0.9):
        assert found["recall"][f"{t:g}"] == round(float(np.mean(np.array(best) >= t)), 4)
    assert 0 < found["recall"]["0.9"] < found["recall"]["0.5"] < 1


def test_recall_command(ss_files, data, capsys):
    trainval, _ = ss_files
    assert proposals_cli.main(["recall", str(trainval), "--data", data, "--max-proposals",
                               "10"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert "10.0 boxes per image" in line and "at IoU 0.5" in line and "at IoU 0.7" in line


def test_progress_bar_redraws_on_a_terminal():
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    report = proposals_cli.progress_bar(stream, "images", width=10)
    for done in range(1, 4):
        report(done, 3)
    text = stream.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert "[##########] 3/3 images" in text and "[###.......] 1/3 images" in text
    plain = io.StringIO()
    report = proposals_cli.progress_bar(plain, "images")
    for done in range(1, 101):
        report(done, 100)
    assert "\r" not in plain.getvalue() and len(plain.getvalue().splitlines()) == 10


def test_find_mat_file(tmp_path):
    (tmp_path / "voc_2007_test.mat").write_bytes(b"")
    assert proposals_cli.find_mat_file(str(tmp_path), "test").endswith("voc_2007_test.mat")
    (tmp_path / "test.mat").write_bytes(b"")
    assert proposals_cli.find_mat_file(str(tmp_path), "test").endswith("/test.mat")
    (tmp_path / "voc_2012_val.mat").write_bytes(b"")
    (tmp_path / "voc_2007_val.mat").write_bytes(b"")
    with pytest.raises(DataError, match="several .mat files for split 'val'.*--mat"):
        proposals_cli.find_mat_file(str(tmp_path), "val")


def test_unknown_ids_under_on_error_skip_are_a_warning(split, tmp_path):
    from netdef.errors import DataWarning
    other = Proposals(["gone"] + [r.image_id for r in split.records],
                      [np.ones((1, 4))] + good_boxes(split))
    other.save(tmp_path / "other.npz")
    with pytest.warns(DataWarning, match=r"other\.npz: 1 image id\(s\) .* \(gone\).*left out"):
        boxes = proposals_for_dataset(str(tmp_path / "other.npz"), split, on_unknown="skip")
    assert len(boxes) == len(split.records)


def test_a_schedule_names_its_own_proposals(tmp_path, capsys):
    schedule = str(ROOT / "prototxt" / "tiny_staged_schedule.prototxt")
    assert train.main([schedule, "--proposals", "x.npz", "--out", str(tmp_path)]) == 2
    assert "stages of a schedule name theirs (proposals_from)" in capsys.readouterr().err
