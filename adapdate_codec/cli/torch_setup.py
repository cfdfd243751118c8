"""torch set-up for the coding commands: imported and configured on first use, so that a bad input or
output fails fast, without it."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Callable, Iterator

from adapdate_codec.errors import AdapdateError

if TYPE_CHECKING:
    from adapdate_codec.bundle import ModelBundle
    from adapdate_codec.cli.report import Reporter


class SetupError(AdapdateError):
    """The run cannot work at all (e.g. --device cuda without CUDA): ends a batch at once."""


class TorchSetup:
    """Imports and configures torch on first use, so that a bad input or output fails fast, without it.

    Also keeps the clock of one-time costs (imports, model loading), which per-file times leave out."""

    def __init__(self, device: str, threads: int | None) -> None:
        self.device, self.threads, self._done = device, threads, False
        self.seconds = 0.0

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    def __call__(self) -> None:
        if self._done:
            return
        import torch

        if self.threads is not None:
            torch.set_num_threads(self.threads)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise SetupError("--device cuda: no CUDA device is available (use --device cpu)")
        from adapdate_codec import inference

        inference.REUSE_FREED_MEMORY = True  # this process only codes images: keep freed memory for reuse
        self._done = True

    def load(self, lookup: Callable[[], "ModelBundle"]) -> "ModelBundle":
        """Set up, find a model, import the codec: all one-time costs. The model comes first, so that a
        missing one is reported before the slow codec imports (compressai)."""
        with self.measure():
            self()
            bundle = lookup()
            import adapdate_codec.codec  # noqa: F401
        return bundle


def report_setup(rep: "Reporter", setup: TorchSetup, before: float) -> None:
    """--verbose: the one-time costs a file paid for (they are left out of its own time)."""
    if setup.seconds > before:
        rep.detail(f"adapdate: set-up (torch, codec, model loading): {setup.seconds - before:.1f} s")
