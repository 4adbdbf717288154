"""The long fuzz campaign: thousands of mutated prototxt and binary files,
each run in a worker process under a time limit; prints what escaped.

    python -m tools.fuzz_campaign                        # 5,000 prototxt + 2,000 binary
    python -m tools.fuzz_campaign --prototxt 300 --binary 200 --seed 3
    python -m tools.fuzz_campaign --seed 0 --replay binary:69   # one case, in this process

The cases are tools/fuzz_cases.py's (the mutants of tests/test_fuzz.py, many
more of them, drawn from every prototxt file). Each runs in a worker process
(``--workers``, default 1) started with an address-space limit
(``--address-limit``) and the engine's memory budget (``--memory-limit``,
NETDEF_MEMORY_LIMIT), so that a runaway allocation cannot take the machine
down; a case still running after ``--timeout`` seconds (default 60) is an
escape and its worker is replaced, as is a worker that dies.

The report: cases tried, works, clean errors (project errors; binary ones
that do not name the file counted apart), escapes (other exceptions,
MemoryError, timeouts, crashes, failed loads that changed state), the rate
in cases per second, and each escape grouped by where it surfaced, with its
mutation and the command that replays it. Mutants are only ever written in
temporary folders (a replay keeps its mutant in one and prints its path).
Exit status: 0 when nothing escaped, 1 otherwise.
"""
import argparse
import collections
import contextlib
import dataclasses
import json
import os
import resource
import selectors
import subprocess
import sys
import tempfile
import time

from tools.fuzz_cases import (PROTOTXT_FILES, SMALL_PROTOTXT, Outcome, copy_prototxt_files, make_binary_seeds,
                              make_case, mutant_path, run_case)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUFFIXES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text):
    """'8G' -> 8 * 2**30 (a K/M/G/T suffix, powers of 1024, or plain bytes)."""
    text = text.strip().upper()
    scale = SUFFIXES.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.fuzz_campaign",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--prototxt", type=int, default=5000, help="prototxt mutants (5000)")
    parser.add_argument("--binary", type=int, default=2000, help="binary mutants (2000)")
    parser.add_argument("--seed", type=int, default=0, help="the campaign's seed (0)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (1)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case (60)")
    parser.add_argument("--memory-limit", default="3G",
                        help="the engine's memory budget in the workers (3G)")
    parser.add_argument("--address-limit", default="10G",
                        help="address-space limit of a worker process (10G)")
    parser.add_argument("--max-seconds", type=float, default=0,
                        help="hand out no new case after this many seconds (a sample of "
                             "the campaign; the report projects the whole run's time)")
    parser.add_argument("--skip", type=int, default=0,
                        help="skip the first N cases (to finish a run that --max-seconds cut)")
    parser.add_argument("--small", action="store_true",
                        help="prototxt cases of the small files only, as tests/test_fuzz.py")
    parser.add_argument("--json", help="also write every outcome as JSON to this file")
    parser.add_argument("--replay", metavar="CASE",
                        help="run one case (e.g. prototxt:17) here and show its traceback")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def sources(args):
    """The prototxt files cases are drawn from."""
    return SMALL_PROTOTXT if args.small else PROTOTXT_FILES


# -- the worker process ---------------------------------------------------------------------

def worker_main(args):
    """Read case names on stdin, answer one JSON outcome per line. The
    engine's own prints go to /dev/null; answers use a copy of stdout."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
    with tempfile.TemporaryDirectory(prefix="fuzz_worker_") as folder:
        copy_prototxt_files(folder)
        seeds = make_binary_seeds(os.path.join(folder, "seeds"))
        answers.write("ready\n")
        for line in sys.stdin:
            kind, index = line.strip().split(":")
            case = make_case(args.seed, kind, int(index), sources(args), seeds)
            outcome = run_case(case, folder, limit=max(args.timeout - 5, 1))
            answers.write(json.dumps(dataclasses.asdict(outcome)) + "\n")
            with contextlib.suppress(OSError):   # (a net case writes none)
                os.unlink(mutant_path(case, folder))


def _limit_address_space(limit):
    def apply():
        os.setsid()
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


class Worker:
    """One worker process and the case it is running."""

    def __init__(self, args):
        env = dict(os.environ, NETDEF_MEMORY_LIMIT=args.memory_limit, OPENBLAS_NUM_THREADS="1",
                   OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        self.folder = tempfile.TemporaryDirectory(prefix="fuzz_campaign_")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tools.fuzz_campaign", "--worker", "--seed", str(args.seed),
             "--timeout", str(args.timeout)] + (["--small"] if args.small else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            bufsize=1, cwd=self.folder.name, env=env,
            preexec_fn=_limit_address_space(parse_bytes(args.address_limit)))
        self.case, self.started = None, None
        self.ready = self.process.stdout.readline().strip() == "ready"

    def send(self, case):
        self.case, self.started = case, time.monotonic()
        self.process.stdin.write(case + "\n")
        self.process.stdin.flush()

    def stop(self):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, 9)
        self.process.wait()
        self.folder.cleanup()


def _lost(case, what, seconds):
    kind = case.split(":")[0]
    return Outcome(case, f"({kind})", [], "escape", what, "(worker process)", seconds)


def _finish(worker, line):
    """The outcome a worker answered, or the escape of a worker that died."""
    seconds = time.monotonic() - worker.started
    if line:
        return Outcome(**json.loads(line))
    code = worker.process.wait()
    return _lost(worker.case, f"worker died (exit status {code})", seconds)


# -- the campaign ---------------------------------------------------------------------------

def case_names(args):
    """``prototxt:i`` and ``binary:i``, interleaved so that a shorter run
    still covers both kinds."""
    names = []
    for i in range(max(args.prototxt, args.binary)):
        names += [f"{kind}:{i}" for kind, count in (("prototxt", args.prototxt),
                                                     ("binary", args.binary)) if i < count]
    return names


class Campaign:
    """Runs the cases over the workers; ``outcomes`` in finishing order."""

    def __init__(self, args, log=sys.stderr):
        self.args, self.log = args, log
        self.pending = collections.deque(case_names(args)[args.skip:])
        self.total = len(self.pending)
        self.outcomes, self.workers = [], []
        self.started, self.stopped = time.monotonic(), ""
        self.selector = selectors.DefaultSelector()
        self.seeds_folder = tempfile.TemporaryDirectory(prefix="fuzz_seeds_")
        self.seeds = make_binary_seeds(self.seeds_folder.name)

    def _start(self):
        worker = Worker(self.args)
        if not worker.ready:
            worker.stop()
            raise SystemExit("fuzz_campaign: a worker process did not start (run "
                             "python -m tools.fuzz_campaign --replay prototxt:0 to see why)")
        self.selector.register(worker.process.stdout, selectors.EVENT_READ, worker)
        self.workers.append(worker)
        self._feed(worker)

    def _feed(self, worker):
        worker.case = None
        if self.pending and self.args.max_seconds \
                and time.monotonic() - self.started > self.args.max_seconds:
            self.stopped = f"stopped after {self.args.max_seconds:g} s (--max-seconds)"
            self.pending.clear()
        if self.pending:
            worker.send(self.pending.popleft())

    def _replace(self, worker):
        self.selector.unregister(worker.process.stdout)
        self.workers.remove(worker)
        worker.stop()
        if self.pending:
            self._start()

    def _record(self, outcome):
        if outcome.where == "(worker process)":     # its source and steps, from the seed
            kind, index = outcome.case.split(":")
            try:
                case = make_case(self.args.seed, kind, int(index), sources(self.args), self.seeds)
                outcome.source, outcome.steps = case.source, case.steps
            except Exception as exc:  # a bug of the mutation engine: report it, go on
                outcome.detail += f"; making the case failed: {type(exc).__name__}: {exc}"
        self.outcomes.append(outcome)
        done = len(self.outcomes)
        if done % 100 == 0 or outcome.result == "escape":
            counts = collections.Counter(o.result for o in self.outcomes)
            print(f"[{done}/{self.total}] "
                  f"works {counts['works']}, errors {counts['error']}, escapes "
                  f"{counts['escape']}" + (f"  <- {outcome.case}: {outcome.detail[:100]}"
                                           if outcome.result == "escape" else ""),
                  file=self.log, flush=True)

    def run(self):
        """Run the cases (until ``--max-seconds``, if given); Ctrl-C stops
        early. Returns the outcomes of the cases that finished."""
        self.started = time.monotonic()
        try:
            for _ in range(min(self.args.workers, len(self.pending))):
                self._start()
            while any(worker.case for worker in self.workers):
                self._step()
        except KeyboardInterrupt:
            self.stopped = "interrupted"
        finally:
            for worker in self.workers:
                worker.stop()
            self.seeds_folder.cleanup()
        return self.outcomes

    def _step(self):
        """Wait for the next answer or time limit, and act on it."""
        busy = [worker for worker in self.workers if worker.case]
        wait = min(worker.started + self.args.timeout for worker in busy) - time.monotonic()
        for key, _ in self.selector.select(timeout=max(wait, 0)):
            worker = key.data
            line = worker.process.stdout.readline()
            self._record(_finish(worker, line))
            if line:
                self._feed(worker)
            else:
                self._replace(worker)
        for worker in list(self.workers):
            if worker.case and time.monotonic() - worker.started > self.args.timeout:
                self._record(_lost(worker.case, f"timeout: over {self.args.timeout:g} s",
                                   time.monotonic() - worker.started))
                self._replace(worker)


# -- the report -----------------------------------------------------------------------------

def escape_kind(outcome):
    """"MemoryError", "timeout", "crash", "state" or "exception"."""
    detail = outcome.detail
    for prefix, kind in (("MemoryError", "MemoryError"), ("timeout", "timeout"),
                         ("worker died", "crash"), ("Escape", "state")):
        if detail.startswith(prefix):
            return kind
    return "exception"


def report(outcomes, args, seconds, stopped=""):
    """The campaign's figures and every escape with its reproducer (text)."""
    lines = [f"fuzz campaign, seed {args.seed}: {len(outcomes)} cases in {seconds:.0f} s "
             f"({len(outcomes) / max(seconds, 1e-9):.2f} cases/s, {args.workers} worker(s))"
             + (f", the first {args.skip} skipped" if args.skip else "")
             + (f", {stopped}" if stopped else ""),
             f"{'':10}{'tried':>8}{'works':>8}{'errors':>8}{'escapes':>9}{'s/case':>8}"]
    projected = 0.0
    overhead = (seconds * args.workers - sum(o.seconds for o in outcomes)) / max(len(outcomes), 1)
    for kind, wanted in (("prototxt", args.prototxt), ("binary", args.binary)):
        mine = [o for o in outcomes if o.case.startswith(kind + ":")]
        counts = collections.Counter(o.result for o in mine)
        mean = sum(o.seconds for o in mine) / max(len(mine), 1)
        projected += wanted * (mean + overhead) / args.workers
        lines.append(f"{kind:10}{len(mine):>8}{counts['works']:>8}{counts['error']:>8}"
                     f"{counts['escape']:>9}{mean:>8.3f}")
    lines.append(f"a whole run of {args.prototxt} prototxt and {args.binary} binary cases: "
                 f"about {projected / 60:.0f} min at this rate")
    unnamed = [o for o in outcomes if o.result == "error" and not o.named]
    escapes = [o for o in outcomes if o.result == "escape"]
    kinds = collections.Counter(escape_kind(o) for o in escapes)
    lines.append(f"binary errors that do not name the file: {len(unnamed)}"
                 + "".join(f"\n  {o.case} ({o.source}): {o.detail[:160]}" for o in unnamed[:10]))
    lines.append(f"escapes: {len(escapes)} (" + ", ".join(
        f"{kind} {kinds[kind]}" for kind in ("exception", "MemoryError", "timeout", "crash",
                                             "state")) + ")")
    if outcomes:
        slowest = max(outcomes, key=lambda o: o.seconds)
        lines.append(f"slowest case: {slowest.case} ({slowest.source}) {slowest.seconds:.1f} s")
    groups = collections.defaultdict(list)
    for outcome in escapes:
        groups[outcome.where].append(outcome)
    if groups:
        lines.append("\nescapes by where they surfaced:")
    for where, group in sorted(groups.items(), key=lambda item: -len(item[1])):
        lines.append(f"{where} ({len(group)})")
        for o in group:
            lines.append(f"  {o.case} {o.source} [{'; '.join(o.steps)[:200]}]\n"
                         f"    -> {o.detail[:240]}\n"
                         f"    python -m tools.fuzz_campaign{' --small' * args.small} "
                         f"--seed {args.seed} "
                         f"--replay {o.case}")
    return "\n".join(lines)


def replay(args):
    """Run one case in this process; keep its mutant in a temporary folder."""
    folder = tempfile.mkdtemp(prefix="fuzz_replay_")
    os.chdir(folder)                 # a mutant's relative paths resolve in there, as in a worker
    copy_prototxt_files(folder)
    seeds = make_binary_seeds(os.path.join(folder, "seeds"))
    kind, index = args.replay.split(":")
    case = make_case(args.seed, kind, int(index), sources(args), seeds)
    outcome = run_case(case, folder, limit=args.timeout)
    path = mutant_path(case, folder)
    if isinstance(case.payload, str):
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(case.payload)
    print(f"{case.name}: {case.source} ({case.action}) [{'; '.join(case.steps)}]\n"
          f"mutant: {path}\nresult: {outcome.result} {outcome.detail}\n"
          f"where: {outcome.where}\n{outcome.traceback}")
    return 1 if outcome.result == "escape" else 0


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    if args.replay:
        return replay(args)
    campaign = Campaign(args)
    outcomes = campaign.run()
    print(report(outcomes, args, time.monotonic() - campaign.started, campaign.stopped))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump([dataclasses.asdict(o) for o in outcomes], handle, indent=1)
    return 1 if any(o.result == "escape" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
