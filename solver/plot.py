"""The training-curve command over :mod:`detection.plot`:

    python -m solver.plot train_log.jsonl --out curves.png
    python -m solver.plot ours/train_log.jsonl caffe.log --labels ours caffe --out vs.png

draws the loss and learning-rate curves of a training log to a PNG. A log
is our JSON-lines log (what :mod:`solver.progress` writes) or a Caffe text
log (``caffe train ... 2>&1 | tee caffe.log``; see
:mod:`detection.caffe_log`). With one log every loss is drawn; with several
their smoothed total losses and learning rates are overlaid, one colour per
log.
"""
import argparse
import os
import sys

from detection.caffe_log import read_training_log
from detection.plot import TrainingLog, plot_log, plot_logs, read_log  # noqa: F401
from solver.cli import exit_status

__all__ = ["TrainingLog", "read_log", "plot_log", "plot_logs", "main"]


# ----------------------------------------------------------------------------
# Command line


def _size(text):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1000x700; got {text!r}")
    return w, h


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m solver.plot",
        description="Draw the loss and learning-rate curves of training logs (ours or "
                    "Caffe's); several logs are overlaid.")
    parser.add_argument("logs", nargs="+", metavar="LOG",
                        help="training log: .jsonl written by the solver, or a Caffe text log")
    parser.add_argument("--out", help="output PNG (default: the first log's name with .png)")
    parser.add_argument("--labels", nargs="+", help="legend names of the logs when overlaid "
                        "(default: the file names)")
    parser.add_argument("--size", type=_size, default=(1000, 700), help="WIDTHxHEIGHT (1000x700)")
    parser.add_argument("--smooth", type=int, default=20,
                        help="points in the smoothed total when the log has no smoothed loss")
    parser.add_argument("--log-y", action="store_true", help="loss axis in log scale")
    parser.add_argument("--title", help="heading (default: the log's file name)")
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.logs):
        parser.error(f"--labels gives {len(args.labels)} names for {len(args.logs)} logs")
    return exit_status(lambda: _run(args), errors=(ValueError,))


def _run(args):
    out = args.out or os.path.splitext(args.logs[0])[0] + ".png"
    logs = [read_training_log(path) for path in args.logs]
    if len(logs) == 1:
        plot_log(logs[0], out, size=args.size, smooth=args.smooth, log_y=args.log_y,
                 title=args.title)
    else:
        plot_logs(logs, out, labels=args.labels, size=args.size, smooth=args.smooth,
                  log_y=args.log_y, title=args.title)
    for log in logs:
        print(f"{log.path}: {len(log.iters)} points, iterations {log.iters[0]}..{log.iters[-1]}, "
              f"losses: {', '.join(log.losses) or 'none'}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
