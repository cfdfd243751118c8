"""The driver of a cluster job: Ray actors code the files, a Ray actor lists them, results stream back.

Ray actors rather than Ray Data: each actor is one worker process that loads the model once and codes
whole files, the driver keeps at most two files queued per worker (one coding, one waiting, so no worker
idles between files), and asks the listing actor for the next batch of names only when the queue runs
low. The driver so holds a bounded number of names and no image bytes, whatever the job's size, and
knows which files each worker holds: when a worker is lost (its process killed, its machine gone), those
files are queued again (at most MAX_ATTEMPTS times each) and a new worker replaces it.

Imports Ray: only imported by adapdate_codec.ray once Ray is known to be installed.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
from typing import Any, Iterator

import ray
from ray.exceptions import ObjectLostError, OwnerDiedError, RayActorError, RayTaskError, WorkerCrashedError

from adapdate_codec.cluster.events import Event, Found, Lost
from adapdate_codec.cluster.listing import Lister, Problem, Task
from adapdate_codec.cluster.work import CodecWorker, Outcome, Settings, worker_count
from adapdate_codec.errors import ClusterError
from adapdate_codec.limits import WORKER_MEMORY
from adapdate_codec.results import Result, one_line

DEPTH = 2  # files queued per worker
BATCH = 64  # names per listing request
MAX_ATTEMPTS = 3  # a file whose worker is lost this many times is reported failed (it may be what kills it)
LOST = (RayActorError, WorkerCrashedError, ObjectLostError, OwnerDiedError)
# Workers that die before they are ready (a broken machine: no adapdate, no memory) may be replaced this many
# times as many as the job has before it gives up; those that die while coding are always replaced (their
# files have MAX_ATTEMPTS each), so a few bad files never end a job of millions.
FAILED_STARTS = 3

# Forwarded to the workers when set here: where the models are (a path every machine can read).
FORWARDED_ENV = ("ADAPDATE_HOME", "ADAPDATE_MAX_PIXELS")


@contextlib.contextmanager
def connected(address: str | None) -> Iterator[None]:
    """Ray connected for the job: `address` "local" starts a cluster on this machine for the job only
    (its ports on 127.0.0.1), "auto" finds one started here (`ray start`) or in $RAY_ADDRESS, "ray://host:port"
    is Ray Client, "host:port" a cluster's GCS; None uses Ray as already initialized, else "auto"."""
    if address is None and ray.is_initialized():
        yield
        return
    options: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    if env:
        options["runtime_env"] = {"env_vars": env}
    if address == "local":
        options.update(address="local", include_dashboard=False, object_store_memory=128 << 20)
    else:
        options["address"] = address or "auto"
    try:
        ray.init(**options)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        raise ClusterError(f"cannot connect to the Ray cluster at {address or 'auto'}: {one_line(e)}") from None
    try:
        yield
    finally:
        ray.shutdown()


def _internal_error(e: RayTaskError) -> str:
    """A bug on a worker: this file fails with the error's last line, the job goes on."""
    cause = getattr(e, "cause", None) or e
    return f"internal error: {type(cause).__name__}: {one_line(cause)}"


class _Job:
    def __init__(self, settings: Settings, sources: tuple[str, ...], dst: str, recursive: bool,
                 workers: int | None) -> None:
        self.settings = settings
        self.n = worker_count(ray.cluster_resources(), settings, workers)
        gpus = 1 if settings.device.startswith("cuda") else 0
        self.worker_class = ray.remote(num_cpus=settings.threads, num_gpus=gpus, memory=WORKER_MEMORY,
                                       max_restarts=0, max_task_retries=0)(CodecWorker)
        # no CPU of its own: it waits on storage; it runs on a node of the cluster, where the credentials are
        self.lister = ray.remote(num_cpus=0, max_restarts=0)(Lister).remote(
            sources, dst, settings.suffix, settings.accept, recursive, settings.skip_existing)
        self.actors: dict[int, Any] = {}
        self.ready: set[int] = set()
        self.load: dict[int, int] = {}
        self.starting: dict[Any, int] = {}  # ready() ref -> worker
        self.running: dict[Any, tuple[int, Task, int]] = {}  # run() ref -> (worker, task, attempt)
        self.queue: collections.deque[tuple[Task, int]] = collections.deque()
        self.listing: Any = None
        self.listed_all = False
        self.found = 0
        self.failed_starts = 0
        self.next_id = 0

    def start_worker(self) -> None:
        wid, self.next_id = self.next_id, self.next_id + 1
        actor = self.worker_class.remote(self.settings)
        self.actors[wid], self.load[wid] = actor, 0
        self.starting[actor.ready.remote()] = wid

    def drop_worker(self, wid: int) -> bool:
        """Forget a lost worker and start another; False if it was already dropped."""
        if self.actors.pop(wid, None) is None:
            return False
        self.ready.discard(wid)
        self.load.pop(wid, None)
        self.start_worker()
        return True

    def dispatch(self) -> None:
        while self.queue:
            free = [w for w in self.ready if self.load[w] < DEPTH]
            if not free:
                return
            wid = min(free, key=self.load.__getitem__)
            task, attempt = self.queue.popleft()
            self.running[self.actors[wid].run.remote(task, attempt > 0)] = (wid, task, attempt)
            self.load[wid] += 1

    def listed(self, items: list) -> Iterator[Event]:
        if not items:
            self.listed_all = True
            return
        for item in items:
            if isinstance(item, Task):
                self.queue.append((item, 0))
                self.found += 1
            elif isinstance(item, Problem):
                self.found += 1
                yield Outcome(Task(item.source, item.output),
                              Result(input=item.source, output=item.output, error=item.message))
            else:
                yield item
        yield Found(self.found)

    def finished(self, ref: Any) -> Iterator[Event]:
        wid, task, attempt = self.running.pop(ref)
        try:
            outcome: Outcome = ray.get(ref)
        except LOST:
            if self.drop_worker(wid):
                lost = 1 + sum(1 for w, _, _ in self.running.values() if w == wid)
                yield Lost(lost)
            if attempt + 1 < MAX_ATTEMPTS:
                self.queue.appendleft((task, attempt + 1))
            else:
                yield Outcome(task, Result(input=task.src, output=task.dst, error=(
                    f"its worker stopped {MAX_ATTEMPTS} times (out of memory?); not coded")))
            return
        except RayTaskError as e:
            outcome = Outcome(task, Result(input=task.src, output=task.dst, error=_internal_error(e)))
        if wid in self.load:
            self.load[wid] -= 1
        if outcome.fatal is not None:
            raise outcome.fatal
        yield outcome

    def run(self) -> Iterator[Event]:
        for _ in range(self.n):
            self.start_worker()
        while True:
            if not self.listed_all and self.listing is None and len(self.queue) < self.n * DEPTH:
                self.listing = self.lister.next.remote(BATCH)
            self.dispatch()
            if self.listed_all and not self.queue and not self.running:
                return  # workers still starting are not waited for (a rerun that skips every file)
            waiting = [*self.running, *self.starting] + ([self.listing] if self.listing is not None else [])
            if not waiting:  # cannot happen while a worker is starting or running; kept as a guard
                raise ClusterError("no Ray worker is left to code the remaining files")
            ready, _ = ray.wait(waiting, num_returns=1, timeout=1.0)  # a timeout: Ctrl-C is seen within 1 s
            if not ready:
                continue
            ref = ready[0]
            if self.listing is not None and ref == self.listing:
                self.listing = None
                try:
                    items = ray.get(ref)
                except (*LOST, RayTaskError) as e:
                    raise ClusterError(f"the Ray worker listing the inputs stopped ({one_line(e).split(':')[0]}); "
                                       "rerun with --skip-existing to finish") from None
                yield from self.listed(items)
            elif ref in self.starting:
                wid = self.starting.pop(ref)
                try:
                    fatal = ray.get(ref)
                except LOST:
                    self.failed_starts += 1
                    if self.failed_starts > FAILED_STARTS * self.n:
                        raise ClusterError(
                            f"Ray workers keep stopping as they start ({self.failed_starts} did: is adapdate installed "
                            "on every machine, with enough memory?); the files not reported were not coded (rerun "
                            "with --skip-existing to finish)") from None
                    if self.drop_worker(wid):
                        yield Lost(0)
                    continue
                if fatal is not None:
                    raise fatal
                self.ready.add(wid)
            else:
                yield from self.finished(ref)

    def stop(self) -> None:
        """Workers end with the job (on Ctrl-C too): nothing more is coded."""
        for actor in [*self.actors.values(), self.lister]:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)


def run(settings: Settings, sources: tuple[str, ...], dst: str, *, recursive: bool = False,
        address: str | None = None, workers: int | None = None) -> Iterator[Event]:
    """The job's events as they happen (see adapdate_codec.ray.run_dataset)."""
    with connected(address):
        job = _Job(settings, sources, dst, recursive, workers)
        try:
            yield from job.run()
        finally:
            job.stop()
