"""The fuzz harness (tests/fuzz/): a short deterministic run in CI, and the harness's own classification.

The long run is a command: `nice -n 15 .venv/bin/python -m tests.fuzz --adpd 100000 --nnc 10000`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz import harness

ROOT = Path(__file__).resolve().parents[1]
CI_ADPD, CI_NNC = 240, 80


def test_short_fuzz_run_finds_nothing(tmp_path):
    """A few hundred mutated files (CRC / digest fixed) against the library and the CLI: every one is a
    clean one-line refusal or a decode, never a crash, hang, out-of-memory, traceback or changed store."""
    state = tmp_path / "state.json"
    proc = subprocess.run([sys.executable, "-m", "tests.fuzz", "--adpd", str(CI_ADPD), "--nnc", str(CI_NNC),
                           "--chunk", "80", "--state", str(state)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert state.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    counts = json.loads(state.read_text())["tally"]["counts"]
    bad = {t: {o: n for o, n in c.items() if o in harness.BAD} for t, c in counts.items()}
    assert not any(bad.values()), (bad, proc.stdout[-4000:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sum(sum(counts[t].values()) for t in ("adpd-lib", "adpd-cli", "adpd-info")) == CI_ADPD
    assert sum(counts["nnc-lib"].values()) + sum(counts["nnc-cli"].values()) == CI_NNC
    for target, c in counts.items():  # the mutations reach both ends: refusals and successful decodes
        assert c.get("refused", 0) > 0, (target, c)
    assert counts["adpd-lib"].get("decoded", 0) > 0 and counts["adpd-cli"].get("decoded", 0) > 0


@pytest.fixture
def bare_server(tmp_path, monkeypatch):
    """A ForkServer without models, whose targets are the functions a test puts in `targets`."""
    server = object.__new__(harness.ForkServer)
    server.corpus, server.scratch = None, tmp_path
    targets: dict = {}
    monkeypatch.setattr(harness, "_target", lambda name, i: targets[name])
    monkeypatch.setattr(harness, "CPU_SECONDS", 1)
    return server, targets


def _segfault(*_):
    os.kill(os.getpid(), signal.SIGSEGV)


def _spin(*_):
    while True:
        pass


def _allocate(*_):
    return {"outcome": "decoded", "detail": str(len(bytearray(harness.MEMORY_BYTES + (1 << 30))))}


def _raise(*_):
    raise ValueError("a bug")


def _exit_quietly(*_):
    os._exit(0)


@pytest.mark.parametrize("func, outcome", [(_segfault, "crash"), (_spin, "hang"), (_allocate, "oom"),
                                           (_raise, "traceback"), (_exit_quietly, "crash")])
def test_the_harness_tells_failures_apart(bare_server, func, outcome):
    server, targets = bare_server

    def guarded(data, casedir, corpus):  # what a target does: classify its own exceptions
        try:
            return func()
        except BaseException as e:  # noqa: BLE001
            return harness._lib_error(e)

    targets["t"] = guarded
    case = server.run(harness.Case("adpd", 0, "t", "test"), b"")
    assert case.outcome == outcome, case


def test_cli_outcomes_are_classified():
    assert harness._cli_outcome("exit", 1, "adapdate: error: x.adpd: checksum mismatch\n", False)["outcome"] == "refused"
    assert harness._cli_outcome("exit", 1, "adapdate: error: x\nmore\n", False)["outcome"] == "unclean"
    assert harness._cli_outcome("exit", 1, "adapdate: error: x\n", True)["outcome"] == "unclean"
    assert harness._cli_outcome("exit", 2, "Usage: ...\n", False)["outcome"] == "unclean"
    assert harness._cli_outcome("exception", None, "Traceback ...", False)["outcome"] == "traceback"
    assert harness._cli_outcome("exit", 1, "adapdate: error: out of memory (try ...)\n", False)["outcome"] == "oom"
    assert harness._cli_outcome("exit", 0, "", True)["outcome"] == "decoded"


def test_mutations_are_deterministic_and_keep_checksums():
    from adapdate_codec import container

    from fuzz.mutate import case_rng, mutate_adpd

    seed = container.pack(container.Header("m", 3, bytes(32), 64, 64, "RGB", "replicate"), [b"z" * 8, b"y" * 40])
    runs = [[mutate_adpd([seed], case_rng(0, "adpd", i)) for i in range(200)] for _ in range(2)]
    assert runs[0] == runs[1]
    reached = 0
    for _, data in runs[0]:
        try:
            container.unpack(data)
            reached += 1
        except Exception as e:  # noqa: BLE001
            reached += "checksum" not in str(e)
    assert reached > 150  # most mutated files get past the checksum
