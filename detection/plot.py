"""Training curves from a JSON-lines training log, drawn with Pillow alone.

    log = read_log("train_log.jsonl")
    plot_log(log, "curves.png")      # or: python -m solver.plot train_log.jsonl --out curves.png

The log is what :mod:`solver.progress` writes: one JSON object per line. A
line is a training point when it has ``"iter"`` and ``"loss"`` and/or
``"lr"`` (and, if it has an ``"event"``, that event is ``"train"``); every
other object is skipped. The losses of a point are its top-level keys whose
name contains ``loss`` (``loss``, ``rpn_loss_cls``, ...; ``smoothed_loss``
is the smoothed total) and the scalar entries of its ``"outputs"`` object
whose name contains ``loss`` (``rpn_cls_loss``, ``loss_bbox``, ...).

The picture has a loss panel (every loss key, plus the smoothed total: the
log's ``smoothed_loss`` when it has one, Caffe's average over every
iteration, else a trailing mean over ``smooth`` logged points) and a
learning-rate panel below it (log scale when the rate spans a factor of 10
or more), sharing the iteration axis.

A resumed run appends to the same log, possibly from an earlier iteration:
a point whose ``iter`` goes back replaces every earlier point from that
iteration on, so the curves show the run that the snapshots continue.

Bad lines raise :class:`netdef.errors.DataError` naming the file, the line
and the reason; only an unterminated last line (a log being written) that
does not parse is skipped.
"""
import dataclasses
import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from netdef.errors import DataError
from netdef.snapshot_format import atomic_writer

__all__ = ["TrainingLog", "read_log", "plot_log", "plot_logs"]

BACKGROUND = (255, 255, 255)
AXIS = (40, 40, 40)
GRID = (228, 228, 228)
TEXT = (20, 20, 20)
RAW_TOTAL = (170, 170, 170)      # the raw total loss: light, behind the rest
SMOOTHED = (0, 0, 0)             # the smoothed total
LR_COLOUR = (200, 30, 30)
#: Colours of the individual loss keys, in order of first appearance.
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (23, 190, 207), (188, 189, 34),
           (214, 39, 40), (127, 127, 127))


# ----------------------------------------------------------------------------
# Reading


@dataclasses.dataclass(eq=False)
class TrainingLog:
    """Training points of one log.

    Attributes:
        path: the file read.
        iters: ``(n,)`` int64 iteration of each point, increasing.
        losses: name -> ``(n,)`` float64, NaN where a point lacks the key;
            ``"loss"`` is the total when the log has it. Keys in order of
            first appearance.
        smoothed: ``(n,)`` the log's ``smoothed_loss`` (all NaN if absent).
        lr: ``(n,)`` learning rate (NaN where absent).
    """
    path: str
    iters: np.ndarray
    losses: dict
    smoothed: np.ndarray
    lr: np.ndarray


def _number(value, path, line_no, key):
    """A JSON number as float; None for null; DataError for anything else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{path}:{line_no}: '{key}' must be a number; found "
                        f"{json.dumps(value)[:60]}")
    return float(value)


def read_log(path):
    """Parse a JSON-lines training log into a :class:`TrainingLog`."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the training log: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a text (UTF-8) file: {exc.reason}") from None
    lines = text.split("\n")
    # text ending in "\n" leaves a final empty string; anything else there
    # is a line still being written
    unterminated = len(lines) - 1 if lines[-1] else None
    points = []                       # (iter, {key: value}) in file order
    for index, line in enumerate(lines):
        line_no = index + 1
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            if index == unterminated:
                break                 # a partly written last line
            raise DataError(f"{path}:{line_no}: not valid JSON ({exc.msg} at column "
                            f"{exc.colno}): {line[:80]}") from None
        if not isinstance(entry, dict):
            raise DataError(f"{path}:{line_no}: expected a JSON object per line; found "
                            f"{type(entry).__name__}: {line[:80]}")
        if "iter" not in entry or not ("loss" in entry or "lr" in entry):
            continue
        if entry.get("event", "train") != "train":
            continue                  # test-net losses and other events
        it = _number(entry["iter"], path, line_no, "iter")
        if it is None or not math.isfinite(it) or it != int(it) or it < 0:
            raise DataError(f"{path}:{line_no}: 'iter' must be a whole number >= 0; "
                            f"found {json.dumps(entry['iter'])}")
        values = {}
        for key, value in entry.items():
            if key == "lr" or (isinstance(key, str) and "loss" in key):
                number = _number(value, path, line_no, key)
                if number is not None:
                    values[key] = number
        outputs = entry.get("outputs")
        if outputs is not None and not isinstance(outputs, dict):
            raise DataError(f"{path}:{line_no}: 'outputs' must be an object; found "
                            f"{json.dumps(outputs)[:60]}")
        for key, value in (outputs or {}).items():
            # vector outputs (per-class accuracies...) are not curves
            if "loss" in key and not isinstance(value, (list, dict)):
                number = _number(value, path, line_no, f"outputs.{key}")
                if number is not None and key not in values:
                    values[key] = number
        # a resumed run going back replaces what followed its snapshot
        it = int(it)
        while points and points[-1][0] >= it:
            points.pop()
        points.append((it, values))
    if not points:
        raise DataError(f"{path}: no training records: expected JSON lines with \"iter\" "
                        f"and \"loss\" and/or \"lr\"")
    names = []
    for _, values in points:
        names.extend(k for k in values if k not in names)
    table = {k: np.array([v.get(k, np.nan) for _, v in points], dtype=np.float64) for k in names}
    nan = np.full(len(points), np.nan)
    losses = {k: v for k, v in table.items() if k not in ("lr", "smoothed_loss")}
    if "loss" in losses:              # the total first
        losses = {"loss": losses.pop("loss"), **losses}
    return TrainingLog(path=path, iters=np.array([p[0] for p in points], dtype=np.int64),
                       losses=losses, smoothed=table.get("smoothed_loss", nan),
                       lr=table.get("lr", nan))


def moving_average(values, window):
    """Trailing mean over the last ``window`` points, NaNs skipped (NaN
    where a window holds no finite value)."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    sums = np.concatenate(([0.0], np.cumsum(np.where(finite, values, 0.0))))
    counts = np.concatenate(([0], np.cumsum(finite)))
    end = np.arange(1, values.size + 1)
    start = np.maximum(end - int(window), 0)
    n = counts[end] - counts[start]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[end] - sums[start]) / np.maximum(n, 1), np.nan)


# ----------------------------------------------------------------------------
# Drawing


def _font(size):
    try:
        return ImageFont.load_default(size=size)       # Pillow >= 10.1: scalable
    except TypeError:
        return ImageFont.load_default()


def _put_text(draw, xy, text, fill, font, anchor):
    """Text placed by a two-letter anchor (horizontal l/m/r, vertical t/m/b)
    measured from its bounding box, so bitmap fonts (Pillow before 10.1)
    place it the same way."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x, y = xy
    x -= {"l": left, "m": (left + right) / 2, "r": right}[anchor[0]]
    y -= {"t": top, "m": (top + bottom) / 2, "b": bottom}[anchor[1]]
    draw.text((round(x), round(y)), text, fill=fill, font=font)


def _text_height(font):
    box = font.getbbox("Ag")
    return box[3] - box[1]


def nice_ticks(lo, hi, count=6):
    """Round tick values (1, 2, 5 x 10^k steps) covering ``[lo, hi]``.
    Returns ``(ticks, lo, hi)`` with the range widened to whole steps."""
    if not hi > lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(count - 1, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    ticks = np.arange(first, last + 1) * step
    return ticks, ticks[0], ticks[-1]


def _label(value):
    return f"{value:.6g}" if value != 0 else "0"


class _Panel:
    """A rectangle of the canvas mapping (iteration, value) to pixels."""

    def __init__(self, draw, box, x_range, y_values, log_y, font):
        self.draw, self.font = draw, font
        self.left, self.top, self.right, self.bottom = box
        self.x0, self.x1 = x_range
        self.log_y = log_y
        finite = y_values[np.isfinite(y_values)]
        if log_y:
            finite = np.log10(finite[finite > 0])
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if log_y:
            lo, hi = math.floor(lo), math.ceil(hi)
            if hi == lo:
                hi = lo + 1
            self.y_ticks = np.arange(lo, hi + 1, max(1, math.ceil((hi - lo) / 6)))
            self.y0, self.y1 = lo, hi
        else:
            if lo > 0 and lo < 0.5 * hi:
                lo = 0.0                          # losses: show the zero line
            self.y_ticks, self.y0, self.y1 = nice_ticks(lo, hi)

    def px(self, x, y):
        """Pixel coordinates of data points (arrays)."""
        y = np.asarray(y, dtype=np.float64)
        if self.log_y:
            with np.errstate(divide="ignore", invalid="ignore"):
                y = np.where(y > 0, np.log10(y), np.nan)
        span_x = (self.x1 - self.x0) or 1.0
        u = self.left + (np.asarray(x, dtype=np.float64) - self.x0) / span_x * (self.right - self.left)
        v = self.bottom - (y - self.y0) / ((self.y1 - self.y0) or 1.0) * (self.bottom - self.top)
        return u, v

    def axes(self, x_ticks, y_title, x_title):
        d = self.draw
        for t in self.y_ticks:
            _, v = self.px([self.x0], [10.0 ** t if self.log_y else t])
            v = float(v[0])
            d.line([(self.left, v), (self.right, v)], fill=GRID)
            d.line([(self.left - 5, v), (self.left, v)], fill=AXIS)
            text = f"1e{int(t)}" if self.log_y else _label(t)
            _put_text(d, (self.left - 8, v), text, fill=TEXT, font=self.font, anchor="rm")
        for t in x_ticks:
            u, _ = self.px([t], [np.nan])
            u = float(u[0])
            d.line([(u, self.top), (u, self.bottom)], fill=GRID)
            d.line([(u, self.bottom), (u, self.bottom + 5)], fill=AXIS)
            _put_text(d, (u, self.bottom + 8), _label(t), fill=TEXT, font=self.font, anchor="mt")
        d.rectangle([self.left, self.top, self.right, self.bottom], outline=AXIS)
        _put_text(d, (self.left, self.top - 6), y_title, fill=TEXT, font=self.font, anchor="lb")
        if x_title:
            _put_text(d, ((self.left + self.right) / 2, self.bottom + 28), x_title, fill=TEXT,
                      font=self.font, anchor="mt")

    def curve(self, x, y, colour, width):
        """A polyline, broken where values are missing or off the scale."""
        u, v = self.px(x, y)
        ok = np.isfinite(v)
        # runs of consecutive drawable points
        breaks = np.flatnonzero(np.diff(ok.astype(np.int8)) != 0) + 1
        for run in np.split(np.arange(u.size), breaks):
            if run.size and ok[run[0]]:
                points = list(zip(u[run].tolist(), v[run].tolist()))
                if len(points) == 1:
                    r = max(width, 2)
                    self.draw.ellipse([points[0][0] - r, points[0][1] - r,
                                       points[0][0] + r, points[0][1] + r], fill=colour)
                else:
                    self.draw.line(points, fill=colour, width=width, joint="curve")

    def legend(self, entries):
        if not entries:
            return
        d = self.draw
        pad, sample, line_h = 6, 22, int(_text_height(self.font) * 1.5)
        width = max(d.textbbox((0, 0), name, font=self.font)[2] for name, _, _ in entries)
        box_w = pad * 3 + sample + width
        box_h = pad * 2 + line_h * len(entries)
        x = self.right - box_w - 8
        y = self.top + 8
        d.rectangle([x, y, x + box_w, y + box_h], fill=BACKGROUND, outline=AXIS)
        for i, (name, colour, w) in enumerate(entries):
            cy = y + pad + line_h * i + line_h // 2
            d.line([(x + pad, cy), (x + pad + sample, cy)], fill=colour, width=max(w, 2))
            _put_text(d, (x + pad * 2 + sample, cy), name, fill=TEXT, font=self.font, anchor="lm")


def plot_log(log, out_path=None, size=(1000, 700), smooth=20, log_y=False, title=None):
    """Draw the curves of ``log`` (a path or a :class:`TrainingLog`).

    Args:
        out_path: where to write the PNG (atomically); None: do not write.
        size: ``(width, height)`` in pixels.
        smooth: window (logged points) of the smoothed total when the log
            has no ``smoothed_loss``.
        log_y: loss axis in log scale.
        title: the heading (default: the log's file name).

    Returns the ``PIL.Image`` (RGB).
    """
    if not isinstance(log, TrainingLog):
        log = read_log(log)
    width, height = (int(s) for s in size)
    if width < 300 or height < 200:
        raise ValueError(f"plot size must be at least 300 x 200 pixels; got {width} x {height}")
    if int(smooth) < 1:
        raise ValueError(f"smooth must be at least 1 point; got {smooth}")
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = _font(max(11, min(width, height) // 50))
    title_font = _font(max(13, min(width, height) // 40))
    title = os.path.basename(log.path) if title is None else title
    _put_text(draw, (width / 2, 10), title, fill=TEXT, font=title_font, anchor="mt")

    x = log.iters.astype(np.float64)
    x_ticks, x0, x1 = nice_ticks(float(x.min()), float(x.max()), count=8)
    if x.min() >= 0 and x0 < 0:           # a single point: no negative iterations
        x0, x_ticks = 0.0, x_ticks[x_ticks >= 0]
    has_loss = bool(log.losses)
    has_lr = bool(np.isfinite(log.lr).any())

    total = log.losses.get("loss")
    if np.isfinite(log.smoothed).any():
        smoothed, smoothed_name = log.smoothed, "smoothed loss"
    elif total is not None:
        smoothed, smoothed_name = moving_average(total, smooth), f"loss (mean of {int(smooth)})"
    else:
        smoothed = None

    left, right, top, bottom = 90, width - 20, 36 + _text_height(title_font), height - 50
    if has_loss and has_lr:
        split = top + int((bottom - top - 60) * 0.68)
        boxes = [(left, top, right, split), (left, split + 60, right, bottom)]
    else:
        boxes = [(left, top, right, bottom)]

    if has_loss:
        series = list(log.losses.items())
        y_all = np.concatenate([v for _, v in series] + ([smoothed] if smoothed is not None else []))
        panel = _Panel(draw, boxes[0], (x0, x1), y_all, log_y, font)
        panel.axes(x_ticks, "loss" + (" (log scale)" if log_y else ""),
                   None if has_lr else "iteration")
        entries, colours = [], iter(PALETTE * (1 + len(series) // len(PALETTE)))
        for name, values in series:
            colour, line_w = (RAW_TOTAL, 1) if name == "loss" else (next(colours), 1)
            panel.curve(x, values, colour, line_w)
            entries.append((name, colour, line_w))
        if smoothed is not None:
            panel.curve(x, smoothed, SMOOTHED, 3)
            entries.append((smoothed_name, SMOOTHED, 3))
        panel.legend(entries)
    if has_lr:
        lr = log.lr
        finite = lr[np.isfinite(lr)]
        lr_log = bool(finite.size and finite.min() > 0 and finite.max() >= 10 * finite.min())
        panel = _Panel(draw, boxes[-1], (x0, x1), lr, lr_log, font)
        panel.axes(x_ticks, "learning rate" + (" (log scale)" if lr_log else ""), "iteration")
        panel.curve(x, lr, LR_COLOUR, 2)
        panel.legend([("lr", LR_COLOUR, 2)])
    if out_path is not None:
        with atomic_writer(os.fspath(out_path)) as handle:
            image.save(handle, format="PNG")
    return image


def _smoothed_total(log, smooth):
    """The curve a log is compared by: its smoothed total loss (the log's
    own smoothing when it has one), else its first loss, smoothed."""
    if np.isfinite(log.smoothed).any():
        return log.smoothed
    name = "loss" if "loss" in log.losses else next(iter(log.losses), None)
    if name is None:
        return np.full(log.iters.size, np.nan)
    return moving_average(log.losses[name], smooth)


def plot_logs(logs, out_path=None, labels=None, size=(1000, 700), smooth=20, log_y=False,
              title=None):
    """Overlay several logs (paths or :class:`TrainingLog`): each log's
    smoothed total loss in one panel and its learning rate in another, one
    colour per log, labelled by ``labels`` (default: the file names).
    Returns the ``PIL.Image``; writes a PNG when ``out_path`` is given."""
    logs = [log if isinstance(log, TrainingLog) else read_log(log) for log in logs]
    labels = list(labels) if labels is not None else [os.path.basename(l.path) for l in logs]
    if not logs or len(labels) != len(logs):
        raise ValueError(f"need one label per log; got {len(labels)} labels for {len(logs)} logs")
    width, height = (int(s) for s in size)
    if width < 300 or height < 200:
        raise ValueError(f"plot size must be at least 300 x 200 pixels; got {width} x {height}")
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = _font(max(11, min(width, height) // 50))
    title_font = _font(max(13, min(width, height) // 40))
    _put_text(draw, (width / 2, 10), title or "training loss: " + " vs ".join(labels),
              fill=TEXT, font=title_font, anchor="mt")
    curves = [_smoothed_total(log, int(smooth)) for log in logs]
    x_all = np.concatenate([log.iters for log in logs]).astype(np.float64)
    x_ticks, x0, x1 = nice_ticks(float(x_all.min()), float(x_all.max()), count=8)
    if x_all.min() >= 0 and x0 < 0:
        x0, x_ticks = 0.0, x_ticks[x_ticks >= 0]
    left, right, top, bottom = 90, width - 20, 36 + _text_height(title_font), height - 50
    split = top + int((bottom - top - 60) * 0.68)
    colours = PALETTE * (1 + len(logs) // len(PALETTE))
    loss_panel = _Panel(draw, (left, top, right, split), (x0, x1), np.concatenate(curves),
                        log_y, font)
    loss_panel.axes(x_ticks, "smoothed loss" + (" (log scale)" if log_y else ""), None)
    lr_all = np.concatenate([log.lr for log in logs])
    finite = lr_all[np.isfinite(lr_all)]
    lr_log = bool(finite.size and finite.min() > 0 and finite.max() >= 10 * finite.min())
    lr_panel = _Panel(draw, (left, split + 60, right, bottom), (x0, x1), lr_all, lr_log, font)
    lr_panel.axes(x_ticks, "learning rate" + (" (log scale)" if lr_log else ""), "iteration")
    for log, curve, colour in zip(logs, curves, colours):
        loss_panel.curve(log.iters, curve, colour, 2)
        lr_panel.curve(log.iters, log.lr, colour, 2)
    loss_panel.legend([(label, colour, 2) for label, colour in zip(labels, colours)])
    if out_path is not None:
        with atomic_writer(os.fspath(out_path)) as handle:
            image.save(handle, format="PNG")
    return image
