"""Where a batch's patients run: one after the other in this process (the default), or as tasks on Dask.

`msvol run --workers N` starts a dask.distributed LocalCluster of N worker processes on 127.0.0.1 (one
task at a time each, a memory limit per worker, and the BLAS/OpenMP/ITK/torch threads of each pinned to
cores // N, so N workers do not oversubscribe the machine); `--scheduler ADDRESS` submits to a cluster
that exists already (dask-jobqueue on SLURM: docs/OPERATIONS.md).

A task receives paths and settings (an ops.exams.PatientJob, OUT, the store's URL) and returns the small
batch.PatientResult record with the events it emitted; nothing large travels. The state store, not Dask,
is the truth about what is done: a task run twice (a worker lost mid-task, then rescheduled) finds the
work done or the claim held and changes nothing. Each worker process opens the store and loads the models
once, held by a worker plugin (no module state).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

from msvol.config import BatchSettings, Params
from msvol.errors import ConfigError
from msvol.ops import batch, claims, exams
from msvol.ops.events import Event

PLUGIN = "msvol"
# What the numeric libraries read for their thread pools (OpenMP/torch, MKL, OpenBLAS, ITK: ANTs and SimpleITK).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")


@dataclasses.dataclass(frozen=True)
class Cluster:
    """How to reach Dask: `workers` local processes, or the scheduler at `address`."""

    workers: int | None = None
    address: str | None = None
    memory_limit: str = BatchSettings.worker_memory

    def __post_init__(self):
        if (self.workers is None) == (self.address is None):
            raise ConfigError("give either a number of local workers or a scheduler address, not both")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, not {self.workers}")


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Cores of this machine shared out between the workers (at least 1 each)."""
    return max(1, (cores or len(os.sched_getaffinity(0))) // workers)


@contextlib.contextmanager
def client_for(cluster: Cluster) -> Iterator:
    """A dask.distributed Client on the cluster (a LocalCluster is started here and stopped at the end)."""
    import dask
    from dask.distributed import Client, LocalCluster

    if cluster.address is not None:
        try:
            client = Client(cluster.address, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot reach the Dask scheduler at {cluster.address}: {exc}") from exc
        with client:
            yield client
        return
    threads = str(threads_per_worker(cluster.workers))
    # the environment each worker process starts with: read by the libraries when they load
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {name: threads for name in THREAD_VARIABLES}}):
        with LocalCluster(n_workers=cluster.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                          memory_limit=cluster.memory_limit, dashboard_address=None) as local, Client(local) as client:
            yield client


def worker_state(out_dir: Path, db_url: str | None, model_dirs: tuple[Path | None, Path | None]):
    """A dask.distributed worker plugin holding the store, the claim owner and the models of one worker
    process (defined here: distributed is imported only when Dask is used)."""
    from distributed import WorkerPlugin

    class WorkerState(WorkerPlugin):
        name = PLUGIN

        def __init__(self):
            self.out_dir, self.db_url, self.model_dirs = Path(out_dir), db_url, model_dirs
            self.store = self.owner = self.resources = None

        def setup(self, worker=None):
            import torch

            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
            self.store = batch.open_batch_store(self.out_dir, self.db_url)
            self.owner = claims.Owner.current()  # this worker process, as its claims name it
            self.resources = batch.ModelCache(*self.model_dirs)

        def teardown(self, worker=None):
            if self.store is not None:
                self.store.dispose()

    return WorkerState()


def _task(job: exams.PatientJob, out_dir: Path, params: Params, settings: BatchSettings,
          force: bool) -> tuple[batch.PatientResult, list[Event]]:
    """One patient on a worker: batch.process_patient with the worker's store, owner and models."""
    from dask.distributed import get_worker

    state = get_worker().plugins[PLUGIN]
    emitted: list[Event] = []
    owner = state.owner

    def keep(event: Event) -> None:
        emitted.append(dataclasses.replace(event, run=owner.token, host=owner.host, pid=owner.pid))

    result = batch.process_patient(job, out_dir, params, state.store, owner, settings,
                                   resources=state.resources, force=force, on_event=keep)
    return result, emitted


def run_on_dask(cluster: Cluster, jobs: Iterable[exams.PatientJob], out_dir: Path, params: Params, *,
                db_url: str | None, settings: BatchSettings, force: bool,
                model_dirs: tuple[Path | None, Path | None],
                progress: Callable[[str], None] = lambda message: None
                ) -> Iterator[tuple[batch.PatientResult, list[Event]]]:
    """Submit one task per patient and yield (result, events) as each finishes, in completion order."""
    from dask.distributed import as_completed

    jobs = list(jobs)
    with client_for(cluster) as client:
        client.register_plugin(worker_state(out_dir, db_url, model_dirs))
        futures = {client.submit(_task, job, Path(out_dir), params, settings, force, key=f"msvol-{job.subject}",
                                 pure=False): job for job in jobs}
        for position, future in enumerate(as_completed(futures), 1):
            job = futures[future]
            try:
                result, emitted = future.result()
            except Exception as exc:  # the worker died under the task (out of memory, killed): the store knows
                result = batch.PatientResult(job.subject, "failed", reason=f"the Dask task was lost: {exc!r}")
                emitted = [Event(job.subject, "task_lost", reason=repr(exc))]
            progress(f"[{position}/{len(jobs)}] {job.subject}: {result.outcome}")
            yield result, emitted
