"""Caffe's log parser, for Caffe's logs and ours:

    python -m solver.parse_log caffe.log OUT_DIR [--delimiter ,]

writes ``OUT_DIR/caffe.log.train`` and ``OUT_DIR/caffe.log.test``: CSV
tables with the columns Caffe's ``tools/extra/parse_log.py`` writes
(NumIters, Seconds, LearningRate, then every net output by name). The log
may also be our JSON-lines training log; see :mod:`detection.caffe_log`.
"""
import argparse
import sys

from detection.caffe_log import LogTables, read_log_tables, write_csv_tables
from solver.cli import exit_status

__all__ = ["main"]


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m solver.parse_log",
        description="Write the train and test tables of a training log (Caffe's text log "
                    "or our .jsonl) as CSV files, as Caffe's parse_log.py does.")
    parser.add_argument("log", help="Caffe text log or our JSON-lines training log")
    parser.add_argument("out_dir", help="folder for <log name>.train and <log name>.test")
    parser.add_argument("--delimiter", default=",", help="column separator (default ,)")
    parser.add_argument("--verbose", action="store_true", help="also print the tables' sizes")
    args = parser.parse_args(argv)
    if len(args.delimiter) != 1:
        parser.error(f"--delimiter must be one character; got {args.delimiter!r}")
    return exit_status(lambda: _run(args), errors=(ValueError,))


def _run(args):
    tables = read_log_tables(args.log)
    paths = write_csv_tables(tables, args.out_dir, delimiter=args.delimiter)
    for path, rows in zip(paths, (tables.train, tables.test)):
        columns = LogTables.columns(rows)
        print(f"{path}: {len(rows)} rows" + (f", columns {', '.join(columns)}"
                                              if args.verbose else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
