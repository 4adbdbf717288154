"""python -m solver.visualize: help, the files each method writes, and the
one-line errors (exit status 2) naming the bad input and the choices."""
import io
import os

import numpy as np
import pytest
from PIL import Image

from detection.visualize.model import VisualModel
from netdef.net import Net
from solver.visualize import IMAGE_METHODS, main
from tests.detection.test_visualize_rpn_inside import (CLASSIFIER, NET, synthetic_image,
                                                       tiny_rfcn_weights)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("cli"))
    weights = tiny_rfcn_weights(folder)
    image, path, _ = synthetic_image(folder)
    classifier = os.path.join(folder, "classifier.prototxt")
    with open(classifier, "w") as handle:
        handle.write(CLASSIFIER)
    classifier_weights = os.path.join(folder, "classifier.caffemodel")
    Net(classifier, "TEST").save(classifier_weights)
    scores = [d.score for d in VisualModel(NET, weights).detections(image)]
    return {"weights": weights, "image": path, "shape": image.shape[:2], "count": len(scores),
            "three": (scores[2] + scores[3]) / 2,     # a threshold keeping 3 detections
            "data": os.path.join(folder, "data"), "classifier": classifier,
            "classifier_weights": classifier_weights}


def run(argv):
    """(exit status, messages) of the command."""
    messages = io.StringIO()
    return main([str(a) for a in argv], messages=messages), messages.getvalue()


def detector_args(files, method, out, *extra):
    return [method, NET, "--weights", files["weights"], files["image"], "--out", out, *extra]


def test_help_lists_every_method_and_synopsis(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for method in IMAGE_METHODS + ("class-model", "top-patches", "embeddings", "browse"):
        assert method in text
    assert "--detection K" in text and "--save-maps" in text and "browse --data DIR" in text


def test_gradcam_of_one_detection_writes_the_picture_and_the_map(files, tmp_path):
    status, said = run(detector_args(files, "gradcam", tmp_path, "--detection", "0",
                                     "--save-maps"))
    assert status == 0, said
    assert sorted(os.listdir(tmp_path)) == ["test_000000_gradcam_det0.npy",
                                            "test_000000_gradcam_det0.png"]
    heat = np.load(tmp_path / "test_000000_gradcam_det0.npy")
    assert heat.dtype == np.float32 and heat.shape == files["shape"]
    assert 0 <= heat.min() and heat.max() <= 1
    with Image.open(tmp_path / "test_000000_gradcam_det0.png") as picture:
        assert picture.width >= files["shape"][1]


def test_without_detection_every_detection_gets_a_picture(files, tmp_path):
    status, said = run(detector_args(files, "saliency", tmp_path, "--threshold",
                                     repr(files["three"])))
    assert status == 0, said
    expected = {f"test_000000_saliency_det{k}.png" for k in range(3)}
    assert set(os.listdir(tmp_path)) == expected
    status, said = run(detector_args(files, "saliency", tmp_path / "c2", "--class", "class2"))
    assert status == 0 and "no detection scoring >= 0.5 of class class2" in said


@pytest.mark.parametrize("method", ["guided", "deconvnet"])
def test_guided_and_deconvnet_maps(files, tmp_path, method):
    status, said = run(detector_args(files, method, tmp_path, "--detection", "1",
                                     "--save-maps"))
    assert status == 0, said
    assert np.load(tmp_path / f"test_000000_{method}_det1.npy").shape == files["shape"]


def test_occlusion_shows_progress_and_writes_its_map(files, tmp_path):
    status, said = run(detector_args(files, "occlusion", tmp_path, "--detection", "0",
                                     "--patch", "96", "--stride", "96", "--save-maps"))
    assert status == 0, said
    assert "occlusion [" in said and "] 6/6" in said            # 2 x 3 patches of 96
    assert np.load(tmp_path / "test_000000_occlusion_det0.npy").shape == files["shape"]


def test_rfcn_and_rpn_pictures(files, tmp_path):
    assert run(detector_args(files, "rfcn", tmp_path, "--detection", "2"))[0] == 0
    status, said = run(detector_args(files, "rpn", tmp_path, "--data", files["data"],
                                     "--location", "3", "4"))
    assert status == 0, said
    assert sorted(os.listdir(tmp_path)) == ["test_000000_rfcn_det2.png", "test_000000_rpn.png"]


@pytest.mark.parametrize("extra, message", [
    (["gradcam", "--blob", "nope"], "no blob 'nope'.*conv5"),
    (["gradcam", "--blob", "cls_prob"], "cls_prob"),
    (["saliency", "--class", "zebra"], r"no class 'zebra' \(classes: __background__, "
                                       r"class1, "),
    (["saliency", "--detection", "999"], r"detection 999 is out of range: .* \(0: class1"),
    (["rfcn", "--detection", "999"], "detection 999 is out of range"),
    (["saliency", "--blob", "conv5"], "--blob applies to gradcam"),
    (["rpn", "--location", "99", "0"], r"location \(99, 0\) is outside the RPN's"),
])
def test_bad_input_is_one_error_line_with_the_choices(files, tmp_path, capsys, extra, message):
    status, _ = run(detector_args(files, extra[0], tmp_path, *extra[1:]))
    error = capsys.readouterr().err
    assert status == 2
    assert error.startswith("error: ") and error.count("\n") == 1
    assert pytest.importorskip("re").search(message, error), error


def test_unreadable_image_and_missing_gpu(files, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    assert run(["saliency", NET, "--weights", files["weights"], bad])[0] == 2
    assert "bad.jpg: cannot read the image" in capsys.readouterr().err
    from netdef.device import gpu_available
    if not gpu_available():
        assert run(detector_args(files, "saliency", tmp_path, "--gpu", "0"))[0] == 2
        assert "--gpu 0: no CUDA GPU" in capsys.readouterr().err


def test_a_classifier_scores_a_class_and_has_no_detections(files, tmp_path, capsys):
    args = ["saliency", files["classifier"], "--weights", files["classifier_weights"],
            files["image"], "--out", tmp_path]
    status, said = run(args + ["--class", "class 2", "--save-maps"])
    assert status == 0, said
    assert np.load(tmp_path / "test_000000_saliency.npy").shape == files["shape"]
    assert run(args + ["--detection", "0"])[0] == 2
    assert "is a classifier; choose a class with --class NAME (class 0, class 1, class 2)" \
        in capsys.readouterr().err
    assert run(["rfcn"] + args[1:])[0] == 2
    assert "R-FCN inside needs an R-FCN detector" in capsys.readouterr().err


def test_class_model_writes_the_image(files, tmp_path):
    status, said = run(["class-model", files["classifier"], "--weights",
                        files["classifier_weights"], "--class", "class 1", "--steps", "3",
                        "--out", tmp_path])
    assert status == 0, said
    assert "] 3/3" in said and "regularized objective" in said
    with Image.open(tmp_path / "class_model_class_1.png") as picture:
        assert picture.size == (16, 16)


def test_class_model_of_a_class_the_net_lacks(files, tmp_path, capsys):
    assert run(["class-model", files["classifier"], "--weights", files["classifier_weights"],
                "--class", "zebra", "--out", tmp_path])[0] == 2
    assert "no class 'zebra' (classes: class 0, class 1, class 2)" in capsys.readouterr().err


def test_browse_writes_pages(files, tmp_path):
    status, said = run(["browse", "--data", files["data"], "--split", "test", "--per-page",
                        "1", "--out", tmp_path])
    assert status == 0, said
    assert sorted(os.listdir(tmp_path)) == ["data_test_page001.png", "data_test_page002.png"]
    assert "wrote 2 page(s) of 2 images" in said


def test_top_patches_and_embeddings(files, tmp_path):
    common = [NET, "--weights", files["weights"], "--data", files["data"], "--out", tmp_path]
    status, said = run(["top-patches", *common, "--blob", "conv5", "--units", "0", "3",
                        "--k", "2"])
    assert status == 0, said
    status, said = run(["embeddings", *common, "--blob", "psroipooled_cls_rois",
                        "--save-maps"])
    assert status == 0, said
    assert {"top_patches_conv5.png", "embeddings_psroipooled_cls_rois_pca.png",
            "embeddings_psroipooled_cls_rois_pca.npy"} <= set(os.listdir(tmp_path))


@pytest.mark.gpu
def test_on_the_gpu_the_maps_match_the_cpu(files, tmp_path):
    for device, folder in ((["--cpu"], tmp_path / "cpu"), (["--gpu", "0"], tmp_path / "gpu")):
        for method in ("gradcam", "saliency", "occlusion", "rfcn", "rpn"):
            extra = ["--detection", "0"] if method != "rpn" else []
            if method != "rfcn" and method != "rpn":
                extra.append("--save-maps")
            status, said = run(detector_args(files, method, folder, *extra, *device))
            assert status == 0, said
    assert sorted(os.listdir(tmp_path / "cpu")) == sorted(os.listdir(tmp_path / "gpu"))
    for method in ("gradcam", "saliency", "occlusion"):
        name = f"test_000000_{method}_det0.npy"
        cpu, gpu = np.load(tmp_path / "cpu" / name), np.load(tmp_path / "gpu" / name)
        np.testing.assert_allclose(gpu, cpu, atol=1e-3 * max(1.0, float(np.abs(cpu).max())))
