"""Tests of detection.plot: reading a JSON-lines training log and drawing it."""
import json

import numpy as np
import pytest
from PIL import Image

from netdef.errors import DataError
from detection import plot
from detection.plot import LR_COLOUR, PALETTE, SMOOTHED, moving_average, nice_ticks, plot_log, read_log


def write_log(path, entries, tail=""):
    path.write_text("".join(json.dumps(e) + "\n" for e in entries) + tail)
    return path


def synthetic_entries(n=120, smoothed=True):
    rng = np.random.default_rng(0)
    entries = [{"event": "info", "wall_time": 1.0, "message": "start"}]
    for k in range(n):
        it = 20 * k
        a = 0.8 * np.exp(-it / 800) + 0.05 * rng.random()
        b = 0.4 * np.exp(-it / 1200) + 0.05 * rng.random()
        entry = {"event": "train", "iter": it, "loss": a + b, "lr": 1e-3 if it < 1800 else 1e-4,
                 "rpn_loss_cls": a, "outputs": {"loss_cls": b, "accuracy": 0.9,
                                                "per_class": [0.1, 0.2]}}
        if smoothed:
            entry["smoothed_loss"] = a + b
        entries.append(entry)
        if k % 40 == 0:   # test-net records have "iter" and "loss" too: not plotted
            entries.append({"event": "test", "iter": it, "net": 0, "loss": 99.0, "outputs": {}})
    return entries


def test_read_log(tmp_path):
    log = read_log(write_log(tmp_path / "log.jsonl", synthetic_entries()))
    assert log.iters.tolist() == list(range(0, 2400, 20))
    assert list(log.losses) == ["loss", "rpn_loss_cls", "loss_cls"]
    assert np.isfinite(log.smoothed).all() and log.lr[0] == 1e-3 and log.lr[-1] == 1e-4
    assert log.losses["loss"].max() < 99          # test records skipped


def test_resumed_run_replaces_the_abandoned_tail(tmp_path):
    entries = [{"iter": i, "loss": 1.0} for i in (0, 10, 20, 30)]
    entries += [{"iter": i, "loss": 2.0} for i in (20, 30, 40)]
    log = read_log(write_log(tmp_path / "log.jsonl", entries))
    assert log.iters.tolist() == [0, 10, 20, 30, 40]
    assert log.losses["loss"].tolist() == [1, 1, 2, 2, 2]
    assert np.isnan(log.lr).all() and np.isnan(log.smoothed).all()


def test_moving_average_and_ticks():
    values = np.array([1.0, 3.0, np.nan, 5.0, 7.0])
    np.testing.assert_allclose(moving_average(values, 2), [1, 2, 3, 5, 6])
    assert np.isnan(moving_average([np.nan], 3)).all()
    ticks, lo, hi = nice_ticks(0.03, 1.17)
    assert lo <= 0.03 and hi >= 1.17 and len(ticks) <= 8
    steps = np.diff(ticks)
    np.testing.assert_allclose(steps, steps[0])
    assert nice_ticks(5.0, 5.0)[1] < 5.0 < nice_ticks(5.0, 5.0)[2]


def colour_count(image, colour):
    pixels = np.asarray(image)
    return int((pixels == np.array(colour, dtype=np.uint8)).all(axis=-1).sum())


@pytest.mark.parametrize("smoothed", [True, False])
def test_plot_png(tmp_path, smoothed):
    path = write_log(tmp_path / "train_log.jsonl", synthetic_entries(smoothed=smoothed))
    out = tmp_path / "curves.png"
    returned = plot_log(path, out, size=(900, 600))
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (900, 600)
        image = image.convert("RGB")
        pixels = np.asarray(image)
        # not blank: a good share of non-white pixels, many colours
        assert (pixels != 255).any(axis=-1).mean() > 0.02
        # each curve is drawn in its colour: the smoothed total, two loss
        # keys, the learning rate
        for colour in (SMOOTHED, PALETTE[0], PALETTE[1], LR_COLOUR):
            assert colour_count(image, colour) > 50, colour
        assert colour_count(image, PALETTE[2]) == 0          # no third loss key
        np.testing.assert_array_equal(np.asarray(returned), pixels)


def test_loss_only_and_lr_only_logs(tmp_path):
    loss_only = write_log(tmp_path / "a.jsonl", [{"iter": i, "loss": 1.0 / (i + 1)} for i in range(5)])
    image = plot_log(loss_only, size=(400, 300), log_y=True)
    assert image.size == (400, 300) and colour_count(image, LR_COLOUR) == 0
    assert colour_count(image, SMOOTHED) > 0
    lr_only = write_log(tmp_path / "b.jsonl", [{"iter": 0, "lr": 0.01}])   # a single point
    image = plot_log(lr_only, size=(400, 300))
    assert colour_count(image, LR_COLOUR) > 0


def test_unterminated_last_line_is_skipped(tmp_path):
    path = write_log(tmp_path / "log.jsonl", [{"iter": 0, "loss": 1.0}], tail='{"iter": 20, "lo')
    assert read_log(path).iters.tolist() == [0]


@pytest.mark.parametrize("text, message", [
    ('{"iter": 0, "loss": 1}\nnot json\n', r"log.jsonl:2: not valid JSON"),
    ('{"iter": 0, "loss": 1}\n[1, 2]\n', r"log.jsonl:2: expected a JSON object per line; found list"),
    ('\n{"iter": "ten", "loss": 1}\n', r"log.jsonl:2: 'iter' must be a number"),
    ('{"iter": 1.5, "loss": 1}\n', r"log.jsonl:1: 'iter' must be a whole number >= 0; found 1.5"),
    ('{"iter": -1, "loss": 1}\n', r"log.jsonl:1: 'iter' must be a whole number"),
    ('{"iter": 0, "loss": "high"}\n', r"log.jsonl:1: 'loss' must be a number; found \"high\""),
    ('{"iter": 0, "loss": true}\n', r"log.jsonl:1: 'loss' must be a number; found true"),
    ('{"iter": 0, "lr": [0.1]}\n', r"log.jsonl:1: 'lr' must be a number"),
    ('{"iter": 0, "loss": 1, "outputs": {"loss_cls": "x"}}\n', r":1: 'outputs.loss_cls' must be"),
    ('{"iter": 0, "loss": 1, "outputs": 3}\n', r":1: 'outputs' must be an object"),
    ('{"event": "info"}\n{"iter": 3}\n', r"log.jsonl: no training records"),
    ('', r"log.jsonl: no training records"),
])
def test_bad_logs(tmp_path, text, message):
    path = tmp_path / "log.jsonl"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_log(path)


def test_missing_file_and_bad_arguments(tmp_path):
    with pytest.raises(DataError, match=r"missing.jsonl: cannot read the training log"):
        read_log(tmp_path / "missing.jsonl")
    path = write_log(tmp_path / "log.jsonl", [{"iter": 0, "loss": 1.0}])
    with pytest.raises(ValueError, match="at least 300 x 200"):
        plot_log(path, size=(100, 100))
    with pytest.raises(ValueError, match="smooth"):
        plot_log(path, smooth=0)


def test_bitmap_font(tmp_path, monkeypatch):
    """Pillow before 10.1 has only the bitmap default font: still drawn."""
    from PIL import ImageFont
    monkeypatch.setattr(plot, "_font", lambda size: ImageFont.load_default_imagefont())
    path = write_log(tmp_path / "log.jsonl", synthetic_entries(n=10))
    image = plot_log(path, size=(500, 400))
    assert colour_count(image, SMOOTHED) > 0 and colour_count(image, LR_COLOUR) > 0
