"""python -m solver.train on a dataset whose JPEGs are truncated after the
header (issue 14): the load-time check passes them; --on-error skip trains
on, replacing each with the next image; without it a named error (exit 2);
--check-images finds them before training."""
import glob
import io
import os
import warnings

import pytest

from detection.datasets.synthetic import generate
from netdef.errors import DataWarning
from solver import train

TINY = os.path.join(os.path.dirname(__file__), "..", "..", "prototxt", "rfcn_tiny.prototxt")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 trainval images of the built-in generator, all but the first
    truncated to half their bytes."""
    root = generate(tmp_path_factory.mktemp("data") / "shapes", num_train=8, num_test=4, seed=3)
    for path in sorted(glob.glob(os.path.join(root, "JPEGImages", "train_*.jpg")))[1:]:
        with open(path, "rb") as f:
            content = f.read()
        with open(path, "wb") as f:
            f.write(content[:len(content) // 2])
    return root


def run(data, out, *extra):
    stream = io.StringIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = train.main([TINY, "--data", data, "--out", str(out), "--iters", "2",
                             "--no-eval", "--seed", "1", *extra], stream=stream)
    skipped = [str(w.message) for w in caught if w.category is DataWarning
               and "skipped image" in str(w.message)]
    return status, stream.getvalue(), skipped


def test_skip_trains_on(data, tmp_path, capsys):
    status, text, skipped = run(data, tmp_path, "--on-error", "skip")
    assert status == 0 and "done: 2 iterations" in text
    assert skipped and all("image file is truncated" in m for m in skipped)


def test_without_skip_a_named_error(data, tmp_path, capsys):
    status, text, _ = run(data, tmp_path)
    assert status == 2 and "done:" not in text
    assert "ready in" in text                       # it failed when first drawn
    error = capsys.readouterr().err
    assert "error: layer 'input-data' (type RoIData): cannot read image" in error
    assert "--on-error skip" in error and "--check-images" in error


def test_without_skip_the_last_completed_iteration_is_saved(data, tmp_path, capsys):
    status, _, _ = run(data, tmp_path)
    assert status == 2
    assert glob.glob(os.path.join(tmp_path, "*_iter_*.solverstate.npz"))


def test_check_images_stops_before_training(data, tmp_path, capsys):
    status, text, _ = run(data, tmp_path, "--check-images")
    assert status == 2 and "ready in" not in text
    assert "cannot be read: OSError: image file is truncated" in capsys.readouterr().err
