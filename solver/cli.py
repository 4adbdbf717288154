"""What every command-line entry point shares: the device options, the
built-in dataset, opening a dataset split, and the one mapping of errors to
exit statuses.

    parser = argparse.ArgumentParser(...)
    add_device_arguments(parser)                 # --gpu N | --cpu
    device = select_device(args.gpu)
    root = args.data or builtin_dataset(say)
    dataset = open_dataset(root, "trainval")
    return exit_status(lambda: run(args))       # 0 / 1 / 2 / 130
"""
import os
import sys
import time

from netdef.device import CPU, Device
from netdef.device_check import require_gpu
from netdef.errors import EngineError, NumericalError
from detection.datasets import load_dataset
from detection.datasets.synthetic import default_dataset_root, ensure_dataset
from detection.datasets.voc import find_voc_years, is_voc_layout

__all__ = ["add_device_arguments", "select_device", "builtin_dataset", "is_coco_path",
           "open_dataset", "exit_status", "EXIT_NUMERICAL", "EXIT_USER_ERROR",
           "EXIT_INTERRUPTED"]

EXIT_NUMERICAL = 1      # training stopped by a non-finite loss or gradient
EXIT_USER_ERROR = 2     # an EngineError: a mistake in a file, an option or the data
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as a shell reports it)


def exit_status(run, *, errors=()):
    """Run ``run()`` as a command and return its exit status: what it
    returns; for a NumericalError ``error: ...`` on stderr and 1; for any
    other EngineError (or one of the extra ``errors`` types) ``error: ...``
    on stderr and 2; 130 for Ctrl-C (the command says what it saved)."""
    try:
        return run()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except NumericalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NUMERICAL
    except (EngineError, *errors) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


def add_device_arguments(parser):
    """``--gpu N`` or ``--cpu`` (the default), mutually exclusive."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--gpu", type=int, metavar="N",
                       help="run on GPU N through CuPy (an error when CuPy sees no GPU)")
    group.add_argument("--cpu", action="store_true", help="run on the CPU (the default)")


def select_device(gpu):
    """The CPU for ``gpu`` None. Else GPU ``gpu``, once the GPU probe
    (``netdef.device_check``: CuPy, the device, cuBLAS, NVRTC, cuRAND, free
    memory) passes, before anything is built; a DeviceError carrying the
    probe's report (what is missing, the install command) when it does not.
    The command owns that GPU: it becomes the process's current device."""
    if gpu is None:
        return CPU
    require_gpu(gpu)
    device = Device("gpu", gpu)
    device.make_current()
    return device


def builtin_dataset(say=print):
    """The root of the built-in synthetic dataset (generated on first use),
    announced through ``say``."""
    root = default_dataset_root()
    fresh = not os.path.isfile(os.path.join(root, "synthetic.json"))
    started = time.perf_counter()
    if fresh:
        say(f"no --data: generating the built-in synthetic dataset (6 shape classes, 1000 "
            f"trainval + 200 test images of 192x256) in {root} ...")
    root = ensure_dataset()
    if fresh:
        say(f"generated in {time.perf_counter() - started:.1f}s")
    else:
        say(f"no --data: using the built-in synthetic dataset (6 shape classes, 1000 trainval "
            f"+ 200 test images of 192x256) in {root}")
    return root


def is_coco_path(path):
    """True for a COCO instances JSON or a COCO root folder."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path.lower().endswith(".json")
    return os.path.isdir(path) and not (is_voc_layout(path) or find_voc_years(path))


def open_dataset(root, split, *, on_error="raise", for_testing=False, check_images=False):
    """``load_dataset`` with the options an entry point wants: a test split
    keeps images without objects (they can still get false positives);
    ``check_images`` (``--check-images``) decodes every image while
    validating, so a truncated or corrupt file stops (or, with ``on_error``
    "skip", is left out) before training instead of when first drawn."""
    options = {"keep_empty": True} if for_testing else {}
    if check_images:
        options["check_images"] = True
    return load_dataset(root, split, on_error=on_error, **options)
