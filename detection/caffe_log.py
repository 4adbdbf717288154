"""Training logs as tables: Caffe's text logs and our JSON-lines logs.

Caffe prints its progress through glog; its ``tools/extra/parse_log.py``
turns such a log into two CSV tables. This module reads the same lines and
writes the same tables, and reads our own JSON-lines log (what
:mod:`solver.progress` writes) into tables of the same columns, so logs of
both engines can be compared in one spreadsheet or one picture:

    tables = read_log_tables("caffe.log")          # or "train_log.jsonl"
    write_csv_tables(tables, "out/")               # out/caffe.log.train, .test
    log = training_log(tables)                     # for detection.plot

Caffe lines read (anything else is skipped, as parse_log.py does)::

    I0210 13:39:22.381027 25210 solver.cpp:228] Iteration 100, loss = 0.6914
    I0210 13:39:22.381090 25210 solver.cpp:244]     Train net output #0: loss = 0.6914 (* 1 = 0.6914 loss)
    I0210 13:39:22.381101 25210 sgd_solver.cpp:106] Iteration 100, lr = 0.01
    I0210 13:39:25.120011 25210 solver.cpp:404]     Test net output #0: accuracy = 0.91

Columns of both tables: ``NumIters``, ``Seconds`` (since the line that
starts solving, from the glog timestamps), ``LearningRate`` (the last rate
printed before the row; the first row takes the second row's, as Caffe's
tool does), then each output by name in order of first appearance. A row
is one iteration's outputs; an output name repeating at the same iteration
(a second test net) starts a new row.
"""
import csv
import dataclasses
import datetime
import io
import json
import math
import os
import re

import numpy as np

from detection.plot import TrainingLog, read_log
from netdef.errors import DataError
from netdef.snapshot_format import atomic_writer

__all__ = ["LogTables", "read_log_tables", "parse_caffe_log", "parse_json_log",
           "write_csv_tables", "training_log", "read_training_log", "is_json_log"]

FIRST_COLUMNS = ("NumIters", "Seconds", "LearningRate")

_ITERATION = re.compile(r"Iteration (\d+)")
_OUTPUT = {"train": re.compile(r"Train net output #(\d+): (\S+) = ([-+.\deE]+|nan|inf)"),
           "test": re.compile(r"Test net output #(\d+): (\S+) = ([-+.\deE]+|nan|inf)")}
_LEARNING_RATE = re.compile(r"lr = ([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)")
_SMOOTHED_LOSS = re.compile(r"Iteration (\d+)(?: \([^)]*\))?, loss = ([-+.\deE]+|nan|inf)")
_GLOG_TIME = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{1,6})")


@dataclasses.dataclass
class LogTables:
    """The two tables of one log.

    Attributes:
        path: the log read.
        train, test: rows, each a dict of column -> float, columns in the
            order of :func:`columns`.
        smoothed: ``(iteration, loss)`` pairs of Caffe's "Iteration N, loss
            = X" lines (its average over ``average_loss`` iterations); empty
            for our logs, whose train rows carry ``smoothed_loss``.
    """
    path: str
    train: list
    test: list
    smoothed: list = dataclasses.field(default_factory=list)

    @staticmethod
    def columns(rows):
        names = list(FIRST_COLUMNS)
        for row in rows:
            names.extend(k for k in row if k not in names)
        return names


def _read_text(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the training log: {exc.strerror or exc}") from None


def is_json_log(text):
    """Whether ``text`` is a JSON-lines log (its first non-blank line is an object)."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first.startswith("{")


class _Clock:
    """Seconds since the start of solving, from glog's month-day timestamps
    (no year: a log crossing New Year counts on into the next one)."""

    def __init__(self):
        self.start = self.last = None
        self.year = 2000                  # a leap year, so 02-29 is a date

    def read(self, line):
        match = _GLOG_TIME.match(line)
        if not match:
            return None
        month, day, hour, minute, second, fraction = match.groups()
        when = datetime.datetime(self.year, int(month), int(day), int(hour), int(minute),
                                 int(second), int(fraction.ljust(6, "0")))
        if self.last is not None and when < self.last - datetime.timedelta(days=180):
            self.year += 1
            when = when.replace(year=self.year)
        self.last = when
        return when

    def seconds(self, when):
        if when is None or self.start is None:
            return math.nan
        return (when - self.start).total_seconds()


class _RowBuilder:
    """Gathers one table's rows: outputs of one iteration make one row."""

    def __init__(self):
        self.rows = []

    def add(self, iteration, seconds, learning_rate, name, value):
        row = self.rows[-1] if self.rows else None
        if row is None or row["NumIters"] != iteration or name in row:
            row = {"NumIters": iteration, "Seconds": seconds, "LearningRate": learning_rate}
            self.rows.append(row)
        row[name] = value

    def finish(self):
        if len(self.rows) > 1 and math.isnan(self.rows[0]["LearningRate"]):
            self.rows[0]["LearningRate"] = self.rows[1]["LearningRate"]
        return self.rows


def parse_caffe_log(path):
    """Read a Caffe text log into :class:`LogTables`."""
    path = os.fspath(path)
    text = _read_text(path)
    clock, tables = _Clock(), {"train": _RowBuilder(), "test": _RowBuilder()}
    iteration, learning_rate, smoothed = None, math.nan, []
    for line in text.splitlines():
        when = clock.read(line)
        if clock.start is None and when is not None and "Solving" in line:
            clock.start = when
        found = _ITERATION.search(line)
        if found:
            iteration = int(found.group(1))
        if iteration is None:
            continue                      # nothing counts before the first iteration
        if clock.start is None and when is not None:
            clock.start = when            # a log cut before "Solving"
        found = _LEARNING_RATE.search(line)
        if found:
            learning_rate = float(found.group(1))
        found = _SMOOTHED_LOSS.search(line)
        if found:
            smoothed.append((int(found.group(1)), float(found.group(2))))
        for kind, pattern in _OUTPUT.items():
            found = pattern.search(line)
            if found:
                tables[kind].add(iteration, clock.seconds(when), learning_rate,
                                 found.group(2), float(found.group(3)))
    if iteration is None:
        raise DataError(f"{path}: no 'Iteration N' line: not a Caffe training log "
                        f"(nor a JSON-lines log of ours)")
    return LogTables(path, tables["train"].finish(), tables["test"].finish(), smoothed)


def _scalar_outputs(entry):
    outputs = entry.get("outputs") or {}
    if not isinstance(outputs, dict):
        return {}
    return {k: float(v) for k, v in outputs.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def parse_json_log(path):
    """Read our JSON-lines log into :class:`LogTables` (train and test records)."""
    path = os.fspath(path)
    log = read_log(path)                  # validates the file and its train points
    start, learning_rate, rows = None, math.nan, {"train": [], "test": []}
    for line in _read_text(path).splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue                      # read_log has vetted the file; a partial last line
        if not isinstance(entry, dict):
            continue
        if start is None and isinstance(entry.get("wall_time"), (int, float)):
            start = entry["wall_time"]    # the run starts at its first record
        event = entry.get("event", "train")
        if event not in rows or entry.get("iter") is None:
            continue
        if isinstance(entry.get("lr"), (int, float)):
            learning_rate = float(entry["lr"])
        row = {"NumIters": entry["iter"],
               "Seconds": entry.get("wall_time", math.nan) - (start or 0.0),
               "LearningRate": learning_rate}
        row.update(_scalar_outputs(entry))
        if event == "train" and "loss" not in row and isinstance(entry.get("loss"), float):
            row["loss"] = entry["loss"]
        rows[event].append(row)
    if not log.iters.size:
        raise DataError(f"{path}: no training records")
    return LogTables(path, rows["train"], rows["test"])


def read_log_tables(path):
    """:class:`LogTables` of a Caffe text log or of our JSON-lines log."""
    path = os.fspath(path)
    return parse_json_log(path) if is_json_log(_read_text(path)) else parse_caffe_log(path)


def write_csv_tables(tables, out_dir, delimiter=","):
    """Write ``<log name>.train`` and ``<log name>.test`` CSV files (header
    line first) into ``out_dir``, as Caffe's parse_log.py names them.
    Returns the two paths."""
    stem = os.path.basename(tables.path)
    paths = []
    try:
        os.makedirs(out_dir, exist_ok=True)
        for kind, rows in (("train", tables.train), ("test", tables.test)):
            target = os.path.join(out_dir, f"{stem}.{kind}")
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=LogTables.columns(rows),
                                    delimiter=delimiter, restval="nan", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            with atomic_writer(target) as handle:
                handle.write(text.getvalue().encode("utf-8"))
            paths.append(target)
    except OSError as exc:
        raise DataError(f"{out_dir}: cannot write the CSV tables: "
                        f"{exc.strerror or exc}") from None
    return paths


def training_log(tables):
    """A :class:`detection.plot.TrainingLog` of the train table, for drawing:
    every output whose name contains ``loss``, the learning rate, and
    Caffe's smoothed total where the log printed it."""
    rows = [r for r in tables.train if r.get("NumIters") is not None]
    if not rows:
        raise DataError(f"{tables.path}: no training outputs to draw "
                        f"(no 'Train net output' lines)")
    iters = np.array([r["NumIters"] for r in rows], dtype=np.int64)
    names = [c for c in LogTables.columns(rows) if "loss" in c and c != "smoothed_loss"]
    losses = {k: np.array([r.get(k, np.nan) for r in rows], dtype=np.float64) for k in names}
    smoothed = dict(tables.smoothed)
    return TrainingLog(path=tables.path, iters=iters, losses=losses,
                       smoothed=np.array([smoothed.get(int(i), np.nan) for i in iters]),
                       lr=np.array([r["LearningRate"] for r in rows], dtype=np.float64))


def read_training_log(path):
    """A TrainingLog from either kind of log: ours through
    :func:`detection.plot.read_log`, Caffe's through its tables."""
    path = os.fspath(path)
    if is_json_log(_read_text(path)):
        return read_log(path)
    return training_log(parse_caffe_log(path))
