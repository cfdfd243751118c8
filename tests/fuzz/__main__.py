"""The long fuzz run, resumable: `python -m tests.fuzz --adpd 100000 --nnc 10000 --state fuzz.json`.

Cases run in chunks; after each chunk the counts so far go to the state file (atomically), so a run that
is stopped continues where it was with the same command. Case i of a kind is always the same mutation
(for a given --seed), so `--only adpd:1234` reruns one case and prints what it gave. Runs on 1 thread:
start it with `nice -n 15` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from .harness import Tally, run_cases, start_server


def _chunks(n_adpd: int, n_nnc: int, size: int) -> list[tuple[str, int]]:
    """(kind, first case) of every chunk, .nnc chunks spread among the .adpd ones."""
    adpd = [("adpd", a) for a in range(0, n_adpd, size)]
    nnc = [("nnc", a) for a in range(0, n_nnc, size)]
    out, every = [], max(1, len(adpd) // max(1, len(nnc)))
    for i, c in enumerate(adpd):
        out.append(c)
        if nnc and (i + 1) % every == 0:
            out.append(nnc.pop(0))
    return out + nnc


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.splitlines()[0])
    ap.add_argument("--adpd", type=int, default=100_000, help=".adpd cases (library and CLI alternate)")
    ap.add_argument("--nnc", type=int, default=10_000, help=".nnc cases (library and CLI alternate)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=500)
    ap.add_argument("--state", type=Path, default=Path("fuzz-state.json"), help="counts so far (resumed from)")
    ap.add_argument("--only", metavar="KIND:I", help="run one case and print its outcome")
    args = ap.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="adapdate-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill PID`: clean up, then stop
    try:
        return _run(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # the seeds' store: tens of MB in memory (/dev/shm)


def _run(args: argparse.Namespace, scratch: Path) -> int:
    t0 = time.perf_counter()
    server = start_server(scratch)
    print(f"fork server ready in {time.perf_counter() - t0:.1f} s (scratch {scratch})", flush=True)
    if args.only:
        kind, i = args.only.split(":")
        tally = run_cases(server, kind, range(int(i), int(i) + 1), args.seed,
                          on_case=lambda c: print(json.dumps(c.__dict__, indent=1)))
        return 0
    state = json.loads(args.state.read_text()) if args.state.exists() else {}
    if state and (state.get("seed"), state.get("chunk")) != (args.seed, args.chunk):
        sys.exit(f"{args.state} is a run with another --seed/--chunk; use another --state")
    state.setdefault("seed", args.seed)
    state.setdefault("chunk", args.chunk)
    done = set(map(tuple, state.get("done", [])))
    total = Tally.from_dict(state["tally"]) if "tally" in state else Tally()
    for kind, first in _chunks(args.adpd, args.nnc, args.chunk):
        if (kind, first) in done:
            continue
        last = min(first + args.chunk, args.adpd if kind == "adpd" else args.nnc)
        tally = run_cases(server, kind, range(first, last), args.seed)
        total.merge(tally)
        done.add((kind, first))
        state.update(done=sorted(done), tally=total.to_dict())
        _save(args.state, state)
        n = {k: sum(sum(c.values()) for t, c in total.counts.items() if t.startswith(k)) for k in ("adpd", "nnc")}
        print(f"{time.strftime('%H:%M:%S')} {kind} {first}-{last - 1}: {tally.seconds / (last - first) * 1000:.0f} ms/case; "
              f"so far adpd {n['adpd']:,} nnc {n['nnc']:,}, bad {total.bad()}", flush=True)
        for ex in tally.examples:
            print("  BAD", json.dumps(ex)[:600], flush=True)
    print(total.table(), flush=True)
    return 1 if total.bad() else 0


if __name__ == "__main__":
    sys.exit(main())
