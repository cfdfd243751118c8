"""Coding whole datasets on a Ray cluster, from and to object storage (`pip install 'adapdate[ray]'`).

    from adapdate_codec.ray import encode_dataset, decode_dataset

    summary = encode_dataset("s3://photos/2024/", "s3://photos-adpd/2024/", quality=3, recursive=True,
                             skip_existing=True, address="auto", on_result=print)
    print(summary.written, summary.skipped, summary.failed)

Sources and the destination are local paths or fsspec URLs (s3://, gs://, file://, ...), listed, read and
written by the cluster's workers with their own credentials (the filesystems' usual environment and
configuration). Each worker is one process that loads the model once (`threads` CPUs, about 1.5 GiB, and a
GPU with device="cuda"). A file that fails is reported and the job goes on; a lost worker's files are coded
again; a stopped job is finished by running it again with skip_existing=True. The outputs are byte for byte
those of `adapdate encode|decode`.

`run_dataset` gives the job's events as they happen, for pipelines of your own; `encode_dataset` and
`decode_dataset` consume them and return a Summary. No list of all results is ever kept.

This module's name is the package's; Ray itself is imported by absolute name, only when a job starts.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from adapdate_codec.cluster.listing import Skipped
from adapdate_codec.cluster.work import Outcome, Settings
from adapdate_codec.errors import ClusterError
from adapdate_codec.results import Result

if TYPE_CHECKING:
    from adapdate_codec.cluster.events import Event

INSTALL_HINT = "pip install 'adapdate[ray]'"


@dataclass
class Summary:
    written: int = 0
    skipped: int = 0  # outputs that existed (skip_existing), not coded again
    failed: int = 0
    seconds: float = 0.0

    @property
    def files(self) -> int:
        return self.written + self.skipped + self.failed


def _runner(address: str | None):
    """adapdate_codec.cluster.runner, or a ClusterError saying how to install Ray, in one line."""
    if address == "local" and "ray" not in sys.modules:
        # A cluster for this job only: its servers listen on 127.0.0.1 rather than every interface
        # (Ray reads this when it is first imported; a multi-machine cluster is `ray start`'s business).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        from adapdate_codec.cluster import runner
    except ImportError as e:
        if (e.name or "").split(".")[0] != "ray":
            raise
        raise ClusterError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return runner


def check_installed() -> None:
    """ClusterError (one line: how to install it) unless Ray can be imported."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise ClusterError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}")


def run_dataset(settings: Settings, sources: Sequence[str] | str, dst: str, *, recursive: bool = False,
                address: str | None = None, workers: int | None = None) -> Iterator["Event"]:
    """The job's events, as they happen: an `Outcome` per file (its Result, or skipped), `Skipped(count)`
    for outputs found by the listing, `Found(total)` as inputs are listed, `Lost(files)` when a worker is
    lost. A fatal error (a missing model for encoding, no CUDA) is raised and ends the job.

    address: "local" (a cluster started for this job, on this machine), "auto", "ray://host:port", a GCS
    "host:port", or None (Ray as already initialized in this process, else "auto").
    workers: at most this many (default: as many as the cluster has room for now)."""
    if isinstance(sources, str):
        sources = (sources,)
    return _runner(address).run(settings, tuple(sources), dst, recursive=recursive, address=address,
                                workers=workers)


def _consume(events: Iterator["Event"], on_result: Callable[[Result], None] | None) -> Summary:
    start = time.perf_counter()
    summary = Summary()
    for event in events:
        if isinstance(event, Outcome):
            if event.skipped:
                summary.skipped += 1
            elif event.result is not None:
                if event.result.error is None:
                    summary.written += 1
                else:
                    summary.failed += 1
                if on_result is not None:
                    on_result(event.result)
        elif isinstance(event, Skipped):
            summary.skipped += event.count
    summary.seconds = round(time.perf_counter() - start, 3)
    return summary


def encode_dataset(
    src: Sequence[str] | str,
    dst: str,
    *,
    quality: int | None = None,
    model: str | None = None,
    target_bpp: float | None = None,
    padding: str = "replicate",
    drop_alpha: bool = False,
    max_pixels: int | None = None,
    device: str = "cpu",
    threads: int = 1,
    recursive: bool = False,
    force: bool = False,
    skip_existing: bool = False,
    address: str | None = None,
    workers: int | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> Summary:
    """Encode the images of `src` (files or folders, paths or URLs) into `dst`/<stem>.adpd (subfolders kept
    with recursive=True) on a Ray cluster. Options are `adapdate_codec.encode`'s, per worker: `threads` CPU
    threads each. force: overwrite outputs; skip_existing: leave (and count) files whose output exists.
    on_result(Result) is called for each file coded or failed, as it finishes."""
    if quality is not None and target_bpp is not None:
        raise ValueError("quality and target_bpp cannot be used together")
    settings = Settings("encode", quality=quality, model=model, target_bpp=target_bpp, padding=padding,
                        drop_alpha=drop_alpha, max_pixels=max_pixels, device=device, threads=threads, force=force,
                        skip_existing=skip_existing)
    return _consume(run_dataset(settings, src, dst, recursive=recursive, address=address, workers=workers),
                    on_result)


def decode_dataset(
    src: Sequence[str] | str,
    dst: str,
    *,
    max_pixels: int | None = None,
    device: str = "cpu",
    threads: int = 1,
    recursive: bool = False,
    force: bool = False,
    skip_existing: bool = False,
    address: str | None = None,
    workers: int | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> Summary:
    """Decode the .adpd files of `src` into `dst`/<stem>.png on a Ray cluster (see encode_dataset)."""
    settings = Settings("decode", max_pixels=max_pixels, device=device, threads=threads, force=force,
                        skip_existing=skip_existing)
    return _consume(run_dataset(settings, src, dst, recursive=recursive, address=address, workers=workers),
                    on_result)


__all__ = ["Result", "Settings", "Summary", "decode_dataset", "encode_dataset", "run_dataset"]
