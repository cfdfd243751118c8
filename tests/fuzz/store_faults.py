"""Crash safety of the model store: `kill -9` at random moments of `model patch` and `model install`, and two
patches started at the same moment.

    .venv/bin/python -m tests.fuzz.store_faults --trials 50        # per operation; prints the counts

Each trial copies a store holding a tiny (N=8) base model, runs the real CLI in a subprocess and kills it
with SIGKILL: a quarter of the kills at a random moment of the whole run, the others at a random moment
of the short window in which it writes to the store (from its first new file there to the commit, the
manifest's replacement, as a first run that is not killed measures it: the kill follows the first new
file by a random delay up to 1.5 times that window). Then the store must load and its active version be
the old or the new one; and the same operation, run again in this process, must succeed and leave no
temporary file and no bundle that the manifest does not list.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

NAME, QUALITY = "tiny", 3


@dataclass
class Setup:
    template: Path  # ADAPDATE_HOME with the base installed
    base: str  # fingerprints
    updates: list[tuple[Path, str]]  # (.nnc file, fingerprint it patches to)
    install_file: Path
    install_fp: str


def prepare(work: Path) -> Setup:
    from adapdate_codec import update
    from adapdate_codec.store import ModelStore
    from conftest import make_tiny_bundle
    from model_fixtures import make_checkpoint

    base = make_tiny_bundle(NAME, QUALITY)
    template = work / "template"
    store = ModelStore(template)
    store.install_bundle(base, source="faults")
    updates = []
    for seed in (1, 2):
        ckpt = work / f"adapters-{seed}.ckpt"
        make_checkpoint(base, ckpt, seed=seed)
        u = update.export_update(ckpt, store)
        path = work / f"update-{seed}.nnc"
        path.write_bytes(u.to_bytes())
        updates.append((path, u.manifest.patched_fingerprint))
    other = make_tiny_bundle(NAME, QUALITY, seed=5)
    install_file = work / "tiny-other.pt"
    other.save(install_file)
    return Setup(template, base.fingerprint, updates, install_file, other.fingerprint)


def _slot(home: Path) -> Path:
    return home / "models" / NAME / f"q{QUALITY}"


def _command(op: str, setup: Setup) -> list[str]:
    if op == "patch":
        return ["model", "patch", str(setup.updates[0][0])]
    return ["model", "install", str(setup.install_file)]


def _start(args: list[str], home: Path) -> subprocess.Popen:
    env = {**os.environ, "ADAPDATE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "adapdate_codec", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _leftovers(home: Path) -> tuple[list[str], list[str]]:
    """(temporary files, bundle files the manifest does not list) in the slot."""
    slot = _slot(home)
    manifest = json.loads((slot / "manifest.json").read_text())
    listed = {v["file"] for v in manifest["versions"]} | {Path(v["file"]).with_suffix(".json").name
                                                         for v in manifest["versions"]}
    tmp = [p.name for p in slot.iterdir() if p.name.endswith(".tmp")]
    stray = [p.name for p in slot.iterdir() if p.suffix in (".pt", ".json") and p.name != "manifest.json"
             and p.name not in listed]
    return tmp, stray


def _first_new_file(home: Path, before: set, proc: subprocess.Popen, until: float = float("inf")) -> float | None:
    """Seconds (perf_counter) at which a new file appears in the slot, None if the process ends first."""
    slot = _slot(home)
    while proc.poll() is None and time.perf_counter() < until:
        if any(p not in before for p in slot.iterdir()):
            return time.perf_counter()
        time.sleep(0.001)
    return None


def calibrate(op: str, setup: Setup, work: Path) -> tuple[float, float]:
    """(seconds from the first new file in the slot to the commit, seconds to the end) of a run not killed."""
    home = work / f"calibrate-{op}"
    shutil.copytree(setup.template, home)
    before = set(_slot(home).iterdir())
    manifest = _slot(home) / "manifest.json"
    inode = manifest.stat().st_ino
    start = time.perf_counter()
    proc = _start(_command(op, setup), home)
    first = _first_new_file(home, before, proc)
    commit = None
    while proc.poll() is None:
        if commit is None and manifest.stat().st_ino != inode:  # replaced: committed
            commit = time.perf_counter()
        time.sleep(0.001)
    end = time.perf_counter() - start
    if proc.returncode != 0 or first is None:
        raise RuntimeError(f"model {op} failed or wrote nothing: {proc.stderr.read()}")
    return max(0.01, (commit or time.perf_counter()) - first), end


@dataclass
class Report:
    counts: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    progress: bool = False  # a line per trial on stdout

    def fail(self, text: str) -> None:
        self.counts["failed"] += 1
        self.failures.append(text)

    def say(self, text: str) -> None:
        if self.progress:
            print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


def _check_store(home: Path, expected: set[str], report: Report, label: str) -> str | None:
    from adapdate_codec.store import ModelStore

    try:
        store = ModelStore(home)
        active = store.active(NAME, QUALITY).fingerprint
        loaded = store.get(NAME, QUALITY).fingerprint
    except Exception as e:  # noqa: BLE001 - any failure to load is what this looks for
        report.fail(f"{label}: the store does not load: {type(e).__name__}: {e}")
        return None
    if active not in expected or loaded != active:
        report.fail(f"{label}: active {active[:12]} (loads {loaded[:12]}) not one of {[e[:12] for e in expected]}")
        return None
    return active


def _redo(op: str, setup: Setup, home: Path, new_fp: str, report: Report, label: str) -> None:
    """The same operation after the kill, in this process: it must work and clean up after the dead one."""
    from adapdate_codec import update
    from adapdate_codec.store import ModelStore

    store = ModelStore(home)
    if op == "patch":
        update.apply_update(setup.updates[0][0].read_bytes(), store)
    else:
        store.install(str(setup.install_file))
    if ModelStore(home).active(NAME, QUALITY).fingerprint != new_fp:
        report.fail(f"{label}: after the redo the active version is not the new one")
    tmp, stray = _leftovers(home)
    if tmp or stray:
        report.fail(f"{label}: left after the redo: {tmp + stray}")


def kill_trials(op: str, setup: Setup, work: Path, trials: int, rng: random.Random, report: Report) -> None:
    window, end = calibrate(op, setup, work)
    new_fp = setup.updates[0][1] if op == "patch" else setup.install_fp
    report.counts[f"{op}: write window / whole run, ms"] = f"{window * 1000:.0f} / {end * 1000:.0f}"
    for i in range(trials):
        home = work / f"{op}-{i}"
        shutil.copytree(setup.template, home)
        before = set(_slot(home).iterdir())
        anywhere = rng.random() < 0.25
        delay = rng.uniform(0, end * 1.1) if anywhere else rng.uniform(0, 1.5 * window)
        start = time.perf_counter()
        proc = _start(_command(op, setup), home)
        if anywhere:
            time.sleep(delay)
        else:
            first = _first_new_file(home, before, proc)
            if first is not None:
                time.sleep(max(0.0, first + delay - time.perf_counter()))
        finished = proc.poll() is not None
        if not finished:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        label = (f"{op} trial {i} (killed {time.perf_counter() - start:.2f} s in"
                 f"{'' if anywhere else f', {delay * 1000:.0f} ms after its first write'})")
        if finished and proc.returncode != 0:
            report.fail(f"{label}: exited {proc.returncode}: {proc.stderr.read()[-300:]}")
        tmp, stray = _leftovers(home)
        active = _check_store(home, {setup.base, new_fp}, report, label)
        if active is not None:
            state = "finished before the kill" if finished else ("new" if active == new_fp else "old")
            where = "" if finished else (" (anywhere)" if anywhere else " (write window)")
            report.counts[f"{op}: {'killed, active is ' if not finished else ''}{state}{where}"] += 1
            report.counts[f"{op}: killed with temporary files left"] += bool(tmp) and not finished
            report.counts[f"{op}: killed with an unlisted bundle left"] += bool(stray) and not finished
            _redo(op, setup, home, new_fp, report, label)
            report.say(f"{label}: {state}, {len(tmp)} temporary and {len(stray)} unlisted files left, cleaned")
        shutil.rmtree(home, ignore_errors=True)


def concurrent_patches(setup: Setup, work: Path, pairs: int, report: Report) -> None:
    """Two different updates of the same base at the same moment: one wins, the other is refused in one
    line, and the store is the winner's."""
    expected = {fp for _, fp in setup.updates}
    for i in range(pairs):
        home = work / f"concurrent-{i}"
        shutil.copytree(setup.template, home)
        procs = [_start(["model", "patch", str(path)], home) for path, _ in setup.updates]
        results = [(p.wait(), p.stderr.read()) for p in procs]
        label = f"concurrent pair {i}"
        winners = [k for k, (code, _) in enumerate(results) if code == 0]
        losers = [err for code, err in results if code != 0]
        active = _check_store(home, expected, report, label)
        if len(winners) != 1 or active != setup.updates[winners[0]][1]:
            report.fail(f"{label}: exit statuses {[c for c, _ in results]}, active {active}")
        elif not (len(losers) == 1 and len(losers[0].strip().splitlines()) == 1
                  and losers[0].startswith("adapdate: error:")):
            report.fail(f"{label}: the loser did not say one line: {losers!r}")
        else:
            report.counts["concurrent: one winner, one refusal"] += 1
            report.say(f"{label}: update {winners[0] + 1} won; the other: {losers[0].strip()}")
        tmp, stray = _leftovers(home)
        if tmp or stray:
            report.fail(f"{label}: left {tmp + stray}")
        shutil.rmtree(home, ignore_errors=True)


def run(trials: int, pairs: int, seed: int = 0, progress: bool = False) -> Report:
    report = Report(progress=progress)
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="adapdate-faults-") as tmp:
        work = Path(tmp)
        setup = prepare(work)
        for op in ("patch", "install"):
            kill_trials(op, setup, work, trials, rng, report)
        concurrent_patches(setup, work, pairs, report)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz.store_faults", description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=50, help="kill trials per operation (patch, install)")
    ap.add_argument("--pairs", type=int, default=5, help="concurrent patch pairs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit.script, when compressai loads
    import torch

    torch.set_num_threads(1)
    report = run(args.trials, args.pairs, args.seed, progress=True)
    for key, n in sorted(report.counts.items()):
        print(f"{key:<50} {n}")
    for f in report.failures:
        print("FAILED", f)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
