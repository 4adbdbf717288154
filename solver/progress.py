"""What a training run reports: a human progress line and a JSON-lines log.

Every record is one JSON object on its own line, with an ``event`` field
("train", "test", "snapshot", "restore", "interrupt", "error", "info") and
``wall_time`` (seconds since the epoch); the solver adds the rest (iteration,
loss, lr, outputs, ...). The log file is opened for appending, so a resumed
run continues the same file.

    progress = Progress("train_log.jsonl")
    progress.train(iter=20, target=1000, loss=0.71, smoothed_loss=0.69,
                   lr=0.001, outputs={"loss": 0.71})
    # stdout: iter     20/1000  loss 0.6900 (0.7100)  lr 0.001  3.21 it/s  ETA 5m05s
"""
import json
import math
import os
import sys
import time

__all__ = ["Progress", "format_duration"]


def format_duration(seconds):
    """``seconds`` as a short human duration: 42s, 5m05s, 3h07m, 2d04h."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(max(seconds, 0.0)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _json_value(value):
    """Floats, ints, strings, lists and dicts as JSON takes them (NumPy
    scalars and small arrays converted)."""
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if hasattr(value, "tolist"):  # NumPy scalars and arrays
        return _json_value(value.tolist())
    return value


class Progress:
    """Writes progress lines to ``stream`` and records to a JSON-lines file.

    Progress(log=None, stream=sys.stdout)
      log: None (no file), a path (opened for appending, created with its
        folder), or an open text file object (not closed by ``close``).
      stream: where human lines go (None: nowhere).

    Iteration speed is measured between consecutive ``train`` calls; the ETA
    uses the average speed since the first ``train`` call of this process
    (more stable than the last interval alone).
    """

    def __init__(self, log=None, stream=sys.stdout):
        self.stream = stream
        self.path = None
        self._own_file = False
        if log is None:
            self.file = None
        elif hasattr(log, "write"):
            self.file = log
        else:
            self.path = os.fspath(log)
            folder = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(folder, exist_ok=True)
            self.file = open(self.path, "a", encoding="utf-8")
            self._own_file = True
        self._first = None  # (time, iter) of the first train call
        self._last = None   # (time, iter) of the latest train call

    # -- output -------------------------------------------------------------------
    def message(self, text):
        """A human line to the stream."""
        if self.stream is not None:
            print(text, file=self.stream, flush=True)

    def record(self, event, **fields):
        """One JSON line: ``{"event": event, "wall_time": ..., **fields}``."""
        if self.file is None:
            return
        entry = {"event": event, "wall_time": round(time.time(), 3)}
        entry.update(_json_value(fields))
        self.file.write(json.dumps(entry) + "\n")
        self.file.flush()

    def event(self, event, text, **fields):
        """A human line and a record with ``message`` = ``text``."""
        self.message(text)
        self.record(event, message=text, **fields)

    # -- training progress --------------------------------------------------------------
    def reset_speed(self):
        """Forget speed measurements (call when a run pauses, e.g. for testing
        or after a restore, so the pause is not counted as training time)."""
        self._first = self._last = None

    def speed(self, it, now=None):
        """``(interval iters/s, average iters/s)`` up to iteration ``it``
        (None where nothing is measured yet); advances the measurement."""
        now = time.perf_counter() if now is None else now
        interval = average = None
        if self._last is not None and it > self._last[1] and now > self._last[0]:
            interval = (it - self._last[1]) / (now - self._last[0])
        if self._first is not None and it > self._first[1] and now > self._first[0]:
            average = (it - self._first[1]) / (now - self._first[0])
        if self._first is None:
            self._first = (now, it)
        self._last = (now, it)
        return interval, average

    def train(self, *, iter, target, loss, smoothed_loss, lr, outputs=None, **extra):
        """The progress line of a display iteration and its "train" record.

        ``iter`` is the iteration being run (Caffe's numbering: before the
        update), ``target`` the iteration the run stops at (for the ETA)."""
        rate, average = self.speed(iter)
        eta = (target - iter) / average if average else None
        line = (f"iter {iter:>{len(str(target))}d}/{target}  loss {smoothed_loss:.4f} "
                f"({loss:.4f})  lr {lr:.4g}  "
                + (f"{rate:.2f} it/s" if rate else "- it/s")
                + f"  ETA {format_duration(eta)}")
        self.message(line)
        self.record("train", iter=iter, loss=loss, smoothed_loss=smoothed_loss, lr=lr,
                    outputs=outputs or {}, iters_per_s=rate, eta_s=eta, **extra)

    def close(self):
        if self._own_file and self.file is not None:
            self.file.close()
        self.file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
