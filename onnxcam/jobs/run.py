"""Running an audit job: open (or resume) the folder, run the chunks on an engine, finish, mark it done.

Output folder of a job:
    job.json            what job this is (fingerprints), written first
    parts/              one file per finished chunk: the records, as the job goes
    overlays/           one JPEG per image and method
    records.parquet, records.jsonl, metrics.csv, metrics.json, report.html   when it finishes
    _DONE               last: the job is finished (a folder without it is not)

Interrupted (Ctrl-C, a crash, a killed machine), a job keeps its finished chunks; ``resume=True``
runs the rest and finishes. The engines (``local``: in this process; ``ray``: Ray Data actors) run
the same ``Worker.run_chunk`` on the same chunks, so their records are the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from onnxcam.audit.shared import JobSummary, _no_images
from onnxcam.blas_threads import one_blas_thread
from onnxcam.errors import ArgumentError
from onnxcam.jobs.engine_local import run_local
from onnxcam.jobs.engine_ray import RayOptions, run_ray
from onnxcam.jobs.finish import finish_job
from onnxcam.jobs.records import done_chunks, read_parts, write_chunk
from onnxcam.jobs.sources import Source
from onnxcam.jobs.spec import JobSpec
from onnxcam.jobs.state import abandon, begin, finish
from onnxcam.jobs.work import ChunkResult, Worker
from onnxcam.model import Model
from onnxcam.output import OutputDir

__all__ = ["ENGINES", "run_job"]

ENGINES = ("local", "ray")


@one_blas_thread()  # the whole job: see onnxcam.blas_threads
def run_job(spec: JobSpec, source: Source, out: str | Path, *, model: Model | None = None, resume: bool = False,
            engine: str = "local", ray: RayOptions | None = None, sample_k: int = 8,
            progress: Callable[..., None] | None = None, inputs: Sequence[str | Path] = ()) -> JobSummary:
    """Audit ``source`` as ``spec`` says into ``out``; ``model``: the model already loaded (local engine).

    ``inputs``: more paths the output folder must keep away from (a boxes file).
    """
    start = time.perf_counter()
    if engine not in ENGINES:
        raise ArgumentError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if sample_k < 0:
        raise ArgumentError(f"--report-sample must be >= 0, got {sample_k}")
    report: Callable[..., None] = progress if progress is not None else (lambda n, stage=None: None)
    out_dir = OutputDir(out, inputs=[*source.roots, spec.model, *inputs])
    n_images = source.count()
    job = {"tool": "onnxcam audit", "spec": spec.fingerprint(), "source": source.fingerprint(),
           "images": n_images, "batch_size": spec.config.batch_size}
    state = begin(out_dir, job, resume)
    workers: list[Worker] = []

    def worker() -> Worker:
        if not workers:
            workers.append(Worker(spec, model=model))
        return workers[0]

    def write(result: ChunkResult) -> None:
        write_chunk(out_dir, result)

    try:
        # Built here for either engine: a bad layer or method option fails now, with onnxcam's own message,
        # not inside a Ray actor; the sanity check and the report's layers use it later.
        local = worker()
        report(0, stage="explaining")
        if engine == "local":
            run_local(local, source, state.done, write, report)
        else:
            run_ray(spec, source, state.done, write, report, ray or RayOptions())
        metrics, files = finish_job(out_dir, spec, worker, sample_k=sample_k, labelled=source.labelled,
                                    progress=progress)
    except BaseException as exc:
        if state.fresh and not done_chunks(state.folder) and not isinstance(exc, KeyboardInterrupt):
            abandon(state)  # nothing done: leave the folder as it was, not as a job to resume
        raise
    if not metrics:
        failed = [{"file": f["file"], "error": f["error"]} for part in read_parts(state.folder) for f in part["failed"]]
        if state.fresh:
            abandon(state)
        raise _no_images(failed, n_images)
    files.append(finish(out_dir, {"images": metrics["images_total"], "failed": len(metrics["failed"]),
                                  "seconds": time.perf_counter() - start, "engine": engine}))
    return JobSummary(Path(out), metrics, files, time.perf_counter() - start, metrics["failed"], metrics["notes"])

