"""Fuzz harness: mutated `.adpd` and `.nnc` files against the library and the CLI, one process per case.

A fork server: the parent imports everything, loads the models and warms every cache once; each case is
a `fork()` of it, with limits (CPU time `CPU_SECONDS`, data memory `MEMORY_BYTES`), so that a case costs
milliseconds, not the seconds of a fresh interpreter that imports torch. The child runs one target:

* ``adpd-lib``: ``codec.decode_picture`` three times (the same bytes must give the same outcome);
* ``adpd-cli``: ``adapdate decode FILE -o OUT.png``, in-process (click's ``main``); one CLI case in four is
  ``adpd-info``: ``adapdate info FILE`` instead;
* ``nnc-lib``:  ``update.apply_update`` into a copy of a store holding the tiny base model;
* ``nnc-cli``:  ``adapdate model info FILE`` or ``adapdate model patch FILE`` (alternating), the same store.

and writes a report; the parent classifies each case as one of OUTCOMES:

* ``refused``: a library error (AdapdateError) with a one-line message; for the CLI exit status 1 and one
  ``adapdate: error:`` line on stderr; and in both, no output file and an unchanged store;
* ``decoded``: success (an image, a patched store, an update described);
* ``crash`` (killed by a signal such as SIGSEGV, or died without a report), ``hang`` (over the CPU-time limit
  or the wall-clock one), ``oom`` (MemoryError, an allocation failure, out-of-memory line), ``traceback``
  (any other exception), ``unclean`` (a refusal that is not one line, a leftover output, a changed store,
  a usage error), ``nondeterministic`` (the three decodes differ).

Seeds are small real files: 64x64 and 128x96 images (and a 64x64 grayscale one) encoded with the shipped
default model (``ModelStore().get(quality=3)``; format 2, naming its decoder), the golden files of tests/data
with their model (format 1, naming the whole model, and format 2), a file written by a new encoder of the
tiny N=8 base that the store never applied (format 2: decoded by the base's decoder), and updates of that
base: model updates (with and without new entropy-bottleneck tables) and encoder updates (a difference of
g_a/h_a, and new adapters in g_a).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import resource
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:  # conftest / model_fixtures, as pytest sees them
    sys.path.insert(0, str(TESTS))

CPU_SECONDS = 10
MEMORY_BYTES = 4 << 30
WALL_SECONDS = 120  # a safety net on a loaded machine; the CPU-time limit is the real one
OUTCOMES = ("refused", "decoded", "crash", "hang", "oom", "traceback", "unclean", "nondeterministic")
BAD = ("crash", "hang", "oom", "traceback", "unclean", "nondeterministic")
TARGETS = {"adpd": ("adpd-lib", "adpd-cli"), "nnc": ("nnc-lib", "nnc-cli")}
_OOM_TEXT = ("out of memory", "can't allocate memory", "DefaultCPUAllocator", "std::bad_alloc")


# -- seeds ------------------------------------------------------------------------------------------------
def _synthetic_picture(width: int, height: int, gray: bool, seed: int):
    """Smooth gradients, a few shapes and some noise: content like a photo crop, no dataset needed."""
    import numpy as np

    from adapdate_codec.imageio import Picture

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([128 + 80 * np.sin(x / (7 + 5 * c) + y / (11 + 3 * c) + c) for c in range(3)], axis=2)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(4, 20)
        base[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    px = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    if gray:
        px = np.repeat(px.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    return Picture(pixels=px, mode="L" if gray else "RGB")


@dataclass
class Corpus:
    home: Path  # ADAPDATE_HOME template: the golden model and the tiny base (q3) installed
    adpd: list[bytes] = field(default_factory=list)
    nnc: list[bytes] = field(default_factory=list)
    names: dict[str, list[str]] = field(default_factory=dict)


def make_corpus(work: Path) -> Corpus:
    """Seed files and the store they need, in `work` (ADAPDATE_HOME is pointed at its template)."""
    import torch

    from adapdate_codec import codec, update
    from adapdate_codec.bundle import ModelBundle
    from adapdate_codec.store import ModelStore
    from conftest import make_tiny_bundle
    from model_fixtures import make_checkpoint, make_encoder_checkpoint

    home = work / "home"
    os.environ["ADAPDATE_HOME"] = str(home)
    store = ModelStore()
    golden = ModelBundle.load(TESTS / "data" / "golden-model.pt")
    store.install_bundle(golden, source="fuzz seed")
    tiny = make_tiny_bundle()
    store.install_bundle(tiny, source="fuzz seed")
    corpus = Corpus(home=home, names={"adpd": [], "nnc": []})
    default = store.get(quality=3)
    for w, h, gray in ((64, 64, False), (128, 96, False), (64, 64, True)):
        corpus.adpd.append(codec.encode_picture(_synthetic_picture(w, h, gray, seed=w + h), default))
        corpus.names["adpd"].append(f"{w}x{h}{' gray' if gray else ''} q3")
    for name in ("golden.adpd", "golden-format2.adpd"):
        corpus.adpd.append((TESTS / "data" / name).read_bytes())
        corpus.names["adpd"].append(name)
    with tempfile.TemporaryDirectory() as tmp:
        export_store = ModelStore(Path(tmp) / "home")  # the tiny base only: the template stays unpatched
        export_store.install_bundle(tiny, source="fuzz seed")
        for bottleneck in (False, True):
            ckpt = Path(tmp) / f"adapters-{bottleneck}.ckpt"
            make_checkpoint(tiny, ckpt, bottleneck=bottleneck, seed=3)
            corpus.nnc.append(update.export_update(ckpt, export_store).to_bytes())
            corpus.names["nnc"].append("tiny update" + (" + bottleneck tables" if bottleneck else ""))
        for mode in ("whole", "adapters"):
            ckpt = Path(tmp) / f"encoder-{mode}.ckpt"
            make_encoder_checkpoint(tiny, ckpt, mode=mode, seed=4, scale=0.5)
            corpus.nnc.append(update.export_update(ckpt, export_store).to_bytes())
            corpus.names["nnc"].append(f"tiny encoder update ({mode})")
        update.apply_update(corpus.nnc[-2], export_store)  # a new encoder, in the export store only
        new_encoder = export_store.get(tiny.name, tiny.quality)
        corpus.adpd.append(codec.encode_picture(_synthetic_picture(64, 64, False, seed=9), new_encoder))
        corpus.names["adpd"].append("64x64 tiny, new encoder (not applied in the store)")
    torch.set_num_threads(1)
    return corpus


# -- the fork server ----------------------------------------------------------------------------------------
def _memoize_model_loading() -> None:
    """Every ModelStore (the CLI makes one per run) shares bundles loaded once, here, before forking; by file
    name and fingerprint, so that the copies of the template store each case patches share them too."""
    from adapdate_codec.store import ModelStore

    original = ModelStore._load
    loaded: dict[tuple[str, str], Any] = {}

    def load(self, entry):
        key = (entry.path.name, entry.fingerprint)
        if key not in loaded:
            loaded[key] = original(self, entry)
        return loaded[key]

    ModelStore._load = load


def _snapshot(home: Path) -> dict[str, str]:
    return {str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(home.rglob("*")) if p.is_file()}


def _one_line(message: str) -> bool:
    return bool(message) and "\n" not in message.strip()


def _lib_error(e: BaseException) -> dict[str, Any]:
    from adapdate_codec.errors import AdapdateError

    text = f"{type(e).__name__}: {e}"
    if isinstance(e, MemoryError) or any(t in str(e) for t in _OOM_TEXT):
        return {"outcome": "oom", "detail": text[:300]}
    if isinstance(e, AdapdateError):
        return {"outcome": "refused" if _one_line(str(e)) else "unclean", "detail": text[:300]}
    return {"outcome": "traceback", "detail": traceback.format_exc()[-3000:]}


def _run_cli(args: list[str], casedir: Path) -> tuple[str, int | None, str]:
    """(how it ended, exit status, stderr) of `adapdate ARGS` run in this process."""
    from adapdate_codec.cli import main

    err, out = io.StringIO(), io.StringIO()
    how, code = "exit", None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            main.main(args=args, prog_name="adapdate", standalone_mode=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # a real process would print this traceback and exit 1
            how = "exception"
            err.write(traceback.format_exc())
    return how, code, err.getvalue()


def _cli_outcome(how: str, code: int | None, stderr: str, wrote: bool) -> dict[str, Any]:
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("adapdate: warning:")]
    detail = stderr[-3000:]
    if how == "exception":
        return {"outcome": "oom" if any(t in stderr for t in _OOM_TEXT) else "traceback", "detail": detail}
    if code == 0:
        return {"outcome": "decoded"}
    if code == 1 and len(lines) == 1 and lines[0].startswith("adapdate: error:"):
        if any(t in lines[0] for t in _OOM_TEXT):
            return {"outcome": "oom", "detail": detail}
        return {"outcome": "unclean" if wrote else "refused", "detail": lines[0][:300]}
    return {"outcome": "unclean", "detail": f"exit {code}: {detail}"}


def target_adpd_lib(data: bytes, casedir: Path, corpus: Corpus, repeat: int = 3) -> dict[str, Any]:
    from adapdate_codec.codec import decode_picture
    from adapdate_codec.store import ModelStore

    results = []
    for _ in range(repeat):
        try:
            pic = decode_picture(data, ModelStore().by_fingerprint)
            r = {"outcome": "decoded", "detail": hashlib.sha256(pic.pixels.tobytes()).hexdigest()[:16]}
        except BaseException as e:  # noqa: BLE001 - every exception is classified
            r = _lib_error(e)
        results.append(r)
        if r["outcome"] not in ("refused", "decoded"):
            return r
    if any(r != results[0] for r in results):
        return {"outcome": "nondeterministic", "detail": json.dumps(results)[:3000]}
    return results[0]


def target_adpd_cli(data: bytes, casedir: Path, corpus: Corpus) -> dict[str, Any]:
    folder = casedir / "io"
    folder.mkdir()
    src, dst = folder / "in.adpd", folder / "out.png"
    src.write_bytes(data)
    how, code, stderr = _run_cli(["decode", str(src), "-o", str(dst)], casedir)
    leftovers = [p.name for p in folder.iterdir() if p.name not in ("in.adpd", "out.png")]
    r = _cli_outcome(how, code, stderr, wrote=dst.exists())
    if leftovers:  # a temporary file left behind is never clean
        r = {"outcome": "unclean", "detail": f"left {leftovers}"}
    return r


def target_adpd_info(data: bytes, casedir: Path, corpus: Corpus) -> dict[str, Any]:
    src = casedir / "in.adpd"
    src.write_bytes(data)
    how, code, stderr = _run_cli(["info", str(src)], casedir)
    return _cli_outcome(how, code, stderr, wrote=False)


def _case_store(corpus: Corpus, casedir: Path) -> Path:
    """A copy of the template store to patch; without its cache of unpacked built-in models (tens of MB:
    the tiny base these cases patch is an installed model, and bundles are shared in memory anyway)."""
    home = casedir / "home"
    shutil.copytree(corpus.home, home, ignore=shutil.ignore_patterns("builtin"))
    return home


def target_nnc_lib(data: bytes, casedir: Path, corpus: Corpus) -> dict[str, Any]:
    from adapdate_codec import update
    from adapdate_codec.store import ModelStore

    home = _case_store(corpus, casedir)
    before = _snapshot(home)
    try:
        r = update.apply_update(data, ModelStore(home))
        ModelStore(home).get(r.new.name, r.new.quality)  # a patched store must load
        return {"outcome": "decoded"}
    except BaseException as e:  # noqa: BLE001
        r = _lib_error(e)
    if r["outcome"] == "refused" and _snapshot(home) != before:
        r = {"outcome": "unclean", "detail": "refused, but the store changed: " + r["detail"]}
    return r


def target_nnc_cli(data: bytes, casedir: Path, corpus: Corpus, command: str = "info") -> dict[str, Any]:
    home = _case_store(corpus, casedir)
    before = _snapshot(home)
    src = casedir / "update.nnc"
    src.write_bytes(data)
    os.environ["ADAPDATE_HOME"] = str(home)
    how, code, stderr = _run_cli(["model", command, str(src)], casedir)
    r = _cli_outcome(how, code, stderr, wrote=False)
    changed = _snapshot(home) != before
    if r["outcome"] == "refused" and changed or command == "info" and changed:
        r = {"outcome": "unclean", "detail": f"model {command} changed the store: {r.get('detail', '')}"}
    return r


def _target(name: str, i: int) -> Callable[[bytes, Path, Corpus], dict[str, Any]]:
    if name == "adpd-lib":
        return target_adpd_lib
    if name == "adpd-cli":
        return target_adpd_cli
    if name == "adpd-info":
        return target_adpd_info
    if name == "nnc-lib":
        return target_nnc_lib
    command = "info" if (i // 2) % 2 == 0 else "patch"  # nnc-cli cases are the odd ones
    return lambda data, casedir, corpus: target_nnc_cli(data, casedir, corpus, command)


def _limit_child() -> None:
    import faulthandler

    faulthandler.disable()  # a crash is the parent's to report (pytest turns this on, on its own stderr)
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS + 1))
    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_BYTES, MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@dataclass
class Case:
    kind: str  # "adpd" or "nnc"
    index: int
    target: str
    mutation: str
    outcome: str = ""
    detail: str = ""
    seconds: float = 0.0
    max_rss_mb: float = 0.0


class ForkServer:
    """Runs cases in forked children of this (warmed-up) process."""

    def __init__(self, corpus: Corpus, scratch: Path) -> None:
        self.corpus, self.scratch = corpus, scratch
        _memoize_model_loading()
        self._warm()

    def _warm(self) -> None:
        """One run of each target on each seed, here, so that children inherit loaded models and caches;
        the unmutated seeds must decode."""
        for kind, seeds in (("adpd", self.corpus.adpd), ("nnc", self.corpus.nnc)):
            for s in seeds:
                for target in TARGETS[kind] + (("adpd-info",) if kind == "adpd" else ()):
                    for k in ((1, 3) if target == "nnc-cli" else (1,)):  # model info, then model patch
                        with tempfile.TemporaryDirectory(dir=self.scratch) as d:
                            r = _target(target, k)(s, Path(d), self.corpus)
                            os.environ["ADAPDATE_HOME"] = str(self.corpus.home)
                        if r["outcome"] != "decoded":
                            raise RuntimeError(f"seed does not pass {target}: {r}")

    def run(self, case: Case, data: bytes) -> Case:
        casedir = Path(tempfile.mkdtemp(prefix="case-", dir=self.scratch))
        report = casedir / "report.json"
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 0
            try:
                _limit_child()
                out = os.open(casedir / "fd.txt", os.O_WRONLY | os.O_CREAT, 0o600)  # C-level prints
                os.dup2(out, 1)
                os.dup2(out, 2)
                r = _target(case.target, case.index)(data, casedir, self.corpus)
                report.write_text(json.dumps(r))
            except BaseException:  # noqa: BLE001 - e.g. the report itself cannot be written
                code = 3
            finally:
                os._exit(code)
        status, usage = self._wait(pid)
        case.seconds = time.perf_counter() - start
        case.max_rss_mb = usage.ru_maxrss / 1024 if usage else 0.0
        if status == -1:
            case.outcome, case.detail = "hang", f"over {WALL_SECONDS} s of wall-clock time"
        elif os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU:
                case.outcome, case.detail = "hang", f"over {CPU_SECONDS} s of CPU time"
            elif sig == signal.SIGKILL:
                case.outcome, case.detail = "oom", "killed (SIGKILL: the kernel's OOM killer?)"
            else:
                case.outcome, case.detail = "crash", f"signal {signal.Signals(sig).name}"
        elif not report.exists():
            case.outcome, case.detail = "crash", f"exit status {os.WEXITSTATUS(status)} without a report"
        if case.outcome == "crash" and (casedir / "fd.txt").exists():
            case.detail += ": " + (casedir / "fd.txt").read_text(errors="replace")[-1500:]
        if not case.outcome:
            r = json.loads(report.read_text())
            case.outcome, case.detail = r["outcome"], r.get("detail", "")
        shutil.rmtree(casedir, ignore_errors=True)
        return case

    @staticmethod
    def _wait(pid: int) -> tuple[int, Any]:
        fd = os.pidfd_open(pid)
        try:
            ready, _, _ = select.select([fd], [], [], WALL_SECONDS)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.wait4(pid, 0)
                return -1, None
            _, status, usage = os.wait4(pid, 0)
            return status, usage
        finally:
            os.close(fd)


# -- a run ----------------------------------------------------------------------------------------------------
@dataclass
class Tally:
    counts: dict[str, Counter] = field(default_factory=dict)  # target -> outcome -> n
    examples: list[dict] = field(default_factory=list)  # the bad cases (capped)
    seconds: float = 0.0

    def add(self, case: Case) -> None:
        self.counts.setdefault(case.target, Counter())[case.outcome] += 1
        if case.outcome in BAD and len(self.examples) < 200:
            self.examples.append({"kind": case.kind, "index": case.index, "target": case.target,
                                  "mutation": case.mutation, "outcome": case.outcome, "detail": case.detail[-1500:]})

    def merge(self, other: "Tally") -> None:
        for t, c in other.counts.items():
            self.counts.setdefault(t, Counter()).update(c)
        self.examples.extend(other.examples[: max(0, 200 - len(self.examples))])
        self.seconds += other.seconds

    def bad(self) -> int:
        return sum(c[o] for c in self.counts.values() for o in BAD)

    def to_dict(self) -> dict[str, Any]:
        return {"counts": {t: dict(c) for t, c in sorted(self.counts.items())}, "examples": self.examples,
                "seconds": round(self.seconds, 1)}

    @classmethod
    def from_dict(cls, d: dict) -> "Tally":
        return cls({t: Counter(c) for t, c in d["counts"].items()}, list(d["examples"]), d["seconds"])

    def table(self) -> str:
        rows = [f"{'target':<10}" + "".join(f"{o:>17}" for o in OUTCOMES) + f"{'total':>9}"]
        for t, c in sorted(self.counts.items()):
            rows.append(f"{t:<10}" + "".join(f"{c[o]:>17,}" for o in OUTCOMES) + f"{sum(c.values()):>9,}")
        return "\n".join(rows)


def run_cases(server: ForkServer, kind: str, indexes: range, seed: int,
              on_case: Callable[[Case], None] | None = None) -> Tally:
    """Cases `indexes` of `kind`, each with its own target (alternating) and mutation (from its number)."""
    from .mutate import MUTATORS, case_rng

    seeds = server.corpus.adpd if kind == "adpd" else server.corpus.nnc
    tally, start = Tally(), time.perf_counter()
    for i in indexes:
        mutation, data = MUTATORS[kind](seeds, case_rng(seed, kind, i))
        target = TARGETS[kind][i % 2]
        if target == "adpd-cli" and (i // 2) % 4 == 3:
            target = "adpd-info"
        case = server.run(Case(kind, i, target, mutation), data)
        tally.add(case)
        if on_case is not None:
            on_case(case)
    tally.seconds = time.perf_counter() - start
    return tally


def start_server(scratch: Path) -> ForkServer:
    """Corpus + fork server in `scratch` (threads: 1; torch's thread pool must not exist when forking).

    fork() copies the page tables of the ~1 GB parent: tensors in 2 MB pages (THP_MEM_ALLOC_ENABLE, read
    by torch at import) halve that cost, and gc.freeze keeps the children's garbage collector from
    touching (and so copying) every object of the parent."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    import torch

    torch.set_num_threads(1)
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    corpus = make_corpus(scratch)
    server = ForkServer(corpus, scratch)
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
    gc.freeze()
    return server
