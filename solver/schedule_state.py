"""The state of a schedule run and the keys that decide what a resumed run
skips: ``<out>/schedule_state.json`` (written atomically after every
stage) records each stage's status, outputs and key, a hash of what its
result depends on (its definition, net files, data, seed, dtype, the
pretrained weights and the keys of the stages it reads from).

    key, components = stage_key(runner, stage)
    skip_reason(stage, old_entry, key, resume, out)  # None: the stage runs
"""
import glob
import hashlib
import json
import os
import time

import numpy as np
from google.protobuf import text_format

from netdef.snapshot_format import atomic_writer
from solver.schedule_file import ScheduleError
from solver.snapshot import STATE_SUFFIX

__all__ = ["STATE_FILE", "STATE_KIND", "STATE_VERSION", "load_state", "save_state",
           "new_state", "digest", "stage_seed", "stage_key", "skip_reason", "run_reason",
           "resumable_snapshot", "write_json", "write_text"]

STATE_FILE = "schedule_state.json"
STATE_KIND = "netdef-schedule-state"
STATE_VERSION = 1

#: Why a stage runs again, per component of its key that changed.
COMPONENT_WORDS = {"definition": "its settings in the schedule changed",
                   "net files": "its net file changed",
                   "inputs": "a stage it reads from was redone or changed",
                   "data": "the dataset or split changed", "seed": "the seed changed",
                   "dtype": "the dtype changed", "pretrained": "the pretrained weights changed"}

#: The outputs of each stage kind recorded in its state entry.
OUTPUT_FIELDS = {"train": ("solverstate", "caffemodel"), "proposals": ("file",),
                 "assemble": ("caffemodel",)}


# -- files -------------------------------------------------------------------------------------

def digest(value):
    """SHA-256 of ``value``'s canonical JSON."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()


def _file_digest(path):
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            sha.update(block)
    return sha.hexdigest()


def _file_identity(path):
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def write_json(path, value):
    with atomic_writer(path) as handle:
        handle.write((json.dumps(value, indent=1) + "\n").encode("utf-8"))


def write_text(path, text):
    with atomic_writer(path) as handle:
        handle.write(text.encode("utf-8"))


def new_state(schedule, seed):
    """The state of a fresh run of ``schedule`` (a Schedule)."""
    return {"kind": STATE_KIND, "version": STATE_VERSION,
            "schedule": os.path.abspath(schedule.path), "name": schedule.name,
            "seed": seed, "stages": {}, "evaluation": None}


def save_state(out, state):
    state["updated"] = round(time.time(), 3)
    write_json(os.path.join(out, STATE_FILE), state)


def load_state(out):
    """The state of an earlier run in ``out``, or None; ScheduleError when
    the file is unreadable or of another kind."""
    path = os.path.join(out, STATE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ScheduleError(f"{path}: cannot read the state of the earlier run ({exc}); "
                            f"remove it to start over") from None
    if state.get("kind") != STATE_KIND or state.get("version") != STATE_VERSION:
        raise ScheduleError(f"{path}: not a schedule state file of this version "
                            f"(kind {state.get('kind')!r}, version {state.get('version')!r})")
    return state


# -- keys and decisions ------------------------------------------------------------------------

def stage_seed(stage, seed):
    """The seed of ``stage``: its solver's random_seed, else the run's
    ``seed`` plus the stage's index."""
    if stage.kind == "train" and stage.param.solver.random_seed >= 0:
        return int(stage.param.solver.random_seed)
    return seed + stage.index


def stage_key(runner, stage):
    """``(key, components)``: what ``stage``'s result depends on in the run
    ``runner`` (a ScheduleRun: its data, splits, seed, dtype, ``--iters``
    and the keys of the stages before), each component's digest, and the
    digest of them all."""
    p = stage.param
    definition = p.__class__()
    definition.CopyFrom(p)
    if stage.kind == "train" and runner.iters is not None:
        definition.solver.max_iter = runner.iters
    components = {
        "definition": text_format.MessageToString(definition),
        "net files": {os.path.basename(f): _file_digest(f) for f in [stage.net]},
        "inputs": {name: runner.keys[name] for name in stage.reads},
        "data": [os.path.abspath(runner.root), runner.train_split, runner.on_error],
        "seed": stage_seed(stage, runner.seed) if stage.kind == "train" else None,
        "dtype": runner.dtype.name,
    }
    if stage.kind == "proposals":
        split = p.generate_proposals.split or runner.train_split
        components["data"] = [os.path.abspath(runner.root), split, runner.on_error]
    if stage.kind == "train" and "pretrained" in p.init_from:
        weights = runner.pretrained_path()
        components["pretrained"] = _file_identity(weights) if weights else None
    digests = {name: digest(value) for name, value in components.items()}
    return digest(digests), digests


def _outputs_exist(stage, entry, out):
    return all(entry.get(f) and os.path.isfile(os.path.join(out, entry[f]))
               for f in OUTPUT_FIELDS[stage.kind])


def skip_reason(stage, old, key, resume, out):
    """Why a stage done in an earlier run is skipped now (None: it runs)."""
    if not resume or not old or old.get("status") != "done" or old.get("key") != key:
        return None
    if not _outputs_exist(stage, old, out):
        return None
    if stage.kind == "train":
        return f"done in an earlier run (iteration {old.get('iter')}, {old.get('caffemodel')})"
    if stage.kind == "proposals":
        return (f"done in an earlier run ({old.get('boxes')} proposals of "
                f"{old.get('images')} images in {old.get('file')})")
    return f"done in an earlier run ({old.get('caffemodel')})"


def run_reason(old, key, components, resume):
    """Why a stage runs (its earlier entry ``old``, its key and components)."""
    if not old:
        return "not run before"
    status = old.get("status")
    if old.get("key") != key:
        changed = [COMPONENT_WORDS.get(name, name) for name, value in components.items()
                   if (old.get("components") or {}).get(name) != value]
        return "again: " + ("; ".join(changed) if changed else "its inputs changed")
    if status == "done":
        return "again: its outputs are missing" if resume else "again"
    if status == "interrupted":
        return f"continuing: it was interrupted at iteration {old.get('iter')}"
    return f"again: it {status or 'did not finish'} in the earlier run"


def _snapshot_meta(path):
    """The JSON metadata of a ``.solverstate.npz`` without reading its arrays
    ({} when unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return json.loads(bytes(archive["__meta__"]).decode("utf-8")).get("meta", {})
    except Exception:  # a damaged or foreign file is just not a candidate
        return {}


def resumable_snapshot(prefix, key, say, rel=os.path.relpath):
    """The latest snapshot under ``prefix`` written by this stage
    definition (its metadata carries the stage key ``key``), or None;
    ``say`` notes the ones passed over (named by ``rel(path)``)."""
    found = []
    for path in glob.glob(glob.escape(prefix) + "_iter_*" + STATE_SUFFIX):
        tail = path[len(prefix) + len("_iter_"):-len(STATE_SUFFIX)]
        if tail.isdigit():
            found.append((int(tail), path))
    for _, path in sorted(found, reverse=True):
        meta = _snapshot_meta(path)
        if meta.get("kind") == "solverstate" and \
                (meta.get("metadata") or {}).get("stage_key") == key:
            return path
        say(f"  note: {rel(path)} belongs to another definition of the stage "
            f"(or is unreadable): not resumed from")
    return None
