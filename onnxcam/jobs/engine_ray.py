"""The Ray engine: the job's chunks run on Ray Data, in a pool of actors on a cluster or a local one.

Each chunk is one row of a dataset (its items: paths, labels, boxes); ``map_batches`` hands the rows
to ``ChunkActor``, a class whose constructor builds the onnxruntime sessions and explainers once per
actor (``Worker``), with as many session threads as the actor has CPUs. The actors read the images
(the paths must be readable on every node: a shared file system) and return the chunk's
``ChunkResult``; the driver writes it (``onnxcam.jobs.records.write_chunk``), so the output folder
only needs to exist where the command runs.

An actor that dies is restarted by Ray and its chunk run again (Ray Data's defaults for actor pools:
``max_restarts=-1``, ``max_task_retries=-1``); a chunk whose part is already on disk is not written
twice, so nothing is lost or duplicated. Ray is imported only here, only when ``--engine ray`` is asked for.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxcam.errors import ArgumentError
from onnxcam.jobs.sources import Item, Source
from onnxcam.jobs.spec import JobSpec
from onnxcam.jobs.work import ChunkResult, Worker, chunks

__all__ = ["ChunkActor", "RayOptions", "import_ray", "run_ray"]


@dataclass
class RayOptions:
    """``address``: a running cluster (None: ``RAY_ADDRESS``, else a local cluster started here);
    ``actors``: the pool's size (``concurrency``); CPUs / GPUs per actor (CPUs are also the session threads)."""

    address: str | None = None
    actors: int = 2
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0

    def check(self) -> None:
        if self.actors < 1:
            raise ArgumentError(f"--ray-actors must be >= 1, got {self.actors}")
        if self.cpus_per_actor <= 0 or self.gpus_per_actor < 0:
            raise ArgumentError(f"--ray-cpus must be > 0 and --ray-gpus >= 0, got {self.cpus_per_actor} and "
                                f"{self.gpus_per_actor}")


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ArgumentError('--engine ray needs Ray Data, which is not installed: pip install "onnxcam[ray]"') from exc
    return ray


class ChunkActor:
    """A Ray Data actor: one ``Worker`` per actor, one chunk per call."""

    def __init__(self, spec: JobSpec, threads: int) -> None:
        self.worker = Worker(spec, threads=threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        payloads = []
        for chunk, items in zip(batch["chunk"], batch["items"]):
            rows = pickle.loads(bytes(items))
            result = self.worker.run_chunk(int(chunk), [Item.from_json(r) for r in rows])
            payloads.append(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
        return {"chunk": np.asarray(batch["chunk"], dtype=np.int64), "payload": np.asarray(payloads, dtype=object)}


def run_ray(spec: JobSpec, source: Source, done: set[int], write: Callable[[ChunkResult], None],
            progress: Callable[[float], None], options: RayOptions) -> None:
    """Run every chunk not in ``done`` on Ray Data; hand each result to ``write`` as it arrives."""
    options.check()
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        address = options.address or os.environ.get("RAY_ADDRESS") or None
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        started = True
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        units = len(spec.config.methods)
        pending = []
        for index, items in chunks(source.items(), spec.config.batch_size):
            if index in done:
                progress(len(items) * units)
            else:
                pending.append({"chunk": index, "items": pickle.dumps([it.to_json() for it in items])})
        if not pending:
            return
        ds = ray.data.from_items(pending, override_num_blocks=len(pending))
        del pending
        threads = max(1, int(options.cpus_per_actor))
        # Ray Data restarts a dead actor and retries its task without limit by default (max_restarts=-1,
        # max_task_retries=-1): a chunk is never lost, and one done twice is written once (write_chunk).
        mapped = ds.map_batches(
            ChunkActor, fn_constructor_kwargs={"spec": spec, "threads": threads}, batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=options.actors), num_cpus=options.cpus_per_actor,
            num_gpus=options.gpus_per_actor or None,
        )
        for row in mapped.iter_rows():
            result: ChunkResult = pickle.loads(row["payload"])
            write(result)
            progress(result.images * units)
    finally:
        if started:
            ray.shutdown()
