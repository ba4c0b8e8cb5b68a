"""Map a per-batch computation over a dataset's shards and merge the results: serially (the
default: no cluster), or as one Dask task per shard on a local or remote cluster.

Every result merges with exact integer arithmetic (counts, minima, maxima), so the merged
result does not depend on the shard sizes, the order in which shards finish, or a task that
Dask ran again after its worker died. The graph (the payload) goes to the workers once
(scattered); a shard task reads its own samples, in batches, from the source's paths.

Dask moves tasks and results between its own processes with pickle: the cluster is trusted
(its workers run this package). No file that a user hands us is ever unpickled.
"""
from __future__ import annotations

import contextlib
import os
import time
import urllib.parse
import weakref
from functools import reduce

DEFAULT_BATCH = 64
DEFAULT_SHARD = 512
SCHEDULER_TIMEOUT = "20s"  # how long `--scheduler` waits for its scheduler to answer
MAX_WORKERS_PER_CORE = 8  # local worker processes, even with --force-workers
KILL_HOOK = "WAGEUBN_SIM_TEST_KILL_SHARD"  # "INDEX:MARKER": the first run of that shard dies
_TASK_THREADS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # client -> Numba threads per task


def shard_ranges(count: int, shard_size: int) -> list:
    """[(start, stop), ...] covering 0..count in consecutive pieces of ``shard_size``."""
    if shard_size < 1:
        raise ValueError(f"shard size {shard_size} must be at least 1")
    return [(start, min(start + shard_size, count)) for start in range(0, count, shard_size)]


def _scatter(client, payload):
    """The payload on every worker, once, under a key of its own (a reused content key could
    meet the previous pass's release of it)."""
    return client.scatter([payload], broadcast=True, hash=False)[0]


def _merge_all(parts):
    return reduce(lambda a, b: a.merge(b), parts) if parts else None


def _test_kill(index: int) -> None:
    """The test hook: die (as a killed worker does) the first time shard INDEX runs."""
    spec = os.environ.get(KILL_HOOK)
    if not spec:
        return
    target, _, marker = spec.partition(":")
    if int(target) == index and not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os._exit(17)


def run_shard(task, payload, source, start: int, stop: int, batch: int, index: int = 0,
              threads: int | None = None):
    """``task(payload, x, labels)`` on samples start..stop, batch by batch, merged; with
    ``threads``, Numba's parallel loops of this task use that many threads."""
    _test_kill(index)
    if threads is not None:
        import numba
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    parts = []
    for lo in range(start, stop, batch):
        x, labels = source.read(lo, min(lo + batch, stop))
        parts.append(task(payload, x, labels))
    return _merge_all(parts)


def _run_batch(task, payload, x, labels):
    return task(payload, x, labels)


class Progress:
    """Counts samples done; ``report(done, total, seconds)`` is called after each piece."""

    def __init__(self, total: int | None, report=None):
        self.total, self.report, self.done, self.start = total, report, 0, time.perf_counter()

    def add(self, n: int) -> None:
        self.done += n
        if self.report is not None:
            self.report(self.done, self.total, time.perf_counter() - self.start)


def map_reduce(task, payload, source, batch: int = DEFAULT_BATCH, shard_size: int = DEFAULT_SHARD,
               client=None, progress: Progress | None = None):
    """The merged ``task`` results over every sample of ``source``. With a Dask ``client``,
    each shard (or, for an iterable source, each batch) is one task, retried on failure."""
    if batch < 1:
        raise ValueError(f"batch size {batch} must be at least 1")
    progress = progress or Progress(None)
    if not hasattr(source, "read"):  # an iterable of batches (the API)
        return _map_iterable(task, payload, source, client, progress)
    ranges = shard_ranges(len(source), shard_size)
    if client is None:
        parts = []
        for index, (start, stop) in enumerate(ranges):
            parts.append(run_shard(task, payload, source, start, stop, batch, index))
            progress.add(stop - start)
        return _merge_all(parts)
    from distributed import as_completed
    shared = _scatter(client, payload)
    threads = _TASK_THREADS.get(client)
    futures = {client.submit(run_shard, task, shared, source, start, stop, batch, index, threads,
                             retries=3, pure=False): index for index, (start, stop) in enumerate(ranges)}
    results = {}
    for future in as_completed(futures):
        index = futures[future]
        results[index] = future.result()
        progress.add(ranges[index][1] - ranges[index][0])
    return _merge_all([results[i] for i in range(len(ranges))])


def _map_iterable(task, payload, batches, client, progress):
    if client is None:
        parts = []
        for x, labels in batches:
            parts.append(task(payload, x, labels))
            progress.add(len(x))
        return _merge_all(parts)
    from distributed import wait
    shared = _scatter(client, payload)
    window = 2 * max(1, len(client.nthreads()))  # batches in flight: memory stays bounded
    futures, results = [], []
    for x, labels in batches:
        futures.append((len(x), client.submit(_run_batch, task, shared, x, labels, retries=3, pure=False)))
        if len(futures) >= window:
            n, done = futures.pop(0)
            results.append(done.result())
            progress.add(n)
    wait([f for _, f in futures])
    for n, f in futures:
        results.append(f.result())
        progress.add(n)
    return _merge_all(results)


def scheduler_address(text: str) -> str:
    """``text`` if it is a scheduler address Dask takes (tcp:// or tls://, a host and a port);
    ValueError naming the form otherwise."""
    fix = "give the scheduler's address as tcp://HOST:PORT (e.g. tcp://127.0.0.1:8786)"
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as err:
        raise ValueError(f"--scheduler {text!r}: {err}; {fix}") from None
    if parts.scheme not in ("tcp", "tls") or not parts.hostname or port is None \
            or parts.path or parts.query or parts.fragment:
        raise ValueError(f"--scheduler {text!r} is no scheduler address; {fix}")
    return text


def check_workers(workers: int, force: bool = False) -> int:
    """``workers`` local worker processes, where this machine has the cores for them: more than
    its cores asks for ``force`` (and even then at most `MAX_WORKERS_PER_CORE` per core)."""
    cores = os.cpu_count() or 1
    if workers > cores and not force:
        raise ValueError(f"--workers {workers} is more than this machine's {cores} cores: each worker is "
                         f"a process of its own; give at most {cores}, or pass --force-workers to "
                         "start them anyway")
    if workers > MAX_WORKERS_PER_CORE * cores:
        raise ValueError(f"--workers {workers} is more than {MAX_WORKERS_PER_CORE} per core ({cores} "
                         f"cores), even with --force-workers; give at most {MAX_WORKERS_PER_CORE * cores}")
    return workers


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None, force_workers: bool = False):
    """None (serial), a ``LocalCluster`` of ``workers`` processes (one task thread each, whose
    Numba loops use cores / workers threads: the workers together use the cores once), or a
    client of the Dask cluster at ``scheduler`` (tcp://HOST:PORT; its workers keep their own
    thread settings: start them with ``--nthreads 1`` and NUMBA_NUM_THREADS = cores / workers)."""
    if workers is None and scheduler is None:
        yield None
        return
    if workers is not None and scheduler is not None:
        raise ValueError("give --workers (a local cluster) or --scheduler (an existing one), not both")
    try:
        import logging

        from distributed import Client, LocalCluster
    except ImportError:
        raise ValueError("running on Dask needs dask and distributed: pip install 'wageubn-sim[dask]'") from None
    if scheduler is not None:
        scheduler_address(scheduler)
        try:
            client = Client(scheduler, timeout=SCHEDULER_TIMEOUT)
        except (OSError, TimeoutError) as err:
            raise ValueError(f"no Dask scheduler answers at {scheduler} ({err}); start one with "
                             "`dask scheduler` and workers with `dask worker ADDRESS`") from None
        with client:
            yield client
        return
    if workers < 1:
        raise ValueError(f"--workers {workers} must be at least 1")
    check_workers(workers, force_workers)
    # OpenMP's and the BLAS's threads are set in the environment each worker process starts
    # with (Dask's pre-spawn environment, which otherwise pins them to one thread), Numba's per
    # task (`run_shard`): NUMBA_NUM_THREADS in that environment would leak, because the nanny
    # sets it in *this* process's os.environ too, and Numba refuses to compile anything once the
    # variable disagrees with its running pool. The leaked variables are put back. Dask's
    # MALLOC_TRIM_THRESHOLD_=65536 is left out: it hands every large temporary back to the
    # system, and the kernels' next one page-faults afresh (measured: ResNet-18's ReLUs 4x
    # slower in a worker)
    import dask
    threads = max(1, (os.cpu_count() or 1) // workers)
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    environ.update({k: threads for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    saved = {k: os.environ.get(k) for k in environ}
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), \
                LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                             silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
            _restore_environ(saved)
            _TASK_THREADS[client] = threads
            yield client
    finally:
        _restore_environ(saved)


def _restore_environ(saved: dict) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
