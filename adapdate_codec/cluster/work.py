"""What a cluster worker does with one file: read it, code it with the Python API, write the output.

The coding is the library's (api.encode / api.decode_picture), with its models loaded once per process, so
a file coded here is byte for byte the file `adapdate encode|decode` writes. No Ray here: runner.py wraps
`CodecWorker` in a Ray actor; tests call it directly.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

from adapdate_codec.cluster import storage
from adapdate_codec.cluster.listing import Task
from adapdate_codec.errors import AdapdateError, ClusterError, DeviceError, InputError, ModelError
from adapdate_codec.fileio import DECODED_SUFFIX, ENCODED_SUFFIX, ENCODED_SUFFIXES, IMAGE_SUFFIXES
from adapdate_codec.limits import WORKER_MEMORY
from adapdate_codec.rate import bpp
from adapdate_codec.results import Result, is_ours, one_line, reported_errors


@dataclass(frozen=True)
class Settings:
    """A job's settings, the same for every file (sent once to each worker)."""

    command: str  # "encode" or "decode"
    quality: int | None = None  # encode: the model (default: the store's default)
    model: str | None = None
    target_bpp: float | None = None
    padding: str = "replicate"
    drop_alpha: bool = False
    max_pixels: int | None = None  # None: the worker's $ADAPDATE_MAX_PIXELS or the default; 0: no limit
    device: str = "cpu"
    threads: int = 1  # torch threads per worker
    force: bool = False  # overwrite existing outputs
    skip_existing: bool = False  # leave files whose output exists (counted, not coded)
    effort: int = 0  # encode: the --effort level

    def __post_init__(self) -> None:
        if self.command not in ("encode", "decode"):
            raise ValueError(f"command must be 'encode' or 'decode', not {self.command!r}")
        if self.force and self.skip_existing:
            raise ValueError("force and skip_existing cannot be used together")

    @property
    def suffix(self) -> str:
        return ENCODED_SUFFIX if self.command == "encode" else DECODED_SUFFIX

    @property
    def accept(self) -> frozenset[str]:
        return IMAGE_SUFFIXES if self.command == "encode" else ENCODED_SUFFIXES

    @property
    def fatal(self) -> tuple[type[AdapdateError], ...]:
        """Errors every later file would repeat: they end the job. Encoding uses one model for all files;
        decoding's files may each need another one, so a missing model fails only its files."""
        return (ModelError, DeviceError) if self.command == "encode" else (DeviceError,)


def worker_count(resources: dict[str, float], settings: Settings, requested: int | None) -> int:
    """Workers the cluster has room for now: settings.threads CPUs, WORKER_MEMORY and (cuda) a GPU each."""
    n = int(resources.get("CPU", 0) // settings.threads)
    if settings.device.startswith("cuda"):
        if not resources.get("GPU", 0):
            raise ClusterError("--device cuda: the Ray cluster has no GPUs")
        n = min(n, int(resources["GPU"]))
    if "memory" in resources:
        n = min(n, int(resources["memory"] // WORKER_MEMORY))
    if requested is not None:
        n = min(n, requested)
    if n < 1:
        raise ClusterError(f"the Ray cluster has no room for one worker ({settings.threads} CPU"
                           f"{'s' if settings.threads > 1 else ''} and {WORKER_MEMORY / 2**30:.1f} GiB"
                           f"{' and a GPU' if settings.device.startswith('cuda') else ''})")
    return n


@dataclass
class Outcome:
    task: Task
    result: Result | None = None  # None: skipped, or a fatal error
    skipped: bool = False  # its output existed (--skip-existing, or written by a worker that was lost)
    warnings: list[str] = field(default_factory=list)  # one line each
    fatal: AdapdateError | None = None


def _encode(task: Task, data: bytes, s: Settings) -> Result:
    from adapdate_codec import api

    payload = api.encode(data, quality=s.quality, model=s.model, target_bpp=s.target_bpp, device=s.device,
                         drop_alpha=s.drop_alpha, max_pixels=s.max_pixels, padding=s.padding, effort=s.effort)
    del data  # a large photo's file is tens of MB: not kept while the next one is read
    storage.write(task.dst, payload)
    fi = api.info(payload)
    # the version that coded it, as -j reports (the file itself names only the decoder); loaded already
    version = api.load_active_model(s.model, fi.quality, s.device)
    return Result(input=task.src, output=task.dst, bytes=fi.bytes, width=fi.width, height=fi.height,
                  bpp=fi.bpp, model=fi.model, quality=fi.quality, fingerprint=version, effort=s.effort)


def _decode(task: Task, data: bytes, s: Settings) -> tuple[Result, float]:
    """The result, and the seconds spent loading a model (left out of the file's time, as -j does)."""
    from adapdate_codec import api, container, limits
    from adapdate_codec.imageio import format_for_path, save_picture

    fmt = format_for_path(task.dst)
    if fmt is None:
        raise InputError(f"cannot write {task.dst}: unknown image format")
    header, _ = container.unpack(data)  # a damaged file fails here, before any model is loaded
    limits.check_pixels(header.width, header.height, limits.max_pixels(s.max_pixels))
    start = time.perf_counter()
    version = api.load_model(header, s.device)  # a missing model too, before the codec's slow imports
    loading = time.perf_counter() - start
    pic = api.decode_picture(data, device=s.device, max_pixels=s.max_pixels)
    storage.write(task.dst, save_picture(pic, fmt))
    height, width = pic.pixels.shape[:2]
    return Result(input=task.src, output=task.dst, bytes=len(data), width=int(width), height=int(height),
                  bpp=bpp(len(data), width, height), model=header.model_name, quality=header.quality,
                  fingerprint=version), loading


def code_file(task: Task, s: Settings, retry: bool = False) -> Outcome:
    """One file: its result, or its one-line error (the job goes on), or a fatal error (it ends).

    retry: a worker coding this file was lost; an output found now is most likely what it wrote before it
    died (outputs appear whole), so it is counted as skipped rather than refused."""
    start, loading = time.perf_counter(), 0.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if not s.force and (s.skip_existing or retry) and storage.exists(task.dst):
                outcome = Outcome(task, skipped=True)
            else:
                storage.check_writable(task.dst, s.force, source=task.src)  # before the slow part
                data = storage.read(task.src)
                if s.command == "encode":
                    result = _encode(task, data, s)
                else:
                    result, loading = _decode(task, data, s)
                result.seconds = round(time.perf_counter() - start - loading, 3)
                outcome = Outcome(task, result)
        except s.fatal as e:
            outcome = Outcome(task, fatal=e)
        except reported_errors() as e:
            outcome = Outcome(task, Result(input=task.src, output=task.dst, error=one_line(e)))
    outcome.warnings = [one_line(w.message) for w in caught if is_ours(w)]
    return outcome


class CodecWorker:
    """One worker process's coder (a Ray actor in runner.py): torch set up once, models cached by the API."""

    def __init__(self, settings: Settings) -> None:
        import torch

        from adapdate_codec import inference

        self.settings = settings
        torch.set_num_threads(settings.threads)
        inference.REUSE_FREED_MEMORY = True  # this process only codes images: keep freed memory for reuse

    def ready(self) -> AdapdateError | None:
        """Load what every file needs now (the device; encode's model at one quality), so that a missing
        one ends the job once, before any file, as it does with -j 1. Returns that error, or None."""
        from adapdate_codec import api

        s = self.settings
        try:
            api.check_device(s.device)
            if s.command == "encode" and s.target_bpp is None:
                api.load_active_model(s.model, s.quality, s.device)
        except s.fatal as e:
            return e
        return None

    def run(self, task: Task, retry: bool = False) -> Outcome:
        return code_file(task, self.settings, retry)
