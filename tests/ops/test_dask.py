"""`msvol run` on Dask (ops/scheduler.py): two worker processes give what the serial run gives, the state store
stays the truth (a second Dask run finds nothing to do), and the workers' threads are pinned.

The workers run the quick stand-in pipeline (tests/ops/quick_pipeline.py), installed in each worker process by
a worker plugin; the test starts its own LocalCluster and hands `msvol run` its address (--scheduler), the path
a SLURM cluster takes too.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from msvol.ops import scheduler
from tests.ops import quick_pipeline
from tests.ops.test_runs import age, analysed, events, exam_states, run

pytest.importorskip("distributed")


@pytest.fixture
def dask_cluster():
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.register_plugin(quick_pipeline.worker_plugin())
        yield cluster.scheduler_address


def outputs(out):
    """Every label map (bytes) and report (without its timestamp) below OUT."""
    maps = {str(path.relative_to(out)): np.asarray(nib.load(path).dataobj).tobytes()
            for path in sorted(out.glob("sub-*/**/*.nii.gz"))}
    reports = {}
    for path in sorted(out.glob("sub-*/report.json")):
        report = json.loads(path.read_text())
        report.pop("generated", None)
        reports[str(path.relative_to(out))] = report
    return maps, reports


def test_two_dask_workers_give_the_serial_result(tmp_path, dask_cluster, monkeypatch):
    from tests.builders import write_subject

    quick_pipeline.install(monkeypatch)
    root = tmp_path / "bids"
    for subject, dates in (("01", None), ("02", {"01": "2020-03-01"}), ("03", {"01": "2020-04-01"})):
        write_subject(root, subject, dates=dates)
    age(root)
    serial, parallel, log = tmp_path / "serial", tmp_path / "dask", tmp_path / "events.jsonl"
    assert run(root, serial).exit_code == 0
    result = run(root, parallel, "--scheduler", dask_cluster, log=log)
    assert result.exit_code == 0, result.output
    assert outputs(parallel) == outputs(serial) and outputs(serial)[0], "label maps and reports alike"
    assert analysed(log) == ["sub-01/ses-01", "sub-01/ses-02", "sub-02/ses-01", "sub-03/ses-01"]
    assert set(exam_states(parallel).values()) == {("done", 1)}
    workers = {(event["host"], event["pid"]) for event in events(log) if event["state"] == "running"}
    assert len(workers) >= 1 and all(pid is not None for _, pid in workers), "events name the worker process"
    lines = len(events(log))
    again = run(root, parallel, "--scheduler", dask_cluster, log=log)
    assert again.exit_code == 0 and analysed(log, lines) == [], "the state store says it is done"


def test_local_workers_share_the_cores_out():
    assert scheduler.threads_per_worker(2, cores=16) == 8
    assert scheduler.threads_per_worker(3, cores=2) == 1


@pytest.mark.parametrize("workers, address", [(None, None), (2, "tcp://127.0.0.1:8786"), (0, None)])
def test_a_cluster_needs_workers_or_an_address(workers, address):
    from msvol.errors import ConfigError

    with pytest.raises(ConfigError):
        scheduler.Cluster(workers, address)


def test_local_workers_start_with_their_threads_pinned(tmp_path):
    """--workers N: each worker process starts with the thread variables at cores // N."""
    from dask.distributed import get_worker  # noqa: F401 - the workers import it

    with scheduler.client_for(scheduler.Cluster(workers=2)) as client:
        seen = client.run(lambda: {name: __import__("os").environ.get(name) for name in scheduler.THREAD_VARIABLES})
    expected = str(scheduler.threads_per_worker(2))
    assert len(seen) == 2 and all(set(values.values()) == {expected} for values in seen.values())
