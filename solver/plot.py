"""The training-curve command over :mod:`detection.plot`:

    python -m solver.plot train_log.jsonl --out curves.png

draws the loss and learning-rate curves of a JSON-lines training log (what
:mod:`solver.progress` writes) to a PNG; see :mod:`detection.plot` for what
is read and drawn.
"""
import argparse
import os
import sys

from detection.plot import TrainingLog, plot_log, read_log  # noqa: F401
from solver.cli import exit_status

__all__ = ["TrainingLog", "read_log", "plot_log", "main"]


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
        description="Draw the loss and learning-rate curves of a JSON-lines training log.")
    parser.add_argument("log", help="training log (.jsonl) written by the solver")
    parser.add_argument("--out", help="output PNG (default: the log's name with .png)")
    parser.add_argument("--size", type=_size, default=(1000, 700), help="WIDTHxHEIGHT (1000x700)")
    parser.add_argument("--smooth", type=int, default=20,
                        help="points in the smoothed total when the log has no smoothed_loss")
    parser.add_argument("--log-y", action="store_true", help="loss axis in log scale")
    parser.add_argument("--title", help="heading (default: the log's file name)")
    args = parser.parse_args(argv)
    return exit_status(lambda: _run(args), errors=(ValueError,))


def _run(args):
    out = args.out or os.path.splitext(args.log)[0] + ".png"
    log = read_log(args.log)
    plot_log(log, out, size=args.size, smooth=args.smooth, log_y=args.log_y, title=args.title)
    print(f"{out}: {len(log.iters)} points, iterations {log.iters[0]}..{log.iters[-1]}, "
          f"losses: {', '.join(log.losses) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
