"""Command-line pieces the net generators of prototxt/ share: the
``--phase`` option and ``--regenerate`` (rewrite the generated files kept
in prototxt/)."""
from pathlib import Path

#: The folder the committed generated files live in.
HERE = Path(__file__).resolve().parent

PHASE_HELP = ("the net of one phase, or BOTH in one file (include rules), which is what "
              "python -m solver.train takes")


def add_phase_argument(parser, default="TRAIN", help_text=PHASE_HELP):
    """``--phase TRAIN|TEST|BOTH`` (any case)."""
    parser.add_argument("--phase", choices=("TRAIN", "TEST", "BOTH"), default=default,
                        type=str.upper, help=f"{help_text} (default {default})")


def add_regenerate_argument(parser, what="the generated files kept in prototxt/"):
    parser.add_argument("--regenerate", action="store_true", help=f"rewrite {what}")


def regenerate(files, folder=HERE):
    """Write ``files`` (file name -> text) into ``folder`` (made if
    missing; default prototxt/), saying each; returns the exit status 0."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
        print(f"wrote {folder / name}")
    return 0
